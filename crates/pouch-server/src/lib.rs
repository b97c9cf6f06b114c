//! The Pouch delivery server: an HTTPS API (axum on rustls) over a
//! [`pouch_store::Store`].
//!
//! The server holds no key that opens mail. It authenticates devices by
//! their Ed25519 keys (signed challenge → short-lived bearer token), hands
//! out key packages once each, orders commits (one per epoch per group), and
//! keeps a queue per device. Everything it stores about a mail is an MLS
//! ciphertext or an encrypted blob chunk; see ARCHITECTURE.md for what it sees.
//!
//! It keeps no state of its own beyond the database, so several processes on
//! one PostgreSQL database act as one server.
#![forbid(unsafe_code)]

mod admins;
mod api;
pub mod config;
pub mod conncap;
mod cpu_meter;
pub mod detect;
mod devices;
mod error;
pub mod events;
mod extract;
pub mod federation;
mod groups;
mod labels;
pub mod log;
mod logkey;
pub mod metrics;
pub mod push;
pub mod recorder;
pub mod routes;
pub mod service;
pub mod sinks;

/// An optional value as a log field: the value itself, or empty — never
/// Rust's `Some(Address("…"))`, which log pipelines cannot parse.
pub(crate) fn shown<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The commit this server was built from (`build.rs`; "unknown" outside git).
pub const BUILD_COMMIT: &str = env!("POUCH_BUILD_COMMIT");
/// What `pouch --version` prints after the name: version and commit.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POUCH_BUILD_COMMIT"),
    ")"
);
pub mod tls;
pub mod witness;

use pouch_store::Store;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use api::{route_table, router};
pub use error::ApiError;

/// Default lifetime of a device's bearer token (`--token-ttl-secs`).
pub const TOKEN_TTL_SECS: u64 = 3600;
/// Time a client has to send a request's header.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the server checks whether its serving certificate is due
/// for renewal (it renews with 30 days left, so a day's delay is harmless).
const TLS_RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// Default lifetime of an invite.
pub const INVITE_TTL_SECS: u64 = 72 * 3600;

/// What one device may make the server store. Refusals are clear errors
/// (507 with a line to act on), never a silent drop.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes waiting in one device's queue (mail not yet fetched).
    pub queue_bytes: u64,
    /// Bytes of attachments (blobs) one device has on the server at once.
    pub blob_bytes: u64,
    /// A blob uploaded but never sent is deleted after this long.
    pub unsent_blob_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_bytes: 1 << 30,
            blob_bytes: 4 << 30,
            unsent_blob_secs: 24 * 3600,
        }
    }
}

pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub domain: String,
    /// Where the TLS identity comes from (see [`tls`]).
    pub tls: tls::TlsSettings,
    /// Used only when the database has no ciphersuite yet.
    pub ciphersuite: u16,
    /// The enforced key-rotation window.
    pub rotation_secs: u64,
    /// How long a link request waits for approval.
    pub link_ttl_secs: u64,
    /// How long a device's bearer token lasts.
    pub token_ttl_secs: u64,
    /// Storage bounds per device.
    pub limits: Limits,
    /// Concurrent HTTPS connections, in all and per network address.
    pub connections: conncap::ConnectionLimits,
    /// Witnesses to send checkpoints to.
    pub witnesses: Vec<service::log::WitnessConfig>,
    /// Retention, detection thresholds, alert outputs, responses.
    pub policy: config::Policy,
    /// The federation listener and peers (`[federation]` in `pouch.toml`).
    pub federation: config::FederationSettings,
}

/// Shared state of the request handlers.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub domain: String,
    pub ciphersuite: u16,
    pub rotation_secs: u64,
    pub link_ttl_secs: u64,
    pub token_ttl_secs: u64,
    pub limits: Limits,
    pub log: service::log::LogState,
    pub policy: config::Policy,
    pub sinks: sinks::Sinks,
    /// Events the database refused since logging last worked, and since when.
    pub events_lost: std::sync::atomic::AtomicU64,
    pub events_lost_since: std::sync::atomic::AtomicI64,
    /// Answers to link requests for accounts that cannot be linked.
    pub link_decoys: service::links::LinkDecoys,
    /// Devices waiting for mail, woken when some is queued for them.
    pub waiters: push::Waiters,
    /// Directory answers at the current checkpoint (`POST /v1/directory/lists`).
    pub directory: service::directory::DirectoryCache,
    /// Where requests hand their access events ([`recorder`]).
    pub recorder: recorder::Recorder,
    /// This node's data directory (backups are staged there).
    pub data_dir: PathBuf,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// The label policy and clearances in force, for the delivery check.
    pub labels: service::security::LabelState,
    /// Peers, when this server federates ([`federation`]).
    pub federation: Option<Arc<federation::Federation>>,
}

/// What start-up prepared, for the caller to print.
pub struct Prepared {
    pub state: Arc<AppState>,
    pub connections: conncap::ConnectionLimits,
    /// The trust anchor and the serving certificate ([`tls`]).
    pub tls: Arc<tls::TlsIdentity>,
    /// Where the one-time administrator setup secret was written, if this
    /// start created it.
    pub admin_setup_created: Option<PathBuf>,
    /// Whether the first administrator is still to be made.
    pub admin_setup_pending: bool,
    pub admin_setup_path: PathBuf,
    /// What `--rotate-anchor` changed, if it was given.
    pub anchor_change: Option<tls::AnchorChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(String),
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("database: {0}")]
    Store(#[from] pouch_store::StoreError),
    #[error("{0}")]
    Config(String),
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A Unix time as RFC 3339 UTC, for messages.
pub fn format_time(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

/// Writes `contents` to `path` readable by the owner only, atomically.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Makes the data directory private (0700) and, when `database_file` is
/// given, creates it private (0600) before SQLite opens it; SQLite gives
/// its -wal and -shm files the database file's permissions. An existing
/// directory or file is tightened the same way.
pub fn secure_data_dir(dir: &Path, database_file: Option<&Path>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(db) = database_file {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(db)?;
            for suffix in ["", "-wal", "-shm"] {
                let f = PathBuf::from(format!("{}{suffix}", db.display()));
                if f.exists() {
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
                }
            }
        }
    }
    Ok(())
}

/// Prepares the data directory, TLS identity, settings and admin token.
pub async fn prepare(config: &ServerConfig, store: Arc<dyn Store>) -> Result<Prepared, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        StartError::Io(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let anchor_change = if config.tls.rotate_anchor {
        if config.tls.cert.is_some() {
            return Err(StartError::Config(
                "--rotate-anchor changes the anchor the server made itself; with --tls-cert, put your CA's cross-certificate and old CA after the chain instead".into(),
            ));
        }
        Some(tls::rotate_anchor(
            &config.data_dir,
            &config.domain.to_ascii_lowercase(),
        )?)
    } else {
        None
    };
    let tls = Arc::new(tls::TlsIdentity::load(
        &config.data_dir,
        &config.domain.to_ascii_lowercase(),
        &config.tls,
    )?);

    let domain = store
        .init_setting("domain", &config.domain.to_ascii_lowercase())
        .await?;
    if domain != config.domain.to_ascii_lowercase() {
        return Err(StartError::Config(format!(
            "this database serves the domain '{domain}', not '{}': start with --domain {domain}",
            config.domain
        )));
    }
    let suite: u16 = store
        .init_setting("ciphersuite", &config.ciphersuite.to_string())
        .await?
        .parse()
        .map_err(|_| StartError::Config("the stored ciphersuite setting is damaged".into()))?;

    // The one-time setup secret that makes the first administrator (who
    // then adds the others): the database keeps only its hash, shared by
    // all nodes; the node that creates it writes it to its data directory.
    let setup_path = config.data_dir.join("admin-setup.token");
    let mut setup_created = None;
    let has_admins = !store.list_admins().await?.is_empty();
    // The shared token of earlier versions opens nothing any more.
    if store
        .delete_setting(service::administrators::LEGACY_TOKEN_SETTING)
        .await?
    {
        tracing::warn!(
            "the shared administrator token of earlier versions no longer works: administrators now have keys ('pouch admin init')"
        );
        let _ = std::fs::remove_file(config.data_dir.join("admin.token"));
    }
    let pending_setup = store
        .get_setting(service::administrators::SETUP_SETTING)
        .await?;
    if !has_admins && pending_setup.is_none() {
        let secret = hex::encode(random_bytes::<32>());
        let hash = hex::encode(sha256(secret.as_bytes()));
        let stored = store
            .init_setting(service::administrators::SETUP_SETTING, &hash)
            .await?;
        if stored == hash {
            write_private_file(&setup_path, format!("{secret}\n").as_bytes()).map_err(|e| {
                StartError::Io(format!("cannot write {}: {e}", setup_path.display()))
            })?;
            setup_created = Some(setup_path.clone());
        }
    }
    if has_admins {
        // Used: the file (if this node has it) is worth nothing now.
        let _ = std::fs::remove_file(&setup_path);
    }

    // The log's checkpoint key: created once, shared by every node through
    // the database, sealed there under a wrapping key each node holds.
    let origin = format!("{domain}/log");
    let (private, public) =
        logkey::load_or_create(store.as_ref(), &config.data_dir, &origin).await?;
    let key = pouch_log::LogKey::from_private(&private, &public)
        .map_err(|e| StartError::Config(e.to_string()))?;
    // The log's public leaves commit to accounts under a key whose hash the
    // log records once (at its first start with commitments).
    let commitment_index = match store.log_commitment_key(&key.commitment.leaf()).await {
        Ok(index) => index,
        Err(pouch_store::StoreError::Conflict) => {
            return Err(StartError::Config(
                "the transparency log records another commitment key: its signing key was replaced; restore the original log key".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let federation = federation::Federation::start(
        &config.federation,
        &domain,
        &config.data_dir,
        &tls,
        &key.verifier_key,
        &config
            .witnesses
            .iter()
            .map(|w| w.vkey.clone())
            .collect::<Vec<_>>(),
    )?
    .map(Arc::new);
    let sinks = sinks::Sinks::start(&config.policy.alerts, &domain).map_err(StartError::Config)?;
    let (recorder, recorder_tasks) = recorder::Recorder::new();
    let state = Arc::new(AppState {
        store,
        policy: config.policy.clone(),
        sinks,
        events_lost: Default::default(),
        events_lost_since: Default::default(),
        domain,
        ciphersuite: suite,
        rotation_secs: config.rotation_secs.max(1),
        link_ttl_secs: config.link_ttl_secs.max(1),
        token_ttl_secs: config.token_ttl_secs.max(1),
        limits: config.limits.clone(),
        log: service::log::LogState::new(origin, key, commitment_index, config.witnesses.clone()),
        link_decoys: Default::default(),
        waiters: Default::default(),
        directory: Default::default(),
        recorder,
        data_dir: config.data_dir.clone(),
        metrics: Default::default(),
        labels: Default::default(),
        federation,
    });
    recorder_tasks.start(&state, Arc::new(Detection));
    service::log::refresh_checkpoint(&state)
        .await
        .map_err(|e| StartError::Config(e.message))?;
    events::record(
        &state,
        events::Ev::new(pouch_proto::security::Action::ServerStart)
            .detail(format!("version {}", env!("CARGO_PKG_VERSION"))),
    )
    .await;
    if let Some(change) = &anchor_change {
        events::record(
            &state,
            events::Ev::new(pouch_proto::security::Action::TlsAnchorChanged).detail(format!(
                "anchor {} replaced by {}, which it cross-signed",
                change.previous, change.new
            )),
        )
        .await;
    }
    Ok(Prepared {
        connections: config.connections,
        state,
        tls,
        admin_setup_created: setup_created,
        admin_setup_pending: !has_admins,
        admin_setup_path: setup_path,
        anchor_change,
    })
}

/// Connects the audit recorder to the rules and to the alerts about logging
/// itself (the recorder names neither).
struct Detection;

impl recorder::Observer for Detection {
    fn appended(
        &self,
        s: Arc<AppState>,
        event: pouch_proto::api::EventBody,
        seq: u64,
    ) -> recorder::Reaction {
        Box::pin(async move { detect::on_event(&s, &event, seq).await })
    }

    fn append_failed(
        &self,
        s: Arc<AppState>,
        lost: Vec<pouch_proto::api::EventBody>,
        error: pouch_store::StoreError,
    ) -> recorder::Reaction {
        Box::pin(async move { service::audit::logging_failed(&s, &lost, &error).await })
    }

    fn append_worked(&self, s: Arc<AppState>) -> recorder::Reaction {
        Box::pin(async move { service::audit::logging_works_again(&s).await })
    }
}

/// Serves HTTPS on an already bound listener until `shutdown` resolves.
pub async fn serve(
    prepared: &Prepared,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Io(e.to_string()))?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    // The audit chain is checked every 2 s (new events, row count; the whole
    // chain every `chain_full_check`, 5 minutes by default); stale devices and
    // retention every sweep period.
    let watcher = prepared.state.clone();
    tokio::spawn(async move {
        let tick = std::time::Duration::from_secs(2);
        let sweep_every = watcher.policy.detection.sweep_every.max(tick);
        let full_every = watcher.policy.detection.chain_full_check.as_secs() / tick.as_secs();
        let mut chain = detect::ChainWatch::new(full_every);
        let mut stale = std::collections::HashSet::new();
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            chain.tick(&watcher).await;
            service::links::sweep(&watcher).await;
            let unsent_before = now() - watcher.limits.unsent_blob_secs as i64;
            if let Err(e) = watcher.store.collect_blobs(unsent_before).await {
                tracing::error!(error = %e, "cannot delete unreferenced blobs");
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                detect::sweep(&watcher, &mut stale).await;
                if let Err(e) = watcher.store.collect_orphan_payloads().await {
                    tracing::error!(error = %e, "cannot delete unreferenced queue payloads");
                }
                let forget_before = now() - service::mail::SUBMISSIONS_KEPT_SECS;
                if let Err(e) = watcher.store.forget_submissions(forget_before).await {
                    tracing::error!(error = %e, "cannot forget old submission ids");
                }
                last_sweep = Some(std::time::Instant::now());
            }
            tokio::time::sleep(tick).await;
        }
    });
    // The serving certificate is renewed while the server runs (tls.rs).
    let identity = prepared.tls.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TLS_RENEWAL_CHECK).await;
            let identity = identity.clone();
            match tokio::task::spawn_blocking(move || identity.renew_if_due()).await {
                Ok(Ok(Some(_))) => tracing::info!("serving certificate renewed"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot renew the serving certificate"),
                Err(e) => tracing::error!(error = %e, "the certificate renewal task failed"),
            }
        }
    });
    // Federation peers have a listener of their own (mutual TLS).
    let federation = tokio::spawn(federation::serve(
        prepared.state.clone(),
        prepared.connections,
        handle.clone(),
    ));
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(prepared.tls.config.clone());
    let app = router(prepared.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Connections are counted before the TLS handshake (conncap.rs).
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(conncap::CappedAcceptor::new(prepared.connections));
    let mut server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle);
    // A client gets 10 s to send a request's header lines (axum-server also
    // gives the TLS handshake 10 s): one trickling bytes holds nothing long.
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    server
        .serve(app)
        .await
        .map_err(|e| StartError::Io(format!("server stopped: {e}")))?;
    match federation.await {
        Ok(result) => result,
        Err(e) => Err(StartError::Io(format!(
            "the federation listener failed: {e}"
        ))),
    }
}
