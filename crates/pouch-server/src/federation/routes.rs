//! The federation listener's routes: what a peer may ask of this server.
//! Every request arrives with its [`PeerIdentity`] (mutual TLS); every
//! request is an access event.

use super::peer_tls::PeerIdentity;
use crate::AppState;
use crate::service::audit::{Ev, record};
use crate::witness::Decision;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pouch_proto::api::FederationHello;
use pouch_proto::security::{Action, Reason};
use std::net::SocketAddr;
use std::sync::Arc;

/// The most a peer's request body may hold (a checkpoint with its
/// consistency proof is a few kilobytes).
const BODY_MAX: usize = 64 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/federation/v1/hello", get(hello))
        .route(
            "/federation/v1/witness/add-checkpoint",
            post(add_checkpoint),
        )
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .with_state(state)
}

/// Who this server is and who it sees: a peer checks the connection.
async fn hello(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
) -> Json<FederationHello> {
    Json(FederationHello {
        domain: s.domain.clone(),
        peer: peer.0.domain.clone(),
    })
}

/// The peer asks this server's witness to cosign its log's checkpoint
/// (C2SP tlog-witness `add-checkpoint`, its own log only).
async fn add_checkpoint(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let Some(fed) = &s.federation else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let peer = &peer.0;
    let (response, decision) = fed
        .witness
        .add_checkpoint(&body, Some(&peer.log_origin))
        .await;
    let ev = Ev::new(Action::PeerCheckpoint).source(from.ip());
    match decision {
        Decision::Cosigned { origin, size } => {
            record(
                &s,
                ev.detail(format!(
                    "peer {}: cosigned {origin} at size {size}",
                    peer.domain
                )),
            )
            .await
        }
        Decision::Misbehaved { origin, why } => {
            record(
                &s,
                ev.failed(
                    Reason::PeerLogMisbehaved,
                    format!(
                        "peer {} showed this server's witness a log {origin} it cannot have: {why}",
                        peer.domain
                    ),
                ),
            )
            .await
        }
        // A size the peer corrects (409) is the protocol; anything else
        // refused is a peer asking for what it may not.
        Decision::Other if response.status() == StatusCode::CONFLICT => {}
        Decision::Other => {
            record(
                &s,
                ev.failed(
                    Reason::PeerRequestRefused,
                    format!(
                        "peer {}: add-checkpoint refused ({})",
                        peer.domain,
                        response.status()
                    ),
                ),
            )
            .await
        }
    }
    response
}

/// The administrators' federation routes, on the devices' listener.
pub fn admin_routes() -> crate::routes::Routes {
    use crate::extract::{Admin, Operators, RoleSet};
    use crate::routes::Access;
    async fn card(
        State(s): State<Arc<AppState>>,
        _by: Admin<Operators>,
    ) -> Result<Json<pouch_proto::api::FederationCard>, crate::error::ApiError> {
        match &s.federation {
            Some(fed) => Ok(Json(fed.card.clone())),
            None => Err(crate::service::ServiceError::new(
                pouch_proto::api::ErrorCode::NotFound,
                "this server does not federate: set [federation] listen = \"HOST:PORT\" in pouch.toml and restart",
            )
            .into()),
        }
    }
    crate::routes::Routes::new().route(
        "/v1/admin/federation/card",
        &[(axum::http::Method::GET, Access::Admin(Operators::ROLES))],
        get(card),
    )
}
