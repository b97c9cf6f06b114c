//! The SMTP front end as a hostile mail client drives it: any bytes, cut
//! into reads of any size, with the session's own state (AUTH lines after
//! a bare AUTH, message data after DATA).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pouch_mail_proto::smtp::{Expect, Input, MAX_MESSAGE, Receiver};
use smtp_proto::Request;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let mut r = Receiver::default();
    let mut expect = Expect::Command;
    for piece in rest.chunks(chunk) {
        r.push(piece);
        loop {
            match r.next(expect) {
                Input::NeedMore => break,
                Input::Request(Request::Auth {
                    mechanism,
                    initial_response,
                }) if initial_response.is_empty() || mechanism == smtp_proto::AUTH_LOGIN => {
                    expect = Expect::Line
                }
                Input::Request(Request::Data) => expect = Expect::Data,
                // The session stops reading here and starts TLS afresh.
                Input::Request(Request::StartTls) => {
                    r.clear();
                    break;
                }
                Input::Message(m) => {
                    assert!(m.len() <= MAX_MESSAGE + 1024);
                    expect = Expect::Command;
                }
                Input::Line(_) => expect = Expect::Command,
                Input::LineTooLong | Input::MessageTooBig => return,
                Input::Request(_) | Input::UnknownCommand | Input::Syntax(_) => {}
            }
        }
    }
});
