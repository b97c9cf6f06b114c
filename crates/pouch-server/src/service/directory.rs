//! The directory: who has which devices. Reading an account's signed
//! device lists (one account, or many with their log proofs, cached per
//! log size), checking a list against its address and the first list an
//! invite brings, and the transparency-log record each list change appends.

use super::ServiceError;
use crate::{AppState, now, sha256};
use pouch_proto::api::{
    DeviceListHistory, DirectoryEntry, DirectoryRequest, DirectoryResponse, ErrorCode, LeafProof,
};
use pouch_proto::devices::{DeviceListBody, SignedDeviceList};
use pouch_proto::{Address, DeviceId};
use pouch_store::{LogRecord, StoredList};

pub(crate) fn bad_list(msg: &str) -> ServiceError {
    ServiceError::bad_request(format!("device list refused: {msg}"))
}

pub(crate) fn verify(
    list: &SignedDeviceList,
    address: &Address,
) -> Result<DeviceListBody, ServiceError> {
    let body = list.verify().map_err(|e| bad_list(&e.to_string()))?;
    if &body.address != address {
        return Err(bad_list("it is for another address"));
    }
    Ok(body)
}

/// The list an invite enrollment brings: the account's first, or the first
/// after an administrator reset, naming only the enrolling device.
pub(crate) async fn check_first_list(
    s: &AppState,
    address: &Address,
    device_id: &DeviceId,
    signature_key: &[u8],
    list: &SignedDeviceList,
) -> Result<StoredList, ServiceError> {
    if device_id.0.len() != 32 || !device_id.0.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServiceError::bad_request(
            "the device id must be 16 random bytes in hex",
        ));
    }
    let body = verify(list, address)?;
    if body.devices.len() != 1 || !body.lists(device_id, signature_key) {
        return Err(bad_list("it must list exactly the enrolling device"));
    }
    let latest = s.store.latest_device_list(address).await?;
    match latest {
        None if body.version == 1 && body.previous.is_none() => {}
        None => return Err(bad_list("an account's first list is version 1")),
        Some(prev) => {
            // Only after a reset may an invite start a new account key. Otherwise
            // the store refuses the taken version, after checking the invite
            // itself, so a reused invite is reported as such.
            let active = s
                .store
                .devices_of(address)
                .await?
                .iter()
                .any(|d| d.is_active());
            if active || s.store.reset_at(address).await?.is_none() {
                return Ok(StoredList {
                    version: body.version,
                    body: list.body.clone(),
                    signature: list.signature.clone(),
                });
            }
            let prev_hash = pouch_proto::sha256_hex(&prev.body);
            if body.version != prev.version + 1
                || body.previous.as_deref() != Some(prev_hash.as_str())
            {
                return Err(bad_list(
                    "after a reset the list must continue the account's chain",
                ));
            }
        }
    }
    Ok(StoredList {
        version: body.version,
        body: list.body.clone(),
        signature: list.signature.clone(),
    })
}

/// The transparency-log record of `list`: the full entry, and the public
/// leaf that commits to it without naming the account.
pub(crate) fn log_record(s: &AppState, list: &SignedDeviceList) -> Result<LogRecord, ServiceError> {
    let entry = pouch_log::LogEntry::for_list(list).map_err(|e| bad_list(&e.to_string()))?;
    Ok(commit_record(s, &pouch_log::AnyEntry::List(entry)))
}

pub(crate) fn commit_record(s: &AppState, entry: &pouch_log::AnyEntry) -> LogRecord {
    let full = entry.to_bytes();
    LogRecord {
        leaf: s.log.key.commitment.commit_entry(
            entry.kind(),
            entry.address(),
            entry.version(),
            &full,
        ),
        entry: full,
    }
}

/// An account's whole chain of signed device lists. Shown to this server's
/// signed-in devices, and to the holder of a valid invite of that very
/// address (a first device after a reset continues the chain); nobody else
/// learns who has which devices, or who exists.
pub async fn history(
    s: &AppState,
    address: Address,
    bearer_token: Option<&str>,
    invite_secret: Option<Vec<u8>>,
) -> Result<DeviceListHistory, ServiceError> {
    let by_device = match bearer_token {
        Some(token) => s
            .store
            .token_device(&sha256(token.as_bytes()), now())
            .await?
            .is_some(),
        None => false,
    };
    let by_invite = match invite_secret {
        Some(secret) => {
            s.store
                .invite_valid(&address, &sha256(&secret), now())
                .await?
        }
        None => false,
    };
    if !by_device && !by_invite {
        return Err(ServiceError::unauthorized(
            "sign in first: device lists are shown to this server's devices only",
        ));
    }
    if !s.store.user_exists(&address).await? {
        return Err(ServiceError::new(
            ErrorCode::UnknownRecipient,
            format!("{address} is not a Pouch user on this server; check the address"),
        ));
    }
    let lists = signed_lists(s, &address).await?;
    Ok(DeviceListHistory { address, lists })
}

/// Every version of `address`'s signed device list, oldest first.
async fn signed_lists(
    s: &AppState,
    address: &Address,
) -> Result<Vec<SignedDeviceList>, ServiceError> {
    Ok(s.store
        .device_list_history(address)
        .await?
        .into_iter()
        .map(SignedDeviceList::from)
        .collect())
}

/// Many accounts' device lists at once, each with the inclusion proof of its
/// newest version against one checkpoint (see `DirectoryRequest`): for the
/// signed-in devices of this server, like the lists one by one.
pub async fn lookup(
    s: &AppState,
    req: DirectoryRequest,
) -> Result<DirectoryResponse, ServiceError> {
    if req.addresses.len() > pouch_proto::MAX_RECIPIENTS + 1 {
        return Err(ServiceError::bad_request(format!(
            "ask for at most {} device lists at once",
            pouch_proto::MAX_RECIPIENTS + 1
        )));
    }
    let mut addresses = req.addresses;
    addresses.sort();
    addresses.dedup();
    // Other domains' accounts: asked of their servers (federation peers).
    let (addresses, elsewhere): (Vec<Address>, Vec<Address>) =
        addresses.into_iter().partition(|a| a.domain() == s.domain);
    let mut remote = Vec::new();
    let mut not_federated = Vec::new();
    let mut by_domain: std::collections::BTreeMap<String, Vec<Address>> = Default::default();
    for a in elsewhere {
        by_domain.entry(a.domain().to_string()).or_default().push(a);
    }
    // Each peer asked at once, all within one deadline: a slow partner
    // delays the answer by at most that, never by its own timeouts in turn.
    let mut questions = Vec::new();
    for (domain, asked) in by_domain {
        match s
            .federation
            .as_ref()
            .and_then(|f| f.peer(&domain).map(|p| (f, p)))
        {
            Some((fed, peer)) => questions.push(async move {
                let question = crate::federation::remote_lookup(s, fed, peer, asked);
                match tokio::time::timeout(crate::federation::LOOKUP_DEADLINE, question).await {
                    Ok(found) => found,
                    Err(_) => {
                        tracing::warn!(peer = %peer.domain, "a directory question to the peer did not finish in time");
                        fed.failed(&peer.domain, "a directory question did not finish in time");
                        pouch_proto::api::RemoteDirectory {
                        domain: peer.domain.clone(),
                        error: Some(format!(
                            "the server of {} did not answer in time; try again later",
                            peer.domain
                        )),
                        ..Default::default()
                    }
                    }
                }
            }),
            None => not_federated.extend(asked),
        }
    }
    remote.extend(futures_util::future::join_all(questions).await);
    let (size, note) = super::log::current_checkpoint(s).await?;
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
        let lists = signed_lists(s, &address).await?;
        let newest = match lists.last().and_then(|l| l.body_unverified().ok()) {
            Some(body) => super::log::list_inclusion(s, size, &note, &address, body.version)
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
    unknown.extend(not_federated);
    Ok(DirectoryResponse {
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
        entries,
        unknown,
        remote,
    })
}

/// A device's question ([`lookup`]): accounts of other domains are asked of
/// their servers, which learn which of their accounts were asked about
/// (not by whom), so this server records it — an access event naming the
/// device and the accounts, counted by the detection rules (a device
/// scanning a partner's staff list).
pub async fn lookup_for(
    s: &AppState,
    caller: &super::Caller,
    req: DirectoryRequest,
) -> Result<DirectoryResponse, ServiceError> {
    if req.addresses.len() > pouch_proto::MAX_RECIPIENTS + 1 {
        return lookup(s, req).await; // refused there, before anyone is asked
    }
    // What partners' servers will be asked: each account once, of a peer's
    // domain (other domains are answered "unknown" and asked of no one).
    let mut remote: Vec<Address> = req
        .addresses
        .iter()
        .filter(|a| {
            a.domain() != s.domain
                && s.federation
                    .as_ref()
                    .is_some_and(|f| f.peer(a.domain()).is_some())
        })
        .cloned()
        .collect();
    remote.sort();
    remote.dedup();
    if !remote.is_empty() {
        let mut domains: Vec<&str> = remote.iter().map(|a| a.domain()).collect();
        domains.sort();
        domains.dedup();
        let mut ev = super::audit::Ev::new(pouch_proto::security::Action::RemoteLookup)
            .device(&caller.device)
            .source_opt(caller.source)
            .amount(remote.len() as u64, 0)
            .detail(format!(
                "{} accounts of {}",
                remote.len(),
                domains.join(", ")
            ))
            .targets(
                remote
                    .iter()
                    .take(pouch_proto::api::EVENT_DEVICES_MAX)
                    .cloned(),
            );
        if let Some(account) = super::audit::account_of(s, &caller.device).await {
            ev = ev.account(&account);
        }
        super::audit::record(s, ev).await;
    }
    lookup(s, req).await
}

/// A federation peer's question about this server's own accounts: the
/// directory's answer and the commitment key, proven against one
/// checkpoint. Only this domain's addresses.
pub async fn peer_lookup(
    s: &AppState,
    req: DirectoryRequest,
) -> Result<pouch_proto::api::PeerDirectory, ServiceError> {
    if let Some(a) = req.addresses.iter().find(|a| a.domain() != s.domain) {
        return Err(ServiceError::new(
            pouch_proto::api::ErrorCode::Forbidden,
            format!("{a} is not an account of this server (@{})", s.domain),
        ));
    }
    // The log may grow between the two reads: read again until both are
    // for one checkpoint (it grows by a few entries a second at most).
    for _ in 0..3 {
        let directory = lookup(s, req.clone()).await?;
        let commitment_key = super::log::commitment_key(s).await?;
        if commitment_key.inclusion.checkpoint == directory.checkpoint {
            return Ok(pouch_proto::api::PeerDirectory {
                directory,
                commitment_key,
            });
        }
    }
    Err(ServiceError::new(
        pouch_proto::api::ErrorCode::Conflict,
        "the log kept growing while answering; ask again",
    ))
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

    pub(crate) fn get(&self, size: u64, address: &Address) -> Option<DirectoryEntry> {
        let cache = self.0.lock().expect("not poisoned");
        (cache.0 == size)
            .then(|| cache.1.get(address).cloned())
            .flatten()
    }

    pub(crate) fn put(&self, size: u64, entry: &DirectoryEntry) {
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
