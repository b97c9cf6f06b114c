//! Administrators are people, not a shared token.
//!
//! Each has an Ed25519 key kept in their own home (`pouch admin init`) and a
//! role ([`AdminRole`]): operators manage users, invites, devices and
//! administrators; the security team reads events and alerts and the
//! accounts; auditors read everything and change nothing. An administrator
//! signs in as a device does (challenge, signature, short-lived token), and
//! every event their requests cause names them.
//!
//! The first administrator is made with the server's one-time setup secret
//! (written to the data directory at first start; its hash is consumed in
//! the same transaction that records them); operators add the rest.
//!
//! The two actions by which an insider could take over an account — a reset
//! (which lets a new first device start a new account key) and revoking a
//! user's device — wait for a second administrator: [`request`] records
//! them, [`approve`] by another operator carries them out. The security team
//! gets an alert at each step.

use super::audit::{Ev, record};
use super::{Result, ServiceError};
use crate::{AppState, now, random_bytes, sha256};
use ed25519_dalek::{Signature, VerifyingKey};
use pouch_proto::api::*;
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, DeviceId};
use pouch_store::{AdminRecord, Approval};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// The setting holding the SHA-256 (hex) of the one-time setup secret.
pub const SETUP_SETTING: &str = "admin_setup_sha256";
/// Before administrators had keys, the shared token's hash. It is deleted
/// at the first start of this version and a fresh setup secret written:
/// whoever held the shared token (scripts, scrapers) must not become the
/// first administrator.
pub const LEGACY_TOKEN_SETTING: &str = "admin_token_sha256";
/// How long a sign-in challenge may be answered.
const CHALLENGE_TTL_SECS: i64 = 60;
/// How long an administrator's token lasts (the CLI signs in per command;
/// `alerts --follow` renews).
pub const ADMIN_TOKEN_TTL_SECS: u64 = 900;
/// How long a request waits for its second administrator.
pub const APPROVAL_TTL_SECS: i64 = 24 * 3600;

/// An administrator who proved their key, and from where.
#[derive(Clone, Debug)]
pub struct AdminCaller {
    pub name: String,
    pub role: AdminRole,
    pub source: Option<IpAddr>,
}

impl AdminCaller {
    /// An event about something this administrator did.
    pub fn event(&self, action: Action) -> Ev {
        Ev::new(action).admin(&self.name).source_opt(self.source)
    }
}

fn summary(a: AdminRecord) -> AdminSummary {
    AdminSummary {
        key_fingerprint: hex::encode(sha256(&a.public_key)),
        name: a.name,
        role: a.role,
        added_by: a.added_by,
        added_at: a.added_at,
    }
}

fn checked_key(name: &str, key: &[u8]) -> Result<()> {
    if !admin_name_ok(name) {
        return Err(ServiceError::bad_request(format!(
            "an administrator's name is 1 to {ADMIN_NAME_MAX} of a-z, 0-9, '.', '-', '_' (got '{}')",
            name.escape_debug()
        )));
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| ServiceError::bad_request("an administrator's key is 32 bytes (Ed25519)"))?;
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| ServiceError::bad_request("that is not an Ed25519 public key"))?;
    // A small-order key verifies forged signatures (with plain `verify`):
    // a shared, deniable credential. Refused, and sign-in verifies strictly.
    if key.is_weak() {
        return Err(ServiceError::bad_request(
            "that Ed25519 key is weak (small order): make a new one with 'pouch admin init'",
        ));
    }
    Ok(())
}

/// The first administrator, an operator, with the one-time setup secret.
pub async fn bootstrap(
    s: &AppState,
    source: Option<IpAddr>,
    req: BootstrapRequest,
) -> Result<AdminSummary> {
    checked_key(&req.name, &req.public_key)?;
    let presented = hex::encode(sha256(req.setup_secret.trim().as_bytes()));
    let refused = || {
        ServiceError::unauthorized(
            "the setup secret is wrong or was used already: an existing operator adds you with 'pouch admin add'",
        )
    };
    let mut consumed = false;
    for key in [SETUP_SETTING] {
        let Some(stored) = s.store.get_setting(key).await? else {
            continue;
        };
        if !bool::from(stored.as_bytes().ct_eq(presented.as_bytes())) {
            continue;
        }
        let admin = AdminRecord {
            name: req.name.clone(),
            role: AdminRole::Operator,
            public_key: req.public_key.clone(),
            added_by: None,
            added_at: now(),
        };
        consumed = s.store.bootstrap_admin(&admin, key, &stored).await?;
        break;
    }
    if !consumed {
        // The name is only claimed: it goes in the detail, never as the
        // event's administrator.
        tracing::warn!(peer = %crate::shown(&source), "administrator bootstrap refused");
        record(
            s,
            Ev::new(Action::AdminBootstrap).source_opt(source).failed(
                Reason::SetupSecretInvalid,
                format!("wrong or used setup secret (as '{}')", req.name),
            ),
        )
        .await;
        return Err(refused());
    }
    let ev = Ev::new(Action::AdminBootstrap)
        .admin(&req.name)
        .source_opt(source)
        .detail(format!(
            "{} made the first administrator (operator) with the setup secret",
            req.name
        ));
    tracing::warn!(admin = %req.name, "ADMIN first administrator made with the setup secret");
    record(s, ev).await;
    let admin = s.store.admin(&req.name).await?.ok_or_else(refused)?;
    Ok(summary(admin))
}

/// A sign-in challenge (for unknown names too, so the answer does not say
/// which administrators exist; only a real administrator's is kept).
pub async fn challenge(s: &AppState, req: AdminChallengeRequest) -> Result<ChallengeResponse> {
    let challenge = random_bytes::<32>();
    // Stored only for a current administrator: anyone may ask, and a row
    // per request for made-up names would grow without bound.
    if admin_name_ok(&req.name) && s.store.admin(&req.name).await?.is_some() {
        s.store
            .put_admin_challenge(&challenge, &req.name, now() + CHALLENGE_TTL_SECS)
            .await?;
    }
    Ok(ChallengeResponse {
        challenge: challenge.to_vec(),
    })
}

/// An administrator signs their challenge and gets a short-lived token.
pub async fn sign_in(
    s: &AppState,
    source: Option<IpAddr>,
    req: AdminTokenRequest,
) -> Result<TokenResponse> {
    let refused = || {
        ServiceError::unauthorized(
            "administrator sign-in failed: unknown or removed administrator, or a bad signature",
        )
    };
    // A failed sign-in names the administrator only as claimed, in the
    // detail: anyone can claim a name.
    let failed = |reason: Reason, why: &str| {
        let claimed: String = req.name.chars().take(ADMIN_NAME_MAX).collect();
        Ev::new(Action::AdminSignIn)
            .source_opt(source)
            .failed(reason, format!("{why} (as '{}')", claimed.escape_debug()))
    };
    let issued_to = s.store.take_admin_challenge(&req.challenge, now()).await?;
    if issued_to.as_deref() != Some(req.name.as_str()) {
        record(
            s,
            failed(Reason::ChallengeUnknown, "unknown or expired challenge"),
        )
        .await;
        return Err(refused());
    }
    let Some(admin) = s.store.admin(&req.name).await? else {
        record(
            s,
            failed(Reason::AdminUnknown, "unknown or removed administrator"),
        )
        .await;
        return Err(refused());
    };
    let verified = VerifyingKey::try_from(admin.public_key.as_slice())
        .ok()
        .zip(Signature::from_slice(&req.signature).ok())
        .is_some_and(|(key, sig)| {
            !key.is_weak()
                && key
                    .verify_strict(&admin_auth_signing_payload(&req.name, &req.challenge), &sig)
                    .is_ok()
        });
    if !verified {
        tracing::warn!(admin = %req.name, peer = %crate::shown(&source), "bad administrator sign-in signature");
        record(s, failed(Reason::BadSignature, "bad signature")).await;
        return Err(refused());
    }
    let token = hex::encode(random_bytes::<32>());
    s.store
        .put_admin_token(
            &sha256(token.as_bytes()),
            &admin.name,
            now() + ADMIN_TOKEN_TTL_SECS as i64,
        )
        .await?;
    record(
        s,
        Ev::new(Action::AdminSignIn)
            .admin(&admin.name)
            .source_opt(source)
            .detail(admin.role.as_str()),
    )
    .await;
    Ok(TokenResponse {
        token,
        expires_in_secs: ADMIN_TOKEN_TTL_SECS,
    })
}

/// How many operators there are now.
async fn operators(s: &AppState) -> Result<usize> {
    Ok(s.store
        .list_admins()
        .await?
        .iter()
        .filter(|a| a.role == AdminRole::Operator)
        .count())
}

/// An operator adds an administrator. An operator or a security
/// administrator, once there are two operators, is only asked for: a second
/// operator approves it (else one person could make up the second person of
/// the two-person rule, and the second's second, and approve their own
/// resets — or register an officer key — through them).
pub async fn add(s: &AppState, by: &AdminCaller, req: AddAdminRequest) -> Result<AddAdminResponse> {
    checked_key(&req.name, &req.public_key)?;
    // One key, one person: a key an administrator already signs with is
    // not a second person's.
    if s.store
        .list_admins()
        .await?
        .iter()
        .any(|a| a.public_key == req.public_key)
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            "that key is already an administrator's: each person makes their own with 'pouch admin init'",
        ));
    }
    // Operators and security administrators (the two people of the officer
    // key's rule), once there are two operators, wait for the second.
    let waits = match req.role {
        AdminRole::Operator => Some(ApprovalAction::AddOperator),
        AdminRole::Security => Some(ApprovalAction::AddSecurityAdmin),
        AdminRole::Auditor => None,
    };
    if let Some(action) = waits
        && operators(s).await? >= 2
    {
        if s.store.admin_name_taken(&req.name).await? {
            return Err(name_taken(&req.name));
        }
        let pending = request_for_operator(s, by, action, &req.name, Some(req.public_key)).await?;
        return Ok(AddAdminResponse {
            added: None,
            pending: Some(pending),
        });
    }
    Ok(AddAdminResponse {
        added: Some(insert(s, by, &req.name, req.role, req.public_key, None).await?),
        pending: None,
    })
}

fn name_taken(name: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::Conflict,
        format!(
            "the name '{name}' is or was taken: names are never reused, so that events name one person"
        ),
    )
}

/// Records the administrator `by` added (with `approved` saying who
/// approved it, for an operator added under the two-person rule).
async fn insert(
    s: &AppState,
    by: &AdminCaller,
    name: &str,
    role: AdminRole,
    public_key: Vec<u8>,
    approved: Option<(&str, &str)>,
) -> Result<AdminSummary> {
    // One key, one person, checked again when an approval adds them: two
    // requests with the same key under two names would otherwise make one
    // person two approvers.
    if s.store
        .list_admins()
        .await?
        .iter()
        .any(|a| a.public_key == public_key)
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            "that key is already an administrator's: each person makes their own with 'pouch admin init'",
        ));
    }
    let added_by = approved.map_or(by.name.as_str(), |(requester, _)| requester);
    let admin = AdminRecord {
        name: name.to_string(),
        role,
        public_key,
        added_by: Some(added_by.to_string()),
        added_at: now(),
    };
    match s.store.add_admin(&admin).await {
        Ok(()) => {}
        Err(pouch_store::StoreError::Conflict) => return Err(name_taken(name)),
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(admin = %by.name, added = %name, %role, "ADMIN added an administrator");
    if role == AdminRole::Security {
        super::security::note_security_administrators(s).await?;
    }
    let action = if role == AdminRole::Operator {
        Action::OperatorAdded
    } else {
        Action::AdminAdded
    };
    let because = approved
        .map(|(requester, id)| {
            format!(
                " (asked by {requester}, approved by {} (approval {id}))",
                by.name
            )
        })
        .unwrap_or_default();
    record(
        s,
        by.event(action)
            .detail(format!("added {name} as {role}{because}")),
    )
    .await;
    Ok(summary(admin))
}

/// An operator removes an administrator (not themselves: another operator
/// must, so that there is always one).
/// An operator, once there are two, is removed only with a second
/// operator's approval (else one could remove the others, and be alone to
/// add whom they like).
pub async fn remove(s: &AppState, by: &AdminCaller, name: &str) -> Result<Option<PendingApproval>> {
    if name == by.name {
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            "you cannot remove yourself: another operator removes you",
        ));
    }
    let admins = s.store.list_admins().await?;
    let operators = admins
        .iter()
        .filter(|a| a.role == AdminRole::Operator)
        .count();
    let is_operator = admins
        .iter()
        .any(|a| a.name == name && a.role == AdminRole::Operator);
    if operators <= 1 && is_operator {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!("{name} is the last operator: add another before removing them"),
        ));
    }
    if is_operator {
        let pending =
            request_for_operator(s, by, ApprovalAction::RemoveOperator, name, None).await?;
        return Ok(Some(pending));
    }
    delete_admin(s, by, name, "").await?;
    Ok(None)
}

/// Removes an administrator and records who did (`because`: the approval).
async fn delete_admin(s: &AppState, by: &AdminCaller, name: &str, because: &str) -> Result<()> {
    // Counted before a removal: a server that had two security
    // administrators keeps the officer key's rule however many remain
    // (one upgraded from before the rule has not recorded it yet).
    super::security::note_security_administrators(s).await?;
    if !s.store.remove_admin(name, now()).await? {
        return Err(ServiceError::not_found(format!(
            "no administrator '{name}'"
        )));
    }
    tracing::warn!(admin = %by.name, removed = %name, "ADMIN removed an administrator");
    record(
        s,
        by.event(Action::AdminRemoved)
            .detail(format!("removed {name}{because}")),
    )
    .await;
    Ok(())
}

pub async fn list(s: &AppState) -> Result<Vec<AdminSummary>> {
    Ok(s.store
        .list_admins()
        .await?
        .into_iter()
        .map(summary)
        .collect())
}

fn pending(a: Approval) -> PendingApproval {
    // Never shown for a key the request adds (an operator's, a security
    // administrator's, the officer's): the approver vouches for it by
    // taking its fingerprint from the key's holder, not from a listing the
    // requester also reads (and could have made up).
    let key_fingerprint = match a.action {
        ApprovalAction::RegisterOfficer
        | ApprovalAction::AddOperator
        | ApprovalAction::AddSecurityAdmin => None,
        _ => expected_fingerprint(&a),
    };
    PendingApproval {
        id: a.id,
        action: a.action,
        address: a.address,
        device: a.device,
        admin: a.admin_name,
        key_fingerprint,
        requested_by: a.requested_by,
        requested_at: a.requested_at,
        expires_at: a.expires_at,
    }
}

/// The key fingerprint an approver must give (adding an operator,
/// registering the officer's key), from what the request holds.
fn expected_fingerprint(a: &Approval) -> Option<String> {
    let key = a.admin_key.as_deref()?;
    match a.action {
        ApprovalAction::RegisterOfficer => super::security::card_fingerprint(key).ok(),
        _ => Some(hex::encode(sha256(key))),
    }
}

/// An approval's id: 10 characters a person can read out over the phone.
fn approval_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes::<10>()
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Records a reset or a revocation, to be carried out when a second
/// administrator approves it.
pub async fn request(
    s: &AppState,
    by: &AdminCaller,
    action: ApprovalAction,
    address: Address,
    device: Option<DeviceId>,
) -> Result<PendingApproval> {
    // Checked now, so nobody is asked to approve what cannot happen.
    match (&action, &device) {
        (ApprovalAction::Reset, _) => {
            if !s.store.user_exists(&address).await? {
                return Err(ServiceError::not_found(format!("no user {address}")));
            }
        }
        (ApprovalAction::Revoke, Some(d)) => match s.store.device(d).await? {
            Some(found) if found.address == address && found.is_active() => {}
            Some(found) if found.address == address => {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    "that device is already revoked",
                ));
            }
            _ => {
                return Err(ServiceError::not_found(format!(
                    "{address} has no device {d}"
                )));
            }
        },
        (ApprovalAction::Revoke, None) => {
            return Err(ServiceError::bad_request("a revocation names a device"));
        }
        (
            ApprovalAction::AddOperator
            | ApprovalAction::RemoveOperator
            | ApprovalAction::AddSecurityAdmin,
            _,
        ) => {
            return Err(ServiceError::bad_request(
                "administrators are added and removed with 'pouch admin add' and 'remove'",
            ));
        }
        (ApprovalAction::RegisterOfficer, _) => {
            return Err(ServiceError::bad_request(
                "the security officer's key is registered with 'pouch admin security-officer'",
            ));
        }
    }
    let at = now();
    let approval = Approval {
        id: approval_id(),
        action,
        address: Some(address.clone()),
        device: device.clone(),
        admin_name: None,
        admin_key: None,
        requested_by: by.name.clone(),
        requested_at: at,
        expires_at: at + APPROVAL_TTL_SECS,
        approved_by: None,
        approved_at: None,
    };
    s.store.create_approval(&approval).await?;
    tracing::warn!(admin = %by.name, id = %approval.id, action = action.as_str(), %address, "ADMIN asked for a second administrator's approval");
    let mut ev = by
        .event(Action::AdminApprovalRequested)
        .account(&address)
        .detail(format!("{} (approval {})", action.as_str(), approval.id));
    if let Some(d) = &device {
        ev = ev.device(d);
    }
    record(s, ev).await;
    Ok(pending(approval))
}

/// Records the addition or removal of operator `name`, to be carried out
/// when a second operator approves it.
/// Records a request about a person who is not an account (an operator
/// to add or remove, the security officer whose key `key` holds), to be
/// carried out when a second administrator approves it.
pub(crate) async fn request_for_operator(
    s: &AppState,
    by: &AdminCaller,
    action: ApprovalAction,
    name: &str,
    key: Option<Vec<u8>>,
) -> Result<PendingApproval> {
    let at = now();
    let approval = Approval {
        id: approval_id(),
        action,
        address: None,
        device: None,
        admin_name: Some(name.to_string()),
        admin_key: key,
        requested_by: by.name.clone(),
        requested_at: at,
        expires_at: at + APPROVAL_TTL_SECS,
        approved_by: None,
        approved_at: None,
    };
    s.store.create_approval(&approval).await?;
    tracing::warn!(admin = %by.name, id = %approval.id, action = action.as_str(), operator = %name, "ADMIN asked for a second administrator's approval");
    record(
        s,
        by.event(Action::AdminApprovalRequested).detail(format!(
            "{} {name} (approval {})",
            action.as_str(),
            approval.id
        )),
    )
    .await;
    Ok(pending(approval))
}

pub async fn pending_approvals(s: &AppState) -> Result<Vec<PendingApproval>> {
    Ok(s.store
        .pending_approvals(now())
        .await?
        .into_iter()
        .map(pending)
        .collect())
}

/// A second operator approves a request, which is carried out at once.
pub async fn approve(
    s: &AppState,
    by: &AdminCaller,
    id: &str,
    req: &ApproveRequest,
) -> Result<ApprovalDone> {
    let Some(approval) = s.store.approval(id).await? else {
        return Err(ServiceError::not_found(format!(
            "no request {id}; see 'pouch admin approvals'"
        )));
    };
    // The event of an approval names the account it is about, if any.
    let about = |ev: super::audit::Ev| match &approval.address {
        Some(a) => ev.account(a),
        None => ev,
    };
    if approval.requested_by == by.name {
        record(
            s,
            about(by.event(Action::AdminApproved)).failed(
                Reason::SameAdministrator,
                format!("approval {id} by its own requester"),
            ),
        )
        .await;
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!("you asked for {id} yourself: a second administrator must approve it"),
        ));
    }
    // Each request needs the role of what it does: operators approve what
    // operators do, security administrators the officer's key.
    let needed = match approval.action {
        ApprovalAction::RegisterOfficer => AdminRole::Security,
        _ => AdminRole::Operator,
    };
    if by.role != needed {
        record(
            s,
            about(by.event(Action::AdminApproved)).failed(
                Reason::WrongRole,
                format!("approval {id} by a {} administrator", by.role.as_str()),
            ),
        )
        .await;
        let who = match needed {
            AdminRole::Security => "a security administrator",
            _ => "an operator",
        };
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!(
                "{} administrators may not do this: {id} ({}) needs the approval of {who}",
                by.role.as_str(),
                approval.action.as_str()
            ),
        ));
    }
    // A second person, not a second name: an operator the requester added,
    // or one added after the request, is refused (a name made for the
    // purpose). The security team sees every operator added (High), and
    // once there are two operators none is added without a second.
    let approver = s.store.admin(&by.name).await?;
    if let Some(approver) = approver
        && (approver.added_by.as_deref() == Some(approval.requested_by.as_str())
            || approver.added_at >= approval.requested_at)
    {
        record(
            s,
            about(by.event(Action::AdminApproved)).failed(
                Reason::SameAdministrator,
                format!(
                    "approval {id} by an operator {} added{}",
                    approval.requested_by,
                    if approver.added_at >= approval.requested_at {
                        " after the request"
                    } else {
                        ""
                    }
                ),
            ),
        )
        .await;
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!(
                "{id} needs an administrator who was one before it was asked and whom {} did not add",
                approval.requested_by
            ),
        ));
    }
    if s.store.admin(&approval.requested_by).await?.is_none() {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "{} who asked for {id} is no longer an administrator: the request cannot be approved",
                approval.requested_by
            ),
        ));
    }
    // Adding an operator: the approver vouches for the key being the
    // person's, so they must have it from the person (a requester could
    // otherwise add a name with a key of their own).
    if matches!(
        approval.action,
        ApprovalAction::AddOperator
            | ApprovalAction::AddSecurityAdmin
            | ApprovalAction::RegisterOfficer
    ) {
        let expected = expected_fingerprint(&approval).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::Conflict,
                format!("request {id} holds no valid key: it cannot be approved; ask again"),
            )
        })?;
        let given = req
            .key_fingerprint
            .as_deref()
            .map(|f| f.trim().to_ascii_lowercase());
        if given.as_deref() != Some(expected.as_str()) {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                format!(
                    "ask {} for the key fingerprint their '{}' printed, compare, then run: pouch admin approve {id} --fingerprint FINGERPRINT",
                    approval.admin_name.as_deref().unwrap_or("the new operator"),
                    if approval.action == ApprovalAction::RegisterOfficer {
                        "pouch security init"
                    } else {
                        "pouch admin init"
                    }
                ),
            ));
        }
    }
    if !s.store.approve(id, &by.name, now()).await? {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!("request {id} was approved already or has expired"),
        ));
    }
    let because = format!(
        "asked by {}, approved by {} (approval {id})",
        approval.requested_by, by.name
    );
    let damaged = || ServiceError::bad_request("the request is incomplete");
    let (detail, invite) = match approval.action {
        ApprovalAction::Reset => {
            let address = approval.address.clone().ok_or_else(damaged)?;
            let invite = super::admin::reset_account(s, by, address.clone(), &because).await?;
            (
                format!("every device of {address} revoked; a new invite issued"),
                Some(invite),
            )
        }
        ApprovalAction::Revoke => {
            let address = approval.address.clone().ok_or_else(damaged)?;
            let device = approval.device.clone().ok_or_else(damaged)?;
            let done = super::admin::revoke_device(s, by, address, device, &because).await?;
            (done.detail, None)
        }
        ApprovalAction::AddOperator | ApprovalAction::AddSecurityAdmin => {
            let name = approval.admin_name.clone().ok_or_else(damaged)?;
            let key = approval.admin_key.clone().ok_or_else(damaged)?;
            let role = if approval.action == ApprovalAction::AddOperator {
                AdminRole::Operator
            } else {
                AdminRole::Security
            };
            let added = insert(s, by, &name, role, key, Some((&approval.requested_by, id))).await?;
            (
                format!(
                    "added as {role}; their key fingerprint is {} (compare it with theirs)",
                    added.key_fingerprint
                ),
                None,
            )
        }
        ApprovalAction::RemoveOperator => {
            let name = approval.admin_name.clone().ok_or_else(damaged)?;
            delete_admin(s, by, &name, &format!(" ({because})")).await?;
            ("removed: their key no longer signs in".to_string(), None)
        }
        ApprovalAction::RegisterOfficer => {
            let card = approval.admin_key.as_deref().ok_or_else(damaged)?;
            let card = serde_json::from_slice(card).map_err(|_| damaged())?;
            let done = super::security::register_now(s, by, card, Some(&because)).await?;
            (
                match &done.replaced {
                    Some(old) => format!(
                        "security officer key {} registered, replacing {old}: every device refuses labelled mail until its user runs 'pouch security accept {}'",
                        done.fingerprint, done.fingerprint
                    ),
                    None => format!("security officer key {} registered", done.fingerprint),
                },
                None,
            )
        }
    };
    Ok(ApprovalDone {
        id: id.to_string(),
        action: approval.action,
        address: approval.address,
        admin: approval.admin_name,
        detail,
        invite,
    })
}

/// A consistent copy of the whole database, for an operator to keep
/// (`pouch admin backup`): staged in the data directory, opened, and
/// unlinked at once, so that it is gone however the download ends. Mail in
/// it is as encrypted as on the server; the key files (`log-wrap.key`,
/// `tls-*.pem`) are not in it, and are copied once by whoever installs the
/// server.
pub async fn backup(s: &AppState, by: &AdminCaller) -> Result<(tokio::fs::File, u64)> {
    let staged = s.data_dir.join(format!(
        "backup-{}.db.partial",
        hex::encode(random_bytes::<8>())
    ));
    let taken = s.store.snapshot_into(&staged).await;
    let opened = match taken {
        Ok(()) => tokio::fs::File::open(&staged).await,
        Err(e) => {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(e.into());
        }
    };
    let _ = tokio::fs::remove_file(&staged).await;
    let file = opened.map_err(|e| {
        tracing::error!(error = %e, "cannot read the staged backup");
        ServiceError::new(
            ErrorCode::Internal,
            "the backup could not be read back; see the server's log",
        )
    })?;
    let bytes = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    tracing::warn!(admin = %by.name, bytes, "ADMIN took a backup of the database");
    record(
        s,
        by.event(Action::AdminBackup)
            .amount(1, bytes)
            .detail(format!("{} MiB", bytes >> 20)),
    )
    .await;
    Ok((file, bytes))
}
