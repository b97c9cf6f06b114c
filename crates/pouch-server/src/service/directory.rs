//! The directory's checks that are not HTTP: a signed device list against
//! its address, the first list an invite brings, and the transparency-log
//! record each list change appends.

use super::ServiceError;
use crate::AppState;
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
