//! The bridge: ordinary mail clients (Thunderbird, Outlook, mutt…) talk
//! plain mail protocols to 127.0.0.1, and the bridge does the cryptography
//! with the device's keys, as Proton Mail Bridge does — with MLS behind it.
//!
//! This crate holds the protocol front ends only; everything about mail,
//! keys and the server is `pouch_client::Device`, which is blocking and not
//! shareable, so it lives behind one mutex and is used from blocking tasks.
//!
//! Built so far: SMTP submission ([`smtp`]) and continuous sync. The IMAP
//! front end is the next step (see the issue notes).
#![forbid(unsafe_code)]

pub mod smtp;

use pouch_client::Device;
use pouch_proto::Address;
use std::net::SocketAddr;
use std::time::Duration;

/// What a bridge listens on.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub smtp: SocketAddr,
    /// Listen on an address outside loopback anyway (the mail client's
    /// password and the mail then cross a network in the clear).
    pub allow_non_loopback: bool,
    /// How often the bridge syncs with the server.
    pub sync_every: Duration,
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

type Job = Box<dyn FnOnce(&mut Device) + Send>;

/// The device, shared by the protocol sessions and the sync loop. A
/// `Device` holds a SQLite connection and cannot move between threads, so
/// it lives on a thread of its own and the sessions send it work.
#[derive(Clone)]
pub struct Shared {
    jobs: std::sync::mpsc::Sender<Job>,
    pub address: Address,
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
            .spawn(move || match open() {
                Ok(mut device) => {
                    let _ = ready.send(Ok(device.address().clone()));
                    for job in queue {
                        job(&mut device);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| BridgeError::Listen("device thread".into(), e.to_string()))?;
        let address = opened
            .recv()
            .map_err(|_| BridgeError::Listen("device thread".into(), "stopped".into()))??;
        Ok(Shared { jobs, address })
    }

    /// Runs `f` with the device, in turn with every other user of it.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Device) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |d| {
            let _ = tx.send(f(d));
        });
        self.jobs.send(job).expect("the device thread is running");
        rx.await.expect("the device thread answers every job")
    }
}

/// Where the bridge ended up listening, for the caller to print.
pub struct Listening {
    pub smtp: SocketAddr,
}

/// Binds the listeners (refusing non-loopback addresses unless allowed).
pub async fn bind(config: &BridgeConfig) -> Result<tokio::net::TcpListener, BridgeError> {
    if !config.smtp.ip().is_loopback() && !config.allow_non_loopback {
        return Err(BridgeError::NotLoopback(config.smtp));
    }
    tokio::net::TcpListener::bind(config.smtp)
        .await
        .map_err(|e| BridgeError::Listen(config.smtp.to_string(), e.to_string()))
}

/// Serves until the process ends: SMTP sessions, and a sync every
/// `sync_every` so that mail arrives without the user asking.
pub async fn serve(shared: Shared, smtp: tokio::net::TcpListener, config: BridgeConfig) {
    let syncer = shared.clone();
    tokio::spawn(async move {
        loop {
            match syncer.with(|d| d.sync()).await {
                Ok(report) => {
                    if !report.new_messages.is_empty() {
                        tracing::info!(new = report.new_messages.len(), "new mail");
                    }
                    for alert in report.alerts.iter().chain(&report.security_alerts) {
                        tracing::warn!(%alert, "ALERT");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sync failed; retrying"),
            }
            tokio::time::sleep(config.sync_every).await;
        }
    });
    loop {
        match smtp.accept().await {
            Ok((conn, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = smtp::session(shared, conn).await {
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
