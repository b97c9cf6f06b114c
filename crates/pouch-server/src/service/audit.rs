//! Access events: the server records every security-relevant thing a
//! device or an administrator does — sign-ins, enrollments, link requests
//! and decisions, revocations, key-package claims, queue fetches,
//! administrator actions, its own start — with who, from where, how much and
//! the outcome. Never mail content. An operation builds its event with
//! [`Ev`] and [`record`]s it through the recorder ([`crate::recorder`]).

use crate::AppState;
use crate::now;
use pouch_proto::api::{Alert, EVENT_DEVICES_MAX, EventBody};
use pouch_proto::security::{Action, Outcome, Reason, Rule, Severity};
use pouch_proto::{Address, DeviceId};
use std::sync::Arc;

/// Builder for one event.
pub struct Ev(EventBody);

impl Ev {
    pub fn new(action: Action) -> Self {
        Ev(EventBody::new(action, now()))
    }
    pub fn account(mut self, a: &Address) -> Self {
        self.0.account = Some(a.clone());
        self
    }
    pub fn device(mut self, d: &DeviceId) -> Self {
        self.0.device = Some(d.clone());
        self
    }
    pub fn source(mut self, s: impl ToString) -> Self {
        self.0.source = Some(s.to_string());
        self
    }
    /// Where the caller came from, when known.
    pub fn source_opt(mut self, s: Option<std::net::IpAddr>) -> Self {
        self.0.source = s.map(|ip| ip.to_string());
        self
    }
    /// A failure: why, for the rules, and in words, for people.
    pub fn failed(mut self, reason: Reason, why: impl ToString) -> Self {
        self.0.outcome = Outcome::Failure;
        self.0.reason = Some(reason);
        self.0.detail = why.to_string();
        self
    }
    pub fn detail(mut self, d: impl ToString) -> Self {
        self.0.detail = d.to_string();
        self
    }
    /// The accounts it was aimed at.
    pub fn targets(mut self, accounts: impl IntoIterator<Item = Address>) -> Self {
        self.0.targets = accounts.into_iter().collect();
        self
    }
    /// The devices it was aimed at (at most [`EVENT_DEVICES_MAX`] are kept).
    pub fn devices<'a>(mut self, devices: impl IntoIterator<Item = &'a DeviceId>) -> Self {
        self.0.devices = devices
            .into_iter()
            .take(EVENT_DEVICES_MAX)
            .cloned()
            .collect();
        self
    }
    /// The device that acted, when the event is recorded on another's account.
    pub fn by(mut self, d: &DeviceId) -> Self {
        self.0.by = Some(d.clone());
        self
    }
    /// The administrator (a person) who did it.
    pub fn admin(mut self, name: &str) -> Self {
        self.0.admin = Some(name.to_string());
        self
    }
    /// An enrollment into an account an administrator reset.
    pub fn after_reset(mut self, after_reset: bool) -> Self {
        self.0.after_reset = after_reset;
        self
    }
    /// Sets the event's time (the clock by default; simulations set their own).
    pub fn at(mut self, at: i64) -> Self {
        self.0.at = at;
        self
    }
    pub fn amount(mut self, count: u64, bytes: u64) -> Self {
        self.0.count = count;
        self.0.bytes = bytes;
        self
    }
}

/// Records an event: returns once it is committed to the audit chain; the
/// rules see it right after ([`crate::recorder`]). When the event cannot be
/// recorded the request still goes on, but logging being interrupted is an
/// alert itself: at once to the outputs outside the database, and — with
/// how many events were lost — to the database when it takes events again.
pub async fn record(s: &AppState, ev: Ev) {
    s.recorder.record(s, ev.0).await
}

/// Records several events at once (they share the recorder's transaction);
/// returns once all are committed.
pub async fn record_all(s: &AppState, evs: Vec<Ev>) {
    s.recorder
        .record_all(s, evs.into_iter().map(|ev| ev.0).collect())
        .await
}

/// Waits until every event this node recorded so far has been through the
/// rules, so the alerts read next include what they raised.
pub async fn settled(s: &AppState) {
    s.recorder.settled().await
}

/// After a successful append: if events were lost before it, say so.
pub(crate) async fn logging_works_again(s: &Arc<AppState>) {
    use std::sync::atomic::Ordering;
    let lost = s.events_lost.swap(0, Ordering::SeqCst);
    if lost > 0 {
        let since = s.events_lost_since.load(Ordering::SeqCst);
        super::alerts::raise(
            s,
            logging_alert(format!(
                "event logging was interrupted: {lost} event(s) since {} could not be recorded; logging works again",
                crate::format_time(since)
            )),
        )
        .await;
    }
}

/// After the database refused a batch of events.
pub(crate) async fn logging_failed(
    s: &Arc<AppState>,
    lost: &[EventBody],
    e: &pouch_store::StoreError,
) {
    use std::sync::atomic::Ordering;
    let Some(first) = lost.first() else { return };
    tracing::error!(error = %e, action = %first.action, events = lost.len(), "EVENT LOGGING FAILED");
    if s.events_lost.fetch_add(lost.len() as u64, Ordering::SeqCst) == 0 {
        s.events_lost_since.store(first.at, Ordering::SeqCst);
        super::alerts::raise(
            s,
            logging_alert(format!(
                "event logging is interrupted: the database refused an event ({}); what happens now is not being recorded",
                first.action
            )),
        )
        .await;
    }
}

fn logging_alert(summary: String) -> Alert {
    Alert {
        id: 0,
        at: now(),
        rule: Rule::EventLoggingInterrupted,
        severity: Severity::Critical,
        account: None,
        device: None,
        summary,
        event_seq: None,
    }
}

/// The account of a device, for events about it.
pub async fn account_of(s: &AppState, d: &DeviceId) -> Option<Address> {
    s.store.device(d).await.ok().flatten().map(|d| d.address)
}
