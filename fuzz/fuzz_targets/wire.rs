//! The wire types a hostile server or member controls: the decrypted
//! envelope, queue pages, device lists and their signatures.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = pouch_proto::envelope::Envelope::from_bytes(data) {
        // What parses must serialise back and parse the same.
        let again = pouch_proto::envelope::Envelope::from_bytes(&envelope.to_bytes()).unwrap();
        assert_eq!(again, envelope);
    }
    let _ = serde_json::from_slice::<pouch_proto::api::QueueResponse>(data);
    if let Ok(history) = serde_json::from_slice::<pouch_proto::api::DeviceListHistory>(data) {
        for list in &history.lists {
            let _ = list.verify();
            let _ = list.body_unverified();
        }
    }
});
