//! Bad input gets one clear line and loses nothing: invites that are wrong,
//! reused or expired; unknown recipients; a tampered ciphertext; a server
//! that is down; a wrong passphrase. None of them may panic.

mod common;

use common::*;

#[test]
fn invites_wrong_reused_or_expired_are_refused_clearly() {
    let dir = Scratch::new("invites");
    let server = Server::start(&dir.path("server"), None);
    let fresh = |name: &str| Client {
        home: dir.path(name),
        address: String::new(),
    };

    assert_one_line_error(
        &fresh("garbage").run(&["enroll", "not-an-invite"]),
        "not a valid Pouch invite",
    );
    let invite = server.invite("dan@pouch.local");
    assert_one_line_error(
        &fresh("truncated").run(&["enroll", &invite[..invite.len() - 6]]),
        "not a valid Pouch invite",
    );

    Client::enroll(dir.path("dan1"), &invite, "dan@pouch.local");
    let reused = fresh("dan2").run(&["enroll", &invite]);
    assert_one_line_error(&reused, "already been used");
    assert!(
        !dir.path("dan2").join("device.db").exists(),
        "a refused enrollment left device state behind"
    );

    let expired = server.invite_with(
        &server.data_dir,
        "erin@pouch.local",
        &["--expires-hours", "0"],
    );
    assert_one_line_error(&fresh("erin").run(&["enroll", &expired]), "expired");

    // An invite whose secret was altered is not valid.
    let mut forged: pouch_proto::invite::Invite =
        pouch_proto::invite::Invite::decode(&server.invite("fay@pouch.local")).unwrap();
    forged.secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    assert_one_line_error(
        &fresh("fay").run(&["enroll", &forged.encode()]),
        "not valid",
    );

    // A wrong certificate fingerprint is refused before anything is sent.
    let mut pinned_wrong =
        pouch_proto::invite::Invite::decode(&server.invite("gus@pouch.local")).unwrap();
    pinned_wrong.fingerprint = "00".repeat(32);
    assert_one_line_error(
        &fresh("gus").run(&["enroll", &pinned_wrong.encode()]),
        "not issued by the trust anchor from your invite",
    );

    // An administrator key the server does not know gets nowhere.
    let stranger = dir.path("stranger-admin");
    let out = server.admin_init(&stranger, "mallory", &stranger.join("none"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &server.admin_as(&stranger, &["user", "add", "x@pouch.local"]),
        "administrator sign-in failed",
    );
    // Without any key: what to run first.
    assert_one_line_error(
        &server.admin_as(&dir.path("nobody-admin"), &["user", "list"]),
        "pouch admin init",
    );
}

#[test]
fn unknown_recipients_and_wrong_passphrase_are_reported() {
    let dir = Scratch::new("recipients");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let out = alice.run(&[
        "send",
        "--to",
        "nobody@pouch.local",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    assert_one_line_error(&out, "nobody@pouch.local is not a Pouch user");
    let out = alice.run(&[
        "send",
        "--to",
        "not an address",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    assert_one_line_error(&out, "not a valid address");
    // Invited but never enrolled: nothing can be encrypted to them yet.
    server.invite("later@pouch.local");
    let out = alice.run(&[
        "send",
        "--to",
        "later@pouch.local",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    assert_one_line_error(&out, "no enrolled device");
    assert!(alice.sent().is_empty(), "a failed send was listed as sent");

    let wrong = alice
        .cmd()
        .env("POUCH_PASSPHRASE", "not the passphrase")
        .args(["inbox"])
        .output()
        .unwrap();
    assert_one_line_error(&wrong, "wrong passphrase");
    let missing = Client {
        home: dir.path("nobody"),
        address: String::new(),
    }
    .run(&["inbox"]);
    assert_one_line_error(&missing, "enroll first");
    assert_one_line_error(&alice.run(&["read", "42"]), "no message 42");
}

#[test]
fn tampered_ciphertext_is_rejected_and_the_rest_of_the_sync_goes_on() {
    let dir = Scratch::new("tamper");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "first",
        "--body",
        "one",
    ]);
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "second",
        "--body",
        "two",
    ]);

    // An intruder with the server's database flips one byte of the first message.
    let db = rusqlite::Connection::open(server.data_dir.join("pouch.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let (payload_id, mut payload): (i64, Vec<u8>) = db
        .query_row("SELECT p.payload_id, p.data FROM queue q JOIN queue_payloads p ON p.payload_id = q.payload_id \
                    WHERE q.kind = 'application' ORDER BY q.seq LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let at = payload.len() - 20;
    payload[at] ^= 0x40;
    db.execute(
        "UPDATE queue_payloads SET data = ?1 WHERE payload_id = ?2",
        rusqlite::params![payload, payload_id],
    )
    .unwrap();
    drop(db);

    let out = bob.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a rejected item must show in the exit status"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rejected queue item") && err.lines().count() == 1,
        "{err}"
    );
    let inbox = bob.inbox();
    let mail: Vec<_> = inbox
        .iter()
        .filter(|m| m["from"] != "pouch-system")
        .collect();
    assert_eq!(mail.len(), 1, "the untampered message still arrives");
    assert_eq!(mail[0]["subject"], "second");
    assert!(
        inbox.iter().any(|m| m["subject"]
            .as_str()
            .unwrap()
            .contains("could not be opened")),
        "the refusal is in the inbox: {inbox:?}"
    );
    // The rejected item was acknowledged, so the next sync is clean.
    assert!(bob.run(&["sync"]).status.success());
}

#[test]
fn a_server_that_is_down_keeps_the_mail_and_nothing_is_listed_as_sent() {
    let dir = Scratch::new("down");
    let mut server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "before",
        "--body",
        "x",
    ]);
    server.stop();
    let out = alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "during",
        "--body",
        "y",
    ]);
    let said = String::from_utf8_lossy(&out);
    assert!(
        said.contains("kept in the outbox (1 waiting)")
            && said.contains("cannot reach the Pouch server"),
        "{said}"
    );
    assert_eq!(alice.sent().len(), 1, "a kept mail is not listed as sent");
    assert_one_line_error(&bob.run(&["sync"]), "cannot reach the Pouch server");
    assert!(bob.inbox().is_empty());

    // The server comes back on the same port: nothing acknowledged was lost.
    let addr = server.url.trim_start_matches("https://").to_string();
    let _server = Server::start_on(&dir.path("server"), None, &addr);
    alice.sync();
    bob.sync();
    let subjects: Vec<String> = bob
        .inbox()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"before".to_string()) && subjects.contains(&"during".to_string()));
}

#[test]
fn a_mail_may_have_a_thousand_recipients_and_no_more() {
    let dir = Scratch::new("thousand");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let many = |n: usize| -> Vec<String> { (0..n).map(|i| format!("r{i}@pouch.local")).collect() };
    // More than 1,000 in To and Cc: refused before anything is sent.
    let out = alice.run(&[
        "send",
        "--to",
        &many(1001).join(","),
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    assert_one_line_error(&out, "1001 recipients");
    // The server's claim takes 1,000 recipients plus the sender: with 1,001
    // addresses the count passes and the first unknown address is named.
    let raw = RawDevice::enroll(&server, "raw@pouch.local");
    let claim = |n: usize| {
        let addresses: Vec<_> = many(n)
            .iter()
            .map(|a| pouch_proto::Address::parse(a).unwrap())
            .collect();
        raw.claim(&addresses)
    };
    match claim(pouch_proto::MAX_RECIPIENTS + 1) {
        Err(pouch_client::ClientError::Server {
            status, message, ..
        }) => {
            assert_eq!(status, 404, "{message}");
            assert!(
                message.contains("r0@pouch.local is not a Pouch user"),
                "{message}"
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match claim(pouch_proto::MAX_RECIPIENTS + 2) {
        Err(pouch_client::ClientError::Server {
            status, message, ..
        }) => {
            assert_eq!(status, 400, "{message}");
            assert!(message.contains("at most 1001 addresses"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A listing piped into a reader that stops early (`pouch inbox | head`)
/// ends quietly: no panic, no "Broken pipe" error, success. And `pouch
/// sent` names whom each mail went to, not the sender (always you).
#[test]
fn a_closed_pipe_ends_a_listing_quietly_and_sent_mail_names_its_recipients() {
    let dir = Scratch::new("closed-pipe");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let _bob = user(&dir, &server, "bob");
    let _carol = user(&dir, &server, "carol");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--cc",
        "carol@pouch.local",
        "--subject",
        "to two",
        "--body",
        "x",
    ]);
    let listing = String::from_utf8(alice.ok(&["sent"])).unwrap();
    assert!(listing.contains("to bob@pouch.local +1"), "{listing}");
    assert!(!listing.contains("alice@pouch.local"), "{listing}");

    // The reader is gone before the first line is written.
    let mut child = alice
        .cmd()
        .args(["sent"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
