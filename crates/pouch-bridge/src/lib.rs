//! The bridge: ordinary mail clients (Thunderbird, Outlook, mutt…) talk
//! plain mail protocols to 127.0.0.1, and the bridge does the cryptography
//! with the device's keys, as Proton Mail Bridge does — with MLS behind it.
//!
//! This crate holds the protocol front ends only; everything about mail,
//! keys and the server is `pouch_client::Device`, which is blocking and not
//! shareable, so it lives behind one mutex and is used from blocking tasks.
//!
//! Front ends: IMAP ([`imap`]) and SMTP submission ([`smtp`]); a sync loop
//! keeps the device current and files new mail into folders.
#![forbid(unsafe_code)]

pub mod imap;
pub mod smtp;
pub mod tls;

use pouch_client::Device;
use pouch_proto::Address;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a bridge listens on.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub imap: SocketAddr,
    pub smtp: SocketAddr,
    /// Listen on an address outside loopback anyway (the mail client's
    /// password and the mail then cross a network in the clear).
    pub allow_non_loopback: bool,
    /// How often the bridge syncs with the server.
    pub sync_every: Duration,
    pub tls: tls::TlsMode,
    /// The bridge's certificate (needed unless `tls` is None).
    pub certificate: Option<std::sync::Arc<rustls::ServerConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(
        "{0} is not a loopback address: the bridge serves mail clients on this machine only; use 127.0.0.1 (or pass --allow-non-loopback if you really mean it)"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {0}: {1} (is another bridge running there?)")]
    Listen(String, String),
    #[error("{0}")]
    Client(#[from] pouch_client::ClientError),
}

type Work = Box<dyn FnOnce(&mut Device) + Send>;

/// Work for the device's thread, and whether a mail client waits for it.
struct Job {
    work: Work,
    /// Background work (the sync loop's turns) runs only when no mail
    /// client's command is waiting: a command waits at most for the turn
    /// already running, not for every turn queued before it.
    background: bool,
}

/// Commands run ahead of waiting background work at most this many in a
/// row, so that a busy mail client cannot hold back the receiving of mail.
const AHEAD_OF_BACKGROUND: u32 = 16;

/// Runs the device's jobs, mail clients' commands first.
fn run_jobs(device: &mut Device, queue: std::sync::mpsc::Receiver<Job>) {
    let mut waiting: std::collections::VecDeque<Work> = Default::default();
    let mut background: std::collections::VecDeque<Work> = Default::default();
    let mut ahead = 0;
    loop {
        if waiting.is_empty() && background.is_empty() {
            match queue.recv() {
                Ok(job) => sort(job, &mut waiting, &mut background),
                Err(_) => return,
            }
        }
        while let Ok(job) = queue.try_recv() {
            sort(job, &mut waiting, &mut background);
        }
        let work = if ahead >= AHEAD_OF_BACKGROUND || waiting.is_empty() {
            ahead = 0;
            background.pop_front().or_else(|| waiting.pop_front())
        } else {
            ahead += 1;
            waiting.pop_front()
        };
        if let Some(work) = work {
            work(device);
        }
    }
}

fn sort(
    job: Job,
    waiting: &mut std::collections::VecDeque<Work>,
    background: &mut std::collections::VecDeque<Work>,
) {
    if job.background {
        background.push_back(job.work);
    } else {
        waiting.push_back(job.work);
    }
}

/// The device, shared by the protocol sessions and the sync loop. A
/// `Device` holds a SQLite connection and cannot move between threads, so
/// it lives on a thread of its own and the sessions send it work.
#[derive(Clone)]
pub struct Shared {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Rings whenever a folder changes, so other sessions can tell their clients.
    changes: tokio::sync::broadcast::Sender<()>,
    pub address: Address,
    /// Failed logins across every connection, IMAP and SMTP alike.
    throttle: Arc<std::sync::Mutex<LoginThrottle>>,
    /// Checks the bridge password without the device's thread.
    login: Arc<pouch_client::BridgeLogin>,
    /// Recipients the device recently found reachable ([`Shared::recipient_known`]).
    reachable: Arc<std::sync::Mutex<RecentlyReachable>>,
    /// Mail accepted over SMTP, waiting to be sent (written without the device's thread).
    pub outbox: Arc<pouch_client::outbox::Outbox>,
    /// Labels a submission is checked against without the device's thread.
    pub label_gate: pouch_client::labels::LabelGate,
    /// Whether a task is sending the outbox, and whether one is wanted
    /// ([`Shared::send_queued`]).
    sender_running: Arc<std::sync::atomic::AtomicBool>,
    sender_wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// How long an accepted recipient is accepted again without asking the device.
const REACHABLE_FOR: Duration = Duration::from_secs(60);
/// Recipients remembered at most (the memory is cleared when full).
const REACHABLE_MAX: usize = 10_000;

/// Addresses an SMTP `RCPT` was accepted for, and when. Only an answer to
/// the mail client's early question: the send itself verifies every
/// recipient's device list again, so nothing is ever encrypted to a device
/// its account did not sign for. An account changed within the minute is
/// refused at `DATA` instead of at `RCPT` (as one changed between the two
/// always was; with blind copies, the copies before it may have gone: see
/// docs/SECURITY.md). Without it every `RCPT` waited in the device's queue
/// behind its sync work, ten waits for a mail to ten people.
#[derive(Default)]
struct RecentlyReachable {
    since: std::collections::HashMap<Address, std::time::Instant>,
}

/// Failed logins free before the bridge makes each further attempt wait.
const FREE_LOGIN_FAILURES: u32 = 10;
/// The longest wait between attempts once throttled.
const MAX_LOGIN_WAIT: Duration = Duration::from_secs(30);

/// Slows password guessing across connections: opening more connections
/// does not buy more guesses. After [`FREE_LOGIN_FAILURES`] failures each
/// attempt waits, doubling up to [`MAX_LOGIN_WAIT`]; a success resets it.
#[derive(Default)]
struct LoginThrottle {
    failures: u32,
    next_attempt: Option<std::time::Instant>,
}

impl LoginThrottle {
    /// 1 s after the free failures, doubling to [`MAX_LOGIN_WAIT`].
    fn wait(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(FREE_LOGIN_FAILURES).min(5);
        Duration::from_secs(1 << doublings).min(MAX_LOGIN_WAIT)
    }
}

impl Shared {
    /// Opens the device (with `open`) on its own thread.
    pub fn start(
        open: impl FnOnce() -> pouch_client::Result<Device> + Send + 'static,
    ) -> Result<Shared, BridgeError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (ready, opened) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pouch-device".into())
            .spawn(
                move || match open().and_then(|d| Ok((d.bridge_login()?, d.outbox()?, d))) {
                    Ok((login, outbox, mut device)) => {
                        let gate = device.label_gate();
                        let _ = ready.send(Ok((device.address().clone(), login, outbox, gate)));
                        run_jobs(&mut device, queue);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                },
            )
            .map_err(|e| BridgeError::Listen("device thread".into(), e.to_string()))?;
        let (address, login, outbox, label_gate) = opened
            .recv()
            .map_err(|_| BridgeError::Listen("device thread".into(), "stopped".into()))??;
        let (changes, _) = tokio::sync::broadcast::channel(64);
        Ok(Shared {
            jobs,
            changes,
            address,
            throttle: Default::default(),
            reachable: Default::default(),
            login: Arc::new(login),
            outbox,
            label_gate,
            sender_running: Default::default(),
            sender_wanted: Default::default(),
        })
    }

    /// Sends what the outbox holds, one mail per turn of the device's
    /// thread (mail clients' commands go between them), until nothing is
    /// due. At most one task sends; a call while it runs makes it look
    /// again before it stops.
    pub fn send_queued(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.sender_wanted.store(true, SeqCst);
        if self.sender_running.swap(true, SeqCst) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                shared.sender_wanted.store(false, SeqCst);
                loop {
                    let outbox = shared.outbox.clone();
                    let step = shared
                        .in_background(move |d| {
                            let step = d.send_next_queued(&outbox);
                            if matches!(step, Ok(pouch_client::Sending::Bounced { .. }))
                                && let Err(e) = d.refresh_mailboxes()
                            {
                                tracing::warn!(error = %e, "cannot file a notice");
                            }
                            step
                        })
                        .await;
                    match step {
                        Ok(pouch_client::Sending::Sent { .. }) => {}
                        Ok(pouch_client::Sending::Bounced { reason }) => {
                            tracing::warn!(%reason, "a queued mail cannot be sent; a notice in the INBOX says why");
                            shared.changed();
                        }
                        Ok(pouch_client::Sending::Postponed { reason }) => {
                            tracing::info!(%reason, "queued mail is sent later");
                            break;
                        }
                        Ok(pouch_client::Sending::Idle) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot send queued mail now");
                            break;
                        }
                    }
                }
                shared.sender_running.store(false, SeqCst);
                if !shared.sender_wanted.load(SeqCst) || shared.sender_running.swap(true, SeqCst) {
                    return;
                }
            }
        });
    }

    /// Whether the device found `address` reachable within [`REACHABLE_FOR`].
    pub fn recipient_known(&self, address: &Address) -> bool {
        let r = self.reachable.lock().expect("reachable lock");
        r.since
            .get(address)
            .is_some_and(|at| at.elapsed() < REACHABLE_FOR)
    }

    /// Notes that the device found `address` reachable just now.
    pub fn recipient_reachable(&self, address: &Address) {
        let mut r = self.reachable.lock().expect("reachable lock");
        if r.since.len() >= REACHABLE_MAX {
            r.since.clear();
        }
        r.since.insert(address.clone(), std::time::Instant::now());
    }

    /// Whether a mail client's user name and password are this account's
    /// address and the bridge password (compared in constant time).
    pub async fn check_login(&self, user: &[u8], password: String) -> bool {
        // Each attempt counts as a failure from the moment it starts (a
        // success clears the count), so attempts arriving together on many
        // connections cannot all slip through before the first one fails;
        // past the free ones, each claims the next turn before it runs.
        loop {
            let wait = {
                let mut t = self.throttle.lock().expect("throttle lock");
                let now = std::time::Instant::now();
                match t.next_attempt {
                    Some(at) if at > now => at - now,
                    _ => {
                        t.failures = t.failures.saturating_add(1);
                        if t.failures >= FREE_LOGIN_FAILURES {
                            t.next_attempt = Some(now + LoginThrottle::wait(t.failures));
                        }
                        Duration::ZERO
                    }
                }
            };
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait.min(MAX_LOGIN_WAIT)).await;
        }
        let right = self.verify_login(user, password).await;
        if right {
            *self.throttle.lock().expect("throttle lock") = LoginThrottle::default();
        }
        right
    }

    async fn verify_login(&self, user: &[u8], password: String) -> bool {
        let right_user = std::str::from_utf8(user)
            .ok()
            .and_then(|u| Address::parse(u).ok())
            .is_some_and(|a| a == self.address);
        let right_password = self.login.matches(&password);
        right_user && right_password
    }

    /// Tells every session that something changed.
    pub fn changed(&self) {
        let _ = self.changes.send(());
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<()> {
        self.changes.subscribe()
    }

    /// Runs `f` on the device's thread, for a mail client waiting on it.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Device) -> T + Send + 'static,
    ) -> T {
        self.run(f, false).await
    }

    /// Runs `f` on the device's thread when no mail client's command waits.
    pub async fn in_background<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Device) -> T + Send + 'static,
    ) -> T {
        self.run(f, true).await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Device) -> T + Send + 'static,
        background: bool,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |d| {
            let _ = tx.send(f(d));
        });
        self.jobs
            .send(Job { work, background })
            .expect("the device thread is running");
        rx.await.expect("the device thread answers every job")
    }
}

/// Binds both listeners (refusing non-loopback addresses unless allowed).
pub async fn bind(
    config: &BridgeConfig,
) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener), BridgeError> {
    for addr in [config.imap, config.smtp] {
        if !addr.ip().is_loopback() && !config.allow_non_loopback {
            return Err(BridgeError::NotLoopback(addr));
        }
    }
    let listen = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| BridgeError::Listen(addr.to_string(), e.to_string()))
    };
    Ok((listen(config.imap).await?, listen(config.smtp).await?))
}

/// Serves until the process ends: IMAP and SMTP sessions, and a sync every
/// `sync_every` so that mail arrives without the user asking.
/// Concurrent sessions per protocol. A mail client opens a handful; more
/// is a client gone wrong (or hostile), and must not starve the others.
pub const MAX_SESSIONS: usize = 64;
/// Time for a TLS handshake on the implicit-TLS ports.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tells a connection over the cap why it is closed, without waiting on it.
fn refuse(conn: &mut tokio::net::TcpStream, line: &[u8]) {
    let _ = conn.try_write(line);
}

pub async fn serve(
    shared: Shared,
    imap: tokio::net::TcpListener,
    smtp: tokio::net::TcpListener,
    config: BridgeConfig,
) {
    let syncer = shared.clone();
    tokio::spawn(async move {
        // Mail is fetched as soon as the server says some is queued (a
        // long-poll, waited for off the device's thread); the full sync
        // (key packages, rotation, account and log audit) every `sync_every`.
        let mut last_full: Option<tokio::time::Instant> = None;
        // Turns in a row that brought nothing though the server said mail
        // was waiting (or failed): each doubles the pause, up to the next
        // full sync, so a failing item or a lying server cannot spin the loop.
        let mut idle_turns: u32 = 0;
        let mut expected_mail = false;
        let mut last_cursor = None;
        // A page of queue items fetched off the device's thread, with the
        // cursor it was asked after: the device's thread only applies it.
        let mut fetched: Option<(u64, pouch_proto::api::QueueResponse)> = None;
        loop {
            let full = last_full.is_none_or(|t| t.elapsed() >= config.sync_every);
            if full {
                last_full = Some(tokio::time::Instant::now());
            }
            let until_full = config
                .sync_every
                .saturating_sub(last_full.map(|t| t.elapsed()).unwrap_or_default());
            let secs = until_full.as_secs().clamp(1, 25);
            let page = fetched.take();
            let (result, ack, waiter) = syncer
                .in_background(move |d| {
                    let mut ack = None;
                    let report = match page {
                        Some((after, page)) if !full => {
                            let more = page.more == Some(true);
                            d.receive_page(after, page).map(|received| {
                                ack = received.ack.map(|u| (u, more));
                                if let Some(e) = received.checks_failed {
                                    tracing::warn!(error = %e, "checks after new mail did not run; they run on a later sync");
                                }
                                received.report
                            })
                        }
                        _ if full => d.sync(),
                        _ => d.sync_mail(),
                    };
                    let filed = d.refresh_mailboxes();
                    // `pouch search` indexes what is missing before it
                    // searches; here the index is kept warm in batches, not
                    // a transaction per arriving mail.
                    if full && let Err(e) = d.update_search_index() {
                        tracing::warn!(error = %e, "cannot index new mail");
                    }
                    // The SMTP sessions' early label check follows the log.
                    if full && let Err(e) = d.refresh_label_gate() {
                        tracing::warn!(error = %e, "cannot bring the label check up to the log");
                    }
                    ((report, filed), ack, d.mail_waiter(secs))
                })
                .await;
            let cursor = waiter.as_ref().ok().map(|w| w.after());
            let progressed = result.0.is_ok() && (!expected_mail || cursor != last_cursor);
            last_cursor = cursor;
            if progressed {
                idle_turns = 0;
            } else {
                idle_turns = (idle_turns + 1).min(16);
                let pause = Duration::from_secs(1u64 << idle_turns.min(10))
                    .min(until_full.max(Duration::from_secs(1)));
                tokio::time::sleep(pause).await;
            }
            // Mail queued before a restart or while the server was
            // unreachable goes when it is due.
            syncer.send_queued();
            match result {
                (Ok(report), filed) => {
                    for alert in report.alerts.iter().chain(&report.security_alerts) {
                        tracing::warn!(%alert, "ALERT");
                    }
                    match filed {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(new = n, "new mail");
                            syncer.changed();
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot file new mail"),
                    }
                }
                (Err(e), _) => tracing::warn!(error = %e, "sync failed; retrying"),
            }
            // Off the device's thread: acknowledge what was applied (it is
            // on disk), wait until mail is queued (not when the page said
            // more is), and fetch the next page.
            let waited = match waiter {
                Ok(w) => tokio::task::spawn_blocking(move || {
                    let mut more = false;
                    if let Some((up_to, more_queued)) = ack {
                        more = more_queued;
                        // A lost acknowledgement is covered by the next one.
                        if let Err(e) = w.ack(up_to) {
                            tracing::debug!(error = %e, "cannot acknowledge mail now");
                        }
                    }
                    if !more && !w.wait()? {
                        return Ok((false, None));
                    }
                    let (after, page) = w.page()?;
                    Ok((true, (!page.items.is_empty()).then_some((after, page))))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r: pouch_client::Result<_>| r.map_err(|e| e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            expected_mail = matches!(waited, Ok((true, _)));
            match waited {
                Ok((_, page)) => fetched = page,
                Err(e) => {
                    // No push (the server is down, older, or the token
                    // lapsed): try again soon, and the full sync still comes
                    // on time.
                    tracing::debug!(error = %e, "cannot wait for mail; polling");
                    tokio::time::sleep(
                        until_full.clamp(Duration::from_secs(1), Duration::from_secs(5)),
                    )
                    .await;
                }
            }
        }
    });
    let (mode, cert) = (config.tls, config.certificate.clone());
    // The connection as the mode wants it at the start.
    let open = move |tcp: tokio::net::TcpStream| {
        let cert = cert.clone();
        async move {
            match (mode, cert) {
                // A handshake that does not finish in time holds nothing.
                (tls::TlsMode::Implicit, Some(c)) => tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    tokio_rustls::TlsAcceptor::from(c).accept(tcp),
                )
                .await
                .map_err(|_| std::io::Error::other("TLS handshake timed out"))
                .and_then(|r| r)
                .map(|t| (tls::Conn::Tls(Box::new(t)), None)),
                (tls::TlsMode::StartTls, Some(c)) => Ok((tls::Conn::Plain(tcp), Some(c))),
                _ => Ok((tls::Conn::Plain(tcp), None)),
            }
        }
    };
    let imap_shared = shared.clone();
    let imap_open = open.clone();
    let imap_slots = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    tokio::spawn(async move {
        loop {
            match imap.accept().await {
                Ok((mut conn, peer)) => {
                    let Ok(slot) = imap_slots.clone().try_acquire_owned() else {
                        refuse(
                            &mut conn,
                            b"* BYE Too many connections; try again later\r\n",
                        );
                        continue;
                    };
                    let shared = imap_shared.clone();
                    let opening = imap_open(conn);
                    tokio::spawn(async move {
                        let _slot = slot;
                        let Ok((conn, starttls)) = opening.await else {
                            return;
                        };
                        if let Err(e) = imap::session(shared, conn, starttls).await {
                            tracing::debug!(%peer, error = %e, "IMAP session ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let smtp_slots = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        match smtp.accept().await {
            Ok((mut conn, peer)) => {
                let Ok(slot) = smtp_slots.clone().try_acquire_owned() else {
                    refuse(
                        &mut conn,
                        b"421 4.7.0 Too many connections; try again later\r\n",
                    );
                    continue;
                };
                let shared = shared.clone();
                let opening = open(conn);
                tokio::spawn(async move {
                    let _slot = slot;
                    let Ok((conn, starttls)) = opening.await else {
                        return;
                    };
                    if let Err(e) = smtp::session(shared, conn, starttls).await {
                        tracing::debug!(%peer, error = %e, "SMTP session ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
