//! An administrator's identity on their own machine: their name, the
//! server they administer (URL and trust anchor), and their Ed25519 key,
//! sealed under their passphrase (Argon2id, then ChaCha20-Poly1305 with the
//! name as associated data). One file, `admin.json`, mode 0600, in a
//! directory of its own (`--admin-home`), never beside a device.
//!
//! Nothing here is a bearer secret: a copy of the file without the
//! passphrase signs nothing, and the server keeps only the public key.

use crate::error::{ClientError, Result};
use crate::local::KdfParams;
use crate::net::{Api, ChallengeSigner};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer, SigningKey};
use pouch_proto::api::{self, AdminRole, AdminSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use zeroize::Zeroizing;

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
        if Self::exists(home) {
            return Err(ClientError::Invalid(format!(
                "{} already holds an administrator identity; use another --admin-home",
                home.display()
            )));
        }
        std::fs::create_dir_all(home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
        }
        let key = SigningKey::from_bytes(&rand::random());
        let kdf = KdfParams::fresh();
        let wrapping = kdf.derive(passphrase)?;
        let nonce: [u8; 12] = rand::random();
        let sealed = ChaCha20Poly1305::new(Key::from_slice(wrapping.as_ref()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| ClientError::Local("cannot seal the administrator key".into()))?;
        let stored = Stored {
            version: 1,
            name: name.to_string(),
            server: server.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.to_ascii_lowercase(),
            kdf,
            sealed_key: hex::encode([nonce.as_slice(), &sealed].concat()),
        };
        write_private(
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
        let bytes = std::fs::read(&path).map_err(|_| {
            ClientError::Invalid(format!(
                "no administrator identity in {}: run 'pouch admin init --name NAME' first",
                home.display()
            ))
        })?;
        let damaged = || ClientError::Local(format!("{} is damaged", path.display()));
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
        let sealed = hex::decode(&stored.sealed_key).map_err(|_| damaged())?;
        if stored.version != 1 || sealed.len() < 12 {
            return Err(damaged());
        }
        let wrapping = stored.kdf.derive(passphrase)?;
        let secret = Zeroizing::new(
            ChaCha20Poly1305::new(Key::from_slice(wrapping.as_ref()))
                .decrypt(
                    Nonce::from_slice(&sealed[..12]),
                    Payload {
                        msg: &sealed[12..],
                        aad: stored.name.as_bytes(),
                    },
                )
                .map_err(|_| ClientError::WrongPassphrase(home.display().to_string()))?,
        );
        let secret: &[u8; 32] = secret.as_slice().try_into().map_err(|_| damaged())?;
        Ok(AdminIdentity {
            name: stored.name,
            server: stored.server,
            fingerprint: stored.fingerprint,
            key: SigningKey::from_bytes(secret),
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
            write_private(
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

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}
