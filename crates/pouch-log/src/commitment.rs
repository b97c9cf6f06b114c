//! What the public log holds about an account: a commitment, not a name.
//!
//! The log must be auditable by anyone (consistency, append-only, one view
//! for all), yet a ministry's directory — who has which devices, linked from
//! where — is for its own staff only. So each leaf of the tree, which is what
//! the public tiles serve, records only
//!
//! - `account`: HMAC-SHA256 of the address under the log's *commitment key*,
//! - the list `version` and the entry's `kind`,
//! - `entry_hash`: the SHA-256 of the full entry (the signed device list, or
//!   the administrator's revocation), which the server serves to its signed-in
//!   devices beside the proof.
//!
//! This is the keyed-hash form of the commitments CONIKS and the key
//! transparency systems of Signal and WhatsApp publish. The commitment key is
//! given to this server's signed-in devices (who may look up any account's
//! list anyway), never to the public; its SHA-256 is the log's first
//! [`CommitmentKeyLeaf`], so the server cannot give different devices different
//! keys without it showing in the tree. A device therefore checks, for every
//! list it relies on, that the leaf commits to that address and to exactly
//! the entry it was served; an outside auditor checks the tree and the leaf
//! structure without learning a single address.
//!
//! Logs begun before commitments keep their first entries in the old, named
//! form (an append-only log cannot be rewritten); leaves before the
//! commitment-key leaf may be [`Leaf::Named`], none after it.

use crate::{AnyEntry, EntryKind, LogError, OfficerEntry};
use hmac::{Hmac, Mac};
use pouch_proto::Address;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The log's commitment key: 32 secret bytes, derived from the log's signing
/// key so that protecting that key protects this one.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CommitmentKey([u8; 32]);

impl std::fmt::Debug for CommitmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitmentKey(…)")
    }
}

impl CommitmentKey {
    /// Derives the key from the log's private signing key (signed-note form).
    pub fn derive(log_private_key: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(log_private_key.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"pouch/log-commitment-key/v1");
        CommitmentKey(mac.finalize().into_bytes().into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        Ok(CommitmentKey(bytes.try_into().map_err(|_| {
            LogError::Malformed("a commitment key is 32 bytes".into())
        })?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The account commitment: base64 of HMAC-SHA256(key, address).
    pub fn commit(&self, address: &Address) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(address.as_str().as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    /// Hex SHA-256 of the key: what the log's commitment-key leaf records.
    pub fn key_hash(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }

    /// The commitment-key leaf for this key.
    pub fn leaf(&self) -> Vec<u8> {
        serde_json::to_vec(&CommitmentKeyLeaf {
            kind: EntryKind::CommitmentKey,
            key_hash: self.key_hash(),
        })
        .expect("a leaf serialises")
    }

    /// The leaf committing to `entry` (the full entry's exact bytes) of `address`.
    pub fn commit_entry(
        &self,
        kind: EntryKind,
        address: &Address,
        version: u64,
        entry: &[u8],
    ) -> Vec<u8> {
        serde_json::to_vec(&CommittedLeaf {
            kind,
            account: self.commit(address),
            version,
            entry_hash: hex::encode(Sha256::digest(entry)),
        })
        .expect("a leaf serialises")
    }
}

impl CommitmentKey {
    /// The commitment for the security officer's statements about
    /// `subject` (domain-separated from account commitments: no address
    /// commits to the same value).
    pub fn commit_officer(&self, subject: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"officer\0");
        mac.update(subject.as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    /// The leaf committing to an officer's statement (the entry's exact bytes).
    pub fn commit_officer_entry(&self, entry: &OfficerEntry) -> Vec<u8> {
        serde_json::to_vec(&CommittedLeaf {
            kind: EntryKind::Officer,
            account: self.commit_officer(&entry.subject),
            version: entry.version,
            entry_hash: hex::encode(Sha256::digest(entry.to_bytes())),
        })
        .expect("a leaf serialises")
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The first leaf of a log with commitments: which key its commitments use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitmentKeyLeaf {
    pub kind: EntryKind,
    /// Hex SHA-256 of the commitment key.
    pub key_hash: String,
}

/// A leaf about one account, without its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommittedLeaf {
    pub kind: EntryKind,
    /// Base64 HMAC-SHA256 of the address under the commitment key.
    pub account: String,
    /// The device-list version (0 for an administrator's revocation).
    pub version: u64,
    /// Hex SHA-256 of the full entry.
    pub entry_hash: String,
}

/// Any leaf of the tree, as the public tiles serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// An entry from before commitments, with the address in the clear.
    Named(AnyEntry),
    CommitmentKey(CommitmentKeyLeaf),
    Committed(CommittedLeaf),
}

impl Leaf {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        #[derive(Deserialize)]
        struct Probe {
            kind: EntryKind,
            #[serde(default)]
            account: Option<serde::de::IgnoredAny>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| LogError::Malformed(e.to_string()))?;
        let malformed = |e: serde_json::Error| LogError::Malformed(e.to_string());
        Ok(match (probe.kind, probe.account) {
            (EntryKind::CommitmentKey, _) => {
                Leaf::CommitmentKey(serde_json::from_slice(bytes).map_err(malformed)?)
            }
            (_, Some(_)) => Leaf::Committed(serde_json::from_slice(bytes).map_err(malformed)?),
            (_, None) => Leaf::Named(AnyEntry::from_bytes(bytes)?),
        })
    }
}

/// Where a device stands on the log's commitments: the key, and the index of
/// its leaf (named leaves are valid only before it).
#[derive(Clone, Debug)]
pub struct Commitments {
    pub key: CommitmentKey,
    pub key_index: u64,
}

impl Commitments {
    /// Opens leaf `index` about `address`, given the full entry the server
    /// served with it: checks that the leaf commits to exactly that address,
    /// version and entry, and returns the entry.
    pub fn open(
        &self,
        index: u64,
        leaf: &[u8],
        full: &[u8],
        address: &Address,
    ) -> Result<AnyEntry, LogError> {
        let mismatch = |what: &str| LogError::BadProof(format!("log entry {index}: {what}"));
        let entry = match Leaf::from_bytes(leaf)? {
            Leaf::Named(entry) => {
                if index >= self.key_index {
                    return Err(mismatch(
                        "a named entry after the log began to hold commitments",
                    ));
                }
                entry
            }
            Leaf::CommitmentKey(_) => return Err(mismatch("not an account's entry")),
            Leaf::Committed(c) => {
                if index <= self.key_index {
                    return Err(mismatch("a commitment before the commitment key"));
                }
                if c.account != self.key.commit(address) {
                    return Err(mismatch("the leaf is not about this account"));
                }
                if c.entry_hash != hex::encode(Sha256::digest(full)) {
                    return Err(mismatch(
                        "the served entry is not the one the leaf commits to",
                    ));
                }
                let entry = AnyEntry::from_bytes(full)?;
                if entry.kind() != c.kind || entry.version() != c.version {
                    return Err(mismatch(
                        "the leaf's kind or version differs from the entry's",
                    ));
                }
                entry
            }
        };
        if entry.address() != address {
            return Err(mismatch("the entry is about another account"));
        }
        Ok(entry)
    }
}

impl Commitments {
    /// Opens leaf `index` as the officer's statement about `subject`, given
    /// the full entry served with it (as [`Commitments::open`] for accounts).
    pub fn open_officer(
        &self,
        index: u64,
        leaf: &[u8],
        full: &[u8],
        subject: &str,
    ) -> Result<OfficerEntry, LogError> {
        let mismatch = |what: &str| LogError::BadProof(format!("log entry {index}: {what}"));
        let Leaf::Committed(c) = Leaf::from_bytes(leaf)? else {
            return Err(mismatch("not a security officer's statement"));
        };
        if index <= self.key_index {
            return Err(mismatch("a commitment before the commitment key"));
        }
        if c.kind != EntryKind::Officer || c.account != self.key.commit_officer(subject) {
            return Err(mismatch("the leaf is not about this subject"));
        }
        if c.entry_hash != hex::encode(Sha256::digest(full)) {
            return Err(mismatch(
                "the served entry is not the one the leaf commits to",
            ));
        }
        let entry = OfficerEntry::from_bytes(full)?;
        if entry.subject != subject || entry.version != c.version {
            return Err(mismatch(
                "the entry's subject or version differs from the leaf's",
            ));
        }
        Ok(entry)
    }
}

/// What anyone can check of the leaves without the commitment key, walking
/// the log in order: one commitment key, no named leaf after it and no
/// commitment before it, well-formed hashes, and each account commitment's
/// list versions strictly increasing.
#[derive(Default, Debug)]
pub struct StructureAudit {
    pub key_index: Option<u64>,
    /// Account commitment → its newest device-list version so far.
    pub committed: std::collections::HashMap<String, u64>,
    pub problems: Vec<String>,
}

impl StructureAudit {
    /// Takes leaf `index` (the next in order); returns it parsed, if it parses.
    pub fn add(&mut self, index: u64, leaf: &[u8]) -> Option<Leaf> {
        let parsed = match Leaf::from_bytes(leaf) {
            Ok(parsed) => parsed,
            Err(_) => {
                self.problems.push(format!("entry {index}: malformed"));
                return None;
            }
        };
        match &parsed {
            Leaf::CommitmentKey(_) => {
                if self.key_index.is_some() {
                    self.problems.push(format!(
                        "entry {index}: a second commitment key (devices given it would check commitments under a key of the server's choosing)"
                    ));
                } else {
                    self.key_index = Some(index);
                }
            }
            Leaf::Named(_) if self.key_index.is_some() => self.problems.push(format!(
                "entry {index}: names an account after the log began to hold commitments"
            )),
            Leaf::Named(_) => {}
            Leaf::Committed(c) => {
                let last = self.committed.entry(c.account.clone()).or_insert(0);
                if self.key_index.is_none() {
                    self.problems.push(format!(
                        "entry {index}: a commitment before the log's commitment key"
                    ));
                } else if c.entry_hash.len() != 64
                    || !c.entry_hash.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    self.problems
                        .push(format!("entry {index}: a malformed entry hash"));
                } else if c.kind != EntryKind::AdminRevocation {
                    if c.version <= *last {
                        self.problems.push(format!(
                            "entry {index}: device-list version {} of an account does not follow its version {}",
                            c.version, *last
                        ));
                    }
                    *last = c.version.max(*last);
                }
            }
        }
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AdminRevocationEntry;

    fn key() -> CommitmentKey {
        CommitmentKey::derive("PRIVATE+KEY+pouch.local/log+00000000+AAAA")
    }

    #[test]
    fn a_leaf_names_no_one_and_opens_only_for_its_account_and_entry() {
        let alice = Address::parse("alice@pouch.local").unwrap();
        let bob = Address::parse("bob@pouch.local").unwrap();
        let entry = AdminRevocationEntry::new(alice.clone(), pouch_proto::DeviceId("d1".into()), 7)
            .to_bytes();
        let k = key();
        let leaf = k.commit_entry(EntryKind::AdminRevocation, &alice, 0, &entry);
        assert!(!String::from_utf8_lossy(&leaf).contains("alice"));
        let c = Commitments {
            key: k.clone(),
            key_index: 0,
        };
        let opened = c.open(3, &leaf, &entry, &alice).unwrap();
        assert_eq!(opened.address(), &alice);
        // Another account, another entry, a position before the key: refused.
        assert!(c.open(3, &leaf, &entry, &bob).is_err());
        let other = AdminRevocationEntry::new(alice.clone(), pouch_proto::DeviceId("d2".into()), 7)
            .to_bytes();
        assert!(c.open(3, &leaf, &other, &alice).is_err());
        assert!(c.open(0, &leaf, &entry, &alice).is_err());
        // A named leaf is valid only before the commitment key.
        assert!(c.open(3, &entry, &[], &alice).is_err());
        let before = Commitments {
            key: k.clone(),
            key_index: 5,
        };
        assert_eq!(
            before.open(3, &entry, &[], &alice).unwrap().address(),
            &alice
        );
        // Another key gives another commitment.
        let other_key = CommitmentKey::derive("another");
        assert_ne!(other_key.commit(&alice), k.commit(&alice));
        assert!(matches!(
            Leaf::from_bytes(&k.leaf()).unwrap(),
            Leaf::CommitmentKey(l) if l.key_hash == k.key_hash()
        ));
    }

    #[test]
    fn an_officer_leaf_opens_only_for_its_subject_and_never_as_an_account() {
        let k = key();
        let c = Commitments {
            key: k.clone(),
            key_index: 0,
        };
        let entry = OfficerEntry::new(OfficerEntry::POLICY, 1, "{}".into(), "00".into());
        let leaf = k.commit_officer_entry(&entry);
        let full = entry.to_bytes();
        assert_eq!(
            c.open_officer(2, &leaf, &full, OfficerEntry::POLICY)
                .unwrap(),
            entry
        );
        assert!(c.open_officer(2, &leaf, &full, OfficerEntry::KEY).is_err());
        assert!(
            c.open_officer(0, &leaf, &full, OfficerEntry::POLICY)
                .is_err()
        );
        let other = OfficerEntry::new(OfficerEntry::POLICY, 2, "{}".into(), "00".into());
        assert!(
            c.open_officer(2, &leaf, &other.to_bytes(), OfficerEntry::POLICY)
                .is_err()
        );
        // A person's clearance subject is not their account.
        let alice = Address::parse("alice@pouch.local").unwrap();
        assert_ne!(
            k.commit_officer(&OfficerEntry::person(&alice)),
            k.commit(&alice)
        );
        assert!(c.open(2, &leaf, &full, &alice).is_err());
    }

    #[test]
    fn the_public_audit_catches_what_it_can_see_without_names() {
        let alice = Address::parse("alice@pouch.local").unwrap();
        let named = AdminRevocationEntry::new(alice.clone(), pouch_proto::DeviceId("d".into()), 1)
            .to_bytes();
        let k = key();
        let v = |version: u64| k.commit_entry(EntryKind::DeviceList, &alice, version, b"list");
        // A sound log: named leaves, the key, then commitments in order.
        let mut sound = StructureAudit::default();
        for (i, leaf) in [named.clone(), k.leaf(), v(1), v(2)].iter().enumerate() {
            assert!(sound.add(i as u64, leaf).is_some());
        }
        assert!(sound.problems.is_empty(), "{:?}", sound.problems);
        assert_eq!((sound.key_index, sound.committed.len()), (Some(1), 1));
        // Each way a server could bend it, caught.
        let cases: [(&str, Vec<Vec<u8>>); 5] = [
            (
                "second commitment key",
                vec![k.leaf(), CommitmentKey::derive("x").leaf()],
            ),
            ("names an account after", vec![k.leaf(), named.clone()]),
            ("a commitment before", vec![v(1), k.leaf()]),
            ("does not follow", vec![k.leaf(), v(2), v(2)]),
            ("malformed", vec![k.leaf(), b"{}".to_vec()]),
        ];
        for (expected, leaves) in cases {
            let mut audit = StructureAudit::default();
            for (i, leaf) in leaves.iter().enumerate() {
                audit.add(i as u64, leaf);
            }
            assert!(
                audit.problems.iter().any(|p| p.contains(expected)),
                "{expected}: {:?}",
                audit.problems
            );
        }
    }
}
