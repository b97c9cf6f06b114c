//! Accounts and sign-in: invites, enrollment of an account's first device,
//! and the challenge–signature exchange that gives a device its token.

use super::audit::{Ev, record};
use super::directory::{check_first_list, log_record};
use super::mail::MAX_KEY_PACKAGES_PER_UPLOAD;
use super::{Result, ServiceError};
use crate::{AppState, INVITE_TTL_SECS, now, random_bytes, sha256};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use pouch_proto::api::*;
use pouch_proto::security::{Action, Reason};
use pouch_store::NewDevice;
use std::net::IpAddr;

/// How long a sign-in challenge may be answered.
const CHALLENGE_TTL_SECS: i64 = 60;

/// An administrator adds an account (or re-invites one whose devices are
/// all gone): a fresh invite for its first device.
pub async fn add_user(
    s: &AppState,
    by: &super::administrators::AdminCaller,
    req: AddUserRequest,
) -> Result<AddUserResponse> {
    if req.address.domain() != s.domain {
        return Err(ServiceError::bad_request(format!(
            "this server serves @{}; {} belongs to another domain",
            s.domain, req.address
        )));
    }
    let now = now();
    match s
        .store
        .create_user(&req.address, req.name.as_deref(), now)
        .await
    {
        Ok(()) => {}
        // An account with a device grows only by approval from that device:
        // the administrator cannot slip a device in with an invite.
        Err(pouch_store::StoreError::Conflict) => {
            // After a reset, the only invite is the one the approved reset
            // issued: one operator alone must not mint another and enroll
            // a device of their own as the account's new key.
            if s.store.reset_at(&req.address).await?.is_some() {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{} was reset: its new invite comes with the approved reset; for another, ask for another reset ('pouch admin user reset {}')",
                        req.address, req.address
                    ),
                ));
            }
            if s.store
                .devices_of(&req.address)
                .await?
                .iter()
                .any(|d| d.is_active())
            {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{} already has a device: add another with 'pouch link' approved from an existing device, \
                         or, if every device is lost, 'pouch admin user reset {}'",
                        req.address, req.address
                    ),
                ));
            }
        }
        Err(e) => return Err(e.into()),
    }
    issue_invite(s, by, req.address, req.invite_ttl_secs).await
}

/// A fresh single-use invite; the store keeps only the secret's hash.
pub async fn issue_invite(
    s: &AppState,
    by: &super::administrators::AdminCaller,
    address: pouch_proto::Address,
    ttl: Option<u64>,
) -> Result<AddUserResponse> {
    let secret = random_bytes::<32>();
    let expires_at = now() + ttl.unwrap_or(INVITE_TTL_SECS).min(30 * 24 * 3600) as i64;
    s.store
        .create_invite(&address, &sha256(&secret), expires_at)
        .await?;
    tracing::info!(%address, admin = %by.name, "invite issued");
    record(s, by.event(Action::AdminInvite).account(&address)).await;
    Ok(AddUserResponse {
        address,
        invite_secret: secret.to_vec(),
        expires_at,
    })
}

pub async fn list_users(s: &AppState) -> Result<Vec<UserSummary>> {
    Ok(s.store.list_users().await?)
}

/// A device enrolls with an invite: its account's first device (or the
/// first after an administrator reset), with its first signed device list.
pub async fn enroll(
    s: &AppState,
    source: Option<IpAddr>,
    req: EnrollRequest,
) -> Result<EnrollResponse> {
    if VerifyingKey::try_from(req.signature_key.as_slice()).is_err() {
        return Err(ServiceError::bad_request(
            "the device key is not an Ed25519 public key",
        ));
    }
    if req.key_packages.is_empty() || req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ServiceError::bad_request(
            "enroll with 1 to 500 key packages",
        ));
    }
    let name = req.device_name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ServiceError::bad_request(
            "the device name must be 1 to 100 characters",
        ));
    }
    let list = check_first_list(
        s,
        &req.address,
        &req.device_id,
        &req.signature_key,
        &req.device_list,
    )
    .await?;
    let device = NewDevice {
        device_id: req.device_id,
        address: req.address.clone(),
        name: name.to_string(),
        signature_key: req.signature_key,
        key_packages: req.key_packages,
        last_resort: req.last_resort_key_package,
        device_list: Some((list, log_record(s, &req.device_list)?)),
    };
    let result = s
        .store
        .enroll(&sha256(&req.invite_secret), device, now())
        .await;
    match &result {
        Ok(d) => {
            tracing::info!(address = %d.address, device = %d.device_id, peer = %crate::shown(&source), "device enrolled");
            let after_reset = s.store.reset_at(&d.address).await.ok().flatten().is_some();
            record(
                s,
                Ev::new(Action::Enroll)
                    .account(&d.address)
                    .device(&d.device_id)
                    .source_opt(source)
                    .after_reset(after_reset)
                    .detail(if after_reset {
                        "after an administrator reset"
                    } else {
                        "first device"
                    }),
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(address = %req.address, peer = %crate::shown(&source), reason = %e, "enrollment refused");
            record(
                s,
                Ev::new(Action::Enroll)
                    .account(&req.address)
                    .source_opt(source)
                    .failed(enroll_refusal(e), e),
            )
            .await;
        }
    }
    let device = result?;
    super::log::refresh_checkpoint(s).await?;
    Ok(EnrollResponse {
        device_id: device.device_id,
        ciphersuite: s.ciphersuite,
    })
}

/// A sign-in challenge for a device (unknown ones too).
pub async fn challenge(s: &AppState, req: ChallengeRequest) -> Result<ChallengeResponse> {
    // Unknown devices get a challenge too, so the answer does not reveal which ids exist.
    let challenge = random_bytes::<32>();
    s.store
        .put_challenge(&challenge, &req.device_id, now() + CHALLENGE_TTL_SECS)
        .await?;
    Ok(ChallengeResponse {
        challenge: challenge.to_vec(),
    })
}

/// A device signs its challenge and gets a short-lived bearer token.
pub async fn sign_in(
    s: &AppState,
    source: Option<IpAddr>,
    req: TokenRequest,
) -> Result<TokenResponse> {
    let refused = || {
        ServiceError::unauthorized(
            "device sign-in failed: unknown or revoked device, or a bad signature",
        )
    };
    let issued_to = s.store.take_challenge(&req.challenge, now()).await?;
    let failed = |reason: Reason, why: &str| {
        Ev::new(Action::SignIn)
            .device(&req.device_id)
            .source_opt(source)
            .failed(reason, why)
    };
    if issued_to.as_ref() != Some(&req.device_id) {
        record(
            s,
            failed(Reason::ChallengeUnknown, "unknown or expired challenge"),
        )
        .await;
        return Err(refused());
    }
    let Some(device) = s.store.device(&req.device_id).await? else {
        record(s, failed(Reason::DeviceUnknown, "unknown device")).await;
        return Err(refused());
    };
    // A device of another domain (a member of a conversation hosted here)
    // signs in at its own server only.
    if !device.is_active() || !device.is_local() {
        tracing::warn!(device = %device.device_id, peer = %crate::shown(&source), revoked_by = %crate::shown(&device.revoked_by), "inactive device tried to sign in");
        record(
            s,
            failed(Reason::DeviceInactive, "revoked or unapproved device").account(&device.address),
        )
        .await;
        return Err(refused());
    }
    let key = VerifyingKey::try_from(device.signature_key.as_slice()).map_err(|_| refused())?;
    let sig = Signature::from_slice(&req.signature).map_err(|_| refused())?;
    let key = key
        .verify(&auth_signing_payload(&req.device_id, &req.challenge), &sig)
        .map_err(|_| {
            tracing::warn!(device = %device.device_id, peer = %crate::shown(&source), "bad sign-in signature");
            refused()
        });
    if let Err(e) = key {
        record(
            s,
            failed(Reason::BadSignature, "bad signature").account(&device.address),
        )
        .await;
        return Err(e);
    }
    let token = hex::encode(random_bytes::<32>());
    s.store
        .put_token(
            &sha256(token.as_bytes()),
            &device.device_id,
            now() + s.token_ttl_secs as i64,
        )
        .await?;
    record(
        s,
        Ev::new(Action::SignIn)
            .account(&device.address)
            .device(&device.device_id)
            .source_opt(source),
    )
    .await;
    Ok(TokenResponse {
        token,
        expires_in_secs: s.token_ttl_secs,
    })
}

/// Why an enrollment was refused, for the rules.
fn enroll_refusal(e: &pouch_store::EnrollError) -> Reason {
    use pouch_store::{EnrollError, InviteRejection};
    match e {
        EnrollError::Invite(InviteRejection::Unknown) => Reason::InviteUnknown,
        EnrollError::Invite(InviteRejection::Used) => Reason::InviteUsed,
        EnrollError::Invite(InviteRejection::Expired) => Reason::InviteExpired,
        EnrollError::Store(pouch_store::StoreError::Conflict) => Reason::AccountHasDevices,
        EnrollError::Store(_) => Reason::ServerFailure,
    }
}
