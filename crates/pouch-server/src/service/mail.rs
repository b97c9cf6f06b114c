//! Mail delivery: key packages, claims, commits, messages, and each device's
//! queue (fetch, acknowledge, wait). The server orders and fans out MLS
//! ciphertext it cannot read; what it checks is who may write where, how
//! much, and that a commit does what its request says ([`crate::groups`]).

use super::audit::{Ev, account_of, record, record_all};
use super::{Caller, Result, ServiceError};
use crate::{AppState, now};
use pouch_proto::api::{
    ClaimedDevice, CommitRequest, ErrorCode, GroupMembers, QueueItem, SUBMISSION_ID_MAX,
    SendRequest, SendResponse,
};
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, DeviceId, GroupId};
use pouch_store::CommitSubmission;

/// Payload bytes one queue fetch returns at most (beyond its first item):
/// what a fetch costs the server in memory stays bounded.
pub const QUEUE_PAGE_BYTES: u64 = 8 << 20;
/// Items one fetch returns at most (and by default).
pub const QUEUE_PAGE_MAX: u32 = 500;
pub const QUEUE_PAGE_DEFAULT: u32 = 100;
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 500;

/// A conversation id as the client sent it, checked.
pub fn group_id(raw: String) -> Result<GroupId> {
    let g = GroupId(raw);
    if g.is_well_formed() {
        Ok(g)
    } else {
        Err(ServiceError::bad_request("malformed conversation id"))
    }
}

/// A blob id as the client sent it, checked (32 hex digits).
pub fn blob_id(raw: &str) -> Result<&str> {
    if raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw)
    } else {
        Err(ServiceError::bad_request("malformed blob id"))
    }
}

/// Adds key packages to the caller's pool (replacing the pool if asked);
/// returns how many it now holds.
pub async fn upload_key_packages(
    s: &AppState,
    caller: &Caller,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    replace_pool: bool,
) -> Result<u32> {
    if packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ServiceError::bad_request(
            "upload at most 500 key packages at once",
        ));
    }
    s.store
        .add_key_packages(&caller.device, packages, last_resort, replace_pool)
        .await?;
    Ok(s.store.count_key_packages(&caller.device).await?)
}

pub async fn count_key_packages(s: &AppState, caller: &Caller) -> Result<u32> {
    Ok(s.store.count_key_packages(&caller.device).await?)
}

/// One key package of every device of these accounts (the recipients of
/// one mail and the sender's own). Accounts of other domains are claimed
/// from their servers (federation peers) first, so a peer that is down
/// uses up no package here; this server's own accounts all or nothing, in
/// one transaction.
pub async fn claim(
    s: &AppState,
    caller: &Caller,
    addresses: &[Address],
    only: &[DeviceId],
) -> Result<Vec<ClaimedDevice>> {
    if addresses.len() > pouch_proto::MAX_RECIPIENTS + 1 {
        return Err(ServiceError::bad_request(format!(
            "claim for at most {} addresses at once (a mail's recipients and the sender)",
            pouch_proto::MAX_RECIPIENTS + 1
        )));
    }
    let (local, remote): (Vec<Address>, Vec<Address>) = addresses
        .iter()
        .cloned()
        .partition(|a| a.domain() == s.domain);
    let mut devices = Vec::new();
    if !remote.is_empty() {
        let claimer = account_of(s, &caller.device)
            .await
            .ok_or_else(|| ServiceError::not_found("unknown device"))?;
        let mut by_domain: std::collections::BTreeMap<&str, Vec<Address>> = Default::default();
        for a in &remote {
            by_domain.entry(a.domain()).or_default().push(a.clone());
        }
        for (domain, addresses) in by_domain {
            devices.extend(
                crate::federation::mail::claim_remote(s, &claimer, domain, &addresses, only)
                    .await?,
            );
        }
        if local.is_empty() {
            return Ok(devices);
        }
    }
    devices.extend(claim_here(s, caller, &local, only).await?);
    Ok(devices)
}

/// [`claim`] for this server's own accounts.
async fn claim_here(
    s: &AppState,
    caller: &Caller,
    addresses: &[Address],
    only: &[DeviceId],
) -> Result<Vec<ClaimedDevice>> {
    let mut unique = addresses.to_vec();
    unique.sort();
    unique.dedup();
    let claimed = match s
        .store
        .claim_key_packages(&unique, &caller.device, only)
        .await?
    {
        pouch_store::Claim::Claimed(c) => c,
        pouch_store::Claim::UnknownAddress(address) => {
            return Err(ServiceError::new(
                ErrorCode::UnknownRecipient,
                format!("{address} is not a Pouch user on this server; check the address"),
            ));
        }
    };
    let devices: Vec<ClaimedDevice> = claimed
        .into_iter()
        .map(|c| ClaimedDevice {
            address: c.device.address,
            device_id: c.device.device_id,
            signature_key: c.device.signature_key,
            key_package: c.key_package,
            last_resort: c.last_resort,
        })
        .collect();
    let claimer = account_of(s, &caller.device).await;
    let d = &caller.device;
    let mut claim = Ev::new(Action::KeyPackageClaim)
        .device(d)
        .source_opt(caller.source)
        .amount(devices.len() as u64, 0);
    if let Some(a) = &claimer {
        claim = claim.account(a);
    }
    let who: Vec<&str> = addresses.iter().map(|a| a.as_str()).collect();
    let detail = format!("for {}", who.join(","));
    let mut events = vec![claim.targets(addresses.iter().cloned()).detail(detail)];
    // A pool that ran dry is what a drain is after (every new conversation
    // with that device now reuses its last-resort package): recorded on the
    // account whose pool it was, naming who claimed.
    for c in devices.iter().filter(|c| c.last_resort) {
        events.push(
            Ev::new(Action::KeyPackageExhausted)
                .account(&c.address)
                .devices([&c.device_id])
                .by(d)
                .source_opt(caller.source)
                .detail(format!(
                    "device {} of {}, claimed by {} (device {d})",
                    c.device_id,
                    c.address,
                    claimer.as_ref().map(|a| a.as_str()).unwrap_or("?")
                )),
        );
    }
    record_all(s, events).await;
    Ok(devices)
}

/// Orders a commit into its conversation (exactly one per epoch) after
/// checking it does what the request says; queues it, and its Welcome, for
/// the members. Returns the new epoch. A conversation hosted at a peer
/// gets the commit passed on to it (its hub orders it).
pub async fn commit(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    req: CommitRequest,
) -> Result<u64> {
    if req.base_epoch > 0
        && let Some(hub) = crate::federation::mail::hub_of(s, group_id).await?
    {
        return crate::federation::mail::commit_via_hub(s, caller, &hub, group_id, req).await;
    }
    commit_here(s, caller, group_id, req).await
}

/// [`commit`] for a conversation hosted here.
pub async fn commit_here(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    req: CommitRequest,
) -> Result<u64> {
    if req.welcome.is_some() == req.added.is_empty() {
        return Err(ServiceError::bad_request(
            "a commit carries a Welcome exactly when it adds devices",
        ));
    }
    let d = &caller.device;
    check_hub_nonce(s, group_id, &req).await?;
    // Every change to a conversation's members comes with the MLS commit
    // that its members apply, and the server checks that commit first: no
    // fan-out change that the commit does not make.
    let public_state = crate::groups::check_commit(s, group_id, d, &req).await?;
    // Which devices a Welcome went to: what turns a key-package claim into
    // a conversation (the drain rule counts claims that never did).
    let welcomed = (req.welcome.is_some()).then(|| req.added.clone());
    let accepted = s
        .store
        .submit_commit(CommitSubmission {
            group_id: group_id.clone(),
            sender: d.clone(),
            base_epoch: req.base_epoch,
            commit: req.commit,
            welcome: req.welcome,
            added: req.added,
            removed: req.removed,
            public_state,
            max_queued_bytes: s.limits.queue_bytes,
            now: now(),
            hub_nonce: req.hub_nonce,
        })
        .await?;
    if let Some(added) = welcomed {
        let mut ev = Ev::new(Action::Welcome)
            .device(d)
            .devices(&added)
            .amount(added.len() as u64, 0);
        if let Some(a) = account_of(s, d).await {
            ev = ev.account(&a);
        }
        record(s, ev).await;
    }
    s.waiters.wake(accepted.queued_for.iter());
    if let Some(fed) = &s.federation {
        fed.wake_outboxes();
    }
    Ok(accepted.epoch)
}

/// A new conversation's id must be this server's (made from its domain and
/// the nonce given); one begun without (a device of an earlier release)
/// cannot include other domains' devices, which would have no way to know
/// this server as its hub.
async fn check_hub_nonce(s: &AppState, group_id: &GroupId, req: &CommitRequest) -> Result<()> {
    if req.base_epoch == 0
        && let Some(nonce) = &req.hub_nonce
        && (nonce.len() != pouch_proto::HUB_NONCE_LEN
            || group_id.to_bytes().as_deref()
                != Some(pouch_proto::hub_group_id(&s.domain, nonce).as_slice()))
    {
        return Err(ServiceError::bad_request(format!(
            "a new conversation's id must be made from {}'s domain and the nonce given",
            s.domain
        )));
    }
    let mut remote = None;
    for d in &req.added {
        if let Some(device) = s.store.device(d).await?
            && !device.is_local()
        {
            remote = Some(device.address);
            break;
        }
    }
    let Some(address) = remote else {
        return Ok(());
    };
    let has_nonce = if req.base_epoch == 0 {
        req.hub_nonce.is_some()
    } else {
        s.store.group_hub_nonce(group_id).await?.is_some()
    };
    if !has_nonce {
        return Err(ServiceError::bad_request(format!(
            "this conversation began before it could include other domains: start a new one to write to {address}"
        )));
    }
    Ok(())
}

/// The devices the server fans a conversation out to, for its members to
/// compare with the MLS roster they hold. Only members may ask. (For a
/// conversation hosted at a peer, the hub answers.)
pub async fn members(s: &AppState, caller: &Caller, group_id: &GroupId) -> Result<GroupMembers> {
    if let Some(hub) = crate::federation::mail::hub_of(s, group_id).await? {
        return crate::federation::mail::members_via_hub(s, caller, &hub, group_id).await;
    }
    members_here(s, caller, group_id).await
}

/// [`members`] of a conversation hosted here.
pub async fn members_here(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
) -> Result<GroupMembers> {
    let (epoch, devices) = s
        .store
        .group_members(group_id)
        .await?
        .filter(|(_, m)| m.contains(&caller.device))
        .ok_or_else(|| ServiceError::not_found("no such conversation with this device in it"))?;
    Ok(GroupMembers { epoch, devices })
}

/// Queues an application message for every other member device; returns
/// how many (none, and `duplicate`, for a submission accepted before). A
/// conversation hosted at a peer gets the message passed on to it.
pub async fn send(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    req: &SendRequest,
) -> Result<SendResponse> {
    if let Some(hub) = crate::federation::mail::hub_of(s, group_id).await? {
        return crate::federation::mail::send_via_hub(s, caller, &hub, group_id, req).await;
    }
    send_here(s, caller, group_id, req).await
}

/// [`send`] into a conversation hosted here.
pub async fn send_here(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    req: &SendRequest,
) -> Result<SendResponse> {
    if let Some(b) = &req.blob {
        blob_id(b)?;
    }
    if req
        .label
        .as_ref()
        .is_some_and(|l| l.len() > pouch_label::MAX_LABEL_BYTES)
    {
        return Err(ServiceError::bad_request(format!(
            "a label is at most {} bytes",
            pouch_label::MAX_LABEL_BYTES
        )));
    }
    super::security::check_delivery(s, caller, group_id, req.epoch, req.label.as_deref()).await?;
    let message = pouch_store::Message {
        group_id,
        sender: &caller.device,
        epoch: req.epoch,
        payload: &req.message,
        blob: req.blob.as_deref(),
        max_queued_bytes: s.limits.queue_bytes,
        label: req.label.as_deref(),
        now: now(),
    };
    let recipients = match &req.submission {
        None => s.store.submit_message(&message).await?,
        Some(id) => {
            if id.is_empty()
                || id.len() > SUBMISSION_ID_MAX
                || !id.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ServiceError::bad_request(format!(
                    "a submission id is 1 to {SUBMISSION_ID_MAX} hex digits"
                )));
            }
            match s.store.submit_message_once(&message, id).await? {
                Some(recipients) => recipients,
                None => {
                    return Ok(SendResponse {
                        recipients: 0,
                        duplicate: true,
                    });
                }
            }
        }
    };
    s.waiters.wake(recipients.iter());
    if let Some(fed) = &s.federation {
        fed.wake_outboxes();
    }
    Ok(SendResponse {
        recipients: recipients.len() as u32,
        duplicate: false,
    })
}

/// How long a submission id is remembered: longer than a device keeps
/// retrying a mail from its outbox (five days), with margin.
pub const SUBMISSIONS_KEPT_SECS: i64 = 7 * 86_400;

/// Waits until the caller's queue holds something after `after`, or `wait`
/// passed (at most [`crate::push::MAX_WAIT`]). True when something is there.
pub async fn wait(
    s: &AppState,
    caller: &Caller,
    after: u64,
    wait: std::time::Duration,
) -> Result<bool> {
    let d = &caller.device;
    let wait = wait.min(crate::push::MAX_WAIT);
    let held = s.waiters.hold(d);
    // Listening before looking, so mail queued in between still rings.
    let rung = held.bell().notified();
    tokio::pin!(rung);
    rung.as_mut().enable();
    if s.store.queue_pending(d, after).await? {
        return Ok(true);
    }
    let _ = tokio::time::timeout(wait, rung).await;
    Ok(s.store.queue_pending(d, after).await?)
}

/// The caller's queue after `after`: at most `limit` items and about
/// [`QUEUE_PAGE_BYTES`], and whether more is queued after them. Reading
/// from before what it acknowledged is a second copy of the device,
/// recorded as such.
pub async fn fetch(
    s: &AppState,
    caller: &Caller,
    after: u64,
    limit: Option<u32>,
) -> Result<(Vec<QueueItem>, bool)> {
    let d = &caller.device;
    let limit = limit.unwrap_or(QUEUE_PAGE_DEFAULT).clamp(1, QUEUE_PAGE_MAX);
    let acked = s.store.queue_acked(d).await?;
    // The account is looked up only for an event: an empty poll costs none.
    let replayed = after < acked;
    let mut account = None;
    if replayed {
        account = account_of(s, d).await;
        let mut ev = Ev::new(Action::QueueReplay)
            .device(d)
            .source_opt(caller.source)
            .failed(
                Reason::ReplayedPosition,
                format!("from position {after} though it had acknowledged up to {acked}"),
            );
        if let Some(a) = &account {
            ev = ev.account(a);
        }
        record(s, ev).await;
    }
    let items = s
        .store
        .fetch_queue(d, after, limit, QUEUE_PAGE_BYTES)
        .await?;
    if !items.is_empty() {
        if !replayed {
            account = account_of(s, d).await;
        }
        let bytes = items.iter().map(|i| i.payload.len() as u64).sum();
        let mut ev = Ev::new(Action::QueueFetch)
            .device(d)
            .source_opt(caller.source)
            .amount(items.len() as u64, bytes);
        if let Some(a) = &account {
            ev = ev.account(a);
        }
        record(s, ev.detail(format!("after {after}"))).await;
    }
    let more = match items.last() {
        Some(last) => s.store.queue_pending(d, last.seq).await?,
        None => false,
    };
    Ok((items, more))
}

/// Removes the caller's queue items up to `up_to`; returns how many. Each
/// one's time from being queued to being acknowledged is the delivery
/// latency `/metrics` shows.
pub async fn ack(s: &AppState, caller: &Caller, up_to: u64) -> Result<u64> {
    let queued_at = s.store.ack_queue(&caller.device, up_to).await?;
    let now = now();
    for at in &queued_at {
        s.metrics.observe_delivery((now - at).max(0) as u64);
    }
    Ok(queued_at.len() as u64)
}
