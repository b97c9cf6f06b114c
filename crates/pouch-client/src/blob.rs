//! Chunked authenticated encryption for messages too large to travel inside
//! MLS. Each blob has its own random key. Chunk `i` is sealed with
//! ChaCha20-Poly1305 under nonce = (i as u64, big endian) ‖ 0000_00 ‖ last-flag,
//! with the blob id as associated data — so chunks cannot be reordered,
//! dropped from the end, or moved to another blob without detection (the
//! STREAM construction). Memory use is one chunk, whatever the size.

use crate::error::{ClientError, Result};
use crate::net::Api;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use pouch_proto::api;
use pouch_proto::envelope::{BLOB_CHUNK_SIZE, BlobRef};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

fn nonce(index: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&(index as u64).to_be_bytes());
    n[11] = last as u8;
    Nonce::from(n)
}

pub struct ChunkCipher {
    aead: ChaCha20Poly1305,
    blob_id: Vec<u8>,
}

impl ChunkCipher {
    pub fn new(key: &[u8], blob_id: &str) -> Result<Self> {
        if key.len() != 32 {
            return Err(ClientError::Invalid("blob key has the wrong length".into()));
        }
        Ok(ChunkCipher {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
            blob_id: blob_id.as_bytes().to_vec(),
        })
    }

    pub fn seal(&self, index: u32, last: bool, plaintext: &[u8]) -> Vec<u8> {
        self.aead
            .encrypt(
                &nonce(index, last),
                Payload {
                    msg: plaintext,
                    aad: &self.blob_id,
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for chunk-sized input")
    }

    pub fn open(&self, index: u32, last: bool, ciphertext: &[u8]) -> Result<Vec<u8>> {
        self.aead
            .decrypt(
                &nonce(index, last),
                Payload {
                    msg: ciphertext,
                    aad: &self.blob_id,
                },
            )
            .map_err(|_| {
                ClientError::Invalid(format!("attachment data was tampered with (chunk {index})"))
            })
    }
}

/// Encrypts `size` bytes from `reader` under a fresh key and uploads them
/// chunk by chunk; `progress(done, total)` after each chunk.
pub fn upload(
    api: &Api,
    reader: &mut dyn Read,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BlobRef> {
    let created: api::BlobCreated = api.post("/v1/blobs", &serde_json::json!({}))?;
    let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
    let cipher = ChunkCipher::new(key.as_ref(), &created.blob_id)?;
    let chunks = size.div_ceil(BLOB_CHUNK_SIZE as u64).max(1) as u32;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOB_CHUNK_SIZE];
    let mut total = 0u64;
    for index in 0..chunks {
        let want = (size - total).min(BLOB_CHUNK_SIZE as u64) as usize;
        reader
            .read_exact(&mut buf[..want])
            .map_err(|e| ClientError::Io(format!("reading data to upload: {e}")))?;
        hasher.update(&buf[..want]);
        total += want as u64;
        let sealed = cipher.seal(index, index + 1 == chunks, &buf[..want]);
        api.put_bytes(&format!("/v1/blobs/{}/{index}", created.blob_id), sealed)?;
        progress(total, size);
    }
    api.post_empty(
        &format!("/v1/blobs/{}/finish", created.blob_id),
        &api::BlobFinish { chunks, size },
    )?;
    Ok(BlobRef {
        blob_id: created.blob_id,
        key: key.to_vec(),
        sha256: hex::encode(hasher.finalize()),
        size,
        chunk_size: BLOB_CHUNK_SIZE as u32,
    })
}

/// Downloads, decrypts and verifies a blob into `out`, chunk by chunk.
pub fn download(
    api: &Api,
    r: &BlobRef,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let cipher = ChunkCipher::new(&r.key, &r.blob_id)?;
    let chunk = r.chunk_size.max(1) as u64;
    let chunks = r.size.div_ceil(chunk).max(1) as u32;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for index in 0..chunks {
        let sealed = api.get_bytes(&format!("/v1/blobs/{}/{index}", r.blob_id))?;
        let plain = cipher.open(index, index + 1 == chunks, &sealed)?;
        hasher.update(&plain);
        total += plain.len() as u64;
        out.write_all(&plain)?;
        progress(total, r.size);
    }
    if total != r.size || hex::encode(hasher.finalize()) != r.sha256 {
        return Err(ClientError::Invalid(
            "transferred data does not match its hash".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bound_to_position_blob_and_end() {
        let c = ChunkCipher::new(&[9u8; 32], "b1").unwrap();
        let sealed = c.seal(0, false, b"hello");
        assert_eq!(c.open(0, false, &sealed).unwrap(), b"hello");
        assert!(
            c.open(1, false, &sealed).is_err(),
            "reordered chunk accepted"
        );
        assert!(c.open(0, true, &sealed).is_err(), "truncation not detected");
        let other = ChunkCipher::new(&[9u8; 32], "b2").unwrap();
        assert!(
            other.open(0, false, &sealed).is_err(),
            "chunk moved between blobs"
        );
    }
}
