//! The HTTP routes of classification labels: a security administrator
//! registers the security officer's key; devices hand in the officer's
//! signed statements and fetch the newest one about a subject with its
//! log proof. Each handler calls one operation of
//! [`crate::service::security`].

use crate::extract::{Admin, AuthDevice, RoleSet, SecurityAdmins, TINY_LIMIT};
use crate::routes::{Access, Routes};
use crate::service::{Caller, security};
use crate::{AppState, error::ApiError};
use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::routing::{get, post};
use pouch_proto::api::*;
use std::sync::Arc;

type St = State<Arc<AppState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// A statement's largest body (a policy file of a few KiB, with margin),
/// as JSON with its signature.
const STATEMENT_LIMIT: usize = pouch_label::statement::MAX_STATEMENT_BYTES + 4096;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/v1/admin/security-officer",
            &[(Method::POST, Access::Admin(SecurityAdmins::ROLES))],
            post(register_officer).layer(DefaultBodyLimit::max(TINY_LIMIT)),
        )
        .route(
            "/v1/security/statements",
            &[(Method::POST, Access::Device)],
            post(publish).layer(DefaultBodyLimit::max(STATEMENT_LIMIT)),
        )
        .route(
            "/v1/security/statements/{subject}",
            &[(Method::GET, Access::Device)],
            get(statement),
        )
}

async fn register_officer(
    State(s): St,
    by: Admin<SecurityAdmins>,
    Json(req): Json<RegisterOfficerRequest>,
) -> Result<(axum::http::StatusCode, Json<RegisterOfficerResponse>), ApiError> {
    let done = security::register_officer(&s, &by, req.card).await?;
    let status = if done.pending.is_some() {
        axum::http::StatusCode::ACCEPTED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(done)))
}

async fn publish(
    State(s): St,
    caller: Caller,
    Json(req): Json<PublishStatementRequest>,
) -> ApiResult<StatementPublished> {
    Ok(Json(security::publish(&s, &caller, req.statement).await?))
}

async fn statement(
    State(s): St,
    _: AuthDevice,
    Path(subject): Path<String>,
) -> ApiResult<LogInclusion> {
    if subject.len() > 320 {
        return Err(ApiError::bad_request("no such subject"));
    }
    Ok(Json(
        security::statement(&s, &subject.to_ascii_lowercase()).await?,
    ))
}
