//! Red team: each attack of the detection issue is played against a real
//! server, and the right alert must reach, within 5 seconds, the security
//! team — through every output at once: the alert API (`pouch admin alerts`),
//! the OCSF file, syslog over TCP (RFC 5424, octet-counted) and the webhook —
//! and the account's other device (its next sync).
//!
//! Where an attack needs volume (bulk fetch, key-package drain) or months
//! (a dormant device), the test lowers that one threshold in the server's
//! policy file; every other threshold stays at its default.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The security team's receiving end: a syslog collector and a webhook
/// receiver on loopback, and the OCSF file the server appends to.
struct SecurityTeam {
    syslog: Arc<Mutex<Vec<String>>>,
    webhook: Arc<Mutex<Vec<Value>>>,
    syslog_addr: String,
    webhook_addr: String,
    ocsf_file: PathBuf,
}

impl SecurityTeam {
    fn listen(dir: &Scratch) -> SecurityTeam {
        let syslog = Arc::new(Mutex::new(Vec::new()));
        let webhook = Arc::new(Mutex::new(Vec::new()));
        let syslog_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let webhook_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let team = SecurityTeam {
            syslog: syslog.clone(),
            webhook: webhook.clone(),
            syslog_addr: syslog_listener.local_addr().unwrap().to_string(),
            webhook_addr: webhook_listener.local_addr().unwrap().to_string(),
            ocsf_file: dir.path("alerts.ocsf.jsonl"),
        };
        std::thread::spawn(move || {
            for conn in syslog_listener.incoming().flatten() {
                let syslog = syslog.clone();
                std::thread::spawn(move || read_syslog_frames(conn, &syslog));
            }
        });
        std::thread::spawn(move || {
            for conn in webhook_listener.incoming().flatten() {
                let webhook = webhook.clone();
                std::thread::spawn(move || serve_webhook(conn, &webhook));
            }
        });
        team
    }

    /// The policy file: every output on, plus the test's own lines.
    fn policy(&self, extra: &str) -> String {
        format!(
            "[alerts]\nocsf_file = \"{}\"\nsyslog = \"tcp://{}\"\nwebhook = \"http://{}/pouch-alerts\"\n{extra}",
            self.ocsf_file.display(),
            self.syslog_addr,
            self.webhook_addr
        )
    }

    /// Waits (until 5 s after `started`) for `rule` on every output; returns the API's record.
    fn expect(&self, server: &Server, rule: &str, started: Instant) -> Value {
        self.expect_within(server, rule, started, Duration::from_secs(5))
    }

    /// As [`Self::expect`], with a stated time limit.
    fn expect_within(
        &self,
        server: &Server,
        rule: &str,
        started: Instant,
        limit: Duration,
    ) -> Value {
        loop {
            let api = admin_alerts(server).into_iter().find(|a| a["rule"] == rule);
            let file = std::fs::read_to_string(&self.ocsf_file)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["class_uid"] == 2004 && v["finding_info"]["analytic"]["name"] == rule
                });
            let syslog = self.syslog.lock().unwrap().iter().any(|m| {
                m.starts_with('<')
                    && m.contains(&"[pouch@32473 ".to_string())
                    && m.contains(&format!("rule=\"{rule}\""))
            });
            let webhook = self
                .webhook
                .lock()
                .unwrap()
                .iter()
                .any(|v| v["finding_info"]["analytic"]["name"] == rule);
            if let (Some(a), true, true, true) = (&api, file, syslog, webhook) {
                return a.clone();
            }
            assert!(
                started.elapsed() < limit,
                "{rule} did not reach every output within {limit:?}: api {}, OCSF file {file}, syslog {syslog}, webhook {webhook}",
                api.is_some()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// RFC 6587 octet counting: "LEN SP MSG", repeated.
fn read_syslog_frames(conn: std::net::TcpStream, into: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(conn);
    loop {
        let mut len = Vec::new();
        if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
            return;
        }
        let n: usize = String::from_utf8_lossy(&len)
            .trim()
            .parse()
            .expect("octet count");
        let mut msg = vec![0; n];
        r.read_exact(&mut msg).unwrap();
        into.lock().unwrap().push(String::from_utf8(msg).unwrap());
    }
}

/// A minimal HTTP/1.1 receiver: each POST body is kept, 204 answered.
fn serve_webhook(conn: std::net::TcpStream, into: &Mutex<Vec<Value>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut length = 0;
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        assert!(
            request_line.starts_with("POST /pouch-alerts "),
            "{request_line}"
        );
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        into.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
        w.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

fn admin_alerts(server: &Server) -> Vec<Value> {
    server.alerts()
}

/// A server whose policy file routes alerts to `team`, plus `extra` lines.
fn server_for(dir: &Scratch, team: &SecurityTeam, extra: &str) -> Server {
    let data = dir.path("server");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("pouch.toml"), team.policy(extra)).unwrap();
    Server::start(&data, None)
}

/// The other device's next sync fails with the rule in its status, and the
/// alert is in its inbox.
fn other_device_is_told(device: &Client, rule: &str, started: Instant) {
    let out = device.run(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(rule), "{err}");
    let words = rule.replace('_', " ");
    assert!(
        device
            .inbox()
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains(&words)),
        "no '{words}' entry in the inbox"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

fn bob_writes(bob: &Client, to: &str, subject: &str) {
    bob.ok(&["send", "--to", to, "--subject", subject, "--body", "x"]);
}

#[test]
fn a_stolen_invite_used_a_second_time() {
    let dir = Scratch::new("rt-invite");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let invite = server.invite("alice@pouch.local");
    let alice = Client::enroll(dir.path("alice"), &invite, "alice@pouch.local");
    let thief = Client {
        home: dir.path("thief"),
        address: String::new(),
    };

    let started = Instant::now();
    assert_one_line_error(&thief.run(&["enroll", &invite]), "already been used");
    let a = team.expect(&server, "invite_reuse", started);
    assert_eq!(a["severity"], "high");
    assert_eq!(a["account"], "alice@pouch.local");
    other_device_is_told(&alice, "invite_reuse", started);
}

#[test]
fn a_device_state_copied_and_used_from_127_0_0_2_is_revoked_by_policy() {
    let dir = Scratch::new("rt-clone");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "[response]\nrevoke_cloned_devices = true\n");
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let laptop = link(dir.path("laptop"), &server, &alice);
    let laptop_id = device_id_of(&laptop);
    laptop.sync();
    // An intruder copies the laptop's state directory; the laptop goes on working.
    copy_dir(&laptop.home, &dir.path("stolen"));
    let stolen = Client {
        home: dir.path("stolen"),
        address: "alice@pouch.local".into(),
    };
    bob_writes(&bob, "alice@pouch.local", "agenda");
    laptop.sync();

    // Later the copy reads the laptop's queue from 127.0.0.2, from where the laptop was when copied.
    let started = Instant::now();
    let _ = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();
    let a = team.expect(&server, "cloned_device", started);
    assert_eq!(a["severity"], "high");
    assert_eq!(a["device"].as_str().unwrap(), laptop_id);
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.contains("127.0.0.2") && summary.contains("revoked automatically"),
        "{summary}"
    );
    other_device_is_told(&alice, "cloned_device", started);

    // The policy revoked the device: the copy (and the laptop, which the user relinks) are out.
    let out = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let list = alice.json(&["device", "list", "--json"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == laptop_id.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        entry["state"].as_str().unwrap().starts_with("revoked"),
        "{entry}"
    );
}

#[test]
fn two_copies_taking_turns_from_two_addresses() {
    let dir = Scratch::new("rt-turns");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let alice = user(&dir, &server, "alice");
    let laptop = link(dir.path("laptop"), &server, &alice);
    copy_dir(&laptop.home, &dir.path("stolen"));
    let stolen = Client {
        home: dir.path("stolen"),
        address: "alice@pouch.local".into(),
    };
    // One change of network is a laptop moving: no alert.
    let _ = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();
    assert!(
        !admin_alerts(&server)
            .iter()
            .any(|a| a["rule"] == "cloned_device")
    );
    // Back and forth is two copies in use at once.
    laptop.sync();
    let started = Instant::now();
    let _ = stolen
        .cmd()
        .env("POUCH_BIND_ADDRESS", "127.0.0.2")
        .args(["sync"])
        .output()
        .unwrap();
    let a = team.expect(&server, "cloned_device", started);
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("two network addresses"),
        "{a}"
    );
    other_device_is_told(&alice, "cloned_device", started);
}

#[test]
fn a_device_the_administrator_adds_behind_the_account_s_back() {
    let dir = Scratch::new("rt-rogue");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let alice = user(&dir, &server, "alice");
    let phone = link(dir.path("phone"), &server, &alice);
    // An administrator cannot add a device through Pouch (invites enroll an
    // account's first device only); with the database, a rogue one can be written in.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    server
        .db()
        .execute(
            "INSERT INTO devices (device_id, address, name, signature_key, created_at, approved_at) \
             VALUES ('00112233445566778899aabbccddeeff', 'alice@pouch.local', 'rogue', ?1, ?2, ?2)",
            rusqlite::params![vec![7u8; 32], now],
        )
        .unwrap();
    // Alice's laptop sees a device no list of hers signed for, and reports it.
    let started = Instant::now();
    let out = alice.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = team.expect(&server, "rogue_device", started);
    assert_eq!(a["severity"], "critical");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("00112233445566778899aabbccddeeff"),
        "{a}"
    );
    other_device_is_told(&phone, "rogue_device", started);

    // The administrator's own way in — reset the account and enroll anew — is
    // an alert as well, and the old devices are told why they were cut off.
    let out = server.admin_approved(&["user", "reset", "alice@pouch.local"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let started = Instant::now();
    Client::enroll(dir.path("admins-device"), &invite, "alice@pouch.local");
    team.expect(&server, "admin_action", started);
    let enrolled = admin_alerts(&server)
        .into_iter()
        .find(|a| a["rule"] == "new_device" && a["severity"] == "high")
        .expect("a high new_device alert for the enrollment after the reset");
    assert!(
        enrolled["summary"].as_str().unwrap().contains("reset"),
        "{enrolled}"
    );
    let out = phone.run(&["sync"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked") || err.contains("reset"), "{err}");
}

#[test]
fn a_bulk_fetch_far_above_the_device_s_baseline() {
    let dir = Scratch::new("rt-bulk");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "[detection]\nbulk_fetch_floor = 6\n");
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let laptop = link(dir.path("laptop"), &server, &alice);
    laptop.sync();
    // A week's worth of mail waits; someone with the laptop's keys takes it all at once.
    for i in 0..8 {
        bob_writes(&bob, "alice@pouch.local", &format!("cable {i}"));
    }
    let started = Instant::now();
    let out = laptop.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = team.expect(&server, "bulk_fetch", started);
    assert_eq!(a["severity"], "high");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("busiest earlier window was 0"),
        "{a}"
    );
    other_device_is_told(&alice, "bulk_fetch", started);
}

#[test]
fn a_key_package_drain() {
    let dir = Scratch::new("rt-drain");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let alice = user(&dir, &server, "alice");
    let laptop = link(dir.path("laptop"), &server, &alice);
    // Ordinary new conversations claim a package each and do not alert.
    let bob = user(&dir, &server, "bob");
    for i in 0..3 {
        bob_writes(&bob, "alice@pouch.local", &format!("hello {i}"));
    }
    // Mallory's modified client claims Alice's packages again and again,
    // starting no conversation, until her devices' pools are empty.
    let mallory = RawDevice::enroll(&server, "mallory@pouch.local");
    let alice_address = pouch_proto::Address::parse("alice@pouch.local").unwrap();
    let mut started = Instant::now();
    for _ in 0..120 {
        started = Instant::now();
        let claimed = mallory.claim(std::slice::from_ref(&alice_address)).unwrap();
        if claimed.devices.iter().all(|d| d.last_resort) {
            break;
        }
    }
    let a = team.expect(&server, "key_package_drain", started);
    assert_eq!(a["account"], "alice@pouch.local");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("claimed by mallory@pouch.local"),
        "the alert names who drained: {a}"
    );
    assert!(
        !admin_alerts(&server)
            .iter()
            .any(|x| x["rule"] == "key_package_drain"
                && x["summary"].as_str().unwrap().contains("bob@")),
        "ordinary conversations are not a drain"
    );
    other_device_is_told(&laptop, "key_package_drain", started);
}

/// Claims `address`'s key packages as a client does: once per call, for
/// `rounds` calls, each followed by a new conversation (a Welcome to every
/// device claimed) when `converse`. Returns whether the last claim was
/// served only last-resort packages.
fn claim_rounds(device: &RawDevice, address: &str, rounds: usize, converse: bool) -> bool {
    let address = pouch_proto::Address::parse(address).unwrap();
    let me = pouch_proto::Address::parse("busy@pouch.local").unwrap();
    let mut dry = false;
    for _ in 0..rounds {
        let claimed = device.claim(std::slice::from_ref(&address)).unwrap();
        dry = !claimed.devices.is_empty() && claimed.devices.iter().all(|d| d.last_resort);
        if !converse {
            continue;
        }
        let packages: Vec<_> = claimed
            .devices
            .iter()
            .map(|d| {
                pouch_mls::validate_key_package(
                    &device.provider,
                    device.suite,
                    &pouch_mls::ClaimedPackage {
                        bytes: &d.key_package,
                        address: &d.address,
                        signature_key: &d.signature_key,
                    },
                )
                .unwrap()
            })
            .collect();
        let (group, out) = pouch_mls::create_conversation(
            &device.provider,
            device.suite,
            &device.signer,
            &me,
            &rand::random::<[u8; 32]>(),
            &packages,
        )
        .unwrap();
        let gid = pouch_proto::GroupId::from_bytes(&pouch_mls::group_id_bytes(&group));
        let _: pouch_proto::api::CommitResponse = device
            .api
            .post(
                &format!("/v1/groups/{gid}/commits"),
                &pouch_proto::api::CommitRequest {
                    base_epoch: 0,
                    commit: Some(out.commit),
                    welcome: out.welcome,
                    added: claimed
                        .devices
                        .iter()
                        .map(|d| d.device_id.clone())
                        .collect(),
                    removed: vec![],
                    group_info: out.group_info,
                    hub_nonce: None,
                },
            )
            .unwrap();
    }
    dry
}

#[test]
fn a_busy_sender_emptying_a_pool_is_not_a_drain_but_claims_without_conversations_are() {
    let dir = Scratch::new("rt-busy");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let _alice = user(&dir, &server, "alice");
    // A circular to Alice, 110 new conversations in a few seconds: her pool
    // of 100 runs dry, every claim followed by its Welcome.
    let busy = RawDevice::enroll(&server, "busy@pouch.local");
    assert!(
        claim_rounds(&busy, "alice@pouch.local", 110, true),
        "the pool ran dry"
    );
    // Then claims that start nothing, past the threshold.
    let mallory = RawDevice::enroll(&server, "mallory@pouch.local");
    let started = Instant::now();
    claim_rounds(&mallory, "alice@pouch.local", 105, false);
    let a = team.expect(&server, "key_package_drain", started);
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("claimed by mallory@pouch.local"),
        "{a}"
    );
    let drains: Vec<Value> = admin_alerts(&server)
        .into_iter()
        .filter(|x| x["rule"] == "key_package_drain")
        .collect();
    assert_eq!(drains.len(), 1, "one alert, for Mallory only: {drains:?}");
}

#[test]
fn a_dormant_device_waking() {
    let dir = Scratch::new("rt-dormant");
    let team = SecurityTeam::listen(&dir);
    // Months of silence, shortened to 2 seconds for the test.
    let server = server_for(&dir, &team, "[detection]\ndormant_after = \"2s\"\n");
    let alice = user(&dir, &server, "alice");
    let old_laptop = link(dir.path("old-laptop"), &server, &alice);
    old_laptop.sync();
    std::thread::sleep(Duration::from_millis(2500));
    let started = Instant::now();
    old_laptop.sync();
    let a = team.expect(&server, "dormant_device", started);
    assert_eq!(a["severity"], "medium");
    assert_eq!(a["device"].as_str().unwrap(), device_id_of(&old_laptop));
    // Medium: a notice in the other device's inbox, the sync itself succeeds.
    alice.sync();
    assert!(
        alice
            .inbox()
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("dormant device")),
        "{:?}",
        alice.inbox()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_event_row_deleted_from_the_database() {
    let dir = Scratch::new("rt-chain");
    let team = SecurityTeam::listen(&dir);
    let server = server_for(&dir, &team, "");
    let alice = user(&dir, &server, "alice");
    alice.sync();
    let started = Instant::now();
    server
        .db()
        .execute("DELETE FROM events WHERE seq = 2", [])
        .unwrap();
    let a = team.expect(&server, "audit_chain_broken", started);
    assert_eq!(a["severity"], "critical");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("event 2 is missing"),
        "{a}"
    );
    // Tampering with the record concerns every account: each device is told.
    other_device_is_told(&alice, "audit_chain_broken", started);
}

#[test]
fn an_event_edited_in_the_database_is_found_by_the_full_check() {
    let dir = Scratch::new("rt-edit");
    let team = SecurityTeam::listen(&dir);
    // The whole chain is re-verified every 4 s here (every 5 minutes by default).
    let server = server_for(&dir, &team, "[detection]\nchain_full_check = \"4s\"\n");
    let alice = user(&dir, &server, "alice");
    alice.sync();
    // An intruder rewrites an old event, leaving the count alone.
    let edited = server
        .db()
        .execute(
            "UPDATE events SET body = replace(body, '\"', '\"x') WHERE seq = 2 AND body LIKE '%\"%'",
            [],
        )
        .unwrap();
    assert_eq!(edited, 1);
    let started = Instant::now();
    let a = team.expect_within(
        &server,
        "audit_chain_broken",
        started,
        Duration::from_secs(8),
    );
    assert_eq!(a["severity"], "critical");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("event 2 does not match the chain"),
        "{a}"
    );
}

#[test]
fn event_logging_interrupted_on_postgresql() {
    let dir = Scratch::new("rt-logging");
    let team = SecurityTeam::listen(&dir);
    let pg = PgDatabase::new("rtlogging");
    let data = dir.path("server");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("pouch.toml"), team.policy("")).unwrap();
    let server = Server::start(&data, Some(&pg.url));
    let alice = user(&dir, &server, "alice");
    // An intruder stops the event log (here: the table is moved away).
    pg.execute("ALTER TABLE events RENAME TO events_hidden");
    let started = Instant::now();
    let out = alice.run(&["sync"]);
    let a = team.expect(&server, "event_logging_interrupted", started);
    assert_eq!(a["severity"], "critical");
    assert!(
        a["summary"].as_str().unwrap().contains("is interrupted"),
        "{a}"
    );
    // The alerts table still works here, so the device is told on that same sync.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("event_logging_interrupted"), "{err}");
    // Logging resumes: the gap is reported with how much was lost.
    pg.execute("ALTER TABLE events_hidden RENAME TO events");
    let out = alice.run(&["sync"]);
    let resumed = admin_alerts(&server)
        .into_iter()
        .find(|a| {
            a["rule"] == "event_logging_interrupted"
                && a["summary"]
                    .as_str()
                    .unwrap()
                    .contains("could not be recorded")
        })
        .expect("an alert when logging resumes");
    assert_eq!(resumed["severity"], "critical");
    assert_eq!(out.status.code(), Some(3));
    assert!(alice.inbox().iter().any(|m| {
        m["subject"]
            .as_str()
            .unwrap()
            .contains("event logging interrupted")
    }));
}
