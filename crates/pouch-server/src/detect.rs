//! Detection rules, evaluated as each access event is recorded, so an alert
//! exists seconds — not hours — after what caused it. Alerts go to the
//! database (`pouch admin alerts`, and the affected account's devices on
//! their next sync) and to the configured outputs (OCSF file, syslog,
//! webhook: [`crate::sinks`]). Thresholds come from the policy file
//! ([`crate::config::Thresholds`]).
//!
//! Severity says who must act: `low` is a notice (something normal that the
//! security team may want in its timeline: a device the user approved, a
//! new network); `medium` and above are alerts. The rules, numbered as in
//! the README's table:
//! 1. `new_device` — a device enrolled or linked (low; high when a device
//!    enrolls into an account that had devices, i.e. after an administrator reset);
//! 2. `link_refused` — a link request denied (medium) or expired (low);
//! 3. `cloned_device` — one device's queue read from a position it had
//!    already acknowledged (two copies, or a restored backup), or its
//!    source address changing back and forth within the window (high);
//! 4. `queue_gap` — a device found items missing from its queue (high);
//! 5. `bulk_fetch` — a device fetched far more than its own busiest window (high);
//! 6. `dormant_device` — a device silent for months signs in again (medium);
//! 7. `new_network` — a device signed in from an address it never used (low);
//! 8. `key_package_drain` — an account's key packages claimed by one device
//!    above the threshold within the window without a Welcome to follow them
//!    (claims that started no conversation), found when a pool ran dry (high);
//! 9. `invite_brute_force` / `invite_reuse` — guessing invites, or a used invite again (high);
//! 10. `admin_action` — an administrator revoked a device or reset an account (high);
//! 11. `audit_chain_broken` / `event_logging_interrupted` (critical);
//! 12. `stale_device` — a device past the key-rotation window (low: a laptop
//!     left off over a weekend is one; the security team sees the list).
//! 13. What only a receiving device can prove, reported by it: `forged_sender`
//!     (critical), `mail_withheld`, `sender_fork`, `membership_mismatch`
//!     (high), `rejected_item` (medium).

use crate::AppState;
use pouch_proto::api::{Alert, EventBody};
use pouch_proto::security::{Action, Outcome, Reason, Rule, Severity};
use std::collections::HashSet;
use std::sync::Arc;

fn alert(rule: Rule, severity: Severity, ev: &EventBody, seq: u64, summary: String) -> Alert {
    Alert {
        id: 0,
        at: ev.at,
        rule,
        severity,
        account: ev.account.clone(),
        device: ev.device.clone(),
        summary,
        event_seq: Some(seq),
    }
}

/// Evaluates the rules for one newly recorded event.
pub async fn on_event(s: &Arc<AppState>, ev: &EventBody, seq: u64) {
    match evaluate(s, ev, seq).await {
        Ok(found) => {
            for a in found {
                crate::service::alerts::raise(s, a).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "detection failed"),
    }
}

async fn evaluate(
    s: &AppState,
    ev: &EventBody,
    seq: u64,
) -> Result<Vec<Alert>, pouch_store::StoreError> {
    use Severity::*;
    let t = &s.policy.detection;
    let window = t.window_secs();
    let minutes = (window / 60).max(1);
    let mut out = Vec::new();
    let ok = ev.outcome == Outcome::Success;
    let src = ev.source.clone().unwrap_or_default();
    // Counters are per clock-aligned window; "now" is this window and the
    // one before, so a burst across a boundary still counts whole.
    let this_window = ev.at - ev.at.rem_euclid(window);
    let reported = |rule, severity| alert(rule, severity, ev, seq, ev.detail.clone());
    match &ev.action {
        Action::Enroll if ok => {
            // Invites enroll an account's first device only; after a reset
            // the account had devices, and the one enrolling now replaces them.
            out.push(if ev.after_reset {
                alert(
                    Rule::NewDevice,
                    High,
                    ev,
                    seq,
                    format!("a device enrolled from {src} into an account whose earlier devices were reset by an administrator"),
                )
            } else {
                alert(Rule::NewDevice, Low, ev, seq, format!("the account's first device enrolled from {src}"))
            });
        }
        Action::LinkApproved => out.push(alert(
            Rule::NewDevice,
            Low,
            ev,
            seq,
            format!("a device was linked with an existing device's approval ({})", ev.detail),
        )),
        Action::ReportQueueGap => out.push(reported(Rule::QueueGap, High)),
        // What a receiving device proved the server (or a member) did: only
        // a device can see these, since the evidence is inside the encryption.
        Action::ReportMailWithheld => out.push(reported(Rule::MailWithheld, High)),
        Action::ReportForgedSender => out.push(reported(Rule::ForgedSender, Critical)),
        Action::ReportSenderFork => out.push(reported(Rule::SenderFork, High)),
        Action::ReportRejectedItem => out.push(reported(Rule::RejectedItem, Medium)),
        Action::ReportMembershipMismatch => out.push(reported(Rule::MembershipMismatch, High)),
        // The label inside the message is the sender's (signed with the
        // content); the outer copy is what the server checked. Different: a
        // modified client, or a server that relabelled the delivery.
        Action::ReportLabelMismatch => out.push(reported(Rule::LabelMismatch, Critical)),
        Action::ReportLabelDowngrade => out.push(alert(
            Rule::LabelChange,
            Medium,
            ev,
            seq,
            format!("a mail was sent with a lower label than the one it answers: {}", ev.detail),
        )),
        Action::SecurityOfficerRegistered => out.push(alert(
            Rule::LabelChange,
            High,
            ev,
            seq,
            format!(
                "administrator {} registered the security officer's key: {} (devices that pinned another key refuse labelled mail until their user accepts this one)",
                ev.admin.as_deref().unwrap_or("?"),
                ev.detail
            ),
        )),
        Action::SecurityStatement if ok => out.push(alert(
            Rule::LabelChange,
            Low,
            ev,
            seq,
            format!("the security officer published {}", ev.detail),
        )),
        Action::LabelRefused => {
            // One refusal is a mistake; several by one account in a window
            // are someone trying (or a client bypassing its own checks).
            if let Some(account) = &ev.account {
                let name = format!("label refused {account}");
                let n = s.store.count(&name, this_window, 1).await?
                    + s.store.counted(&name, this_window - window, this_window).await?;
                if n == t.label_refusals as u64 {
                    out.push(alert(
                        Rule::LabelRefused,
                        High,
                        ev,
                        seq,
                        format!("{account} tried {n} times within {minutes} minutes to send mail to someone not cleared for it; the last: {}", ev.detail),
                    ));
                }
            }
        }
        Action::ReportUnlistedDevice => out.push(alert(
            Rule::RogueDevice,
            Critical,
            ev,
            seq,
            format!("{}: someone with access to the server or its database added it", ev.detail),
        )),
        Action::QueueReplay => out.push(alert(
            Rule::ClonedDevice,
            High,
            ev,
            seq,
            format!(
                "device {} read its queue from {src} {}: a second copy of its keys (or a restored backup) is in use",
                ev.device.as_ref().map(|d| d.0.as_str()).unwrap_or("?"),
                ev.detail
            ),
        )),
        Action::LinkDenied | Action::LinkExpired => {
            // A denial is a user saying "not me"; an expiry is usually a link
            // abandoned half-way (nothing was approved): a notice.
            let (what, severity) = if ev.action == Action::LinkDenied {
                ("denied", Medium)
            } else {
                ("expired unapproved", Low)
            };
            out.push(alert(
                Rule::LinkRefused,
                severity,
                ev,
                seq,
                format!("a request to add a device from {src} was {what}"),
            ));
        }
        // Administrators' acts, naming the person: the security team sees
        // every request of the two-person rule, its outcome, and every
        // change to who administers.
        Action::AdminRevoke | Action::AdminReset => out.push(alert(
            Rule::AdminAction,
            High,
            ev,
            seq,
            format!(
                "{} by administrator {}: {}",
                ev.action.as_str().replace('_', " "),
                ev.admin.as_deref().unwrap_or("?"),
                ev.detail
            ),
        )),
        Action::AdminApprovalRequested => out.push(alert(
            Rule::AdminAction,
            High,
            ev,
            seq,
            format!(
                "administrator {} asked for {}: it waits for a second administrator",
                ev.admin.as_deref().unwrap_or("?"),
                ev.detail
            ),
        )),
        Action::AdminApproved if !ok => out.push(alert(
            Rule::AdminAction,
            High,
            ev,
            seq,
            format!(
                "administrator {} tried to approve their own request ({})",
                ev.admin.as_deref().unwrap_or("?"),
                ev.detail
            ),
        )),
        // The install's first administrator is expected: a notice. Changes
        // to who administers, and a wrong or used setup secret, are alerts.
        Action::AdminBootstrap if ok => out.push(alert(
            Rule::AdminAction,
            Low,
            ev,
            seq,
            format!("administrator {}: {}", ev.admin.as_deref().unwrap_or("?"), ev.detail),
        )),
        Action::AdminAdded | Action::AdminRemoved | Action::OperatorAdded => out.push(alert(
            Rule::AdminAction,
            if ev.action == Action::OperatorAdded { High } else { Medium },
            ev,
            seq,
            format!("administrator {}: {}", ev.admin.as_deref().unwrap_or("?"), ev.detail),
        )),
        Action::AdminBackup if ok => out.push(alert(
            Rule::AdminAction,
            Medium,
            ev,
            seq,
            format!(
                "administrator {} took a full copy of the server's database: {}",
                ev.admin.as_deref().unwrap_or("?"),
                ev.detail
            ),
        )),
        Action::TlsAnchorChanged => out.push(alert(
            Rule::AdminAction,
            High,
            ev,
            seq,
            format!(
                "the server's TLS trust anchor was changed on its machine: {} (if no operator announced it, someone with access to the server's files did it)",
                ev.detail
            ),
        )),
        Action::SignIn if ok => {
            if let (Some(account), Some(device)) = (&ev.account, &ev.device) {
                let seen = s.store.see_source(device, &src, ev.at).await?;
                if let Some(last) = seen.last_anywhere {
                    let silent = ev.at - last;
                    if silent >= t.dormant_after.as_secs() as i64 {
                        out.push(alert(
                            Rule::DormantDevice,
                            Medium,
                            ev,
                            seq,
                            format!(
                                "device {device} signed in from {src} after {} of silence",
                                human_duration(silent)
                            ),
                        ));
                    }
                }
                // Networks: a device's first address is not news; a new one is a
                // supporting signal only (devices move between networks).
                let baseline_start = ev.at - t.baseline.as_secs() as i64;
                if seen.sources > 0 && seen.last_here.is_none_or(|last| last < baseline_start) {
                    out.push(alert(
                        Rule::NewNetwork,
                        Low,
                        ev,
                        seq,
                        format!("device {device} signed in from {src}, an address it has not used in {}", human_duration(t.baseline.as_secs() as i64)),
                    ));
                }
                // Returns to an address already used within the window, this
                // sign-in included: moving on is a device changing networks;
                // coming back again and again is two copies taking turns.
                let recent_uses: Vec<EventBody> = recent(s, Some(account), ev.at, window, seq)
                    .await?
                    .into_iter()
                    .filter(|e| e.device.as_ref() == Some(device) && e.outcome == Outcome::Success)
                    .filter(|e| matches!(e.action, Action::SignIn | Action::QueueFetch))
                    .collect();
                let mut returns = 0;
                let mut used: Vec<&str> = Vec::new();
                for here in recent_uses.iter().filter_map(|e| e.source.as_deref()) {
                    if used.last() != Some(&here) {
                        if used.contains(&here) {
                            returns += 1;
                        }
                        used.push(here);
                    }
                }
                if returns == t.cloned_address_returns && used.last() == Some(&src.as_str()) {
                    out.push(alert(
                        Rule::ClonedDevice,
                        High,
                        ev,
                        seq,
                        format!("device {device} is in use from two network addresses at once (now {src}; back and forth {returns} times within {minutes} minutes): its keys may have been copied"),
                    ));
                }
            }
        }
        Action::Enroll if ev.reason == Some(Reason::InviteUsed) => out.push(alert(
            Rule::InviteReuse,
            High,
            ev,
            seq,
            format!("an invite that was already used was presented again from {src}: it may have been stolen"),
        )),
        Action::KeyPackageExhausted => {
            // Fires when a device's pool is found dry and one claimer has,
            // within the window, claimed that account's packages more often
            // than the threshold without a Welcome to that device following
            // (claims that started no conversation). A busy sender empties
            // pools too, but each of its claims is followed by its Welcome.
            if let (Some(target), Some(dry), Some(claimer)) =
                (&ev.account, ev.devices.first(), &ev.by)
            {
                let (since, until) = (this_window - window, this_window + window);
                let claimed = s.store.counted(&claims_counter(claimer, target), since, until).await?;
                let welcomed = s.store.counted(&welcomes_counter(claimer, dry), since, until).await?;
                let unused = claimed.saturating_sub(welcomed);
                if unused > t.key_package_claims {
                    // Once per claimer and account within two windows.
                    let name = format!("drain alerted {claimer} {target}");
                    let first = s.store.count(&name, this_window, 1).await? == 1
                        && s.store.counted(&name, since, this_window).await? == 0;
                    if first {
                        let mut a = alert(
                            Rule::KeyPackageDrain,
                            High,
                            ev,
                            seq,
                            format!("key packages of {target} were claimed {claimed} times within {minutes} minutes by one device, {unused} of them starting no conversation, until a pool ran dry ({}; last from {src}): someone may be exhausting them to block or weaken new conversations", ev.detail),
                        );
                        a.device = None;
                        out.push(a);
                    }
                }
            }
        }
        // A device looking up accounts of other domains: each lookup tells
        // the partner which of its people were asked about. The alert fires
        // on the lookup that passes the threshold (once a window).
        Action::RemoteLookup => {
            if let Some(device) = &ev.device {
                let name = format!("remote lookups {device}");
                let now = s.store.count(&name, this_window, ev.count).await?
                    + s.store.counted(&name, this_window - window, this_window).await?;
                let before = now.saturating_sub(ev.count);
                if now > t.remote_lookups && before <= t.remote_lookups {
                    out.push(alert(
                        Rule::RemoteLookups,
                        High,
                        ev,
                        seq,
                        format!("device {device} looked up {now} accounts of other domains within {minutes} minutes from {src} (the last: {})", ev.detail),
                    ));
                }
            }
        }
        // A peer asking about more of this ministry's people than its
        // users write to: its server (or someone on it) reading the staff
        // list. Once a window, on the question that passes the threshold.
        Action::PeerLookup if ok => {
            let name = format!("peer lookups {src}");
            let now = s.store.count(&name, this_window, ev.count).await?
                + s.store.counted(&name, this_window - window, this_window).await?;
            let before = now.saturating_sub(ev.count);
            if now > t.peer_lookups && before <= t.peer_lookups {
                out.push(alert(
                    Rule::PeerVolume,
                    High,
                    ev,
                    seq,
                    format!("a federation peer at {src} asked about {now} accounts of this server within {minutes} minutes (the last: {})", ev.detail),
                ));
            }
        }
        // A peer over its request budget (recorded once a minute at most):
        // once a window an alert.
        Action::PeerThrottled => {
            let name = format!("peer throttled {src}");
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(reported(Rule::PeerVolume, Medium))
            }
        }
        // Federation. A stranger at the federation listener: one alert per
        // source and window (a scanner makes one, not a flood).
        Action::PeerRefused => {
            let name = format!("peer refused {}", network_of(&src));
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(alert(
                    Rule::UnknownPeer,
                    High,
                    ev,
                    seq,
                    format!("a server that is not a configured peer tried the federation listener from {src}: {}", ev.detail),
                ));
            }
        }
        // A peer's log that is not one history, as this server's witness
        // saw it: the peer shows someone else another log.
        // A device list a peer's log does not prove: what a peer slipping a
        // device into one of its accounts would serve. Devices refuse it.
        Action::PeerAnswer if ev.reason == Some(Reason::PeerListUnlogged) => {
            let name = format!("peer unlogged {src} {}", shown_targets(ev));
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(reported(Rule::PeerUnloggedList, High))
            }
        }
        // The misbehaving log asks again every few seconds: one alert per
        // peer address and window, every attempt an event.
        Action::PeerCheckpoint if ev.reason == Some(Reason::PeerLogMisbehaved) => {
            let name = format!("peer log split {src}");
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(reported(Rule::PeerLogSplit, Critical))
            }
        }
        // A peer putting items into conversations it does not host (or
        // for devices that are not this server's): refused item by item,
        // one alert per peer address and window.
        Action::PeerDelivery if ev.reason == Some(Reason::PeerForeignWrite) => {
            let name = format!("peer foreign write {src}");
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(reported(Rule::PeerForeignWrite, High))
            }
        }
        Action::PeerCheckpoint | Action::PeerLookup | Action::PeerClaim | Action::PeerSubmit
            if ev.reason == Some(Reason::PeerRequestRefused) =>
        {
            let name = format!("peer out of role {src}");
            let this_one = s.store.count(&name, this_window, 1).await?;
            let before = s.store.counted(&name, this_window - window, this_window).await?;
            if this_one + before == 1 {
                out.push(reported(Rule::PeerOutOfRole, Medium))
            }
        }
        Action::QueueFetch => {
            if let (Some(_), Some(device)) = (&ev.account, &ev.device) {
                s.store.count_fetch(device, this_window, ev.count).await?;
                let since = ev.at - t.baseline.as_secs() as i64;
                let windows = s.store.fetch_windows(device, since).await?;
                let now_window: u64 = windows
                    .iter()
                    .filter(|(w, _)| *w >= this_window - window)
                    .map(|(_, n)| n)
                    .sum();
                let busiest = windows
                    .iter()
                    .filter(|(w, _)| *w < this_window - window)
                    .map(|(_, n)| *n)
                    .max()
                    .unwrap_or(0);
                let limit = t.bulk_fetch_floor.max(busiest.saturating_mul(t.bulk_fetch_factor));
                let before = now_window.saturating_sub(ev.count);
                if now_window > limit && before <= limit {
                    out.push(alert(
                        Rule::BulkFetch,
                        High,
                        ev,
                        seq,
                        format!("device {device} fetched {now_window} items within {minutes} minutes from {src}; its busiest earlier window was {busiest}"),
                    ));
                }
            }
        }
        Action::Enroll | Action::SignIn | Action::AdminSignIn | Action::AdminBootstrap if !ok => {
            // Failures from one source, this window and the one before; the
            // alert fires on the failure that reaches the threshold (each
            // addition sees its own total, so once even across nodes): a
            // script hammering the sign-in routes makes one alert, not a flood.
            let name = format!("fail {} {src}", ev.action);
            let this_one = s.store.count(&name, this_window, 1).await?;
            let failures = this_one + s.store.counted(&name, this_window - window, this_window).await?;
            if failures == t.invite_failures as u64 {
                let administrators = matches!(ev.action, Action::AdminSignIn | Action::AdminBootstrap);
                out.push(alert(
                    if administrators { Rule::AdminAction } else { Rule::InviteBruteForce },
                    High,
                    ev,
                    seq,
                    format!("{failures} failed {} attempts from {src} within {minutes} minutes", ev.action.as_str().replace('_', "-")),
                ));
            }
        }
        // The rules' counters, kept as events arrive: claims of an account's
        // key packages and Welcomes to its devices, per claiming device.
        // A peer's claims for its users count as its stand-in's.
        Action::KeyPackageClaim | Action::PeerClaim if ok => {
            if let Some(claimer) = &ev.device {
                let names: Vec<String> =
                    ev.targets.iter().map(|t| claims_counter(claimer, t)).collect();
                s.store.count_each(&names, this_window).await?;
            }
        }
        Action::Welcome => {
            if let Some(claimer) = &ev.device {
                let names: Vec<String> =
                    ev.devices.iter().map(|d| welcomes_counter(claimer, d)).collect();
                s.store.count_each(&names, this_window).await?;
            }
        }
        _ => {}
    }
    Ok(out)
}

fn claims_counter(claimer: &pouch_proto::DeviceId, target: &pouch_proto::Address) -> String {
    format!("claims {claimer} {target}")
}

fn welcomes_counter(claimer: &pouch_proto::DeviceId, device: &pouch_proto::DeviceId) -> String {
    format!("welcomes {claimer} {device}")
}

pub(crate) fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Events of the last window (of one account, or all), oldest first, up to
/// and including `upto_seq`: the rules run after the append, and events
/// recorded since the one being judged are not its past.
async fn recent(
    s: &AppState,
    account: Option<&pouch_proto::Address>,
    now: i64,
    window: i64,
    upto_seq: u64,
) -> Result<Vec<EventBody>, pouch_store::StoreError> {
    Ok(s.store
        .events_since(now - window, account, 100_000)
        .await?
        .iter()
        .filter(|e| e.seq <= upto_seq)
        .filter_map(|e| e.parsed())
        .collect())
}

/// Verifies the event chain as it grows. Each tick checks only the events
/// added since the last one, plus the row count (a deleted row shows at
/// once); every `full_every` ticks it re-verifies the whole kept chain (an
/// edited old row shows then).
pub struct ChainWatch {
    verified: Option<(u64, String)>,
    ticks: u64,
    full_every: u64,
    reported: Option<String>,
}

impl ChainWatch {
    pub fn new(full_every: u64) -> ChainWatch {
        ChainWatch {
            verified: None,
            ticks: 0,
            full_every: full_every.max(1),
            reported: None,
        }
    }

    pub async fn tick(&mut self, s: &Arc<AppState>) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(self.full_every) {
            self.verified = None;
        }
        let mut found = self.check(s).await;
        if let Ok(Some(_)) = found {
            // Once more from the anchor: pruning on another node may have
            // moved it under this check.
            self.verified = None;
            found = self.check(s).await;
        }
        match found {
            Ok(None) => {}
            Ok(Some(problem)) => {
                self.verified = None;
                if self.reported.as_deref() != Some(problem.as_str()) {
                    tracing::error!(%problem, "AUDIT CHAIN BROKEN");
                    crate::service::alerts::raise(
                        s,
                        Alert {
                            id: 0,
                            at: crate::now(),
                            rule: Rule::AuditChainBroken,
                            severity: Severity::Critical,
                            account: None,
                            device: None,
                            summary: problem.clone(),
                            event_seq: None,
                        },
                    )
                    .await;
                    self.reported = Some(problem);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the event chain"),
        }
    }

    async fn check(&mut self, s: &AppState) -> Result<Option<String>, pouch_store::StoreError> {
        let (anchor_seq, anchor_hash) = s.store.event_anchor().await?;
        let (mut seq, mut hash) = match &self.verified {
            Some(v) if v.0 >= anchor_seq => v.clone(),
            _ => (anchor_seq, anchor_hash),
        };
        loop {
            let page = s.store.events(seq, None, 5000).await?;
            let Some(last) = page.last() else { break };
            let last = (last.seq, last.hash.clone());
            if let Err(problem) = pouch_proto::api::verify_event_chain(&page, seq + 1, hash.clone())
            {
                return Ok(Some(problem));
            }
            (seq, hash) = last;
        }
        let (head_seq, head_hash) = s.store.event_head().await?;
        // Events appended between the two reads are checked next tick.
        if head_seq > seq {
            let page = s.store.events(seq, None, 1).await?;
            if page.is_empty() {
                return Ok(Some(format!(
                    "the newest events up to {head_seq} are missing"
                )));
            }
        } else if head_seq == seq && head_hash != hash {
            return Ok(Some(format!(
                "event {seq} differs from the chain's recorded head"
            )));
        }
        let count = s.store.event_count().await?;
        let expected = head_seq.saturating_sub(anchor_seq);
        if count < expected {
            return Ok(Some(format!(
                "{} event(s) are missing from the chain (it holds {count} of {expected})",
                expected - count
            )));
        }
        self.verified = Some((seq, hash));
        Ok(None)
    }
}

/// Raises `stale_device` once per device past the rotation window and
/// prunes events past the retention period.
pub async fn sweep(s: &Arc<AppState>, reported_stale: &mut HashSet<String>) {
    let now = crate::now();
    match s.store.stale_members(now - s.rotation_secs as i64).await {
        Ok(stale) => {
            let mut seen = HashSet::new();
            for m in stale {
                if !seen.insert(m.device_id.0.clone()) || reported_stale.contains(&m.device_id.0) {
                    continue;
                }
                // Another domain's devices are its own security team's.
                let active = matches!(s.store.device(&m.device_id).await, Ok(Some(d)) if d.is_active() && d.is_local());
                if !active {
                    continue;
                }
                // Reported before this process started?
                let already = s
                    .store
                    .alerts(0, Some(&m.address))
                    .await
                    .map(|all| {
                        all.iter().any(|a| {
                            a.rule == Rule::StaleDevice && a.device.as_ref() == Some(&m.device_id)
                        })
                    })
                    .unwrap_or(false);
                reported_stale.insert(m.device_id.0.clone());
                if already {
                    continue;
                }
                crate::service::alerts::raise(
                    s,
                    Alert {
                        id: 0,
                        at: now,
                        rule: Rule::StaleDevice,
                        severity: Severity::Low,
                        account: Some(m.address.clone()),
                        device: Some(m.device_id.clone()),
                        summary: format!(
                            "device {} has not refreshed its keys for {} (the rotation window is {}): it will not read new mail until it syncs; if it is lost, revoke it",
                            m.device_id,
                            human_duration(now - m.updated_at),
                            human_duration(s.rotation_secs as i64)
                        ),
                        event_seq: None,
                    },
                )
                .await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list stale devices"),
    }
    // The rules' counters are read two windows back at most.
    let window = s.policy.detection.window_secs();
    if let Err(e) = s.store.prune_counts(now - 3 * window).await {
        tracing::error!(error = %e, "cannot prune the rules' counters");
    }
    // Fetch counts matter for as long as the bulk-fetch baseline reaches.
    let baseline = s.policy.detection.baseline.as_secs() as i64;
    if let Err(e) = s
        .store
        .prune_fetch_windows(now - baseline - 2 * window)
        .await
    {
        tracing::error!(error = %e, "cannot prune the fetch counts");
    }
    let cutoff = now - s.policy.events.retention.as_secs() as i64;
    match s.store.prune_events(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "events past the retention period deleted"),
        Err(e) => tracing::error!(error = %e, "cannot prune old events"),
    }
}

/// The network a source address stands for in a count: the address
/// itself for IPv4, its /64 for IPv6 (one host holds a whole /64).
fn network_of(source: &str) -> String {
    match source.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => source.to_string(),
    }
}

/// An event's target accounts, for a counter's name.
fn shown_targets(ev: &EventBody) -> String {
    ev.targets
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
