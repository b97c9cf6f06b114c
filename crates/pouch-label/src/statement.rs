//! What the security officer signs: the published policy, a person's
//! clearance, its revocation. Statements will be entries of the
//! transparency log, so every sender checks the same ones; clients pin the
//! officer's key, so an administrator (or the server) can neither raise a
//! clearance nor change the policy.
//!
//! The signature covers the exact bytes of the statement's JSON, after a
//! context string of its own (no other Pouch signature can be replayed as
//! one), so there is no canonical form to get wrong: a verifier parses
//! only what it has verified.

use crate::{Clearance, LabelPolicy, PolicyError};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const CONTEXT: &[u8] = b"pouch security-officer statement v1\0";

/// The largest statement a verifier reads (a policy file is a few KiB).
pub const MAX_STATEMENT_BYTES: usize = 256 * 1024;

/// One thing the officer says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Statement {
    /// The officer's own key (Ed25519, hex), signed by that key: what
    /// devices pin, and what signs every statement after it.
    OfficerKey {
        key: String,
        name: String,
        issued_at: i64,
    },
    /// The label policy in force from now on (versions only grow).
    Policy {
        /// This statement's place among the statements about its subject
        /// (1, 2, …): the log entry must carry the same number, so a
        /// statement appended a second time (a revoked clearance replayed
        /// after its revocation) does not verify where it is.
        sequence: u64,
        version: u64,
        /// The policy file, as the officer wrote it.
        policy: String,
        issued_at: i64,
    },
    /// What `address` is cleared for, from now on.
    Clearance {
        sequence: u64,
        address: String,
        policy: String,
        max: String,
        #[serde(default)]
        categories: BTreeMap<String, BTreeSet<String>>,
        #[serde(default)]
        expires: Option<i64>,
        issued_at: i64,
    },
    /// `address` is cleared for nothing from now on.
    Revocation {
        sequence: u64,
        address: String,
        issued_at: i64,
    },
}

/// A statement's bytes and the officer's signature over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// The statement's JSON, exactly as signed.
    pub body: String,
    /// Ed25519 over [`CONTEXT`] and `body`, hex.
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("not signed by the security officer this device trusts (key {0})")]
    WrongSigner(String),
    #[error("the statement is damaged: {0}")]
    Damaged(String),
    #[error("the statement is larger than {} bytes", MAX_STATEMENT_BYTES)]
    TooLarge,
    #[error("the published policy is not valid: {0}")]
    Policy(#[from] PolicyError),
}

fn message(body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(body.as_bytes());
    m
}

/// The officer key's fingerprint as people compare it (SHA-256, hex).
pub fn officer_fingerprint(key: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

impl SignedStatement {
    pub fn sign(statement: &Statement, officer: &SigningKey) -> SignedStatement {
        let body = serde_json::to_string(statement).expect("a statement serialises");
        let signature = officer.sign(&message(&body));
        SignedStatement {
            body,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The statement, if `officer` signed it (strict Ed25519: no
    /// malleable signatures, no weak keys).
    pub fn verify(&self, officer: &VerifyingKey) -> Result<Statement, StatementError> {
        if self.body.len() > MAX_STATEMENT_BYTES {
            return Err(StatementError::TooLarge);
        }
        let wrong = || StatementError::WrongSigner(officer_fingerprint(officer));
        if self.signature.len() != 128 {
            return Err(wrong());
        }
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(wrong)?;
        if officer.is_weak() {
            return Err(wrong());
        }
        officer
            .verify_strict(&message(&self.body), &Signature::from_bytes(&bytes))
            .map_err(|_| wrong())?;
        // Only verified bytes are parsed.
        serde_json::from_str(&self.body).map_err(|e| StatementError::Damaged(e.to_string()))
    }
}

/// The public key an [`Statement::OfficerKey`] card names, if the card is
/// signed by that very key (proof the registrant holds it).
pub fn open_officer_card(
    card: &SignedStatement,
) -> Result<(VerifyingKey, String, i64), StatementError> {
    #[derive(Deserialize)]
    struct Peek {
        key: String,
    }
    if card.body.len() > MAX_STATEMENT_BYTES {
        return Err(StatementError::TooLarge);
    }
    let peek: Peek = serde_json::from_str(&card.body)
        .map_err(|_| StatementError::Damaged("not a security officer's key card".into()))?;
    let key = parse_key(&peek.key)?;
    match card.verify(&key)? {
        Statement::OfficerKey {
            key: named,
            name,
            issued_at,
        } if named == peek.key => Ok((key, name, issued_at)),
        _ => Err(StatementError::Damaged(
            "not a security officer's key card".into(),
        )),
    }
}

/// An officer key from its hex form (64 digits).
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, StatementError> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StatementError::Damaged("an officer key is 64 hex digits".into()))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| StatementError::Damaged("not an Ed25519 public key".into()))?;
    if key.is_weak() {
        return Err(StatementError::Damaged("a weak Ed25519 key".into()));
    }
    Ok(key)
}

impl Statement {
    /// What a clearance or revocation says of its person now (None for the
    /// other statements).
    pub fn clearance_state(&self) -> Option<Clearance> {
        match self {
            Statement::Clearance {
                policy,
                max,
                categories,
                expires,
                ..
            } => Some(Clearance {
                policy: policy.clone(),
                max_classification: max.clone(),
                categories: categories.clone(),
                expires: *expires,
                revoked: false,
            }),
            Statement::Revocation { .. } => Some(Clearance {
                policy: String::new(),
                max_classification: String::new(),
                categories: BTreeMap::new(),
                expires: None,
                revoked: true,
            }),
            _ => None,
        }
    }

    /// Its place among the statements about its subject (None for the
    /// officer's key card, whose place the device's pin stands for).
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Statement::OfficerKey { .. } => None,
            Statement::Policy { sequence, .. }
            | Statement::Clearance { sequence, .. }
            | Statement::Revocation { sequence, .. } => Some(*sequence),
        }
    }

    /// When the officer signed it.
    pub fn issued_at(&self) -> i64 {
        match self {
            Statement::OfficerKey { issued_at, .. }
            | Statement::Policy { issued_at, .. }
            | Statement::Clearance { issued_at, .. }
            | Statement::Revocation { issued_at, .. } => *issued_at,
        }
    }

    /// The log subject the statement is filed under: the officer's key,
    /// the policy, or the person it is about (lower case).
    pub fn subject(&self) -> String {
        match self {
            Statement::OfficerKey { .. } => "officer-key".into(),
            Statement::Policy { .. } => "label-policy".into(),
            Statement::Clearance { address, .. } | Statement::Revocation { address, .. } => {
                canonical(address)
            }
        }
    }

    /// A clearance statement from what the policy made of the officer's
    /// command line.
    pub fn clearance(address: &str, c: &Clearance, sequence: u64, issued_at: i64) -> Statement {
        Statement::Clearance {
            sequence,
            address: address.to_string(),
            policy: c.policy.clone(),
            max: c.max_classification.clone(),
            categories: c.categories.clone(),
            expires: c.expires,
            issued_at,
        }
    }
}

/// What a device knows from the officer's statements it has verified, in
/// the order the log holds them: the newest policy, and each address's
/// latest clearance (or revocation).
#[derive(Clone, Debug, Default)]
pub struct Clearances {
    policy: Option<(u64, LabelPolicy)>,
    by_address: BTreeMap<String, Clearance>,
    /// When the statement now in force for each address was issued: an
    /// older one (a replayed clearance after a revocation) is refused.
    issued: BTreeMap<String, i64>,
}

/// Addresses are compared as Pouch stores them: lower case.
fn canonical(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

impl Clearances {
    /// Takes the next statement in log order. A policy whose version does
    /// not grow is refused (a replayed older policy).
    pub fn apply(&mut self, statement: Statement) -> Result<(), StatementError> {
        match statement {
            // Who signs is the device's business (it pins the key); no
            // clearance changes with it.
            Statement::OfficerKey { .. } => {}
            Statement::Policy {
                version, policy, ..
            } => {
                if let Some((current, _)) = &self.policy
                    && version <= *current
                {
                    return Err(StatementError::Damaged(format!(
                        "policy version {version} after version {current}: an older policy replayed"
                    )));
                }
                self.policy = Some((version, LabelPolicy::from_toml(&policy)?));
            }
            Statement::Clearance {
                address,
                policy,
                max,
                categories,
                expires,
                issued_at,
                ..
            } => {
                let address = self.newer(&address, issued_at)?;
                self.by_address.insert(
                    address,
                    Clearance {
                        policy,
                        max_classification: max,
                        categories,
                        expires,
                        revoked: false,
                    },
                );
            }
            Statement::Revocation {
                address, issued_at, ..
            } => {
                let address = self.newer(&address, issued_at)?;
                let revoked = match self.by_address.remove(&address) {
                    Some(c) => Clearance { revoked: true, ..c },
                    None => Clearance {
                        policy: String::new(),
                        max_classification: String::new(),
                        categories: BTreeMap::new(),
                        expires: None,
                        revoked: true,
                    },
                };
                self.by_address.insert(address, revoked);
            }
        }
        Ok(())
    }

    /// The address, canonical, if a statement issued at `issued_at` is
    /// newer than the one in force for it.
    fn newer(&mut self, address: &str, issued_at: i64) -> Result<String, StatementError> {
        let address = canonical(address);
        if let Some(current) = self.issued.get(&address)
            && issued_at <= *current
        {
            return Err(StatementError::Damaged(format!(
                "a statement for {address} issued at {issued_at}, not after the one in force ({current}): an older statement replayed"
            )));
        }
        self.issued.insert(address.clone(), issued_at);
        Ok(address)
    }

    pub fn policy(&self) -> Option<&LabelPolicy> {
        self.policy.as_ref().map(|(_, p)| p)
    }

    pub fn clearance(&self, address: &str) -> Option<&Clearance> {
        self.by_address.get(&canonical(address))
    }
}
