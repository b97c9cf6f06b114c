//! The HTTP routes of administrators: the first one's bootstrap, sign-in,
//! adding and removing administrators, and approvals (the two-person rule).
//! Each handler extracts, calls one operation of
//! [`crate::service::administrators`], and answers.

use crate::extract::{Admin, AnyAdmin, Approvers, Operators, RoleSet, TINY_LIMIT};
use crate::routes::{Access, Routes};
use crate::service::administrators;
use crate::{AppState, error::ApiError};
use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::routing::{delete, get, post};
use pouch_proto::api::*;
use std::net::SocketAddr;
use std::sync::Arc;

type St = State<Arc<AppState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/v1/admin/bootstrap",
            &[(Method::POST, Access::Public)],
            post(bootstrap).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/admin/auth/challenge",
            &[(Method::POST, Access::Public)],
            post(challenge).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/admin/auth/token",
            &[(Method::POST, Access::Public)],
            post(token).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/admin/admins",
            &[
                (Method::GET, Access::Admin(AnyAdmin::ROLES)),
                (Method::POST, Access::Admin(Operators::ROLES)),
            ],
            get(list).post(add).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/admin/admins/{name}",
            &[(Method::DELETE, Access::Admin(Operators::ROLES))],
            delete(remove),
        )
        .route(
            "/v1/admin/approvals",
            &[(Method::GET, Access::Admin(AnyAdmin::ROLES))],
            get(approvals),
        )
        .route(
            "/v1/admin/backup",
            &[(Method::POST, Access::Admin(Operators::ROLES))],
            post(backup),
        )
        .route(
            "/v1/admin/approvals/{id}",
            &[(Method::POST, Access::Admin(Approvers::ROLES))],
            post(approve).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
}

async fn bootstrap(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<BootstrapRequest>,
) -> ApiResult<AdminSummary> {
    Ok(Json(
        administrators::bootstrap(&s, Some(peer.ip()), req).await?,
    ))
}

async fn challenge(
    State(s): St,
    Json(req): Json<AdminChallengeRequest>,
) -> ApiResult<ChallengeResponse> {
    Ok(Json(administrators::challenge(&s, req).await?))
}

async fn token(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<AdminTokenRequest>,
) -> ApiResult<TokenResponse> {
    Ok(Json(
        administrators::sign_in(&s, Some(peer.ip()), req).await?,
    ))
}

async fn list(State(s): St, _: Admin<AnyAdmin>) -> ApiResult<Vec<AdminSummary>> {
    Ok(Json(administrators::list(&s).await?))
}

async fn add(
    State(s): St,
    by: Admin<Operators>,
    Json(req): Json<AddAdminRequest>,
) -> ApiResult<AddAdminResponse> {
    Ok(Json(administrators::add(&s, &by, req).await?))
}

async fn remove(
    State(s): St,
    by: Admin<Operators>,
    Path(name): Path<String>,
) -> ApiResult<RemoveAdminResponse> {
    Ok(Json(RemoveAdminResponse {
        pending: administrators::remove(&s, &by, &name).await?,
    }))
}

async fn approvals(State(s): St, _: Admin<AnyAdmin>) -> ApiResult<Vec<PendingApproval>> {
    Ok(Json(administrators::pending_approvals(&s).await?))
}

async fn approve(
    State(s): St,
    by: Admin<Approvers>,
    Path(id): Path<String>,
    Json(req): Json<ApproveRequest>,
) -> ApiResult<ApprovalDone> {
    Ok(Json(administrators::approve(&s, &by, &id, &req).await?))
}

/// The database as one SQLite file, streamed (it may be large).
async fn backup(State(s): St, by: Admin<Operators>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (file, bytes) = administrators::backup(&s, &by).await?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.sqlite3".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, bytes.to_string()),
        ],
        body,
    )
        .into_response())
}
