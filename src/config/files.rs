//! The files a config names, checked when it is loaded: a sidecar that would fail on its
//! first run, or at its first request, fails at start instead, and `check-config` says so.
//!
//! Owns: which keys name files and what each must hold. Does not own: reading them for use
//! (secrets: `read_secret`; certificates and snapshots: where they are used), nor what
//! makes a PEM file good (`pem.rs`).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{Config, pem, read_secret};

/// A file as the config names it: its dotted key and its path.
type Named<'a> = (&'static str, &'a Path);

/// What a referenced file must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A readable file (a snapshot).
    Readable,
    /// PEM certificates (a CA, a client certificate).
    Certificates,
    /// A PEM private key.
    Key,
    /// A secret (a password, a token), as `read_secret` reads it: not empty.
    Secret,
}

impl Config {
    /// Every problem with a file the config names, one line each, naming the dotted key and
    /// the path: missing, unreadable, not a file, empty (all but snapshots), or not what it
    /// must hold (PEM certificates; a PEM private key, the one of its certificate).
    pub fn check_files(&self) -> Vec<String> {
        let mut errs: Vec<String> =
            self.referenced_files().into_iter().filter_map(|(key, path, kind)| check(key, path, kind).err()).collect();
        errs.extend(self.client_identities().into_iter().filter_map(|(cert, key)| check_identity(cert, key).err()));
        // The state file is written, not read: it need not exist, its directory must.
        if let Some(p) = &self.cluster.state_file {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !dir.is_dir() {
                errs.push(format!("cluster.state-file {}: directory {} does not exist", p.display(), dir.display()));
            }
        }
        errs
    }

    /// `((dotted key, path) of the certificate, (dotted key, path) of its key)` of every
    /// client certificate the config names.
    fn client_identities(&self) -> Vec<(Named<'_>, Named<'_>)> {
        let c = &self.cluster;
        let mut pairs =
            vec![(("cluster.cert-file", c.cert_file.as_deref()), ("cluster.key-file", c.key_file.as_deref()))];
        if let Some(e) = &self.etcd {
            pairs.push((("etcd.cert-file", e.cert_file.as_deref()), ("etcd.key-file", e.key_file.as_deref())));
        }
        pairs.into_iter().filter_map(|((ck, cert), (kk, key))| Some(((ck, cert?), (kk, key?)))).collect()
    }

    /// `(dotted key, path, kind)` of every file the config names.
    fn referenced_files(&self) -> Vec<(&'static str, &Path, Kind)> {
        let c = &self.cluster;
        let mut named = vec![
            ("cluster.password-file", c.password_file.as_deref(), Kind::Secret),
            ("cluster.snapshot-file", c.snapshot_file.as_deref(), Kind::Readable),
            ("cluster.ca-file", c.ca_file.as_deref(), Kind::Certificates),
            ("cluster.cert-file", c.cert_file.as_deref(), Kind::Certificates),
            ("cluster.key-file", c.key_file.as_deref(), Kind::Key),
        ];
        if let Some(e) = &self.etcd {
            named.extend([
                ("etcd.password-file", e.password_file.as_deref(), Kind::Secret),
                ("etcd.ca-file", e.ca_file.as_deref(), Kind::Certificates),
                ("etcd.cert-file", e.cert_file.as_deref(), Kind::Certificates),
                ("etcd.key-file", e.key_file.as_deref(), Kind::Key),
            ]);
        }
        named.push(("api.token-file", self.api.token_file.as_deref(), Kind::Secret));
        named.into_iter().filter_map(|(key, path, kind)| Some((key, path?, kind))).collect()
    }
}

fn check(key: &str, path: &Path, kind: Kind) -> Result<(), String> {
    if kind == Kind::Secret {
        return read_secret(path, key).map(drop).map_err(|e| e.to_string());
    }
    let unreadable = |e: std::io::Error| format!("{key} {}: cannot read: {e}", path.display());
    let mut file = File::open(path).map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(format!("{key} {}: not a file", path.display()));
    }
    if kind == Kind::Readable {
        return Ok(());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{key} {}: the file is empty", path.display()));
    }
    let held = match kind {
        Kind::Certificates => pem::certificates(&bytes).map(drop),
        _ => pem::private_key(&bytes).map(drop),
    };
    held.map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// A client key must be its certificate's. Checked only when both files are good on their
/// own: `check` has reported the others.
fn check_identity((cert_key, cert): Named<'_>, (key_key, key): Named<'_>) -> Result<(), String> {
    let chain = std::fs::read(cert).ok().and_then(|b| pem::certificates(&b).ok());
    let private = std::fs::read(key).ok().and_then(|b| pem::private_key(&b).ok());
    let (Some(chain), Some(private)) = (chain, private) else { return Ok(()) };
    pem::matching(chain, private)
        .map_err(|e| format!("{key_key} {} is not the key of {cert_key} {}: {e}", key.display(), cert.display()))
}
