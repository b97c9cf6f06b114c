//! Every input in the fuzzers' corpora (`fuzz/corpus/<target>/`, seeds and
//! whatever the fuzzers kept or found) goes through the same parsers as the
//! fuzz targets do, on every `cargo test`: a crash found once stays fixed.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        out.push((path.clone(), std::fs::read(&path).unwrap()));
    }
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out
}

#[test]
fn invite_corpus_parses_or_is_refused() {
    for (_, data) in corpus("invite") {
        if let Ok(text) = std::str::from_utf8(&data)
            && let Ok(invite) = pouch_proto::invite::Invite::decode(text)
        {
            let _ = invite.secret_bytes();
        }
    }
}

#[test]
fn wire_corpus_parses_or_is_refused() {
    let mut envelopes = 0;
    for (path, data) in corpus("wire") {
        if let Ok(envelope) = pouch_proto::envelope::Envelope::from_bytes(&data) {
            let again = pouch_proto::envelope::Envelope::from_bytes(&envelope.to_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(again, envelope, "{}", path.display());
            envelopes += 1;
        }
        let _ = serde_json::from_slice::<pouch_proto::api::QueueResponse>(&data);
        if let Ok(history) = serde_json::from_slice::<pouch_proto::api::DeviceListHistory>(&data) {
            for list in &history.lists {
                let _ = list.verify();
            }
        }
    }
    assert!(envelopes > 0, "the seed envelope parses");
}

#[test]
fn log_notes_corpus_parses_or_is_refused() {
    let key = pouch_log::LogKey::generate("pouch.local/log")
        .1
        .verifier_key;
    let mut tiles = 0;
    for (_, data) in corpus("log_notes") {
        let _ = pouch_log::open_checkpoint(&data, &key, "pouch.local/log");
        let _ = pouch_log::witness::AddCheckpoint::decode(&data);
        let _ = pouch_log::AnyEntry::from_bytes(&data);
        if let Ok(path) = std::str::from_utf8(&data)
            && pouch_log::TilePath::parse(path).is_some()
        {
            tiles += 1;
        }
    }
    assert!(tiles > 0, "the seed tile path parses");
}
