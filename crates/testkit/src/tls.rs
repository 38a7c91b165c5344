//! Certificates for TLS tests, made fresh by each caller: a CA, a server certificate for
//! loopback (127.0.0.1 and localhost) and a client certificate, written as PEM files. The
//! nodes also present the server certificate to each other as clients (cluster bus,
//! replication, MIGRATE), so it serves for both ends.
//!
//! Owns: making and writing them, and the client side of the kit's own TLS connections.
//! Does not own: the servers' TLS flags (`cluster::start`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Result;

/// The PEM files of one test's certificates.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA, and a server and a client certificate it signs, into `dir`
    /// (`ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`).
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        let e = |e: rcgen::Error| format!("making test certificates: {e}");
        // Absolute: a node reads them after it has changed into its own directory.
        let dir = &std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.distinguished_name.push(DnType::CommonName, "autobalancer test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().map_err(e)?;
        write(&files.ca, &ca.self_signed(&ca_key).map_err(e)?.pem())?;
        let issuer = Issuer::new(ca, ca_key);
        let both = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let leaves = [
            (
                "127.0.0.1",
                vec!["127.0.0.1".to_string(), "localhost".to_string()],
                &both[..],
                &files.server_cert,
                &files.server_key,
            ),
            ("autobalancer", Vec::new(), &both[1..], &files.client_cert, &files.client_key),
        ];
        for (name, sans, usages, cert_path, key_path) in leaves {
            let mut p = CertificateParams::new(sans).map_err(e)?;
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = usages.to_vec();
            p.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().map_err(e)?;
            write(cert_path, &p.signed_by(&key, &issuer).map_err(e)?.pem())?;
            write(key_path, &key.serialize_pem())?;
        }
        Ok(files)
    }

    /// What a client of the kit presents: the CA to trust and the client certificate.
    pub fn certificates(&self) -> Result<redis::TlsCertificates> {
        install_provider();
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.client_cert)?,
                client_key: read(&self.client_key)?,
            }),
            root_cert: Some(read(&self.ca)?),
        })
    }

    /// The flags of a node that speaks TLS only, on `port`: to clients, to the other nodes
    /// and to its replicas, and that wants a certificate of every client.
    pub fn server_args(&self, port: u16) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = ["--port", "0", "--tls-port", &port.to_string()]
            .into_iter()
            .chain(["--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "yes"])
            .map(Into::into)
            .collect();
        for (flag, path) in [
            ("--tls-cert-file", &self.server_cert),
            ("--tls-key-file", &self.server_key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.extend([flag.into(), path.as_os_str().to_owned()]);
        }
        args
    }
}

/// rustls builds client configs with the process-wide crypto provider: ring, as the
/// library under test installs it (an error means one is installed already).
fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn write(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))
}
