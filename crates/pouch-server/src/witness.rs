//! `pouch witness`: a C2SP `tlog-witness` for Pouch logs (and any log using
//! Ed25519 checkpoints). It keeps, per log origin, the largest tree it has
//! cosigned, in a file replaced atomically before it answers; it cosigns a
//! new checkpoint only with a consistency proof from that tree.
//!
//! A checkpoint the log signed for the tree size already cosigned, with
//! another root, is a split view: the log signed two trees of one size and
//! shows someone else the other. The witness refuses it and keeps both
//! signed notes in `DATA_DIR/evidence/`, which anyone holding the log's
//! public key can check. A smaller checkpoint (anyone can replay an old one)
//! or a larger one with a proof that fails (a bad proof or a fork: the
//! witness cannot tell) is refused without evidence.
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
use pouch_log::witness::{AddCheckpoint, Refusal, WitnessAnswer, WitnessKey, witness_decide};
use serde::{Deserialize, Serialize};
use sha2::Digest;
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
    /// origin → the log's signed checkpoint last cosigned: the other half
    /// of a split view's evidence.
    #[serde(default)]
    notes: BTreeMap<String, String>,
}

/// At most this many split-view notes are kept: one already proves the
/// log's misbehaviour, and a hostile log must not fill the disk.
const MAX_EVIDENCE: usize = 100;

pub struct Witness {
    key: WitnessKey,
    logs: Vec<KnownLog>,
    state_path: PathBuf,
    evidence_dir: PathBuf,
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
            evidence_dir: data_dir.join("evidence"),
            state: Mutex::new(state),
        })
    }

    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    /// The tree this witness last cosigned for `origin`: its size and root.
    pub async fn cosigned_tree(&self, origin: &str) -> Option<(u64, pouch_log::Hash)> {
        self.state
            .lock()
            .await
            .logs
            .get(origin)
            .and_then(|(size, root)| pouch_log::hash_from_b64(root).ok().map(|h| (*size, h)))
    }

    /// The tree size this witness last cosigned for `origin` (0: none).
    pub async fn cosigned_size(&self, origin: &str) -> u64 {
        self.state
            .lock()
            .await
            .logs
            .get(origin)
            .map(|(size, _)| *size)
            .unwrap_or(0)
    }
}

pub fn router(w: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .with_state(w)
}

/// A witness's answer, as tlog-witness sends it (a cosignature line, a
/// size, or why not), for HTTP or for this server's own use.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    content_type: &'static str,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, self.content_type)],
            self.body,
        )
            .into_response()
    }
}

fn text(status: StatusCode, body: String) -> Reply {
    Reply {
        status,
        body,
        content_type: "text/plain; charset=utf-8",
    }
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    w.add_checkpoint(&body, None).await.0.into_response()
}

/// What became of one `add-checkpoint` request, for whoever records it.
#[derive(Debug)]
pub enum Decision {
    Cosigned {
        origin: String,
        size: u64,
    },
    /// The log's own misbehaviour, provable or not: two trees of one size
    /// (a split view), a smaller tree than already cosigned (a rollback),
    /// or a proof that does not hold (a fork, or a bad proof).
    Misbehaved {
        origin: String,
        why: String,
    },
    /// Not signed by the log, malformed, unknown log, or a stale size the
    /// asker corrects (409): nothing about the log.
    Other,
}

impl Witness {
    /// Decides on an `add-checkpoint` body, persists before answering, and
    /// says what happened. `only_origin`: the one log this asker may submit
    /// (a federation peer submits its own log only).
    pub async fn add_checkpoint(
        &self,
        body: &[u8],
        only_origin: Option<&str>,
    ) -> (Reply, Decision) {
        let req = match AddCheckpoint::decode(body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    Decision::Other,
                );
            }
        };
        // The origin is the checkpoint's first line.
        let origin =
            String::from_utf8_lossy(req.note.split(|b| *b == b'\n').next().unwrap_or_default())
                .into_owned();
        if only_origin.is_some_and(|o| o != origin) {
            return (
                text(
                    StatusCode::FORBIDDEN,
                    format!("this witness takes your own log only, not {origin}\n"),
                ),
                Decision::Other,
            );
        }
        let Some(log) = self.logs.iter().find(|l| l.origin == origin) else {
            return (
                text(StatusCode::NOT_FOUND, format!("unknown log {origin}\n")),
                Decision::Other,
            );
        };
        // One request at a time: decide, persist, then answer.
        let mut state = self.state.lock().await;
        let stored = state
            .logs
            .get(&origin)
            .and_then(|(size, root)| pouch_log::hash_from_b64(root).ok().map(|h| (*size, h)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        match witness_decide(&req, &log.vkey, &origin, stored, &self.key, now) {
            WitnessAnswer::Cosign { size, root, line } => {
                state
                    .logs
                    .insert(origin.clone(), (size, pouch_log::hash_to_b64(&root)));
                state.notes.insert(
                    origin.clone(),
                    String::from_utf8_lossy(&req.note).into_owned(),
                );
                let bytes = serde_json::to_vec_pretty(&*state).expect("state serialises");
                if let Err(e) = write_private_file(&self.state_path, &bytes) {
                    tracing::error!(error = %e, "cannot persist witness state");
                    return (
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "cannot persist state\n".into(),
                        ),
                        Decision::Other,
                    );
                }
                tracing::info!(%origin, size, "cosigned");
                (
                    text(StatusCode::OK, line),
                    Decision::Cosigned { origin, size },
                )
            }
            WitnessAnswer::Conflict { current } => (
                Reply {
                    status: StatusCode::CONFLICT,
                    body: format!("{current}\n"),
                    content_type: "text/x.tlog.size",
                },
                Decision::Other,
            ),
            WitnessAnswer::Refused(Refusal::NotTheLogs(why)) => {
                tracing::warn!(%origin, %why, "refused a checkpoint the log did not sign");
                (
                    text(StatusCode::FORBIDDEN, format!("{why}\n")),
                    Decision::Other,
                )
            }
            WitnessAnswer::Refused(Refusal::SplitView(why)) => {
                tracing::error!(%origin, %why, "SPLIT VIEW: the log signed two trees of one size");
                let cosigned = state.notes.get(&origin).cloned().unwrap_or_default();
                let (dir, note, o) = (self.evidence_dir.clone(), req.note.clone(), origin.clone());
                let w = why.clone();
                let kept = tokio::task::spawn_blocking(move || {
                    keep_evidence(&dir, &o, &w, &cosigned, &note)
                })
                .await;
                if !matches!(kept, Ok(Ok(()))) {
                    tracing::error!("cannot keep the split-view evidence: {kept:?}");
                }
                (
                    text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "another root for the tree size already witnessed\n".into(),
                    ),
                    Decision::Misbehaved {
                        origin,
                        why: format!("split view: {why}"),
                    },
                )
            }
            WitnessAnswer::Refused(Refusal::Stale(why) | Refusal::Inconsistent(why)) => {
                tracing::warn!(%origin, %why, "refused a checkpoint");
                (
                    text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
                    Decision::Misbehaved { origin, why },
                )
            }
        }
    }
}

/// Writes one split-view record to `dir` (0600): the log's signed
/// checkpoint this witness refused beside the one it had cosigned, both
/// checkable with the log's key. One file per refused (size, root), so
/// extra signature lines on a note make no new file; at most
/// [`MAX_EVIDENCE`] files (only the log can make new ones, and one suffices).
fn keep_evidence(
    dir: &std::path::Path,
    origin: &str,
    why: &str,
    cosigned: &str,
    note: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The checkpoint's body (origin, size, root) names it; signatures do not.
    let text = String::from_utf8_lossy(note);
    let body: Vec<&str> = text.lines().take(3).collect();
    let digest = hex::encode(&sha2::Sha256::digest(body.join("\n").as_bytes())[..8]);
    let path = dir.join(format!("split-view-{digest}.txt"));
    if path.exists() {
        return Ok(());
    }
    if std::fs::read_dir(dir)?.count() >= MAX_EVIDENCE {
        tracing::error!("{MAX_EVIDENCE} split views already kept; not keeping another");
        return Ok(());
    }
    let record = format!(
        "origin: {origin}\nrefused: {why}\n\n-- refused (signed by the log) --\n{text}\n-- cosigned before (signed by the log) --\n{cosigned}"
    );
    write_private_file(&path, record.as_bytes())
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
