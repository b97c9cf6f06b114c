//! The IMAP front end as a hostile mail client drives it: any bytes, cut
//! into reads of any size, before and after login; every command that
//! parses has its sequence sets and LIST patterns answered as the bridge
//! would.
#![no_main]
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::mailbox::ListMailbox;
use libfuzzer_sys::fuzz_target;
use pouch_mail_proto::imap::pattern::matches;
use pouch_mail_proto::imap::sequence::{in_ranges, set_ranges};
use pouch_mail_proto::imap::{CommandReceiver, Received};
use std::num::NonZeroU32;

const FOLDERS: [&[u8]; 4] = [b"INBOX", b"Sent", b"Archive/2026/Kyiv", b"a%b*c"];

fn answer(body: &CommandBody<'_>) {
    let largest = NonZeroU32::new(4_000_000_000).unwrap();
    match body {
        CommandBody::Fetch { sequence_set, .. }
        | CommandBody::Store { sequence_set, .. }
        | CommandBody::Copy { sequence_set, .. }
        | CommandBody::Move { sequence_set, .. } => {
            let ranges = set_ranges(sequence_set, largest);
            assert!(ranges.iter().all(|(lo, hi)| lo <= hi));
            let _ = in_ranges(&ranges, 17);
        }
        CommandBody::List {
            mailbox_wildcard, ..
        }
        | CommandBody::Lsub {
            mailbox_wildcard, ..
        } => {
            let pattern: &[u8] = match mailbox_wildcard {
                ListMailbox::Token(t) => t.as_ref(),
                ListMailbox::String(s) => s.as_ref(),
            };
            for folder in FOLDERS {
                let _ = matches(pattern, folder);
            }
            assert!(matches(b"*", b"Archive/2026/Kyiv"));
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut authenticated = first & 1 == 1;
    // Reads of 1 to 127 bytes, or (high bit) of 16 KiB, as sockets give.
    let chunk = if first & 0x80 != 0 {
        16 * 1024
    } else {
        usize::from(first >> 1).max(1)
    };
    let mut r = CommandReceiver::default();
    for piece in rest.chunks(chunk) {
        r.push(piece);
        loop {
            match r.next(authenticated) {
                Received::Command(c) => {
                    if matches!(c.body, CommandBody::Login { .. }) {
                        authenticated = true;
                    }
                    answer(&c.body);
                }
                Received::NeedMore | Received::ContinueLiteral => break,
                Received::TooLong | Received::LiteralTooLarge { .. } | Received::BadLiteral { .. } => {
                    return;
                }
                Received::Bad { tag } => assert!(!tag.is_empty() && tag.len() <= 64),
            }
        }
        if first & 0x40 != 0 {
            let _ = r.take_line();
        }
    }
});
