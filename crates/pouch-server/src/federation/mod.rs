//! Federation: this server and its **peers** — allied ministries' Pouch
//! servers, each serving its own domain — by explicit agreement only.
//!
//! An operator runs `pouch admin federation card`, which prints what a
//! partner needs as a `[[federation.peers]]` block for `pouch.toml` (domain,
//! federation URL, TLS trust anchor, log key, witness key); each side adds
//! the other's block and restarts. Nothing is learnt on the wire: a server
//! that is not in the file is refused during the TLS handshake.
//!
//! Why each piece:
//! - **A listener of its own, with mutual TLS** ([`peer_tls`]). Devices
//!   connect without client certificates; servers must present one issued
//!   under a configured peer's anchor. A separate port lets the handshake
//!   itself refuse strangers, and keeps federation's routes out of the
//!   devices' API (and the devices' routes out of reach of peers).
//! - **Cross-witnessing** ([`witness_peers`]). Each server runs a witness
//!   (C2SP tlog-witness) for its peers' logs and asks each peer's witness to
//!   cosign its own checkpoints. A peer that shows this server one log and
//!   its own users another cannot get both cosigned by the same witness: the
//!   witness keeps the largest tree it cosigned and refuses anything not
//!   consistent with it — a split view or a rollback is a critical alert.
//!   Clients (a later step) accept a remote domain's checkpoint only with
//!   their own domain's witness's cosignature.
//! - **Peers are not announced as this log's witnesses** to its own
//!   devices: a partner's outage must not make this ministry's own log look
//!   unwitnessed.
//!
//! Still to come (issue 14): remote device lists verified against the
//! peer's log, the hub per conversation and the durable per-peer outbox.

pub mod peer_tls;
mod routes;

pub use routes::{admin_routes, router};

use crate::StartError;
use crate::config::{FederationSettings, PeerSettings};
use base64::Engine as _;
use pouch_proto::api::FederationCard;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// One configured peer, checked at start.
pub struct Peer {
    pub domain: String,
    /// Its federation listener (`https://HOST:PORT`).
    pub url: String,
    /// SHA-256 (hex) of its TLS trust anchor.
    pub anchor_sha256: String,
    pub(crate) anchor: CertificateDer<'static>,
    /// Its log's checkpoint verifier key, and the origin it signs.
    pub log_key: String,
    pub log_origin: String,
    /// Its witness's verifier key (it cosigns this server's checkpoints).
    pub witness_key: String,
    /// Mutual TLS to it: its anchor only, this server's certificate.
    pub(crate) http: reqwest::Client,
}

impl Peer {
    /// The name its witness signs with (the verifier key's first field).
    pub fn witness_name(&self) -> &str {
        self.witness_key.split('+').next().unwrap_or_default()
    }
}

/// Federation while the server runs.
pub struct Federation {
    /// What peers connect to, as the card says.
    pub url: String,
    /// The address the federation listener is bound to.
    pub addr: std::net::SocketAddr,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// What a partner's operator needs (`pouch admin federation card`).
    pub card: FederationCard,
    pub peers: Vec<Arc<Peer>>,
    /// This server's witness of its peers' logs.
    pub witness: Arc<crate::witness::Witness>,
    /// The federation listener's TLS (peers' anchors as client roots); None
    /// without peers (then nothing could connect).
    pub(crate) listener_tls: Option<Arc<rustls::ServerConfig>>,
    identify: peer_tls::PeerIdentifier,
}

/// The most peers one server takes: each is a TLS client, a witness entry
/// and, later, an outbox.
pub const MAX_PEERS: usize = 64;

impl Federation {
    /// Checks the `[federation]` settings and opens the witness. `None` when
    /// federation is not configured (no `listen`).
    pub fn start(
        settings: &FederationSettings,
        domain: &str,
        data_dir: &Path,
        tls: &crate::tls::TlsIdentity,
        log_key: &str,
    ) -> Result<Option<Federation>, StartError> {
        let Some(listen) = &settings.listen else {
            if !settings.peers.is_empty() {
                return Err(StartError::Config(
                    "[[federation.peers]] needs [federation] listen = \"HOST:PORT\": the address peers connect to".into(),
                ));
            }
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(listen).map_err(|e| {
            StartError::Io(format!(
                "cannot listen for federation peers on {listen} ({e}): is another server running there?"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Io(e.to_string()))?;
        let url = match &settings.url {
            Some(u) => {
                checked_url(u).map_err(|e| StartError::Config(format!("[federation] url: {e}")))?
            }
            None => format!("https://{addr}"),
        };
        if settings.peers.len() > MAX_PEERS {
            return Err(StartError::Config(format!(
                "[[federation.peers]]: at most {MAX_PEERS} peers"
            )));
        }
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        for p in &settings.peers {
            let peer = Peer::check(p, domain, tls).map_err(|e| {
                StartError::Config(format!(
                    "[[federation.peers]] {}: {e}; fix it from the partner's card (pouch admin federation card)",
                    if p.domain.is_empty() { "(no domain)" } else { &p.domain }
                ))
            })?;
            if peers.iter().any(|q| q.domain == peer.domain) {
                return Err(StartError::Config(format!(
                    "[[federation.peers]] {}: listed twice; keep one entry per partner",
                    peer.domain
                )));
            }
            if peers.iter().any(|q| q.anchor_sha256 == peer.anchor_sha256) {
                return Err(StartError::Config(format!(
                    "[[federation.peers]] {}: the same TLS anchor as another peer; each partner has its own",
                    peer.domain
                )));
            }
            peers.push(Arc::new(peer));
        }
        let witness = crate::witness::Witness::open(
            &data_dir.join("federation"),
            &format!("{domain}/witness"),
            peers
                .iter()
                .map(|p| crate::witness::KnownLog {
                    origin: p.log_origin.clone(),
                    vkey: p.log_key.clone(),
                })
                .collect(),
        )
        .map_err(|e| StartError::Io(format!("cannot open the federation witness: {e}")))?;
        let identify = peer_tls::PeerIdentifier::new(&peers)?;
        let listener_tls = if peers.is_empty() {
            None
        } else {
            Some(peer_tls::listener_config(tls, &peers)?)
        };
        let card = FederationCard {
            domain: domain.to_string(),
            url: url.clone(),
            tls_anchor: base64::engine::general_purpose::STANDARD.encode(tls.anchor_der()),
            tls_anchor_sha256: tls.anchor_fingerprint.clone(),
            log_key: log_key.to_string(),
            witness_key: witness.verifier_key(),
        };
        Ok(Some(Federation {
            url,
            addr,
            listener: std::sync::Mutex::new(Some(listener)),
            card,
            peers,
            witness: Arc::new(witness),
            listener_tls,
            identify,
        }))
    }

    /// The bound listener, once (for [`serve`]).
    fn take_listener(&self) -> Option<std::net::TcpListener> {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn peer(&self, domain: &str) -> Option<&Arc<Peer>> {
        self.peers.iter().find(|p| p.domain == domain)
    }
}

impl Peer {
    fn check(
        p: &PeerSettings,
        own_domain: &str,
        tls: &crate::tls::TlsIdentity,
    ) -> Result<Peer, String> {
        let domain = p.domain.trim().to_ascii_lowercase();
        if domain.is_empty()
            || domain.len() > 253
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err("domain must be a DNS name such as mfa-b.example".into());
        }
        if domain == own_domain {
            return Err("that is this server's own domain".into());
        }
        let url = checked_url(&p.url).map_err(|e| format!("url: {e}"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(p.tls_anchor.trim())
            .map_err(|_| "tls_anchor is not base64 (copy it whole from the card)".to_string())?;
        let anchor = CertificateDer::from(der);
        webpki::anchor_from_trusted_cert(&anchor).map_err(|_| {
            "tls_anchor is not a certificate (copy it whole from the card)".to_string()
        })?;
        let log_origin = format!("{domain}/log");
        pouch_log::check_log_key(&p.log_key, &log_origin).map_err(|e| format!("log_key: {e}"))?;
        pouch_log::witness::WitnessVerifier::parse(&p.witness_key)
            .map_err(|_| "witness_key is not a witness verifier key".to_string())?;
        let http = peer_tls::client(tls, &anchor)?;
        Ok(Peer {
            anchor_sha256: crate::tls::fingerprint(anchor.as_ref()),
            anchor: anchor.into_owned(),
            domain,
            url,
            log_key: p.log_key.trim().to_string(),
            log_origin,
            witness_key: p.witness_key.trim().to_string(),
            http,
        })
    }
}

/// An `https://` URL without a trailing slash.
fn checked_url(u: &str) -> Result<String, String> {
    let u = u.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(u).map_err(|e| format!("{u} is not a URL ({e})"))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none() {
        return Err(format!("{u} must be https://HOST:PORT"));
    }
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(format!("{u} must have no path"));
    }
    Ok(u.to_string())
}

/// Serves the federation listener until the server stops. Without peers
/// nobody could complete a handshake: the port is closed.
pub async fn serve(
    state: Arc<crate::AppState>,
    connections: crate::conncap::ConnectionLimits,
    handle: axum_server::Handle,
) -> Result<(), StartError> {
    let Some(fed) = state.federation.clone() else {
        return Ok(());
    };
    let Some(listener) = fed.take_listener() else {
        return Ok(());
    };
    let Some(tls) = fed.listener_tls.clone() else {
        drop(listener);
        return Ok(());
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Io(e.to_string()))?;
    tokio::spawn(witness_peers(state.clone()));
    let acceptor = peer_tls::PeerAcceptor {
        inner: axum_server::tls_rustls::RustlsAcceptor::new(
            axum_server::tls_rustls::RustlsConfig::from_config(tls),
        )
        .acceptor(crate::conncap::CappedAcceptor::new(connections)),
        fed,
        state: state.clone(),
    };
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let mut server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::HEADER_READ_TIMEOUT);
    server
        .serve(app)
        .await
        .map_err(|e| StartError::Io(format!("federation listener stopped: {e}")))
}

/// Asks each peer's witness to cosign this server's current checkpoint, in
/// the background: every few seconds while the log grows. A peer that is
/// down is asked again later and holds up nothing else.
pub async fn witness_peers(s: Arc<crate::AppState>) {
    let Some(fed) = s.federation.clone() else {
        return;
    };
    if fed.peers.is_empty() {
        return;
    }
    let mut known = crate::service::log::PeerWitnessing::default();
    loop {
        if let Err(e) = crate::service::log::cosign_with_peers(&s, &fed, &mut known).await {
            tracing::warn!(error = %e.message, "cannot ask the peers' witnesses");
        }
        tokio::time::sleep(PEER_WITNESS_EVERY).await;
    }
}

/// How often the peers' witnesses are asked for a grown log.
pub const PEER_WITNESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
