//! The transparency log's texts from the network: checkpoints (signed
//! notes), witness add-checkpoint requests, tile paths, log entries, public
//! leaves, and a leaf opened against a served entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// A real verifier key, made once: notes are parsed up to the signature check.
fn vkey() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| pouch_log::LogKey::generate("pouch.local/log").1.verifier_key)
}

fuzz_target!(|data: &[u8]| {
    let _ = pouch_log::open_checkpoint(data, vkey(), "pouch.local/log");
    let _ = pouch_log::witness::AddCheckpoint::decode(data);
    let _ = pouch_log::AnyEntry::from_bytes(data);
    let _ = pouch_log::Leaf::from_bytes(data);
    // A leaf and the full entry served beside it, split where the input says.
    if let Some((&cut, rest)) = data.split_first() {
        let (leaf, full) = rest.split_at((cut as usize).min(rest.len()));
        let commitments = pouch_log::Commitments {
            key: pouch_log::CommitmentKey::derive("fuzz"),
            key_index: 1,
        };
        let alice = pouch_proto::Address::parse("alice@pouch.local").expect("an address");
        let _ = commitments.open(2, leaf, full, &alice);
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = pouch_log::TilePath::parse(path);
    }
});
