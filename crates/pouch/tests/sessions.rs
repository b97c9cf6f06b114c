//! Sessions that last: a long-running device (the bridge) keeps sending and
//! receiving past its sign-in token's lifetime, renewing the token before it
//! runs out and signing in afresh when the server forgets it.

mod common;

use common::*;
use std::time::Duration;

/// Waits until `who`'s IMAP INBOX (through the bridge) holds a mail with `subject`.
fn wait_in_inbox(bridge: &Bridge, subject: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Raw::imap_login(bridge.imap_port, &bridge.password);
        c.command("s", "SELECT INBOX");
        let answer = c.command("t", &format!("UID SEARCH SUBJECT \"{subject}\""));
        let hits = answer
            .iter()
            .find(|l| l.starts_with("* SEARCH"))
            .map(|l| l.split_whitespace().count() - 2)
            .unwrap_or(0);
        if hits > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "'{subject}' never reached the bridge's INBOX"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Submits a mail through the bridge's SMTP port.
fn submit(bridge: &Bridge, to: &str, subject: &str) {
    let mut c = Raw::connect(bridge.smtp_port);
    assert!(c.line().starts_with("220"));
    c.send(b"EHLO test\r\n").unwrap();
    while !c.line().starts_with("250 ") {}
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@pouch.local\0{}", bridge.password));
    c.send(format!("AUTH PLAIN {token}\r\n").as_bytes())
        .unwrap();
    assert!(c.line().starts_with("235"));
    c.send(format!("MAIL FROM:<alice@pouch.local>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes())
        .unwrap();
    assert!(c.line().starts_with("250"));
    let rcpt = c.line();
    assert!(rcpt.starts_with("250"), "RCPT refused: {rcpt}");
    assert!(c.line().starts_with("354"));
    c.send(
        format!(
            "From: alice@pouch.local\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@test>\r\n\r\nbody\r\n.\r\n",
            rand::random::<u64>()
        )
        .as_bytes(),
    )
    .unwrap();
    let accepted = c.line();
    assert!(accepted.starts_with("250"), "DATA refused: {accepted}");
}

#[test]
fn a_bridge_keeps_sending_and_receiving_past_its_token_lifetime() {
    let dir = Scratch::new("sessions");
    // Tokens last 3 s here (an hour by default).
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--token-ttl-secs", "3"],
    );
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let bridge = Bridge::start(&alice);

    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "First",
        "--body",
        "1",
    ]);
    wait_in_inbox(&bridge, "First");

    // Three token lifetimes later the bridge has renewed its token by itself.
    std::thread::sleep(Duration::from_secs(9));
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Later",
        "--body",
        "2",
    ]);
    wait_in_inbox(&bridge, "Later");
    submit(&bridge, "bob@pouch.local", "Reply after renewal");
    bob.sync();
    assert!(
        bob.inbox()
            .iter()
            .any(|m| m["subject"] == "Reply after renewal")
    );

    // The server forgets every token (a restore, an operator's purge): the
    // bridge's next request gets 401, and it signs in afresh.
    server.db().execute("DELETE FROM auth_tokens", []).unwrap();
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "After purge",
        "--body",
        "3",
    ]);
    wait_in_inbox(&bridge, "After purge");
    submit(&bridge, "bob@pouch.local", "Sent after purge");
    bob.sync();
    assert!(
        bob.inbox()
            .iter()
            .any(|m| m["subject"] == "Sent after purge")
    );
}
