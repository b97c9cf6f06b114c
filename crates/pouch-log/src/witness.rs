//! Witness cosignatures (C2SP `tlog-cosignature`, `cosignature/v1`) and the
//! witness's decision (C2SP `tlog-witness`), without I/O.
//!
//! A witness keeps, per log, the largest tree it has seen. It cosigns a new
//! checkpoint only with a consistency proof from that tree, so two different
//! views of one log can never both carry its cosignature. Clients require
//! cosignatures from the witnesses their policy names.

use crate::{Checkpoint, Hash, LogError, verify_consistency};
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use signed_note::{Note, Signature, VerifierList};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const ALG_COSIGNATURE_V1: u8 = 0x04;

fn cosigned_message(time: u64, checkpoint_text: &[u8]) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {time}\n").into_bytes();
    m.extend_from_slice(checkpoint_text);
    m
}

fn key_bytes(pk: &VerifyingKey) -> Vec<u8> {
    let mut k = vec![ALG_COSIGNATURE_V1];
    k.extend_from_slice(pk.as_bytes());
    k
}

/// A witness's signing key.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
}

impl WitnessKey {
    pub fn new(name: &str, secret: &[u8; 32]) -> Self {
        WitnessKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(secret),
        }
    }

    /// The verifier key others configure: `name+keyid+base64(0x04 ‖ public key)`.
    pub fn verifier_key(&self) -> String {
        let k = key_bytes(&self.key.verifying_key());
        format!(
            "{}+{:08x}+{}",
            self.name,
            signed_note::key_id(&self.name, &k),
            B64.encode(&k)
        )
    }

    /// The cosignature line for a checkpoint's text, at `time` (Unix seconds).
    pub fn cosign(&self, checkpoint_text: &[u8], time: u64) -> String {
        let k = key_bytes(&self.key.verifying_key());
        let sig = self.key.sign(&cosigned_message(time, checkpoint_text));
        let mut raw = signed_note::key_id(&self.name, &k).to_be_bytes().to_vec();
        raw.extend_from_slice(&time.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

/// Verifies `cosignature/v1` signatures of one witness.
pub struct WitnessVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl WitnessVerifier {
    pub fn parse(vkey: &str) -> Result<Self, LogError> {
        let bad = || LogError::Malformed(format!("witness key {vkey}"));
        let mut parts = vkey.splitn(3, '+');
        let (name, id, key) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let key = B64.decode(key).map_err(|_| bad())?;
        if key.len() != 33 || key[0] != ALG_COSIGNATURE_V1 {
            return Err(bad());
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad())?;
        if id != signed_note::key_id(name, &key) {
            return Err(bad());
        }
        let key = VerifyingKey::from_bytes(&key[1..].try_into().map_err(|_| bad())?)
            .map_err(|_| bad())?;
        Ok(WitnessVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl signed_note::Verifier for WitnessVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != 8 + 64 {
            return false;
        }
        let time = u64::from_be_bytes(sig[..8].try_into().expect("8 bytes"));
        let Ok(s) = ed25519_dalek::Signature::from_slice(&sig[8..]) else {
            return false;
        };
        self.key.verify(&cosigned_message(time, msg), &s).is_ok()
    }
}

/// A checkpoint with the log's signature and the witnesses' cosignatures checked.
pub struct Cosigned {
    pub checkpoint: Checkpoint,
    /// (witness name, cosignature time) for each valid cosignature of a known witness.
    pub cosignatures: Vec<(String, u64)>,
}

/// Verifies the log's signature (required) and every known witness's cosignature.
pub fn open_cosigned(
    note: &[u8],
    log_vkey: &str,
    origin: &str,
    witnesses: &[String],
) -> Result<Cosigned, LogError> {
    let checkpoint = crate::open_checkpoint(note, log_vkey, origin)?;
    let parsed = Note::from_bytes(note).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
    let mut cosignatures = Vec::new();
    for vkey in witnesses {
        let verifier = WitnessVerifier::parse(vkey)?;
        let name = verifier.name.clone();
        let list = VerifierList::new(vec![Box::new(verifier)]);
        // A note with no signature of this witness is "unverified" for it: no cosignature.
        if let Ok((verified, _)) = parsed.verify(&list) {
            for sig in verified {
                let time =
                    u64::from_be_bytes(sig.signature()[..8].try_into().expect("checked length"));
                cosignatures.push((name.clone(), time));
            }
        }
    }
    Ok(Cosigned {
        checkpoint,
        cosignatures,
    })
}

/// The signed note with only the signature lines of `name` (a log's
/// note as another server hands it may carry lines under any name; before
/// cosigning, only the log's own are kept).
pub fn only_signatures_of(note: &[u8], name: &str) -> Result<Vec<u8>, LogError> {
    let parsed = Note::from_bytes(note).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
    let text = parsed.text().to_vec();
    let sigs = note
        .get(text.len() + 1..)
        .ok_or_else(|| LogError::Malformed("a note without signatures".into()))?;
    let prefix = format!("\u{2014} {name} ");
    let mut out = text;
    out.push(b'\n');
    for line in sigs.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(prefix.as_bytes()) {
            out.extend_from_slice(line);
        }
    }
    Note::from_bytes(&out).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
    Ok(out)
}

/// Appends cosignature lines to a signed note.
pub fn add_cosignatures(note: &[u8], lines: &[String]) -> Result<Vec<u8>, LogError> {
    let parsed = Note::from_bytes(note).map_err(|e| LogError::Malformed(format!("{e:?}")))?;
    let mut text = parsed.to_bytes();
    for line in lines {
        let sig = Signature::from_bytes(line.trim_end().as_bytes())
            .map_err(|e| LogError::Malformed(format!("{e:?}")))?;
        let encoded = sig.to_bytes();
        if !text.windows(encoded.len()).any(|w| w == encoded.as_slice()) {
            text.extend_from_slice(&encoded);
        }
    }
    Ok(text)
}

/// The body of a C2SP `add-checkpoint` request.
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub note: Vec<u8>,
}

impl AddCheckpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old_size).into_bytes();
        for h in &self.proof {
            out.extend_from_slice(crate::hash_to_b64(h).as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.note);
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, LogError> {
        let bad = |w: &str| LogError::Malformed(format!("add-checkpoint request: {w}"));
        let split = body
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| bad("no blank line"))?;
        let head = std::str::from_utf8(&body[..split]).map_err(|_| bad("not UTF-8"))?;
        let mut lines = head.lines();
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("no old size"))?;
        let proof: Vec<Hash> = lines.map(crate::hash_from_b64).collect::<Result<_, _>>()?;
        if proof.len() > 63 {
            return Err(bad("too many proof lines"));
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            note: body[split + 2..].to_vec(),
        })
    }
}

/// What a witness answers to `add-checkpoint`.
#[derive(Debug, PartialEq)]
pub enum WitnessAnswer {
    /// Consistent: persist (size, root) and return the cosignature line.
    Cosign { size: u64, root: Hash, line: String },
    /// The log's idea of our state is wrong: 409 with our size.
    Conflict { current: u64 },
    /// The checkpoint or proof does not verify (403 / 422).
    Refused(Refusal),
}

/// Why a witness refused a checkpoint, by who is at fault.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Not signed by the log's key, or not a checkpoint at all: anyone could
    /// have sent it (403).
    NotTheLogs(String),
    /// Signed by the log but smaller than the tree already cosigned: an old
    /// checkpoint replayed, or a rollback; anyone can replay one (422).
    Stale(String),
    /// A larger tree whose consistency proof does not verify: a bad proof or
    /// a fork, which the witness cannot tell apart on its own (422).
    Inconsistent(String),
    /// Signed by the log, of the very size already cosigned, with another
    /// root: the log signed two trees of one size, so it shows someone else
    /// another view. Only the log can produce this; the signed note is
    /// evidence anyone can check with the log's key (422).
    SplitView(String),
}
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotTheLogs(why)
            | Refusal::Stale(why)
            | Refusal::Inconsistent(why)
            | Refusal::SplitView(why) => f.write_str(why),
        }
    }
}

/// The witness's decision for a request against its stored state for the log.
pub fn witness_decide(
    req: &AddCheckpoint,
    log_vkey: &str,
    origin: &str,
    stored: Option<(u64, Hash)>,
    key: &WitnessKey,
    now: u64,
) -> WitnessAnswer {
    let cp = match crate::open_checkpoint(&req.note, log_vkey, origin) {
        Ok(cp) => cp,
        Err(e) => return WitnessAnswer::Refused(Refusal::NotTheLogs(e.to_string())),
    };
    let (size, root) = stored.unwrap_or((0, Hash([0; 32])));
    if req.old_size != size {
        return WitnessAnswer::Conflict { current: size };
    }
    if cp.size() < size {
        return WitnessAnswer::Refused(Refusal::Stale(
            "the checkpoint is smaller than the witnessed tree".into(),
        ));
    }
    if size > 0 && cp.size() == size && *cp.hash() != root {
        return WitnessAnswer::Refused(Refusal::SplitView(
            "another root for the tree size already witnessed".into(),
        ));
    }
    if size > 0
        && let Err(e) = verify_consistency(&req.proof, cp.size(), *cp.hash(), size, root)
    {
        return WitnessAnswer::Refused(Refusal::Inconsistent(format!(
            "not consistent with the witnessed tree: {e}"
        )));
    }
    let parsed = match Note::from_bytes(&req.note) {
        Ok(n) => n,
        Err(e) => return WitnessAnswer::Refused(Refusal::NotTheLogs(format!("{e:?}"))),
    };
    WitnessAnswer::Cosign {
        size: cp.size(),
        root: *cp.hash(),
        line: key.cosign(parsed.text(), now),
    }
}
