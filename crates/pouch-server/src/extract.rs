//! What every route module shares at the HTTP edge: who is asking (a
//! signed-in device, the service layer's [`Caller`], or the administrator)
//! and how large a request body may be. The route modules depend on this
//! one and on the service layer, not on each other (only `api.rs` names the
//! others, to assemble the router from their route tables).

use crate::service::Caller;
use crate::service::administrators::AdminCaller;
use crate::{AppState, error::ApiError, now, sha256};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts};
use pouch_proto::DeviceId;
use pouch_proto::api::AdminRole;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// Which administrators a route admits (see [`Admin`]).
pub trait RoleSet {
    const ROLES: &'static [AdminRole];
}

/// Operators only: changes to users, invites, devices, administrators.
pub struct Operators;
impl RoleSet for Operators {
    const ROLES: &'static [AdminRole] = &[AdminRole::Operator];
}

/// The security team and auditors: events and alerts.
pub struct SecurityTeam;
impl RoleSet for SecurityTeam {
    const ROLES: &'static [AdminRole] = &[AdminRole::Security, AdminRole::Auditor];
}

/// Security administrators only: registering the security officer's key.
pub struct SecurityAdmins;
impl RoleSet for SecurityAdmins {
    const ROLES: &'static [AdminRole] = &[AdminRole::Security];
}

/// Those who approve what another asked (the two-person rule): operators
/// for users, devices and operators, security administrators for the
/// security officer's key (each approval checks the role it needs).
pub struct Approvers;
impl RoleSet for Approvers {
    const ROLES: &'static [AdminRole] = &[AdminRole::Operator, AdminRole::Security];
}

/// Every administrator: reading accounts, administrators, approvals, metrics.
pub struct AnyAdmin;
impl RoleSet for AnyAdmin {
    const ROLES: &'static [AdminRole] =
        &[AdminRole::Operator, AdminRole::Security, AdminRole::Auditor];
}

/// A request by a signed-in administrator whose role is one of `R`'s. The
/// handler's signature says who may call it; the route table says the same
/// (`Access::Admin(R::ROLES)`), and the authorization-matrix test checks
/// that the two agree for every role.
pub struct Admin<R: RoleSet>(pub AdminCaller, std::marker::PhantomData<R>);

impl<R: RoleSet> std::ops::Deref for Admin<R> {
    type Target = AdminCaller;
    fn deref(&self) -> &AdminCaller {
        &self.0
    }
}

impl<R: RoleSet + Send + Sync> FromRequestParts<Arc<AppState>> for Admin<R> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("administrator sign-in required ('pouch admin init' first)")
        })?;
        let admin = state
            .store
            .admin_of_token(&sha256(token.trim().as_bytes()), now())
            .await?
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "administrator token unknown, expired or of a removed administrator; sign in again",
                )
            })?;
        if !R::ROLES.contains(&admin.role) {
            let allowed: Vec<&str> = R::ROLES.iter().map(|r| r.as_str()).collect();
            return Err(ApiError::forbidden(format!(
                "an administrator with the role {} may not do this (it needs: {})",
                admin.role,
                allowed.join(" or ")
            )));
        }
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(Admin(
            AdminCaller {
                name: admin.name,
                role: admin.role,
                source,
            },
            std::marker::PhantomData,
        ))
    }
}
