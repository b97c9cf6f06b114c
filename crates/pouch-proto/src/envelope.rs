//! The plaintext of every MLS application message Pouch sends.
//!
//! The envelope carries the complete RFC 5322 message, byte for byte as the
//! sender wrote it, either inline or — above [`INLINE_LIMIT`] — as a reference
//! to an encrypted blob (key, hash, size), and its classification label when
//! the domain's label policy is in force.
//!
//! Every envelope also carries its sender's [`ChainLink`]: a counter per
//! conversation and sending device, and the hash of that device's previous
//! envelope there. The server sees neither (they are inside the MLS
//! encryption), so a receiver can tell when the server withheld, reordered
//! or forked a sender's messages — which MLS alone does not show.

use crate::b64;
use serde::{Deserialize, Serialize};

/// Messages up to this size travel inside the MLS message itself.
pub const INLINE_LIMIT: usize = 256 * 1024;

/// Plaintext bytes per encrypted blob chunk.
pub const BLOB_CHUNK_SIZE: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    /// The mail's classification label: STANAG 4774 XML in the canonical
    /// form `pouch-label` writes. Inside the MLS encryption, so the
    /// sender's signature binds it to the content; the server gets an outer
    /// copy on the delivery request, which receivers compare with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The sender's position in this conversation; required on receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLink>,
    pub content: Content,
}

/// A sending device's n-th envelope in a conversation, and the SHA-256 (hex)
/// of its (n-1)-th envelope's bytes (empty for the first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    pub n: u64,
    pub prev: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// The RFC 5322 message itself.
    Inline {
        #[serde(with = "b64")]
        rfc5322: Vec<u8>,
    },
    /// The RFC 5322 message, encrypted in chunks under `key` and stored as a blob.
    Blob(BlobRef),
    /// From one device of an account to a newly approved one: the account signing key.
    AccountKey {
        #[serde(with = "b64")]
        secret: Vec<u8>,
    },
    /// From one device of an account to a newly approved one: its mail store, as a blob.
    History(BlobRef),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub blob_id: String,
    /// A fresh 256-bit ChaCha20-Poly1305 key used for this blob only.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    pub size: u64,
    pub chunk_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the decrypted message is not a Pouch envelope: {0}")]
    Malformed(String),
    #[error("the message uses envelope version {0}, which this Pouch does not know; upgrade Pouch")]
    UnknownVersion(u8),
}

impl Envelope {
    pub const VERSION: u8 = 1;

    pub fn new(content: Content) -> Self {
        Envelope {
            version: Self::VERSION,
            label: None,
            chain: None,
            content,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.version != Self::VERSION {
            return Err(EnvelopeError::UnknownVersion(env.version));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let env = Envelope::new(Content::Inline {
            rfc5322: b"Subject: x\r\n\r\nhi".to_vec(),
        });
        assert_eq!(Envelope::from_bytes(&env.to_bytes()).unwrap(), env);
        assert!(matches!(
            Envelope::from_bytes(b"{}"),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut future = env.clone();
        future.version = 9;
        assert!(matches!(
            Envelope::from_bytes(&future.to_bytes()),
            Err(EnvelopeError::UnknownVersion(9))
        ));
    }
}
