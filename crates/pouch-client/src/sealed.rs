//! A person's Ed25519 key sealed under their passphrase, in a file of its
//! own: the administrator's (`admin.rs`) and the security officer's
//! (`officer.rs`). Argon2id stretches the passphrase; ChaCha20-Poly1305
//! seals the key with the person's name as associated data, so a sealed key
//! cannot be moved under another name. A copy of the file without the
//! passphrase signs nothing.

use crate::error::{ClientError, Result};
use crate::local::KdfParams;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::SigningKey;
use std::path::Path;
use zeroize::Zeroizing;

/// Seals `key` under `passphrase`; returns the KDF's parameters and the
/// sealed key (hex: 12-byte nonce, then the sealed 32 bytes).
pub(crate) fn seal(key: &SigningKey, passphrase: &str, name: &str) -> Result<(KdfParams, String)> {
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
        .map_err(|_| ClientError::Local("cannot seal the key".into()))?;
    Ok((kdf, hex::encode([nonce.as_slice(), &sealed].concat())))
}

/// Opens what [`seal`] made. `file` names the file in errors; a wrong
/// passphrase is [`ClientError::WrongPassphrase`] naming `home`.
pub(crate) fn unseal(
    kdf: &KdfParams,
    sealed_hex: &str,
    passphrase: &str,
    name: &str,
    file: &Path,
    home: &Path,
) -> Result<SigningKey> {
    let damaged = || ClientError::Local(format!("{} is damaged", file.display()));
    let sealed = hex::decode(sealed_hex).map_err(|_| damaged())?;
    if sealed.len() < 12 {
        return Err(damaged());
    }
    let wrapping = kdf.derive(passphrase)?;
    let secret = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(wrapping.as_ref()))
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                Payload {
                    msg: &sealed[12..],
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| ClientError::WrongPassphrase(home.display().to_string()))?,
    );
    let secret: &[u8; 32] = secret.as_slice().try_into().map_err(|_| damaged())?;
    Ok(SigningKey::from_bytes(secret))
}

/// Reads a key file's JSON; `missing` is the error when there is none.
pub(crate) fn read_key_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    missing: impl FnOnce() -> String,
) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|_| ClientError::Invalid(missing()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| ClientError::Local(format!("{} is damaged", path.display())))
}

/// Makes `home` (0700) for a key file; refuses if `file` is already there,
/// or if `home` holds anything else (a key file goes in a directory of its
/// own: `--officer-home ~` must not make the user's home private, or mix
/// the key with other files).
pub(crate) fn prepare_home(home: &Path, file: &Path, what: &str) -> Result<()> {
    if file.exists() {
        return Err(ClientError::Invalid(format!(
            "{} already holds {what}; use another home",
            home.display()
        )));
    }
    if home.exists() && std::fs::read_dir(home)?.next().is_some() {
        return Err(ClientError::Invalid(format!(
            "{} is not empty: give a new or empty directory for {what}",
            home.display()
        )));
    }
    std::fs::create_dir_all(home)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a new file only its owner can read (never over an existing one).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
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
