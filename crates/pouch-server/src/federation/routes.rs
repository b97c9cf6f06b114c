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
        .route("/federation/v1/checkpoint", get(checkpoint))
        .route("/federation/v1/directory/lists", post(directory))
        .route("/federation/v1/log/consistency", get(consistency))
        .route(
            "/federation/v1/key-packages/claim",
            post(claim).layer(DefaultBodyLimit::max(crate::extract::SMALL_LIMIT)),
        )
        .route(
            "/federation/v1/groups/{group}/commits",
            post(commit)
                .layer(DefaultBodyLimit::max(
                    crate::extract::BODY_LIMIT + (4 << 20),
                ))
                .layer(axum::middleware::from_fn(bulk)),
        )
        .route(
            "/federation/v1/groups/{group}/messages",
            post(send)
                .layer(DefaultBodyLimit::max(
                    crate::extract::MESSAGE_LIMIT + (1 << 20),
                ))
                .layer(axum::middleware::from_fn(bulk)),
        )
        .route("/federation/v1/groups/{group}/members", get(members))
        .route("/federation/v1/blobs/{blob}", post(blob_start))
        .route(
            "/federation/v1/blobs/{blob}/{index}",
            axum::routing::put(blob_chunk)
                .layer(DefaultBodyLimit::max(pouch_proto::api::MAX_BLOB_CHUNK))
                .layer(axum::middleware::from_fn(bulk)),
        )
        .route("/federation/v1/blobs/{blob}/finish", post(blob_finish))
        .route(
            "/federation/v1/deliver",
            post(deliver)
                .layer(DefaultBodyLimit::max(DELIVERY_BODY_MAX))
                .layer(axum::middleware::from_fn(bulk)),
        )
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .layer(axum::middleware::from_fn_with_state(state.clone(), budget))
        .with_state(state)
}

/// Each peer within its request budget (`peer_requests_per_minute`): over
/// it, 429 and — once a minute — an access event (rule: peer volume).
async fn budget(
    State(s): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (Some(fed), Some(peer)) = (
        &s.federation,
        req.extensions().get::<PeerIdentity>().cloned(),
    ) else {
        return next.run(req).await;
    };
    match fed.admit(&peer.0.domain) {
        super::Admission::Go => next.run(req).await,
        super::Admission::Refused { record: recorded } => {
            if recorded {
                record(
                    &s,
                    Ev::new(Action::PeerThrottled).source(from.ip()).failed(
                        Reason::PeerRateLimited,
                        format!(
                            "peer {} made more than its {} requests a minute; answered 429",
                            peer.0.domain, fed.per_minute
                        ),
                    ),
                )
                .await;
            }
            (
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this peer; try again shortly\n",
            )
                .into_response()
        }
    }
}

/// A forwarding of queue items: up to 8 MiB of payload in base64, or one
/// larger commit or Welcome (a device's commit request is at most 16 MiB).
const DELIVERY_BODY_MAX: usize = 24 << 20;

type Answer<T> = Result<Json<T>, crate::error::ApiError>;

/// A peer claims key packages of this server's accounts (one of its
/// devices writes to them).
async fn claim(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<pouch_proto::api::PeerClaimRequest>,
) -> Answer<pouch_proto::api::ClaimResponse> {
    let devices = super::mail::claim_for_peer(&s, &peer.0, from.ip(), req).await?;
    Ok(Json(pouch_proto::api::ClaimResponse { devices }))
}

/// A peer's device commits into a conversation hosted here.
async fn commit(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::extract::Path(group): axum::extract::Path<String>,
    Json(req): Json<pouch_proto::api::PeerCommit>,
) -> Answer<pouch_proto::api::CommitResponse> {
    let group = crate::service::mail::group_id(group)?;
    let device = req.device.clone();
    let epoch = super::mail::commit_from_peer(&s, &peer.0, from.ip(), &group, req).await?;
    record(
        &s,
        Ev::new(Action::PeerSubmit)
            .source(from.ip())
            .devices([&device])
            .detail(format!(
                "peer {} passed on a commit of device {device} to conversation {} (epoch {epoch})",
                peer.0.domain, group.0
            )),
    )
    .await;
    Ok(Json(pouch_proto::api::CommitResponse { epoch }))
}

/// A peer's device sends into a conversation hosted here.
async fn send(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::extract::Path(group): axum::extract::Path<String>,
    Json(req): Json<pouch_proto::api::PeerSend>,
) -> Answer<pouch_proto::api::SendResponse> {
    let group = crate::service::mail::group_id(group)?;
    let caller = super::mail::peer_caller(&s, &peer.0, from.ip(), &req.device, &group).await?;
    let sent = crate::service::mail::send_here(&s, &caller, &group, &req.request).await?;
    record(
        &s,
        Ev::new(Action::PeerSubmit)
            .source(from.ip())
            .devices([&req.device])
            .amount(u64::from(sent.recipients), req.request.message.len() as u64)
            .detail(format!(
                "peer {} passed on a message of device {} to conversation {}",
                peer.0.domain, req.device, group.0
            )),
    )
    .await;
    Ok(Json(sent))
}

#[derive(serde::Deserialize)]
struct MembersQuery {
    device: pouch_proto::DeviceId,
}

/// Whom a conversation hosted here is delivered to, for a peer's member device.
async fn members(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::extract::Path(group): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<MembersQuery>,
) -> Answer<pouch_proto::api::GroupMembers> {
    let group = crate::service::mail::group_id(group)?;
    let caller = super::mail::peer_caller(&s, &peer.0, from.ip(), &q.device, &group).await?;
    Ok(Json(
        crate::service::mail::members_here(&s, &caller, &group).await?,
    ))
}

/// A peer starts pushing a blob (or learns it is here already).
async fn blob_start(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    axum::extract::Path(blob): axum::extract::Path<String>,
) -> Answer<pouch_proto::api::PeerBlobState> {
    let blob = crate::service::mail::blob_id(&blob)?;
    Ok(Json(
        super::mail::blob_from_peer(&s, &peer.0, from.ip(), blob).await?,
    ))
}

/// One chunk of a blob a peer pushes (counted against its quota here).
async fn blob_chunk(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    axum::extract::Path((blob, index)): axum::extract::Path<(String, u32)>,
    body: Bytes,
) -> Answer<serde_json::Value> {
    let blob = crate::service::mail::blob_id(&blob)?;
    let stand_in = pouch_store::peer_stand_in(&peer.0.domain);
    s.store
        .put_blob_chunk(
            blob,
            &stand_in,
            index,
            &body,
            super::mail::peer_blob_quota(&s),
        )
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::NotFound => crate::service::ServiceError::not_found(
                "no blob of yours is open here with that id: start it first",
            ),
            pouch_store::StoreError::QuotaExceeded => crate::service::ServiceError::new(
                pouch_proto::api::ErrorCode::QuotaExceeded,
                "your blobs waiting here passed their quota; try again once devices fetched them",
            ),
            other => other.into(),
        })?;
    Ok(Json(serde_json::json!({})))
}

/// A peer finishes pushing a blob.
async fn blob_finish(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    axum::extract::Path(blob): axum::extract::Path<String>,
    Json(req): Json<pouch_proto::api::BlobFinish>,
) -> Answer<serde_json::Value> {
    let blob = crate::service::mail::blob_id(&blob)?;
    let stand_in = pouch_store::peer_stand_in(&peer.0.domain);
    s.store
        .finish_blob(blob, &stand_in, req.chunks, req.size)
        .await
        .map_err(|e| match e {
            pouch_store::StoreError::NotFound => crate::service::ServiceError::bad_request(
                "the blob is not complete: push every chunk, then finish",
            ),
            other => other.into(),
        })?;
    Ok(Json(serde_json::json!({})))
}

/// A hub forwards queue items for this server's devices.
async fn deliver(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(delivery): Json<pouch_proto::api::PeerDelivery>,
) -> Answer<pouch_proto::api::PeerDeliveryAnswer> {
    Ok(Json(
        super::mail::receive(&s, &peer.0, from.ip(), delivery).await?,
    ))
}

/// A peer's requests that carry mail take turns ([`super::BULK_AT_ONCE`]
/// at once), before their bodies are read.
async fn bulk(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(peer) = req.extensions().get::<PeerIdentity>().cloned() else {
        return next.run(req).await;
    };
    let Ok(_turn) = peer.0.bulk.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    next.run(req).await
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

/// This server's checkpoint, with its witnesses' and peers' cosignatures:
/// what a peer's witness follows. Public on the devices' listener too, so
/// not an access event.
async fn checkpoint(State(s): State<Arc<AppState>>) -> Response {
    match crate::service::log::checkpoint_note(&s).await {
        Ok(note) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response(),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

/// A consistency proof between two sizes of this server's log (public on
/// the devices' listener too).
async fn consistency(
    State(s): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<ConsistencyQuery>,
) -> Response {
    match crate::service::log::consistency(&s, q.from, q.to).await {
        Ok(proof) => Json(proof).into_response(),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

/// The peer asks for this server's accounts' device lists (its devices
/// are writing to them): an access event naming the accounts; another
/// domain's account is refused (out of its role).
async fn directory(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<PeerIdentity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(req): Json<pouch_proto::api::DirectoryRequest>,
) -> Response {
    let peer = &peer.0;
    let asked = req.addresses.len();
    let targets: Vec<pouch_proto::Address> = req
        .addresses
        .iter()
        .take(pouch_proto::api::EVENT_DEVICES_MAX)
        .cloned()
        .collect();
    let answer = crate::service::directory::peer_lookup(&s, req).await;
    let ev = Ev::new(Action::PeerLookup)
        .source(from.ip())
        .targets(targets);
    match answer {
        Ok(found) => {
            record(
                &s,
                ev.amount(asked as u64, 0).detail(format!(
                    "peer {} asked for {asked} device lists",
                    peer.domain
                )),
            )
            .await;
            Json(found).into_response()
        }
        Err(e) => {
            let forbidden = e.code == pouch_proto::api::ErrorCode::Forbidden;
            record(
                &s,
                ev.failed(
                    if forbidden {
                        Reason::PeerRequestRefused
                    } else {
                        Reason::ServerFailure
                    },
                    format!("peer {}: {}", peer.domain, e.message),
                ),
            )
            .await;
            crate::error::ApiError::from(e).into_response()
        }
    }
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
    let (reply, decision) = fed
        .witness
        .add_checkpoint(&body, Some(&peer.log_origin))
        .await;
    let status = reply.status;
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
            super::log_misbehaved(&s, Some(from.ip()), &peer.domain, &origin, &why, "showed").await
        }
        // A size the peer corrects (409) is the protocol; anything else
        // refused is a peer asking for what it may not.
        // This server's own failure (it could not keep its state) is not
        // the peer's doing either.
        Decision::Other if status == StatusCode::CONFLICT || status.is_server_error() => {}
        Decision::Other => {
            record(
                &s,
                ev.failed(
                    Reason::PeerRequestRefused,
                    format!("peer {}: add-checkpoint refused ({status})", peer.domain),
                ),
            )
            .await
        }
    }
    reply.into_response()
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
    async fn status(
        State(s): State<Arc<AppState>>,
        _by: Admin<Operators>,
    ) -> Result<Json<pouch_proto::api::FederationStatus>, crate::error::ApiError> {
        match &s.federation {
            Some(fed) => Ok(Json(
                fed.status(&s.domain, s.store.as_ref())
                    .await
                    .map_err(crate::service::ServiceError::from)?,
            )),
            None => Err(crate::service::ServiceError::new(
                pouch_proto::api::ErrorCode::NotFound,
                "this server does not federate: set [federation] listen = \"HOST:PORT\" in pouch.toml and restart",
            )
            .into()),
        }
    }
    crate::routes::Routes::new()
        .route(
            "/v1/admin/federation/card",
            &[(axum::http::Method::GET, Access::Admin(Operators::ROLES))],
            get(card),
        )
        .route(
            "/v1/admin/federation/status",
            &[(axum::http::Method::GET, Access::Admin(Operators::ROLES))],
            get(status),
        )
}
