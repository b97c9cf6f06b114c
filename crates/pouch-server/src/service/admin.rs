//! What the server does on its own authority: an administrator's reset of
//! an account or revocation of a device (each carried out only once a second
//! administrator approved it, `administrators.rs`), and the response
//! policy's revocation (of a cloned device). Each is recorded in the
//! transparency log (so it cannot happen quietly) and as an access event
//! naming the administrator.

use super::accounts::issue_invite;
use super::administrators::AdminCaller;
use super::audit::{Ev, record};
use super::directory::commit_record;
use super::{Result, ServiceError};
use crate::{AppState, now};
use pouch_proto::api::{AddUserResponse, AdminActionDone, ErrorCode, StaleDevice};
use pouch_proto::security::Action;
use pouch_proto::{Address, DeviceId};

/// Revokes every device of an account and issues a fresh invite for a new
/// first device (every device was lost).
pub async fn reset_account(
    s: &AppState,
    by: &AdminCaller,
    address: Address,
    because: &str,
) -> Result<AddUserResponse> {
    s.store
        .reset_user(&address, now())
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::NotFound => {
                ServiceError::not_found(format!("no user {address}"))
            }
            other => other.into(),
        })?;
    tracing::warn!(%address, admin = %by.name, because, "ADMIN reset the account: every device revoked");
    record(
        s,
        by.event(Action::AdminReset)
            .account(&address)
            .detail(because),
    )
    .await;
    issue_invite(s, by, address, None).await
}

/// An administrator revokes one device of an account.
pub async fn revoke_device(
    s: &AppState,
    by: &AdminCaller,
    address: Address,
    device: DeviceId,
    because: &str,
) -> Result<AdminActionDone> {
    match s.store.device(&device).await? {
        Some(d) if d.address == address && d.is_local() => {}
        _ => {
            return Err(ServiceError::not_found(format!(
                "{address} has no device {device}"
            )));
        }
    }
    if !revoke_in_log(s, &address, &device).await? {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            "that device is already revoked",
        ));
    }
    tracing::warn!(%address, %device, admin = %by.name, because, "ADMIN revoked a device");
    record(
        s,
        by.event(Action::AdminRevoke)
            .account(&address)
            .device(&device)
            .detail(because),
    )
    .await;
    Ok(AdminActionDone {
        address,
        detail: format!("device {device} revoked ({because})"),
    })
}

/// Revokes a device on the server's authority, recorded in the transparency
/// log so that it cannot happen quietly. False if it was already revoked.
async fn revoke_in_log(s: &AppState, address: &Address, device: &DeviceId) -> Result<bool> {
    let entry = commit_record(
        s,
        &pouch_log::AnyEntry::AdminRevocation(pouch_log::AdminRevocationEntry::new(
            address.clone(),
            device.clone(),
            now(),
        )),
    );
    if !s
        .store
        .revoke_device(device, "admin", Some(&entry), now())
        .await?
    {
        return Ok(false);
    }
    super::log::refresh_checkpoint(s).await?;
    Ok(true)
}

/// The response policy's revocation (e.g. of a cloned device): the same
/// logged revocation as an administrator's, recorded as its own event.
pub async fn revoke_by_policy(
    s: &AppState,
    address: &Address,
    device: &DeviceId,
    because: &str,
) -> Result<()> {
    match s.store.device(device).await? {
        Some(d) if &d.address == address && d.is_active() => {}
        _ => return Ok(()),
    }
    if revoke_in_log(s, address, device).await? {
        tracing::warn!(%address, %device, because, "POLICY revoked a device");
        record(
            s,
            Ev::new(Action::PolicyRevoke)
                .account(address)
                .device(device)
                .detail(format!("because of {because}")),
        )
        .await;
    }
    Ok(())
}

/// Member devices that have not updated their keys in a conversation within
/// the rotation period (a lost or stolen device that nobody revoked).
pub async fn stale_devices(s: &AppState) -> Result<Vec<StaleDevice>, ServiceError> {
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
    Ok(stale)
}
