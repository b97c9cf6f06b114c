//! Pouch's wire vocabulary: identifiers, the HTTPS API's request and response
//! bodies, the enrollment invite, and the envelope that travels *inside* MLS.
//!
//! This crate performs no I/O and knows no cryptography beyond hashing, so the
//! server, the client and tests can all agree on one definition of every byte
//! that crosses a boundary. What the server can see is exactly what is in
//! [`api`]; everything a person wrote is inside [`envelope::Envelope`], which
//! the server only ever holds as an MLS ciphertext.
#![forbid(unsafe_code)]

pub mod api;
pub mod devices;
pub mod envelope;
pub mod ids;
pub mod invite;
pub mod ocsf;
pub mod security;

pub use ids::{Address, AddressError, DeviceId, GroupId, HUB_NONCE_LEN, hub_group_id};

/// The MLS ciphersuite Pouch uses unless the server is configured otherwise:
/// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (X-Wing = ML-KEM-768 + X25519),
/// because a state adversary records traffic today to decrypt it later.
pub const DEFAULT_CIPHERSUITE: u16 = 0x004D;

/// The most recipients one mail may have (To and Cc together; each Bcc is
/// a mail of its own). A claim for key packages may name them all plus the
/// sender, whose other devices get the conversation too.
pub const MAX_RECIPIENTS: usize = 1000;

/// Base64 (standard alphabet, padded) helpers for `#[serde(with = ...)]`.
pub mod b64 {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }
    pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(text)
    }
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(D::Error::custom)
    }

    /// The same for `Vec<Vec<u8>>`.
    pub mod list {
        use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};
        pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&super::encode(item))?;
            }
            seq.end()
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let texts = Vec::<String>::deserialize(d)?;
            texts
                .iter()
                .map(|t| super::decode(t).map_err(D::Error::custom))
                .collect()
        }
    }

    /// The same for `Option<Vec<u8>>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};
        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(b) => s.serialize_some(&super::encode(b)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| super::decode(&t).map_err(D::Error::custom))
                .transpose()
        }
    }
}

/// SHA-256, hex-encoded lower case.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
