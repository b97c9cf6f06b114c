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

/// Waits until `who` has received `subject` (the bridge answers SMTP once
/// the mail is in its outbox, and sends it right after).
fn wait_until_received(who: &Client, subject: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        who.sync();
        if who.inbox().iter().any(|m| m["subject"] == subject) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "'{subject}' never reached {}",
            who.address
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Submits a mail through the bridge's SMTP port.
fn submit(bridge: &Bridge, to: &str, subject: &str) {
    submit_with_blind(bridge, to, &[], subject)
}

/// Submits a mail to `to`, with blind copies to `blind` (envelope only).
fn submit_with_blind(bridge: &Bridge, to: &str, blind: &[&str], subject: &str) {
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
    let rcpts: String = std::iter::once(to)
        .chain(blind.iter().copied())
        .map(|r| format!("RCPT TO:<{r}>\r\n"))
        .collect();
    c.send(format!("MAIL FROM:<alice@pouch.local>\r\n{rcpts}DATA\r\n").as_bytes())
        .unwrap();
    assert!(c.line().starts_with("250"));
    for _ in 0..1 + blind.len() {
        let rcpt = c.line();
        assert!(rcpt.starts_with("250"), "RCPT refused: {rcpt}");
    }
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
    wait_until_received(&bob, "Reply after renewal");

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
    wait_until_received(&bob, "Sent after purge");
}

/// The bridge answers SMTP once a mail is in its encrypted outbox: a mail
/// handed over while the server is unreachable is accepted, survives the
/// bridge being killed, and goes once the server is back. A mail that can
/// never go (the recipient's account key changed since) comes back as a
/// notice in the INBOX saying why, and is not sent.
#[test]
fn mail_accepted_while_the_server_is_down_goes_when_it_is_back_even_across_a_crash() {
    let dir = Scratch::new("outbox");
    let mut server = Server::start(&dir.path("server"), None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");
    let mut bridge = Bridge::start(&alice);
    submit(&bridge, "bob@pouch.local", "Before the outage");
    wait_until_received(&bob, "Before the outage");

    // The link to the server goes down; the mail client still hands over
    // its mail (Bob was found reachable a moment ago).
    server.stop();
    submit(&bridge, "bob@pouch.local", "Written during the outage");
    // The bridge dies before it could send it.
    let _ = bridge.child.kill();
    let _ = bridge.child.wait();
    // Queued, encrypted at rest like the rest of the home.
    assert!(alice.home.join("outbox.db").exists());
    assert!(
        !contains(&read_tree(&alice.home), b"Written during the outage"),
        "a queued mail lies in the home in clear"
    );
    server = Server::start_on(&dir.path("server"), None, &listen);
    let bridge = Bridge::start(&alice);
    wait_until_received(&bob, "Written during the outage");
    assert_eq!(
        bob.inbox()
            .iter()
            .filter(|m| m["subject"] == "Written during the outage")
            .count(),
        1,
        "sent once"
    );

    // Bob's account is reset behind Alice's back (a new account key): the
    // queued mail cannot go until Alice confirms the key, so it comes back.
    // Bob was reachable a moment before, so RCPT accepts him again for a
    // minute (the send itself verifies his key): the mail is queued.
    submit(&bridge, "bob@pouch.local", "Just before the reset");
    wait_until_received(&bob, "Just before the reset");
    let out = server.admin_approved(&["user", "reset", "bob@pouch.local"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let bob_new = Client::enroll(dir.path("bob-new"), &invite, "bob@pouch.local");
    submit(&bridge, "bob@pouch.local", "After the reset");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let notice = loop {
        let inbox = alice.inbox();
        if let Some(n) = inbox
            .iter()
            .find(|m| m["subject"] == "Not sent: After the reset")
        {
            break alice.raw(n["id"].as_i64().unwrap());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notice of the mail that could not go: {inbox:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Why depends on how far the bridge has seen the reset: Bob without a
    // device for a moment, or Bob with a new key; either way, not sent.
    let notice = String::from_utf8_lossy(&notice);
    assert!(
        notice.contains("\"After the reset\" to bob@pouch.local could not be sent")
            && (notice.contains("account key of bob@pouch.local has changed")
                || notice.contains("bob@pouch.local has no enrolled device")),
        "{notice}"
    );
    // A notice says when (a mail client shows that, not the download time)
    // and has an id of its own.
    assert!(notice.contains("\r\nDate: "), "{notice}");
    assert!(notice.contains("\r\nMessage-ID: <notice-"), "{notice}");
    // A mail whose To copy goes but whose blind copy cannot: never sent
    // again to Carol, who has it; the notice says who got it.
    submit_with_blind(
        &bridge,
        "carol@pouch.local",
        &["bob@pouch.local"],
        "Partly sent",
    );
    wait_until_received(&carol, "Partly sent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let notice = loop {
        if let Some(n) = alice
            .inbox()
            .iter()
            .find(|m| m["subject"] == "Not sent: Partly sent")
        {
            break String::from_utf8_lossy(&alice.raw(n["id"].as_i64().unwrap())).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notice of the partly sent mail"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        notice.contains("It did reach: carol@pouch.local. Do not send it to them again."),
        "{notice}"
    );
    // Well past the first retry's wait: still one copy at Carol's.
    std::thread::sleep(Duration::from_secs(3));
    carol.sync();
    assert_eq!(
        carol
            .inbox()
            .iter()
            .filter(|m| m["subject"] == "Partly sent")
            .count(),
        1,
        "a partly sent mail was sent again"
    );
    // (Bob's new device is told about the reset with alerts: a non-zero exit.)
    let _ = bob_new.run(&["sync"]);
    assert!(
        !bob_new
            .inbox()
            .iter()
            .any(|m| m["subject"] == "After the reset"),
        "a mail to a changed key went without Alice's confirmation"
    );
}

/// curl (an independent TLS client) trusting nothing but `anchor`: the
/// chain the server sends, the name and the dates are checked.
fn curl_trusting(anchor: &std::path::Path, url: &str) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(anchor)
        .arg(format!("{url}/healthz"))
        .output()
        .expect("curl is installed")
}

/// Certificate renewal needs nothing from devices: a server restarted with
/// a new serving certificate from the same trust anchor is used at once by
/// an enrolled device and by a bridge that kept running. A certificate from
/// another CA (here another Pouch server's, valid for the same names) is
/// refused with a one-line error, and the bridge sends nothing to it.
#[test]
fn a_renewed_certificate_needs_nothing_from_devices_and_another_ca_is_refused() {
    let dir = Scratch::new("renewal");
    let data = dir.path("server");
    let mut server = Server::start(&data, None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let anchor = data.join("tls-anchor.pem");
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let bridge = Bridge::start(&alice);
    let send = |subject: &str| {
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            subject,
            "--body",
            "x",
        ]);
    };
    send("Before renewal");
    wait_in_inbox(&bridge, "Before renewal");
    let out = curl_trusting(&anchor, &server.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Renewal: the serving certificate goes (as one near its end would);
    // the server issues a new one from its anchor when it starts.
    let first_cert = std::fs::read(data.join("tls-cert.pem")).unwrap();
    let anchor_fingerprint = server.fingerprint.clone();
    server.stop();
    std::fs::remove_file(data.join("tls-cert.pem")).unwrap();
    std::fs::remove_file(data.join("tls-key.pem")).unwrap();
    server = Server::start_on(&data, None, &listen);
    assert_ne!(
        std::fs::read(data.join("tls-cert.pem")).unwrap(),
        first_cert
    );
    assert_eq!(server.fingerprint, anchor_fingerprint, "the anchor stays");
    let out = curl_trusting(&anchor, &server.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No action from anyone: the device's next command and the running
    // bridge (which reconnects by itself) use the renewed certificate.
    send("After renewal");
    wait_in_inbox(&bridge, "After renewal");
    submit(&bridge, "bob@pouch.local", "Sent after renewal");
    wait_until_received(&bob, "Sent after renewal");

    // An intruder's certificate: issued by another CA for the same names.
    let other = dir.path("other-server");
    drop(Server::start(&other, None));
    server.stop();
    server = Server::start_with(
        &data,
        None,
        &listen,
        &[
            "--tls-cert",
            other.join("tls-cert.pem").to_str().unwrap(),
            "--tls-key",
            other.join("tls-key.pem").to_str().unwrap(),
        ],
    );
    assert_ne!(server.fingerprint, anchor_fingerprint);
    let out = bob.run(&["sync"]);
    assert_one_line_error(&out, "not issued by the trust anchor from your invite");
    let out = curl_trusting(&anchor, &server.url);
    assert!(!out.status.success(), "curl trusted another CA");
    // The bridge keeps the mail it accepted while the impostor answers,
    // and sends it once the real server is back.
    submit(&bridge, "bob@pouch.local", "Kept from an impostor");
    std::thread::sleep(Duration::from_secs(2));
    server.stop();
    server = Server::start_on(&data, None, &listen);
    assert_eq!(server.fingerprint, anchor_fingerprint);
    wait_until_received(&bob, "Kept from an impostor");
    assert_eq!(
        bob.inbox()
            .iter()
            .filter(|m| m["subject"] == "Kept from an impostor")
            .count(),
        1,
        "sent once"
    );
}

/// `pouch send` on a poor link: while the server cannot be reached, each
/// mail is kept in the outbox (in order, replies included) and `pouch
/// outbox` shows them; once it is back, `pouch sync` sends them, each
/// exactly once, before reading new mail. A mail kept by `pouch send` is
/// also sent by the bridge.
#[test]
fn mail_sent_while_the_server_is_down_is_kept_and_delivered_exactly_once() {
    let dir = Scratch::new("cli-outbox");
    let mut server = Server::start(&dir.path("server"), None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let first = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Agenda",
        "--body",
        "1",
        "--json",
    ]);
    let first_id = first["id"].as_i64().unwrap().to_string();
    bob.sync();

    server.stop();
    for (n, subject) in ["Kept 1", "Kept 2"].iter().enumerate() {
        let kept = alice.json(&[
            "send",
            "--to",
            "bob@pouch.local",
            "--subject",
            subject,
            "--body",
            "x",
            "--json",
        ]);
        assert_eq!(kept["kept"], true, "{kept}");
        assert_eq!(kept["waiting"], n as u64 + 1, "{kept}");
    }
    let reply = alice.json(&[
        "send",
        "--reply-to",
        &first_id,
        "--to",
        "bob@pouch.local",
        "--body",
        "a reply",
        "--json",
    ]);
    assert_eq!(reply["kept"], true, "{reply}");
    let waiting = alice.json(&["outbox", "--json"]);
    let subjects: Vec<&str> = waiting
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Kept 1", "Kept 2", "Re: Agenda"]);
    assert!(
        !contains(&read_tree(&alice.home), b"Kept 1"),
        "a kept mail lies in the home in clear"
    );

    server = Server::start_on(&dir.path("server"), None, &listen);
    let report = alice.sync();
    assert_eq!(
        report["outbox"]["sent"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    assert_eq!(report["outbox"]["waiting"], 0);
    assert_eq!(alice.json(&["outbox", "--json"]), serde_json::json!([]));
    // Again: nothing goes twice.
    let report = alice.sync();
    assert!(
        report["outbox"]["sent"].as_array().unwrap().is_empty(),
        "{report}"
    );
    bob.sync();
    let inbox = bob.inbox();
    for subject in ["Kept 1", "Kept 2", "Re: Agenda"] {
        assert_eq!(
            inbox.iter().filter(|m| m["subject"] == subject).count(),
            1,
            "{subject}: {inbox:?}"
        );
    }
    // The reply stayed in its conversation.
    let conversation_of = |subject: &str| {
        inbox.iter().find(|m| m["subject"] == subject).unwrap()["conversation"].clone()
    };
    assert_eq!(conversation_of("Re: Agenda"), conversation_of("Agenda"));
    // Sent lists each once, only now that it went.
    let sent = alice.sent();
    assert_eq!(
        sent.iter().filter(|m| m["subject"] == "Kept 1").count(),
        1,
        "{sent:?}"
    );

    // Kept by `pouch send`, sent by the bridge.
    server.stop();
    let kept = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "For the bridge",
        "--body",
        "x",
        "--json",
    ]);
    assert_eq!(kept["kept"], true, "{kept}");
    server = Server::start_on(&dir.path("server"), None, &listen);
    let _bridge = Bridge::start(&alice);
    wait_until_received(&bob, "For the bridge");
    assert_eq!(
        bob.inbox()
            .iter()
            .filter(|m| m["subject"] == "For the bridge")
            .count(),
        1
    );
    drop(server);
}

/// A change of trust anchor (`pouch server --rotate-anchor`): the old
/// anchor cross-signs the new, so a device and an administrator that trust
/// the old one follow it on their next connection and say so once; new
/// invites carry the new one; the change is an alert for the security
/// team. A device that missed an endorsement (offline through two changes)
/// is refused with one line until its user accepts the anchor the operator
/// announced — and only that one.
#[test]
fn a_changed_anchor_is_followed_when_the_old_one_endorses_it_and_else_only_by_the_user() {
    let dir = Scratch::new("anchor-change");
    let data = dir.path("server");
    let mut server = Server::start(&data, None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let first_anchor = server.fingerprint.clone();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    server.stop();

    let mut server = Server::start_with(&data, None, &listen, &["--rotate-anchor"]);
    let second_anchor = server.fingerprint.clone();
    assert_ne!(second_anchor, first_anchor);
    // Alice's device follows, and says so once (a security signal: exit 3).
    let out = alice.run(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("changed from {first_anchor} to {second_anchor}")),
        "{err}"
    );
    let shown = String::from_utf8(alice.ok(&["trust-anchor", "show"])).unwrap();
    assert!(
        shown.contains(&format!("trust anchor SHA-256: {second_anchor}"))
            && shown.contains(&format!("replaced: {first_anchor}")),
        "{shown}"
    );
    let out = alice.run(&["sync"]);
    assert!(
        out.status.success(),
        "once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The administrator follows too, and the security team was told.
    let alerts = server.admin(&data, &["alerts", "--json"]);
    let alerts = String::from_utf8_lossy(&alerts.stdout);
    assert!(alerts.contains("trust anchor was changed"), "{alerts}");
    let admin_file = std::fs::read_to_string(admin_home_of(&data).join("admin.json")).unwrap();
    assert!(admin_file.contains(&second_anchor), "{admin_file}");
    // New invites carry the new anchor.
    let carol = user(&dir, &server, "carol");
    carol.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "hi",
        "--body",
        "x",
    ]);

    // A second change while Bob's device is away (a week later: the server
    // refuses two changes in a row): the chain is endorsed by the second
    // anchor only, and Bob's device trusts the first.
    server.stop();
    let cross = std::fs::File::options()
        .write(true)
        .open(data.join("tls-anchor-cross.pem"))
        .unwrap();
    cross
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(8 * 86_400))
        .unwrap();
    drop(cross);
    let server = Server::start_with(&data, None, &listen, &["--rotate-anchor"]);
    let third_anchor = server.fingerprint.clone();
    let out = bob.run(&["sync"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not issued by the trust anchor"), "{err}");
    // Accepting an anchor the server does not show changes nothing.
    let out = bob.run(&["trust-anchor", "accept", &first_anchor.replace('a', "b")]);
    assert!(!out.status.success());
    let shown = String::from_utf8(bob.ok(&["trust-anchor", "show"])).unwrap();
    assert!(shown.contains(&first_anchor), "{shown}");
    // The one the operator announced: accepted, and mail flows.
    bob.ok(&["trust-anchor", "accept", &third_anchor]);
    let report = bob.sync();
    assert!(
        report["new_messages"].as_array().unwrap().is_empty(),
        "{report}"
    );
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "after",
        "--body",
        "y",
    ]);
    bob.sync();
    assert!(bob.inbox().iter().any(|m| m["subject"] == "after"));
}

/// What the relay between devices and server does with a connection.
#[derive(Clone, Copy, PartialEq)]
enum RelayMode {
    /// Everything both ways.
    Pass,
    /// Once the device has sent more than this many bytes on a connection,
    /// the server's answers on it are swallowed and the connection closed:
    /// a request that reached the server whose answer was lost.
    SwallowAnswersAfter(usize),
}

/// A TCP relay on loopback in front of the server (TLS passes through it
/// untouched): the link of an embassy that loses answers.
struct Relay {
    url: String,
    mode: std::sync::Arc<std::sync::Mutex<RelayMode>>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let mode = std::sync::Arc::new(std::sync::Mutex::new(RelayMode::Pass));
        let shared = mode.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue; // the server is down: the device sees the connection fail
                };
                let mode = *shared.lock().unwrap();
                let muted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                // Server → device, unless muted.
                let (mut from_server, mut to_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                let mute = muted.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from_server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if !mute.load(std::sync::atomic::Ordering::SeqCst)
                            && to_client.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                });
                // Device → server, counting.
                let (mut from_client, mut to_server) = (client, server);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut sent = 0usize;
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if let RelayMode::SwallowAnswersAfter(limit) = mode
                            && sent > limit
                            && !muted.swap(true, std::sync::atomic::Ordering::SeqCst)
                        {
                            // Let the server take the whole request and
                            // answer into the void, then cut the line.
                            let (client, server) = (
                                from_client.try_clone().unwrap(),
                                to_server.try_clone().unwrap(),
                            );
                            std::thread::spawn(move || {
                                std::thread::sleep(Duration::from_secs(2));
                                let _ = client.shutdown(Shutdown::Both);
                                let _ = server.shutdown(Shutdown::Both);
                            });
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Both);
                });
            }
        });
        Relay { url, mode }
    }

    fn set(&self, mode: RelayMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

/// A mail kept in the outbox whose sending reached the server but whose
/// answer was lost is tried again, and the server queues it once (the
/// retry carries the same submission id): the recipient gets one copy and
/// no false "withheld mail" alarm, and the sender's next mail follows on.
#[test]
fn an_outbox_mail_whose_answer_was_lost_is_delivered_once() {
    let dir = Scratch::new("lost-answer");
    let mut server = Server::start(&dir.path("server"), None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let relay = Relay::start(listen.clone());
    server.url = relay.url.clone();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "first",
        "--body",
        "1",
    ]);
    bob.sync();

    // The server is down: the mail is kept.
    server.stop();
    // ~190 KB once encoded: more than any other request, still inline.
    let annex = dir.path("annex.txt");
    std::fs::write(&annex, "the annex, at length. ".repeat(6500)).unwrap();
    let kept = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Annex",
        "--body",
        "see annex",
        "--attach",
        annex.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(kept["kept"], true, "{kept}");

    // Back, on a line that loses the answer to the big request.
    let mut server = Server::start_on(&dir.path("server"), None, &listen);
    server.url = relay.url.clone();
    relay.set(RelayMode::SwallowAnswersAfter(100_000));
    let out = alice.run(&["sync", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        report["outbox"]["waiting"], 1,
        "the answer was lost: {report}"
    );
    relay.set(RelayMode::Pass);
    // The server did take it: Bob has it.
    bob.sync();
    let annexes =
        |inbox: &[serde_json::Value]| inbox.iter().filter(|m| m["subject"] == "Annex").count();
    assert_eq!(annexes(&bob.inbox()), 1);

    // The retry is answered "accepted before": the outbox empties, nothing
    // is queued again.
    let report = alice.sync();
    assert_eq!(
        report["outbox"]["sent"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["outbox"]["waiting"], 0, "{report}");
    let out = bob.run(&["sync", "--json"]);
    assert!(
        out.status.success(),
        "no alert (no gap in Alice's chain): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(annexes(&bob.inbox()), 1, "delivered once");
    // Alice's next mail follows on in her chain: no alarm either.
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "next",
        "--body",
        "3",
    ]);
    let out = bob.run(&["sync", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bob.inbox().iter().any(|m| m["subject"] == "next"));
    assert_eq!(
        alice
            .sent()
            .iter()
            .filter(|m| m["subject"] == "Annex")
            .count(),
        1,
        "one copy in Alice's Sent"
    );
}
