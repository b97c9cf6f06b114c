//! The OCSF a real server exports (events) and streams (alerts) validates
//! against the OCSF classes it claims: Authentication (3002), Account Change
//! (3001), API Activity (6003) and Detection Finding (2004).
//!
//! Types and attribute names are checked by the schema's generated types
//! (crate `ocsf-types`, built from the official OCSF schema): each record
//! must deserialize into its class and serialize back unchanged, so a wrong
//! type fails and an attribute the class does not have would be dropped and
//! fail the comparison. Required attributes are checked by name, from the
//! schema's base classes and objects (the cloud and OSINT profiles' required
//! attributes do not apply: Pouch records claim no profile).

mod common;

use common::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const EVENT_REQUIRED: &[&str] = &[
    "activity_id",
    "category_uid",
    "class_uid",
    "metadata",
    "severity_id",
    "time",
    "type_uid",
];

fn conforms<T: DeserializeOwned + Serialize>(record: &Value, class_required: &[&str]) {
    for attr in EVENT_REQUIRED.iter().chain(class_required) {
        assert!(
            record.get(attr).is_some(),
            "required '{attr}' missing: {record}"
        );
    }
    let meta = &record["metadata"];
    assert!(
        meta["version"].is_string() && meta["product"].is_object(),
        "{meta}"
    );
    assert_eq!(
        record["type_uid"].as_i64().unwrap(),
        record["class_uid"].as_i64().unwrap() * 100 + record["activity_id"].as_i64().unwrap()
    );
    let typed: T = serde_json::from_value(record.clone())
        .unwrap_or_else(|e| panic!("not of its class's types: {e}: {record}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, record, "attributes outside the class");
}

fn validate(record: &Value) -> i64 {
    let class = record["class_uid"].as_i64().unwrap();
    match class {
        3002 => conforms::<ocsf_types::Authentication>(record, &["user"]),
        3001 => conforms::<ocsf_types::AccountChange>(record, &["user"]),
        6003 => {
            conforms::<ocsf_types::ApiActivity>(record, &["actor", "api", "src_endpoint"]);
            assert!(record["api"]["operation"].is_string(), "{record}");
        }
        2004 => {
            conforms::<ocsf_types::DetectionFinding>(record, &["finding_info"]);
            let info = &record["finding_info"];
            assert!(info["uid"].is_string(), "{info}");
            assert!(info["analytic"]["type_id"].is_i64(), "{info}");
        }
        other => panic!("unexpected class {other}: {record}"),
    }
    if let Some(device) = record.get("device") {
        assert!(
            device["type_id"].is_i64(),
            "device.type_id is required: {record}"
        );
    }
    class
}

#[test]
fn exported_events_and_streamed_alerts_validate_against_their_ocsf_classes() {
    let dir = Scratch::new("ocsf");
    let data = dir.path("server");
    std::fs::create_dir_all(&data).unwrap();
    let findings_file = dir.path("alerts.ocsf.jsonl");
    std::fs::write(
        data.join("pouch.toml"),
        format!("[alerts]\nocsf_file = \"{}\"\n", findings_file.display()),
    )
    .unwrap();
    let server = Server::start(&data, None);
    // A bit of everything: enrollments, a link, mail, a stolen invite, a forged
    // one, and an administrator's revocation.
    let invite = server.invite("alice@pouch.local");
    let alice = Client::enroll(dir.path("alice"), &invite, "alice@pouch.local");
    let thief = Client {
        home: dir.path("thief"),
        address: String::new(),
    };
    assert!(!thief.run(&["enroll", &invite]).status.success());
    let bob = user(&dir, &server, "bob");
    let laptop = link(dir.path("laptop"), &server, &alice);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    laptop.sync();
    let id = device_id_of(&laptop);
    assert!(
        server
            .admin_approved(&["device", "revoke", "alice@pouch.local", &id])
            .status
            .success()
    );

    let out = server.admin(&server.data_dir, &["events", "export", "--format", "ocsf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut classes = std::collections::BTreeSet::new();
    let mut n = 0;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        classes.insert(validate(&serde_json::from_str(line).unwrap()));
        n += 1;
    }
    assert!(n > 10, "only {n} events");
    assert_eq!(
        classes.into_iter().collect::<Vec<_>>(),
        vec![3001, 3002, 6003]
    );

    // The alerts the rules raised, as the file output wrote them.
    let mut rules = Vec::new();
    for _ in 0..50 {
        rules = std::fs::read_to_string(&findings_file)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert_eq!(validate(&v), 2004);
                v["finding_info"]["analytic"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if rules.iter().any(|r| r == "admin_action") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for expected in ["new_device", "invite_reuse", "admin_action"] {
        assert!(
            rules.iter().any(|r| r == expected),
            "{expected} not in {rules:?}"
        );
    }
}
