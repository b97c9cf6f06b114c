//! An account's devices: publishing its signed device list (approving linked
//! devices, revoking dropped ones) and the link requests it answers.

use super::audit::{Ev, record_all};
use super::directory::{bad_list, log_record, verify};
use super::{Caller, Result, ServiceError};
use crate::{AppState, now};
use pouch_proto::DeviceId;
use pouch_proto::api::ErrorCode;
use pouch_proto::devices::SignedDeviceList;
use pouch_proto::security::Action;
use pouch_store::StoredList;

/// A device publishes its account's next device list, signed with the
/// account key: devices it adds (each with a pending link request) are
/// approved, devices it leaves out are revoked, and the list is appended to
/// the transparency log, all in one transaction.
pub async fn publish_list(s: &AppState, caller: &Caller, list: SignedDeviceList) -> Result<()> {
    let me = s
        .store
        .device(&caller.device)
        .await?
        .ok_or_else(|| ServiceError::unauthorized("unknown device"))?;
    let body = verify(&list, &me.address)?;
    let prev = s
        .store
        .latest_device_list(&me.address)
        .await?
        .ok_or_else(|| bad_list("the account has no list yet"))?;
    let prev_body = SignedDeviceList::from(prev.clone())
        .body_unverified()
        .map_err(|_| ServiceError::bad_request("the stored device list is damaged"))?;
    if body.version != prev.version + 1
        || body.previous.as_deref() != Some(pouch_proto::sha256_hex(&prev.body).as_str())
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "the device list moved on to version {}; sync and retry",
                prev.version
            ),
        ));
    }
    if body.account_key != prev_body.account_key {
        return Err(bad_list("it is signed by a different account key"));
    }
    if !prev_body.lists(&me.device_id, &me.signature_key) {
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            "this device is not on its account's device list",
        ));
    }
    let now = now();
    let registered = s.store.devices_of(&me.address).await?;
    let mut activate = Vec::new();
    let mut pending_codes = Vec::new();
    for listed in &body.devices {
        let known = registered
            .iter()
            .find(|r| r.device_id == listed.device_id && r.signature_key == listed.signature_key)
            .ok_or_else(|| bad_list("it names a device the server does not know"))?;
        if known.revoked_at.is_some() {
            return Err(bad_list("it names a revoked device"));
        }
        if known.approved_at.is_none() {
            activate.push(known.device_id.clone());
        }
    }
    for id in &activate {
        match pending_link_of(s, id).await? {
            Some(req) if req.expires_at > now => pending_codes.push(req.code),
            _ => {
                return Err(bad_list(
                    "a device it adds has no pending link request (expired or refused?)",
                ));
            }
        }
    }
    let revoke: Vec<DeviceId> = registered
        .iter()
        .filter(|r| r.is_active() && !body.devices.iter().any(|l| l.device_id == r.device_id))
        .map(|r| r.device_id.clone())
        .collect();
    let entry = log_record(s, &list)?;
    let stored = StoredList {
        version: body.version,
        body: list.body,
        signature: list.signature,
    };
    s.store
        .publish_device_list(&me.address, &stored, &entry, &activate, &revoke, now)
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::Conflict => ServiceError::new(
                ErrorCode::Conflict,
                "the device list moved on; sync and retry",
            ),
            other => other.into(),
        })?;
    for code in pending_codes {
        s.store.finish_link_request(&code, "approved", now).await?;
    }
    super::log::refresh_checkpoint(s).await?;
    tracing::info!(address = %me.address, version = body.version, added = activate.len(), revoked = revoke.len(), by = %me.device_id, "device list published");
    let event = |action, id, what| {
        Ev::new(action)
            .account(&me.address)
            .device(id)
            .by(&me.device_id)
            .detail(format!("{what} by {}", me.device_id))
    };
    let approved = activate
        .iter()
        .map(|id| event(Action::LinkApproved, id, "approved"));
    let revoked = revoke
        .iter()
        .map(|id| event(Action::DeviceRevoked, id, "revoked"));
    record_all(s, approved.chain(revoked).collect()).await;
    Ok(())
}

/// The device's link request, if it is still waiting for approval.
pub async fn pending_link_of(
    s: &AppState,
    device: &DeviceId,
) -> Result<Option<pouch_store::LinkRequest>> {
    Ok(s.store
        .link_request_for_device(device)
        .await?
        .filter(|r| r.status == "pending"))
}
