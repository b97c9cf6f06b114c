//! HTTP routes. Each handler validates its input at the edge, calls the store
//! once, and maps the outcome to a status and a JSON body.

use crate::routes::{Access, Routes};
use crate::service::audit::{Ev, record};
use crate::service::{Caller, mail};
use crate::{AppState, INVITE_TTL_SECS, error::ApiError, now, random_bytes, sha256};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::Method;
use axum::http::{StatusCode, header, request::Parts};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use pouch_proto::DeviceId;
use pouch_proto::api::*;
use pouch_proto::security::{Action, Reason};
use pouch_store::NewDevice;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

type St = State<Arc<AppState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The default body limit: enough for a commit and Welcome to a large
/// post-quantum group. Routes with smaller bodies set their own below.
const BODY_LIMIT: usize = 16 << 20;
/// An application message: an envelope of up to 256 KiB (larger mail goes
/// as a blob), base64 in JSON, in MLS; or one 1 MiB blob chunk.
pub(crate) const MESSAGE_LIMIT: usize = 2 << 20;
/// Enrollment and link requests: a device list and ~100 key packages.
pub(crate) const SMALL_LIMIT: usize = 1 << 20;
/// Sign-in, reports and the like.
pub(crate) const TINY_LIMIT: usize = 16 << 10;
const CHALLENGE_TTL_SECS: i64 = 60;
use crate::service::mail::MAX_KEY_PACKAGES_PER_UPLOAD;

/// The server's router, built from [`routes`] only.
pub fn router(state: Arc<AppState>) -> Router {
    routes()
        .into_router()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Every route with who may call it (see `routes.rs`).
pub fn route_table() -> Vec<crate::routes::RouteSpec> {
    routes().specs().to_vec()
}

fn routes() -> Routes {
    Routes::new()
        .route("/v1/info", &[(Method::GET, Access::Public)], get(info))
        .route(
            "/v1/admin/users",
            &[(Method::POST, Access::Admin), (Method::GET, Access::Admin)],
            post(add_user).get(list_users),
        )
        .route(
            "/v1/enroll",
            &[(Method::POST, Access::Public)],
            post(enroll).layer(DefaultBodyLimit::max(SMALL_LIMIT)),
        )
        .route(
            "/v1/auth/challenge",
            &[(Method::POST, Access::Public)],
            post(challenge).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/auth/token",
            &[(Method::POST, Access::Public)],
            post(token).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/key-packages",
            &[(Method::POST, Access::Device)],
            post(upload_key_packages).layer(DefaultBodyLimit::max(4 << 20)),
        )
        .route(
            "/v1/key-packages/count",
            &[(Method::GET, Access::Device)],
            get(count_key_packages),
        )
        .route(
            "/v1/key-packages/claim",
            &[(Method::POST, Access::Device)],
            // 1,001 addresses of at most 254 bytes fit in 1 MiB.
            post(claim_key_packages).layer(DefaultBodyLimit::max(SMALL_LIMIT)),
        )
        .route(
            "/v1/groups/{group}/commits",
            &[(Method::POST, Access::Device)],
            post(commit),
        )
        .route(
            "/v1/groups/{group}/members",
            &[(Method::GET, Access::Device)],
            get(group_members),
        )
        .route(
            "/v1/groups/{group}/messages",
            &[(Method::POST, Access::Device)],
            post(send_message).layer(DefaultBodyLimit::max(MESSAGE_LIMIT)),
        )
        .route(
            "/v1/queue",
            &[(Method::GET, Access::Device)],
            get(fetch_queue),
        )
        .route(
            "/v1/queue/wait",
            &[(Method::GET, Access::Device)],
            get(wait_queue),
        )
        .route(
            "/v1/queue/ack",
            &[(Method::POST, Access::Device)],
            post(ack_queue),
        )
        .route(
            "/v1/blobs",
            &[(Method::POST, Access::Device)],
            post(create_blob),
        )
        .route(
            "/v1/blobs/{blob}/finish",
            &[(Method::POST, Access::Device)],
            post(finish_blob),
        )
        .route(
            "/v1/blobs/{blob}/{index}",
            &[(Method::PUT, Access::Device), (Method::GET, Access::Device)],
            put(put_blob_chunk)
                .layer(DefaultBodyLimit::max(MESSAGE_LIMIT))
                .get(get_blob_chunk),
        )
        .merge(crate::devices::routes())
        .merge(crate::log::routes())
        .merge(crate::events::routes())
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

pub(crate) fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A request made by an enrolled, unrevoked device with a valid token.
pub struct AuthDevice(pub DeviceId);

impl FromRequestParts<Arc<AppState>> for AuthDevice {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("sign in first (missing device token)"))?;
        let device = state
            .store
            .token_device(&sha256(token.as_bytes()), now())
            .await?
            .ok_or_else(|| {
                ApiError::unauthorized("device token unknown, expired or revoked; sign in again")
            })?;
        Ok(AuthDevice(device))
    }
}

/// The service layer's caller: the authenticated device and its address.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let AuthDevice(device) = AuthDevice::from_request_parts(parts, state).await?;
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(Caller::new(device, source))
    }
}

/// A request bearing the administrator token.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("administrator token required"))?;
        let presented = sha256(token.trim().as_bytes());
        if bool::from(presented.ct_eq(&state.admin_token_sha256)) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("wrong administrator token"))
        }
    }
}

async fn info(State(s): St) -> Json<ServerInfo> {
    Json(ServerInfo {
        domain: s.domain.clone(),
        ciphersuite: s.ciphersuite,
        version: env!("CARGO_PKG_VERSION").into(),
        rotation_secs: s.rotation_secs,
        log_origin: s.log.origin.clone(),
        log_key: s.log.key.verifier_key.clone(),
        witnesses: s.log.witness_keys(),
    })
}

async fn add_user(
    State(s): St,
    _: Admin,
    Json(req): Json<AddUserRequest>,
) -> ApiResult<AddUserResponse> {
    if req.address.domain() != s.domain {
        return Err(ApiError::bad_request(format!(
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
            if s.store
                .devices_of(&req.address)
                .await?
                .iter()
                .any(|d| d.is_active())
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
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
    Ok(Json(
        issue_invite(&s, req.address, req.invite_ttl_secs).await?,
    ))
}

/// A fresh single-use invite; the store keeps only the secret's hash.
pub(crate) async fn issue_invite(
    s: &AppState,
    address: pouch_proto::Address,
    ttl: Option<u64>,
) -> Result<AddUserResponse, ApiError> {
    let secret = random_bytes::<32>();
    let expires_at = now() + ttl.unwrap_or(INVITE_TTL_SECS).min(30 * 24 * 3600) as i64;
    s.store
        .create_invite(&address, &sha256(&secret), expires_at)
        .await?;
    tracing::info!(%address, "invite issued");
    record(s, Ev::new(Action::AdminInvite).account(&address)).await;
    Ok(AddUserResponse {
        address,
        invite_secret: secret.to_vec(),
        expires_at,
    })
}

async fn list_users(State(s): St, _: Admin) -> ApiResult<Vec<UserSummary>> {
    Ok(Json(s.store.list_users().await?))
}

async fn enroll(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<EnrollRequest>,
) -> ApiResult<EnrollResponse> {
    if VerifyingKey::try_from(req.signature_key.as_slice()).is_err() {
        return Err(ApiError::bad_request(
            "the device key is not an Ed25519 public key",
        ));
    }
    if req.key_packages.is_empty() || req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::bad_request("enroll with 1 to 500 key packages"));
    }
    let name = req.device_name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad_request(
            "the device name must be 1 to 100 characters",
        ));
    }
    let list = crate::devices::check_first_list(
        &s,
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
        device_list: Some((list, crate::devices::log_record(&s, &req.device_list)?)),
    };
    let result = s
        .store
        .enroll(&sha256(&req.invite_secret), device, now())
        .await;
    match &result {
        Ok(d) => {
            tracing::info!(address = %d.address, device = %d.device_id, %peer, "device enrolled");
            let after_reset = s.store.reset_at(&d.address).await.ok().flatten().is_some();
            record(
                &s,
                Ev::new(Action::Enroll)
                    .account(&d.address)
                    .device(&d.device_id)
                    .source(peer.ip())
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
            tracing::warn!(address = %req.address, %peer, reason = %e, "enrollment refused");
            record(
                &s,
                Ev::new(Action::Enroll)
                    .account(&req.address)
                    .source(peer.ip())
                    .failed(enroll_refusal(e), e),
            )
            .await;
        }
    }
    let device = result?;
    crate::log::refresh_checkpoint(&s).await?;
    Ok(Json(EnrollResponse {
        device_id: device.device_id,
        ciphersuite: s.ciphersuite,
    }))
}

async fn challenge(
    State(s): St,
    Json(req): Json<ChallengeRequest>,
) -> ApiResult<ChallengeResponse> {
    // Unknown devices get a challenge too, so the answer does not reveal which ids exist.
    let challenge = random_bytes::<32>();
    s.store
        .put_challenge(&challenge, &req.device_id, now() + CHALLENGE_TTL_SECS)
        .await?;
    Ok(Json(ChallengeResponse {
        challenge: challenge.to_vec(),
    }))
}

async fn token(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<TokenResponse> {
    let refused = || {
        ApiError::unauthorized(
            "device sign-in failed: unknown or revoked device, or a bad signature",
        )
    };
    let issued_to = s.store.take_challenge(&req.challenge, now()).await?;
    let failed = |reason: Reason, why: &str| {
        Ev::new(Action::SignIn)
            .device(&req.device_id)
            .source(peer.ip())
            .failed(reason, why)
    };
    if issued_to.as_ref() != Some(&req.device_id) {
        record(
            &s,
            failed(Reason::ChallengeUnknown, "unknown or expired challenge"),
        )
        .await;
        return Err(refused());
    }
    let Some(device) = s.store.device(&req.device_id).await? else {
        record(&s, failed(Reason::DeviceUnknown, "unknown device")).await;
        return Err(refused());
    };
    if !device.is_active() {
        tracing::warn!(device = %device.device_id, %peer, revoked_by = ?device.revoked_by, "inactive device tried to sign in");
        record(
            &s,
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
            tracing::warn!(device = %device.device_id, %peer, "bad sign-in signature");
            refused()
        });
    if let Err(e) = key {
        record(
            &s,
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
        &s,
        Ev::new(Action::SignIn)
            .account(&device.address)
            .device(&device.device_id)
            .source(peer.ip()),
    )
    .await;
    Ok(Json(TokenResponse {
        token,
        expires_in_secs: s.token_ttl_secs,
    }))
}

async fn upload_key_packages(
    State(s): St,
    caller: Caller,
    Json(req): Json<UploadKeyPackages>,
) -> ApiResult<KeyPackageCount> {
    let available = mail::upload_key_packages(
        &s,
        &caller,
        &req.key_packages,
        req.last_resort.as_deref(),
        req.replace_pool,
    )
    .await?;
    Ok(Json(KeyPackageCount { available }))
}

async fn count_key_packages(State(s): St, caller: Caller) -> ApiResult<KeyPackageCount> {
    Ok(Json(KeyPackageCount {
        available: mail::count_key_packages(&s, &caller).await?,
    }))
}

async fn claim_key_packages(
    State(s): St,
    caller: Caller,
    Json(req): Json<ClaimRequest>,
) -> ApiResult<ClaimResponse> {
    let devices = mail::claim(&s, &caller, &req.addresses, &req.only).await?;
    Ok(Json(ClaimResponse { devices }))
}

async fn commit(
    State(s): St,
    caller: Caller,
    Path(group): Path<String>,
    Json(req): Json<CommitRequest>,
) -> ApiResult<CommitResponse> {
    let group_id = mail::group_id(group)?;
    let epoch = mail::commit(&s, &caller, &group_id, req).await?;
    Ok(Json(CommitResponse { epoch }))
}

/// Why an enrollment was refused, for the rules.
fn enroll_refusal(e: &pouch_store::EnrollError) -> Reason {
    use pouch_store::{EnrollError, InviteRejection};
    match e {
        EnrollError::Invite(InviteRejection::Unknown) => Reason::InviteUnknown,
        EnrollError::Invite(InviteRejection::Used) => Reason::InviteUsed,
        EnrollError::Invite(InviteRejection::Expired) => Reason::InviteExpired,
        EnrollError::Store(_) => Reason::ServerFailure,
    }
}

/// The devices the server fans a conversation out to (members only).
async fn group_members(
    State(s): St,
    caller: Caller,
    Path(group): Path<String>,
) -> ApiResult<pouch_proto::api::GroupMembers> {
    let group_id = mail::group_id(group)?;
    Ok(Json(mail::members(&s, &caller, &group_id).await?))
}

async fn send_message(
    State(s): St,
    caller: Caller,
    Path(group): Path<String>,
    Json(req): Json<SendRequest>,
) -> ApiResult<SendResponse> {
    let group_id = mail::group_id(group)?;
    let recipients = mail::send(&s, &caller, &group_id, &req).await?;
    Ok(Json(SendResponse { recipients }))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    after: u64,
    secs: Option<u64>,
}

/// A long-poll: answers `{"pending": true}` as soon as the device's queue
/// holds something after `after`, or `false` after `secs` (at most 25).
async fn wait_queue(
    State(s): St,
    caller: Caller,
    Query(q): Query<WaitQuery>,
) -> ApiResult<serde_json::Value> {
    let wait = std::time::Duration::from_secs(q.secs.unwrap_or(25));
    let pending = mail::wait(&s, &caller, q.after, wait).await?;
    Ok(Json(serde_json::json!({ "pending": pending })))
}

#[derive(Deserialize)]
struct QueueQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

async fn fetch_queue(
    State(s): St,
    caller: Caller,
    Query(q): Query<QueueQuery>,
) -> ApiResult<QueueResponse> {
    let items = mail::fetch(&s, &caller, q.after, q.limit).await?;
    Ok(Json(QueueResponse { items }))
}

async fn ack_queue(
    State(s): St,
    caller: Caller,
    Json(req): Json<AckRequest>,
) -> ApiResult<serde_json::Value> {
    let removed = mail::ack(&s, &caller, req.up_to).await?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

fn blob_id(raw: &str) -> Result<&str, ApiError> {
    Ok(mail::blob_id(raw)?)
}

async fn create_blob(State(s): St, AuthDevice(d): AuthDevice) -> ApiResult<BlobCreated> {
    let blob_id = hex::encode(random_bytes::<16>());
    s.store.create_blob(&blob_id, &d, now()).await?;
    Ok(Json(BlobCreated { blob_id }))
}

async fn put_blob_chunk(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path((blob, index)): Path<(String, u32)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if body.len() > MAX_BLOB_CHUNK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            "blob chunk too large",
        ));
    }
    s.store
        .put_blob_chunk(blob_id(&blob)?, &d, index, &body, s.limits.blob_bytes)
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::NotFound => {
                ApiError::not_found("no open blob with that id belongs to this device")
            }
            pouch_store::StoreError::QuotaExceeded => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                format!(
                    "this device's attachments waiting on the server passed its quota of {} MiB; wait until recipients have fetched earlier mail",
                    s.limits.blob_bytes >> 20
                ),
            ),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn finish_blob(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path(blob): Path<String>,
    Json(req): Json<BlobFinish>,
) -> Result<StatusCode, ApiError> {
    s.store
        .finish_blob(blob_id(&blob)?, &d, req.chunks, req.size)
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::NotFound => {
                ApiError::bad_request("the blob is not complete: upload every chunk, then finish")
            }
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_blob_chunk(
    State(s): St,
    _: AuthDevice,
    Path((blob, index)): Path<(String, u32)>,
) -> Result<Bytes, ApiError> {
    let data = s
        .store
        .blob_chunk(blob_id(&blob)?, index)
        .await?
        .ok_or_else(|| ApiError::not_found("no such blob chunk"))?;
    Ok(Bytes::from(data))
}
