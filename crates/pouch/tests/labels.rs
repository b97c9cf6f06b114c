//! Classification labels (issue 13), end to end: the policy file and the
//! label's STANAG 4774 XML (read by Python's `xml.etree`); the security
//! officer's key, policy and clearances in the transparency log; every
//! refusal on sending, the server's check of a modified sender, the
//! receiver's inner/outer comparison; a hostile server replaying or
//! slipping in statements; and labels through the bridge with Python's
//! smtplib/imaplib and Thunderbird.

mod common;
use common::*;

fn example_policy() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/labels/ministry-example.toml")
}

const READ_LABEL: &str = r#"
import sys, json, xml.etree.ElementTree as ET
NS = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"
root = ET.fromstring(sys.stdin.buffer.read())
info = root.find("{%s}ConfidentialityInformation" % NS)
policy = info.find("{%s}PolicyIdentifier" % NS)
print(json.dumps({
    "root": root.tag,
    "policy": policy.text,
    "policy_uri": policy.get("URI"),
    "classification": info.find("{%s}Classification" % NS).text,
    "categories": [
        {"tag": c.get("TagName"), "type": c.get("Type"),
         "values": [v.text for v in c.findall("{%s}GenericValue" % NS)]}
        for c in info.findall("{%s}Category" % NS)
    ],
    "created": root.find("{%s}CreationDateTime" % NS).text,
}))
"#;

#[test]
fn a_labels_xml_reads_in_an_independent_parser_as_issued() {
    let policy = example_policy();
    let out = pouch()
        .args([
            "security",
            "label",
            "SECRET//TREATY//REL TO SVK, CZE//HANDLE AS EYES ONLY",
            "--xml",
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let label = python_json(READ_LABEL, &out.stdout, "XML");
    assert_eq!(
        label["root"],
        "{urn:nato:stanag:4774:confidentialitymetadatalabel:1:0}originatorConfidentialityLabel"
    );
    assert_eq!(label["policy"], "MFA-EXAMPLE");
    assert_eq!(label["policy_uri"], "urn:oid:1.3.6.1.4.1.99999.4774.1");
    assert_eq!(label["classification"], "SECRET");
    assert_eq!(
        label["categories"],
        serde_json::json!([
            {"tag": "REL", "type": "PERMISSIVE", "values": ["CZE", "SVK"]},
            {"tag": "COMPARTMENT", "type": "RESTRICTIVE", "values": ["TREATY"]},
            {"tag": "HANDLING", "type": "INFORMATIVE", "values": ["EYES ONLY"]},
        ])
    );
    assert!(label["created"].as_str().unwrap().ends_with('Z'), "{label}");

    // The marking, written the policy's way.
    let out = pouch()
        .args([
            "security",
            "label",
            "SECRET REL:SVK,CZE COMPARTMENT:TREATY",
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "SECRET//REL TO CZE, SVK//TREATY"
    );
}

#[test]
fn a_policy_file_is_checked_and_a_bad_label_gets_one_line() {
    let policy = example_policy();
    let out = pouch()
        .args(["security", "policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("policy MFA-EXAMPLE is valid"), "{text}");
    assert!(text.contains("accredited up to: SECRET"), "{text}");

    let dir = Scratch::new("label-policy");
    let broken = dir.path("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("rank = 4", "rank = 3"),
    )
    .unwrap();
    let out = pouch()
        .args(["security", "policy", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_one_line_error(&out, "have the same rank 3");

    for (label, wanted) in [
        ("SEKRET", "unknown classification 'SEKRET'"),
        ("TOP SECRET", "accredited only up to SECRET"),
        ("SECRET//REL TO XXX", "REL has no value 'XXX'"),
    ] {
        let out = pouch()
            .args(["security", "label", label, "--policy"])
            .arg(&policy)
            .output()
            .unwrap();
        assert_one_line_error(&out, wanted);
    }
}

/// The security officer's key is made on the officer's machine, sealed in
/// a home of its own, and its fingerprint printed to compare.
#[test]
fn the_security_officer_makes_a_key_of_their_own() {
    let dir = Scratch::new("officer");
    let home = dir.path("officer");
    let init = |home: &std::path::Path| {
        pouch()
            .env("POUCH_PASSPHRASE", PASSPHRASE)
            .args([
                "security",
                "init",
                "--name",
                "Security Officer",
                "--officer-home",
            ])
            .arg(home)
            .output()
            .unwrap()
    };
    let out = init(&home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let fingerprint = said.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        said.starts_with("security officer Security Officer: key fingerprint "),
        "{said}"
    );
    assert_eq!(fingerprint.len(), 64, "{said}");
    assert!(home.join("officer.json").exists());
    // Not made twice over, nor in a directory that holds other things.
    assert_one_line_error(&init(&home), "already holds a security officer's key");
    std::fs::write(dir.path("notes.txt"), "x").unwrap();
    assert_one_line_error(&init(&dir.0), "is not empty");
}

/// A deployment with labels in force: a security officer whose key a
/// security administrator registered, the example policy published, and
/// people cleared (all signed by the officer and logged).
struct Labelled {
    dir: Scratch,
    server: Server,
    officer_home: std::path::PathBuf,
    /// The officer's own device (also an ordinary user).
    alice: Client,
    bob: Client,
}

fn officer_cmd(device: &Client, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = device
        .cmd()
        .env("POUCH_OFFICER_PASSPHRASE", PASSPHRASE)
        .env("POUCH_OFFICER_HOME", home)
        .args(["security"])
        .args(args)
        .output()
        .unwrap();
    assert_no_panic(&out);
    out
}

fn officer_ok(device: &Client, home: &std::path::Path, args: &[&str]) -> String {
    let out = officer_cmd(device, home, args);
    assert!(
        out.status.success(),
        "`pouch security {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pouch security init` in `officer_home` (its card: officer-card.json);
/// the key's fingerprint, as the officer reads it out.
fn init_officer(officer_home: &std::path::Path) -> String {
    let out = pouch()
        .env("POUCH_OFFICER_PASSPHRASE", PASSPHRASE)
        .args([
            "security",
            "init",
            "--name",
            "Security Officer",
            "--officer-home",
        ])
        .arg(officer_home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "security officer NAME: key fingerprint FP"
    let said = String::from_utf8(out.stdout).unwrap();
    said.split_whitespace()
        .last()
        .expect("a fingerprint")
        .to_string()
}

fn labelled(tag: &str) -> Labelled {
    labelled_after(tag, |_, _| {})
}

/// [`labelled`], with `before` run between the enrolments and the
/// officer's registration.
fn labelled_after(tag: &str, before: impl Fn(&Client, &Client)) -> Labelled {
    let dir = Scratch::new(tag);
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    before(&alice, &bob);
    let officer_home = dir.path("officer");
    let _ = init_officer(&officer_home);
    // An operator may not register the officer: that is the security team's.
    let card = officer_home.join("officer-card.json");
    let card_arg = card.to_str().unwrap();
    let refused = server.admin(&server.data_dir, &["security-officer", card_arg]);
    assert!(!refused.status.success());
    let sec = server.add_admin("sec", "security");
    let out = server.admin_as(&sec, &["security-officer", card_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = officer_ok(
        &alice,
        &officer_home,
        &["policy", "publish", example_policy().to_str().unwrap()],
    );
    assert!(
        said.starts_with("published label policy MFA-EXAMPLE version 1"),
        "{said}"
    );
    officer_ok(
        &alice,
        &officer_home,
        &[
            "clear",
            "alice@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO CZE, SVK",
            "--category",
            "COMPARTMENT:TREATY",
        ],
    );
    officer_ok(
        &alice,
        &officer_home,
        &[
            "clear",
            "bob@pouch.local",
            "--max",
            "CONFIDENTIAL",
            "--category",
            "REL TO CZE",
        ],
    );
    Labelled {
        dir,
        server,
        officer_home,
        alice,
        bob,
    }
}

/// Done-when 1: each refusal is one line and sends nothing; allowed mail
/// arrives with its label, which `read --json` shows byte for byte.
#[test]
fn labelled_mail_reaches_only_the_cleared_and_every_refusal_is_one_line() {
    let l = labelled("labels-e2e");
    let (alice, bob) = (&l.alice, &l.bob);
    let carol = user(&l.dir, &l.server, "carol");
    let dave = user(&l.dir, &l.server, "dave");
    let erin = user(&l.dir, &l.server, "erin");
    let home = &l.officer_home;
    officer_ok(
        alice,
        home,
        &[
            "clear",
            "carol@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO SVK",
        ],
    );
    officer_ok(
        alice,
        home,
        &[
            "clear",
            "dave@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO CZE",
        ],
    );
    officer_ok(alice, home, &["revoke", "dave@pouch.local"]);
    officer_ok(
        alice,
        home,
        &[
            "clear",
            "erin@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO CZE",
            "--expires",
            "2020-01-01",
        ],
    );
    let send = |from: &Client, to: &str, label: &str| {
        from.run(&[
            "send",
            "--to",
            to,
            "--subject",
            "Talks",
            "--body",
            "text",
            "--label",
            label,
        ])
    };
    for (to, label, why) in [
        (
            "bob@pouch.local",
            "SECRET//REL TO CZE",
            "bob@pouch.local may not receive SECRET//REL TO CZE mail: cleared only up to CONFIDENTIAL",
        ),
        (
            "carol@pouch.local",
            "SECRET//TREATY//REL TO SVK",
            "not cleared for COMPARTMENT TREATY",
        ),
        (
            "bob@pouch.local",
            "CONFIDENTIAL//REL TO SVK",
            "not releasable",
        ),
        (
            "erin@pouch.local",
            "RESTRICTED//REL TO CZE",
            "the clearance expired",
        ),
        (
            "dave@pouch.local",
            "RESTRICTED//REL TO CZE",
            "the clearance was revoked",
        ),
        (
            "bob@pouch.local",
            "TOP SECRET",
            "accredited only up to SECRET",
        ),
        ("bob@pouch.local", "SEKRET", "unknown classification"),
    ] {
        assert_one_line_error(&send(alice, to, label), why);
    }
    // Nobody received anything, and no Sent copy was kept.
    for c in [bob, &carol, &dave, &erin] {
        c.sync();
        assert!(
            c.inbox().is_empty(),
            "{} received a refused mail",
            c.address
        );
    }
    assert!(alice.sent().is_empty());

    // Allowed: it arrives with its label, the very bytes the sender wrote.
    let out = send(alice, "bob@pouch.local", "CONFIDENTIAL//REL TO CZE");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bob.sync();
    // (The inbox also holds the notice naming the officer key the device pinned.)
    let inbox: Vec<_> = bob
        .inbox()
        .into_iter()
        .filter(|m| m["subject"] == "Talks")
        .collect();
    assert_eq!(inbox.len(), 1);
    let sent = alice.sent();
    assert_eq!(inbox[0]["marking"], "CONFIDENTIAL//REL TO CZE");
    let label = inbox[0]["label"].as_str().expect("a label");
    assert_eq!(
        label,
        sent[0]["label"].as_str().unwrap(),
        "the receiver's label is the sender's, byte for byte"
    );
    let read = bob.json(&["read", &inbox[0]["id"].to_string(), "--json"]);
    assert_eq!(read["message"]["label"].as_str(), Some(label));
    let parsed = python_json(READ_LABEL, label.as_bytes(), "XML");
    assert_eq!(parsed["classification"], "CONFIDENTIAL");
    // Mail sent without a label carries the policy's default.
    alice.ok(&[
        "send",
        "--to",
        "carol@pouch.local",
        "--subject",
        "Lunch",
        "--body",
        "x",
    ]);
    carol.sync();
    let lunch: Vec<_> = carol
        .inbox()
        .into_iter()
        .filter(|m| m["subject"] == "Lunch")
        .collect();
    assert_eq!(lunch[0]["marking"], "UNCLASSIFIED");
    // Search by label finds the one and not the other.
    let found = bob.json(&["search", "--label", "CONFIDENTIAL", "--json"]);
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert!(
        bob.json(&["search", "--label", "SECRET", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A reply carries at least the label of what it answers; lowering it
    // needs a reason, and is reported to the security team.
    let id = inbox[0]["id"].to_string();
    let reply = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--reply-to",
            id.as_str(),
            "--to",
            "alice@pouch.local",
            "--body",
            "noted",
            "--label",
            "RESTRICTED",
        ];
        args.extend_from_slice(extra);
        bob.run(&args)
    };
    assert_one_line_error(&reply(&[]), "this answers a CONFIDENTIAL//REL TO CZE mail");
    assert_one_line_error(&reply(&["--downgrade", " "]), "--downgrade needs a reason");
    let out = reply(&["--downgrade", "declassified by the originator"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = l.server.alerts();
    assert!(
        alerts.iter().any(|a| a["rule"] == "label_change"
            && a["summary"]
                .as_str()
                .unwrap()
                .contains("declassified by the originator")),
        "{alerts:?}"
    );

    // A statement signed by another key than the registered officer's is
    // refused by the server; a replaced officer key is refused by devices
    // until their user accepts it.
    let rogue = l.dir.path("rogue-officer");
    let out = pouch()
        .env("POUCH_OFFICER_PASSPHRASE", PASSPHRASE)
        .args(["security", "init", "--name", "Mallory", "--officer-home"])
        .arg(&rogue)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = officer_cmd(
        bob,
        &rogue,
        &[
            "clear",
            "bob@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO CZE",
        ],
    );
    assert_one_line_error(&out, "not signed by the security officer");
    let sec = std::path::PathBuf::from(format!("{}-admin-sec", l.server.data_dir.display()));
    let out = l.server.admin_as(
        &sec,
        &[
            "security-officer",
            rogue.join("officer-card.json").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &send(alice, "bob@pouch.local", "RESTRICTED//REL TO CZE"),
        "the security officer's key changed to",
    );
    assert!(
        l.server
            .alerts()
            .iter()
            .any(|a| a["rule"] == "label_change" && a["severity"] == "high"),
        "registering another officer key is a high alert"
    );
}

/// Done-when 2: a modified sender is stopped by the server (above a
/// recipient's clearance) and by the receiver (inner and outer labels
/// differ, a critical alert).
#[test]
fn a_modified_sender_is_refused_by_the_server_and_a_relabelled_message_by_the_receiver() {
    let l = labelled("labels-modified");
    let (alice, bob) = (&l.alice, &l.bob);
    let xml = |label: &str| {
        let out = pouch()
            .args(["security", "label", label, "--xml", "--policy"])
            .arg(example_policy())
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    };
    let mut device = pouch_client::Device::open(&alice.home, PASSPHRASE).unwrap();
    let mail = |subject: &str| pouch_client::Compose {
        to: vec![pouch_proto::Address::parse("bob@pouch.local").unwrap()],
        subject: subject.into(),
        body: "body".into(),
        ..Default::default()
    };
    // Above bob's clearance, the client's checks skipped: the server refuses.
    let secret = xml("SECRET//REL TO CZE");
    device.play_modified_client(Some(secret.clone()), Some(secret.clone()));
    for _ in 0..3 {
        let err = device
            .send(mail("Above clearance"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bob@pouch.local may not receive SECRET//REL TO CZE mail"),
            "{err}"
        );
    }
    let alerts = l.server.alerts();
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "label_refused" && a["severity"] == "high"),
        "three refused attempts are an alert: {alerts:?}"
    );
    // Outer label allowed, inner one different: the receiver refuses it.
    device.play_modified_client(
        Some(xml("CONFIDENTIAL//REL TO CZE")),
        Some(xml("RESTRICTED//REL TO CZE")),
    );
    device.send(mail("Relabelled")).unwrap();
    drop(device);
    // A refused item is a security signal: `pouch sync` exits with 3.
    let out = bob.run(&["sync", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rejected"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        report["rejected"][0][1]
            .as_str()
            .unwrap()
            .contains("differs from the one the server delivered"),
        "{report}"
    );
    assert!(bob.inbox().iter().all(|m| m["subject"] != "Relabelled"));
    let alerts = l.server.alerts();
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "label_mismatch" && a["severity"] == "critical"),
        "{alerts:?}"
    );
}

const SUBMIT: &str = r#"
import smtplib, sys
port, password, sender, rcpt, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
raw = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@pouch.local>\r\n\r\nAbout the talks.\r\n"
       % (sender, rcpt, subject, abs(hash(subject)))).encode()
with smtplib.SMTP('127.0.0.1', port) as s:
    s.login(sender, password)
    try:
        s.sendmail(sender, [rcpt], raw)
        print("accepted")
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;

const READ_IMAP: &str = r#"
import imaplib, json, sys, email, base64, time
port, user, password, wanted = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
m = imaplib.IMAP4('127.0.0.1', port)
m.login(user, password)
deadline = time.time() + 30
while True:
    m.select('INBOX')
    typ, data = m.search(None, 'SUBJECT', '"%s"' % wanted)
    ids = data[0].split()
    if ids or time.time() > deadline:
        break
    time.sleep(0.3)
typ, data = m.fetch(ids[-1], '(RFC822.SIZE RFC822)')
size = int(data[0][0].decode().split('RFC822.SIZE ')[1].split()[0])
raw = data[0][1]
msg = email.message_from_bytes(raw)
sio = msg['SIO-Label']
params = dict(p.strip().split('=', 1) for p in sio.split(';'))
xml = base64.b64decode(''.join(params['label'].strip('"').split())).decode()
print(json.dumps({"subject": msg['Subject'], "size": size, "len": len(raw),
                  "marking": params['marking'].strip('"'), "type": params['type'].strip('"'),
                  "bgcolor": params.get('bgcolor', '').strip('"'), "xml": xml,
                  "sio_fields": len(msg.get_all('SIO-Label'))}))
"#;

/// Done-when 3 (Python's mail clients): a mail submitted with a subject
/// marking reaches Bob with that label; Bob's mail client is shown the
/// marking and the `SIO-Label` header; a submission to someone not cleared
/// is answered 550 and nothing is sent.
#[test]
fn mail_clients_send_and_read_labels_through_the_bridge() {
    let l = labelled("labels-bridge");
    let (alice, bob) = (&l.alice, &l.bob);
    let carol = user(&l.dir, &l.server, "carol");
    let alice_bridge = Bridge::start(alice);
    let bob_bridge = Bridge::start(bob);
    let submit = |rcpt: &str, subject: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                SUBMIT,
                &alice_bridge.smtp_port.to_string(),
                &alice_bridge.password,
            ])
            .args(["alice@pouch.local", rcpt, subject])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // Refused at DATA, naming the recipient and the reason; nothing sent.
    let refused = submit("carol@pouch.local", "[CONFIDENTIAL//REL TO CZE] Talks");
    assert!(
        refused.starts_with("550 5.7.1 Not sent: carol@pouch.local may not receive CONFIDENTIAL//REL TO CZE mail: no clearance on record"),
        "{refused}"
    );
    let refused = submit("bob@pouch.local", "[SECRET//REL TO CZE] Talks");
    assert!(
        refused.starts_with("550 5.7.1") && refused.contains("cleared only up to CONFIDENTIAL"),
        "{refused}"
    );
    // Allowed: the subject marking is the label.
    assert_eq!(
        submit("bob@pouch.local", "[CONFIDENTIAL//REL TO CZE] Talks"),
        "accepted"
    );
    let seen: serde_json::Value = {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                READ_IMAP,
                &bob_bridge.imap_port.to_string(),
                "bob@pouch.local",
                &bob_bridge.password,
                "Talks",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(seen["subject"], "[CONFIDENTIAL//REL TO CZE] Talks");
    assert_eq!(seen["type"], ":xml");
    assert_eq!(seen["marking"], "CONFIDENTIAL//REL TO CZE");
    assert_eq!(seen["bgcolor"], "#0072b2");
    assert_eq!(seen["sio_fields"], 1);
    assert_eq!(
        seen["size"], seen["len"],
        "RFC822.SIZE counts what is served"
    );
    let inbox: Vec<_> = bob
        .inbox()
        .into_iter()
        .filter(|m| m["subject"] == "[CONFIDENTIAL//REL TO CZE] Talks")
        .collect();
    assert_eq!(
        inbox[0]["label"].as_str(),
        seen["xml"].as_str(),
        "the header carries the verified label"
    );
    // The stored mail is still the sender's bytes (no SIO-Label was added to it).
    let raw = bob.raw(inbox[0]["id"].as_i64().unwrap());
    assert!(!contains(&raw, b"SIO-Label"));
    // Carol got nothing.
    carol.sync();
    assert!(
        carol
            .inbox()
            .iter()
            .all(|m| m["subject"] != "[CONFIDENTIAL//REL TO CZE] Talks")
    );
}

/// Done-when 3 (Thunderbird, headless): Alice's Thunderbird shows the
/// marking of a labelled mail in its subject and keeps its `SIO-Label`
/// header; a mail she composes with a subject marking reaches Bob with that
/// label; sent to someone not cleared, Thunderbird is told no (550) and
/// nothing is sent.
#[test]
fn thunderbird_shows_labels_and_sends_a_marked_mail() {
    let l = labelled("labels-thunderbird");
    let (alice, bob) = (&l.alice, &l.bob);
    let carol = user(&l.dir, &l.server, "carol");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Agenda",
        "--body",
        "x",
        "--label",
        "CONFIDENTIAL//REL TO CZE",
    ]);
    let bridge = Bridge::start(alice);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/thunderbird.py");
    let marked = "[RESTRICTED//REL TO CZE] Written in Thunderbird";
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(l.dir.path("thunderbird-profile"))
        .args([
            &bridge.imap_port.to_string(),
            &bridge.smtp_port.to_string(),
            &bridge.password,
            "[CONFIDENTIAL//REL TO CZE] Agenda",
            "bob@pouch.local",
            marked,
            "carol@pouch.local",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thunderbird: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let header = seen["labels"]["[CONFIDENTIAL//REL TO CZE] Agenda"]
        .as_str()
        .unwrap_or_default();
    assert!(
        header.contains("type=\":xml\"") && header.contains("marking=\"CONFIDENTIAL//REL TO CZE\""),
        "{seen}"
    );
    assert_eq!(seen["sent"], "sent", "{seen}");
    assert!(
        seen["refused"].as_str().unwrap().starts_with("failed"),
        "{seen}"
    );
    // Bob has it, with the label the subject marking named.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let got = loop {
        bob.sync();
        if let Some(m) = bob.inbox().into_iter().find(|m| m["subject"] == marked) {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Bob did not get Thunderbird's mail"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(got["marking"], "RESTRICTED//REL TO CZE");
    // Carol has nothing.
    carol.sync();
    assert!(carol.inbox().iter().all(|m| m["subject"] != marked));
}

/// A hostile server appends to its own log (it holds the log's keys): it
/// can file an old statement again as the newest, or a statement nobody
/// signed. Devices refuse both, in one line, and send nothing.
#[test]
fn a_hostile_server_cannot_replay_a_revoked_clearance_or_slip_in_a_policy() {
    let l = labelled("labels-hostile");
    let (alice, bob) = (&l.alice, &l.bob);
    let carol = user(&l.dir, &l.server, "carol");
    let home = &l.officer_home;
    officer_ok(
        alice,
        home,
        &[
            "clear",
            "carol@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO CZE",
        ],
    );
    officer_ok(alice, home, &["revoke", "carol@pouch.local"]);
    let send = |to: &str| {
        alice.run(&[
            "send",
            "--to",
            to,
            "--subject",
            "Brief",
            "--body",
            "x",
            "--label",
            "RESTRICTED//REL TO CZE",
        ])
    };
    assert_one_line_error(&send("carol@pouch.local"), "the clearance was revoked");

    let key = {
        let mut d = pouch_client::Device::open(&alice.home, PASSPHRASE).unwrap();
        pouch_log::CommitmentKey::from_bytes(&d.log_commitment_key().unwrap()).unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(pouch_store_sql::SqlStore::open_sqlite(
            &l.server.data_dir.join("pouch.db"),
        ))
        .unwrap();
    use pouch_store::LogStore;
    let append = |subject: &str, entry: pouch_log::OfficerEntry| {
        let record = pouch_store::LogRecord {
            leaf: key.commit_officer_entry(&entry),
            entry: entry.to_bytes(),
        };
        rt.block_on(store.append_officer_statement(subject, entry.version, &record))
            .unwrap();
    };
    // Carol's clearance (number 1), filed again as number 3, after its revocation.
    let filed = rt
        .block_on(store.officer_statements("carol@pouch.local"))
        .unwrap();
    let mut replayed =
        pouch_log::OfficerEntry::from_bytes(filed[0].entry.as_deref().unwrap()).unwrap();
    replayed.version = 3;
    append("carol@pouch.local", replayed);
    // The server signs a checkpoint over it at its next append (an enrolment).
    user(&l.dir, &l.server, "dave");
    assert_one_line_error(&send("carol@pouch.local"), "a statement replayed");

    // A policy nobody signed, filed as the newest: labelled sending stops
    // (it is not switched off).
    let policies = rt
        .block_on(store.officer_statements(pouch_log::OfficerEntry::POLICY))
        .unwrap();
    let mut junk =
        pouch_log::OfficerEntry::from_bytes(policies[0].entry.as_deref().unwrap()).unwrap();
    junk.version = 2;
    junk.body = junk
        .body
        .replace("\"sequence\":1", "\"sequence\":2")
        .replace("SECRET", "UNCLASSIFIED");
    append(pouch_log::OfficerEntry::POLICY, junk);
    user(&l.dir, &l.server, "erin");
    assert_one_line_error(&send("bob@pouch.local"), "does not verify");
    // The officer publishes the policy again: labelled mail flows again.
    officer_ok(
        alice,
        home,
        &["policy", "publish", example_policy().to_str().unwrap()],
    );
    assert!(send("bob@pouch.local").status.success());
    carol.sync();
    bob.sync();
    assert!(carol.inbox().iter().all(|m| m["subject"] != "Brief"));
    assert_eq!(
        bob.inbox()
            .iter()
            .filter(|m| m["subject"] == "Brief")
            .count(),
        1
    );
}

/// A reply goes to the whole conversation: a member the reply does not
/// name is checked too.
#[test]
fn every_member_of_the_conversation_is_checked_not_only_those_named() {
    let l = labelled("labels-members");
    let (alice, bob) = (&l.alice, &l.bob);
    let carol = user(&l.dir, &l.server, "carol");
    officer_ok(
        alice,
        &l.officer_home,
        &[
            "clear",
            "carol@pouch.local",
            "--max",
            "SECRET",
            "--category",
            "REL TO SVK",
        ],
    );
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local,carol@pouch.local",
        "--subject",
        "Plan",
        "--body",
        "x",
    ]);
    bob.sync();
    let plan = bob
        .inbox()
        .into_iter()
        .find(|m| m["subject"] == "Plan")
        .unwrap();
    let out = bob.run(&[
        "send",
        "--reply-to",
        &plan["id"].to_string(),
        "--to",
        "alice@pouch.local",
        "--body",
        "y",
        "--label",
        "CONFIDENTIAL//REL TO CZE",
    ]);
    assert_one_line_error(
        &out,
        "carol@pouch.local, a member of this conversation, may not receive CONFIDENTIAL//REL TO CZE mail",
    );
    carol.sync();
    assert_eq!(
        carol
            .inbox()
            .iter()
            .filter(|m| m["subject"] == "Re: Plan")
            .count(),
        0
    );
}

/// Devices that looked for the officer's statements before there were any
/// (mail went both ways unlabelled, so each remembers "none") receive the
/// first labelled mail after the officer publishes: not refused, not lost.
/// (The workload benchmark found it refused inside one long-running bridge,
/// whose last look at the log was under two seconds old; that race is
/// handled in `prepare_label_receipt` and not reproduced here.)
#[test]
fn a_device_that_looked_before_the_officer_published_receives_labelled_mail() {
    let l = labelled_after("labels-late", |alice, bob| {
        alice.ok(&[
            "send",
            "--to",
            "bob@pouch.local",
            "--subject",
            "Early",
            "--body",
            "x",
        ]);
        bob.sync();
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            "Early too",
            "--body",
            "y",
        ]);
        alice.sync();
    });
    let (alice, bob) = (&l.alice, &l.bob);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "First labelled",
        "--body",
        "z",
        "--label",
        "CONFIDENTIAL//REL TO CZE",
    ]);
    let out = alice.run(&["sync", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<_> = alice
        .inbox()
        .into_iter()
        .filter(|m| m["subject"] == "First labelled")
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["marking"], "CONFIDENTIAL//REL TO CZE");
}

/// Once there are two security administrators, the officer's key waits for
/// the second: one administrator's token alone cannot choose the key that
/// signs every clearance and the policy. The approver must give the key's
/// fingerprint as the officer read it to them; neither the requester nor
/// an operator may approve.
#[test]
fn the_officer_key_takes_a_second_security_administrator_once_there_are_two() {
    let dir = Scratch::new("labels-two-person");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let officer_home = dir.path("officer");
    let fingerprint = init_officer(&officer_home);
    let fingerprint = fingerprint.as_str();
    let card = officer_home.join("officer-card.json");
    let card = card.to_str().unwrap();
    let sec = server.add_admin("sec", "security");
    let sec2 = server.add_admin("sec2", "security");
    // An approver added in the second of the request (or later) is refused
    // as one made for it: the request comes a clock second later.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let out = server.admin_as(&sec, &["security-officer", card]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("register_officer") && said.contains("pouch security init"),
        "{said}"
    );
    // "pouch admin approve ID --fingerprint FINGERPRINT": the approver takes
    // the fingerprint from the officer; no listing shows it.
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["pouch", "admin", "approve"], "{line}");
    assert!(
        !line.contains(fingerprint) && !said.contains(fingerprint),
        "{line}{said}"
    );
    let id = words[3];
    let listed = String::from_utf8(server.admin_as(&sec2, &["approvals"]).stdout).unwrap();
    assert!(
        listed.contains(id) && !listed.contains(fingerprint),
        "{listed}"
    );

    // Nothing is in force yet: the officer cannot publish.
    let early = officer_cmd(
        &alice,
        &officer_home,
        &["policy", "publish", example_policy().to_str().unwrap()],
    );
    assert_one_line_error(&early, "no security officer is registered");

    let own = server.admin_as(&sec, &["approve", id, "--fingerprint", fingerprint]);
    assert_one_line_error(&own, "yourself");
    let operator = server.admin(
        &server.data_dir,
        &["approve", id, "--fingerprint", fingerprint],
    );
    assert_one_line_error(&operator, "needs the approval of a security administrator");
    let wrong = server.admin_as(&sec2, &["approve", id, "--fingerprint", &"0".repeat(64)]);
    assert_one_line_error(&wrong, "pouch security init");

    let out = server.admin_as(&sec2, &["approve", id, "--fingerprint", fingerprint]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("security officer key {fingerprint} registered")),
        "{said}"
    );
    let again = server.admin_as(&sec2, &["approve", id, "--fingerprint", fingerprint]);
    assert_one_line_error(&again, "approved already");

    // In force: the officer publishes, and the device pins the approved key.
    let said = officer_ok(
        &alice,
        &officer_home,
        &["policy", "publish", example_policy().to_str().unwrap()],
    );
    assert!(
        said.starts_with("published label policy MFA-EXAMPLE version 1"),
        "{said}"
    );
    let events = String::from_utf8(server.admin_as(&sec, &["events", "export"]).stdout).unwrap();
    assert!(
        events.contains(&format!(
            "key {fingerprint} (asked by sec, approved by sec2"
        )),
        "the registration's event names both administrators: {events}"
    );

    // Removing security administrators does not switch the rule off: with
    // one left, a new key cannot be registered at all.
    let out = server.admin(&server.data_dir, &["remove", "sec2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other_home = dir.path("officer-2");
    let _ = init_officer(&other_home);
    let other = other_home.join("officer-card.json");
    let alone = server.admin_as(&sec, &["security-officer", other.to_str().unwrap()]);
    assert_one_line_error(&alone, "needs a second security administrator");

    // Nor can one operator make up both people: once there are two
    // operators, a security administrator is added only with the second's
    // approval (here it waits; nothing is added).
    let _ops2 = server.add_admin("ops2", "operator");
    let home = dir.path("sec3-admin");
    let out = server.admin_init_as(&home, "sec3", "security", &home.join("no-setup-secret"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["pouch", "admin", "add"], "{line}");
    let out = server.admin(&server.data_dir, &words[2..]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("pouch admin approve "), "{said}");
    let listed = String::from_utf8(server.admin(&server.data_dir, &["list"]).stdout).unwrap();
    assert!(!listed.contains("sec3"), "{listed}");
}
