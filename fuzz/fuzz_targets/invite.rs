//! Invite parsing: whatever a user pastes is refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(invite) = pouch_proto::invite::Invite::decode(text) {
            let _ = invite.secret_bytes();
        }
    }
});
