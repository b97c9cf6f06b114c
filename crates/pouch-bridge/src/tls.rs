//! TLS on the bridge's ports: a certificate the bridge makes for itself
//! (localhost, 127.0.0.1, ::1) and keeps in the device's directory, which the
//! mail client is told to trust; and the connection type that lets a
//! session start in the clear and switch to TLS on STARTTLS.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How mail clients reach the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (loopback only).
    None,
    /// Plain text until STARTTLS; no login before it.
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::StartTls),
            "implicit" => Ok(TlsMode::Implicit),
            other => Err(format!(
                "--tls takes none, starttls or implicit (got {other})"
            )),
        }
    }
}

/// The bridge's certificate: made on first use, reused after.
pub struct BridgeCertificate {
    pub config: Arc<rustls::ServerConfig>,
    /// The PEM file a mail client (or its OS) should trust.
    pub cert_path: PathBuf,
}

pub fn load_or_create(dir: &Path) -> Result<BridgeCertificate, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cert_path = dir.join("bridge-cert.pem");
    let key_path = dir.join("bridge-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        write_private(&key_path, made.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, made.cert.pem())
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    }
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(BridgeCertificate {
        config: Arc::new(config),
        cert_path,
    })
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A client connection, in the clear or over TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while switching.
    Switching,
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// STARTTLS: the TLS handshake on the same connection.
    pub async fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        match std::mem::replace(self, Conn::Switching) {
            Conn::Plain(tcp) => {
                // A client that stalls the handshake is dropped, not waited for.
                let tls = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    tokio_rustls::TlsAcceptor::from(config).accept(tcp),
                )
                .await
                .map_err(|_| io::Error::other("TLS handshake timed out"))??;
                *self = Conn::Tls(Box::new(tls));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("TLS is already on"))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Switching => Poll::Ready(Err(io::Error::other("connection is switching to TLS"))),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Switching => Poll::Ready(Err(io::Error::other("connection is switching to TLS"))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Switching => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Switching => Poll::Ready(Ok(())),
        }
    }
}
