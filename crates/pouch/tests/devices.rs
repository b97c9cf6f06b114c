//! Devices: no device joins an account without an existing device's
//! approval; a revoked device and an old copy of a device's state cannot read
//! what is sent afterwards; a reset account's contacts are warned.

mod common;

use common::*;

fn subjects(c: &Client) -> Vec<String> {
    c.inbox()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_linked_device_receives_new_mail_in_existing_conversations() {
    let dir = Scratch::new("link");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Before the link",
        "--body",
        "1",
    ]);
    alice.sync();

    let alice2 = link(dir.path("alice2"), &server, &alice);
    // The approving device records what it did.
    assert!(
        subjects(&alice)
            .iter()
            .any(|s| s.contains("New device 'new-laptop' was added")),
        "{:?}",
        subjects(&alice)
    );
    // Other accounts verify Alice's list without learning her devices' names
    // or where they were linked from: both are sealed to her account key,
    // which only her devices hold (the notice above was opened with it).
    let seen_by_bob = bob.json(&["verify", "alice@pouch.local", "--json"]);
    let devices = seen_by_bob["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for d in devices {
        assert!(
            d.get("name").is_none() && d.get("added_from").is_none() && d["sealed"].is_string(),
            "{d}"
        );
    }
    let db = server.db();
    let mut stmt = db
        .prepare("SELECT body FROM device_lists WHERE address = 'alice@pouch.local'")
        .unwrap();
    let bodies: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert!(
            !contains(body, b"laptop") && !contains(body, b"127.0.0.1"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    drop(stmt);
    drop(db);
    let list = alice.json(&["device", "list", "--json"]);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["state"] == "active")
            .count(),
        2,
        "{list}"
    );

    // Bob answers in the existing conversation: both of Alice's devices read it.
    let first = bob.sent()[0]["id"].to_string();
    bob.ok(&[
        "send",
        "--reply-to",
        &first,
        "--to",
        "alice@pouch.local",
        "--body",
        "after the link",
    ]);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "A new thread",
        "--body",
        "2",
    ]);
    for device in [&alice, &alice2] {
        let r = device.sync();
        assert!(r["rejected"].as_array().unwrap().is_empty(), "{r}");
        let s = subjects(device);
        assert!(s.contains(&"Re: Before the link".to_string()), "{s:?}");
        assert!(s.contains(&"A new thread".to_string()), "{s:?}");
    }
    // New devices get no history by default.
    assert!(!subjects(&alice2).contains(&"Before the link".to_string()));
    // Mail Alice sends from the new device reaches Bob and her first device.
    alice2.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "From the new laptop",
        "--body",
        "3",
    ]);
    bob.sync();
    assert!(subjects(&bob).contains(&"From the new laptop".to_string()));
    alice.sync();
    assert!(
        alice
            .sent()
            .iter()
            .any(|m| m["subject"] == "From the new laptop")
    );

    // A third device linked --with-history shows the old mail too, byte-exact,
    // including a large message kept as a file.
    let big = dir.path("big.bin");
    std::fs::write(&big, vec![0x5au8; 600 * 1024]).unwrap();
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Large",
        "--body",
        "4",
        "--attach",
        big.to_str().unwrap(),
    ]);
    alice.sync();
    let alice3 = link_with(dir.path("alice3"), &server, &alice, &["--with-history"]);
    let mut expected: Vec<(String, Vec<u8>)> = alice
        .inbox()
        .iter()
        .chain(alice.sent().iter())
        .filter(|m| m["from"] != "pouch-system")
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                alice.raw(m["id"].as_i64().unwrap()),
            )
        })
        .collect();
    let mut got: Vec<(String, Vec<u8>)> = alice3
        .inbox()
        .iter()
        .chain(alice3.sent().iter())
        .filter(|m| m["from"] != "pouch-system")
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                alice3.raw(m["id"].as_i64().unwrap()),
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(
        expected.len(),
        5,
        "{:?}",
        expected.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(
        got == expected,
        "history differs: {:?} vs {:?}",
        got.iter().map(|e| &e.0).collect::<Vec<_>>(),
        expected.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    // Alice's other device is told about the new one, with where it came from.
    alice2.sync();
    let notices: Vec<String> = subjects(&alice2)
        .into_iter()
        .filter(|s| s.contains("was added"))
        .collect();
    assert!(!notices.is_empty(), "{:?}", subjects(&alice2));
    let notice = alice2
        .inbox()
        .into_iter()
        .find(|m| m["subject"].as_str().unwrap().contains("was added"))
        .unwrap();
    let text = String::from_utf8(alice2.ok(&["read", &notice["id"].to_string()])).unwrap();
    assert!(
        text.contains("127.0.0.1") && text.contains("pouch device revoke"),
        "{text}"
    );
    // And the history device takes part in the conversations from now on.
    bob.ok(&[
        "send",
        "--reply-to",
        &first,
        "--to",
        "alice@pouch.local",
        "--body",
        "to all three",
    ]);
    alice3.sync();
    assert_eq!(
        alice3
            .inbox()
            .iter()
            .filter(|m| m["subject"] == "Re: Before the link")
            .count(),
        2
    );
}

#[test]
fn without_approval_a_device_gets_nothing() {
    let dir = Scratch::new("noapproval");
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--link-ttl-secs", "2"],
    );
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");

    // Denied.
    let denied = start_link(dir.path("denied"), &server, "alice@pouch.local", &[]);
    alice.ok(&["device", "deny", &denied.code]);
    let (status, err, _) = denied.finish();
    assert!(!status.success() && err.contains("denied"), "{err}");
    assert!(
        !dir.path("denied").join("device.db").exists(),
        "a denied device kept state"
    );

    // Expired (the server's window is 2 s here).
    let expired = start_link(dir.path("expired"), &server, "alice@pouch.local", &[]);
    let code = expired.code.clone();
    let (status, err, _) = expired.finish();
    assert!(!status.success() && err.contains("expired"), "{err}");
    assert_one_line_error(
        &alice.run(&["device", "approve", &code, "--yes"]),
        "expired",
    );
    // The security team sees both: a denial is an alert, an expiry a notice.
    let refused: Vec<serde_json::Value> = server
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "link_refused")
        .collect();
    assert!(
        refused.iter().any(|a| a["severity"] == "medium"
            && a["summary"].as_str().unwrap().contains("denied")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|a| a["severity"] == "low" && a["summary"].as_str().unwrap().contains("expired")),
        "{refused:?}"
    );

    // Approved by nobody: the new device gives up; the server never activated it.
    // (Against a second server on the same database with the default window,
    // so that a slow machine cannot turn this case into an expiry.)
    let patient = Server::start(&dir.path("server"), None);
    let ignored = start_link(
        dir.path("ignored"),
        &patient,
        "alice@pouch.local",
        &["--timeout-secs", "1"],
    );
    let (status, err, _) = ignored.finish();
    assert!(
        !status.success() && err.contains("no device approved"),
        "{err}"
    );

    // Mail to Alice reaches her one device only, and none of those three.
    let sent = bob.json(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Only Alice",
        "--body",
        "x",
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 1);

    // A wrong code is refused clearly.
    assert_one_line_error(
        &alice.run(&["device", "approve", "AAAA-BBBB-CCCC", "--yes"]),
        "no link request",
    );
    // Alice's devices were told about the denial.
    alice.sync();
    assert!(
        subjects(&alice).iter().any(|s| s.contains("was denied")),
        "{:?}",
        subjects(&alice)
    );
}

#[test]
fn a_device_the_server_adds_on_its_own_is_refused_and_reported() {
    let dir = Scratch::new("rogue");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");

    // An intruder with the database writes a device for Alice, active, with a key package.
    let db = server.db();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    db.execute(
        "INSERT INTO devices (device_id, address, name, signature_key, created_at, approved_at) \
         VALUES ('00112233445566778899aabbccddeeff', 'alice@pouch.local', 'rogue', ?1, ?2, ?2)",
        rusqlite::params![vec![7u8; 32], now],
    )
    .unwrap();
    db.execute(
        "INSERT INTO key_packages (device_id, data, last_resort) VALUES ('00112233445566778899aabbccddeeff', ?1, 0)",
        rusqlite::params![vec![1u8; 300]],
    )
    .unwrap();
    drop(db);

    // Bob's client refuses to encrypt to it, says so, and still reaches Alice.
    let out = bob.run(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Hello",
        "--body",
        "x",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["recipient_devices"], 1, "only Alice's real device");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not on alice@pouch.local's signed device list"),
        "{err}"
    );

    // Alice's device reports the unknown device: exit status 3, an alert, an inbox entry.
    let out = alice.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ALERT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        subjects(&alice)
            .iter()
            .any(|s| s.contains("ALERT: unknown device"))
    );
    assert!(subjects(&alice).contains(&"Hello".to_string()));
    let list = alice.json(&["device", "list", "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "rogue" && d["on_signed_list"] == false),
        "{list}"
    );

    // A list the account never signed is caught too: swap in a forged signature.
    let db = server.db();
    db.execute(
        "UPDATE device_lists SET signature = ?1 WHERE address = 'alice@pouch.local'",
        rusqlite::params![vec![0u8; 64]],
    )
    .unwrap();
    drop(db);
    // Bob verified Alice's list before and the log shows no change since:
    // he keeps using what he verified (the forgery reaches no one's keys).
    let sent = bob.json(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Again",
        "--body",
        "y",
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 1, "{sent}");
    // Whoever fetches the list now is refused it.
    let carol = user(&dir, &server, "carol");
    let out = carol.run(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Again",
        "--body",
        "y",
    ]);
    assert_one_line_error(&out, "not trustworthy");
}

#[test]
fn a_revoked_device_reads_nothing_sent_afterwards() {
    let dir = Scratch::new("revoke");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let alice2 = link(dir.path("alice2"), &server, &alice);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Before",
        "--body",
        "1",
    ]);
    alice2.sync();
    assert_eq!(subjects(&alice2), vec!["Before"]);
    let stolen = dir.path("alice2-stolen");
    copy_dir(&alice2.home, &stolen);
    let alice2_id = device_id_of(&alice2);

    alice.ok(&["device", "revoke", &alice2_id]);
    // Its requests are refused at once.
    assert_one_line_error(&alice2.run(&["sync"]), "sign-in failed");

    // Bob writes again in the same conversation; an intruder with the
    // server's database copies the ciphertext before Alice fetches it.
    bob.sync();
    let first = bob.sent()[0]["id"].to_string();
    let after = bob.json(&[
        "send",
        "--reply-to",
        &first,
        "--to",
        "alice@pouch.local",
        "--body",
        "after",
        "--json",
    ]);
    assert_eq!(
        after["recipient_devices"], 1,
        "only Alice's remaining device"
    );
    let db = server.db();
    let (payload_id, size, group, epoch): (i64, i64, String, i64) = db
        .query_row("SELECT payload_id, size, group_id, epoch FROM queue WHERE kind = 'application' ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    // Even a server that helps the stolen copy — re-activating the device and
    // handing it the new ciphertext — does not make it readable.
    db.execute(
        "UPDATE devices SET revoked_at = NULL, revoked_by = NULL WHERE device_id = ?1",
        [&alice2_id],
    )
    .unwrap();
    db.execute(
        "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload_id, size, received_at) \
         VALUES (?1, 1000, 'application', ?2, 'x', ?3, ?4, ?5, 0)",
        rusqlite::params![alice2_id, group, epoch, payload_id, size],
    )
    .unwrap();
    drop(db);
    let stolen_client = Client {
        home: stolen,
        address: "alice@pouch.local".into(),
    };
    let out = stolen_client.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the undecryptable item is reported: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbox = subjects(&stolen_client);
    assert!(
        !inbox.contains(&"Re: Before".to_string()),
        "the stolen state read new mail: {inbox:?}"
    );
    // Alice's remaining device reads it — and reports the device the server re-activated.
    let out = alice.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never signed for"));
    assert!(subjects(&alice).contains(&"Re: Before".to_string()));
}

#[test]
fn rotation_makes_an_old_copy_of_a_device_go_dark() {
    let dir = Scratch::new("rotation");
    // A 2-second rotation window stands in for the default 24 hours.
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--rotation-hours", "0.0005"],
    );
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "One",
        "--body",
        "1",
    ]);
    bob.sync();
    let old = dir.path("bob-old");
    copy_dir(&bob.home, &old);

    std::thread::sleep(std::time::Duration::from_millis(3200));
    // The administrator sees devices past the window.
    let stale = server.admin(&server.data_dir, &["devices", "--stale", "--json"]);
    let stale: serde_json::Value = serde_json::from_slice(&stale.stdout).unwrap();
    assert!(
        stale
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["address"] == "bob@pouch.local"),
        "{stale}"
    );
    let r = bob.sync();
    assert!(
        r["rotated"].as_u64().unwrap() >= 1,
        "Bob's device rotated: {r}"
    );
    alice.sync();
    alice.ok(&[
        "send",
        "--reply-to",
        &alice.sent()[0]["id"].to_string(),
        "--to",
        "bob@pouch.local",
        "--body",
        "two",
    ]);

    // The copy taken before the rotation fetches the new mail (same device,
    // same credentials) and cannot decrypt it.
    let old_client = Client {
        home: old,
        address: "bob@pouch.local".into(),
    };
    let out = old_client.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !subjects(&old_client).contains(&"Re: One".to_string()),
        "the old copy read new mail"
    );
}

#[test]
fn contacts_of_a_reset_account_must_confirm_the_new_key() {
    let dir = Scratch::new("reset");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Before",
        "--body",
        "1",
    ]);

    // A second invite for an account with a device is refused: only approval adds devices.
    let out = server.admin(&server.data_dir, &["user", "add", "bob@pouch.local"]);
    assert_one_line_error(&out, "already has a device");

    // Bob lost every device; the administrator resets the account.
    let out = server.admin_approved(&["user", "reset", "bob@pouch.local"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let bob_new = Client::enroll(dir.path("bob-new"), &invite, "bob@pouch.local");
    assert_one_line_error(&bob.run(&["sync"]), "sign-in failed");

    // Alice is stopped with a clear warning until she confirms the new key.
    let out = alice.run(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "After",
        "--body",
        "2",
    ]);
    assert_one_line_error(&out, "account key of bob@pouch.local has changed");
    let shown = String::from_utf8(alice.ok(&["verify", "bob@pouch.local"])).unwrap();
    assert!(
        shown.contains("CHANGED") && shown.contains("comparison code"),
        "{shown}"
    );
    // Both sides compute the same comparison code.
    let code_alice =
        alice.json(&["verify", "bob@pouch.local", "--json"])["comparison_code"].clone();
    let code_bob =
        bob_new.json(&["verify", "alice@pouch.local", "--json"])["comparison_code"].clone();
    assert_eq!(code_alice, code_bob);
    // The history comes from the transparency log: the reset is on the record.
    let history = alice.json(&["verify", "bob@pouch.local", "--json"])["history"].clone();
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["enrolled", "reset"], "{history}");
    alice.ok(&["verify", "bob@pouch.local", "--accept"]);
    let sent = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "After",
        "--body",
        "2",
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 1);
    // Bob's new device hears of the reset (an administrator action) and gets the mail.
    let out = bob_new.run(&["sync"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin_action"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail: Vec<String> = subjects(&bob_new)
        .into_iter()
        .filter(|s| !s.starts_with("Security alert"))
        .collect();
    assert_eq!(mail, vec!["After"]);
}
#[test]
fn an_administrator_revocation_reaches_the_account_and_its_conversations() {
    let dir = Scratch::new("adminrevoke");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let alice2 = link(dir.path("alice2"), &server, &alice);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Before",
        "--body",
        "1",
    ]);
    let alice2_id = device_id_of(&alice2);

    let out = server.admin_approved(&["device", "revoke", "alice@pouch.local", &alice2_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked (asked by ops2, approved by ops"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_one_line_error(&alice2.run(&["sync"]), "sign-in failed");

    // Alice's remaining device is told, takes the device off the signed list
    // and out of the conversation; the sync reports the administrator's action.
    let out = alice.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_action"));
    assert!(
        subjects(&alice)
            .iter()
            .any(|s| s.contains("administrator revoked a device")),
        "{:?}",
        subjects(&alice)
    );
    // The revocation is on the record in the transparency log, and an
    // auditor's walk of the log accepts it.
    assert!(
        subjects(&alice)
            .iter()
            .any(|s| s.contains("recorded in the log")),
        "{:?}",
        subjects(&alice)
    );
    let audit = pouch()
        .args([
            "log",
            "verify",
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    let list = alice.json(&["device", "list", "--json"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == alice2_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["on_signed_list"], false, "{list}");
    let first = bob.sent()[0]["id"].to_string();
    let reply = bob.json(&[
        "send",
        "--reply-to",
        &first,
        "--to",
        "alice@pouch.local",
        "--body",
        "2",
        "--json",
    ]);
    assert_eq!(reply["recipient_devices"], 1);
}

#[test]
fn a_user_whose_key_packages_ran_out_still_gets_new_conversations() {
    let dir = Scratch::new("last-resort");
    let server = Server::start(&dir.path("server"), None);
    let bob = user(&dir, &server, "bob");
    let alice = user(&dir, &server, "alice");
    let carol = user(&dir, &server, "carol");
    // Bob is offline while his pool of one-time packages is used up (here
    // by claims that start nothing), so only his last-resort package is left.
    let drainer = RawDevice::enroll(&server, "drainer@pouch.local");
    let bob_address = pouch_proto::Address::parse("bob@pouch.local").unwrap();
    let mut dry = false;
    for _ in 0..150 {
        let claimed = drainer.claim(std::slice::from_ref(&bob_address)).unwrap();
        assert!(!claimed.devices.is_empty(), "Bob's device is offered");
        if claimed.devices.iter().all(|d| d.last_resort) {
            dry = true;
            break;
        }
    }
    assert!(dry, "Bob's pool ran dry");
    // Two new conversations, both on the last-resort package.
    for (sender, subject) in [(&alice, "from alice"), (&carol, "from carol")] {
        let sent = sender.json(&[
            "send",
            "--to",
            "bob@pouch.local",
            "--subject",
            subject,
            "--body",
            "x",
            "--json",
        ]);
        assert_eq!(sent["recipient_devices"], 1, "{sent}");
    }
    // (Claims that start nothing are a drain: Bob's sync says so.)
    let out = bob.run(&["sync"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key_package_drain"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = subjects(&bob);
    assert!(
        got.contains(&"from alice".to_string()) && got.contains(&"from carol".to_string()),
        "{got:?}"
    );
}

/// The device's packages on the server: ordinary ones, and the last-resort one.
fn packages_on_server(server: &Server, device: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let db = server.db();
    let mut stmt = db
        .prepare("SELECT data, last_resort FROM key_packages WHERE device_id = ?1 ORDER BY id")
        .unwrap();
    let rows: Vec<(Vec<u8>, bool)> = stmt
        .query_map([device], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let ordinary = rows.iter().filter(|r| !r.1).map(|r| r.0.clone()).collect();
    let last: Vec<Vec<u8>> = rows.into_iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(last.len(), 1, "one last-resort package");
    (ordinary, last.into_iter().next().unwrap())
}

#[test]
fn key_packages_on_the_server_are_replaced_before_they_expire() {
    let dir = Scratch::new("kp-refresh");
    let server = Server::start(&dir.path("server"), None);
    let bob = user(&dir, &server, "bob");
    let alice = user(&dir, &server, "alice");
    let device = device_id_of(&bob);
    let (pool, last) = packages_on_server(&server, &device);
    assert_eq!(pool.len(), 100);
    // An ordinary sync leaves a full pool alone.
    bob.sync();
    assert_eq!(
        packages_on_server(&server, &device),
        (pool.clone(), last.clone())
    );
    // Four weeks on (here one second), the whole pool and the last-resort
    // package are replaced: none of the old ones can expire unused.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = bob
        .cmd()
        .env("POUCH_KEY_REFRESH_SECS", "1")
        .args(["sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (fresh_pool, fresh_last) = packages_on_server(&server, &device);
    assert_eq!(fresh_pool.len(), 100);
    assert!(
        fresh_pool.iter().all(|p| !pool.contains(p)),
        "every package is new"
    );
    assert_ne!(fresh_last, last);
    // And they work: a new conversation reaches Bob.
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "after refresh",
        "--body",
        "x",
    ]);
    bob.sync();
    assert!(subjects(&bob).contains(&"after refresh".to_string()));
}
