//! What a TLS file must hold, read with the parsers rustls itself uses when it connects:
//! PEM certificates that are X.509, a PEM private key the crypto provider can sign with,
//! and a client key that belongs to its certificate.
//!
//! Owns: those checks and their wording. Does not own: which keys name such files
//! (`files.rs`), building connections (the Redis backend, the etcd client).

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file: at least one, each X.509.
pub(super) fn certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().map_err(not_pem)?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    for (i, c) in certs.iter().enumerate() {
        // Reading a trust anchor parses the certificate's structure, which is all a file
        // check can ask of a CA or a client certificate alike.
        rustls::RootCertStore::empty()
            .add(c.clone())
            .map_err(|e| format!("certificate {} of {} is not X.509: {e}", i + 1, certs.len()))?;
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1), one rustls can sign with.
pub(super) fn private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => "no PEM private key (-----BEGIN ... PRIVATE KEY-----) in the file".to_string(),
        other => not_pem(other),
    })?;
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("not a usable private key: {e}"))?;
    Ok(key)
}

/// Whether `key` is the key of the first certificate of `chain`.
pub(super) fn matching(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), String> {
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map(drop)
        .map_err(|e| e.to_string())
}

fn not_pem(e: pem::Error) -> String {
    format!("not valid PEM: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_of_garbage_is_refused() {
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = certificates(bad).unwrap_err();
        assert!(e.starts_with("certificate 1 of 1 is not X.509"), "{e}");
        assert!(certificates(b"hello\n").unwrap_err().starts_with("no PEM certificate"));
        let e = certificates(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(e.starts_with("not valid PEM"), "{e}");
    }

    #[test]
    fn a_key_of_garbage_is_refused() {
        assert!(
            private_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .starts_with("no PEM private key")
        );
        let e = private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err();
        assert!(e.starts_with("not a usable private key"), "{e}");
    }
}
