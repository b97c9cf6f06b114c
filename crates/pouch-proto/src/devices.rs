//! Signed device lists: the account's own statement of which devices may
//! receive its mail.
//!
//! Each user has an account signing key (Ed25519) that only the user's
//! devices hold. Every version of the device list is signed with it, names
//! the previous version's hash, and increases the version number, so a
//! server that adds a device, hides a revocation or rolls back a list is
//! caught by anyone who checks (senders before encrypting, the account's own
//! devices on every sync, and — later — the transparency log). The byte
//! string that is signed is kept verbatim (`body`), so verification never
//! depends on re-serialising JSON the same way.

use crate::{Address, DeviceId, b64};
use serde::{Deserialize, Serialize};

/// Domain separation for device-list signatures.
pub const LIST_SIGNING_CONTEXT: &[u8] = b"pouch-device-list-v1\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedDevice {
    pub device_id: DeviceId,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    /// The device's name, in the clear only in memory on the account's own
    /// devices: lists are published with it [`sealed`](Self::sealed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub added_at: i64,
    /// The network address the device asked to join from, as the approving
    /// device saw it; sealed like the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_from: Option<String>,
    /// Name and link address encrypted under a key derived from the account
    /// key, which only the account's own devices hold: other accounts (and
    /// the server) verify the list without learning "Alice phone, Kyiv".
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64::option")]
    pub sealed: Option<Vec<u8>>,
}

/// The content of one version of an account's device list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListBody {
    pub address: Address,
    pub version: u64,
    /// SHA-256 (hex) of the previous version's signed body; `None` for the
    /// first list under this account key.
    pub previous: Option<String>,
    /// The account's Ed25519 public key, which signs this list.
    #[serde(with = "b64")]
    pub account_key: Vec<u8>,
    pub devices: Vec<ListedDevice>,
    pub issued_at: i64,
    /// Why this version exists: "enrolled", "linked", "revoked", "reset".
    pub reason: String,
}

/// A device list as published: the exact signed bytes and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceList {
    /// JSON of a [`DeviceListBody`], exactly as signed.
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceListError {
    #[error("the device list is malformed")]
    Malformed,
    #[error("the device list's signature does not verify with its account key")]
    BadSignature,
}

impl SignedDeviceList {
    /// What the account key signs.
    pub fn signing_payload(body: &[u8]) -> Vec<u8> {
        let mut p = LIST_SIGNING_CONTEXT.to_vec();
        p.extend_from_slice(body);
        p
    }

    /// Parses the body without checking the signature.
    pub fn body_unverified(&self) -> Result<DeviceListBody, DeviceListError> {
        serde_json::from_slice(&self.body).map_err(|_| DeviceListError::Malformed)
    }

    /// SHA-256 (hex) of the signed body: what the next version names as `previous`.
    pub fn hash(&self) -> String {
        crate::sha256_hex(&self.body)
    }
}

impl SignedDeviceList {
    /// Checks the signature against the account key the list names and
    /// returns the body. Whether that account key is the *right* one is the
    /// caller's question (pinning, the transparency log).
    pub fn verify(&self) -> Result<DeviceListBody, DeviceListError> {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let body = self.body_unverified()?;
        let key = VerifyingKey::try_from(body.account_key.as_slice())
            .map_err(|_| DeviceListError::Malformed)?;
        let sig =
            Signature::from_slice(&self.signature).map_err(|_| DeviceListError::BadSignature)?;
        key.verify(&Self::signing_payload(&self.body), &sig)
            .map_err(|_| DeviceListError::BadSignature)?;
        Ok(body)
    }
}

impl DeviceListBody {
    pub fn lists(&self, device_id: &DeviceId, signature_key: &[u8]) -> bool {
        self.devices
            .iter()
            .any(|d| &d.device_id == device_id && d.signature_key == signature_key)
    }
}

/// A short fingerprint of a key for people to compare: 8 groups of 4 hex digits.
pub fn fingerprint(key: &[u8]) -> String {
    let h = crate::sha256_hex(key);
    h.as_bytes()[..32]
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A code two people read to each other to confirm they see the same
/// account keys: 12 digits from both keys, the same on both sides.
pub fn comparison_code(a: &[u8], b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(b"pouch-compare-v1\0");
    h.update(first);
    h.update(second);
    let d = h.finalize();
    let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
    let s = format!("{n:012}");
    format!("{} {} {}", &s[..4], &s[4..8], &s[8..])
}
