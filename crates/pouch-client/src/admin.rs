//! An administrator's identity on their own machine: their name, the
//! server they administer (URL and trust anchor), and their Ed25519 key,
//! sealed under their passphrase (`sealed.rs`). One file, `admin.json`, mode 0600, in a
//! directory of its own (`--admin-home`), never beside a device.
//!
//! Nothing here is a bearer secret: a copy of the file without the
//! passphrase signs nothing, and the server keeps only the public key.

use crate::error::{ClientError, Result};
use crate::local::KdfParams;
use crate::net::{Api, ChallengeSigner};
use ed25519_dalek::{Signer, SigningKey};
use pouch_proto::api::{self, AdminRole, AdminSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub const ADMIN_FILE: &str = "admin.json";

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u8,
    name: String,
    server: String,
    fingerprint: String,
    kdf: KdfParams,
    /// Hex: 12-byte nonce, then the sealed 32-byte key.
    sealed_key: String,
}

/// An administrator's identity, opened with the passphrase.
pub struct AdminIdentity {
    pub name: String,
    pub server: String,
    pub fingerprint: String,
    key: SigningKey,
    home: PathBuf,
}

impl AdminIdentity {
    fn file(home: &Path) -> PathBuf {
        home.join(ADMIN_FILE)
    }

    pub fn exists(home: &Path) -> bool {
        Self::file(home).exists()
    }

    /// A new identity with a fresh key; refused if `home` already holds one.
    pub fn create(
        home: &Path,
        name: &str,
        server: &str,
        fingerprint: &str,
        passphrase: &str,
    ) -> Result<Self> {
        if !api::admin_name_ok(name) {
            return Err(ClientError::Invalid(format!(
                "an administrator's name is 1 to {} of a-z, 0-9, '.', '-', '_' (got '{}')",
                api::ADMIN_NAME_MAX,
                name.escape_debug()
            )));
        }
        crate::sealed::prepare_home(home, &Self::file(home), "an administrator identity")?;
        let key = SigningKey::from_bytes(&rand::random());
        let (kdf, sealed_key) = crate::sealed::seal(&key, passphrase, name)?;
        let stored = Stored {
            version: 1,
            name: name.to_string(),
            server: server.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.to_ascii_lowercase(),
            kdf,
            sealed_key,
        };
        crate::sealed::write_private(
            &Self::file(home),
            &serde_json::to_vec_pretty(&stored).expect("serialises"),
        )?;
        Ok(AdminIdentity {
            name: stored.name,
            server: stored.server,
            fingerprint: stored.fingerprint,
            key,
            home: home.to_path_buf(),
        })
    }

    pub fn open(home: &Path, passphrase: &str) -> Result<Self> {
        let path = Self::file(home);
        let stored: Stored = crate::sealed::read_key_file(&path, || {
            format!(
                "no administrator identity in {}: run 'pouch admin init --name NAME' first",
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
        Ok(AdminIdentity {
            name: stored.name,
            server: stored.server,
            fingerprint: stored.fingerprint,
            key,
            home: home.to_path_buf(),
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// What the person reads out to the operator who adds them.
    pub fn key_fingerprint(&self) -> String {
        pouch_proto::sha256_hex(&self.public_key())
    }

    /// A connection to `server` (this identity's own when `None`).
    pub fn api(&self, server: Option<&str>) -> Result<Api> {
        Api::new(server.unwrap_or(&self.server), &self.fingerprint)
    }

    /// Becomes the first administrator with the server's setup secret.
    pub fn bootstrap(&self, api: &Api, setup_secret: &str) -> Result<AdminSummary> {
        api.post_json(
            "/v1/admin/bootstrap",
            &api::BootstrapRequest {
                name: self.name.clone(),
                public_key: self.public_key().to_vec(),
                setup_secret: setup_secret.trim().to_string(),
            },
        )
    }

    /// Signs `api` in as this administrator (renewed as a device's is).
    pub fn sign_in(&self, api: &Api) -> Result<()> {
        let key = self.key.clone();
        let signer: ChallengeSigner =
            Rc::new(move |payload: &[u8]| Ok(key.sign(payload).to_bytes().to_vec()));
        api.sign_in_admin(&self.name, signer)?;
        // The server's anchor changed with the old one's endorsement: pin
        // the new one, as a device does.
        if let Some(new) = api.endorsed_successor()
            && new != self.fingerprint
        {
            let path = Self::file(&self.home);
            let damaged = || ClientError::Local(format!("{} is damaged", path.display()));
            let mut stored: Stored =
                serde_json::from_slice(&std::fs::read(&path)?).map_err(|_| damaged())?;
            stored.fingerprint = new;
            // Written beside, then moved over: never half a key file.
            let next = path.with_extension("json.next");
            let _ = std::fs::remove_file(&next);
            crate::sealed::write_private(
                &next,
                &serde_json::to_vec_pretty(&stored).expect("serialises"),
            )?;
            std::fs::rename(&next, &path)?;
        }
        Ok(())
    }
}

/// The text a new administrator gives the operator who adds them.
pub fn add_command(name: &str, role: AdminRole, public_key: &[u8]) -> String {
    use base64::Engine;
    // `--key=`: a base64url key may begin with '-', which would read as a flag.
    format!(
        "pouch admin add {name} --role {role} --key={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key)
    )
}
