//! The transparency log over HTTP: C2SP `tlog-tiles` (`/checkpoint`,
//! `/tile/…`) for any auditor, and Pouch's proof endpoints for clients.
//! Each handler calls one operation of `service::log`.

use crate::AppState;
use crate::error::ApiError;
use crate::routes::{Access, Routes};
use crate::service::log as service;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use pouch_proto::Address;
use pouch_proto::api::*;
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/checkpoint",
            &[(Method::GET, Access::Public)],
            get(checkpoint),
        )
        .route("/tile/{*path}", &[(Method::GET, Access::Public)], get(tile))
        .route(
            "/v1/log/inclusion",
            &[(Method::GET, Access::Device)],
            get(inclusion),
        )
        .route(
            "/v1/log/consistency",
            &[(Method::GET, Access::Public)],
            get(consistency),
        )
        .route(
            "/v1/log/entries/{address}",
            &[(Method::GET, Access::Device)],
            get(entries_of),
        )
        .route(
            "/v1/log/commitment-key",
            &[(Method::GET, Access::Device)],
            get(commitment_key),
        )
}

async fn checkpoint(State(s): St) -> Result<impl IntoResponse, ApiError> {
    let note = service::checkpoint_note(&s).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note))
}

async fn tile(State(s): St, Path(path): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let body = service::tile(&s, &path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body))
}

#[derive(Deserialize)]
struct InclusionQuery {
    address: String,
    version: u64,
}

async fn inclusion(
    State(s): St,
    _: crate::extract::AuthDevice,
    Query(q): Query<InclusionQuery>,
) -> Result<Json<LogInclusion>, ApiError> {
    let address = Address::parse(&q.address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(service::inclusion(&s, &address, q.version).await?))
}

async fn commitment_key(
    State(s): St,
    _: crate::extract::AuthDevice,
) -> Result<Json<LogCommitmentKey>, ApiError> {
    Ok(Json(service::commitment_key(&s).await?))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(s): St,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<LogConsistency>, ApiError> {
    Ok(Json(service::consistency(&s, q.from, q.to).await?))
}

async fn entries_of(
    State(s): St,
    _: crate::extract::AuthDevice,
    Path(address): Path<String>,
) -> Result<Json<LogEntries>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(service::entries_of(&s, &address).await?))
}
