//! The server's TLS identity. Without a configured certificate the server
//! makes a self-signed one on first start and keeps it; clients pin its
//! SHA-256 fingerprint, which travels in every invite.

use crate::{StartError, write_private_file};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::Path;
use std::sync::Arc;

pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(crate::sha256(cert_der))
}

pub fn server_config(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(Arc<rustls::ServerConfig>, String), StartError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let c = data_dir.join("tls-cert.pem");
            let k = data_dir.join("tls-key.pem");
            if !c.exists() || !k.exists() {
                generate(&c, &k)?;
            }
            (c, k)
        }
        _ => {
            return Err(StartError::Config(
                "give both --tls-cert and --tls-key, or neither".into(),
            ));
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| {
            StartError::Tls(format!(
                "cannot read certificate {}: {e}",
                cert_path.display()
            ))
        })?;
    let first = certs
        .first()
        .ok_or_else(|| StartError::Tls(format!("no certificate in {}", cert_path.display())))?;
    let fp = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        StartError::Tls(format!(
            "cannot read private key {}: {e}",
            key_path.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), fp))
}

fn generate(cert_path: &Path, key_path: &Path) -> Result<(), StartError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| StartError::Tls(e.to_string()))?;
    write_private_file(key_path, certified.key_pair.serialize_pem().as_bytes())
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", key_path.display())))?;
    std::fs::write(cert_path, certified.cert.pem())
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", cert_path.display())))?;
    Ok(())
}

/// The SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem_file(path: &Path) -> Result<String, StartError> {
    let cert = CertificateDer::from_pem_file(path)
        .map_err(|e| StartError::Tls(format!("cannot read certificate {}: {e}", path.display())))?;
    Ok(fingerprint(cert.as_ref()))
}
