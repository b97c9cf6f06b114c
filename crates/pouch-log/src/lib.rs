//! The key-transparency log, without I/O.
//!
//! Every version of every account's device list is an entry of one
//! append-only Merkle tree (RFC 6962 hashing). The server publishes signed
//! checkpoints in the C2SP `tlog-checkpoint` / `signed-note` formats and the
//! C2SP `tlog-tiles` read API, so generic transparency tools can audit it.
//! Clients keep the newest checkpoint they verified, check that each new one
//! is consistent with it, and check that every device list they rely on is
//! included — so a server cannot show different lists to different people
//! without it showing in the tree (and, with witnesses, in their cosignatures).
//!
//! The Merkle and format work is done by Cloudflare's `tlog_tiles` and
//! `signed_note` (ports of Go's `sumdb`); this crate fixes Pouch's entry
//! format and the checks clients apply.
#![forbid(unsafe_code)]

pub mod commitment;
pub mod witness;

pub use commitment::{CommitmentKey, Commitments, Leaf};

use pouch_proto::Address;
use pouch_proto::devices::SignedDeviceList;
use serde::{Deserialize, Serialize};
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

pub use tlog_tiles::Error as TlogError;
pub use tlog_tiles::{
    Checkpoint, Hash, HashReader, RecordProof, Tile, TileHashReader, TileReader, TreeProof,
    check_record, check_tree, prove_record, prove_tree, record_hash, stored_hash_count,
    stored_hash_index, stored_hashes, tree_hash,
};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("malformed log data: {0}")]
    Malformed(String),
    #[error("the checkpoint's signature does not verify with the log's key")]
    BadSignature,
    #[error("the checkpoint is for another log ({0})")]
    WrongOrigin(String),
    #[error("proof does not verify: {0}")]
    BadProof(String),
    #[error("log storage: {0}")]
    Storage(String),
}

/// What a log entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A device-list version published by the account (enrollment, link, revocation).
    DeviceList,
    /// The first list after an administrator reset (a new account key).
    Reset,
    /// An administrator revoked a device (no list: the administrator cannot sign one).
    AdminRevocation,
    /// Which key the log's account commitments use (see [`commitment`]).
    CommitmentKey,
    /// A statement of the domain's security officer: the officer's key,
    /// the label policy, a clearance or its revocation (see [`OfficerEntry`]).
    Officer,
}

/// A statement signed by the domain's security officer, recorded so that
/// every device relies on the same policy and clearances, and none can be
/// changed quietly. The log does not judge the statement (devices verify
/// the signature against the officer key they pinned); it fixes its order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficerEntry {
    pub kind: EntryKind,
    /// What the statement is about: [`OfficerEntry::KEY`],
    /// [`OfficerEntry::POLICY`], or a person's address (clearance and revocation).
    pub subject: String,
    /// 1, 2, … per subject, in log order.
    pub version: u64,
    /// The statement's JSON, exactly as the officer signed it.
    pub body: String,
    /// The officer's signature (hex).
    pub signature: String,
}

impl OfficerEntry {
    /// The subject of the officer's own key.
    pub const KEY: &'static str = "officer-key";
    /// The subject of the label policy.
    pub const POLICY: &'static str = "label-policy";

    pub fn new(subject: &str, version: u64, body: String, signature: String) -> Self {
        OfficerEntry {
            kind: EntryKind::Officer,
            subject: subject.to_string(),
            version,
            body,
            signature,
        }
    }

    /// The subject of `address`'s clearance statements.
    pub fn person(address: &Address) -> String {
        address.as_str().to_string()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an entry serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        let e: OfficerEntry =
            serde_json::from_slice(bytes).map_err(|e| LogError::Malformed(e.to_string()))?;
        if e.kind != EntryKind::Officer {
            return Err(LogError::Malformed("not a security officer's entry".into()));
        }
        Ok(e)
    }
}

/// An administrator's revocation of a device, recorded so it cannot be done quietly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRevocationEntry {
    pub kind: EntryKind,
    pub address: Address,
    pub device_id: pouch_proto::DeviceId,
    pub at: i64,
}

impl AdminRevocationEntry {
    pub fn new(address: Address, device_id: pouch_proto::DeviceId, at: i64) -> Self {
        AdminRevocationEntry {
            kind: EntryKind::AdminRevocation,
            address,
            device_id,
            at,
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an entry serialises")
    }
}

/// Any log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyEntry {
    List(LogEntry),
    AdminRevocation(AdminRevocationEntry),
}

impl AnyEntry {
    pub fn kind(&self) -> EntryKind {
        match self {
            AnyEntry::List(e) => e.kind,
            AnyEntry::AdminRevocation(e) => e.kind,
        }
    }

    /// The list version (0 for an administrator's revocation, which has none).
    pub fn version(&self) -> u64 {
        match self {
            AnyEntry::List(e) => e.version,
            AnyEntry::AdminRevocation(_) => 0,
        }
    }

    pub fn address(&self) -> &Address {
        match self {
            AnyEntry::List(e) => &e.address,
            AnyEntry::AdminRevocation(e) => &e.address,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            AnyEntry::List(e) => e.to_bytes(),
            AnyEntry::AdminRevocation(e) => e.to_bytes(),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        #[derive(Deserialize)]
        struct Kind {
            kind: EntryKind,
        }
        let k: Kind =
            serde_json::from_slice(bytes).map_err(|e| LogError::Malformed(e.to_string()))?;
        Ok(match k.kind {
            EntryKind::AdminRevocation => AnyEntry::AdminRevocation(
                serde_json::from_slice(bytes).map_err(|e| LogError::Malformed(e.to_string()))?,
            ),
            _ => AnyEntry::List(LogEntry::from_bytes(bytes)?),
        })
    }
}

/// One log entry: a device-list version, exactly as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub kind: EntryKind,
    pub address: Address,
    pub version: u64,
    /// SHA-256 (hex) of the signed list body.
    pub list_hash: String,
    pub list: SignedDeviceList,
}

impl LogEntry {
    pub fn for_list(list: &SignedDeviceList) -> Result<Self, LogError> {
        let body = list
            .body_unverified()
            .map_err(|e| LogError::Malformed(e.to_string()))?;
        Ok(LogEntry {
            kind: if body.reason == "reset" {
                EntryKind::Reset
            } else {
                EntryKind::DeviceList
            },
            address: body.address,
            version: body.version,
            list_hash: list.hash(),
            list: list.clone(),
        })
    }

    /// The exact bytes that are hashed into the tree.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a log entry serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        serde_json::from_slice(bytes).map_err(|e| LogError::Malformed(e.to_string()))
    }
}

/// A [`HashReader`] that only records which hashes were asked for: the
/// tlog functions read synchronously, storage is async, so callers first
/// learn the indexes, fetch them, then run the function on [`FetchedHashes`].
#[derive(Default)]
pub struct IndexRecorder(std::cell::RefCell<Vec<u64>>);

impl IndexRecorder {
    pub fn into_indexes(self) -> Vec<u64> {
        self.0.into_inner()
    }
}

impl HashReader for IndexRecorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

/// The indexes of the stored hashes [`stored_hashes`] will read to append record `n`.
pub fn hashes_needed_to_append(n: u64) -> Vec<u64> {
    let r = IndexRecorder::default();
    let _ = stored_hashes(n, b"", &r);
    r.into_indexes()
}

/// The indexes [`tree_hash`] reads for a tree of size `n`.
pub fn hashes_needed_for_root(n: u64) -> Vec<u64> {
    let r = IndexRecorder::default();
    let _ = tree_hash(n, &r);
    r.into_indexes()
}

/// Tiles have height 8 (256 hashes), as C2SP tlog-tiles fixes.
pub const TILE_HEIGHT: u8 = 8;

/// A C2SP tlog-tiles path below `tile/`: a hash tile (level, index, width)
/// or an entry bundle (index, width). Width 256 for full tiles.
#[derive(Debug, PartialEq, Eq)]
pub enum TilePath {
    Hashes { level: u8, index: u64, width: u32 },
    Entries { index: u64, width: u32 },
}

impl TilePath {
    /// Parses `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N written as
    /// `x001/x234/567`.
    pub fn parse(path: &str) -> Option<TilePath> {
        let (level, rest) = path.split_once('/')?;
        let (n_part, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                let w: u32 = w.parse().ok()?;
                if w == 0 || w >= 256 {
                    return None;
                }
                (n, w)
            }
            None => (rest, 256),
        };
        let mut index: u64 = 0;
        let groups: Vec<&str> = n_part.split('/').collect();
        for (i, g) in groups.iter().enumerate() {
            let digits = if i + 1 < groups.len() {
                g.strip_prefix('x')?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            index = index
                .checked_mul(1000)?
                .checked_add(digits.parse::<u64>().ok()?)?;
        }
        if level == "entries" {
            return Some(TilePath::Entries { index, width });
        }
        let level: u8 = level.parse().ok()?;
        (level < 8).then_some(TilePath::Hashes {
            level,
            index,
            width,
        })
    }

    /// The tlog tile for a hash tile.
    pub fn tile(&self) -> Option<Tile> {
        match self {
            TilePath::Hashes {
                level,
                index,
                width,
            } => Some(Tile::new(TILE_HEIGHT, *level, *index, *width, false)),
            TilePath::Entries { .. } => None,
        }
    }
}

/// An entry bundle: each entry as a big-endian u16 length and its bytes.
pub fn entry_bundle(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// A [`HashReader`] over hashes already fetched (index → hash).
pub struct FetchedHashes(pub std::collections::HashMap<u64, Hash>);

impl HashReader for FetchedHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// The log's checkpoint signing key, as a signed-note key pair.
pub struct LogKey {
    signer: StandardSigner,
    pub verifier_key: String,
    /// The key of the log's account commitments, derived from the signing key.
    pub commitment: CommitmentKey,
}

impl LogKey {
    /// A fresh key pair; returns the private key string to keep and the key.
    pub fn generate(origin: &str) -> (String, LogKey) {
        let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, origin);
        let key = LogKey::from_private(&skey, &vkey).expect("a fresh key parses");
        (skey, key)
    }

    pub fn from_private(skey: &str, vkey: &str) -> Result<LogKey, LogError> {
        let signer = StandardSigner::new(skey)
            .map_err(|e| LogError::Malformed(format!("log key: {e:?}")))?;
        Ok(LogKey {
            signer,
            verifier_key: vkey.to_string(),
            commitment: CommitmentKey::derive(skey),
        })
    }

    /// A signed checkpoint (C2SP tlog-checkpoint in a signed note).
    pub fn sign_checkpoint(
        &self,
        origin: &str,
        size: u64,
        root: Hash,
    ) -> Result<Vec<u8>, LogError> {
        let cp = Checkpoint::new(origin, size, root, "")
            .map_err(|e| LogError::Malformed(e.to_string()))?;
        let mut note =
            Note::new(&cp.to_bytes(), &[]).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| LogError::Malformed(format!("{e:?}")))?;
        Ok(note.to_bytes())
    }
}

/// Checks that `vkey` is a checkpoint verifier key (a C2SP signed-note
/// Ed25519 key) named `origin`, as a log's key must be.
pub fn check_log_key(vkey: &str, origin: &str) -> Result<(), LogError> {
    StandardVerifier::new(vkey.trim())
        .map_err(|_| LogError::Malformed("not a log verifier key (NAME+ID+KEY)".into()))?;
    let name = vkey.trim().split('+').next().unwrap_or_default();
    if name != origin {
        return Err(LogError::Malformed(format!(
            "the key is named {name}, not {origin}"
        )));
    }
    Ok(())
}

/// Verifies a signed checkpoint from the log with verifier key `vkey`.
pub fn open_checkpoint(note: &[u8], vkey: &str, origin: &str) -> Result<Checkpoint, LogError> {
    let verifier =
        StandardVerifier::new(vkey).map_err(|e| LogError::Malformed(format!("log key: {e:?}")))?;
    let parsed = Note::from_bytes(note).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
    let (verified, _unverified) = parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|_| LogError::BadSignature)?;
    if verified.is_empty() {
        return Err(LogError::BadSignature);
    }
    let cp =
        Checkpoint::from_bytes(parsed.text()).map_err(|e| LogError::Malformed(e.to_string()))?;
    if cp.origin() != origin {
        return Err(LogError::WrongOrigin(cp.origin().to_string()));
    }
    Ok(cp)
}

/// Checks that `entry` is record `index` of the tree (`size`, `root`).
pub fn verify_inclusion(
    proof: &[Hash],
    size: u64,
    root: Hash,
    index: u64,
    entry: &[u8],
) -> Result<(), LogError> {
    check_record(&proof.to_vec(), size, root, index, record_hash(entry))
        .map_err(|e| LogError::BadProof(e.to_string()))
}

/// Checks that the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`).
pub fn verify_consistency(
    proof: &[Hash],
    new_size: u64,
    new_root: Hash,
    old_size: u64,
    old_root: Hash,
) -> Result<(), LogError> {
    if old_size == new_size {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(LogError::BadProof("same size, different roots".into()))
        };
    }
    check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root)
        .map_err(|e| LogError::BadProof(e.to_string()))
}

/// Hashes as base64 for JSON.
pub fn hash_to_b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

pub fn hash_from_b64(s: &str) -> Result<Hash, LogError> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| LogError::Malformed("hash".into()))?;
    Ok(Hash(
        v.try_into()
            .map_err(|_| LogError::Malformed("hash length".into()))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An in-memory log built with this crate's functions.
    fn build(n: u64) -> FetchedHashes {
        let mut store = FetchedHashes(HashMap::new());
        for i in 0..n {
            let data = format!("entry {i}");
            let new = stored_hashes(i, data.as_bytes(), &store).unwrap();
            let base = stored_hash_index(0, i);
            for (k, h) in new.into_iter().enumerate() {
                store.0.insert(base + k as u64, h);
            }
        }
        store
    }

    #[test]
    fn needed_indexes_suffice_for_appends_and_roots() {
        let store = build(300);
        for n in [1u64, 2, 3, 7, 8, 255, 256, 257, 299] {
            let idx = hashes_needed_for_root(n);
            let sub = FetchedHashes(idx.iter().map(|i| (*i, store.0[i])).collect());
            assert_eq!(tree_hash(n, &sub).unwrap(), tree_hash(n, &store).unwrap());
        }
        let idx = hashes_needed_to_append(299);
        let sub = FetchedHashes(idx.iter().map(|i| (*i, store.0[i])).collect());
        assert!(stored_hashes(299, b"x", &sub).is_ok());
    }

    #[test]
    fn witnesses_cosign_only_consistent_checkpoints() {
        use witness::*;
        let store = build(50);
        let (_, log) = LogKey::generate("pouch.local/log");
        let wkey = WitnessKey::new("witness.example", &[5u8; 32]);
        let vkey = wkey.verifier_key();
        let cp20 = log
            .sign_checkpoint("pouch.local/log", 20, tree_hash(20, &store).unwrap())
            .unwrap();
        let cp50 = log
            .sign_checkpoint("pouch.local/log", 50, tree_hash(50, &store).unwrap())
            .unwrap();

        // First contact: no proof needed.
        let first = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: cp20.clone(),
        };
        let first = AddCheckpoint::decode(&first.encode()).unwrap();
        let WitnessAnswer::Cosign { size, root, line } = witness_decide(
            &first,
            &log.verifier_key,
            "pouch.local/log",
            None,
            &wkey,
            1000,
        ) else {
            panic!("not cosigned")
        };
        assert_eq!(size, 20);
        let cosigned = add_cosignatures(&cp20, &[line]).unwrap();
        let opened = open_cosigned(
            &cosigned,
            &log.verifier_key,
            "pouch.local/log",
            std::slice::from_ref(&vkey),
        )
        .unwrap();
        assert_eq!(
            opened.cosignatures,
            vec![("witness.example".to_string(), 1000)]
        );
        // A stale idea of the witness's state gets 409 with its size.
        let stale = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: cp50.clone(),
        };
        assert_eq!(
            witness_decide(
                &stale,
                &log.verifier_key,
                "pouch.local/log",
                Some((size, root)),
                &wkey,
                1001
            ),
            WitnessAnswer::Conflict { current: 20 }
        );
        // With a consistency proof it cosigns the larger tree.
        let proof = prove_tree(50, 20, &store).unwrap();
        let next = AddCheckpoint {
            old_size: 20,
            proof: proof.clone(),
            note: cp50.clone(),
        };
        assert!(matches!(
            witness_decide(
                &next,
                &log.verifier_key,
                "pouch.local/log",
                Some((size, root)),
                &wkey,
                1002
            ),
            WitnessAnswer::Cosign { size: 50, .. }
        ));
        // A different view (another tree of 50) is refused.
        let mut other_root = tree_hash(50, &store).unwrap();
        other_root.0[0] ^= 1;
        let fork = log
            .sign_checkpoint("pouch.local/log", 50, other_root)
            .unwrap();
        let forked = AddCheckpoint {
            old_size: 20,
            proof,
            note: fork,
        };
        assert!(matches!(
            witness_decide(
                &forked,
                &log.verifier_key,
                "pouch.local/log",
                Some((size, root)),
                &wkey,
                1003
            ),
            WitnessAnswer::Refused(witness::Refusal::Inconsistent(_))
        ));
        // Once 50 is witnessed, the log's other tree of 50 is a split view
        // (self-proving: two signed roots for one size); an old checkpoint
        // replayed is only stale.
        let stored50 = Some((50, tree_hash(50, &store).unwrap()));
        let same_size = AddCheckpoint {
            old_size: 50,
            proof: vec![],
            note: forked.note.clone(),
        };
        assert!(matches!(
            witness_decide(
                &same_size,
                &log.verifier_key,
                "pouch.local/log",
                stored50,
                &wkey,
                1004
            ),
            WitnessAnswer::Refused(witness::Refusal::SplitView(_))
        ));
        let replay = AddCheckpoint {
            old_size: 50,
            proof: vec![],
            note: cp20.clone(),
        };
        assert!(matches!(
            witness_decide(
                &replay,
                &log.verifier_key,
                "pouch.local/log",
                stored50,
                &wkey,
                1005
            ),
            WitnessAnswer::Refused(witness::Refusal::Stale(_))
        ));
        // Unknown witnesses' cosignatures do not count.
        let other_w = WitnessKey::new("witness.example", &[6u8; 32]).verifier_key();
        assert!(
            open_cosigned(&cosigned, &log.verifier_key, "pouch.local/log", &[other_w])
                .unwrap()
                .cosignatures
                .is_empty()
        );
    }

    #[test]
    fn tile_paths_parse_as_c2sp_writes_them() {
        assert_eq!(
            TilePath::parse("0/000"),
            Some(TilePath::Hashes {
                level: 0,
                index: 0,
                width: 256
            })
        );
        assert_eq!(
            TilePath::parse("1/x001/234.p/7"),
            Some(TilePath::Hashes {
                level: 1,
                index: 1234,
                width: 7
            })
        );
        assert_eq!(
            TilePath::parse("entries/x002/x000/005"),
            Some(TilePath::Entries {
                index: 2_000_005,
                width: 256
            })
        );
        for bad in [
            "",
            "0",
            "0/12",
            "0/1234",
            "9/000",
            "0/000.p/0",
            "0/000.p/256",
            "0/001/002",
            "entries/x01/000",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn checkpoints_sign_and_verify_and_proofs_check() {
        let store = build(100);
        let (_, key) = LogKey::generate("pouch.local/log");
        let root = tree_hash(100, &store).unwrap();
        let note = key.sign_checkpoint("pouch.local/log", 100, root).unwrap();
        let cp = open_checkpoint(&note, &key.verifier_key, "pouch.local/log").unwrap();
        assert_eq!(cp.size(), 100);
        assert!(matches!(
            open_checkpoint(&note, &key.verifier_key, "other/log"),
            Err(LogError::WrongOrigin(_))
        ));
        let (_, other) = LogKey::generate("pouch.local/log");
        assert!(matches!(
            open_checkpoint(&note, &other.verifier_key, "pouch.local/log"),
            Err(LogError::BadSignature)
        ));

        let proof = prove_record(100, 42, &store).unwrap();
        verify_inclusion(&proof, 100, root, 42, b"entry 42").unwrap();
        assert!(verify_inclusion(&proof, 100, root, 42, b"entry 43").is_err());
        let old_root = tree_hash(60, &store).unwrap();
        let cproof = prove_tree(100, 60, &store).unwrap();
        verify_consistency(&cproof, 100, root, 60, old_root).unwrap();
        assert!(
            verify_consistency(&cproof, 100, root, 60, tree_hash(59, &store).unwrap()).is_err()
        );
    }
}
