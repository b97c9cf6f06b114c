//! Mutual TLS between peers.
//!
//! Each server already has a trust anchor (its own CA, `tls.rs`) and a
//! serving certificate under it; that certificate is issued for client
//! authentication too, so the same identity is presented when this server
//! calls a peer. A peer is pinned by its anchor (from its card), never by the
//! web PKI:
//! - the **federation listener** asks every client for a certificate and
//!   accepts only one that chains to a configured peer's anchor — a stranger
//!   is refused in the handshake, before any request is read, and the
//!   refusal is an access event (rule: unknown peer);
//! - after the handshake the connection is **bound to one peer**, found by
//!   verifying the chain under each peer's anchor alone (not by looking for
//!   an anchor in the chain, which anyone can copy), and every request on it
//!   carries that [`PeerIdentity`];
//! - **calls to a peer** trust that peer's anchor only.

use super::{Federation, Peer};
use crate::StartError;
use crate::tls::TlsIdentity;
use axum_server::accept::Accept;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// The peer a federation connection was authenticated as.
#[derive(Clone)]
pub struct PeerIdentity(pub Arc<Peer>);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(anchors: &[&CertificateDer<'static>]) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots
            .add((*a).clone())
            .map_err(|e| format!("a peer's tls_anchor is not a usable CA certificate ({e})"))?;
    }
    Ok(Arc::new(roots))
}

fn verifier(anchors: &[&CertificateDer<'static>]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(roots(anchors)?, provider())
        // The anchors' names would tell any stranger who this server's
        // partners are.
        .clear_root_hint_subjects()
        .build()
        .map_err(|e| format!("cannot check peers' certificates ({e})"))
}

/// The federation listener's TLS: TLS 1.3, a client certificate under one
/// of the peers' anchors required, this server's serving certificate.
pub(crate) fn listener_config(
    tls: &TlsIdentity,
    peers: &[Arc<Peer>],
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let anchors: Vec<&CertificateDer<'static>> = peers.iter().map(|p| &p.anchor).collect();
    let verifier = verifier(&anchors).map_err(StartError::Config)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(tls.cert_resolver());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS client for one peer: its anchor only, this server's certificate.
pub(crate) fn client(
    tls: &TlsIdentity,
    anchor: &CertificateDer<'static>,
) -> Result<reqwest::Client, String> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(&[anchor])?)
        .with_client_cert_resolver(tls.client_cert_resolver());
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(std::time::Duration::from_secs(15))
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot make an HTTPS client for it ({e})"))
}

/// Finds which peer a verified client chain belongs to.
pub(crate) struct PeerIdentifier(Vec<(Arc<Peer>, Arc<dyn ClientCertVerifier>)>);

impl PeerIdentifier {
    pub(crate) fn new(peers: &[Arc<Peer>]) -> Result<Self, StartError> {
        peers
            .iter()
            .map(|p| {
                Ok((
                    p.clone(),
                    verifier(&[&p.anchor]).map_err(StartError::Config)?,
                ))
            })
            .collect::<Result<Vec<_>, StartError>>()
            .map(PeerIdentifier)
    }

    /// The one peer whose anchor alone the chain verifies under, with a
    /// certificate valid for the host of that peer's URL (an anchor that is
    /// a ministry's CA issues certificates to more than its Pouch server).
    pub(crate) fn identify(&self, chain: &[CertificateDer<'static>]) -> Option<Arc<Peer>> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        let named = |p: &Peer| {
            let Ok(name) = rustls::pki_types::ServerName::try_from(p.host.as_str()) else {
                return false;
            };
            webpki::EndEntityCert::try_from(end_entity)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
        };
        let mut found = self.0.iter().filter(|(p, v)| {
            v.verify_client_cert(end_entity, intermediates, now).is_ok() && named(p)
        });
        let (peer, _) = found.next()?;
        // Two anchors over one chain cannot be told apart: refuse.
        if found.next().is_some() {
            return None;
        }
        Some(peer.clone())
    }
}

/// Accepts federation connections: the connection caps, then mutual TLS,
/// then the peer bound to every request of the connection.
#[derive(Clone)]
pub struct PeerAcceptor {
    pub(crate) inner: axum_server::tls_rustls::RustlsAcceptor<crate::conncap::CappedAcceptor>,
    pub(crate) fed: Arc<Federation>,
    pub(crate) state: Arc<crate::AppState>,
}

type TlsStream = tokio_rustls::server::TlsStream<crate::conncap::Capped>;

impl<S: Send + 'static> Accept<TcpStream, S> for PeerAcceptor {
    type Stream = TlsStream;
    type Service = WithPeer<S>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TlsStream, WithPeer<S>)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let source = stream.peer_addr().ok().map(|a| a.ip());
        let handshake = self.inner.accept(stream, service);
        let (fed, state) = (self.fed.clone(), self.state.clone());
        Box::pin(async move {
            match handshake.await {
                Ok((tls, service)) => {
                    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
                    let chain: Vec<CertificateDer<'static>> =
                        chain.iter().map(|c| c.clone().into_owned()).collect();
                    match fed.identify.identify(&chain) {
                        Some(peer) => Ok((
                            tls,
                            WithPeer {
                                inner: service,
                                peer: PeerIdentity(peer),
                            },
                        )),
                        None => {
                            refused(
                                &state,
                                source,
                                "its certificate matches no single configured peer",
                            )
                            .await;
                            Err(io::Error::other("not a configured peer"))
                        }
                    }
                }
                Err(e) => {
                    if let Some(why) = certificate_refusal(&e) {
                        refused(&state, source, &why).await;
                    }
                    Err(e)
                }
            }
        })
    }
}

/// The handshake failed because of the client's certificate (none, or one
/// no peer's anchor issued): what to record. Other failures (a scanner
/// speaking no TLS, a timeout) are not a federation attempt.
fn certificate_refusal(e: &io::Error) -> Option<String> {
    let rustls_error = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_error {
        rustls::Error::NoCertificatesPresented => Some("it presented no client certificate".into()),
        rustls::Error::InvalidCertificate(why) => Some(format!(
            "its certificate is not issued under any configured peer's anchor ({why:?})"
        )),
        _ => None,
    }
}

/// Refused handshakes recorded per minute at most; the rest are counted
/// and said in the next one recorded (a stranger with many addresses must
/// not fill the event log).
const REFUSALS_RECORDED_PER_MINUTE: u32 = 60;

/// This minute's refusals: (minute, recorded, not recorded).
static REFUSALS: std::sync::Mutex<(i64, u32, u64)> = std::sync::Mutex::new((0, 0, 0));

async fn refused(state: &crate::AppState, source: Option<std::net::IpAddr>, why: &str) {
    let suppressed = {
        let mut r = REFUSALS.lock().unwrap_or_else(|e| e.into_inner());
        let minute = crate::now() / 60;
        if r.0 != minute {
            r.0 = minute;
            r.1 = 0;
        }
        if r.1 >= REFUSALS_RECORDED_PER_MINUTE {
            r.2 += 1;
            return;
        }
        r.1 += 1;
        std::mem::take(&mut r.2)
    };
    let why = if suppressed > 0 {
        format!(
            "{why} ({suppressed} more refusals before this one were not recorded: over {REFUSALS_RECORDED_PER_MINUTE} a minute)"
        )
    } else {
        why.to_string()
    };
    tracing::warn!(source = ?source, %why, "refused a server that is not a configured peer");
    crate::service::audit::record(
        state,
        crate::service::audit::Ev::new(pouch_proto::security::Action::PeerRefused)
            .source_opt(source)
            .failed(
                pouch_proto::security::Reason::NotAPeer,
                format!("federation connection refused: {why}"),
            ),
    )
    .await;
}

/// The connection's service, with its peer put on every request.
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}
