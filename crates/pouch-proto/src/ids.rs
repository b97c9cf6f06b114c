//! Identifiers. Addresses carry their domain from day one: federation between
//! ministries will route on it, so nothing may assume a single domain.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A mail address `local@domain`, normalised to lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a valid address: use the form local@domain, e.g. alice@pouch.local")]
pub struct AddressError(pub String);

impl Address {
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let text = text.trim();
        let bad = || AddressError(text.to_string());
        let (local, domain) = text.split_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        let domain_ok = !domain.is_empty()
            && domain.len() <= 253
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return Err(bad());
        }
        Ok(Address(text.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Address::parse(&value)
    }
}
impl From<Address> for String {
    fn from(a: Address) -> String {
        a.0
    }
}
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device, as named by the server at enrollment: 16 random bytes in hex.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An MLS group (one per conversation), chosen at random by its creator; hex on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl GroupId {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        GroupId(hex::encode(bytes))
    }
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.0).ok()
    }
    /// A group id is 16 to 64 bytes of hex; anything else is refused at the edge.
    pub fn is_well_formed(&self) -> bool {
        (32..=128).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// The length of a hub nonce ([`hub_group_id`]): 16 random bytes.
pub const HUB_NONCE_LEN: usize = 16;

/// The id of a conversation hosted by `hub` (its creator's domain): the
/// SHA-256 of the domain and a random nonce the creator chose. Bound to its
/// hub this way, a conversation's id cannot be claimed by another server: a
/// follower takes the first Welcome into a conversation it does not know
/// only from the peer whose domain, with the nonce, gives that id.
pub fn hub_group_id(hub: &str, nonce: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    // A domain as DNS compares it (however a config file spelled it).
    let hub = hub.trim_end_matches('.').to_ascii_lowercase();
    let mut h = sha2::Sha256::new();
    h.update(b"pouch-hub-group-v1\0");
    h.update(hub.as_bytes());
    h.update(b"\0");
    h.update(nonce);
    h.finalize().to_vec()
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_validated() {
        assert_eq!(
            Address::parse(" Alice@Pouch.Local ").unwrap().as_str(),
            "alice@pouch.local"
        );
        assert_eq!(
            Address::parse("a.b+c@mfa.example.org").unwrap().domain(),
            "mfa.example.org"
        );
        for bad in [
            "", "alice", "@x", "alice@", "al ice@x", "a@.x", "a@x.", "a@x..y", "a@b@c",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
