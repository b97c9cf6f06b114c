//! Witnesses: a split view of the log cannot carry the witness's
//! cosignature, so a device shown only in one view is not encrypted to; and
//! with the witness down, mail keeps flowing while clients say how old the
//! newest cosigned checkpoint is.

mod common;

use common::*;

/// A server with a witness. The server must exist first (its log key is the
/// witness's configuration), so it is restarted once with the witness set.
fn witnessed_server(dir: &Scratch) -> (Server, WitnessProc, String) {
    let mut first = Server::start(&dir.path("server"), None);
    let log_key = log_key_of(&first);
    first.stop();
    let witness = WitnessProc::start(&dir.path("witness"), &log_key, "127.0.0.1:0");
    let arg = format!("{}={}", witness.url, witness.key);
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--witness", &arg],
    );
    (server, witness, arg)
}

#[test]
fn with_the_witness_down_mail_flows_and_clients_report_its_age() {
    let dir = Scratch::new("witness-down");
    let (server, mut witness, _) = witnessed_server(&dir);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "witnessed",
        "--body",
        "1",
    ]);
    let r = alice.sync();
    assert!(r["witnessed_age_secs"].as_u64().unwrap() < 60, "{r}");
    assert!(r["alerts"].as_array().unwrap().is_empty(), "{r}");
    // The witness's own state advanced with the log.
    let state = std::fs::read_to_string(witness.data_dir.join("witness-state.json")).unwrap();
    assert!(state.contains("pouch.local/log"), "{state}");
    // The operator sees it too: the newest checkpoint carries its cosignature.
    let witness_name = witness.key.split('+').next().unwrap().to_string();
    let cosigned = format!("pouch_witness_cosigned{{\"witness\": \"{witness_name}\"}}");
    let age = format!("pouch_witness_cosignature_age_seconds{{\"witness\": \"{witness_name}\"}}");
    let m = server.metrics();
    assert_eq!(m[&cosigned], 1.0, "{m}");
    assert!(m[&age].as_f64().unwrap() < 60.0, "{m}");

    witness.stop();
    // The log keeps growing without the witness; mail keeps flowing.
    let _carol = user(&dir, &server, "carol");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "still flowing",
        "--body",
        "2",
    ]);
    bob.sync();
    assert!(bob.inbox().iter().any(|m| m["subject"] == "still flowing"));
    // …and the operator's metrics show the newest checkpoint uncosigned.
    let m = server.metrics();
    assert_eq!(m[&cosigned], 0.0, "{m}");
    assert!(m.get(&age).is_none(), "{m}");
    // A stored checkpoint that does not open (damaged, or not the log's
    // key's) still leaves the metrics served, the witness not cosigned.
    let (checkpoint_size, note): (i64, Vec<u8>) = server
        .db()
        .query_row(
            "SELECT checkpoint_size, checkpoint FROM log_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let set_note = |note: &[u8]| {
        server
            .db()
            .execute("UPDATE log_state SET checkpoint = ?1 WHERE id = 1", [note])
            .unwrap();
    };
    set_note(b"not a signed note");
    let m = server.metrics();
    assert_eq!(m[&cosigned], 0.0, "{m}");
    assert!(m["pouch_log_entries{}"].as_f64().unwrap() >= checkpoint_size as f64);
    set_note(&note);
    // Clients say how old the newest cosigned checkpoint is, and raise the
    // alarm past the configured age.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = bob
        .cmd()
        .env("POUCH_MAX_WITNESS_AGE_SECS", "1")
        .args(["sync", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["witnessed_age_secs"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cosigned by the witnesses"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A device added while the witness is down is not trusted yet.
    let alice2 = link(dir.path("alice2"), &server, &alice);
    let _ = alice2;
    let sent = bob.json(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "while unwitnessed",
        "--body",
        "3",
        "--json",
    ]);
    assert_eq!(
        sent["recipient_devices"], 1,
        "only Alice's witnessed device: {sent}"
    );
    assert!(
        sent["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("not yet cosigned")),
        "{sent}"
    );
}

#[test]
fn a_split_view_cannot_be_cosigned_and_its_device_is_not_encrypted_to() {
    let dir = Scratch::new("witness-split");
    let (mut server, witness, witness_arg) = witnessed_server(&dir);
    let addr = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");
    bob.sync();
    carol.sync();

    // The server forks its state: view A for Bob, view B for Carol.
    server.stop();
    let view_b = dir.path("server-view-b");
    copy_dir(&server.data_dir, &view_b);

    // View A: Dave joins; the witness cosigns A's tree.
    let server_a = Server::start_with(
        &dir.path("server"),
        None,
        &addr,
        &["--witness", &witness_arg],
    );
    let _dave = user(&dir, &server_a, "dave");
    bob.sync();
    drop(server_a);

    // View B: a second device appears on Alice's account (approved in this
    // view only). Its tree conflicts with A's, so the witness refuses it.
    let server_b = Server::start_with(&view_b, None, &addr, &["--witness", &witness_arg]);
    let alice2 = link(dir.path("alice2"), &server_b, &alice);
    let _ = alice2;
    // Carol, shown only view B, does not encrypt to the device only B shows.
    let sent = carol.json(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "hello",
        "--body",
        "x",
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 1, "{sent}");
    assert!(
        sent["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("not yet cosigned")),
        "{sent}"
    );
    // The witness refused view B's tree and kept the log's signed checkpoint
    // of it as evidence: a root the witness never cosigned, for a tree that
    // does not extend the one it did.
    let evidence_dir = witness.data_dir.join("evidence");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let evidence = loop {
        let found: Vec<String> = std::fs::read_dir(&evidence_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(first) = found.into_iter().next() {
            break first;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the witness kept no evidence of view B in {}",
            evidence_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        evidence.contains("refused: another root for the tree size already witnessed"),
        "{evidence}"
    );
    // Both halves are checkpoints the log signed: one size, two roots.
    let (_, rest) = evidence
        .split_once("-- refused (signed by the log) --\n")
        .unwrap();
    let (refused, cosigned) = rest
        .split_once("\n-- cosigned before (signed by the log) --\n")
        .unwrap();
    let log_key = log_key_of(&server_b);
    let b = pouch_log::open_checkpoint(refused.as_bytes(), &log_key, "pouch.local/log")
        .unwrap_or_else(|e| panic!("{e}: {refused}"));
    let a = pouch_log::open_checkpoint(cosigned.as_bytes(), &log_key, "pouch.local/log")
        .unwrap_or_else(|e| panic!("{e}: {cosigned}"));
    assert_eq!(a.size(), b.size());
    assert_ne!(a.hash(), b.hash());
    // And Alice's witnessed device did get it.
    alice.sync();
    assert!(alice.inbox().iter().any(|m| m["subject"] == "hello"));
    // Bob, who saw view A, is stopped outright: B is not consistent with A.
    let out = bob.run(&["sync"]);
    assert_one_line_error(&out, "SECURITY");
    let out = bob.run(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "hi",
        "--body",
        "y",
    ]);
    assert_one_line_error(&out, "transparency log");
}
