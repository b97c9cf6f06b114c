//! The authorization matrix: every route the server serves, taken from the
//! same table its router is built from (`pouch_server::route_table`), tried
//! with no token, a revoked device's token, another account's device, a
//! device where an administrator is required, and an administrator of each
//! role (operator, security, auditor): admitted where the route names the
//! role, 403 where it does not, 401 where a device is required. A route added without an access rule does not
//! compile; one whose handler does not enforce its rule fails here.

mod common;

use common::*;
use pouch_server::routes::Access;

/// The status of one request made by hand (curl), with `token` as bearer.
fn status(method: &str, url: &str, token: Option<&str>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sSk",
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if matches!(method, "POST" | "PUT") {
        cmd.args(["-H", "Content-Type: application/json", "-d", body_for(url)]);
    }
    let out = cmd.arg(url).output().unwrap();
    let code: u16 = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_ne!(
        code,
        0,
        "{method} {url}: no answer ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    code
}

/// A well-formed body where the route reads one, so that the answer is
/// about who asks, not about what was sent.
fn body_for(url: &str) -> &'static str {
    if url.ends_with("/commits") {
        r#"{"base_epoch": 1, "commit": "AAAA", "added": [], "removed": []}"#
    } else if url.ends_with("/messages") {
        r#"{"epoch": 1, "message": "AAAA"}"#
    } else {
        "{}"
    }
}

#[test]
fn every_route_refuses_whoever_its_rule_does_not_admit() {
    let dir = Scratch::new("authz");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let _bob = user(&dir, &server, "bob");
    let sent = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "s",
        "--body",
        "b",
        "--json",
    ]);
    let conversation = sent["conversation"].as_str().unwrap().to_string();
    let alice_device = device_id_of(&alice);

    // Carol: another account. Dave: a device the administrator revoked.
    let carol = RawDevice::enroll(&server, "carol@pouch.local");
    let carol_token = carol.token();
    let dave = RawDevice::enroll(&server, "dave@pouch.local");
    let dave_token = dave.token();
    // Added before the second operator (made by admin_approved): after it,
    // a security administrator waits for a second operator's approval.
    let sam = server.add_admin("sam", "security");
    let out = server.admin_approved(&["device", "revoke", "dave@pouch.local", &dave.device_id.0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One administrator of each role, each with their own signed-in token.
    use pouch_proto::api::AdminRole;
    let admins = [
        (AdminRole::Operator, server.ops_token()),
        (AdminRole::Security, server.admin_token(&sam)),
        (
            AdminRole::Auditor,
            server.admin_token(&server.add_admin("audrey", "auditor")),
        ),
    ];
    let operator_token = admins[0].1.clone();

    let table = pouch_server::route_table();
    assert!(
        table.len() >= 30,
        "the table lists every route: {}",
        table.len()
    );
    let mut tried = 0;
    for spec in &table {
        let path = spec
            .path
            .replace("{address}", "alice@pouch.local")
            .replace("{group}", &conversation)
            .replace("{blob}", &"0".repeat(32))
            .replace("{index}", "0")
            .replace("{code}", "ABCD-EFGH-JKLM")
            .replace("{id}", "NOSUCHREQUEST")
            .replace("{name}", "nobody")
            .replace("{device}", &alice_device)
            .replace("{*path}", "0/000");
        let url = format!("{}{path}", server.url);
        for (method, access) in &spec.methods {
            let m = method.as_str();
            let anonymous = status(m, &url, None);
            let revoked = status(m, &url, Some(&dave_token));
            let other = status(m, &url, Some(&carol_token));
            let by_role: Vec<(AdminRole, u16)> = admins
                .iter()
                .map(|(role, token)| (*role, status(m, &url, Some(token))))
                .collect();
            let what = format!("{m} {} ({access:?})", spec.path);
            match access {
                Access::Public => {
                    assert!(
                        !matches!(anonymous, 401 | 403 | 405),
                        "{what}: public, but {anonymous} without a token"
                    );
                }
                Access::Device | Access::DeviceOrInvite => {
                    assert_eq!(anonymous, 401, "{what}: without a token");
                    assert_eq!(revoked, 401, "{what}: with a revoked device's token");
                    for (role, got) in &by_role {
                        assert_eq!(*got, 401, "{what}: with an administrator's ({role}) token");
                    }
                    // Another account reaches nothing of Alice's conversation.
                    if spec.path.contains("{group}") {
                        assert!(
                            matches!(other, 403 | 404),
                            "{what}: another account's device got {other}"
                        );
                    } else {
                        assert_ne!(other, 401, "{what}: a signed-in device is refused");
                    }
                }
                Access::Admin(roles) => {
                    assert_eq!(anonymous, 401, "{what}: without a token");
                    assert_eq!(revoked, 401, "{what}: with a revoked device's token");
                    assert_eq!(other, 401, "{what}: with a device's token");
                    for (role, got) in &by_role {
                        if roles.contains(role) {
                            assert!(
                                !matches!(got, 401 | 403 | 405),
                                "{what}: an administrator with the role {role} got {got}"
                            );
                        } else {
                            assert_eq!(*got, 403, "{what}: the role {role} is not admitted");
                        }
                    }
                }
            }
            tried += 1;
        }
        // A method the table does not list is not answered at all.
        for m in ["GET", "POST", "PUT", "DELETE"] {
            if !spec
                .methods
                .iter()
                .any(|(declared, _)| declared.as_str() == m)
            {
                assert_eq!(
                    status(m, &url, Some(&operator_token)),
                    405,
                    "{m} {} answers but is not in the table",
                    spec.path
                );
            }
        }
    }
    eprintln!("{tried} route methods tried with six credentials each");
}
