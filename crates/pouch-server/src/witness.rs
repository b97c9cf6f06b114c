//! `pouch witness`: a C2SP `tlog-witness` for Pouch logs (and any log using
//! Ed25519 checkpoints). It keeps, per log origin, the largest tree it has
//! cosigned, in a file replaced atomically before it answers; it cosigns a
//! new checkpoint only with a consistency proof from that tree.
//!
//! Plain HTTP: everything it receives and returns is signed, so transport
//! security adds nothing to what it proves; put TLS in front if policy asks.

use crate::write_private_file;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pouch_log::witness::{AddCheckpoint, WitnessAnswer, WitnessKey, witness_decide};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

/// A log this witness follows: its origin and checkpoint verifier key.
#[derive(Clone)]
pub struct KnownLog {
    pub origin: String,
    pub vkey: String,
}

#[derive(Default, Serialize, Deserialize)]
struct State_ {
    /// origin → (size, base64 root)
    logs: BTreeMap<String, (u64, String)>,
}

pub struct Witness {
    key: WitnessKey,
    logs: Vec<KnownLog>,
    state_path: PathBuf,
    state: Mutex<State_>,
}

impl Witness {
    /// Opens (creating if needed) a witness in `data_dir` named `name`.
    pub fn open(
        data_dir: &std::path::Path,
        name: &str,
        logs: Vec<KnownLog>,
    ) -> std::io::Result<Witness> {
        std::fs::create_dir_all(data_dir)?;
        let key_path = data_dir.join("witness.key");
        let secret: [u8; 32] = match std::fs::read_to_string(&key_path) {
            Ok(hex_secret) => hex::decode(hex_secret.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    std::io::Error::other(format!("{} is damaged", key_path.display()))
                })?,
            Err(_) => {
                let s = crate::random_bytes::<32>();
                write_private_file(&key_path, hex::encode(s).as_bytes())?;
                s
            }
        };
        let state_path = data_dir.join("witness-state.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                std::io::Error::other(format!("{} is damaged", state_path.display()))
            })?,
            Err(_) => State_::default(),
        };
        Ok(Witness {
            key: WitnessKey::new(name, &secret),
            logs,
            state_path,
            state: Mutex::new(state),
        })
    }

    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }
}

pub fn router(w: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .with_state(w)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    let req = match AddCheckpoint::decode(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The origin is the checkpoint's first line.
    let origin =
        String::from_utf8_lossy(req.note.split(|b| *b == b'\n').next().unwrap_or_default())
            .into_owned();
    let Some(log) = w.logs.iter().find(|l| l.origin == origin) else {
        return text(StatusCode::NOT_FOUND, format!("unknown log {origin}\n"));
    };
    // One request at a time: decide, persist, then answer.
    let mut state = w.state.lock().await;
    let stored = state
        .logs
        .get(&origin)
        .and_then(|(size, root)| pouch_log::hash_from_b64(root).ok().map(|h| (*size, h)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    match witness_decide(&req, &log.vkey, &origin, stored, &w.key, now) {
        WitnessAnswer::Cosign { size, root, line } => {
            state
                .logs
                .insert(origin.clone(), (size, pouch_log::hash_to_b64(&root)));
            let bytes = serde_json::to_vec_pretty(&*state).expect("state serialises");
            if let Err(e) = write_private_file(&w.state_path, &bytes) {
                tracing::error!(error = %e, "cannot persist witness state");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot persist state\n".into(),
                );
            }
            tracing::info!(%origin, size, "cosigned");
            text(StatusCode::OK, line)
        }
        WitnessAnswer::Conflict { current } => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{current}\n"),
        )
            .into_response(),
        WitnessAnswer::Refused(why) => {
            tracing::warn!(%origin, %why, "refused a checkpoint");
            let status = if why.contains("signature") {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            text(status, format!("{why}\n"))
        }
    }
}

/// Serves the witness on an already bound listener until `shutdown`.
pub async fn serve(
    w: Arc<Witness>,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(w))
        .with_graceful_shutdown(shutdown)
        .await
}
