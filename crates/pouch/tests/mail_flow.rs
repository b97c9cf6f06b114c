//! The core story on real server processes, on SQLite and on PostgreSQL:
//! three users, mail with Cc and a 20 MB attachment, a reply in the same
//! thread, everything read back byte-exact — and afterwards nothing a person
//! wrote can be found anywhere in the server's files or database rows.

mod common;

use base64::Engine;
use common::*;
use rand::RngCore;

const SUBJECT_MARKER: &str = "MARKER-SUBJECT-c41f7e";
const BODY_MARKER: &str = "MARKER-BODY-8d22a9";
const REPLY_MARKER: &str = "MARKER-REPLY-5e0b13";
const ATTACHMENT_MARKER: &[u8] = b"MARKER-ATTACHMENT-77aa";

/// The forms `marker` takes inside base64 (standard and URL-safe, at each of
/// the three alignments it can start at) and in quoted-printable.
fn encoded_forms(marker: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut forms = Vec::new();
    for shift in 0..3usize {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(marker);
        // Characters that depend only on the marker: skip those touching the
        // unknown bytes before it, and the last group, which the bytes after
        // it complete.
        let start = (shift * 4).div_ceil(3);
        let full = buf.len() / 3 * 4;
        for engine in [&STANDARD, &URL_SAFE] {
            let encoded = engine.encode(&buf);
            if full > start + 8 {
                forms.push(encoded.as_bytes()[start..full].to_vec());
            }
        }
    }
    let qp: Vec<u8> = marker
        .iter()
        .flat_map(|&b| {
            if b == b'=' || !(33..=126).contains(&b) {
                format!("={b:02X}").into_bytes()
            } else {
                vec![b]
            }
        })
        .collect();
    forms.push(qp);
    forms
}

fn scenario(backend: &str, database: Option<&PgDatabase>) {
    let dir = Scratch::new(backend);
    let server = Server::start(&dir.path("server"), database.map(|d| d.url.as_str()));
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");

    // A 20 MB attachment, starting with a marker, otherwise random.
    let mut attachment = vec![0u8; 20 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut attachment);
    attachment[..ATTACHMENT_MARKER.len()].copy_from_slice(ATTACHMENT_MARKER);
    let attachment_path = dir.path("report-2026.bin");
    std::fs::write(&attachment_path, &attachment).unwrap();

    let sent = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--cc",
        "carol@pouch.local",
        "--subject",
        SUBJECT_MARKER,
        "--body",
        &format!("Dear Bob,\n{BODY_MARKER}\nRegards"),
        "--attach",
        attachment_path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 2, "Bob's and Carol's devices");
    let alice_raw = alice.raw(sent["id"].as_i64().unwrap());
    assert!(
        alice_raw.len() > attachment.len(),
        "the sent copy holds the whole attachment"
    );
    // The server's files and rows while the mail is in flight: the encrypted
    // attachment is there now (it is deleted once every recipient has it).
    let mut in_flight = read_tree(&server.data_dir);
    if let Some(db) = database {
        in_flight.extend(db.dump());
    }
    assert!(
        in_flight.len() > attachment.len(),
        "the scan saw the stored (encrypted) attachment"
    );

    for reader in [&bob, &carol] {
        let report = reader.sync();
        assert_eq!(
            report["new_messages"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        assert_eq!(report["rejected"].as_array().unwrap().len(), 0, "{report}");
        let inbox = reader.inbox();
        assert_eq!(inbox.len(), 1);
        let m = &inbox[0];
        assert_eq!(m["from"], "alice@pouch.local");
        assert_eq!(m["subject"], SUBJECT_MARKER);
        assert_eq!(m["to"], serde_json::json!(["bob@pouch.local"]));
        assert_eq!(m["cc"], serde_json::json!(["carol@pouch.local"]));
        assert_eq!(m["attachments"], serde_json::json!(["report-2026.bin"]));
        assert_eq!(m["conversation"], sent["conversation"]);
        let raw = reader.raw(m["id"].as_i64().unwrap());
        assert!(
            raw == alice_raw,
            "{} did not receive the message byte-exact",
            reader.address
        );
        // The attachment decodes back to the original bytes.
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let att = parsed.attachments().next().unwrap();
        assert!(
            att.contents() == attachment.as_slice(),
            "attachment differs"
        );
        let shown = String::from_utf8(reader.ok(&["read", &m["id"].to_string()])).unwrap();
        assert!(
            shown.contains(BODY_MARKER) && shown.contains("Attachment: report-2026.bin"),
            "{shown}"
        );
    }

    // Bob replies to all in the same thread.
    let bob_msg = bob.inbox()[0]["id"].as_i64().unwrap();
    let reply = bob.json(&[
        "send",
        "--reply-to",
        &bob_msg.to_string(),
        "--to",
        "alice@pouch.local",
        "--cc",
        "carol@pouch.local",
        "--body",
        REPLY_MARKER,
        "--json",
    ]);
    assert_eq!(
        reply["conversation"], sent["conversation"],
        "a reply stays in its conversation"
    );
    let bob_reply_raw = bob.raw(reply["id"].as_i64().unwrap());
    for reader in [&alice, &carol] {
        reader.sync();
        let inbox = reader.inbox();
        let got = inbox
            .iter()
            .find(|m| m["from"] == "bob@pouch.local")
            .expect("reply arrived");
        assert_eq!(got["subject"], format!("Re: {SUBJECT_MARKER}"));
        assert_eq!(got["conversation"], sent["conversation"]);
        assert!(
            reader.raw(got["id"].as_i64().unwrap()) == bob_reply_raw,
            "reply not byte-exact"
        );
    }
    let alice_sent = alice.sent();
    assert_eq!(alice_sent.len(), 1);
    assert_eq!(bob.sent().len(), 1);

    // Nothing a person wrote is in the server's files or rows.
    let mut server_bytes = read_tree(&server.data_dir);
    if let Some(db) = database {
        server_bytes.extend(db.dump());
    }
    server_bytes.extend(in_flight);
    // Control: the scan does read the database — what the server must know is there.
    assert!(
        contains(&server_bytes, b"carol@pouch.local"),
        "the scan missed the database rows ({backend})"
    );
    let b64_line = base64::engine::general_purpose::STANDARD.encode(&attachment[..57]);
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("subject".into(), SUBJECT_MARKER.as_bytes().to_vec()),
        ("body".into(), BODY_MARKER.as_bytes().to_vec()),
        ("reply body".into(), REPLY_MARKER.as_bytes().to_vec()),
        ("attachment bytes".into(), ATTACHMENT_MARKER.to_vec()),
        ("attachment as base64".into(), b64_line.into_bytes()),
        (
            "attachment random bytes".into(),
            attachment[1000..1032].to_vec(),
        ),
        ("attachment name".into(), b"report-2026.bin".to_vec()),
    ];
    // Text also travels encoded (the envelope carries the message in base64;
    // a MIME part may be quoted-printable): look for every such form too.
    for (what, marker) in [
        ("subject", SUBJECT_MARKER.as_bytes()),
        ("body", BODY_MARKER.as_bytes()),
        ("reply body", REPLY_MARKER.as_bytes()),
        ("attachment bytes", ATTACHMENT_MARKER),
        ("attachment name", b"report-2026.bin".as_slice()),
    ] {
        for form in encoded_forms(marker) {
            needles.push((format!("{what} (encoded)"), form));
        }
    }
    // Control: the encoded forms are found where they are.
    let sample = base64::engine::general_purpose::STANDARD.encode(format!("xy{BODY_MARKER}z"));
    assert!(
        encoded_forms(BODY_MARKER.as_bytes())
            .iter()
            .any(|f| contains(sample.as_bytes(), f)),
        "the base64 needles cannot match"
    );
    for (what, needle) in needles {
        assert!(
            !contains(&server_bytes, &needle),
            "the server holds the {what} in the clear ({backend})"
        );
    }
    // The client's directory is encrypted at rest too.
    let alice_bytes = read_tree(&alice.home);
    for needle in [
        SUBJECT_MARKER.as_bytes(),
        BODY_MARKER.as_bytes(),
        ATTACHMENT_MARKER,
    ] {
        assert!(
            !contains(&alice_bytes, needle),
            "the device directory holds plaintext"
        );
    }
}

#[test]
fn mail_round_trip_on_sqlite() {
    scenario("sqlite", None);
}

#[test]
fn mail_round_trip_on_postgres() {
    let db = PgDatabase::new("flow");
    scenario("postgres", Some(&db));
}

#[test]
fn two_server_nodes_share_one_postgres_database() {
    let db = PgDatabase::new("nodes");
    let dir = Scratch::new("nodes");
    let node1 = Server::start(&dir.path("node1"), Some(&db.url));
    // Without the first node's wrapping key, a second node cannot sign the log.
    let out = pouch()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--data-dir",
        ])
        .arg(dir.path("node2"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_one_line_error(&out, "copy log-wrap.key from the first node");
    std::fs::copy(
        node1.data_dir.join("log-wrap.key"),
        dir.path("node2").join("log-wrap.key"),
    )
    .unwrap();
    // Node 2 serves a certificate from the same trust anchor (as with a
    // ministry CA), so invites from either node are good on both.
    let node1_file = |f: &str| node1.data_dir.join(f).to_str().unwrap().to_string();
    let node2 = Server::start_with(
        &dir.path("node2"),
        Some(&db.url),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &node1_file("tls-cert.pem"),
            "--tls-key",
            &node1_file("tls-key.pem"),
            "--tls-ca",
            &node1_file("tls-anchor.pem"),
        ],
    );
    assert_ne!(node1.url, node2.url);
    assert_eq!(node1.fingerprint, node2.fingerprint);
    // An administrator made on node 1 acts on node 2: the database holds
    // the administrators.
    let alice = Client::enroll(
        dir.path("alice"),
        &node1.invite("alice@pouch.local"),
        "alice@pouch.local",
    );
    let bob_invite = node2.invite_with(&node1.data_dir, "bob@pouch.local", &[]);
    let bob = Client::enroll(dir.path("bob"), &bob_invite, "bob@pouch.local");
    let sent = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "via node 1",
        "--body",
        "hello",
        "--json",
    ]);
    let report = bob.sync();
    assert_eq!(report["new_messages"].as_array().unwrap().len(), 1);
    assert!(
        bob.raw(bob.inbox()[0]["id"].as_i64().unwrap()) == alice.raw(sent["id"].as_i64().unwrap())
    );
    // And back the other way.
    bob.ok(&[
        "send",
        "--reply-to",
        &bob.inbox()[0]["id"].to_string(),
        "--to",
        "alice@pouch.local",
        "--body",
        "hi",
    ]);
    alice.sync();
    assert_eq!(alice.inbox().len(), 1);
    assert_eq!(alice.inbox()[0]["subject"], "Re: via node 1");
}

/// `pouch read ID --save-attachments DIR` writes each attachment byte-exact
/// into DIR. A hostile sender's names cannot leave the directory or replace
/// a file there, and a large attachment shows a progress bar to someone at
/// a terminal (standard error a pseudo-terminal, via `script`) and none to
/// a script.
#[test]
fn attachments_are_saved_safely_and_large_ones_show_progress_at_a_terminal() {
    let dir = Scratch::new("save-attachments");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");

    // A hostile sender names attachments to escape the directory.
    let pdf = b"%PDF-1.4 the treaty".to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let eml = format!(
        "From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: names\r\nMessage-ID: <names@pouch.local>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"../../escape.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\".bashrc\"\r\n\r\nrm -rf ~\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        b64(&pdf),
        b64(b"no name")
    );
    let eml_path = dir.path("names.eml");
    std::fs::write(&eml_path, eml).unwrap();
    alice.ok(&["send", "--eml", eml_path.to_str().unwrap()]);
    bob.sync();
    let id = bob.inbox()[0]["id"].to_string();
    let save = dir.path("saved/inner");
    let saved = bob.json(&[
        "read",
        &id,
        "--save-attachments",
        save.to_str().unwrap(),
        "--json",
    ]);
    let paths: Vec<String> = saved
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        vec![
            save.join("escape.pdf").display().to_string(),
            save.join("bashrc").display().to_string(),
            save.join("attachment-3").display().to_string(),
        ],
        "{saved}"
    );
    assert_eq!(
        saved[0]["name"], "../../escape.pdf",
        "the sender's name as given"
    );
    assert_eq!(std::fs::read(save.join("escape.pdf")).unwrap(), pdf);
    assert_eq!(
        std::fs::read(save.join("attachment-3")).unwrap(),
        b"no name"
    );
    assert!(!dir.path("escape.pdf").exists() && !dir.path("saved/escape.pdf").exists());
    // Saving again never overwrites: new names beside the first ones.
    let text =
        String::from_utf8(bob.ok(&["read", &id, "--save-attachments", save.to_str().unwrap()]))
            .unwrap();
    assert!(text.contains("escape (2).pdf"), "{text}");
    assert_eq!(std::fs::read(save.join("escape (2).pdf")).unwrap(), pdf);

    // A large attachment: a bar at a terminal, nothing in a pipe.
    let mut big = vec![0u8; 8 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut big);
    let big_path = dir.path("annex.bin");
    std::fs::write(&big_path, &big).unwrap();
    let send = alice.cmd();
    let line = format!(
        "{} --home {} send --to bob@pouch.local --subject annex --body see --attach {}",
        env!("CARGO_BIN_EXE_pouch"),
        alice.home.display(),
        big_path.display()
    );
    let at_terminal = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(send.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&at_terminal.stdout);
    assert!(at_terminal.status.success(), "{shown}");
    assert!(
        shown.contains("upload") && shown.contains("MiB"),
        "a progress bar: {shown}"
    );
    let piped = bob.run(&["sync"]);
    assert!(piped.status.success());
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("download"),
        "no bar in a pipe"
    );
    let annex = bob
        .inbox()
        .iter()
        .find(|m| m["subject"] == "annex")
        .unwrap()["id"]
        .to_string();
    let out = bob.json(&[
        "read",
        &annex,
        "--save-attachments",
        save.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out[0]["size"], big.len());
    assert!(
        std::fs::read(save.join("annex.bin")).unwrap() == big,
        "byte-exact"
    );
}
