//! Conversations across domains: a hub per conversation.
//!
//! The server of a conversation's creator is its **hub**: it orders the
//! conversation's commits (one per epoch, as for any conversation) and
//! queues every commit, Welcome and message for every member device. A
//! member device of another domain is a row of `devices` with that domain
//! as its `home_domain` (recorded when this server claimed its key package
//! from the peer, or when a peer's commit adds it); its queue is the hub's
//! **outbox** to that peer: durable (it is the database), in order per
//! device, forwarded by one task per peer ([`forward_to`]) and deleted only
//! when the peer says it received it. A peer that is down holds up nothing
//! else; its items wait, retried with back-off, and its status shows how
//! many and how old.
//!
//! The peer (a **follower**) puts forwarded items into its own devices'
//! queues in one transaction with the position it received, per hub and
//! device, so an item forwarded twice (an answer lost, a hub killed while
//! forwarding) is queued once. It takes items only for its own devices and
//! only for conversations the forwarding peer hosts (the first Welcome
//! decides which peer that is); anything else is refused and an alert.
//!
//! A follower's device writing to a conversation hosted elsewhere talks to
//! its own server only, which passes the message or commit to the hub at
//! once and answers with the hub's answer (so a stale epoch is seen as for
//! any conversation, and a hub that is down leaves the mail in the device's
//! outbox). The hub accepts it only for a device of that peer's domain that
//! is a member.
//!
//! Nothing here sees more than the server sees of any conversation: group
//! ids, epochs, member devices, ciphertext.

use super::{Federation, Peer, bounded_body, shown_answer};
use crate::AppState;
use crate::service::audit::{Ev, record, record_all};
use crate::service::{Caller, ServiceError};
use pouch_proto::api::{
    ClaimResponse, ClaimedDevice, CommitRequest, ErrorBody, ErrorCode, ForwardedItem, GroupMembers,
    PeerClaimRequest, PeerCommit, PeerDelivery, PeerDeliveryAnswer, PeerDevice, PeerSend,
    ReceivedUpTo, SendRequest, SendResponse,
};
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, DeviceId, GroupId};
use pouch_store::{Forwarded, ForwardedOutcome, RemoteDevice};
use std::sync::Arc;

type Result<T> = std::result::Result<T, ServiceError>;

/// The most a key-package answer from a peer may hold (1,001 accounts'
/// devices, each package with its post-quantum keys).
const CLAIM_ANSWER_MAX: usize = 32 << 20;
/// The most one forwarding carries (payload bytes; one larger item goes alone).
const DELIVERY_BYTES: u64 = 8 << 20;
/// Items one forwarding carries at most.
const DELIVERY_ITEMS: u32 = 200;
/// How long a peer may take to answer one request of this module.
const PEER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

fn peer_of<'a>(s: &'a AppState, domain: &str) -> Option<(&'a Arc<Federation>, &'a Arc<Peer>)> {
    let fed = s.federation.as_ref()?;
    Some((fed, fed.peer(domain)?))
}

fn unreachable(domain: &str, why: &str) -> ServiceError {
    tracing::warn!(peer = %domain, error = %why, "a request to a federation peer failed");
    ServiceError::new(
        ErrorCode::Internal,
        format!("{domain} cannot be reached now; try again later (a mail waits in the outbox)"),
    )
}

/// Sends `body` to the peer and reads its JSON answer; a peer's refusal
/// comes back as the same error code with its words.
async fn ask<T: serde::de::DeserializeOwned>(
    peer: &Peer,
    request: reqwest::RequestBuilder,
    max: usize,
) -> Result<T> {
    let resp = tokio::time::timeout(PEER_DEADLINE, request.send())
        .await
        .map_err(|_| unreachable(&peer.domain, "no answer in time"))?
        .map_err(|e| unreachable(&peer.domain, &e.to_string()))?;
    let status = resp.status();
    let body = tokio::time::timeout(PEER_DEADLINE, bounded_body(resp, max))
        .await
        .map_err(|_| unreachable(&peer.domain, "no answer in time"))?
        .map_err(|e| unreachable(&peer.domain, &e))?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| unreachable(&peer.domain, &format!("a malformed answer ({e})")));
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) if status.is_client_error() => Err(ServiceError {
            code: e.error,
            message: format!("{}: {}", peer.domain, shown_answer(e.message.as_bytes())),
            current_epoch: e.current_epoch,
        }),
        _ => Err(unreachable(
            &peer.domain,
            &format!("HTTP {status}: {}", shown_answer(&body)),
        )),
    }
}

// ----- key packages -----

/// Key packages of accounts of `domain` (a peer), claimed from that peer
/// for one of this server's devices; the devices are recorded so that a
/// conversation hosted here can include them. Only the accounts asked
/// about are kept from the answer.
pub async fn claim_remote(
    s: &AppState,
    claimer: &Address,
    domain: &str,
    addresses: &[Address],
    only: &[DeviceId],
) -> Result<Vec<ClaimedDevice>> {
    let Some((_, peer)) = peer_of(s, domain) else {
        return Err(ServiceError::new(
            ErrorCode::UnknownRecipient,
            format!(
                "{} is in {domain}, a domain this server does not federate with; check the address",
                addresses[0]
            ),
        ));
    };
    let answer: ClaimResponse = ask(
        peer,
        peer.http
            .post(format!("{}/federation/v1/key-packages/claim", peer.url))
            .json(&PeerClaimRequest {
                addresses: addresses.to_vec(),
                only: only.to_vec(),
                for_address: claimer.clone(),
            }),
        CLAIM_ANSWER_MAX,
    )
    .await?;
    let devices: Vec<ClaimedDevice> = answer
        .devices
        .into_iter()
        .filter(|d| addresses.contains(&d.address) && d.address.domain() == domain)
        .collect();
    let remote: Vec<RemoteDevice> = devices
        .iter()
        .map(|d| RemoteDevice {
            device_id: d.device_id.clone(),
            address: d.address.clone(),
            signature_key: d.signature_key.clone(),
        })
        .collect();
    register(s, domain, &remote).await?;
    Ok(devices)
}

/// Records devices of `domain`; one that clashes with a device known here
/// (an id or key of another account or domain) refuses them all.
async fn register(s: &AppState, domain: &str, devices: &[RemoteDevice]) -> Result<()> {
    if let Some(d) = devices
        .iter()
        .find(|d| !well_formed_device_id(&d.device_id))
    {
        return Err(ServiceError::bad_request(format!(
            "{domain} named a malformed device id {}",
            shown_answer(d.device_id.0.as_bytes())
        )));
    }
    match s
        .store
        .register_remote_devices(domain, devices, crate::now())
        .await
    {
        Ok(()) => Ok(()),
        Err(pouch_store::StoreError::Conflict) => {
            record(
                s,
                Ev::new(Action::PeerClaim).failed(
                    Reason::PeerRequestRefused,
                    format!("peer {domain} named a device whose id or key is another's here"),
                ),
            )
            .await;
            Err(ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "{domain} named a device that clashes with one known here; tell your administrator"
                ),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A peer claims key packages of this server's accounts for one of its
/// devices' sends: only this domain's accounts, at most a mail's
/// recipients at once; each claim an access event.
pub async fn claim_for_peer(
    s: &AppState,
    peer: &Peer,
    source: std::net::IpAddr,
    req: PeerClaimRequest,
) -> Result<Vec<ClaimedDevice>> {
    // The peer is the claimer (its stand-in's id), as a device is for its
    // own claims: the drain rule counts its claims against the Welcomes it
    // then forwards to the same devices.
    let claimer = pouch_store::peer_stand_in(&peer.domain);
    let ev = || {
        Ev::new(Action::PeerClaim)
            .device(&claimer)
            .source(source)
            .targets(
                req.addresses
                    .iter()
                    .take(pouch_proto::api::EVENT_DEVICES_MAX)
                    .cloned(),
            )
    };
    if req.addresses.len() > pouch_proto::MAX_RECIPIENTS + 1 {
        return Err(ServiceError::bad_request(format!(
            "claim for at most {} addresses at once",
            pouch_proto::MAX_RECIPIENTS + 1
        )));
    }
    if req.for_address.domain() != peer.domain {
        let why = format!(
            "peer {} claimed key packages for {}, not one of its accounts",
            peer.domain,
            shown_answer(req.for_address.as_str().as_bytes())
        );
        record(s, ev().failed(Reason::PeerRequestRefused, why)).await;
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            "claim for your own domain's accounts only",
        ));
    }
    if let Some(foreign) = req.addresses.iter().find(|a| a.domain() != s.domain) {
        let why = format!(
            "peer {} claimed key packages of {foreign}, not an account of this server",
            peer.domain
        );
        record(s, ev().failed(Reason::PeerRequestRefused, why)).await;
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!("{foreign} is not an account of {}", s.domain),
        ));
    }
    let mut unique = req.addresses.clone();
    unique.sort();
    unique.dedup();
    // No device of this server claims here: nothing to leave out.
    let nobody = DeviceId(String::new());
    let claimed = match s
        .store
        .claim_key_packages(&unique, &nobody, &req.only)
        .await?
    {
        pouch_store::Claim::Claimed(c) => c,
        pouch_store::Claim::UnknownAddress(address) => {
            return Err(ServiceError::new(
                ErrorCode::UnknownRecipient,
                format!(
                    "{address} is not a Pouch user at {}; check the address",
                    s.domain
                ),
            ));
        }
    };
    let mut events = vec![ev().amount(claimed.len() as u64, 0).detail(format!(
        "peer {} claimed for {}",
        peer.domain,
        shown_answer(req.for_address.as_str().as_bytes())
    ))];
    for c in claimed.iter().filter(|c| c.last_resort) {
        events.push(
            Ev::new(Action::KeyPackageExhausted)
                .account(&c.device.address)
                .devices([&c.device.device_id])
                .by(&claimer)
                .source(source)
                .detail(format!(
                    "device {} of {}, claimed by peer {} for {}",
                    c.device.device_id, c.device.address, peer.domain, req.for_address
                )),
        );
    }
    record_all(s, events).await;
    Ok(claimed
        .into_iter()
        .map(|c| ClaimedDevice {
            address: c.device.address,
            device_id: c.device.device_id,
            signature_key: c.device.signature_key,
            key_package: c.key_package,
            last_resort: c.last_resort,
        })
        .collect())
}

// ----- a follower's devices writing to a conversation hosted elsewhere -----

/// The hub of `group` when this server follows it (hosted at a peer).
pub async fn hub_of(s: &AppState, group: &GroupId) -> Result<Option<String>> {
    if s.federation.is_none() {
        return Ok(None);
    }
    Ok(s.store.group_hub(group).await?)
}

fn hub_peer<'a>(s: &'a AppState, hub: &str) -> Result<&'a Arc<Peer>> {
    peer_of(s, hub).map(|(_, p)| p).ok_or_else(|| {
        ServiceError::new(
            ErrorCode::NotFound,
            format!(
                "this conversation is hosted at {hub}, which this server no longer federates with"
            ),
        )
    })
}

/// A message of one of this server's devices, passed to the hub.
pub async fn send_via_hub(
    s: &AppState,
    caller: &Caller,
    hub: &str,
    group: &GroupId,
    req: &SendRequest,
) -> Result<SendResponse> {
    let peer = hub_peer(s, hub)?;
    // The hub holds the blob before it queues the message: only the
    // sender's own finished blob, only once the hub says it is a member
    // (others would fill this domain's blob quota at the hub).
    if let Some(blob) = &req.blob {
        let owned = s
            .store
            .blob_state(blob)
            .await?
            .is_some_and(|b| b.owner == caller.device && b.finished.is_some());
        if !owned {
            return Err(ServiceError::not_found(
                "no finished blob with that id belongs to this device",
            ));
        }
        members_via_hub(s, caller, hub, group).await?;
        push_blob(s, peer, blob).await?;
    }
    ask(
        peer,
        peer.http
            .post(format!(
                "{}/federation/v1/groups/{}/messages",
                peer.url, group.0
            ))
            .json(&PeerSend {
                device: caller.device.clone(),
                request: req.clone(),
            }),
        super::ANSWER_MAX,
    )
    .await
}

/// A commit of one of this server's devices, passed to the hub with the
/// devices of other domains it adds (as this server claimed them).
pub async fn commit_via_hub(
    s: &AppState,
    caller: &Caller,
    hub: &str,
    group: &GroupId,
    req: CommitRequest,
) -> Result<u64> {
    let peer = hub_peer(s, hub)?;
    let mut devices = Vec::new();
    for d in &req.added {
        if let Some(known) = s.store.device(d).await? {
            devices.push(PeerDevice {
                device_id: known.device_id,
                address: known.address,
                signature_key: known.signature_key,
            });
        }
    }
    let answer: pouch_proto::api::CommitResponse = ask(
        peer,
        peer.http
            .post(format!(
                "{}/federation/v1/groups/{}/commits",
                peer.url, group.0
            ))
            .json(&PeerCommit {
                device: caller.device.clone(),
                request: req,
                devices,
            }),
        super::ANSWER_MAX,
    )
    .await?;
    Ok(answer.epoch)
}

/// Whom the hub delivers the conversation to, asked for one of this
/// server's devices.
pub async fn members_via_hub(
    s: &AppState,
    caller: &Caller,
    hub: &str,
    group: &GroupId,
) -> Result<GroupMembers> {
    let peer = hub_peer(s, hub)?;
    ask(
        peer,
        peer.http
            .get(format!(
                "{}/federation/v1/groups/{}/members",
                peer.url, group.0
            ))
            .query(&[("device", caller.device.0.as_str())]),
        super::ANSWER_MAX,
    )
    .await
}

// ----- blobs (large mail) -----

/// Makes sure the peer holds blob `blob_id` whole before an item that refers
/// to it goes there: asks, and pushes what it lacks chunk by chunk (a
/// repeated push replaces chunks; a blob it has whole is not sent again).
pub async fn push_blob(s: &AppState, peer: &Peer, blob_id: &str) -> Result<()> {
    let Some(state) = s.store.blob_state(blob_id).await? else {
        return Err(ServiceError::not_found(
            "no finished blob with that id: upload it again",
        ));
    };
    let Some((chunks, size)) = state.finished else {
        return Err(ServiceError::bad_request(
            "the blob is not complete: upload every chunk, then finish",
        ));
    };
    let url = format!("{}/federation/v1/blobs/{blob_id}", peer.url);
    let there: pouch_proto::api::PeerBlobState =
        ask(peer, peer.http.post(&url), super::ANSWER_MAX).await?;
    if there.have {
        return Ok(());
    }
    for index in 0..chunks {
        let data = s
            .store
            .blob_chunk(blob_id, index)
            .await?
            .ok_or_else(|| ServiceError::not_found("a chunk of the blob is missing"))?;
        let _: serde_json::Value = ask(
            peer,
            peer.http.put(format!("{url}/{index}")).body(data),
            super::ANSWER_MAX,
        )
        .await?;
    }
    let _: serde_json::Value = ask(
        peer,
        peer.http
            .post(format!("{url}/finish"))
            .json(&pouch_proto::api::BlobFinish { chunks, size }),
        super::ANSWER_MAX,
    )
    .await?;
    Ok(())
}

/// How much a peer's pushed blobs may hold here at once: a peer sends for
/// many people, so several devices' quotas.
pub fn peer_blob_quota(s: &AppState) -> u64 {
    s.limits.blob_bytes.saturating_mul(8)
}

/// A peer pushes a blob (a first look): created here, owned by the peer's
/// stand-in, unless it is here already. One being uploaded by someone else
/// is refused.
pub async fn blob_from_peer(
    s: &AppState,
    peer: &Peer,
    source: std::net::IpAddr,
    blob_id: &str,
) -> Result<pouch_proto::api::PeerBlobState> {
    let stand_in = s
        .store
        .ensure_peer_stand_in(&peer.domain, crate::now())
        .await?;
    let Some(state) = s.store.blob_state(blob_id).await? else {
        s.store
            .create_blob(blob_id, &stand_in, crate::now())
            .await?;
        return Ok(pouch_proto::api::PeerBlobState { have: false });
    };
    if state.owner == stand_in {
        return Ok(pouch_proto::api::PeerBlobState {
            have: state.finished.is_some(),
        });
    }
    // Sent from here in the first place (one of this server's devices
    // uploaded it, and the peer forwards it back to other devices here).
    let local_owner = s
        .store
        .device(&state.owner)
        .await?
        .is_some_and(|d| d.is_local());
    if local_owner && state.finished.is_some() {
        return Ok(pouch_proto::api::PeerBlobState { have: true });
    }
    // Another's blob under that id: a device here still uploading it, or
    // another peer that pushed it first (one of the two reuses an id it saw:
    // items that refer to it from this peer wait; the blob collection frees
    // the id within a day of its last use).
    let whose = if local_owner {
        "a device here is still uploading".to_string()
    } else {
        format!("{} pushed here first", state.owner)
    };
    record(
        s,
        Ev::new(Action::PeerDelivery).source(source).detail(format!(
            "peer {} pushed blob {blob_id}, which {whose}",
            peer.domain
        )),
    )
    .await;
    Err(ServiceError::new(
        ErrorCode::Conflict,
        "a blob with that id is someone else's here",
    ))
}

// ----- the hub: a peer's device writing to a conversation hosted here -----

/// The caller a peer speaks for: one of the devices of its own domain
/// known here. Anything else is out of its role (an event, an alert).
pub async fn peer_caller(
    s: &AppState,
    peer: &Peer,
    source: std::net::IpAddr,
    device: &DeviceId,
    group: &GroupId,
) -> Result<Caller> {
    match s.store.device(device).await? {
        Some(d) if d.home_domain.as_deref() == Some(peer.domain.as_str()) => {
            Ok(Caller::new(device.clone(), Some(source)))
        }
        _ => {
            record(
                s,
                Ev::new(Action::PeerSubmit).source(source).failed(
                    Reason::PeerRequestRefused,
                    format!(
                        "peer {} wrote to conversation {} for device {device}, not one of its domain's members here",
                        peer.domain, group.0
                    ),
                ),
            )
            .await;
            Err(ServiceError::new(
                ErrorCode::NotMember,
                "that device is not a member of this conversation from your domain",
            ))
        }
    }
}

/// A peer's commit for a conversation hosted here: the devices of other
/// domains it adds are recorded first (only of configured peers; this
/// server's own must be its own), then it is checked and ordered as any.
pub async fn commit_from_peer(
    s: &AppState,
    peer: &Peer,
    source: std::net::IpAddr,
    group: &GroupId,
    req: PeerCommit,
) -> Result<u64> {
    let caller = peer_caller(s, peer, source, &req.device, group).await?;
    if req.request.base_epoch == 0 {
        return Err(ServiceError::bad_request(
            "a conversation is hosted by its creator's server: create it at your own",
        ));
    }
    let mut by_domain: std::collections::BTreeMap<String, Vec<RemoteDevice>> = Default::default();
    for d in req
        .devices
        .iter()
        .filter(|d| req.request.added.contains(&d.device_id))
    {
        let domain = d.address.domain();
        if domain == s.domain {
            continue; // this server's own devices are known as they are
        }
        if peer_of(s, domain).is_none() {
            return Err(ServiceError::new(
                ErrorCode::UnknownRecipient,
                format!(
                    "{} is in {domain}, a domain {} does not federate with",
                    d.address, s.domain
                ),
            ));
        }
        by_domain
            .entry(domain.to_string())
            .or_default()
            .push(RemoteDevice {
                device_id: d.device_id.clone(),
                address: d.address.clone(),
                signature_key: d.signature_key.clone(),
            });
    }
    for (domain, devices) in &by_domain {
        // The peer vouches for its own domain's devices only; another
        // domain's must be on that account's list as its own server serves
        // it (else a peer could plant devices under a third domain's
        // accounts, which would clash with the real ones later).
        if domain != &peer.domain {
            listed_at_home(s, domain, devices).await?;
        }
        register(s, domain, devices).await?;
    }
    let epoch = crate::service::mail::commit_here(s, &caller, group, req.request).await?;
    Ok(epoch)
}

/// Whether each of `devices` (of `domain`'s accounts) is on its account's
/// newest device list as `domain`'s server answers for it.
async fn listed_at_home(s: &AppState, domain: &str, devices: &[RemoteDevice]) -> Result<()> {
    let (fed, home) = peer_of(s, domain).ok_or_else(|| {
        ServiceError::new(
            ErrorCode::UnknownRecipient,
            format!("{domain} is a domain this server does not federate with"),
        )
    })?;
    let mut addresses: Vec<Address> = devices.iter().map(|d| d.address.clone()).collect();
    addresses.sort();
    addresses.dedup();
    let answer = super::remote_lookup(s, fed, home, addresses).await;
    if let Some(why) = answer.error {
        return Err(ServiceError::new(ErrorCode::Internal, why));
    }
    for d in devices {
        let listed = answer
            .entries
            .iter()
            .filter(|e| e.address == d.address)
            .filter_map(|e| e.lists.last()?.body_unverified().ok())
            .any(|body| body.lists(&d.device_id, &d.signature_key));
        if !listed {
            return Err(ServiceError::bad_request(format!(
                "device {} is not on {}'s device list at {domain}",
                d.device_id, d.address
            )));
        }
    }
    Ok(())
}

/// A device id as devices choose them (16 random bytes, hex): anything
/// else a peer names is refused.
fn well_formed_device_id(d: &DeviceId) -> bool {
    d.0.len() == 32 && d.0.bytes().all(|b| b.is_ascii_hexdigit())
}

// ----- the hub forwarding to followers -----

/// Forwards what is queued here for `peer`'s devices, for as long as the
/// server runs: woken when something is queued (or every few seconds, for
/// what another node queued), retried with back-off up to
/// [`FORWARD_BACKOFF_MAX`] while the peer is down.
pub async fn forward_to(s: Arc<AppState>, fed: Arc<Federation>, peer: Arc<Peer>) {
    let bell = fed.outbox_bell(&peer.domain);
    let mut backoff = FORWARD_BACKOFF_MIN;
    let mut held = Held::default();
    loop {
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        match forward_once(&s, &peer, &mut held).await {
            Ok(Progress::More) => {
                backoff = FORWARD_BACKOFF_MIN;
                fed.answered(&peer.domain, |_| {});
                continue;
            }
            Ok(Progress::Idle) => {
                backoff = FORWARD_BACKOFF_MIN;
                let _ = tokio::time::timeout(FORWARD_POLL, rung).await;
            }
            Err(e) => {
                if backoff == FORWARD_BACKOFF_MIN {
                    tracing::warn!(peer = %peer.domain, error = %e, "forwarding to the peer failed; its items wait and are tried again");
                }
                fed.failed(&peer.domain, &format!("forwarding: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
            }
        }
    }
}

/// The first wait after a failed forwarding; it doubles up to
/// [`FORWARD_BACKOFF_MAX`].
pub const FORWARD_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between two tries while a peer is down: items wait in
/// the database for as long as it takes.
pub const FORWARD_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// How often the outbox is looked at without being woken (items another
/// server node queued).
const FORWARD_POLL: std::time::Duration = std::time::Duration::from_secs(5);

enum Progress {
    /// Items were forwarded; more may wait.
    More,
    /// Nothing waits (or nothing the peer would take now).
    Idle,
}

/// How long a device the peer would not take items for (its queue full, a
/// blob refused) waits before it is tried again; the peer's other devices
/// go on meanwhile.
const HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Devices held back from forwarding, and since when.
type Held = std::collections::HashMap<DeviceId, std::time::Instant>;

async fn forward_once(
    s: &AppState,
    peer: &Peer,
    held: &mut Held,
) -> std::result::Result<Progress, String> {
    let queues = s
        .store
        .remote_queues(&peer.domain)
        .await
        .map_err(|e| e.to_string())?;
    held.retain(|_, since| since.elapsed() < HOLD);
    let mut items = Vec::new();
    let mut bytes = 0u64;
    let mut sent: std::collections::HashMap<DeviceId, (u64, u64)> = Default::default();
    let mut pushed: Vec<String> = Vec::new();
    let mut nonces: std::collections::HashMap<GroupId, Option<Vec<u8>>> = Default::default();
    'devices: for (device, acked) in queues {
        if held.contains_key(&device) {
            continue;
        }
        if bytes >= DELIVERY_BYTES || items.len() as u32 >= DELIVERY_ITEMS {
            break;
        }
        let page = s
            .store
            .fetch_queue(
                &device,
                acked,
                DELIVERY_ITEMS - items.len() as u32,
                DELIVERY_BYTES - bytes,
            )
            .await
            .map_err(|e| e.to_string())?;
        for item in page {
            let size = item.payload.len() as u64;
            // The batch stays within its budget: an item larger than what
            // is left goes in a round of its own.
            if !items.is_empty() && bytes + size > DELIVERY_BYTES {
                break 'devices;
            }
            // Its blob first: an item reaches the peer's queues only with it.
            if let Some(blob) = &item.blob
                && !pushed.contains(blob)
            {
                match push_blob(s, peer, blob).await {
                    Ok(()) => pushed.push(blob.clone()),
                    // The peer is out of reach: the whole round waits.
                    Err(e) if e.code == ErrorCode::Internal => return Err(e.message),
                    // Refused (its quota for blobs full, an id taken there):
                    // this device's items wait, the others go on.
                    Err(e) => {
                        tracing::warn!(peer = %peer.domain, device = %device, error = %e.message, "the peer refused a blob; that device's mail waits");
                        held.insert(device.clone(), std::time::Instant::now());
                        continue 'devices;
                    }
                }
            }
            bytes += size;
            sent.entry(device.clone())
                .and_modify(|(_, last)| *last = item.seq)
                .or_insert((item.seq, item.seq));
            // A Welcome shows the conversation's nonce: the proof that its
            // id is this server's (a follower takes it from its hub only).
            let hub_nonce = match item.kind {
                pouch_proto::api::QueueKind::Welcome => {
                    if !nonces.contains_key(&item.group_id) {
                        let nonce = s
                            .store
                            .group_hub_nonce(&item.group_id)
                            .await
                            .map_err(|e| e.to_string())?;
                        nonces.insert(item.group_id.clone(), nonce);
                    }
                    nonces[&item.group_id].clone()
                }
                _ => None,
            };
            items.push(ForwardedItem {
                device: device.clone(),
                hub_nonce,
                item,
            });
        }
    }
    if items.is_empty() {
        return Ok(Progress::Idle);
    }
    let answer: PeerDeliveryAnswer = ask(
        peer,
        peer.http
            .post(format!("{}/federation/v1/deliver", peer.url))
            .json(&PeerDelivery { items }),
        super::ANSWER_MAX,
    )
    .await
    .map_err(|e| e.message)?;
    let mut progress = false;
    let mut moved: Vec<DeviceId> = Vec::new();
    for ReceivedUpTo { device, up_to } in answer.received {
        // Only what was sent: a peer cannot drop items it never saw.
        let Some((first, last)) = sent.get(&device) else {
            continue;
        };
        if up_to < *first {
            continue;
        }
        if !s
            .store
            .ack_queue(&device, up_to.min(*last))
            .await
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            progress = true;
        }
        moved.push(device);
    }
    // A device the peer took nothing for (its queue full there) waits.
    for device in sent.into_keys().filter(|d| !moved.contains(d)) {
        held.insert(device, std::time::Instant::now());
    }
    Ok(if progress {
        Progress::More
    } else {
        Progress::Idle
    })
}

// ----- the follower receiving -----

/// Items a hub forwarded for this server's devices: each into its device's
/// queue once; what the peer may not write (another's conversation, a
/// device not this server's) is refused item by item, an event each and an
/// alert. Answers how far each device's items were received.
pub async fn receive(
    s: &AppState,
    peer: &Peer,
    source: std::net::IpAddr,
    delivery: PeerDelivery,
) -> Result<PeerDeliveryAnswer> {
    if delivery.items.len() > DELIVERY_ITEMS as usize {
        return Err(ServiceError::bad_request(format!(
            "at most {DELIVERY_ITEMS} items at once"
        )));
    }
    let items: Vec<Forwarded> = delivery
        .items
        .into_iter()
        .map(|f| Forwarded {
            device: f.device,
            seq: f.item.seq,
            hub_nonce: f.hub_nonce,
            item: f.item,
        })
        .collect();
    let outcomes = s
        .store
        .receive_forwarded(&peer.domain, &items, s.limits.queue_bytes, crate::now())
        .await?;
    let mut received: std::collections::BTreeMap<DeviceId, u64> = Default::default();
    let mut blocked: std::collections::BTreeSet<DeviceId> = Default::default();
    let mut woken = Vec::new();
    let mut events = Vec::new();
    let mut queued = 0u64;
    let mut welcomed = Vec::new();
    for (f, outcome) in items.iter().zip(&outcomes) {
        match outcome {
            ForwardedOutcome::QueueFull | ForwardedOutcome::MissingBlob => {
                blocked.insert(f.device.clone());
                continue;
            }
            _ if blocked.contains(&f.device) => continue,
            ForwardedOutcome::Queued => {
                queued += 1;
                woken.push(f.device.clone());
                if f.item.kind == pouch_proto::api::QueueKind::Welcome {
                    welcomed.push(f.device.clone());
                }
            }
            // A revoked device's mail goes nowhere, as for a local sender
            // (the hub learns of it from the commit that removes it).
            ForwardedOutcome::Duplicate | ForwardedOutcome::DeviceGone => {}
            ForwardedOutcome::NotOurDevice | ForwardedOutcome::NotItsConversation { .. } => {
                if events.len() < 10 {
                    events.push(Ev::new(Action::PeerDelivery).source(source).failed(
                        Reason::PeerForeignWrite,
                        format!(
                            "peer {} forwarded an item ({}) for conversation {} to device {}: {}",
                            peer.domain,
                            f.item.kind.as_str(),
                            f.item.group_id.0,
                            f.device,
                            match outcome {
                                ForwardedOutcome::NotOurDevice =>
                                    "not a device of this server".to_string(),
                                ForwardedOutcome::NotItsConversation { hub: Some(h) } =>
                                    format!("the conversation is hosted at {h}"),
                                _ => "not a conversation it hosts".to_string(),
                            }
                        ),
                    ));
                }
            }
        }
        received.insert(f.device.clone(), f.seq);
    }
    // Welcomes the peer's users sent this server's devices: what turns the
    // peer's key-package claims into conversations (the drain rule).
    if !welcomed.is_empty() {
        events.push(
            Ev::new(Action::Welcome)
                .device(&pouch_store::peer_stand_in(&peer.domain))
                .source(source)
                .devices(&welcomed)
                .amount(welcomed.len() as u64, 0),
        );
    }
    if queued > 0 {
        events.push(
            Ev::new(Action::PeerDelivery)
                .source(source)
                .amount(queued, 0)
                .detail(format!("peer {} forwarded {queued} items", peer.domain)),
        );
    }
    record_all(s, events).await;
    s.waiters.wake(woken.iter());
    Ok(PeerDeliveryAnswer {
        received: received
            .into_iter()
            .map(|(device, up_to)| ReceivedUpTo { device, up_to })
            .collect(),
    })
}
