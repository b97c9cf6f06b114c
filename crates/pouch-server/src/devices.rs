//! The HTTP routes of device lists, linking and revocation: each handler
//! extracts, calls one operation of the service layer
//! (`service::{directory, devices, links, admin}`), and answers.
//!
//! The server keeps and serves each account's signed device lists, and it
//! refuses a list that does not continue the chain (next version, previous
//! hash, same account key, valid signature) — but its checks are only a
//! convenience: every client verifies the lists itself, so a server that
//! skipped them would be caught. What the server alone decides is who may
//! *talk* to it: a device is active only once a validly signed list names it,
//! or an invite enrolled it as an account's first device.

use crate::extract::{Admin, AnyAdmin, AuthDevice, Operators, RoleSet};
use crate::routes::{Access, Routes};
use crate::service::{Caller, admin, administrators, devices, directory, links};
use crate::{AppState, error::ApiError};
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use pouch_proto::api::*;
use pouch_proto::{Address, DeviceId};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;

type St = State<Arc<AppState>>;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/v1/device-lists/{address}",
            &[(Method::GET, Access::DeviceOrInvite)],
            get(device_lists),
        )
        .route(
            "/v1/directory/lists",
            &[(Method::POST, Access::Device)],
            // 1,001 addresses of at most 254 bytes fit in 1 MiB.
            post(directory_lists).layer(DefaultBodyLimit::max(crate::extract::SMALL_LIMIT)),
        )
        .route(
            "/v1/device-lists",
            &[(Method::POST, Access::Device)],
            post(publish).layer(DefaultBodyLimit::max(256 << 10)),
        )
        .route(
            "/v1/devices",
            &[(Method::GET, Access::Device)],
            get(own_devices),
        )
        .route(
            "/v1/link",
            &[(Method::POST, Access::Public)],
            post(create_link).layer(DefaultBodyLimit::max(crate::extract::SMALL_LIMIT)),
        )
        .route(
            "/v1/link/status",
            &[(Method::POST, Access::Public)],
            post(link_status).layer(DefaultBodyLimit::max(crate::extract::TINY_LIMIT)),
        )
        .route(
            "/v1/link/{code}",
            &[(Method::GET, Access::Device)],
            get(link_info),
        )
        .route(
            "/v1/link/{code}/deny",
            &[(Method::POST, Access::Device)],
            post(deny_link),
        )
        .route(
            "/v1/admin/users/{address}/reset",
            &[(Method::POST, Access::Admin(Operators::ROLES))],
            post(admin_reset),
        )
        .route(
            "/v1/admin/devices/{address}/{device}/revoke",
            &[(Method::POST, Access::Admin(Operators::ROLES))],
            post(admin_revoke),
        )
        .route(
            "/v1/admin/devices/stale",
            &[(Method::GET, Access::Admin(AnyAdmin::ROLES))],
            get(admin_stale),
        )
}

async fn device_lists(
    State(s): St,
    Path(address): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<DeviceListHistory>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let invite = headers
        .get(pouch_proto::api::INVITE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok());
    let token = crate::extract::bearer_of(&headers);
    Ok(Json(directory::history(&s, address, token, invite).await?))
}

/// Many accounts' device lists at once, each with the inclusion proof of its
/// newest version against one checkpoint (see `DirectoryRequest`).
async fn directory_lists(
    State(s): St,
    caller: Caller,
    Json(req): Json<DirectoryRequest>,
) -> Result<Json<DirectoryResponse>, ApiError> {
    Ok(Json(directory::lookup_for(&s, &caller, req).await?))
}

async fn caller(s: &AppState, d: &DeviceId) -> Result<pouch_store::Device, ApiError> {
    s.store
        .device(d)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown device"))
}

async fn own_devices(
    State(s): St,
    AuthDevice(d): AuthDevice,
) -> Result<Json<Vec<RegisteredDevice>>, ApiError> {
    let me = caller(&s, &d).await?;
    let devices = s
        .store
        .devices_of(&me.address)
        .await?
        .into_iter()
        .map(|d| RegisteredDevice {
            device_id: d.device_id,
            name: d.name,
            signature_key: d.signature_key,
            created_at: d.created_at,
            approved_at: d.approved_at,
            revoked_at: d.revoked_at,
            revoked_by: d.revoked_by,
        })
        .collect();
    Ok(Json(devices))
}

/// A new version of the caller's own device list: approves listed pending
/// devices and revokes active ones it leaves out.
async fn publish(
    State(s): St,
    caller: Caller,
    Json(req): Json<PublishDeviceList>,
) -> Result<StatusCode, ApiError> {
    devices::publish_list(&s, &caller, req.list).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_link(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LinkRequestBody>,
) -> Result<Json<LinkCreated>, ApiError> {
    Ok(Json(links::request(&s, peer.ip(), req).await?))
}

async fn link_status(State(s): St, Json(req): Json<LinkPoll>) -> Result<Json<LinkInfo>, ApiError> {
    Ok(Json(links::status(&s, &req.poll_secret).await?))
}

async fn link_info(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path(code): Path<String>,
) -> Result<Json<LinkInfo>, ApiError> {
    Ok(Json(links::show(&s, &d, &code).await?))
}

async fn deny_link(
    State(s): St,
    AuthDevice(d): AuthDevice,
    Path(code): Path<String>,
) -> Result<Json<LinkInfo>, ApiError> {
    Ok(Json(links::deny(&s, &d, &code).await?))
}

/// A reset waits for a second administrator (202 with the request).
async fn admin_reset(
    State(s): St,
    by: Admin<Operators>,
    Path(address): Path<String>,
) -> Result<(StatusCode, Json<PendingApproval>), ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let pending = administrators::request(&s, &by, ApprovalAction::Reset, address, None).await?;
    Ok((StatusCode::ACCEPTED, Json(pending)))
}

/// An administrator's revocation waits for a second administrator (202).
async fn admin_revoke(
    State(s): St,
    by: Admin<Operators>,
    Path((address, device)): Path<(String, String)>,
) -> Result<(StatusCode, Json<PendingApproval>), ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let pending = administrators::request(
        &s,
        &by,
        ApprovalAction::Revoke,
        address,
        Some(DeviceId(device)),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(pending)))
}

async fn admin_stale(State(s): St, _: Admin<AnyAdmin>) -> Result<Json<Vec<StaleDevice>>, ApiError> {
    Ok(Json(admin::stale_devices(&s).await?))
}
