//! The transparency log over HTTP: C2SP `tlog-tiles` (`/checkpoint`,
//! `/tile/…`) for any auditor, and Pouch's proof endpoints for clients.
//!
//! Entries are appended by the store in the same transaction as the
//! device-list change they record; this module only reads, and signs a new
//! checkpoint after each append (a checkpoint never covers entries that are
//! not stored: the store refuses one larger than the log).

use crate::routes::{Access, Routes};
use crate::service::ServiceError;
use crate::{AppState, error::ApiError};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use pouch_log::{FetchedHashes, Hash, IndexRecorder, LogKey, TilePath};
use pouch_proto::Address;
use pouch_proto::api::*;
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub struct LogState {
    pub origin: String,
    pub key: LogKey,
    /// Index of the leaf recording the commitment key's hash.
    pub commitment_index: u64,
    pub witnesses: Vec<WitnessConfig>,
    /// What this node believes each witness has cosigned (URL → tree size); a 409 corrects it.
    witness_sizes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// When this node last asked the witnesses, so a down witness is not asked on every request.
    last_attempt: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    http: reqwest::Client,
}

/// A witness the log sends its checkpoints to.
#[derive(Clone, Debug)]
pub struct WitnessConfig {
    pub url: String,
    pub vkey: String,
}

impl LogState {
    pub fn new(
        origin: String,
        key: LogKey,
        commitment_index: u64,
        witnesses: Vec<WitnessConfig>,
    ) -> Self {
        LogState {
            origin,
            key,
            commitment_index,
            witnesses,
            witness_sizes: Default::default(),
            last_attempt: Default::default(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("an HTTP client without TLS settings builds"),
        }
    }

    pub fn witness_keys(&self) -> Vec<String> {
        self.witnesses.iter().map(|w| w.vkey.clone()).collect()
    }
}

/// Asks one witness to cosign checkpoint `note` of `size`; returns its cosignature line.
async fn ask_witness(
    s: &AppState,
    w: &WitnessConfig,
    size: u64,
    note: &[u8],
) -> Result<String, String> {
    for _ in 0..3 {
        let old = s
            .log
            .witness_sizes
            .lock()
            .expect("not poisoned")
            .get(&w.url)
            .copied()
            .unwrap_or(0);
        if old > size {
            return Err(format!(
                "the witness has seen a larger tree ({old}) than this log ({size})"
            ));
        }
        let proof = if old > 0 && old < size {
            let rec = IndexRecorder::default();
            let _ = pouch_log::prove_tree(size, old, &rec);
            let reader = fetched(s, rec.into_indexes())
                .await
                .map_err(|e| e.message)?;
            pouch_log::prove_tree(size, old, &reader).map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let body = pouch_log::witness::AddCheckpoint {
            old_size: old,
            proof,
            note: note.to_vec(),
        }
        .encode();
        let resp = s
            .log
            .http
            .post(format!("{}/add-checkpoint", w.url.trim_end_matches('/')))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        match status.as_u16() {
            200 => {
                s.log
                    .witness_sizes
                    .lock()
                    .expect("not poisoned")
                    .insert(w.url.clone(), size);
                return Ok(text);
            }
            409 => {
                let theirs: u64 = text
                    .trim()
                    .parse()
                    .map_err(|_| "a malformed 409 from the witness".to_string())?;
                s.log
                    .witness_sizes
                    .lock()
                    .expect("not poisoned")
                    .insert(w.url.clone(), theirs);
            }
            _ => return Err(format!("HTTP {status}: {}", text.trim())),
        }
    }
    Err("the witness kept changing its size".into())
}

/// Collects missing witness cosignatures for the stored checkpoint.
async fn cosign(s: &AppState) -> Result<(), ServiceError> {
    if s.log.witnesses.is_empty() {
        return Ok(());
    }
    let Some((size, note)) = s.store.checkpoint().await? else {
        return Ok(());
    };
    {
        let mut last = s.log.last_attempt.lock().expect("not poisoned");
        if let Some((at_size, when)) = *last
            && at_size == size
            && when.elapsed() < std::time::Duration::from_secs(5)
        {
            return Ok(());
        }
        *last = Some((size, std::time::Instant::now()));
    }
    let opened = pouch_log::witness::open_cosigned(
        &note,
        &s.log.key.verifier_key,
        &s.log.origin,
        &s.log.witness_keys(),
    )
    .map_err(|e| log_failure(&e.to_string()))?;
    let mut lines = Vec::new();
    for w in &s.log.witnesses {
        let name = w.vkey.split('+').next().unwrap_or_default();
        if opened.cosignatures.iter().any(|(n, _)| n == name) {
            continue;
        }
        match ask_witness(s, w, size, &note).await {
            Ok(line) => lines.push(line),
            Err(e) => tracing::warn!(witness = %w.url, size, error = %e, "witness did not cosign"),
        }
    }
    if !lines.is_empty() {
        let cosigned = pouch_log::witness::add_cosignatures(&note, &lines)
            .map_err(|e| log_failure(&e.to_string()))?;
        s.store.replace_checkpoint(size, &cosigned).await?;
    }
    Ok(())
}

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

async fn fetched(s: &AppState, indexes: Vec<u64>) -> Result<FetchedHashes, ServiceError> {
    let hashes = s.store.log_hashes(&indexes).await?;
    Ok(FetchedHashes(
        indexes
            .into_iter()
            .zip(hashes.into_iter().map(Hash))
            .collect(),
    ))
}

/// The root hash of the first `size` entries.
pub(crate) async fn root(s: &AppState, size: u64) -> Result<Hash, ServiceError> {
    let reader = fetched(s, pouch_log::hashes_needed_for_root(size)).await?;
    pouch_log::tree_hash(size, &reader).map_err(|e| log_failure(&e.to_string()))
}

fn log_failure(detail: &str) -> ServiceError {
    tracing::error!(%detail, "transparency log failure");
    ServiceError::new(
        ErrorCode::Internal,
        "the transparency log is unavailable; try again shortly",
    )
}

/// Signs a checkpoint for the whole log if the stored one is older.
pub async fn refresh_checkpoint(s: &AppState) -> Result<(), ServiceError> {
    let size = s.store.log_size().await?;
    let stored = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    if size > stored {
        let root = root(s, size).await?;
        let note = s
            .log
            .key
            .sign_checkpoint(&s.log.origin, size, root)
            .map_err(|e| log_failure(&e.to_string()))?;
        s.store.save_checkpoint(size, &note).await?;
    }
    // Ask the witnesses for what the stored checkpoint still lacks.
    cosign(s).await
}

pub(crate) async fn current_checkpoint(s: &AppState) -> Result<(u64, Vec<u8>), ServiceError> {
    refresh_checkpoint(s).await?;
    s.store
        .checkpoint()
        .await?
        .ok_or_else(|| ServiceError::not_found("the log is empty"))
}

async fn checkpoint(State(s): St) -> Result<impl IntoResponse, ApiError> {
    let (_, note) = current_checkpoint(&s).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note))
}

async fn tile(State(s): St, Path(path): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let parsed = TilePath::parse(&path).ok_or_else(|| ApiError::not_found("no such tile"))?;
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    let body = match parsed {
        TilePath::Entries { index, width } => {
            let from = index * 256;
            if from + width as u64 > size {
                return Err(ApiError::not_found("no such tile"));
            }
            pouch_log::entry_bundle(&s.store.log_entries(from, from + width as u64).await?)
        }
        TilePath::Hashes {
            level,
            index,
            width,
        } => {
            // A tile at `level` covers 256^(level+1) entries per full tile.
            let span = 1u64.checked_shl(8 * (level as u32 + 1)).unwrap_or(u64::MAX);
            let first = index.saturating_mul(span);
            let needed = first.saturating_add((width as u64) << (8 * level as u32));
            if needed > size {
                return Err(ApiError::not_found("no such tile"));
            }
            let t = parsed.tile().expect("a hash tile");
            let rec = IndexRecorder::default();
            let _ = t.read_data(&rec);
            let reader = fetched(&s, rec.into_indexes()).await?;
            t.read_data(&reader)
                .map_err(|e| log_failure(&e.to_string()))?
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body))
}

#[derive(Deserialize)]
struct InclusionQuery {
    address: String,
    version: u64,
}

/// By address: for signed-in devices only (an open index by address would
/// tell anyone who exists). Tiles stay public for auditors, and name no one.
async fn inclusion(
    State(s): St,
    _: crate::extract::AuthDevice,
    Query(q): Query<InclusionQuery>,
) -> Result<Json<LogInclusion>, ApiError> {
    let address = Address::parse(&q.address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (size, note) = current_checkpoint(&s).await?;
    list_inclusion(&s, size, &note, &address, q.version)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "version {} of {address}'s device list is not in the log",
                q.version
            ))
        })
}

/// The inclusion proof of version `version` of `address`'s device list in
/// the tree of `size` (checkpoint `note`); None if no leaf below `size` has it.
pub(crate) async fn list_inclusion(
    s: &AppState,
    size: u64,
    note: &[u8],
    address: &Address,
    version: u64,
) -> Result<Option<LogInclusion>, ServiceError> {
    let found = s
        .store
        .log_entries_of(address)
        .await?
        .into_iter()
        .find(|e| e.index < size && list_version(&e.leaf) == Some(version));
    Ok(match found {
        Some(f) => Some(prove(s, size, note, f.index, f.leaf, f.entry).await?),
        None => None,
    })
}

/// The device-list version a leaf records (`None` for other kinds of entry).
fn list_version(leaf: &[u8]) -> Option<u64> {
    use pouch_log::{AnyEntry, EntryKind, Leaf};
    match Leaf::from_bytes(leaf).ok()? {
        Leaf::Committed(c) if matches!(c.kind, EntryKind::DeviceList | EntryKind::Reset) => {
            Some(c.version)
        }
        Leaf::Named(AnyEntry::List(e)) => Some(e.version),
        _ => None,
    }
}

/// The inclusion proof of leaf `index` in the tree of `size` (checkpoint `note`).
async fn prove(
    s: &AppState,
    size: u64,
    note: &[u8],
    index: u64,
    leaf: Vec<u8>,
    full: Option<Vec<u8>>,
) -> Result<LogInclusion, ServiceError> {
    let rec = IndexRecorder::default();
    let _ = pouch_log::prove_record(size, index, &rec);
    let reader = fetched(s, rec.into_indexes()).await?;
    let proof =
        pouch_log::prove_record(size, index, &reader).map_err(|e| log_failure(&e.to_string()))?;
    Ok(LogInclusion {
        index,
        entry: leaf,
        full: full.unwrap_or_default(),
        checkpoint: String::from_utf8_lossy(note).into_owned(),
        proof: proof.iter().map(pouch_log::hash_to_b64).collect(),
    })
}

/// The commitment key, for signed-in devices: with it they check that a
/// leaf is about the account they asked for; the public never gets it.
async fn commitment_key(
    State(s): St,
    _: crate::extract::AuthDevice,
) -> Result<Json<LogCommitmentKey>, ApiError> {
    use base64::Engine;
    let (size, note) = current_checkpoint(&s).await?;
    let index = s.log.commitment_index;
    let leaf = s
        .store
        .log_entries(index, index + 1)
        .await?
        .pop()
        .ok_or_else(|| log_failure("the commitment-key leaf is missing"))?;
    Ok(Json(LogCommitmentKey {
        key: base64::engine::general_purpose::STANDARD.encode(s.log.key.commitment.as_bytes()),
        inclusion: prove(&s, size, &note, index, leaf, None).await?,
    }))
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
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    if q.from > q.to || q.to > size || q.from == 0 {
        return Err(ApiError::bad_request(format!(
            "no consistency proof from {} to {} (log size {size})",
            q.from, q.to
        )));
    }
    if q.from == q.to {
        return Ok(Json(LogConsistency { proof: vec![] }));
    }
    let rec = IndexRecorder::default();
    let _ = pouch_log::prove_tree(q.to, q.from, &rec);
    let reader = fetched(&s, rec.into_indexes()).await?;
    let proof =
        pouch_log::prove_tree(q.to, q.from, &reader).map_err(|e| log_failure(&e.to_string()))?;
    Ok(Json(LogConsistency {
        proof: proof.iter().map(pouch_log::hash_to_b64).collect(),
    }))
}

async fn entries_of(
    State(s): St,
    _: crate::extract::AuthDevice,
    Path(address): Path<String>,
) -> Result<Json<LogEntries>, ApiError> {
    let address = Address::parse(&address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    let entries = s
        .store
        .log_entries_of(&address)
        .await?
        .into_iter()
        .filter(|e| e.index < size)
        .map(|e| IndexedEntry {
            index: e.index,
            entry: e.leaf,
            full: e.entry.unwrap_or_default(),
        })
        .collect();
    Ok(Json(LogEntries { entries }))
}
