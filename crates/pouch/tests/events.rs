//! Access events: what each device did, when and from where, for the user
//! (`pouch activity`) and the security team (export as JSON lines or OCSF);
//! the hash chain shows a deleted or edited event.

mod common;

use common::*;

#[test]
fn activity_export_and_a_tampered_chain() {
    let dir = Scratch::new("events");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "MARKER-EVENTS-SUBJECT",
        "--body",
        "x",
    ]);
    alice.sync();

    // Alice sees her own account's events: enrollment, sign-ins, the fetch with its size.
    let activity = alice.json(&["activity", "--json"]);
    let events: Vec<serde_json::Value> = activity["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in ["enroll", "sign_in", "queue_fetch"] {
        assert!(actions.contains(&expected), "{actions:?}");
    }
    let fetch = events
        .iter()
        .find(|e| e["action"] == "queue_fetch")
        .unwrap();
    assert!(
        fetch["bytes"].as_u64().unwrap() > 0 && fetch["count"].as_u64().unwrap() >= 1,
        "{fetch}"
    );
    assert_eq!(fetch["source"], "127.0.0.1");
    assert!(
        events.iter().all(|e| e["account"] == "alice@pouch.local"),
        "only her own account"
    );
    assert_eq!(activity["devices"].as_array().unwrap().len(), 1);

    // The security team exports everything: no mail content in it.
    let admin = |args: &[&str]| server.admin(&server.data_dir, args);
    let jsonl = admin(&["events", "export", "--format", "jsonl"]);
    assert!(
        jsonl.status.success(),
        "{}",
        String::from_utf8_lossy(&jsonl.stderr)
    );
    let text = String::from_utf8(jsonl.stdout).unwrap();
    assert!(!text.contains("MARKER-EVENTS-SUBJECT"));
    assert!(text.lines().count() >= 8, "{text}");
    assert!(
        text.contains("\"server_start\"") && text.contains("\"key_package_claim\""),
        "{text}"
    );

    // OCSF: base attributes present with the right types; classes as mapped.
    let ocsf = admin(&["events", "export", "--format", "ocsf"]);
    let records: Vec<serde_json::Value> = String::from_utf8(ocsf.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        for field in [
            "category_uid",
            "class_uid",
            "activity_id",
            "type_uid",
            "time",
            "severity_id",
            "status_id",
        ] {
            assert!(
                r[field].is_u64(),
                "{field} missing or not an integer in {r}"
            );
        }
        assert_eq!(
            r["type_uid"].as_u64().unwrap(),
            r["class_uid"].as_u64().unwrap() * 100 + r["activity_id"].as_u64().unwrap()
        );
        assert!(
            r["metadata"]["version"].is_string() && r["metadata"]["product"]["name"].is_string(),
            "{r}"
        );
        let class = r["class_uid"].as_u64().unwrap();
        assert!([3001, 3002, 6003].contains(&class), "{r}");
        if class == 3002 || class == 3001 {
            assert!(r["user"].is_object(), "{r}");
        }
    }
    assert!(
        records
            .iter()
            .any(|r| r["class_uid"] == 3002 && r["status_id"] == 1),
        "a successful sign-in"
    );

    // The chain is intact; deleting one row breaks it, and so does editing one.
    let verify = admin(&["events", "verify"]);
    assert!(verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains("intact"));
    server
        .db()
        .execute("DELETE FROM events WHERE seq = 3", [])
        .unwrap();
    let verify = admin(&["events", "verify"]);
    assert_eq!(verify.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("event 3 is missing"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
