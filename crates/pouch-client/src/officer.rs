//! The security officer's identity on their own machine (never the
//! server's): their name and the Ed25519 key that signs the label policy and
//! people's clearances (`pouch-label`'s statements), sealed under their
//! passphrase (`sealed.rs`). One file, `officer.json`, mode 0600, in a
//! directory of its own (`--officer-home`).
//!
//! Devices will pin this key (from the invite, or by accepting it like a
//! changed account key), so neither an administrator nor the server can
//! raise a clearance or change the policy.

use crate::error::{ClientError, Result};
use crate::local::KdfParams;
use ed25519_dalek::{SigningKey, VerifyingKey};
use pouch_label::statement::{SignedStatement, Statement, officer_fingerprint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const OFFICER_FILE: &str = "officer.json";
/// The officer's public card, for the security administrator.
pub const CARD_FILE: &str = "officer-card.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u8,
    name: String,
    kdf: KdfParams,
    /// Hex: 12-byte nonce, then the sealed 32-byte key.
    sealed_key: String,
}

/// The officer's identity, opened with the passphrase.
pub struct OfficerIdentity {
    pub name: String,
    key: SigningKey,
}

impl OfficerIdentity {
    fn file(home: &Path) -> PathBuf {
        home.join(OFFICER_FILE)
    }

    /// A new identity with a fresh key; refused if `home` already holds one.
    pub fn create(home: &Path, name: &str, passphrase: &str) -> Result<Self> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_ ".contains(c))
        {
            return Err(ClientError::Invalid(format!(
                "an officer's name is 1 to 64 of a-z, 0-9, space, '.', '-', '_' (got '{}')",
                name.escape_debug()
            )));
        }
        crate::sealed::prepare_home(home, &Self::file(home), "a security officer's key")?;
        let key = SigningKey::from_bytes(&rand::random());
        let (kdf, sealed_key) = crate::sealed::seal(&key, passphrase, name)?;
        let stored = Stored {
            version: 1,
            name: name.to_string(),
            kdf,
            sealed_key,
        };
        crate::sealed::write_private(
            &Self::file(home),
            &serde_json::to_vec_pretty(&stored).expect("serialises"),
        )?;
        Ok(OfficerIdentity {
            name: stored.name,
            key,
        })
    }

    pub fn open(home: &Path, passphrase: &str) -> Result<Self> {
        let path = Self::file(home);
        let stored: Stored = crate::sealed::read_key_file(&path, || {
            format!(
                "no security officer's key in {}: run 'pouch security init --name NAME' first",
                home.display()
            )
        })?;
        if stored.version != 1 {
            return Err(ClientError::Local(format!("{} is damaged", path.display())));
        }
        let key = crate::sealed::unseal(
            &stored.kdf,
            &stored.sealed_key,
            passphrase,
            &stored.name,
            &path,
            home,
        )?;
        Ok(OfficerIdentity {
            name: stored.name,
            key,
        })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// What devices will compare (SHA-256 of the public key, hex).
    pub fn fingerprint(&self) -> String {
        officer_fingerprint(&self.public_key())
    }

    pub fn sign(&self, statement: &Statement) -> SignedStatement {
        SignedStatement::sign(statement, &self.key)
    }

    /// The officer's card: the public key and name, signed by the key
    /// itself (a security administrator registers it on the server).
    pub fn card(&self, issued_at: i64) -> SignedStatement {
        self.sign(&Statement::OfficerKey {
            key: hex::encode(self.public_key().as_bytes()),
            name: self.name.clone(),
            issued_at,
        })
    }

    /// Writes the card to `officer-card.json` in `home` (public: no secret in it).
    pub fn write_card(&self, home: &Path, issued_at: i64) -> Result<PathBuf> {
        let path = home.join(CARD_FILE);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&self.card(issued_at)).expect("serialises"),
        )
        .map_err(|e| ClientError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_officers_key_is_sealed_in_a_home_of_its_own() {
        let home = std::env::temp_dir().join(format!("pouch-officer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let made = OfficerIdentity::create(&home, "Security Officer", "a long passphrase").unwrap();
        // The file holds no key in the clear, and only its owner reads it.
        let file = std::fs::read(home.join(OFFICER_FILE)).unwrap();
        let secret_hex = hex::encode(made.key.as_bytes());
        assert!(!String::from_utf8_lossy(&file).contains(&secret_hex));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.join(OFFICER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let opened = OfficerIdentity::open(&home, "a long passphrase").unwrap();
        assert_eq!(opened.fingerprint(), made.fingerprint());
        // What it signs verifies under its key, and under no other.
        let statement = Statement::Revocation {
            sequence: 1,
            address: "bob@mfa.example".into(),
            issued_at: 1,
        };
        let signed = opened.sign(&statement);
        assert_eq!(signed.verify(&made.public_key()).unwrap(), statement);
        assert!(
            signed
                .verify(&SigningKey::from_bytes(&[5; 32]).verifying_key())
                .is_err()
        );
        // A wrong passphrase opens nothing; a second key is not made over the first.
        assert!(matches!(
            OfficerIdentity::open(&home, "wrong"),
            Err(ClientError::WrongPassphrase(_))
        ));
        assert!(OfficerIdentity::create(&home, "Another", "a long passphrase").is_err());
        std::fs::remove_dir_all(&home).unwrap();
    }
}
