//! The transparency log's operations: checkpoints (signed after each
//! append, cosigned by the witnesses), tiles, and the proofs devices ask
//! for. The HTTP routes (`crate::log`) only extract and answer.
//!
//! Entries are appended by the store in the same transaction as the
//! device-list change they record; this module only reads, and signs a new
//! checkpoint after each append (a checkpoint never covers entries that are
//! not stored: the store refuses one larger than the log).

use super::ServiceError;
use crate::AppState;
use pouch_log::{FetchedHashes, Hash, IndexRecorder, LogKey, TilePath};
use pouch_proto::Address;
use pouch_proto::api::*;

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
    /// Held while cosignature lines are added to the stored checkpoint
    /// (read, add, write), so that one merge never erases another's lines.
    merging: tokio::sync::Mutex<()>,
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
            merging: Default::default(),
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
    http: &reqwest::Client,
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
        let resp = http
            .post(format!("{}/add-checkpoint", w.url.trim_end_matches('/')))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let status = resp.status();
        // A witness answers a line or a size: bounded (a peer's witness is
        // not trusted with this server's memory).
        let text = crate::federation::bounded_body(resp, crate::federation::ANSWER_MAX).await?;
        let text = String::from_utf8_lossy(&text).into_owned();
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
            _ => {
                return Err(format!(
                    "HTTP {status}: {}",
                    crate::federation::shown_answer(text.as_bytes())
                ));
            }
        }
    }
    Err("the witness kept changing its size".into())
}

/// For `/metrics`: the stored checkpoint's size, and each configured
/// witness by name with the time of its valid cosignature on it (None: not
/// cosigned yet).
pub async fn witness_status(
    s: &AppState,
) -> Result<(u64, Vec<(String, Option<u64>)>), ServiceError> {
    let Some((size, note)) = s.store.checkpoint().await? else {
        return Ok((0, Vec::new()));
    };
    let opened = pouch_log::witness::open_cosigned(
        &note,
        &s.log.key.verifier_key,
        &s.log.origin,
        &s.log.witness_keys(),
    )
    .map_err(|e| log_failure(&e.to_string()))?;
    let status = witness_names(s)
        .into_iter()
        .map(|name| {
            let at = opened
                .cosignatures
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t);
            (name, at)
        })
        .collect();
    Ok((size, status))
}

/// The configured witnesses' names (their verifier keys' first field).
pub fn witness_names(s: &AppState) -> Vec<String> {
    s.log
        .witnesses
        .iter()
        .map(|w| w.vkey.split('+').next().unwrap_or_default().to_string())
        .collect()
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
        match ask_witness(s, &s.log.http, w, size, &note).await {
            Ok(line) if is_cosignature(s, &note, &line, &w.vkey) => lines.push(line),
            Ok(_) => {
                tracing::warn!(witness = %w.url, size, "the witness's answer is not its valid cosignature of this checkpoint; not kept")
            }
            Err(e) => tracing::warn!(witness = %w.url, size, error = %e, "witness did not cosign"),
        }
    }
    merge_cosignatures(s, size, &lines).await
}

/// Whether `line` is one valid cosignature of the checkpoint `note` by the
/// witness `vkey`: nothing else goes into the stored note (a junk line
/// under a known key's name would make the note fail for every device).
fn is_cosignature(s: &AppState, note: &[u8], line: &str, vkey: &str) -> bool {
    valid_cosignature_line(&s.log.key.verifier_key, &s.log.origin, note, line, vkey)
}

fn valid_cosignature_line(
    log_vkey: &str,
    origin: &str,
    note: &[u8],
    line: &str,
    vkey: &str,
) -> bool {
    if line.len() > 1024 || line.trim_end().contains('\n') {
        return false;
    }
    let Ok(candidate) = pouch_log::witness::add_cosignatures(note, &[line.to_string()]) else {
        return false;
    };
    pouch_log::witness::open_cosigned(&candidate, log_vkey, origin, &[vkey.to_string()])
        .is_ok_and(|c| !c.cosignatures.is_empty())
}

/// Whether the stored note already carries a valid cosignature of `vkey`.
fn cosigned_by(s: &AppState, note: &[u8], vkey: &str) -> bool {
    pouch_log::witness::open_cosigned(
        note,
        &s.log.key.verifier_key,
        &s.log.origin,
        &[vkey.to_string()],
    )
    .is_ok_and(|c| !c.cosignatures.is_empty())
}

/// Adds checked cosignature lines to the checkpoint as stored now, if it
/// is still of `size` (read, add and write under [`LogState::merging`]).
async fn merge_cosignatures(s: &AppState, size: u64, lines: &[String]) -> Result<(), ServiceError> {
    if lines.is_empty() {
        return Ok(());
    }
    let _merging = s.log.merging.lock().await;
    if let Some((now_size, now_note)) = s.store.checkpoint().await?
        && now_size == size
    {
        let cosigned = pouch_log::witness::add_cosignatures(&now_note, lines)
            .map_err(|e| log_failure(&e.to_string()))?;
        s.store.replace_checkpoint(size, &cosigned).await?;
    }
    Ok(())
}

/// Has a federation peer's witness cosign this server's stored checkpoint
/// when the note lacks its valid cosignature; returns the size it is
/// cosigned at and whether the peer was asked. The peers' witnesses are
/// not this log's announced witnesses: a partner's outage never makes
/// this ministry's own log look unwitnessed to its devices.
pub async fn cosign_with_peer(
    s: &AppState,
    peer: &crate::federation::Peer,
) -> Result<(u64, bool), String> {
    refresh_checkpoint(s).await.map_err(|e| e.message)?;
    let Some((size, note)) = s.store.checkpoint().await.map_err(|e| e.to_string())? else {
        return Ok((0, false));
    };
    if cosigned_by(s, &note, &peer.witness_key) {
        return Ok((size, false));
    }
    let w = WitnessConfig {
        url: format!("{}/federation/v1/witness", peer.url),
        vkey: peer.witness_key.clone(),
    };
    let line = ask_witness(s, &peer.http, &w, size, &note).await?;
    if !is_cosignature(s, &note, &line, &peer.witness_key) {
        return Err("its witness answered something other than its valid cosignature of this checkpoint (not kept)".into());
    }
    merge_cosignatures(s, size, &[line])
        .await
        .map_err(|e| e.message)?;
    Ok((size, true))
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

/// The signed checkpoint of the whole log (with the witnesses' cosignatures).
pub async fn checkpoint_note(s: &AppState) -> Result<Vec<u8>, ServiceError> {
    Ok(current_checkpoint(s).await?.1)
}

/// A C2SP tile (`tile/…` path) of the log as of the stored checkpoint.
pub async fn tile(s: &AppState, path: &str) -> Result<Vec<u8>, ServiceError> {
    let no_tile = || ServiceError::not_found("no such tile");
    let parsed = TilePath::parse(path).ok_or_else(no_tile)?;
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    Ok(match parsed {
        TilePath::Entries { index, width } => {
            let from = index * 256;
            if from + width as u64 > size {
                return Err(no_tile());
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
                return Err(no_tile());
            }
            let t = parsed.tile().expect("a hash tile");
            let rec = IndexRecorder::default();
            let _ = t.read_data(&rec);
            let reader = fetched(s, rec.into_indexes()).await?;
            t.read_data(&reader)
                .map_err(|e| log_failure(&e.to_string()))?
        }
    })
}

/// The inclusion proof of a version of `address`'s device list, against
/// the current checkpoint. By address: for signed-in devices only (an open
/// index by address would tell anyone who exists); tiles name no one.
pub async fn inclusion(
    s: &AppState,
    address: &Address,
    version: u64,
) -> Result<LogInclusion, ServiceError> {
    let (size, note) = current_checkpoint(s).await?;
    list_inclusion(s, size, &note, address, version)
        .await?
        .ok_or_else(|| {
            ServiceError::not_found(format!(
                "version {version} of {address}'s device list is not in the log"
            ))
        })
}

/// The commitment key, for signed-in devices: with it they check that a
/// leaf is about the account they asked for; the public never gets it.
pub async fn commitment_key(s: &AppState) -> Result<LogCommitmentKey, ServiceError> {
    use base64::Engine;
    let (size, note) = current_checkpoint(s).await?;
    let index = s.log.commitment_index;
    let leaf = s
        .store
        .log_entries(index, index + 1)
        .await?
        .pop()
        .ok_or_else(|| log_failure("the commitment-key leaf is missing"))?;
    Ok(LogCommitmentKey {
        key: base64::engine::general_purpose::STANDARD.encode(s.log.key.commitment.as_bytes()),
        inclusion: prove(s, size, &note, index, leaf, None).await?,
    })
}

/// The consistency proof between two sizes of the log (for auditors and
/// devices that saw an older checkpoint).
pub async fn consistency(s: &AppState, from: u64, to: u64) -> Result<LogConsistency, ServiceError> {
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    if from > to || to > size || from == 0 {
        return Err(ServiceError::bad_request(format!(
            "no consistency proof from {from} to {to} (log size {size})"
        )));
    }
    if from == to {
        return Ok(LogConsistency { proof: vec![] });
    }
    let rec = IndexRecorder::default();
    let _ = pouch_log::prove_tree(to, from, &rec);
    let reader = fetched(s, rec.into_indexes()).await?;
    let proof =
        pouch_log::prove_tree(to, from, &reader).map_err(|e| log_failure(&e.to_string()))?;
    Ok(LogConsistency {
        proof: proof.iter().map(pouch_log::hash_to_b64).collect(),
    })
}

/// Every entry about `address` below the stored checkpoint (for the
/// account's own devices auditing their history).
pub async fn entries_of(s: &AppState, address: &Address) -> Result<LogEntries, ServiceError> {
    let size = s.store.checkpoint().await?.map(|(n, _)| n).unwrap_or(0);
    let entries = s
        .store
        .log_entries_of(address)
        .await?
        .into_iter()
        .filter(|e| e.index < size)
        .map(|e| IndexedEntry {
            index: e.index,
            entry: e.leaf,
            full: e.entry.unwrap_or_default(),
        })
        .collect();
    Ok(LogEntries { entries })
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
pub(crate) async fn prove(
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

#[cfg(test)]
mod tests {
    use super::valid_cosignature_line;
    use pouch_log::witness::{AddCheckpoint, WitnessAnswer, WitnessKey, witness_decide};

    /// A cosignature line of `note` by a fresh witness named `name`, and
    /// that witness's verifier key.
    fn cosigned_by(name: &str, note: &[u8], log_vkey: &str, origin: &str) -> (String, String) {
        let key = WitnessKey::new(name, &[7u8; 32]);
        let req = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: note.to_vec(),
        };
        match witness_decide(&req, log_vkey, origin, None, &key, 1_800_000_000) {
            WitnessAnswer::Cosign { line, .. } => (line, key.verifier_key()),
            other => panic!("not cosigned: {other:?}"),
        }
    }

    #[test]
    fn only_the_named_witnesss_valid_line_for_this_checkpoint_is_kept() {
        let origin = "mfa-a.test/log";
        let (_, log) = pouch_log::LogKey::generate(origin);
        let note = log
            .sign_checkpoint(origin, 3, pouch_log::Hash([1; 32]))
            .unwrap();
        let other = log
            .sign_checkpoint(origin, 3, pouch_log::Hash([2; 32]))
            .unwrap();
        let vkey = &log.verifier_key;
        let (line, peer) = cosigned_by("mfa-b.test/witness", &note, vkey, origin);
        assert!(valid_cosignature_line(vkey, origin, &note, &line, &peer));
        // The same witness's line for another checkpoint: not this one's.
        let (elsewhere, _) = cosigned_by("mfa-b.test/witness", &other, vkey, origin);
        assert!(!valid_cosignature_line(
            vkey, origin, &note, &elsewhere, &peer
        ));
        // Another witness's valid line, offered as the peer's.
        let (foreign, _) = cosigned_by("hq-c.test/witness", &note, vkey, origin);
        assert!(!valid_cosignature_line(
            vkey, origin, &note, &foreign, &peer
        ));
        // Junk under the peer's name, a huge line, two lines in one.
        let junk = format!("— mfa-b.test/witness {}\n", "A".repeat(100));
        assert!(!valid_cosignature_line(vkey, origin, &note, &junk, &peer));
        let huge = format!("— mfa-b.test/witness {}\n", "A".repeat(4000));
        assert!(!valid_cosignature_line(vkey, origin, &note, &huge, &peer));
        let two = format!("{line}{line}");
        assert!(!valid_cosignature_line(vkey, origin, &note, &two, &peer));
    }
}
