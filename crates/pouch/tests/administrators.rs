//! Administrators are people with keys: the first is made once with the
//! server's setup secret, every act names its person in the events, roles
//! limit what each may do, and a reset or an administrator's revocation
//! does nothing until a second administrator approves it.

mod common;

use common::*;

/// A valid Ed25519 public key nobody holds the secret of here.
fn some_public_key() -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
        .verifying_key()
        .to_bytes()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every access event, parsed (`pouch admin events export`, by `home`).
fn events(server: &Server, home: &std::path::Path) -> Vec<serde_json::Value> {
    stdout(&server.admin_as(home, &["events", "export"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn the_setup_secret_makes_one_first_administrator_and_only_once() {
    let dir = Scratch::new("admin-bootstrap");
    let server = Server::start(&dir.path("server"), None);
    let setup = dir.path("server").join("admin-setup.token");
    let secret = std::fs::read_to_string(&setup).unwrap();
    let copy = dir.path("setup-copy");
    std::fs::write(&copy, &secret).unwrap();

    // The first: an operator, who can invite.
    let first = server.invite("alice@pouch.local");
    assert!(first.starts_with("pouch-invite:"));
    assert!(!setup.exists(), "a used setup secret is removed");

    // A copy of the secret makes nobody an administrator afterwards, and
    // leaves no key behind.
    let thief = dir.path("thief-admin");
    let out = server.admin_init(&thief, "eve", &copy);
    assert_one_line_error(&out, "the setup secret is wrong or was used already");
    assert!(!thief.join("admin.json").exists());
    // Not even by hand, racing nobody.
    let body = serde_json::json!({
        "name": "eve",
        "public_key": pouch_proto::b64::encode(&some_public_key()),
        "setup_secret": secret.trim(),
    });
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg(format!("{}/v1/admin/bootstrap", server.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let admins = stdout(&server.admin(&server.data_dir, &["list", "--json"]));
    let admins: Vec<serde_json::Value> = serde_json::from_str(&admins).unwrap();
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(admins[0]["name"], "ops");
    assert_eq!(admins[0]["role"], "operator");

    // The security team sees both attempts.
    let sam = server.add_admin("sam", "security");
    let all = events(&server, &sam);
    let bootstraps: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| {
            e["action"] == "admin_bootstrap"
                && e["outcome"] == "success"
                && e["detail"].as_str().unwrap_or("").contains("setup secret")
        })
        .collect();
    assert_eq!(bootstraps.len(), 1, "{all:#?}");
    assert_eq!(bootstraps[0]["admin"], "ops");
    let refused = all
        .iter()
        .filter(|e| e["action"] == "admin_bootstrap" && e["outcome"] == "failure")
        .count();
    assert_eq!(refused, 2, "the copied secret, twice: {all:#?}");
    // Restarting the server makes no new secret once someone administers.
    drop(server);
    let _again = Server::start(&dir.path("server"), None);
    assert!(!setup.exists());
}

#[test]
fn a_reset_waits_for_a_second_administrator_and_each_person_is_named() {
    let dir = Scratch::new("admin-two-person");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let ops = admin_home_of(&server.data_dir);
    // The security administrator first: once there are two operators, one
    // is added only with a second operator's approval.
    let sam = server.add_admin("sam", "security");
    let olga = server.add_admin("olga", "operator");
    let audrey = server.add_admin("audrey", "auditor");

    // Olga asks for Bob's reset: nothing happens yet.
    let asked = stdout(&server.admin_as(&olga, &["user", "reset", "bob@pouch.local"]));
    let id = asked.split_whitespace().nth(3).unwrap().to_string();
    assert!(asked.starts_with("pouch admin approve "), "{asked}");
    // Bob hears of it at once, as an alert on his own account.
    let out = bob.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3), "an alert is a non-zero exit");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("administrator olga asked for reset"),
        "{said}"
    );
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "still Bob",
        "--body",
        "x",
    ]);
    bob.sync();
    assert!(bob.inbox().iter().any(|m| m["subject"] == "still Bob"));
    let pending = stdout(&server.admin_as(&audrey, &["approvals", "--json"]));
    assert!(
        pending.contains(&id) && pending.contains("\"requested_by\": \"olga\""),
        "{pending}"
    );

    // Olga cannot approve her own request, nor make up a second person:
    // with two operators, the operator she adds only waits for a second
    // operator's approval, and once added cannot approve what she asked
    // (a second name, not a second person); the security team and the
    // auditor cannot approve.
    assert_one_line_error(
        &server.admin_as(&olga, &["approve", &id]),
        "a second administrator must approve it",
    );
    let puppet = dir.path("puppet-admin");
    let out = server.admin_init(&puppet, "pat", &puppet.join("none"));
    // What Pat reads out: the fingerprint of the key Pat made.
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let pats_fingerprint = said
        .split("(fingerprint ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{said}"))
        .to_string();
    let add = stdout(&out);
    let words: Vec<&str> = add.split_whitespace().collect();
    // A key already an administrator's is no second person's.
    let olgas_key = {
        let me = pouch_client::admin::AdminIdentity::open(&olga, PASSPHRASE).unwrap();
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(me.public_key())
    };
    assert_one_line_error(
        &server.admin_as(
            &olga,
            &[
                "add",
                "olgas-twin",
                "--role",
                "operator",
                &format!("--key={olgas_key}"),
            ],
        ),
        "already an administrator's",
    );
    let asked_add = stdout(&server.admin_as(&olga, &words[2..]));
    assert!(asked_add.starts_with("pouch admin approve "), "{asked_add}");
    let add_id = asked_add.split_whitespace().nth(3).unwrap().to_string();
    assert_one_line_error(
        &server.admin_as(&puppet, &["approve", &id]),
        "administrator sign-in failed",
    );
    let pending = stdout(&server.admin_as(&audrey, &["approvals"]));
    assert!(
        pending.contains(&add_id)
            && pending.contains("add_operator")
            && pending.contains("operator pat"),
        "{pending}"
    );
    // Neither the listing nor the requester's screen offers Pat's key
    // fingerprint to copy: the approver takes it from Pat.
    assert!(!pending.contains(&pats_fingerprint), "{pending}");
    assert!(
        !asked_add.contains(&pats_fingerprint) && asked_add.contains("FINGERPRINT"),
        "{asked_add}"
    );
    assert_one_line_error(
        &server.admin_as(&olga, &["approve", &add_id]),
        "a second administrator must approve it",
    );
    // The approver vouches for the key: without Pat's fingerprint, or with
    // another, nothing happens.
    assert_one_line_error(
        &server.admin_as(&ops, &["approve", &add_id]),
        "ask pat for the key fingerprint",
    );
    assert_one_line_error(
        &server.admin_as(
            &ops,
            &["approve", &add_id, "--fingerprint", &"0".repeat(64)],
        ),
        "ask pat for the key fingerprint",
    );
    let done = stdout(&server.admin_as(
        &ops,
        &["approve", &add_id, "--fingerprint", &pats_fingerprint],
    ));
    assert!(done.contains("operator pat: added as operator"), "{done}");
    assert_one_line_error(
        &server.admin_as(&puppet, &["approve", &id]),
        "needs an administrator who was one before it was asked and whom olga did not add",
    );
    assert_one_line_error(&server.admin_as(&sam, &["approve", &id]), "may not do this");
    assert_one_line_error(
        &server.admin_as(&audrey, &["approve", &id]),
        "may not do this",
    );
    // Bob is told of the attempts too; his device still works.
    let out = bob.run(&["sync"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("olga tried to approve their own request"),
        "{said}"
    );
    assert_eq!(
        bob.run(&["sync"]).status.code(),
        Some(0),
        "Bob's device still works"
    );

    // Ops approves: it happens, once, and the invite comes to them.
    let out = server.admin_as(&ops, &["approve", &id]);
    let invite = stdout(&out);
    assert!(invite.trim().starts_with("pouch-invite:"), "{invite}");
    assert_one_line_error(
        &server.admin_as(&ops, &["approve", &id]),
        "approved already",
    );
    let out = bob.run(&["sync"]);
    assert!(
        !out.status.success(),
        "Bob's old device still works after the reset"
    );
    // After the reset no operator alone mints another invite for Bob.
    assert_one_line_error(
        &server.admin_as(&olga, &["user", "add", "bob@pouch.local"]),
        "was reset",
    );

    // Roles: the security team reads events but adds nobody; the auditor
    // reads accounts but changes nothing.
    assert_one_line_error(
        &server.admin_as(&sam, &["user", "add", "carol@pouch.local"]),
        "may not do this",
    );
    assert!(stdout(&server.admin_as(&audrey, &["user", "list"])).contains("alice@pouch.local"));
    assert_one_line_error(
        &server.admin_as(&audrey, &["user", "reset", "alice@pouch.local"]),
        "may not do this",
    );
    assert_one_line_error(
        &server.admin_as(&ops, &["events", "verify"]),
        "may not do this",
    );

    // Every act names its person; the request and the reset raised alerts.
    let all = events(&server, &sam);
    let by = |action: &str, admin: &str| {
        all.iter()
            .any(|e| e["action"] == action && e["admin"] == admin && e["outcome"] == "success")
    };
    assert!(by("admin_invite", "ops"), "invites by ops: {all:#?}");
    assert!(by("admin_operator_added", "ops"), "olga added by ops");
    assert!(by("admin_added", "ops"), "sam and audrey added by ops");
    assert!(
        all.iter().any(|e| e["action"] == "admin_operator_added"
            && e["admin"] == "ops"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("added pat as operator (asked by olga, approved by ops")),
        "pat asked by olga, added with ops's approval: {all:#?}"
    );
    assert!(by("admin_approval_requested", "olga"));
    assert!(by("admin_reset", "ops"), "the reset is the approver's act");
    assert!(by("admin_sign_in", "audrey"));
    let reset = all.iter().find(|e| e["action"] == "admin_reset").unwrap();
    assert!(
        reset["detail"]
            .as_str()
            .unwrap()
            .contains("asked by olga, approved by ops"),
        "{reset}"
    );
    let own = all
        .iter()
        .find(|e| e["action"] == "admin_approved" && e["outcome"] == "failure")
        .expect("the self-approval is recorded");
    assert_eq!(own["admin"], "olga");
    let alerts = stdout(&server.admin_as(&sam, &["alerts", "--json"]));
    assert!(
        alerts.contains("administrator olga asked for reset"),
        "{alerts}"
    );
    assert!(
        alerts.contains("admin reset by administrator ops"),
        "{alerts}"
    );
    assert!(
        alerts.contains("tried to approve their own request"),
        "{alerts}"
    );

    // The OCSF export names the person as the actor.
    let ocsf = stdout(&server.admin_as(&sam, &["events", "export", "--format", "ocsf"]));
    let reset_record = ocsf
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| {
            r["api"]["operation"] == "admin_reset" || r["unmapped"]["action"] == "admin_reset"
        })
        .unwrap();
    assert_eq!(reset_record["actor"]["user"]["name"], "ops");
    assert_eq!(reset_record["actor"]["user"]["type_id"], 2);

    // A removed administrator's key signs in no more; nobody removes themselves.
    assert_one_line_error(
        &server.admin_as(&ops, &["remove", "ops"]),
        "cannot remove yourself",
    );
    // Removing an operator also waits for a second one (here Pat, whom
    // ops did not add).
    let asked = stdout(&server.admin_as(&ops, &["remove", "olga"]));
    let remove_id = asked.split_whitespace().nth(3).unwrap().to_string();
    assert!(stdout(&server.admin_as(&olga, &["user", "list"])).contains("alice@"));
    let done = stdout(&server.admin_as(&puppet, &["approve", &remove_id]));
    assert!(done.contains("operator olga: removed"), "{done}");
    assert_one_line_error(
        &server.admin_as(&olga, &["user", "list"]),
        "administrator sign-in failed",
    );
    // Security and auditor administrators are removed by one operator.
    stdout(&server.admin_as(&ops, &["remove", "audrey"]));
    assert_one_line_error(
        &server.admin_as(&audrey, &["user", "list"]),
        "administrator sign-in failed",
    );
    // Names are never reused, so that past events name one person.
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(some_public_key());
    let out = server.admin_as(
        &ops,
        &["add", "olga", "--role", "operator", &format!("--key={key}")],
    );
    assert_one_line_error(&out, "never reused");
}
