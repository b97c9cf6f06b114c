//! Detection: what is tried reaches the security team's stream and the
//! account's other devices at once (rules run as events are recorded).

mod common;

use common::*;
use std::time::Instant;

fn admin_alerts(server: &Server) -> Vec<serde_json::Value> {
    let out = server.admin(&server.data_dir, &["alerts", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_copied_device_used_from_a_second_address_is_reported_within_seconds() {
    let dir = Scratch::new("cloned");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let alice2 = link(dir.path("alice2"), &server, &alice);
    alice2.sync();
    // An intruder copies the second device's state directory and uses it from 127.0.0.2.
    copy_dir(&alice2.home, &dir.path("stolen"));
    let stolen = Client {
        home: dir.path("stolen"),
        address: "alice@pouch.local".into(),
    };
    let started = Instant::now();
    let _ = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();

    let alerts = admin_alerts(&server);
    let cloned = alerts
        .iter()
        .find(|a| a["rule"] == "cloned_device")
        .expect("a cloned-device alert");
    assert_eq!(cloned["severity"], "high");
    assert_eq!(cloned["account"], "alice@pouch.local");
    assert!(
        cloned["summary"].as_str().unwrap().contains("127.0.0.2"),
        "{cloned}"
    );
    // Alice's first device is told on its next sync, and the sync says so in its status.
    let out = alice.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cloned_device"));
    assert!(
        alice
            .inbox()
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("cloned device"))
    );
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
    // The new network is a (low) supporting signal for the security team.
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "new_network" && a["severity"] == "low"),
        "{alerts:?}"
    );

    // Mail arrives; the copy fetches and acknowledges it first. The real device
    // finds the gap in its queue and says so.
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "for alice",
        "--body",
        "x",
    ]);
    let _ = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();
    // (The gap shows when the next item arrives.)
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "again",
        "--body",
        "y",
    ]);
    let out = alice2.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fetched by someone else"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "queue_gap" && a["severity"] == "high"),
        "{alerts:?}"
    );
}

#[test]
fn bad_invites_and_administrator_actions_raise_alerts() {
    let dir = Scratch::new("bruteforce");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let alice2 = link(dir.path("alice2"), &server, &alice);
    // Five invites forged for Bob's address, from one source.
    server.invite("bob@pouch.local");
    let mut forged =
        pouch_proto::invite::Invite::decode(&server.invite("carol@pouch.local")).unwrap();
    forged.address = pouch_proto::Address::parse("bob@pouch.local").unwrap();
    for i in 0..5 {
        let c = Client {
            home: dir.path(&format!("guess{i}")),
            address: String::new(),
        };
        assert!(!c.run(&["enroll", &forged.encode()]).status.success());
    }
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "invite_brute_force" && a["severity"] == "high"),
        "{alerts:?}"
    );

    // The administrator revokes Alice's second device: the security team and Alice's device hear of it.
    let id = device_id_of(&alice2);
    assert!(
        server
            .admin(
                &server.data_dir,
                &["device", "revoke", "alice@pouch.local", &id]
            )
            .status
            .success()
    );
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "admin_action" && a["account"] == "alice@pouch.local"),
        "{alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "new_device" && a["account"] == "alice@pouch.local"),
        "{alerts:?}"
    );
    let out = alice.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        alice
            .inbox()
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("admin action"))
    );
}

#[test]
fn a_reused_invite_and_a_deleted_event_raise_alerts_within_seconds() {
    let dir = Scratch::new("reuse");
    let server = Server::start(&dir.path("server"), None);
    let invite = server.invite("alice@pouch.local");
    let alice = Client::enroll(dir.path("alice"), &invite, "alice@pouch.local");
    // Someone else tries the same invite: it was stolen.
    let thief = Client {
        home: dir.path("thief"),
        address: String::new(),
    };
    let started = Instant::now();
    assert_one_line_error(&thief.run(&["enroll", &invite]), "already been used");
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "invite_reuse" && a["account"] == "alice@pouch.local"),
        "{alerts:?}"
    );
    let out = alice.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invite_reuse"));

    // An intruder deletes an event row to hide a trace: the chain check notices.
    server
        .db()
        .execute("DELETE FROM events WHERE seq = 2", [])
        .unwrap();
    let found = loop {
        let alerts = admin_alerts(&server);
        if let Some(a) = alerts
            .into_iter()
            .find(|a| a["rule"] == "audit_chain_broken")
        {
            break a;
        }
        assert!(
            started.elapsed().as_secs() < 5,
            "no audit_chain_broken alert within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(found["severity"], "critical");
    assert!(
        found["summary"]
            .as_str()
            .unwrap()
            .contains("event 2 is missing"),
        "{found}"
    );
}
