//! The one reader of secret files (passwords, tokens): the Redis and etcd passwords and the
//! API token all go through `read_secret`, so they are trimmed and refused alike.
//!
//! Owns: what a secret file holds (the secret, then at most line ends). Does not own: where
//! secrets are used.

use std::path::{Path, PathBuf};

/// A secret file that cannot be used; names the config key and the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key} {}: cannot read: {source}", path.display())]
    Unreadable {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {}: the file is empty", path.display())]
    Empty { key: String, path: PathBuf },
}

/// Reads the secret in `path`, named by the dotted config `key` (e.g. `"api.token-file"`)
/// in errors. Trailing line ends (`\n`, `\r\n`) are trimmed and nothing else: spaces are
/// part of the secret. An empty secret, or one of white space only, is refused.
pub fn read_secret(path: &Path, key: &str) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.trim().is_empty() {
        return Err(SecretError::Empty { key: key.to_string(), path: path.to_path_buf() });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_alone_is_no_secret() {
        let (_d, p) = secret_in(" \n\n");
        assert!(matches!(read_secret(&p, "api.token-file"), Err(SecretError::Empty { .. })));
    }

    fn secret_in(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn only_trailing_line_ends_are_trimmed() {
        for (content, want) in [("pw", "pw"), ("pw\n", "pw"), ("pw\r\n", "pw"), ("pw\n\n", "pw"), (" p w \n", " p w ")]
        {
            let (_dir, path) = secret_in(content);
            assert_eq!(read_secret(&path, "api.token-file").unwrap(), want, "{content:?}");
        }
    }

    #[test]
    fn an_empty_secret_is_refused_by_key_and_path() {
        for content in ["", "\n", "\r\n"] {
            let (_dir, path) = secret_in(content);
            let e = read_secret(&path, "etcd.password-file").unwrap_err();
            assert!(matches!(e, SecretError::Empty { .. }), "{e:?}");
            assert_eq!(e.to_string(), format!("etcd.password-file {}: the file is empty", path.display()));
        }
    }

    #[test]
    fn a_missing_file_names_key_and_path() {
        let e = read_secret(Path::new("/nonexistent/pw"), "cluster.password-file").unwrap_err();
        assert!(matches!(e, SecretError::Unreadable { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cluster.password-file /nonexistent/pw: cannot read: "), "{e}");
    }
}
