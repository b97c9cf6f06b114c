//! HTTP routes. Each handler validates its input at the edge, calls the store
//! once, and maps the outcome to a status and a JSON body.

use crate::extract::{
    Admin, AnyAdmin, AuthDevice, BODY_LIMIT, MESSAGE_LIMIT, Operators, RoleSet, SMALL_LIMIT,
    TINY_LIMIT,
};
use crate::routes::{Access, Routes};
use crate::service::{Caller, accounts, mail};
use crate::{AppState, error::ApiError, now, random_bytes};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pouch_proto::api::*;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

type St = State<Arc<AppState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The server's router, built from [`routes`] only.
pub fn router(state: Arc<AppState>) -> Router {
    routes()
        .into_router()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .with_state(state)
}

/// Counts each answered request by its route pattern and status (`/metrics`).
async fn count_request(
    State(s): St,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    s.metrics.count_request(&route, response.status().as_u16());
    response
}

/// Every route with who may call it (see `routes.rs`).
pub fn route_table() -> Vec<crate::routes::RouteSpec> {
    routes().specs().to_vec()
}

fn routes() -> Routes {
    Routes::new()
        .route("/v1/info", &[(Method::GET, Access::Public)], get(info))
        .route("/healthz", &[(Method::GET, Access::Public)], get(healthz))
        .route("/readyz", &[(Method::GET, Access::Public)], get(readyz))
        .route(
            "/metrics",
            &[(Method::GET, Access::Admin(AnyAdmin::ROLES))],
            get(metrics),
        )
        .route(
            "/v1/admin/users",
            &[
                (Method::POST, Access::Admin(Operators::ROLES)),
                (Method::GET, Access::Admin(AnyAdmin::ROLES)),
            ],
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
        .merge(crate::admins::routes())
        .merge(crate::labels::routes())
        .merge(crate::federation::admin_routes())
}

async fn info(State(s): St) -> Json<ServerInfo> {
    Json(ServerInfo {
        domain: s.domain.clone(),
        ciphersuite: s.ciphersuite,
        version: env!("CARGO_PKG_VERSION").into(),
        commit: crate::BUILD_COMMIT.into(),
        rotation_secs: s.rotation_secs,
        log_origin: s.log.origin.clone(),
        log_key: s.log.key.verifier_key.clone(),
        witnesses: s.log.witness_keys(),
        federation_witness: s.federation.as_ref().map(|f| f.witness.verifier_key()),
    })
}

/// The process is up and answering (a load balancer's liveness probe).
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready for traffic: the database answers (its migrations ran before the
/// server started listening). 503 with the reason otherwise; the detail
/// goes to the log, not to whoever asks.
async fn readyz(State(s): St) -> (axum::http::StatusCode, &'static str) {
    match s.store.log_size().await {
        Ok(_) => (axum::http::StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: the database does not answer");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer; see the server's log\n",
            )
        }
    }
}

/// Prometheus metrics, for any administrator (a scraper signs in as one, e.g. an auditor).
async fn metrics(
    State(s): St,
    _: Admin<AnyAdmin>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    // A checkpoint that cannot be opened is itself what an operator must
    // see: every witness shows as not cosigned, the rest is still served.
    let (checkpoint_size, witnesses) = match crate::service::log::witness_status(&s).await {
        Ok(status) => status,
        Err(_) => (
            0,
            crate::service::log::witness_names(&s)
                .into_iter()
                .map(|n| (n, None))
                .collect(),
        ),
    };
    let gauges = crate::metrics::Gauges {
        log_size: s.store.log_size().await?,
        events_lost: s.events_lost.load(std::sync::atomic::Ordering::Relaxed),
        bridge_sessions: s.waiters.count(),
        queue: s.store.queue_depth().await?,
        now: crate::now(),
        checkpoint_size,
        witnesses,
        peers: match &s.federation {
            Some(f) => f.status(&s.domain, s.store.as_ref()).await?.peers,
            None => Vec::new(),
        },
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(&gauges),
    ))
}

async fn add_user(
    State(s): St,
    by: Admin<Operators>,
    Json(req): Json<AddUserRequest>,
) -> ApiResult<AddUserResponse> {
    Ok(Json(accounts::add_user(&s, &by, req).await?))
}

async fn list_users(State(s): St, _: Admin<AnyAdmin>) -> ApiResult<Vec<UserSummary>> {
    Ok(Json(accounts::list_users(&s).await?))
}

async fn enroll(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<EnrollRequest>,
) -> ApiResult<EnrollResponse> {
    Ok(Json(accounts::enroll(&s, Some(peer.ip()), req).await?))
}

async fn challenge(
    State(s): St,
    Json(req): Json<ChallengeRequest>,
) -> ApiResult<ChallengeResponse> {
    Ok(Json(accounts::challenge(&s, req).await?))
}

async fn token(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<TokenResponse> {
    Ok(Json(accounts::sign_in(&s, Some(peer.ip()), req).await?))
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
    Ok(Json(mail::send(&s, &caller, &group_id, &req).await?))
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
    let (items, more) = mail::fetch(&s, &caller, q.after, q.limit).await?;
    Ok(Json(QueueResponse {
        items,
        more: Some(more),
    }))
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
