//! What every route module shares at the HTTP edge: who is asking (a
//! signed-in device, the service layer's [`Caller`], or the administrator)
//! and how large a request body may be. The route modules depend on this
//! one and on the service layer, not on each other (only `api.rs` names the
//! others, to assemble the router from their route tables).

use crate::service::Caller;
use crate::{AppState, error::ApiError, now, sha256};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts};
use pouch_proto::DeviceId;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The default body limit: enough for a commit and Welcome to a large
/// post-quantum group. Routes with smaller bodies set their own below.
pub(crate) const BODY_LIMIT: usize = 16 << 20;
/// An application message: an envelope of up to 256 KiB (larger mail goes
/// as a blob), base64 in JSON, in MLS; or one 1 MiB blob chunk.
pub(crate) const MESSAGE_LIMIT: usize = 2 << 20;
/// Enrollment and link requests: a device list and ~100 key packages.
pub(crate) const SMALL_LIMIT: usize = 1 << 20;
/// Sign-in, reports and the like.
pub(crate) const TINY_LIMIT: usize = 16 << 10;

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
