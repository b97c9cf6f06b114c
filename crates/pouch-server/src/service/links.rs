//! Linking a new device to an account: the request a new device makes,
//! what it polls, what the account's devices see and deny, and the expiry
//! of requests nobody answered. (Approval is a new signed device list:
//! `devices::publish_list`.)
//!
//! A stranger can ask to link to any address, so nothing here may say
//! whether an account exists: a request for an account that cannot be
//! linked gets a decoy that behaves like a real request nobody approves,
//! under the same caps.

use super::ServiceError;
use super::audit::{Ev, record};
use crate::{AppState, now, sha256};
use pouch_proto::api::*;
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, DeviceId};
use pouch_store::{NewDevice, NewLinkRequest};
use std::net::IpAddr;

/// A new device asks to join an account (`pouch link`): checked, capped per
/// account and per network address, and held until a device of the account
/// approves it, denies it, or it expires. For an account that cannot be
/// linked the answer is the same, from a decoy (see [`LinkDecoys`]).
pub async fn request(
    s: &AppState,
    peer: IpAddr,
    req: LinkRequestBody,
) -> Result<LinkCreated, ServiceError> {
    if ed25519_dalek::VerifyingKey::try_from(req.signature_key.as_slice()).is_err() {
        return Err(ServiceError::bad_request(
            "the device key is not an Ed25519 public key",
        ));
    }
    if req.device_id.0.len() != 32 || !req.device_id.0.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServiceError::bad_request(
            "the device id must be 16 random bytes in hex",
        ));
    }
    if !(16..=64).contains(&req.nonce.len()) || !(16..=64).contains(&req.poll_secret.len()) {
        return Err(ServiceError::bad_request(
            "nonce and poll secret must be 16 to 64 random bytes",
        ));
    }
    let name = req.device_name.trim();
    if name.is_empty()
        || name.len() > 100
        || req.key_packages.is_empty()
        || req.key_packages.len() > MAX_LINK_KEY_PACKAGES
    {
        return Err(ServiceError::bad_request(format!(
            "give a device name (1 to 100 characters) and 1 to {MAX_LINK_KEY_PACKAGES} key packages"
        )));
    }
    // Nobody has approved anything yet: what a stranger can make the server
    // hold is capped per account and per network address (decoys included,
    // so the caps say nothing about who exists either).
    let source = peer.to_string();
    let (stored_for_address, stored_from_source) =
        s.store.count_pending_links(&req.address, &source).await?;
    let (decoys_for_address, decoys_from_source) =
        s.link_decoys.pending(&req.address, &source, now());
    let for_address = stored_for_address + decoys_for_address;
    let from_source = stored_from_source + decoys_from_source;
    if for_address >= MAX_PENDING_LINKS_PER_ACCOUNT || from_source >= MAX_PENDING_LINKS_PER_SOURCE {
        record(
            s,
            Ev::new(Action::LinkRequest)
                .account(&req.address)
                .source(peer)
                .failed(Reason::TooManyPending, "too many pending link requests"),
        )
        .await;
        return Err(ServiceError::new(
            ErrorCode::RateLimited,
            "too many link requests are waiting for approval; approve or deny them, or wait until they expire",
        ));
    }
    let code = link_code(&req.signature_key, &req.nonce);
    let now = now();
    let expires_at = now + s.link_ttl_secs as i64;
    let poll_hash = sha256(&req.poll_secret).to_vec();
    // A request whose device, key, code or poll secret is taken is a
    // conflict, whether what took it is a real request or a decoy (the
    // database's unique keys say so for real ones on the real path).
    let conflict = || ServiceError::from(pouch_store::StoreError::Conflict);
    if s.link_decoys
        .collides(&req.device_id, &req.signature_key, &code, &poll_hash, now)
    {
        return Err(conflict());
    }
    if s.store.latest_device_list(&req.address).await?.is_none() {
        if s.store.device(&req.device_id).await?.is_some()
            || s.store.link_request(&code).await?.is_some()
            || s.store.link_request_by_poll(&poll_hash).await?.is_some()
        {
            return Err(conflict());
        }
        // No account, or none with a device to approve: answered as a real
        // request that nobody approves, so a stranger learns nothing about
        // who exists. The security team sees the attempt.
        s.link_decoys.add(
            poll_hash,
            LinkInfo {
                code: code.clone(),
                address: req.address.clone(),
                device_id: req.device_id,
                device_name: name.to_string(),
                signature_key: req.signature_key,
                nonce: req.nonce,
                source,
                created_at: now,
                expires_at,
                status: "pending".into(),
            },
        );
        record(
            s,
            Ev::new(Action::LinkRequest)
                .account(&req.address)
                .source(peer)
                .failed(
                    Reason::NoApprover,
                    "no device of this account can approve it (unknown or not enrolled)",
                ),
        )
        .await;
        return Ok(LinkCreated { code, expires_at });
    }
    s.store
        .create_link_request(
            NewLinkRequest {
                code: code.clone(),
                poll_hash,
                nonce: req.nonce,
                source,
                expires_at,
                device: NewDevice {
                    device_id: req.device_id,
                    address: req.address.clone(),
                    name: name.to_string(),
                    signature_key: req.signature_key,
                    key_packages: req.key_packages,
                    last_resort: req.last_resort_key_package,
                    device_list: None,
                },
            },
            now,
        )
        .await?;
    tracing::info!(address = %req.address, %peer, "link request created");
    record(
        s,
        Ev::new(Action::LinkRequest)
            .account(&req.address)
            .source(peer)
            .detail(format!("device name '{name}'")),
    )
    .await;
    Ok(LinkCreated { code, expires_at })
}

/// Link requests for accounts that cannot be linked (no such account, or no
/// device yet), answered exactly as real ones nobody approves: a code, a
/// status that stays "pending" until it expires, the same caps. They hold
/// nothing to approve, so they live in memory, bounded; a day after expiry
/// they are forgotten. (Kept per node: with several PostgreSQL nodes behind
/// one name, a decoy's status polled at another node is a 404.)
#[derive(Default)]
pub struct LinkDecoys(std::sync::Mutex<std::collections::HashMap<Vec<u8>, LinkInfo>>);

/// Decoys held at once; beyond it the oldest is forgotten.
const MAX_LINK_DECOYS: usize = 10_000;
/// How long after its expiry a decoy still answers "expired".
const DECOY_MEMORY_SECS: i64 = 24 * 3600;

impl LinkDecoys {
    fn held(
        &self,
        now: i64,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Vec<u8>, LinkInfo>> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, d| d.expires_at + DECOY_MEMORY_SECS > now);
        held
    }

    /// Pending decoys for `address`, and from `source`.
    fn pending(&self, address: &Address, source: &str, now: i64) -> (u64, u64) {
        let held = self.held(now);
        let pending = held.values().filter(|d| d.expires_at > now);
        let (mut for_address, mut from_source) = (0, 0);
        for d in pending {
            for_address += u64::from(&d.address == address);
            from_source += u64::from(d.source == source);
        }
        (for_address, from_source)
    }

    fn add(&self, poll_hash: Vec<u8>, decoy: LinkInfo) {
        let mut held = self.held(decoy.created_at);
        if held.len() >= MAX_LINK_DECOYS
            && let Some(oldest) = held
                .iter()
                .min_by_key(|(_, d)| d.created_at)
                .map(|(k, _)| k.clone())
        {
            held.remove(&oldest);
        }
        held.insert(poll_hash, decoy);
    }

    /// Whether a decoy holds this device id, key, code or poll secret.
    fn collides(
        &self,
        device_id: &DeviceId,
        signature_key: &[u8],
        code: &str,
        poll_hash: &[u8],
        now: i64,
    ) -> bool {
        let held = self.held(now);
        held.contains_key(poll_hash)
            || held.values().any(|d| {
                &d.device_id == device_id || d.signature_key == signature_key || d.code == code
            })
    }

    fn status(&self, poll_hash: &[u8], now: i64) -> Option<LinkInfo> {
        let mut decoy = self.held(now).get(poll_hash)?.clone();
        if decoy.expires_at <= now {
            decoy.status = "expired".into();
        }
        Some(decoy)
    }
}

/// Key packages a link request may carry (a device uploads 100, and more once approved).
const MAX_LINK_KEY_PACKAGES: usize = 200;
/// Link requests that may wait for approval at once, per account and per source address.
const MAX_PENDING_LINKS_PER_ACCOUNT: u64 = 5;
const MAX_PENDING_LINKS_PER_SOURCE: u64 = 20;

/// Expires every pending link request whose time ran out: its device is
/// revoked and its key packages deleted, whether or not anyone asks again.
pub(crate) async fn sweep(s: &AppState) {
    loop {
        let overdue = match s.store.overdue_links(now(), 100).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot list overdue link requests");
                return;
            }
        };
        let full = overdue.len() == 100;
        for r in overdue {
            if let Err(e) = settle(s, r).await {
                tracing::error!(error = %e.message, "cannot expire a link request");
                return;
            }
        }
        if !full {
            return;
        }
    }
}

/// Expires a pending request past its time; returns the request as it now stands.
async fn settle(
    s: &AppState,
    mut r: pouch_store::LinkRequest,
) -> Result<pouch_store::LinkRequest, ServiceError> {
    if r.status == "pending" && r.expires_at <= now() {
        if !s
            .store
            .finish_link_request(&r.code, "expired", now())
            .await?
        {
            // Someone else settled it first (the sweeper, another poll):
            // answer with what it now is, not the stale "pending".
            return Ok(s.store.link_request(&r.code).await?.unwrap_or(r));
        }
        r.status = "expired".into();
        tracing::warn!(address = %r.device.address, "link request expired unapproved");
        record(
            s,
            Ev::new(Action::LinkExpired)
                .account(&r.device.address)
                .device(&r.device.device_id)
                .source(&r.source),
        )
        .await;
    }
    Ok(r)
}

/// What the new device, which holds the poll secret, sees of its request.
pub async fn status(s: &AppState, poll_secret: &[u8]) -> Result<LinkInfo, ServiceError> {
    let poll_hash = sha256(poll_secret);
    match s.store.link_request_by_poll(&poll_hash).await? {
        Some(r) => Ok(info(settle(s, r).await?)),
        None => s
            .link_decoys
            .status(&poll_hash, now())
            .ok_or_else(|| ServiceError::not_found("no such link request")),
    }
}

fn info(r: pouch_store::LinkRequest) -> LinkInfo {
    LinkInfo {
        code: r.code,
        address: r.device.address,
        device_id: r.device.device_id,
        device_name: r.device.name,
        signature_key: r.device.signature_key,
        nonce: r.nonce,
        source: r.source,
        created_at: r.created_at,
        expires_at: r.expires_at,
        status: r.status,
    }
}

async fn own_link(
    s: &AppState,
    d: &DeviceId,
    code: &str,
) -> Result<pouch_store::LinkRequest, ServiceError> {
    let me = s
        .store
        .device(d)
        .await?
        .ok_or_else(|| ServiceError::unauthorized("unknown device"))?;
    let code = normalise_link_code(code).ok_or_else(|| {
        ServiceError::bad_request("a link code has 12 letters and digits, like K7QM-3XPA-9D2F")
    })?;
    match s.store.link_request(&code).await? {
        // Another account's request is as good as absent.
        Some(r) if r.device.address == me.address => settle(s, r).await,
        _ => Err(ServiceError::not_found(
            "no link request with that code for this account; check the code on the new device",
        )),
    }
}

/// A request of the caller's own account, by the code its new device shows.
pub async fn show(s: &AppState, d: &DeviceId, code: &str) -> Result<LinkInfo, ServiceError> {
    Ok(info(own_link(s, d, code).await?))
}

/// A device of the account refuses a request.
pub async fn deny(s: &AppState, d: &DeviceId, code: &str) -> Result<LinkInfo, ServiceError> {
    let r = own_link(s, d, code).await?;
    if !s
        .store
        .finish_link_request(&r.code, "denied", now())
        .await?
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!("the request is already {}", r.status),
        ));
    }
    tracing::warn!(address = %r.device.address, by = %d, "link request denied");
    record(
        s,
        Ev::new(Action::LinkDenied)
            .account(&r.device.address)
            .device(&r.device.device_id)
            .source(&r.source)
            .by(d)
            .detail(format!("denied by {d}")),
    )
    .await;
    let r = s
        .store
        .link_request(&r.code)
        .await?
        .ok_or_else(|| ServiceError::not_found("no such link request"))?;
    Ok(info(r))
}
