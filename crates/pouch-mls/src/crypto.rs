//! The cryptography under OpenMLS: libcrux (formally verified HACL* code)
//! for the KEMs, HPKE and AEADs, with Ed25519 and the hash functions
//! served by the RustCrypto/dalek implementations, which use this CPU's
//! vector and SHA instructions.
//!
//! Why: joining a conversation verifies every member's leaf signature
//! (eleven for a mail to ten people) and hashes the whole ratchet tree,
//! X-Wing keys included. Profiled on the mail workload, libcrux's portable
//! Ed25519 verification was 16 % of a receiving device's CPU and its
//! portable SHA-256 another 8 %. On this machine ed25519-dalek verifies in
//! about half the time (52 µs against 114 µs for a 1,500-byte message) and
//! signs in half the time (36 µs against 72 µs), and sha2 uses the SHA-NI
//! instructions.
//!
//! The semantics stay those of RFC 8032 as libcrux applies them: a
//! signature's scalar must be canonical and the check is cofactorless;
//! signing is deterministic, so both implementations produce the same
//! bytes for the same key and message (a test below checks it).

use openmls_libcrux_crypto::CryptoProvider as Libcrux;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};
use sha2::Digest as _;
use tls_codec::SecretVLBytes;

/// OpenMLS's crypto provider for Pouch: libcrux, with faster signatures and
/// hashes (see the module documentation).
pub struct Crypto {
    libcrux: Libcrux,
}

impl Default for Crypto {
    fn default() -> Self {
        Self::new().expect("the platform supports libcrux")
    }
}

impl Crypto {
    pub fn new() -> Result<Self, CryptoError> {
        Ok(Self {
            libcrux: Libcrux::new()?,
        })
    }

    /// The random number generator OpenMLS draws from (libcrux's).
    pub fn rand(&self) -> &Libcrux {
        &self.libcrux
    }
}

impl OpenMlsCrypto for Crypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.libcrux.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.libcrux.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.libcrux.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.libcrux.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.libcrux.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(match hash_type {
            HashType::Sha2_256 => sha2::Sha256::digest(data).to_vec(),
            HashType::Sha2_384 => sha2::Sha384::digest(data).to_vec(),
            HashType::Sha2_512 => sha2::Sha512::digest(data).to_vec(),
        })
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.libcrux.signature_key_gen(alg)
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let pk = <&[u8; 32]>::try_from(pk).map_err(|_| CryptoError::InvalidLength)?;
        let signature = <&[u8; 64]>::try_from(signature).map_err(|_| CryptoError::InvalidLength)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(pk)
            .map_err(|_| CryptoError::InvalidSignature)?;
        // RFC 8032 §5.1.3 (and libcrux) refuse a key whose encoding is not
        // canonical (y not reduced, or a sign bit on x = 0); dalek's decoding
        // accepts them. Members must agree on every signature's validity.
        if key.to_edwards().compress().as_bytes() != pk {
            return Err(CryptoError::InvalidSignature);
        }
        // `verify`, not `verify_strict`: the same acceptance as libcrux (and
        // every other MLS member's library), so that members agree on which
        // signatures are valid.
        ed25519_dalek::Verifier::verify(
            &key,
            data,
            &ed25519_dalek::Signature::from_bytes(signature),
        )
        .map_err(|_| CryptoError::InvalidSignature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let seed = <&[u8; 32]>::try_from(key).map_err(|_| CryptoError::InvalidLength)?;
        // SigningKey zeroizes its copy of the seed when dropped.
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        Ok(ed25519_dalek::Signer::sign(&key, data).to_bytes().to_vec())
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.libcrux.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.libcrux.hpke_setup_sender_and_export(
            config,
            pk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.libcrux.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.libcrux.derive_hpke_keypair(config, ikm)
    }
}

/// An OpenMLS provider with Pouch's crypto and memory storage, for tests
/// and benchmarks (devices keep their state in their encrypted store).
#[derive(Default)]
pub struct MemoryProvider {
    crypto: Crypto,
    storage: openmls_memory_storage::MemoryStorage,
}

impl openmls_traits::OpenMlsProvider for MemoryProvider {
    type CryptoProvider = Crypto;
    type RandProvider = Libcrux;
    type StorageProvider = openmls_memory_storage::MemoryStorage;
    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.crypto.rand()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both implementations sign to the same bytes and accept each other's
    /// signatures, and both refuse a tampered message or signature.
    #[test]
    fn signatures_agree_with_libcrux() {
        let ours = Crypto::new().unwrap();
        let libcrux = Libcrux::new().unwrap();
        let (sk, pk) = libcrux.signature_key_gen(SignatureScheme::ED25519).unwrap();
        for len in [0usize, 1, 64, 1500] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let a = ours.sign(SignatureScheme::ED25519, &msg, &sk).unwrap();
            let b = libcrux.sign(SignatureScheme::ED25519, &msg, &sk).unwrap();
            assert_eq!(a, b, "deterministic Ed25519 differs at length {len}");
            ours.verify_signature(SignatureScheme::ED25519, &msg, &pk, &b)
                .unwrap();
            libcrux
                .verify_signature(SignatureScheme::ED25519, &msg, &pk, &a)
                .unwrap();
            let mut other = msg.clone();
            other.push(1);
            assert!(
                ours.verify_signature(SignatureScheme::ED25519, &other, &pk, &a)
                    .is_err()
            );
            let mut bad = a.clone();
            bad[10] ^= 1;
            assert!(
                ours.verify_signature(SignatureScheme::ED25519, &msg, &pk, &bad)
                    .is_err()
            );
            // A non-canonical scalar (S + L) is refused by both.
            let mut malleated = a.clone();
            add_group_order(&mut malleated[32..]);
            assert!(
                ours.verify_signature(SignatureScheme::ED25519, &msg, &pk, &malleated)
                    .is_err()
            );
            assert!(
                libcrux
                    .verify_signature(SignatureScheme::ED25519, &msg, &pk, &malleated)
                    .is_err()
            );
        }
        assert_eq!(
            ours.verify_signature(SignatureScheme::ED25519, b"m", &pk[..31], &[0; 64]),
            Err(CryptoError::InvalidLength)
        );
        assert_eq!(
            ours.sign(SignatureScheme::ECDSA_SECP256R1_SHA256, b"m", &sk),
            Err(CryptoError::UnsupportedSignatureScheme)
        );
    }

    /// Keys at the edges of the encoding: the identity point (small order)
    /// encoded canonically and with its sign bit set, and a y that is not
    /// reduced. Under the identity key, R = [s]B verifies for any message
    /// (cofactorless check), so whether the key is accepted at all decides.
    #[test]
    fn both_implementations_agree_on_unusual_keys() {
        let ours = Crypto::new().unwrap();
        let libcrux = Libcrux::new().unwrap();
        // The base point B, compressed: R for s = 1.
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(curve25519_base_point().as_slice());
        signature[32] = 1;
        let identity = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        let mut identity_signed = identity;
        identity_signed[31] |= 0x80;
        // y = p + 1 (not reduced), which decodes to the identity too.
        let mut unreduced = [0xffu8; 32];
        unreduced[0] = 0xee;
        unreduced[31] = 0x7f;
        for key in [identity, identity_signed, unreduced] {
            let a = ours
                .verify_signature(SignatureScheme::ED25519, b"any message", &key, &signature)
                .is_ok();
            let b = libcrux
                .verify_signature(SignatureScheme::ED25519, b"any message", &key, &signature)
                .is_ok();
            assert_eq!(a, b, "the implementations disagree on key {key:02x?}");
        }
        assert!(
            ours.verify_signature(SignatureScheme::ED25519, b"m", &identity_signed, &signature)
                .is_err()
        );
    }

    fn curve25519_base_point() -> [u8; 32] {
        // RFC 8032: the base point's encoding, y = 4/5.
        let mut b = [0x66u8; 32];
        b[0] = 0x58;
        b
    }

    #[test]
    fn hashes_agree_with_libcrux() {
        let ours = Crypto::new().unwrap();
        let libcrux = Libcrux::new().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for h in [HashType::Sha2_256, HashType::Sha2_384, HashType::Sha2_512] {
            assert_eq!(
                ours.hash(h, &data).unwrap(),
                libcrux.hash(h, &data).unwrap()
            );
        }
    }

    /// Adds the Ed25519 group order L to a little-endian 32-byte scalar.
    fn add_group_order(s: &mut [u8]) {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (b, l) in s.iter_mut().zip(L) {
            let sum = *b as u16 + l as u16 + carry;
            *b = sum as u8;
            carry = sum >> 8;
        }
    }
}
