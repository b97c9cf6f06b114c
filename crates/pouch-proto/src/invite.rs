//! The one-time enrollment invite: everything a new device needs — where the
//! server is, which certificate to pin, which address, and the secret.
//!
//! Text form: `pouch-invite:` followed by unpadded base64url of a JSON object,
//! so it survives being pasted through chat, mail or a terminal.

use crate::Address;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "pouch-invite:";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub version: u8,
    pub server: String,
    /// SHA-256 of the server certificate (DER), hex.
    pub fingerprint: String,
    pub address: Address,
    /// base64url of the secret.
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this is not a valid Pouch invite ({0}); copy the whole line starting with 'pouch-invite:' that your administrator sent"
)]
pub struct InviteError(&'static str);

impl Invite {
    pub fn new(server: &str, fingerprint: &str, address: Address, secret: &[u8]) -> Self {
        Invite {
            version: 1,
            server: server.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.to_ascii_lowercase(),
            address,
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("an invite always serialises");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(text: &str) -> Result<Self, InviteError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(InviteError("missing prefix"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InviteError("damaged encoding"))?;
        let invite: Invite =
            serde_json::from_slice(&json).map_err(|_| InviteError("damaged contents"))?;
        if invite.version != 1 {
            return Err(InviteError("unknown version"));
        }
        if invite.fingerprint.len() != 64 || hex::decode(&invite.fingerprint).is_err() {
            return Err(InviteError("bad certificate fingerprint"));
        }
        invite.secret_bytes()?;
        Ok(invite)
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, InviteError> {
        URL_SAFE_NO_PAD
            .decode(&self.secret)
            .map_err(|_| InviteError("damaged secret"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_round_trips_and_damage_is_reported() {
        let inv = Invite::new(
            "https://127.0.0.1:8443/",
            &"AB".repeat(32),
            Address::parse("bob@pouch.local").unwrap(),
            &[7u8; 32],
        );
        let text = inv.encode();
        let back = Invite::decode(&text).unwrap();
        assert_eq!(back, inv);
        assert_eq!(back.server, "https://127.0.0.1:8443");
        assert_eq!(back.secret_bytes().unwrap(), vec![7u8; 32]);
        assert!(Invite::decode("hello").is_err());
        assert!(Invite::decode(&text[..text.len() - 5]).is_err());
    }
}
