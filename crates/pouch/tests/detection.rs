//! Detection: what is tried reaches the security team's stream and the
//! account's other devices at once (rules run as events are recorded).

mod common;

use common::*;

fn admin_alerts(server: &Server) -> Vec<serde_json::Value> {
    server.alerts()
}

#[test]
fn a_copy_that_fetches_first_leaves_a_gap_the_real_device_reports() {
    let dir = Scratch::new("gap");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let laptop = link(dir.path("laptop"), &server, &alice);
    laptop.sync();
    copy_dir(&laptop.home, &dir.path("stolen"));
    let stolen = Client {
        home: dir.path("stolen"),
        address: "alice@pouch.local".into(),
    };
    // Mail arrives; the copy, on another network, fetches and acknowledges it first.
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
    // The new network alone is only a (low) supporting signal.
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "new_network" && a["severity"] == "low"),
        "{alerts:?}"
    );
    assert!(
        !alerts.iter().any(|a| a["severity"] == "high"),
        "{alerts:?}"
    );
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
    let out = laptop.run(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a copy of this device fetched them"), "{err}");
    let alerts = admin_alerts(&server);
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "queue_gap" && a["severity"] == "high"),
        "{alerts:?}"
    );
    // The server saw it too: the laptop read from before what the copy had acknowledged.
    assert!(
        alerts.iter().any(|a| a["rule"] == "cloned_device"
            && a["summary"].as_str().unwrap().contains("had acknowledged")),
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
            .admin_approved(&["device", "revoke", "alice@pouch.local", &id])
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
fn a_device_past_the_rotation_window_is_reported_once() {
    let dir = Scratch::new("stale");
    let data = dir.path("server");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("pouch.toml"),
        "[detection]\nsweep_every = \"2s\"\n",
    )
    .unwrap();
    // A 2-second rotation window stands in for the default 24 hours.
    let server = Server::start_with(&data, None, "127.0.0.1:0", &["--rotation-hours", "0.0005"]);
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
    let bobs_device = device_id_of(&bob);
    let started = std::time::Instant::now();
    let stale_for_bob = || {
        admin_alerts(&server)
            .into_iter()
            .filter(|a| a["rule"] == "stale_device" && a["device"] == bobs_device.as_str())
            .collect::<Vec<_>>()
    };
    while stale_for_bob().is_empty() {
        assert!(
            started.elapsed().as_secs() < 10,
            "no stale_device alert: {:?}",
            admin_alerts(&server)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let found = stale_for_bob();
    assert_eq!(found[0]["severity"], "low");
    assert!(
        found[0]["summary"]
            .as_str()
            .unwrap()
            .contains("rotation window"),
        "{}",
        found[0]
    );
    // Later sweeps do not repeat it.
    std::thread::sleep(std::time::Duration::from_millis(4500));
    assert_eq!(stale_for_bob().len(), 1);
}
