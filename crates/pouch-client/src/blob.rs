//! Chunked authenticated encryption for messages too large to travel inside
//! MLS. Each blob has its own random key. Chunk `i` is sealed with
//! ChaCha20-Poly1305 under nonce = (i as u64, big endian) ‖ 0000_00 ‖ last-flag,
//! with the blob id as associated data — so chunks cannot be reordered,
//! dropped from the end, or moved to another blob without detection (the
//! STREAM construction). Memory use is one chunk, whatever the size.

use crate::error::{ClientError, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

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
        Ok(ChunkCipher { aead: ChaCha20Poly1305::new(Key::from_slice(key)), blob_id: blob_id.as_bytes().to_vec() })
    }

    pub fn seal(&self, index: u32, last: bool, plaintext: &[u8]) -> Vec<u8> {
        self.aead
            .encrypt(&nonce(index, last), Payload { msg: plaintext, aad: &self.blob_id })
            .expect("ChaCha20-Poly1305 encryption cannot fail for chunk-sized input")
    }

    pub fn open(&self, index: u32, last: bool, ciphertext: &[u8]) -> Result<Vec<u8>> {
        self.aead
            .decrypt(&nonce(index, last), Payload { msg: ciphertext, aad: &self.blob_id })
            .map_err(|_| ClientError::Invalid(format!("attachment data was tampered with (chunk {index})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bound_to_position_blob_and_end() {
        let c = ChunkCipher::new(&[9u8; 32], "b1").unwrap();
        let sealed = c.seal(0, false, b"hello");
        assert_eq!(c.open(0, false, &sealed).unwrap(), b"hello");
        assert!(c.open(1, false, &sealed).is_err(), "reordered chunk accepted");
        assert!(c.open(0, true, &sealed).is_err(), "truncation not detected");
        let other = ChunkCipher::new(&[9u8; 32], "b2").unwrap();
        assert!(other.open(0, false, &sealed).is_err(), "chunk moved between blobs");
    }
}
