//! The audit recorder: access events leave the request's critical path.
//!
//! A request hands its event here and waits only until the transaction that
//! holds it commits: nothing a request acknowledges is unaudited. Events
//! arriving together are appended in one transaction (one lock of the
//! chain's head row and one fsync for a batch, not one per request), with
//! the hash chain exactly as if they came one by one.
//!
//! Detection runs after the commit, on a task of its own, over events in the
//! order of their sequence numbers, so a slow rule delays alerts, never a
//! request. [`Recorder::settled`] waits until every event this node has
//! appended so far has been through the rules: the security team's alert
//! list calls it, so whoever reads alerts after an action sees what that
//! action raised.
//!
//! The recorder knows nothing of the rules or of alerting: it tells an
//! [`Observer`] what it appended and when appending failed, and `lib.rs`
//! connects that to `detect` and `service::alerts`. So the dependencies
//! point one way (service → recorder; detect → service), with no cycle
//! between the audit trail and the rules that read it.
//!
//! Bounds: at most [`QUEUE`] events wait for a batch (a request then waits
//! for room), [`BATCH`] go into one transaction, and [`QUEUE`] appended
//! events wait for detection (the appender then waits for the rules).

use crate::AppState;
use pouch_proto::api::EventBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot, watch};

/// Events that may wait for a batch, and appended events that may wait for the rules.
pub const QUEUE: usize = 4096;
/// Events appended in one transaction at most.
pub const BATCH: usize = 256;
/// The longest [`Recorder::settled`] waits: alerts are shown late rather than not at all.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A future an [`Observer`] returns.
pub type Reaction = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Who hears what the recorder did: the rules, and the alert that logging
/// is interrupted or works again.
pub trait Observer: Send + Sync + 'static {
    /// An event was committed at sequence number `seq`.
    fn appended(&self, s: Arc<AppState>, event: EventBody, seq: u64) -> Reaction;
    /// The database refused these events.
    fn append_failed(
        &self,
        s: Arc<AppState>,
        lost: Vec<EventBody>,
        error: pouch_store::StoreError,
    ) -> Reaction;
    /// An append succeeded (after a failure, logging works again).
    fn append_worked(&self, s: Arc<AppState>) -> Reaction;
}

struct Pending {
    body: EventBody,
    committed: oneshot::Sender<()>,
}

/// The requests' side of the recorder (in [`AppState`]).
pub struct Recorder {
    appends: mpsc::Sender<Pending>,
    /// The highest sequence number this node appended.
    appended: Arc<AtomicU64>,
    /// The highest sequence number the rules have seen.
    detected: watch::Receiver<u64>,
}

/// The recorder's two tasks, started once the state that holds the
/// [`Recorder`] exists ([`RecorderTasks::start`]).
pub struct RecorderTasks {
    appends: mpsc::Receiver<Pending>,
    appended: Arc<AtomicU64>,
    detected: watch::Sender<u64>,
}

impl Recorder {
    pub fn new() -> (Recorder, RecorderTasks) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (detected_tx, detected_rx) = watch::channel(0);
        let appended = Arc::new(AtomicU64::new(0));
        (
            Recorder {
                appends: tx,
                appended: appended.clone(),
                detected: detected_rx,
            },
            RecorderTasks {
                appends: rx,
                appended,
                detected: detected_tx,
            },
        )
    }

    /// Hands an event to the appender and waits until it is committed (or
    /// until the database refused it: the request goes on, and logging
    /// being interrupted is an alert of its own).
    pub async fn record(&self, s: &AppState, body: EventBody) {
        self.record_all(s, vec![body]).await
    }

    /// Hands several events over at once (so they share a transaction) and
    /// waits until all are committed.
    pub async fn record_all(&self, s: &AppState, bodies: Vec<EventBody>) {
        let mut waiting = Vec::with_capacity(bodies.len());
        for body in bodies {
            let (committed, done) = oneshot::channel();
            match self.appends.send(Pending { body, committed }).await {
                Ok(()) => waiting.push(done),
                // Only while the state is being dropped: append it here.
                Err(mpsc::error::SendError(p)) => {
                    if let Err(e) = s.store.append_event(&p.body).await {
                        tracing::error!(error = %e, action = %p.body.action, "EVENT LOGGING FAILED");
                    }
                }
            }
        }
        for done in waiting {
            let _ = done.await;
        }
    }

    /// Waits until the rules have seen every event this node has appended
    /// so far (at most a few seconds).
    pub async fn settled(&self) {
        let target = self.appended.load(Ordering::SeqCst);
        let mut detected = self.detected.clone();
        let _ = tokio::time::timeout(SETTLE_WAIT, detected.wait_for(|d| *d >= target)).await;
    }
}

impl RecorderTasks {
    /// Starts the appender and the detector. They hold the state weakly:
    /// when it is dropped, the channels close and both end.
    pub fn start(self, state: &Arc<AppState>, observer: Arc<dyn Observer>) {
        let (to_rules, for_rules) = mpsc::channel(QUEUE);
        tokio::spawn(append_loop(
            Arc::downgrade(state),
            self.appends,
            self.appended,
            to_rules,
            observer.clone(),
        ));
        tokio::spawn(detect_loop(
            Arc::downgrade(state),
            for_rules,
            self.detected,
            observer,
        ));
    }
}

async fn append_loop(
    state: Weak<AppState>,
    mut appends: mpsc::Receiver<Pending>,
    appended: Arc<AtomicU64>,
    to_rules: mpsc::Sender<(EventBody, u64)>,
    observer: Arc<dyn Observer>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while appends.recv_many(&mut batch, BATCH).await > 0 {
        let Some(s) = state.upgrade() else { return };
        let bodies: Vec<EventBody> = batch.iter().map(|p| p.body.clone()).collect();
        let appended_seqs = match s.store.append_events(&bodies).await {
            Ok(seqs) => {
                observer.append_worked(s.clone()).await;
                seqs.into_iter().map(Some).collect()
            }
            // One bad event (or a passing failure) must not take a whole
            // batch with it: each is tried once more on its own.
            Err(_) => {
                let mut seqs = Vec::with_capacity(bodies.len());
                for body in &bodies {
                    match s.store.append_event(body).await {
                        Ok(seq) => {
                            observer.append_worked(s.clone()).await;
                            seqs.push(Some(seq))
                        }
                        Err(e) => {
                            observer
                                .append_failed(s.clone(), vec![body.clone()], e)
                                .await;
                            seqs.push(None);
                        }
                    }
                }
                seqs
            }
        };
        if let Some(last) = appended_seqs.iter().flatten().max() {
            appended.fetch_max(*last, Ordering::SeqCst);
        }
        // Every request of the batch goes on before the rules are handed
        // anything: a full queue of events waiting for the rules slows the
        // appends that follow, never a request whose event is committed.
        let judged: Vec<(EventBody, u64)> = batch
            .drain(..)
            .zip(appended_seqs)
            .filter_map(|(p, seq)| {
                let _ = p.committed.send(());
                seq.map(|seq| (p.body, seq))
            })
            .collect();
        for event in judged {
            if to_rules.send(event).await.is_err() {
                return;
            }
        }
    }
}

async fn detect_loop(
    state: Weak<AppState>,
    mut appended: mpsc::Receiver<(EventBody, u64)>,
    detected: watch::Sender<u64>,
    observer: Arc<dyn Observer>,
) {
    while let Some((body, seq)) = appended.recv().await {
        let Some(s) = state.upgrade() else { return };
        // On a task of its own, so that a rule that panics loses its one
        // event's judgement (logged), not the detector.
        let judged = tokio::spawn(observer.appended(s, body, seq));
        if let Err(e) = judged.await {
            tracing::error!(error = %e, seq, "DETECTION FAILED for an event");
        }
        detected.send_modify(|d| *d = (*d).max(seq));
    }
}
