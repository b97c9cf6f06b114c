//! Device lists, linking and revocation on the server side.
//!
//! The server keeps and serves each account's signed device lists, and it
//! refuses a list that does not continue the chain (next version, previous
//! hash, same account key, valid signature) — but its checks are only a
//! convenience: every client verifies the lists itself, so a server that
//! skipped them would be caught. What the server alone decides is who may
//! *talk* to it: a device is active only once a validly signed list names it,
//! or an invite enrolled it as an account's first device.

use crate::extract::{Admin, AuthDevice};
use crate::routes::{Access, Routes};
use crate::service::audit::{Ev, record};
use crate::service::{Caller, admin, devices};
use crate::{AppState, error::ApiError, now, sha256};
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use pouch_proto::api::*;
use pouch_proto::devices::SignedDeviceList;
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, DeviceId};
use pouch_store::{NewDevice, NewLinkRequest};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;

type St = State<Arc<AppState>>;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/v1/device-lists/{address}",
            &[(Method::GET, Access::DeviceOrInvite)],
            get(device_lists),
        )
        .route(
            "/v1/directory/lists",
            &[(Method::POST, Access::Device)],
            // 1,001 addresses of at most 254 bytes fit in 1 MiB.
            post(directory_lists).layer(DefaultBodyLimit::max(crate::extract::SMALL_LIMIT)),
        )
        .route(
            "/v1/device-lists",
            &[(Method::POST, Access::Device)],
            post(publish).layer(DefaultBodyLimit::max(256 << 10)),
        )
        .route(
            "/v1/devices",
            &[(Method::GET, Access::Device)],
            get(own_devices),
        )
        .route(
            "/v1/link",
            &[(Method::POST, Access::Public)],
            post(create_link).layer(DefaultBodyLimit::max(crate::extract::SMALL_LIMIT)),
        )
        .route(
            "/v1/link/status",
            &[(Method::POST, Access::Public)],
            post(link_status).layer(DefaultBodyLimit::max(crate::extract::TINY_LIMIT)),
        )
        .route(
            "/v1/link/{code}",
            &[(Method::GET, Access::Device)],
            get(link_info),
        )
        .route(
            "/v1/link/{code}/deny",
            &[(Method::POST, Access::Device)],
            post(deny_link),
        )
        .route(
            "/v1/admin/users/{address}/reset",
            &[(Method::POST, Access::Admin)],
            post(admin_reset),
        )
        .route(
            "/v1/admin/devices/{address}/{device}/revoke",
            &[(Method::POST, Access::Admin)],
            post(admin_revoke),
        )
        .route(
            "/v1/admin/devices/stale",
            &[(Method::GET, Access::Admin)],
            get(admin_stale),
        )
}

/// Device lists name devices and where they were linked from: they are
/// for this server's signed-in devices, and for the holder of a valid invite
/// of that very address (a first device after a reset continues the chain).
/// Nobody else learns who has which devices — or who exists.
async fn device_lists(
    State(s): St,
    Path(address): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<DeviceListHistory>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let by_device = match crate::extract::bearer_of(&headers) {
        Some(token) => s
            .store
            .token_device(&sha256(token.as_bytes()), now())
            .await?
            .is_some(),
        None => false,
    };
    let by_invite = match headers
        .get(pouch_proto::api::INVITE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
    {
        Some(secret) => {
            s.store
                .invite_valid(&address, &sha256(&secret), now())
                .await?
        }
        None => false,
    };
    if !by_device && !by_invite {
        return Err(ApiError::unauthorized(
            "sign in first: device lists are shown to this server's devices only",
        ));
    }
    if !s.store.user_exists(&address).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRecipient,
            format!("{address} is not a Pouch user on this server; check the address"),
        ));
    }
    let lists = s
        .store
        .device_list_history(&address)
        .await?
        .into_iter()
        .map(SignedDeviceList::from)
        .collect();
    Ok(Json(DeviceListHistory { address, lists }))
}

/// Many accounts' device lists at once, each with the inclusion proof of its
/// newest version against one checkpoint (see `DirectoryRequest`): for the
/// signed-in devices of this server, like the lists one by one.
async fn directory_lists(
    State(s): St,
    _: AuthDevice,
    Json(req): Json<DirectoryRequest>,
) -> Result<Json<DirectoryResponse>, ApiError> {
    if req.addresses.len() > pouch_proto::MAX_RECIPIENTS + 1 {
        return Err(ApiError::bad_request(format!(
            "ask for at most {} device lists at once",
            pouch_proto::MAX_RECIPIENTS + 1
        )));
    }
    let mut addresses = req.addresses;
    addresses.sort();
    addresses.dedup();
    let (size, note) = crate::log::current_checkpoint(&s).await?;
    let mut entries = Vec::with_capacity(addresses.len());
    let mut unknown = Vec::new();
    for address in addresses {
        if let Some(entry) = s.directory.get(size, &address) {
            entries.push(entry);
            continue;
        }
        if !s.store.user_exists(&address).await? {
            unknown.push(address);
            continue;
        }
        let lists: Vec<SignedDeviceList> = s
            .store
            .device_list_history(&address)
            .await?
            .into_iter()
            .map(SignedDeviceList::from)
            .collect();
        let newest = match lists.last().and_then(|l| l.body_unverified().ok()) {
            Some(body) => crate::log::list_inclusion(&s, size, &note, &address, body.version)
                .await?
                .map(LeafProof::from),
            None => None,
        };
        let entry = DirectoryEntry {
            address,
            lists,
            newest,
        };
        s.directory.put(size, &entry);
        entries.push(entry);
    }
    Ok(Json(DirectoryResponse {
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
        entries,
        unknown,
    }))
}

async fn caller(s: &AppState, d: &DeviceId) -> Result<pouch_store::Device, ApiError> {
    s.store
        .device(d)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown device"))
}

async fn own_devices(
    State(s): St,
    AuthDevice(d): AuthDevice,
) -> Result<Json<Vec<RegisteredDevice>>, ApiError> {
    let me = caller(&s, &d).await?;
    let devices = s
        .store
        .devices_of(&me.address)
        .await?
        .into_iter()
        .map(|d| RegisteredDevice {
            device_id: d.device_id,
            name: d.name,
            signature_key: d.signature_key,
            created_at: d.created_at,
            approved_at: d.approved_at,
            revoked_at: d.revoked_at,
            revoked_by: d.revoked_by,
        })
        .collect();
    Ok(Json(devices))
}

/// A new version of the caller's own device list: approves listed pending
/// devices and revokes active ones it leaves out.
async fn publish(
    State(s): St,
    caller: Caller,
    Json(req): Json<PublishDeviceList>,
) -> Result<StatusCode, ApiError> {
    devices::publish_list(&s, &caller, req.list).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_link(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LinkRequestBody>,
) -> Result<Json<LinkCreated>, ApiError> {
    if ed25519_dalek::VerifyingKey::try_from(req.signature_key.as_slice()).is_err() {
        return Err(ApiError::bad_request(
            "the device key is not an Ed25519 public key",
        ));
    }
    if req.device_id.0.len() != 32 || !req.device_id.0.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "the device id must be 16 random bytes in hex",
        ));
    }
    if !(16..=64).contains(&req.nonce.len()) || !(16..=64).contains(&req.poll_secret.len()) {
        return Err(ApiError::bad_request(
            "nonce and poll secret must be 16 to 64 random bytes",
        ));
    }
    let name = req.device_name.trim();
    if name.is_empty()
        || name.len() > 100
        || req.key_packages.is_empty()
        || req.key_packages.len() > MAX_LINK_KEY_PACKAGES
    {
        return Err(ApiError::bad_request(format!(
            "give a device name (1 to 100 characters) and 1 to {MAX_LINK_KEY_PACKAGES} key packages"
        )));
    }
    // Nobody has approved anything yet: what a stranger can make the server
    // hold is capped per account and per network address (decoys included,
    // so the caps say nothing about who exists either).
    let source = peer.ip().to_string();
    let (stored_for_address, stored_from_source) =
        s.store.count_pending_links(&req.address, &source).await?;
    let (decoys_for_address, decoys_from_source) =
        s.link_decoys.pending(&req.address, &source, now());
    let for_address = stored_for_address + decoys_for_address;
    let from_source = stored_from_source + decoys_from_source;
    if for_address >= MAX_PENDING_LINKS_PER_ACCOUNT || from_source >= MAX_PENDING_LINKS_PER_SOURCE {
        record(
            &s,
            Ev::new(Action::LinkRequest)
                .account(&req.address)
                .source(peer.ip())
                .failed(Reason::TooManyPending, "too many pending link requests"),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
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
    let conflict = || ApiError::from(pouch_store::StoreError::Conflict);
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
            &s,
            Ev::new(Action::LinkRequest)
                .account(&req.address)
                .source(peer.ip())
                .failed(
                    Reason::NoApprover,
                    "no device of this account can approve it (unknown or not enrolled)",
                ),
        )
        .await;
        return Ok(Json(LinkCreated { code, expires_at }));
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
        &s,
        Ev::new(Action::LinkRequest)
            .account(&req.address)
            .source(peer.ip())
            .detail(format!("device name '{name}'")),
    )
    .await;
    Ok(Json(LinkCreated { code, expires_at }))
}

/// The directory's answers for the current checkpoint size: every receiver
/// of a circular to a thousand posts asks about the same thousand accounts,
/// and their lists and proofs are the same until the log grows (a new list
/// version is a new log entry, so the size is the key). Bounded; emptied
/// when the log grows. Only accounts with a list are kept.
#[derive(Default)]
pub struct DirectoryCache(
    std::sync::Mutex<(u64, std::collections::HashMap<Address, DirectoryEntry>)>,
);

impl DirectoryCache {
    /// Entries kept at most: a whole circular's members, several times over.
    const MAX_ENTRIES: usize = 4096;

    fn get(&self, size: u64, address: &Address) -> Option<DirectoryEntry> {
        let cache = self.0.lock().expect("not poisoned");
        (cache.0 == size)
            .then(|| cache.1.get(address).cloned())
            .flatten()
    }

    fn put(&self, size: u64, entry: &DirectoryEntry) {
        // Only a complete answer: one without its proof is asked again.
        if entry.lists.is_empty() || entry.newest.is_none() {
            return;
        }
        let mut cache = self.0.lock().expect("not poisoned");
        if cache.0 != size {
            if size < cache.0 {
                return; // an answer for a size the log has already passed
            }
            *cache = (size, Default::default());
        }
        if cache.1.len() >= Self::MAX_ENTRIES {
            cache.1.clear();
        }
        cache.1.insert(entry.address.clone(), entry.clone());
    }
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
pub(crate) async fn sweep_links(s: &AppState) {
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
                tracing::error!(error = %e.body.message, "cannot expire a link request");
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
) -> Result<pouch_store::LinkRequest, ApiError> {
    if r.status == "pending"
        && r.expires_at <= now()
        && s.store
            .finish_link_request(&r.code, "expired", now())
            .await?
    {
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

async fn link_status(State(s): St, Json(req): Json<LinkPoll>) -> Result<Json<LinkInfo>, ApiError> {
    let poll_hash = sha256(&req.poll_secret);
    match s.store.link_request_by_poll(&poll_hash).await? {
        Some(r) => Ok(Json(info(settle(&s, r).await?))),
        None => s
            .link_decoys
            .status(&poll_hash, now())
            .map(Json)
            .ok_or_else(|| ApiError::not_found("no such link request")),
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
) -> Result<pouch_store::LinkRequest, ApiError> {
    let me = caller(s, d).await?;
    let code = normalise_link_code(code).ok_or_else(|| {
        ApiError::bad_request("a link code has 12 letters and digits, like K7QM-3XPA-9D2F")
    })?;
    match s.store.link_request(&code).await? {
        // Another account's request is as good as absent.
        Some(r) if r.device.address == me.address => settle(s, r).await,
        _ => Err(ApiError::not_found(
            "no link request with that code for this account; check the code on the new device",
        )),
    }
}

async fn link_info(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path(code): Path<String>,
) -> Result<Json<LinkInfo>, ApiError> {
    Ok(Json(info(own_link(&s, &d, &code).await?)))
}

async fn deny_link(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path(code): Path<String>,
) -> Result<Json<LinkInfo>, ApiError> {
    let r = own_link(&s, &d, &code).await?;
    if !s
        .store
        .finish_link_request(&r.code, "denied", now())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("the request is already {}", r.status),
        ));
    }
    tracing::warn!(address = %r.device.address, by = %d, "link request denied");
    record(
        &s,
        Ev::new(Action::LinkDenied)
            .account(&r.device.address)
            .device(&r.device.device_id)
            .source(&r.source)
            .by(&d)
            .detail(format!("denied by {d}")),
    )
    .await;
    let r = s
        .store
        .link_request(&r.code)
        .await?
        .ok_or_else(|| ApiError::not_found("no such link request"))?;
    Ok(Json(info(r)))
}

async fn admin_reset(
    State(s): St,
    _: Admin,
    Path(address): Path<String>,
) -> Result<Json<AddUserResponse>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(admin::reset_account(&s, address).await?))
}

async fn admin_revoke(
    State(s): St,
    _: Admin,
    Path((address, device)): Path<(String, String)>,
) -> Result<Json<AdminActionDone>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(
        admin::revoke_device(&s, address, DeviceId(device)).await?,
    ))
}

async fn admin_stale(State(s): St, _: Admin) -> Result<Json<Vec<StaleDevice>>, ApiError> {
    let older_than = now() - s.rotation_secs as i64;
    let stale = s
        .store
        .stale_members(older_than)
        .await?
        .into_iter()
        .map(|m| StaleDevice {
            address: m.address,
            device_id: m.device_id,
            group_id: m.group_id,
            last_update: m.updated_at,
        })
        .collect();
    Ok(Json(stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str, proved: bool) -> DirectoryEntry {
        DirectoryEntry {
            address: Address::parse(address).unwrap(),
            lists: vec![SignedDeviceList {
                body: b"list".to_vec(),
                signature: b"sig".to_vec(),
            }],
            newest: proved.then(|| LeafProof {
                index: 3,
                entry: b"leaf".to_vec(),
                full: vec![],
                proof: vec![],
            }),
        }
    }

    #[test]
    fn directory_answers_hold_for_one_log_size_only() {
        let cache = DirectoryCache::default();
        let ana = Address::parse("ana@mfa.test").unwrap();
        cache.put(10, &entry("ana@mfa.test", true));
        assert!(cache.get(10, &ana).is_some());
        // The log grew (a list changed, or anything else): asked afresh.
        assert!(cache.get(11, &ana).is_none());
        cache.put(11, &entry("bo@mfa.test", true));
        assert!(cache.get(10, &ana).is_none(), "a larger size empties it");
        // A late answer for a size already passed is not kept.
        cache.put(10, &entry("ana@mfa.test", true));
        assert!(cache.get(11, &ana).is_none());
        // Nor one without the proof of its newest version.
        cache.put(11, &entry("ana@mfa.test", false));
        assert!(cache.get(11, &ana).is_none());
    }

    #[test]
    fn the_directory_cache_is_bounded() {
        let cache = DirectoryCache::default();
        for i in 0..DirectoryCache::MAX_ENTRIES + 10 {
            cache.put(1, &entry(&format!("u{i}@mfa.test"), true));
        }
        assert!(cache.0.lock().unwrap().1.len() <= DirectoryCache::MAX_ENTRIES);
    }
}
