//! The bridge's SMTP submission, driven by real mail clients: Python's
//! smtplib, curl (smtp://) and swaks. Mail submitted there arrives
//! encrypted through Pouch, byte for byte; blind copies stay blind; a
//! recipient outside Pouch is refused at RCPT, before anything is written.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `pouch bridge` for one device.
struct Bridge {
    child: Child,
    smtp_port: u16,
    password: String,
}

impl Bridge {
    fn start(device: &Client) -> Bridge {
        let password = String::from_utf8(device.ok(&["bridge", "--show-password"]))
            .unwrap()
            .trim()
            .to_string();
        let mut child = device
            .cmd()
            .args(["bridge", "--smtp", "127.0.0.1:0", "--sync-secs", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let smtp_port = loop {
            let line = lines.next().expect("the bridge exited early").unwrap();
            if let Some(addr) = line.strip_prefix("SMTP listening on ") {
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Bridge {
            child,
            smtp_port,
            password,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet; returns stdout, or panics with stderr.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The raw bytes of the message with `subject` in `who`'s inbox (after a sync).
fn received(who: &Client, subject: &str) -> Vec<u8> {
    who.sync();
    let inbox = who.inbox();
    let m = inbox
        .iter()
        .find(|m| m["subject"] == subject)
        .unwrap_or_else(|| panic!("{} has no '{subject}': {inbox:?}", who.address));
    who.raw(m["id"].as_i64().unwrap())
}

const SEND: &str = r#"
import smtplib, sys
port, password, rcpts, path = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(','), sys.argv[4]
raw = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port) as s:
    s.ehlo()
    assert s.has_extn('auth') and 'PLAIN' in s.esmtp_features['auth'], s.esmtp_features
    s.login('alice@pouch.local', password)
    refused = s.sendmail('alice@pouch.local', rcpts, raw)
    print('refused', refused)
"#;

#[test]
fn mail_clients_submit_through_the_bridge() {
    let dir = Scratch::new("bridge-smtp");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");
    let dave = user(&dir, &server, "dave");
    let bridge = Bridge::start(&alice);
    let port = bridge.smtp_port.to_string();

    // Python's smtplib: To Bob, Cc Carol, a blind copy to Dave (envelope only),
    // with a line starting with a dot (SMTP dot-stuffing) and 8-bit text.
    let first = b"From: Alice <alice@pouch.local>\r\nTo: bob@pouch.local\r\nCc: carol@pouch.local\r\n\
Subject: Demarche on fisheries\r\nMessage-ID: <demarche-1@pouch.local>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Dear colleagues,\r\n.a line that starts with a dot\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        .to_vec();
    let path = dir.path("first.eml");
    std::fs::write(&path, &first).unwrap();
    let out = python(
        SEND,
        &[
            &port,
            &bridge.password,
            "bob@pouch.local,carol@pouch.local,dave@pouch.local",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("refused {}"), "{out}");
    for who in [&bob, &carol, &dave] {
        assert_eq!(
            received(who, "Demarche on fisheries"),
            first,
            "{} got other bytes",
            who.address
        );
    }
    // The blind copy is in a conversation of its own: Bob and Carol see only each other.
    let bobs = bob.inbox();
    let m = bobs
        .iter()
        .find(|m| m["subject"] == "Demarche on fisheries")
        .unwrap();
    let shown = m.to_string();
    assert!(!shown.contains("dave"), "{shown}");
    // One Sent copy.
    assert_eq!(
        alice
            .sent()
            .iter()
            .filter(|m| m["subject"] == "Demarche on fisheries")
            .count(),
        1
    );

    // A Bcc field in the submitted message: removed for every recipient, kept in Alice's copy.
    let second = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nBcc: dave@pouch.local\r\n\
Subject: With a Bcc field\r\nMessage-ID: <bcc-2@pouch.local>\r\n\r\nbody\r\n"
        .to_vec();
    let path = dir.path("second.eml");
    std::fs::write(&path, &second).unwrap();
    python(
        SEND,
        &[
            &port,
            &bridge.password,
            "bob@pouch.local,dave@pouch.local",
            path.to_str().unwrap(),
        ],
    );
    let stripped = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\n\
Subject: With a Bcc field\r\nMessage-ID: <bcc-2@pouch.local>\r\n\r\nbody\r\n"
        .to_vec();
    assert_eq!(received(&bob, "With a Bcc field"), stripped);
    assert_eq!(received(&dave, "With a Bcc field"), stripped);
    let sent = alice.sent();
    let mine = sent
        .iter()
        .find(|m| m["subject"] == "With a Bcc field")
        .unwrap();
    assert_eq!(alice.raw(mine["id"].as_i64().unwrap()), second);

    // Outside Pouch: refused at RCPT with the reason; a wrong password is refused too.
    let out = python(
        r#"
import smtplib, sys
port, password = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP('127.0.0.1', port) as s:
    try:
        s.login('alice@pouch.local', 'not-the-password')
    except smtplib.SMTPAuthenticationError as e:
        print('login', e.smtp_code)
    s.login('alice@pouch.local', password)
    s.mail('alice@pouch.local')
    code, msg = s.rcpt('someone@example.org')
    print('rcpt', code, msg.decode())
    code, msg = s.rcpt('bob@pouch.local')
    print('rcpt', code)
"#,
        &[&port, &bridge.password],
    );
    assert!(out.contains("login 535"), "{out}");
    assert!(
        out.contains("rcpt 550") && out.contains("never sends unencrypted"),
        "{out}"
    );
    assert!(out.contains("rcpt 250"), "{out}");

    // curl, AUTH PLAIN by default.
    let via_curl = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: Sent with curl\r\n\r\nhello from curl\r\n".to_vec();
    let path = dir.path("curl.eml");
    std::fs::write(&path, &via_curl).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            &format!("smtp://127.0.0.1:{port}"),
            "--mail-from",
            "alice@pouch.local",
            "--mail-rcpt",
            "bob@pouch.local",
            "--user",
            &format!("alice@pouch.local:{}", bridge.password),
            "--upload-file",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(received(&bob, "Sent with curl"), via_curl);

    // swaks, AUTH LOGIN.
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@pouch.local",
            "--auth-password",
            &bridge.password,
            "--from",
            "alice@pouch.local",
            "--to",
            "carol@pouch.local",
            "--header",
            "Subject: Sent with swaks",
            "--body",
            "hello from swaks",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = received(&carol, "Sent with swaks");
    assert!(String::from_utf8_lossy(&got).contains("hello from swaks"));
}

#[test]
fn the_bridge_refuses_to_listen_beyond_this_machine() {
    let dir = Scratch::new("bridge-loopback");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let out = alice.run(&["bridge", "--smtp", "0.0.0.0:0"]);
    assert_one_line_error(&out, "not a loopback address");
}
