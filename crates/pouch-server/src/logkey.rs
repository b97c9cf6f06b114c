//! The transparency log's signing key, sealed at rest.
//!
//! Every node signs checkpoints, so the key is shared through the database —
//! but never in clear there: it is sealed (ChaCha20-Poly1305) under a wrapping
//! key that lives beside the TLS key, in `DATA_DIR/log-wrap.key` (0600) or in
//! `POUCH_LOG_WRAP_KEY` (64 hex digits). A copy of the database alone cannot
//! sign a checkpoint; every node needs the same wrapping key, as it needs the
//! TLS key. A database from before sealing is sealed on first start.

use crate::StartError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use pouch_store::Store;
use std::path::Path;
use zeroize::Zeroizing;

const SEALED: &str = "log_private_key_sealed";
/// Where older databases kept the key in clear.
const LEGACY: &str = "log_private_key";
const WRAP_FILE: &str = "log-wrap.key";
const WRAP_ENV: &str = "POUCH_LOG_WRAP_KEY";
/// Binds the sealed value to its purpose.
const AAD: &[u8] = b"pouch-log-private-key-v1";

fn config(msg: impl Into<String>) -> StartError {
    StartError::Config(msg.into())
}

/// The wrapping key: from the environment, else the data directory's file
/// (created there when `create` and neither exists).
fn wrapping_key(data_dir: &Path, create: bool) -> Result<Option<Zeroizing<[u8; 32]>>, StartError> {
    let parse = |text: &str, from: &str| -> Result<Zeroizing<[u8; 32]>, StartError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
            config(format!(
                "{from} must hold 64 hex digits (the log's wrapping key)"
            ))
        })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            config(format!(
                "{from} must hold 64 hex digits (the log's wrapping key)"
            ))
        })?;
        Ok(Zeroizing::new(key))
    };
    if let Ok(v) = std::env::var(WRAP_ENV) {
        return parse(&v, WRAP_ENV).map(Some);
    }
    let path = data_dir.join(WRAP_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = Zeroizing::new(crate::random_bytes::<32>());
            crate::write_private_file(&path, format!("{}\n", hex::encode(*key)).as_bytes())
                .map_err(|e| StartError::Io(format!("cannot write {}: {e}", path.display())))?;
            Ok(Some(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StartError::Io(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn seal(key: &[u8; 32], secret: &str) -> String {
    let nonce = crate::random_bytes::<12>();
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: AAD,
            },
        )
        .expect("sealing cannot fail");
    format!("{}{}", hex::encode(nonce), hex::encode(sealed))
}

fn open(key: &[u8; 32], sealed: &str) -> Result<Zeroizing<String>, StartError> {
    let wrong = || {
        config(format!(
            "the log signing key in the database is sealed under another wrapping key: copy {WRAP_FILE} from the first node into the data directory (or set {WRAP_ENV})"
        ))
    };
    let bytes = hex::decode(sealed).map_err(|_| wrong())?;
    if bytes.len() < 12 + 16 {
        return Err(wrong());
    }
    let plain = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(
                Nonce::from_slice(&bytes[..12]),
                Payload {
                    msg: &bytes[12..],
                    aad: AAD,
                },
            )
            .map_err(|_| wrong())?,
    );
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| wrong())
}

/// The log's private key: unsealed from the database, moved there sealed
/// from an older database's clear copy, or made (and sealed) on first start.
pub async fn load_or_create(
    store: &dyn Store,
    data_dir: &Path,
    origin: &str,
) -> Result<(Zeroizing<String>, String), StartError> {
    let sealed = store.get_setting(SEALED).await?;
    let legacy = store.get_setting(LEGACY).await?;
    let key = wrapping_key(data_dir, sealed.is_none())?.ok_or_else(|| {
        config(format!(
            "the log signing key in the database is sealed, and this node has no wrapping key: copy {WRAP_FILE} from the first node into {} (or set {WRAP_ENV})",
            data_dir.display()
        ))
    })?;
    let private = match (sealed, legacy) {
        (Some(sealed), legacy) => {
            let private = open(&key, &sealed)?;
            if legacy.is_some() {
                store.delete_setting(LEGACY).await?;
            }
            private
        }
        (None, Some(clear)) => {
            // Seal what an older version left in clear, then forget the clear copy.
            let stored = store.init_setting(SEALED, &seal(&key, &clear)).await?;
            let private = open(&key, &stored)?;
            store.delete_setting(LEGACY).await?;
            private
        }
        (None, None) => {
            let (fresh_private, fresh) = pouch_log::LogKey::generate(origin);
            // Another node may have stored its key first: then that one is
            // used, and it must open with this node's wrapping key.
            let stored = store
                .init_setting(SEALED, &seal(&key, &fresh_private))
                .await?;
            let private = open(&key, &stored)?;
            if *private == fresh_private {
                store
                    .init_setting("log_public_key", &fresh.verifier_key)
                    .await?;
            }
            private
        }
    };
    let public = store
        .get_setting("log_public_key")
        .await?
        .ok_or_else(|| config("the log key is half-stored; restore the database"))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_wrapping_key() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let sealed = seal(&k1, "PRIVATE+KEY+abc");
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(open(&k1, &sealed).unwrap().as_str(), "PRIVATE+KEY+abc");
        assert!(open(&k2, &sealed).is_err());
        // One flipped bit of the ciphertext: refused, not mis-opened.
        let mut bytes = hex::decode(&sealed).unwrap();
        bytes[20] ^= 1;
        assert!(open(&k1, &hex::encode(bytes)).is_err());
    }
}
