//! The receivers and renderings on their own, without a socket: what a
//! hostile mail client or a hostile member's message can make them do.

use imap_codec::imap_types::command::CommandBody;
use pouch_mail_proto::imap::render::{MAX_NESTING, body_structure, envelope, string};
use pouch_mail_proto::imap::{CommandReceiver, PRE_LOGIN_MAX, Received};
use pouch_mail_proto::smtp::{self, Expect, Input};

fn tag_of(r: Received) -> String {
    match r {
        Received::Command(c) => c.tag.as_ref().to_string(),
        other => panic!("expected a command, got {other:?}"),
    }
}

#[test]
fn pipelined_commands_come_out_one_by_one_and_a_partial_one_waits() {
    let mut r = CommandReceiver::default();
    r.push(b"a1 NOOP\r\na2 CAPABILITY\r\na3 NO");
    assert_eq!(tag_of(r.next(false)), "a1");
    assert_eq!(tag_of(r.next(false)), "a2");
    assert!(matches!(r.next(false), Received::NeedMore));
    r.push(b"OP\r\n");
    assert_eq!(tag_of(r.next(false)), "a3");
    assert!(r.is_empty());
}

#[test]
fn a_synchronizing_literal_is_acknowledged_once_then_completes() {
    let mut r = CommandReceiver::default();
    r.push(b"a LOGIN {5}\r\n");
    assert!(matches!(r.next(false), Received::ContinueLiteral));
    assert!(
        matches!(r.next(false), Received::NeedMore),
        "one + per literal"
    );
    r.push(b"alice {6}\r\n");
    assert!(matches!(r.next(false), Received::ContinueLiteral));
    r.push(b"secret\r\n");
    match r.next(false) {
        Received::Command(c) => assert!(matches!(c.body, CommandBody::Login { .. })),
        other => panic!("{other:?}"),
    }
}

#[test]
fn before_login_a_big_literal_is_refused_and_the_buffer_is_bounded() {
    let mut r = CommandReceiver::default();
    r.push(b"a LOGIN {9000}\r\n");
    match r.next(false) {
        Received::LiteralTooLarge { tag } => assert_eq!(tag, "a"),
        other => panic!("{other:?}"),
    }
    // The same literal is fine after login (an APPEND).
    let mut r = CommandReceiver::default();
    r.push(b"a APPEND INBOX {9000}\r\n");
    assert!(matches!(r.next(true), Received::ContinueLiteral));

    // A line without end: refused once it passes the limit.
    let mut r = CommandReceiver::default();
    r.push(&vec![b'x'; PRE_LOGIN_MAX]);
    assert!(matches!(r.next(false), Received::NeedMore));
    r.push(b"xx");
    assert!(matches!(r.next(false), Received::TooLong));
}

#[test]
fn a_bad_line_is_dropped_with_its_tag_and_the_next_command_still_parses() {
    let mut r = CommandReceiver::default();
    r.push(b"t9 FROBNICATE\r\n\x01\x02 junk\r\nz NOOP\r\n");
    match r.next(false) {
        Received::Bad { tag } => assert_eq!(tag, "t9"),
        other => panic!("{other:?}"),
    }
    match r.next(false) {
        Received::Bad { tag } => assert_eq!(tag, "*", "a tag that is no tag is not echoed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(tag_of(r.next(false)), "z");
}

#[test]
fn continuation_lines_are_taken_whole_and_bounded() {
    let mut r = CommandReceiver::default();
    r.push(b"AGFsaWNl\r\nnext");
    assert_eq!(r.take_line().unwrap(), b"AGFsaWNl");
    assert!(r.take_line().is_none());
    assert!(!r.line_too_long(8));
    r.push(b"-and-more");
    assert!(r.line_too_long(8));
}

#[test]
fn nested_messages_are_described_to_a_bounded_depth() {
    // 200 message/rfc822 parts, each inside the previous one.
    let mut raw = b"Subject: innermost\r\n\r\nhello\r\n".to_vec();
    for _ in 0..200 {
        let mut outer = b"Content-Type: message/rfc822\r\n\r\n".to_vec();
        outer.extend_from_slice(&raw);
        raw = outer;
    }
    let mut out = Vec::new();
    body_structure(&mut out, &raw, true);
    let text = String::from_utf8_lossy(&out);
    let nested = text.matches("\"MESSAGE\" \"RFC822\"").count();
    assert!(
        (1..=MAX_NESTING).contains(&nested),
        "{nested} levels described"
    );
    assert_eq!(
        text.matches('(').count(),
        text.matches(')').count(),
        "balanced: {text}"
    );
}

#[test]
fn deep_multiparts_and_empty_multiparts_render_valid_structures() {
    let mut raw = Vec::new();
    for i in 0..300 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ndeep\r\n");
    let mut out = Vec::new();
    body_structure(&mut out, &raw, true);
    assert_eq!(
        out.iter().filter(|&&b| b == b'(').count(),
        out.iter().filter(|&&b| b == b')').count()
    );

    let empty = b"Content-Type: multipart/mixed; boundary=\"x\"\r\n\r\nno parts at all\r\n";
    let mut out = Vec::new();
    body_structure(&mut out, empty, false);
    // A multipart needs at least one part: without any, it is one body.
    assert!(
        out.starts_with(b"(\"") && out.ends_with(b")") && !out.starts_with(b"( "),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn strings_with_quotes_or_line_ends_go_as_literals() {
    let mut out = Vec::new();
    string(&mut out, b"plain");
    string(&mut out, b"a \"quote\"\r\n");
    assert_eq!(out, b"\"plain\"{11}\r\na \"quote\"\r\n".to_vec());
    let mut env = Vec::new();
    envelope(
        &mut env,
        b"From: \"Bob \\\"B\\\"\" <bob@x.y>\r\nSubject: hi\r\n\r\n",
    );
    assert!(
        env.starts_with(b"ENVELOPE (NIL \"hi\" ((\"Bob \\\"B\\\"\"")
            || env.windows(5).any(|w| w == b"{7}\r\n"),
        "{}",
        String::from_utf8_lossy(&env)
    );
}

#[test]
fn smtp_pipelining_auth_lines_and_data_with_dot_stuffing() {
    let mut r = smtp::Receiver::default();
    r.push(b"EHLO x\r\nAUTH PLAIN\r\nAGFAYgBj\r\nDATA\r\nline\r\n..dot\r\n.\r\nQUIT\r\n");
    assert!(matches!(
        r.next(Expect::Command),
        Input::Request(smtp_proto::Request::Ehlo { .. })
    ));
    assert!(matches!(
        r.next(Expect::Command),
        Input::Request(smtp_proto::Request::Auth { .. })
    ));
    match r.next(Expect::Line) {
        Input::Line(l) => assert_eq!(l, "AGFAYgBj"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.next(Expect::Command),
        Input::Request(smtp_proto::Request::Data)
    ));
    match r.next(Expect::Data) {
        Input::Message(m) => assert_eq!(m, b"line\r\n.dot\r\n".to_vec()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.next(Expect::Command),
        Input::Request(smtp_proto::Request::Quit)
    ));
    assert!(matches!(r.next(Expect::Command), Input::NeedMore));
}

#[test]
fn smtp_refuses_endless_lines_and_oversized_messages() {
    let mut r = smtp::Receiver::default();
    r.push(&vec![b'A'; smtp::MAX_LINE + 1]);
    assert!(matches!(r.next(Expect::Line), Input::LineTooLong));

    let mut r = smtp::Receiver::default();
    r.push(&vec![b'A'; 5000]);
    assert!(matches!(r.next(Expect::Command), Input::LineTooLong));

    let mut r = smtp::Receiver::default();
    let line = vec![b'x'; 1 << 20];
    let mut refused = false;
    for _ in 0..(smtp::MAX_MESSAGE >> 20) + 2 {
        r.push(&line);
        r.push(b"\r\n");
        match r.next(Expect::Data) {
            Input::NeedMore => {}
            Input::MessageTooBig => {
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "a message past MAX_MESSAGE is refused");
}

#[test]
fn unknown_commands_and_bad_arguments_are_told_apart() {
    let mut r = smtp::Receiver::default();
    r.push(b"FROB\r\nMAIL FROM:<<<\r\nNOOP\r\n");
    assert!(matches!(r.next(Expect::Command), Input::UnknownCommand));
    assert!(matches!(r.next(Expect::Command), Input::Syntax(_)));
    assert!(matches!(
        r.next(Expect::Command),
        Input::Request(smtp_proto::Request::Noop { .. })
    ));
}

#[test]
fn a_failed_command_with_a_literal_never_lets_the_literal_run_as_commands() {
    // An APPENDed message with a NUL byte (not allowed in a literal), whose
    // body holds lines that would be commands.
    let message = b"Subject: x\r\n\0\r\nz1 DELETE INBOX\r\nz2 UID STORE 1:* +FLAGS (\\Deleted)\r\n";
    for plus in ["", "+"] {
        let mut r = CommandReceiver::default();
        r.push(format!("a APPEND INBOX {{{}{plus}}}\r\n", message.len()).as_bytes());
        let first = r.next(true);
        if plus.is_empty() {
            assert!(matches!(first, Received::ContinueLiteral), "{first:?}");
        }
        r.push(message);
        r.push(b"\r\n");
        let mut seen = Vec::new();
        loop {
            match r.next(true) {
                Received::NeedMore => break,
                Received::BadLiteral { tag } => {
                    assert_eq!(tag, "a");
                    seen.push("closed".to_string());
                    break;
                }
                Received::Command(c) => seen.push(c.tag.as_ref().to_string()),
                other => seen.push(format!("{other:?}")),
            }
        }
        assert_eq!(seen, vec!["closed".to_string()], "literal{plus}: {seen:?}");
        assert!(r.is_empty());
    }
}

#[test]
fn the_fuzzers_slow_message_renders_a_valid_structure() {
    // fuzz/corpus/mime/crash-timeout-nested-multipart: message/rfc822 parts
    // under one boundary on every level took over 15 s per BODYSTRUCTURE.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/mime/crash-timeout-nested-multipart"
    );
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    body_structure(&mut out, &raw, true);
    envelope(&mut out, &raw);
    assert_eq!(
        out.iter().filter(|&&b| b == b'(').count(),
        out.iter().filter(|&&b| b == b')').count()
    );
    // (The fuzz test replays this input with a 10 s timeout.)
    assert!(out.starts_with(b"("));
}
