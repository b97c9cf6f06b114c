//! Access events over HTTP: users see their account's events (`pouch
//! activity`) and alerts; the security team exports them all; devices
//! report what only they can see. Recording is the service layer's
//! ([`crate::service::audit`], re-exported here).

use crate::extract::{Admin, AuthDevice, RoleSet, SecurityTeam};
use crate::routes::{Access, Routes};
pub use crate::service::audit::{Ev, account_of, record, settled};
use crate::{AppState, error::ApiError};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::get;
use pouch_proto::api::{Alert, Event};
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/v1/activity",
            &[(Method::GET, Access::Device)],
            get(activity),
        )
        .route(
            "/v1/admin/events",
            &[(Method::GET, Access::Admin(SecurityTeam::ROLES))],
            get(admin_events),
        )
        .route(
            "/v1/alerts",
            &[(Method::GET, Access::Device)],
            get(own_alerts),
        )
        .route(
            "/v1/reports",
            &[(Method::POST, Access::Device)],
            axum::routing::post(client_report).layer(axum::extract::DefaultBodyLimit::max(
                crate::extract::TINY_LIMIT,
            )),
        )
        .route(
            "/v1/admin/alerts",
            &[(Method::GET, Access::Admin(SecurityTeam::ROLES))],
            get(admin_alerts),
        )
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

/// The caller's own account's events, newest 500 after `after`.
async fn activity(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Query(p): Query<Page>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let me = account_of(&s, &d)
        .await
        .ok_or_else(|| ApiError::unauthorized("unknown device"))?;
    Ok(Json(
        s.store
            .events(p.after, Some(&me), p.limit.unwrap_or(500).min(5000))
            .await?,
    ))
}

/// Every event after `after` (the security team's export).
async fn admin_events(
    State(s): St,
    _: Admin<SecurityTeam>,
    Query(p): Query<Page>,
) -> Result<Json<Vec<Event>>, ApiError> {
    Ok(Json(
        s.store
            .events(p.after, None, p.limit.unwrap_or(1000).min(10_000))
            .await?,
    ))
}

/// Alerts about the caller's own account.
async fn own_alerts(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Query(p): Query<Page>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let me = account_of(&s, &d)
        .await
        .ok_or_else(|| ApiError::unauthorized("unknown device"))?;
    // Not settled first (unlike the security team's list): a device asks on
    // every full sync, and under load the rules may run seconds behind the
    // appends; what they raise reaches the device at its next sync.
    Ok(Json(s.store.alerts(p.after, Some(&me)).await?))
}

/// Every alert after `after` (the security team's stream).
async fn admin_alerts(
    State(s): St,
    _: Admin<SecurityTeam>,
    Query(p): Query<Page>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    settled(&s).await;
    Ok(Json(s.store.alerts(p.after, None).await?))
}

/// A device reports what only it can see; recorded as an event, which the rules turn into an alert.
async fn client_report(
    State(s): St,
    AuthDevice(d): AuthDevice,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Json(r): Json<pouch_proto::api::ClientReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    let Some(action) = r.kind.action() else {
        return Err(ApiError::bad_request("unknown report"));
    };
    if r.detail.len() > 500 {
        return Err(ApiError::bad_request(
            "a report's detail is longer than 500 bytes; shorten it",
        ));
    }
    let me = account_of(&s, &d)
        .await
        .ok_or_else(|| ApiError::unauthorized("unknown device"))?;
    record(
        &s,
        Ev::new(action)
            .account(&me)
            .device(&d)
            .source(peer.ip())
            .detail(r.detail),
    )
    .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
