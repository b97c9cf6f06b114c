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
//! - **Cross-witnessing** ([`keep_up`]). Each server runs a witness
//!   (C2SP tlog-witness) for its peers' logs — it follows each peer's log,
//!   cosigning only consistent extensions — and asks each peer's witness to
//!   cosign its own checkpoints. A peer that shows this server one log and
//!   its own users another cannot get both cosigned by the same witness: the
//!   witness keeps the largest tree it cosigned and refuses anything not
//!   consistent with it — a split view or a rollback is a critical alert.
//!   Devices accept a peer's checkpoint only with their own domain's
//!   witness's cosignature (`pouch-client/src/remote.rs`).
//! - **Peers are not announced as this log's witnesses** to its own
//!   devices: a partner's outage must not make this ministry's own log look
//!   unwitnessed.
//!
//! Still to come (issue 14): remote device lists verified against the
//! peer's log, the hub per conversation and the durable per-peer outbox.

pub mod mail;
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
    /// That URL's host: the name its certificate must be valid for, when
    /// it connects here as when this server connects to it.
    pub host: String,
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
    /// Directory questions to it in flight at once, at most.
    lookups: tokio::sync::Semaphore,
    /// Its requests that carry mail (forwardings, messages, commits, blob
    /// chunks: megabytes each) being read here at once, at most.
    pub(crate) bulk: tokio::sync::Semaphore,
    /// Its last good answer per question (the accounts asked, sorted):
    /// given again while its log has not grown since (this server's witness
    /// follows it every few seconds), and while it cannot be reached, so its
    /// users' conversations hosted here go on. Devices check it as any
    /// answer: this server's witness cosigned its checkpoint, and they never
    /// go back to an older list than one they saw.
    answers: std::sync::Mutex<std::collections::HashMap<Vec<pouch_proto::Address>, Kept>>,
}

/// A peer's directory answer kept, and the size of its log it is for.
#[derive(Clone)]
struct Kept {
    answer: pouch_proto::api::RemoteDirectory,
    size: u64,
    /// When the peer gave it (Unix seconds).
    at: i64,
}

/// A peer's requests carrying mail read at once, at most (each up to
/// 24 MiB): the rest wait their turn, so one peer cannot fill this server's
/// memory.
pub const BULK_AT_ONCE: usize = 4;

/// Last good answers kept per peer, at most (then all are dropped and kept anew).
const ANSWERS_KEPT: usize = 4_096;
/// How recently this server's witness must have seen the peer's log at the
/// size of a kept answer for the answer to be given again without asking
/// (its follow runs every [`FOLLOW_EVERY`]): a change to a partner's
/// device list reaches this domain's devices within about this long.
const ANSWER_FRESH_SECS: i64 = 15;
/// Answers kept only for questions about at most this many accounts, and
/// of at most this many bytes: with [`ANSWERS_KEPT`], at most 256 MiB for
/// all of a peer's if every answer were that large (one account's lists,
/// every version, are a few kilobytes).
const ANSWER_KEPT_ACCOUNTS: usize = 4;
const ANSWER_KEPT_BYTES: usize = 64 << 10;
/// How long a peer's last answer is given again while it cannot be reached.
const UNREACHABLE_ANSWER_SECS: i64 = 3600;

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
    /// What this node knows of each peer (by domain), for the operators.
    states: std::sync::Mutex<std::collections::HashMap<String, PeerState>>,
    /// Each peer's request budget ([`Federation::admit`]).
    budgets: std::sync::Mutex<std::collections::HashMap<String, Budget>>,
    /// Requests per minute one peer may make.
    per_minute: f64,
    /// Rung when something is queued for a peer's devices (its outbox).
    bells: std::collections::HashMap<String, Arc<tokio::sync::Notify>>,
}

/// A token bucket: `tokens` left as of `at`; `said`: when a refusal was
/// last recorded (one event a minute, not one per refused request).
struct Budget {
    tokens: f64,
    at: std::time::Instant,
    said: Option<std::time::Instant>,
}

/// What [`Federation::admit`] decided.
pub(crate) enum Admission {
    Go,
    /// Over its budget; `record`: the first refusal this minute.
    Refused {
        record: bool,
    },
}

/// Requests per minute a peer may make by default: its witness asks every
/// 2 s while the log grows, its follower every 10 s, and its devices'
/// directory questions come on top.
pub const PEER_REQUESTS_PER_MINUTE: u32 = 600;

/// What this node knows of one peer, as its background task goes.
#[derive(Clone, Debug, Default)]
pub struct PeerState {
    /// When the peer last answered (Unix seconds).
    pub last_contact: Option<i64>,
    /// Why the last exchange with it failed (cleared by the next success).
    pub last_error: Option<String>,
    /// The peer's newest checkpoint this server's witness cosigned.
    pub followed: Option<Followed>,
    /// The size of this server's log the peer's witness last cosigned.
    pub ours_cosigned: Option<u64>,
}

/// The peer's newest checkpoint as this server's witness cosigned it.
#[derive(Clone, Debug)]
pub struct Followed {
    pub size: u64,
    /// When this server's witness cosigned it (Unix seconds).
    pub cosigned_at: i64,
}

/// The most peers one server takes: each is a TLS client, a witness entry,
/// a cosignature line on every checkpoint (a signed note holds at most 100
/// signatures, the log's and its own witnesses' included) and, later, an
/// outbox.
pub const MAX_PEERS: usize = 32;

impl Federation {
    /// Checks the `[federation]` settings and opens the witness. `None` when
    /// federation is not configured (no `listen`).
    pub fn start(
        settings: &FederationSettings,
        domain: &str,
        data_dir: &Path,
        tls: &crate::tls::TlsIdentity,
        log_key: &str,
        own_witnesses: &[String],
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
        if !settings.peers.is_empty() && !tls.for_clients_too() {
            return Err(StartError::Config(
                "the serving certificate is not issued for client authentication (extended key usage clientAuth), which federation peers require: issue it with both serverAuth and clientAuth, or let Pouch issue its own".into(),
            ));
        }
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        for p in &settings.peers {
            let peer = Peer::check(p, domain, tls).map_err(|e| {
                StartError::Config(format!(
                    "[[federation.peers]] {}: {e}; fix it from the partner's card (pouch admin federation card)",
                    if p.domain.is_empty() { "(no domain)" } else { &p.domain }
                ))
            })?;
            if own_witnesses
                .iter()
                .any(|w| w.split('+').next() == Some(peer.witness_name()))
            {
                return Err(StartError::Config(format!(
                    "[[federation.peers]] {}: its witness_key has the name of one of this server's own witnesses",
                    peer.domain
                )));
            }
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
            witness: Arc::new(witness),
            listener_tls,
            identify,
            bells: peers
                .iter()
                .map(|p| (p.domain.clone(), Arc::new(tokio::sync::Notify::new())))
                .collect(),
            peers,
            states: Default::default(),
            budgets: Default::default(),
            per_minute: f64::from(
                settings
                    .peer_requests_per_minute
                    .unwrap_or(PEER_REQUESTS_PER_MINUTE)
                    .max(1),
            ),
        }))
    }

    /// The bell of a peer's outbox ([`mail::forward_to`] waits on it).
    pub(crate) fn outbox_bell(&self, domain: &str) -> Arc<tokio::sync::Notify> {
        self.bells.get(domain).cloned().unwrap_or_default()
    }

    /// Something was queued that may be for peers' devices: each peer's
    /// forwarder looks (a permit is kept when it is busy, so none is lost).
    pub fn wake_outboxes(&self) {
        for bell in self.bells.values() {
            bell.notify_one();
        }
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

    /// Whether `domain` may make one more request now: a bucket of
    /// [`Self::per_minute`] requests, refilled steadily.
    pub(crate) fn admit(&self, domain: &str) -> Admission {
        let now = std::time::Instant::now();
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let b = budgets.entry(domain.to_string()).or_insert(Budget {
            tokens: self.per_minute,
            at: now,
            said: None,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_minute / 60.0;
        b.tokens = (b.tokens + refill).min(self.per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admission::Go;
        }
        let record = b
            .said
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60));
        if record {
            b.said = Some(now);
        }
        Admission::Refused { record }
    }

    /// What this node knows of `domain` now.
    pub fn state(&self, domain: &str) -> PeerState {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn update(&self, domain: &str, f: impl FnOnce(&mut PeerState)) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        f(states.entry(domain.to_string()).or_default())
    }

    /// The peer answered: an exchange worked.
    pub(crate) fn answered(&self, domain: &str, f: impl FnOnce(&mut PeerState)) {
        self.update(domain, |st| {
            st.last_contact = Some(crate::now());
            st.last_error = None;
            f(st)
        })
    }

    /// An exchange with the peer failed (it may be down: nothing else waits).
    pub(crate) fn failed(&self, domain: &str, why: &str) {
        self.update(domain, |st| {
            st.last_error = Some(why.chars().take(300).collect())
        })
    }

    /// The operators' view (`pouch admin federation status`), with what
    /// waits in the store for each peer (its outbox).
    pub async fn status(
        &self,
        domain: &str,
        store: &dyn pouch_store::Store,
    ) -> Result<pouch_proto::api::FederationStatus, pouch_store::StoreError> {
        let now = crate::now();
        let mut backlogs = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            backlogs.push(store.remote_backlog(&p.domain).await?);
        }
        Ok(pouch_proto::api::FederationStatus {
            domain: domain.to_string(),
            url: self.url.clone(),
            peers: self
                .peers
                .iter()
                .zip(backlogs)
                .map(|(p, (outbox_items, oldest))| {
                    let st = self.state(&p.domain);
                    pouch_proto::api::PeerStatus {
                        domain: p.domain.clone(),
                        url: p.url.clone(),
                        last_contact: st.last_contact,
                        last_error: st.last_error,
                        log_size: st.followed.as_ref().map(|f| f.size),
                        cosigned_age_secs: st
                            .followed
                            .as_ref()
                            .map(|f| (now - f.cosigned_at).max(0) as u64),
                        ours_cosigned: st.ours_cosigned,
                        outbox_items,
                        outbox_oldest_secs: oldest.map(|t| (now - t).max(0) as u64),
                    }
                })
                .collect(),
        })
    }
}

/// A peer's log that is not one history, as this server's witness saw it
/// (the peer `how` it: showed it when asking for a cosignature, served it
/// when followed): every time an event, a critical alert once per source
/// and window.
pub(crate) async fn log_misbehaved(
    s: &crate::AppState,
    source: Option<std::net::IpAddr>,
    peer: &str,
    origin: &str,
    why: &str,
    how: &str,
) {
    crate::service::audit::record(
        s,
        crate::service::audit::Ev::new(pouch_proto::security::Action::PeerCheckpoint)
            .source(
                source
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| peer.to_string()),
            )
            .failed(
                pouch_proto::security::Reason::PeerLogMisbehaved,
                format!(
                    "peer {peer} {how} this server's witness a log {origin} it cannot have: {why}"
                ),
            ),
    )
    .await
}

/// The most a peer's answer may hold (a checkpoint, a proof, a reply).
pub const ANSWER_MAX: usize = 64 * 1024;

/// The start of what another server said, fit for a log line or a status:
/// 200 characters at most, control characters blanked.
pub(crate) fn shown_answer(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A peer's answer body, read up to `max` bytes (a peer is not trusted
/// with this server's memory).
pub(crate) async fn bounded_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("its answer is larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("its answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A peer's answer over mutual TLS, read up to `max` bytes; an error
/// status is an error, with the start of what the peer said.
async fn peer_answer(
    peer: &Peer,
    request: reqwest::RequestBuilder,
    max: usize,
) -> Result<Vec<u8>, String> {
    let resp = request
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let status = resp.status();
    let body = bounded_body(resp, max).await?;
    if !status.is_success() {
        return Err(format!(
            "{} answered HTTP {status}: {}",
            peer.domain,
            shown_answer(&body)
        ));
    }
    Ok(body)
}

/// Brings this server's witness up to the peer's newest checkpoint (see
/// [`cosign_peer_note`]).
async fn follow(s: &crate::AppState, fed: &Federation, peer: &Peer) -> Result<(), String> {
    let note = peer_answer(
        peer,
        peer.http
            .get(format!("{}/federation/v1/checkpoint", peer.url)),
        ANSWER_MAX,
    )
    .await?;
    cosign_peer_note(s, fed, peer, &note, true)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Why this server's witness did not cosign a peer's checkpoint.
#[derive(Debug)]
enum NotCosigned {
    /// Smaller than what the witness cosigned already: an answer that
    /// crossed a newer one (ask again), or a rollback — which following
    /// the log catches, where it is an alert.
    Behind,
    Failed(String),
}

impl std::fmt::Display for NotCosigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCosigned::Behind => f.write_str("its checkpoint is older than one already cosigned"),
            NotCosigned::Failed(why) => f.write_str(why),
        }
    }
}

/// Has this server's witness cosign the peer's checkpoint `note`: from the
/// size it cosigned before, with the consistency proof fetched from the
/// peer, the witness cosigns only a consistent extension. Returns the note
/// with the cosignature (its size noted as the peer's [`Followed`] one).
/// `following`: the peer's newest checkpoint as it serves it, so one
/// smaller than the witnessed one goes to the witness (a rollback alert);
/// otherwise (an answer that may have crossed a newer checkpoint) it is
/// [`NotCosigned::Behind`].
async fn cosign_peer_note(
    s: &crate::AppState,
    fed: &Federation,
    peer: &Peer,
    note: &[u8],
    following: bool,
) -> Result<Vec<u8>, NotCosigned> {
    let failed = NotCosigned::Failed;
    if note.len() > ANSWER_MAX {
        return Err(failed("its checkpoint is too large".into()));
    }
    // Only the log's own signature goes on: lines under other names (this
    // server's witness's among them) are the peer's to make up.
    let note = &pouch_log::witness::only_signatures_of(note, &peer.log_origin)
        .map_err(|e| failed(format!("its checkpoint is malformed: {e}")))?;
    let checkpoint =
        pouch_log::open_checkpoint(note, &peer.log_key, &peer.log_origin).map_err(|e| {
            failed(format!(
                "its checkpoint does not verify with its log key: {e}"
            ))
        })?;
    let size = checkpoint.size();
    let old = fed.witness.cosigned_size(&peer.log_origin).await;
    if size < old && !following {
        // An answer that crossed a newer checkpoint is an older one of the
        // same history: the peer proves it. If it cannot, its log forked.
        return match older_is_consistent(peer, &checkpoint, fed).await {
            Ok(true) => Err(NotCosigned::Behind),
            Ok(false) => {
                let why = format!(
                    "a checkpoint of size {size} that the tree of size {old} already cosigned does not extend"
                );
                log_misbehaved(s, None, &peer.domain, &peer.log_origin, &why, "served").await;
                Err(failed(format!("its log is not one history: {why}")))
            }
            Err(e) => Err(failed(e)),
        };
    }
    let proof = if old > 0 && old < size {
        consistency_proof(peer, old, size).await.map_err(failed)?
    } else {
        Vec::new()
    };
    let body = pouch_log::witness::AddCheckpoint {
        old_size: old,
        proof,
        note: note.to_vec(),
    }
    .encode();
    let (reply, decision) = fed
        .witness
        .add_checkpoint(&body, Some(&peer.log_origin))
        .await;
    match decision {
        crate::witness::Decision::Cosigned { size, .. } => {
            let cosigned = pouch_log::witness::add_cosignatures(note, &[reply.body])
                .map_err(|e| failed(format!("cannot add this server's cosignature: {e}")))?;
            fed.answered(&peer.domain, |st| {
                if st.followed.as_ref().is_none_or(|f| f.size <= size) {
                    st.followed = Some(Followed {
                        size,
                        cosigned_at: crate::now(),
                    })
                }
            });
            Ok(cosigned)
        }
        crate::witness::Decision::Misbehaved { origin, why } => {
            log_misbehaved(s, None, &peer.domain, &origin, &why, "served").await;
            Err(failed(format!("its log is not one history: {why}")))
        }
        // The witness's size moved meanwhile (the peer's own request, or a
        // follow): ask again.
        crate::witness::Decision::Other if reply.status == axum::http::StatusCode::CONFLICT => {
            Err(NotCosigned::Behind)
        }
        crate::witness::Decision::Other => Err(failed(format!(
            "this server's witness did not cosign its checkpoint ({}: {})",
            reply.status,
            reply.body.trim()
        ))),
    }
}

/// The peer's consistency proof from tree size `from` to `to`, bounded and
/// parsed (a proof holds at most two hashes per level of the tree).
async fn consistency_proof(
    peer: &Peer,
    from: u64,
    to: u64,
) -> Result<Vec<pouch_log::Hash>, String> {
    let answer = peer_answer(
        peer,
        peer.http.get(format!(
            "{}/federation/v1/log/consistency?from={from}&to={to}",
            peer.url
        )),
        ANSWER_MAX,
    )
    .await?;
    let malformed = || format!("{}'s consistency proof is malformed", peer.domain);
    let answer = serde_json::from_slice::<pouch_proto::api::LogConsistency>(&answer)
        .map_err(|_| malformed())?;
    if answer.proof.len() > 128 {
        return Err(malformed());
    }
    answer
        .proof
        .iter()
        .map(|h| pouch_log::hash_from_b64(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed())
}

/// Whether the witnessed tree extends the (smaller) `checkpoint`, by a
/// consistency proof the peer gives; `Err` when the peer could not be asked.
async fn older_is_consistent(
    peer: &Peer,
    checkpoint: &pouch_log::Checkpoint,
    fed: &Federation,
) -> Result<bool, String> {
    let Some((old, old_root)) = fed.witness.cosigned_tree(&peer.log_origin).await else {
        return Ok(true);
    };
    let size = checkpoint.size();
    if size == 0 || size >= old {
        return Ok(true);
    }
    // A malformed reply is a misbehaving reply (an error), not proof of a fork.
    let proof = consistency_proof(peer, size, old).await?;
    Ok(pouch_log::verify_consistency(&proof, old, old_root, size, *checkpoint.hash()).is_ok())
}

/// Another domain's accounts for this server's devices: asked of its
/// server, its checkpoint cosigned by this server's witness (so it extends
/// every checkpoint of that log this server's devices were shown). A peer
/// that cannot be asked gives an answer that says why.
pub async fn remote_lookup(
    s: &crate::AppState,
    fed: &Federation,
    peer: &Peer,
    addresses: Vec<pouch_proto::Address>,
) -> pouch_proto::api::RemoteDirectory {
    // A few questions to one peer at a time: each may hold a large answer.
    let Ok(_turn) = peer.lookups.acquire().await else {
        return pouch_proto::api::RemoteDirectory {
            domain: peer.domain.clone(),
            error: Some("this server is stopping".into()),
            ..Default::default()
        };
    };
    let mut question = addresses.clone();
    question.sort();
    question.dedup();
    let kept = peer
        .answers
        .lock()
        .expect("not poisoned")
        .get(&question)
        .cloned();
    // The peer's log has not grown since that answer, as this server's
    // witness saw it lately: the answer is still the peer's newest word.
    // (And asked again every so often all the same: what a peer serves
    // without its log growing — a device slipped in — is seen then.)
    if let (Some(k), Some(followed)) = (&kept, fed.state(&peer.domain).followed)
        && followed.size == k.size
        && crate::now() - followed.cosigned_at <= ANSWER_FRESH_SECS
        && crate::now() - k.at <= ANSWER_FRESH_SECS
    {
        return k.answer.clone();
    }
    match ask_directory(s, fed, peer, addresses).await {
        Ok(found) => {
            let size = found.checkpoint.lines().nth(1).and_then(|l| l.parse().ok());
            // Devices ask about one account at a time; larger questions
            // (up to 16 MiB of answer), and large answers, are not kept.
            let bytes = serde_json::to_vec(&found)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if let Some(size) = size
                .filter(|_| question.len() <= ANSWER_KEPT_ACCOUNTS && bytes <= ANSWER_KEPT_BYTES)
            {
                let mut kept = peer.answers.lock().expect("not poisoned");
                if kept.len() >= ANSWERS_KEPT {
                    kept.clear();
                }
                kept.insert(
                    question,
                    Kept {
                        answer: found.clone(),
                        size,
                        at: crate::now(),
                    },
                );
            }
            found
        }
        // For an hour at most: a partner out of reach for longer (or made
        // to look so) does not keep this domain's devices on its lists of
        // then; their mail to its users waits in their outboxes instead.
        Err(why)
            if is_unreachable(&why)
                && kept
                    .as_ref()
                    .is_some_and(|k| crate::now() - k.at <= UNREACHABLE_ANSWER_SECS) =>
        {
            tracing::info!(peer = %peer.domain, error = %why, "the peer cannot be reached: its last answer is given again");
            fed.failed(&peer.domain, &why);
            kept.expect("checked").answer
        }
        Err(why) => {
            tracing::warn!(peer = %peer.domain, error = %why, "a directory question to the peer failed");
            fed.failed(&peer.domain, &why);
            // The details are the operators' (their status shows them),
            // not words a peer chose put before users.
            pouch_proto::api::RemoteDirectory {
                domain: peer.domain.clone(),
                error: Some(format!(
                    "the server of {} did not answer as it should; your administrators can see why",
                    peer.domain
                )),
                ..Default::default()
            }
        }
    }
}

/// Whether a failed exchange is the peer being out of reach (not a wrong
/// answer, after which nothing it said before is given again either).
fn is_unreachable(why: &str) -> bool {
    why.starts_with("unreachable") || why.ends_with("did not answer in time")
}

/// The accounts whose newest list the answer does not prove against its
/// own checkpoint (no proof, a proof that fails, or a leaf for another
/// list). Devices refuse those; the server checks the same to tell the
/// security team ([`report_unproven`]).
fn unproven_lists(
    peer: &Peer,
    answer: &pouch_proto::api::PeerDirectory,
) -> Vec<(pouch_proto::Address, u64)> {
    use base64::Engine as _;
    let Ok(checkpoint) = pouch_log::open_checkpoint(
        answer.directory.checkpoint.as_bytes(),
        &peer.log_key,
        &peer.log_origin,
    ) else {
        return Vec::new(); // the witness refused it already
    };
    // The key the log's leaves commit to addresses under (its own leaf is
    // checked by the devices; a wrong one only makes every list unproven).
    let commitments = base64::engine::general_purpose::STANDARD
        .decode(&answer.commitment_key.key)
        .ok()
        .and_then(|k| pouch_log::CommitmentKey::from_bytes(&k).ok())
        .map(|key| pouch_log::Commitments {
            key,
            key_index: answer.commitment_key.inclusion.index,
        });
    let mut unproven = Vec::new();
    for entry in &answer.directory.entries {
        let Some(latest) = entry.lists.last() else {
            continue;
        };
        let version = latest.body_unverified().map(|b| b.version).unwrap_or(0);
        let proven = entry.newest.as_ref().is_some_and(|p| {
            p.proof
                .iter()
                .map(|h| pouch_log::hash_from_b64(h))
                .collect::<Result<Vec<_>, _>>()
                .is_ok_and(|proof| {
                    pouch_log::verify_inclusion(
                        &proof,
                        checkpoint.size(),
                        *checkpoint.hash(),
                        p.index,
                        &p.entry,
                    )
                    .is_ok()
                }) && commitments.as_ref().is_some_and(|c| {
                matches!(
                    c.open(p.index, &p.entry, &p.full, &entry.address),
                    Ok(pouch_log::AnyEntry::List(e)) if e.version == version && &e.list == latest
                )
            })
        });
        if !proven {
            unproven.push((entry.address.clone(), version));
        }
    }
    unproven
}

/// At most this many accounts are reported per answer (a hostile peer's
/// answer is bounded, but its entries may be many).
const UNPROVEN_REPORTED_MAX: usize = 10;

/// An event per account (a few per answer), and per peer, account and
/// window a high alert (detect.rs): what a peer slipping a device into one
/// of its accounts would serve.
async fn report_unproven(
    s: &crate::AppState,
    peer: &Peer,
    unproven: &[(pouch_proto::Address, u64)],
) {
    for (address, version) in unproven.iter().take(UNPROVEN_REPORTED_MAX) {
        crate::service::audit::record(
            s,
            crate::service::audit::Ev::new(pouch_proto::security::Action::PeerAnswer)
                .source(&peer.domain)
                .targets([address.clone()])
                .failed(
                    pouch_proto::security::Reason::PeerListUnlogged,
                    format!(
                        "peer {} served version {version} of {address}'s device list without the proof that its log records it; this server's devices refuse it",
                        peer.domain
                    ),
                ),
        )
        .await;
    }
}

/// The longest a device's question waits for federation peers' answers
/// (each peer's client has its own 15 s timeout per request; a question
/// may take a few).
pub const LOOKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The most a peer's directory answer may hold (up to 1,001 accounts'
/// lists with proofs).
const DIRECTORY_ANSWER_MAX: usize = 16 << 20;

async fn ask_directory(
    s: &crate::AppState,
    fed: &Federation,
    peer: &Peer,
    addresses: Vec<pouch_proto::Address>,
) -> Result<pouch_proto::api::RemoteDirectory, String> {
    let mut unproven_before: Option<Vec<(pouch_proto::Address, u64)>> = None;
    let asked = ask_directory_rounds(s, fed, peer, addresses, &mut unproven_before);
    // Bounded below the devices' deadline, so that what was found unproven
    // is still reported when the second round fails or stalls.
    let answered = match tokio::time::timeout(DIRECTORY_ROUNDS_DEADLINE, asked).await {
        Ok(answered) => answered,
        Err(_) => Err(format!("{} did not answer in time", peer.domain)),
    };
    if answered.is_err()
        && let Some(unproven) = &unproven_before
    {
        // Served unproven, then no answer: a peer that will not show the
        // proof twice is reported all the same.
        report_unproven(s, peer, unproven).await;
    }
    answered
}

/// The longest one directory question to a peer takes, its second round
/// included (within [`LOOKUP_DEADLINE`]).
const DIRECTORY_ROUNDS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(25);

async fn ask_directory_rounds(
    s: &crate::AppState,
    fed: &Federation,
    peer: &Peer,
    addresses: Vec<pouch_proto::Address>,
    unproven_before: &mut Option<Vec<(pouch_proto::Address, u64)>>,
) -> Result<pouch_proto::api::RemoteDirectory, String> {
    let asked: std::collections::BTreeSet<pouch_proto::Address> = addresses
        .iter()
        .filter(|a| a.domain() == peer.domain)
        .cloned()
        .collect();
    let request = pouch_proto::api::DirectoryRequest {
        addresses: asked.iter().cloned().collect(),
    };
    for _ in 0..3 {
        let answer = peer_answer(
            peer,
            peer.http
                .post(format!("{}/federation/v1/directory/lists", peer.url))
                .json(&request),
            DIRECTORY_ANSWER_MAX,
        )
        .await?;
        let mut answer: pouch_proto::api::PeerDirectory = serde_json::from_slice(&answer)
            .map_err(|_| format!("{}'s directory answer is malformed", peer.domain))?;
        // Only what was asked, once each: nothing else reaches the devices
        // (or the alerts).
        let mut seen = std::collections::BTreeSet::new();
        answer
            .directory
            .entries
            .retain(|e| asked.contains(&e.address) && seen.insert(e.address.clone()));
        answer
            .directory
            .unknown
            .retain(|a| asked.contains(a) && !seen.contains(a));
        if answer.commitment_key.inclusion.checkpoint != answer.directory.checkpoint {
            return Err(format!(
                "{}'s directory answer mixes two checkpoints",
                peer.domain
            ));
        }
        match cosign_peer_note(s, fed, peer, answer.directory.checkpoint.as_bytes(), false).await {
            Ok(cosigned) => {
                // A list published while the peer answered has no proof
                // yet: asked again once; still unproven, reported.
                let unproven = unproven_lists(peer, &answer);
                if !unproven.is_empty() && unproven_before.is_none() {
                    *unproven_before = Some(unproven);
                    continue;
                }
                *unproven_before = None;
                report_unproven(s, peer, &unproven).await;
                let key_proof: pouch_proto::api::LeafProof = answer.commitment_key.inclusion.into();
                return Ok(pouch_proto::api::RemoteDirectory {
                    domain: peer.domain.clone(),
                    error: None,
                    log_key: peer.log_key.clone(),
                    checkpoint: String::from_utf8_lossy(&cosigned).into_owned(),
                    commitment_key: answer.commitment_key.key,
                    commitment_key_proof: Some(key_proof),
                    entries: answer.directory.entries,
                    unknown: answer.directory.unknown,
                });
            }
            // It crossed a newer checkpoint this server's witness saw: again.
            Err(NotCosigned::Behind) => continue,
            Err(NotCosigned::Failed(why)) => return Err(why),
        }
    }
    Err(format!(
        "{}'s log moved on while it answered; try again",
        peer.domain
    ))
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
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .ok_or_else(|| "url has no host".to_string())?;
        let log_origin = format!("{domain}/log");
        pouch_log::check_log_key(&p.log_key, &log_origin).map_err(|e| format!("log_key: {e}"))?;
        pouch_log::witness::WitnessVerifier::parse(p.witness_key.trim())
            .map_err(|_| "witness_key is not a witness verifier key".to_string())?;
        if p.witness_key.trim().split('+').next() != Some(format!("{domain}/witness").as_str()) {
            return Err(format!("witness_key must be named {domain}/witness"));
        }
        let http = peer_tls::client(tls, &anchor)?;
        Ok(Peer {
            host,
            anchor_sha256: crate::tls::fingerprint(anchor.as_ref()),
            anchor: anchor.into_owned(),
            domain,
            url,
            log_key: p.log_key.trim().to_string(),
            log_origin,
            witness_key: p.witness_key.trim().to_string(),
            http,
            lookups: tokio::sync::Semaphore::new(4),
            bulk: tokio::sync::Semaphore::new(BULK_AT_ONCE),
            answers: Default::default(),
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
    tokio::spawn(keep_up(state.clone()));
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

/// Keeps up with the peers in the background, one task per peer (a peer
/// that is slow or down holds up no other): every [`PEER_WITNESS_EVERY`]
/// has the peer's witness cosign this server's checkpoint if the stored
/// note lacks its cosignature, and every [`FOLLOW_EVERY`] follows the
/// peer's log with this server's witness. A failure is tried again later.
pub async fn keep_up(s: Arc<crate::AppState>) {
    let Some(fed) = s.federation.clone() else {
        return;
    };
    for peer in fed.peers.clone() {
        tokio::spawn(keep_up_with(s.clone(), fed.clone(), peer.clone()));
        tokio::spawn(mail::forward_to(s.clone(), fed.clone(), peer));
    }
}

async fn keep_up_with(s: Arc<crate::AppState>, fed: Arc<Federation>, peer: Arc<Peer>) {
    let mut followed_at: Option<std::time::Instant> = None;
    loop {
        let was_failing = fed.state(&peer.domain).last_error.is_some();
        let mut failure = None;
        match crate::service::log::cosign_with_peer(&s, &peer).await {
            Ok((size, true)) => fed.answered(&peer.domain, |st| st.ours_cosigned = Some(size)),
            Ok((size, false)) => fed.update(&peer.domain, |st| st.ours_cosigned = Some(size)),
            Err(e) => failure = Some(format!("its witness: {e}")),
        }
        if failure.is_none() && followed_at.is_none_or(|t| t.elapsed() >= FOLLOW_EVERY) {
            followed_at = Some(std::time::Instant::now());
            if let Err(e) = follow(&s, &fed, &peer).await {
                failure = Some(e);
            }
        }
        match failure {
            Some(e) => {
                if !was_failing {
                    tracing::warn!(peer = %peer.domain, error = %e, "an exchange with the peer failed; trying again every few seconds");
                }
                fed.failed(&peer.domain, &e);
            }
            None if was_failing && fed.state(&peer.domain).last_error.is_none() => {
                tracing::info!(peer = %peer.domain, "the peer answers again")
            }
            None => {}
        }
        tokio::time::sleep(PEER_WITNESS_EVERY).await;
    }
}

/// How often the peers' witnesses are asked for a grown log.
pub const PEER_WITNESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often each peer's log is followed (its checkpoint fetched and
/// cosigned by this server's witness).
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
