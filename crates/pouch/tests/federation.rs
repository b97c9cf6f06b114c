//! Federation between ministries' servers (issue 14), first steps: peers by
//! explicit agreement (each operator prints a card, the other adds it to
//! `pouch.toml` and restarts), a federation listener that refuses any
//! server not configured as a peer during the TLS handshake, and
//! cross-witnessing: each server's checkpoints carry its peers' witnesses'
//! cosignatures, and a peer that shows a witness a split view of its log
//! is caught, with a critical alert.
//!
//! Three real servers on loopback, three domains, SQLite. Operators see each peer (`pouch admin federation status`).

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DOMAINS: [&str; 3] = ["mfa-a.test", "mfa-b.test", "hq-c.test"];
const ATTACHMENT_MARKER: &[u8] = b"MARKER-ATTACHMENT-fed-3c9e";

/// A port for a federation listener, chosen below the range the system
/// hands out for port 0 (32768 and up on Linux), so that no other server
/// of these tests, started on port 0, can take it between this choice and
/// the listener's start (or a restart); each one once per test process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 60) * 200;
    loop {
        let port = (20_000 + (offset + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start(dir: &Path, domain: &str) -> Server {
    start_on(dir, domain, None)
}

fn start_on(dir: &Path, domain: &str, database: Option<&str>) -> Server {
    Server::start_with(dir, database, "127.0.0.1:0", &["--domain", domain])
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Three servers, each with a federation listener on a port of its own and
/// the other two as peers (from their cards), restarted to read them.
struct Federated {
    servers: Vec<Server>,
    dirs: Vec<std::path::PathBuf>,
    cards: Vec<String>,
    ports: Vec<u16>,
}

fn federate(scratch: &Scratch) -> Federated {
    federate_on(scratch, &[None, None, None])
}

/// [`federate`] with each server on its own database (None: SQLite).
fn federate_on(scratch: &Scratch, databases: &[Option<&str>; 3]) -> Federated {
    let dirs: Vec<_> = DOMAINS.iter().map(|d| scratch.path(d)).collect();
    let ports: Vec<u16> = DOMAINS.iter().map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for (i, domain) in DOMAINS.iter().enumerate() {
        std::fs::create_dir_all(&dirs[i]).unwrap();
        std::fs::write(
            dirs[i].join("pouch.toml"),
            format!("[federation]\nlisten = \"127.0.0.1:{}\"\n", ports[i]),
        )
        .unwrap();
        servers.push(start_on(&dirs[i], domain, databases[i]));
    }
    let cards: Vec<String> = servers
        .iter()
        .map(|s| ok(s.admin(&s.data_dir, &["federation", "card"])))
        .collect();
    for (i, domain) in DOMAINS.iter().enumerate() {
        let mut config = format!("[federation]\nlisten = \"127.0.0.1:{}\"\n\n", ports[i]);
        for (j, card) in cards.iter().enumerate() {
            if j != i {
                config.push_str(card);
                config.push('\n');
            }
        }
        std::fs::write(dirs[i].join("pouch.toml"), config).unwrap();
        servers[i].stop();
        servers[i] = start_on(&dirs[i], domain, databases[i]);
    }
    Federated {
        servers,
        dirs,
        cards,
        ports,
    }
}

/// Server `i` restarted with its `pouch.toml` as `edit` makes it.
fn restart_with(f: &mut Federated, i: usize, edit: impl FnOnce(String) -> String) {
    let path = f.dirs[i].join("pouch.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(config)).unwrap();
    f.servers[i].stop();
    f.servers[i] = start(&f.dirs[i], DOMAINS[i]);
}

/// A user of `server`, enrolled with a fresh invite, its state in `scratch`.
fn enroll(scratch: &Scratch, server: &Server, address: &str) -> Client {
    let name = address.split('@').next().unwrap();
    Client::enroll(scratch.path(name), &server.invite(address), address)
}

/// The card, read back by TOML's own parser: one `[[federation.peers]]`
/// entry with exactly the keys the config file takes.
fn card_entry(card: &str) -> toml::Table {
    let parsed: toml::Table = toml::from_str(card).expect("the card is TOML");
    let peers = parsed["federation"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    peers[0].as_table().unwrap().clone()
}

fn info(server: &Server) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sSfk", &format!("{}/v1/info", server.url)])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn checkpoint(server: &Server) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSfk", &format!("{}/checkpoint", server.url)])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// curl against a federation listener, with a client certificate (chain
/// and key files) or none; the server's anchor is trusted (no `-k`: the
/// peer is checked as peers check each other).
fn curl_federation(
    url: &str,
    anchor_pem: &Path,
    client: Option<&Path>,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(anchor_pem);
    if let Some(dir) = client {
        cmd.arg("--cert")
            .arg(dir.join("tls-cert.pem"))
            .arg("--key")
            .arg(dir.join("tls-key.pem"));
    }
    cmd.args(extra).arg(url).output().unwrap()
}

/// The first alert of `rule` at `server`, once it is raised.
fn raised(server: &Server, rule: &str) -> serde_json::Value {
    wait_for(&format!("a {rule} alert"), || {
        server.alerts().into_iter().find(|x| x["rule"] == rule)
    })
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn peers_by_card_cross_witness_and_strangers_are_refused_in_the_handshake() {
    let scratch = Scratch::new("federation-peers");
    let f = federate(&scratch);

    // The card: what the config file takes, and true.
    for (i, card) in f.cards.iter().enumerate() {
        let entry = card_entry(card);
        let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["domain", "log_key", "tls_anchor", "url", "witness_key"]
        );
        assert_eq!(entry["domain"].as_str(), Some(DOMAINS[i]));
        assert_eq!(
            entry["url"].as_str().unwrap(),
            format!("https://127.0.0.1:{}", f.ports[i])
        );
        assert_eq!(
            entry["log_key"].as_str(),
            info(&f.servers[i])["log_key"].as_str()
        );
        assert!(
            entry["witness_key"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/witness+", DOMAINS[i]))
        );
        // The anchor is the one devices pin, and the card says its SHA-256.
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(entry["tls_anchor"].as_str().unwrap())
            .unwrap();
        let sha: String = <sha2::Sha256 as sha2::Digest>::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, f.servers[i].fingerprint);
        assert!(card.contains(&format!("# {sha}")), "{card}");
        assert_eq!(
            f.servers[i].federation.as_deref(),
            Some(format!("https://127.0.0.1:{}", f.ports[i]).as_str())
        );
    }

    // Cross-witnessing: each server's checkpoint carries both peers'
    // witnesses' cosignatures, each valid for that very checkpoint.
    for (i, server) in f.servers.iter().enumerate() {
        let log_key = info(server)["log_key"].as_str().unwrap().to_string();
        let witnesses: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| {
                card_entry(&f.cards[j])["witness_key"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let names: Vec<String> = wait_for("the peers' cosignatures", || {
            let note = checkpoint(server);
            let opened = pouch_log::witness::open_cosigned(
                &note,
                &log_key,
                &format!("{}/log", DOMAINS[i]),
                &witnesses,
            )
            .unwrap();
            let mut names: Vec<String> =
                opened.cosignatures.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names.dedup();
            (names.len() == 2).then_some(names)
        });
        let mut expected: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("{}/witness", DOMAINS[j]))
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        // Peers are not this log's announced witnesses: the ministry's own
        // devices never depend on a partner being up.
        assert_eq!(info(server)["witnesses"], serde_json::json!([]));
    }

    let a = &f.servers[0];
    let a_fed = a.federation.clone().unwrap();
    let a_anchor = f.dirs[0].join("tls-anchor.pem");

    // A peer is recognised by its certificate (B calling A).
    let hello = curl_federation(
        &format!("{a_fed}/federation/v1/hello"),
        &a_anchor,
        Some(&f.dirs[1]),
        &["-f"],
    );
    assert!(
        hello.status.success(),
        "{}",
        String::from_utf8_lossy(&hello.stderr)
    );
    let hello: serde_json::Value = serde_json::from_slice(&hello.stdout).unwrap();
    assert_eq!(hello["domain"], "mfa-a.test");
    assert_eq!(hello["peer"], "mfa-b.test");

    // A client with no certificate, and a server that is not a peer (its
    // own anchor, its own certificate): refused in the handshake, no HTTP.
    let stranger_dir = scratch.path("stranger.test");
    let _stranger = start(&stranger_dir, "stranger.test");
    for client in [None, Some(stranger_dir.as_path())] {
        let out = curl_federation(
            &format!("{a_fed}/federation/v1/hello"),
            &a_anchor,
            client,
            &["-o", "/dev/null", "-w", "%{http_code}"],
        );
        assert!(!out.status.success(), "a stranger got through");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "000",
            "no HTTP answer at all"
        );
    }
    // The devices' listener does not serve federation routes, nor the
    // federation listener the devices' API.
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/federation/v1/hello", a.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let out = curl_federation(
        &format!("{a_fed}/v1/info"),
        &a_anchor,
        Some(&f.dirs[1]),
        &["-o", "/dev/null", "-w", "%{http_code}"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // A peer may have its own log cosigned, no one else's: B submitting
    // C's checkpoint to A's witness is refused, and an event.
    let c_checkpoint = checkpoint(&f.servers[2]);
    let mut body = b"old 0\n\n".to_vec();
    body.extend_from_slice(&c_checkpoint);
    std::fs::write(scratch.path("c-checkpoint"), &body).unwrap();
    let out = curl_federation(
        &format!("{a_fed}/federation/v1/witness/add-checkpoint"),
        &a_anchor,
        Some(&f.dirs[1]),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            &format!("@{}", scratch.path("c-checkpoint").display()),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // Nor ask A about another domain's accounts.
    let out = curl_federation(
        &format!("{a_fed}/federation/v1/directory/lists"),
        &a_anchor,
        Some(&f.dirs[1]),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"addresses":["someone@hq-c.test"]}"#,
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // The security team sees both: a stranger (one alert per source and
    // window, not one per attempt) and a peer out of its role.
    let alerts = wait_for("the federation alerts", || {
        let alerts = a.alerts();
        let unknown = alerts
            .iter()
            .filter(|x| x["rule"] == "unknown_peer")
            .count();
        let out_of_role = alerts
            .iter()
            .filter(|x| x["rule"] == "peer_out_of_role")
            .count();
        (unknown >= 1 && out_of_role >= 1).then_some(alerts)
    });
    let unknown: Vec<_> = alerts
        .iter()
        .filter(|x| x["rule"] == "unknown_peer")
        .collect();
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0]["severity"], "high");
    let events = ok(a.admin(&a.data_dir, &["events", "export"]));
    let refused = events
        .lines()
        .filter(|l| l.contains("federation_peer_refused"))
        .count();
    assert_eq!(refused, 2, "each refused handshake is an event: {events}");
    assert!(events.contains("federation_peer_checkpoint"));
    assert!(
        events.lines().any(|l| l.contains("federation_peer_lookup")
            && l.contains("peer_request_refused")
            && l.contains("someone@hq-c.test")),
        "{events}"
    );
}

#[test]
fn a_peer_that_shows_a_split_view_of_its_log_is_caught_by_the_other_peers_witness() {
    let scratch = Scratch::new("federation-split");
    let mut f = federate(&scratch);
    // A's checkpoints are cosigned by B's witness.
    wait_for("B's cosignature on A's log", || {
        let note = String::from_utf8(checkpoint(&f.servers[0])).unwrap();
        note.contains("— mfa-b.test/witness ").then_some(())
    });
    // A's operator forks A: a copy of its data directory (same keys, same
    // log) run beside it, each then growing its log differently — what a
    // server showing two views does.
    f.servers[0].stop();
    let fork_dir = scratch.path("mfa-a-fork");
    copy_dir(&f.dirs[0], &fork_dir);
    let fork_port = free_port();
    let config = std::fs::read_to_string(f.dirs[0].join("pouch.toml"))
        .unwrap()
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", f.ports[0]),
            &format!("listen = \"127.0.0.1:{fork_port}\""),
        );
    std::fs::write(fork_dir.join("pouch.toml"), config).unwrap();
    let a = start(&f.dirs[0], "mfa-a.test");
    let fork = start(&fork_dir, "mfa-a.test");
    // Each appends one different entry: a user enrolled on each (their
    // first device list). The fork holds A's database, and so A's operator.
    for (server, who) in [(&a, "alice"), (&fork, "mallory")] {
        let address = format!("{who}@mfa-a.test");
        let invite = server.invite_with(&f.dirs[0], &address, &[]);
        let _ = Client::enroll(scratch.path(&format!("{who}-home")), &invite, &address);
    }
    let b = &f.servers[1];
    let alert = raised(b, "peer_log_split");
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["summary"].as_str().unwrap().contains("mfa-a.test"),
        "{alert}"
    );
    // The fork keeps asking every 2 s: every attempt is an event, the alert
    // is raised once (per peer address and window), not every 2 s.
    std::thread::sleep(Duration::from_secs(5));
    let split_alerts = b
        .alerts()
        .into_iter()
        .filter(|x| x["rule"] == "peer_log_split")
        .count();
    assert_eq!(split_alerts, 1);
    let events = ok(b.admin(&b.data_dir, &["events", "export"]));
    assert!(
        events
            .lines()
            .filter(|l| l.contains("peer_log_misbehaved"))
            .count()
            >= 2,
        "{events}"
    );
    // B's witness kept the two signed checkpoints as evidence.
    let evidence = std::fs::read_dir(f.dirs[1].join("federation").join("evidence"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(evidence >= 1 || alert["summary"].as_str().unwrap().contains("consistent"));
}

fn status(server: &Server) -> serde_json::Value {
    let out = ok(server.admin(&server.data_dir, &["federation", "status", "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn peer_status(server: &Server, domain: &str) -> serde_json::Value {
    status(server)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["domain"] == domain)
        .cloned()
        .unwrap_or_else(|| panic!("{domain} is not in the status"))
}

/// The size of a server's log at its checkpoint.
fn log_size(server: &Server) -> u64 {
    let note = String::from_utf8(checkpoint(server)).unwrap();
    note.lines().nth(1).unwrap().parse().unwrap()
}

#[test]
fn operators_see_each_peer_and_a_peer_that_is_down_holds_up_nothing() {
    let scratch = Scratch::new("federation-status");
    let mut f = federate(&scratch);
    // Each peer followed: its log as this server's witness cosigned it,
    // and this server's log as the peer's witness did.
    for (i, server) in f.servers.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let peer = &f.servers[j];
            let st = wait_for("both ways cosigned", || {
                let st = peer_status(server, DOMAINS[j]);
                (st["log_size"].as_u64() == Some(log_size(peer))
                    && st["ours_cosigned"].as_u64() == Some(log_size(server)))
                .then_some(st)
            });
            assert!(st["last_error"].is_null(), "{st}");
            assert!(st["last_contact"].as_i64().is_some());
            assert!(st["cosigned_age_secs"].as_u64().unwrap() < 60, "{st}");
        }
    }
    let text = ok(f.servers[0].admin(&f.dirs[0], &["federation", "status"]));
    assert!(
        text.contains("mfa-b.test  answered") && text.contains("hq-c.test  answered"),
        "{text}"
    );

    // C goes down. A's own work goes on at once (a user enrolls, its log
    // grows), B's witness cosigns A's new checkpoint, and A says what is
    // wrong with C.
    f.servers[2].stop();
    let started = Instant::now();
    let invite = f.servers[0].invite("carol@mfa-a.test");
    let _carol = Client::enroll(scratch.path("carol"), &invite, "carol@mfa-a.test");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a peer down held up local work"
    );
    let grown = log_size(&f.servers[0]);
    wait_for("B cosigning A's grown log", || {
        (peer_status(&f.servers[0], "mfa-b.test")["ours_cosigned"].as_u64() == Some(grown))
            .then_some(())
    });
    let down = wait_for("C reported down", || {
        let st = peer_status(&f.servers[0], "hq-c.test");
        st["last_error"].as_str().map(str::to_string)
    });
    assert!(down.contains("unreachable"), "{down}");
    let text = ok(f.servers[0].admin(&f.dirs[0], &["federation", "status"]));
    assert!(text.contains("last error: "), "{text}");
    // And Prometheus sees it (read by its own parser).
    let metrics = f.servers[0].metrics();
    assert_eq!(
        metrics[r#"pouch_federation_peer_up{"peer": "hq-c.test"}"#],
        0.0
    );
    assert_eq!(
        metrics[r#"pouch_federation_peer_up{"peer": "mfa-b.test"}"#],
        1.0
    );
    assert!(
        metrics[r#"pouch_federation_peer_cosigned_age_seconds{"peer": "mfa-b.test"}"#]
            .as_f64()
            .unwrap()
            < 60.0
    );

    // C comes back (same data, same port): A catches up with it by itself.
    f.servers[2] = start(&f.dirs[2], DOMAINS[2]);
    wait_for("C back, A's grown log cosigned by it", || {
        let st = peer_status(&f.servers[0], "hq-c.test");
        (st["last_error"].is_null() && st["ours_cosigned"].as_u64() == Some(grown)).then_some(())
    });
}

#[test]
fn three_ministries_on_postgresql_witness_each_other_and_write_across_domains() {
    let scratch = Scratch::new("federation-pg");
    let databases: Vec<PgDatabase> = ["fed_a", "fed_b", "fed_c"]
        .iter()
        .map(|t| PgDatabase::new(t))
        .collect();
    let f = federate_on(
        &scratch,
        &[
            Some(&databases[0].url),
            Some(&databases[1].url),
            Some(&databases[2].url),
        ],
    );
    for (i, server) in f.servers.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let peer = &f.servers[j];
            wait_for("both ways cosigned on PostgreSQL", || {
                let st = peer_status(server, DOMAINS[j]);
                (st["log_size"].as_u64() == Some(log_size(peer))
                    && st["ours_cosigned"].as_u64() == Some(log_size(server))
                    && st["last_error"].is_null())
                .then_some(())
            });
        }
        // The stored checkpoint (in PostgreSQL) carries both peers'
        // cosignatures and still opens for the server's own devices.
        let note = String::from_utf8(checkpoint(server)).unwrap();
        for j in (0..3).filter(|j| *j != i) {
            assert!(
                note.contains(&format!("— {}/witness ", DOMAINS[j])),
                "{note}"
            );
        }
    }
    // And mail between them, as on SQLite.
    write_across_three_domains(&scratch, &f, &databases);
}

#[test]
fn an_account_of_another_domain_is_checked_against_its_own_domains_log() {
    let scratch = Scratch::new("federation-verify");
    let f = federate(&scratch);
    let (a, b) = (&f.servers[0], &f.servers[1]);
    let alice = enroll(&scratch, a, "alice@mfa-a.test");
    let bob = enroll(&scratch, b, "bob@mfa-b.test");
    // Each sees the other's account as its own domain's log records it,
    // through its own server only: the same key, and the same comparison
    // code to read to each other.
    let bob_seen_by_alice = wait_for("B's log cosigned by A's witness", || {
        let out = alice.run(&["verify", "bob@mfa-b.test", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    });
    let alice_seen_by_bob = bob.json(&["verify", "alice@mfa-a.test", "--json"]);
    let bob_himself = bob.json(&["verify", "bob@mfa-b.test", "--json"]);
    let alice_herself = alice.json(&["verify", "alice@mfa-a.test", "--json"]);
    assert_eq!(
        bob_seen_by_alice["account_key_fingerprint"],
        bob_himself["account_key_fingerprint"]
    );
    assert_eq!(
        alice_seen_by_bob["account_key_fingerprint"],
        alice_herself["account_key_fingerprint"]
    );
    assert_eq!(
        bob_seen_by_alice["comparison_code"],
        alice_seen_by_bob["comparison_code"]
    );
    assert_eq!(bob_seen_by_alice["devices"].as_array().unwrap().len(), 1);
    // A recorded who asked (the device, the account asked about); B that
    // A asked, naming its account.
    let events = ok(a.admin(&a.data_dir, &["events", "export"]));
    assert!(
        events
            .lines()
            .any(|l| l.contains("federation_remote_lookup")
                && l.contains("bob@mfa-b.test")
                && l.contains("alice@mfa-a.test")),
        "{events}"
    );
    let events = ok(b.admin(&b.data_dir, &["events", "export"]));
    assert!(
        events
            .lines()
            .any(|l| l.contains("federation_peer_lookup") && l.contains("bob@mfa-b.test")),
        "{events}"
    );
    // An account the other domain does not have, and a domain this one
    // does not federate with: one clear line each.
    let out = alice.run(&["verify", "nobody@mfa-b.test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a Pouch user at mfa-b.test"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = alice.run(&["verify", "eve@elsewhere.test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not federate with"), "{err}");
}

#[test]
fn a_device_a_peer_slips_into_one_of_its_accounts_without_a_log_entry_is_refused_and_reported() {
    use ed25519_dalek::Signer as _;
    let scratch = Scratch::new("federation-injected");
    let mut f = federate(&scratch);
    let alice = enroll(&scratch, &f.servers[0], "alice@mfa-a.test");
    let _bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    let honest = wait_for("bob checked once", || {
        let out = alice.run(&["verify", "bob@mfa-b.test", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    });
    // B turns hostile: it "resets" bob under a key of its own and lists a
    // device of its own — a version its log does not record (a log entry
    // would show every device of bob's and every auditor the change).
    let db = f.servers[1].db();
    let (body, signature): (Vec<u8>, Vec<u8>) = db
        .query_row(
            "SELECT body, signature FROM device_lists WHERE address = 'bob@mfa-b.test' ORDER BY version DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let current = pouch_proto::devices::SignedDeviceList { body, signature };
    let previous = current.body_unverified().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let forged = pouch_proto::devices::DeviceListBody {
        address: previous.address.clone(),
        version: previous.version + 1,
        previous: Some(current.hash()),
        account_key: key.verifying_key().to_bytes().to_vec(),
        devices: vec![pouch_proto::devices::ListedDevice {
            device_id: pouch_proto::DeviceId("ab".repeat(16)),
            signature_key: vec![7u8; 32],
            name: String::new(),
            added_at: 0,
            added_from: None,
            sealed: None,
        }],
        issued_at: previous.issued_at + 1,
        reason: "reset".into(),
    };
    let forged_body = serde_json::to_vec(&forged).unwrap();
    let forged_signature = key
        .sign(&pouch_proto::devices::SignedDeviceList::signing_payload(
            &forged_body,
        ))
        .to_bytes()
        .to_vec();
    db.execute(
        "INSERT INTO device_lists (address, version, body, signature, created_at) VALUES (?1, ?2, ?3, ?4, 0)",
        rusqlite::params![
            "bob@mfa-b.test",
            forged.version as i64,
            forged_body,
            forged_signature
        ],
    )
    .unwrap();
    drop(db);
    // (Restarted: its directory keeps answers per log size, and the log
    // did not grow.)
    f.servers[1].stop();
    f.servers[1] = start(&f.dirs[1], DOMAINS[1]);
    // Alice's device refuses it, in one line.
    let refused = wait_for("B back and answering", || {
        let out = alice.run(&["verify", "bob@mfa-b.test"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success() && !err.contains("cannot check")).then_some(err)
    });
    assert!(refused.contains("not in mfa-b.test's log"), "{refused}");
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    assert_eq!(honest["devices"].as_array().unwrap().len(), 1);
    // And A's security team is told, naming the peer and the account.
    let alert = raised(&f.servers[0], "peer_unlogged_list");
    assert_eq!(alert["severity"], "high");
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.contains("mfa-b.test") && summary.contains("bob@mfa-b.test"),
        "{summary}"
    );
}

#[test]
fn a_peer_cannot_take_an_account_back_to_an_older_list_its_log_still_holds() {
    let scratch = Scratch::new("federation-rollback");
    let mut f = federate(&scratch);
    let alice = enroll(&scratch, &f.servers[0], "alice@mfa-a.test");
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    // Alice pins Bob's key (version 1), then Bob adds a device (version 2)
    // and Alice's device sees it.
    wait_for("bob accepted", || {
        alice
            .run(&["verify", "bob@mfa-b.test", "--accept"])
            .status
            .success()
            .then_some(())
    });
    let _bob2 = link(scratch.path("bob2"), &f.servers[1], &bob);
    let seen = wait_for("version 2 seen", || {
        let out = alice.run(&["verify", "bob@mfa-b.test", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["version"] == 2).then_some(v)
    });
    assert_eq!(seen["devices"].as_array().unwrap().len(), 2);
    // Carol never accepted anything: she only looked once, at version 2.
    let carol = enroll(&scratch, &f.servers[0], "carol@mfa-a.test");
    let carol_saw = carol.json(&["verify", "bob@mfa-b.test", "--json"]);
    assert_eq!(carol_saw["version"], 2);
    assert!(carol_saw["pinned_fingerprint"].is_null());
    // B turns hostile and serves version 1 again — in its log, provably,
    // with one device fewer (as if a revocation were undone, or a reset).
    let db = f.servers[1].db();
    db.execute(
        "DELETE FROM device_lists WHERE address = 'bob@mfa-b.test' AND version = 2",
        [],
    )
    .unwrap();
    drop(db);
    f.servers[1].stop();
    f.servers[1] = start(&f.dirs[1], DOMAINS[1]);
    let refused = wait_for("B back and answering", || {
        let out = alice.run(&["verify", "bob@mfa-b.test"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success() && !err.contains("did not answer")).then_some(err)
    });
    assert!(
        refused.contains("older device list (version 1 after 2)"),
        "{refused}"
    );
    // And accepting cannot lower the pin either.
    let out = alice.run(&["verify", "bob@mfa-b.test", "--accept"]);
    assert!(!out.status.success());
    // What a device once verified is a floor too, pinned or not.
    let out = carol.run(&["verify", "bob@mfa-b.test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("older device list (version 1 after 2)"),
        "{err}"
    );
}

#[test]
fn a_device_scanning_a_partners_accounts_is_an_alert() {
    let scratch = Scratch::new("federation-scan");
    let mut f = federate(&scratch);
    // A's security team lowers the threshold to 3 accounts per window.
    restart_with(&mut f, 0, |config| {
        format!("{config}\n[detection]\nremote_lookups = 3\n")
    });
    let mallory = enroll(&scratch, &f.servers[0], "mallory@mfa-a.test");
    // Guessing names at the partner: whether they exist or not, each is a
    // question the partner's server sees.
    for name in ["ambassador", "attache", "consul", "cipher-clerk"] {
        let _ = mallory.run(&["verify", &format!("{name}@mfa-b.test")]);
    }
    let alert = raised(&f.servers[0], "remote_lookups");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["account"], "mallory@mfa-a.test");
    let alerts = f.servers[0].alerts();
    assert_eq!(
        alerts
            .iter()
            .filter(|x| x["rule"] == "remote_lookups")
            .count(),
        1,
        "once a window, not per lookup"
    );
}

#[test]
fn unusual_volume_from_a_peer_is_an_alert() {
    let scratch = Scratch::new("federation-volume");
    let mut f = federate(&scratch);
    // A expects at most 3 of its accounts asked about per window.
    restart_with(&mut f, 0, |config| {
        format!("{config}\n[detection]\npeer_lookups = 3\n")
    });
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    for name in ["minister", "deputy", "spokesperson", "archivist"] {
        let _ = bob.run(&["verify", &format!("{name}@mfa-a.test")]);
    }
    let alert = raised(&f.servers[0], "peer_volume");
    assert_eq!(alert["severity"], "high");
    assert!(
        alert["summary"].as_str().unwrap().contains("mfa-b.test"),
        "{alert}"
    );
}

#[test]
fn a_peer_over_its_request_budget_is_answered_429_and_reported() {
    let scratch = Scratch::new("federation-budget");
    let mut f = federate(&scratch);
    // B lets each peer make 5 requests a minute.
    let listen = format!("listen = \"127.0.0.1:{}\"\n", f.ports[1]);
    restart_with(&mut f, 1, |config| {
        config.replace(&listen, &format!("{listen}peer_requests_per_minute = 5\n"))
    });
    let _bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    let alice = enroll(&scratch, &f.servers[0], "alice@mfa-a.test");
    // Ten different accounts (an answer about one is given again for a
    // while without asking B).
    let refused = (0..10)
        .filter(|i| {
            let out = alice.run(&["verify", &format!("someone-{i}@mfa-b.test")]);
            String::from_utf8_lossy(&out.stderr).contains("try again later")
        })
        .count();
    assert!(refused > 0, "A stayed within 5 requests a minute?");
    // B says so once, not per request; its security team sees it.
    let alert = raised(&f.servers[1], "peer_volume");
    assert_eq!(alert["severity"], "medium");
    assert!(
        alert["summary"].as_str().unwrap().contains("mfa-a.test"),
        "{alert}"
    );
    let events = ok(f.servers[1].admin(&f.dirs[1], &["events", "export"]));
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("federation_peer_throttled") && l.contains("peer mfa-a.test"))
            .count(),
        1,
        "{events}"
    );
    // A's operators see why their devices could not check Bob.
    let st = peer_status(&f.servers[0], "mfa-b.test");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("429"),
        "{st}"
    );
}

/// The mail `client` has received with this subject, once it arrived
/// (forwarding between servers is asynchronous: it syncs until then).
fn received(client: &Client, subject: &str) -> serde_json::Value {
    wait_for(&format!("{subject:?} to arrive"), || {
        let r = client.sync();
        assert!(r["rejected"].as_array().unwrap().is_empty(), "{r}");
        client.inbox().into_iter().find(|m| m["subject"] == subject)
    })
}

/// Accounts of the other domains are usable once this domain's witness
/// has cosigned their logs (a few seconds after the servers start).
fn wait_until_federated(client: &Client, others: &[&str]) {
    for address in others {
        wait_for(&format!("{address}'s domain cosigned"), || {
            client
                .run(&["verify", address])
                .status
                .success()
                .then_some(())
        });
    }
}

#[test]
fn users_of_three_ministries_write_to_each_other_with_cc_and_reply_in_the_thread() {
    let scratch = Scratch::new("federation-mail");
    let f = federate(&scratch);
    write_across_three_domains(&scratch, &f, &[]);
}

/// Users of the three servers write to each other: Cc across domains, a
/// reply in the thread through another domain's server, a 20 MB attachment;
/// read back byte-exact; then nothing of it in any server's files, nor in
/// its PostgreSQL database (`databases`, when the servers run on them).
fn write_across_three_domains(scratch: &Scratch, f: &Federated, databases: &[PgDatabase]) {
    let alice = enroll(scratch, &f.servers[0], "alice@mfa-a.test");
    let bob = enroll(scratch, &f.servers[1], "bob@mfa-b.test");
    let carol = enroll(scratch, &f.servers[2], "carol@hq-c.test");
    wait_until_federated(&alice, &["bob@mfa-b.test", "carol@hq-c.test"]);
    wait_until_federated(&bob, &["alice@mfa-a.test", "carol@hq-c.test"]);
    wait_until_federated(&carol, &["alice@mfa-a.test", "bob@mfa-b.test"]);

    // Alice (A hosts the conversation) to Bob, Carol in Cc.
    let draft = b"From: alice@mfa-a.test\r\nTo: bob@mfa-b.test\r\nCc: carol@hq-c.test\r\n\
Subject: Joint statement draft\r\nMessage-ID: <draft-1@mfa-a.test>\r\n\
Date: Sat, 05 Dec 2026 10:00:00 +0000\r\n\r\nMarker-7f3a: the draft text.\r\n";
    let eml = scratch.path("draft.eml");
    std::fs::write(&eml, draft).unwrap();
    alice.ok(&["send", "--eml", eml.to_str().unwrap()]);
    for reader in [&bob, &carol] {
        let m = received(reader, "Joint statement draft");
        assert_eq!(m["from"], "alice@mfa-a.test", "{m}");
        assert_eq!(reader.raw(m["id"].as_i64().unwrap()), draft);
    }

    // Bob answers everyone in the thread, through his own server, which
    // passes the message to the hub (A).
    let reply = b"From: bob@mfa-b.test\r\nTo: alice@mfa-a.test\r\nCc: carol@hq-c.test\r\n\
Subject: Re: Joint statement draft\r\nMessage-ID: <reply-1@mfa-b.test>\r\n\
In-Reply-To: <draft-1@mfa-a.test>\r\nDate: Sat, 05 Dec 2026 10:05:00 +0000\r\n\r\n\
Marker-91c2: agreed.\r\n";
    let eml = scratch.path("reply.eml");
    std::fs::write(&eml, reply).unwrap();
    bob.ok(&["send", "--eml", eml.to_str().unwrap()]);
    for reader in [&alice, &carol] {
        let m = received(reader, "Re: Joint statement draft");
        assert_eq!(m["from"], "bob@mfa-b.test", "{m}");
        assert_eq!(reader.raw(m["id"].as_i64().unwrap()), reply);
    }
    // One thread: Bob's reply is in the conversation Alice's server hosts
    // (B passed it to A), not a new one.
    let events = ok(f.servers[0].admin(&f.servers[0].data_dir, &["events", "export"]));
    assert!(
        events
            .lines()
            .any(|l| l.contains("federation_peer_submit") && l.contains("passed on a message")),
        "{events}"
    );

    // A 20 MB attachment, from a member of another domain than the hub's:
    // Bob's server pushes it to the hub (A) with his message, the hub to
    // Carol's server (C) before the item it belongs to.
    let mut attachment = vec![0u8; 20 * 1024 * 1024];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut attachment);
    attachment[..ATTACHMENT_MARKER.len()].copy_from_slice(ATTACHMENT_MARKER);
    let path = scratch.path("annex-2026.bin");
    std::fs::write(&path, &attachment).unwrap();
    let in_thread = received(&bob, "Joint statement draft")["id"].to_string();
    bob.ok(&[
        "send",
        "--reply-to",
        &in_thread,
        "--to",
        "alice@mfa-a.test",
        "--cc",
        "carol@hq-c.test",
        "--body",
        "The annex.",
        "--attach",
        path.to_str().unwrap(),
    ]);
    let sent = bob
        .sent()
        .into_iter()
        .find(|m| m["attachments"] == serde_json::json!(["annex-2026.bin"]))
        .unwrap();
    let sent_raw = bob.raw(sent["id"].as_i64().unwrap());
    for reader in [&alice, &carol] {
        let m = wait_for("the annex", || {
            reader.sync();
            reader
                .inbox()
                .into_iter()
                .find(|m| m["attachments"] == serde_json::json!(["annex-2026.bin"]))
        });
        let raw = reader.raw(m["id"].as_i64().unwrap());
        assert!(raw == sent_raw, "the annex did not arrive byte-exact");
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert!(parsed.attachments().next().unwrap().contents() == attachment.as_slice());
    }
    let attachment_line = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &attachment[..57],
    );

    // Nothing waits in any outbox once delivered.
    for (i, server) in f.servers.iter().enumerate() {
        wait_for("outboxes empty", || {
            status(server)["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["outbox_items"] == 0)
                .then_some(())
        });
        // No server holds a subject or body.
        let mut tree = read_tree(&f.dirs[i]);
        if let Some(db) = databases.get(i) {
            tree.extend(db.dump());
        }
        for marker in [
            &b"Joint statement"[..],
            b"Marker-7f3a",
            b"Marker-91c2",
            ATTACHMENT_MARKER,
            attachment_line.as_bytes(),
        ] {
            assert!(
                !contains(&tree, marker),
                "server {i} holds {:?}",
                String::from_utf8_lossy(marker)
            );
        }
    }
}

/// Server `i` killed (SIGKILL) if it runs, and started again on the same
/// addresses (its devices' URL and its federation listener unchanged).
fn restart(f: &mut Federated, i: usize) {
    let listen = f.servers[i].url.trim_start_matches("https://").to_string();
    f.servers[i].stop();
    f.servers[i] = Server::start_with(&f.dirs[i], None, &listen, &["--domain", DOMAINS[i]]);
}

/// How many mails with this subject `client` holds, after a sync.
fn copies(client: &Client, subject: &str) -> usize {
    let r = client.sync();
    assert!(r["rejected"].as_array().unwrap().is_empty(), "{r}");
    client
        .inbox()
        .iter()
        .filter(|m| m["subject"] == subject)
        .count()
}

#[test]
fn a_peer_down_for_a_while_gets_every_mail_once_even_with_the_hub_killed_while_forwarding() {
    let scratch = Scratch::new("federation-outage");
    let mut f = federate(&scratch);
    let alice = enroll(&scratch, &f.servers[0], "alice@mfa-a.test");
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    let carol = enroll(&scratch, &f.servers[2], "carol@hq-c.test");
    wait_until_federated(&alice, &["bob@mfa-b.test", "carol@hq-c.test"]);
    wait_until_federated(&bob, &["alice@mfa-a.test"]);
    alice.ok(&[
        "send",
        "--to",
        "bob@mfa-b.test",
        "--subject",
        "Outage thread",
        "--body",
        "0",
    ]);
    received(&bob, "Outage thread");
    let thread = alice.sent()[0]["id"].to_string();

    // B goes down. Alice goes on writing in the thread: her server accepts
    // (it answers for Bob's account with B's last answer, which her device
    // checks as any) and keeps each mail for Bob's device in its outbox.
    f.servers[1].stop();
    const MAILS: usize = 12;
    let body = "x".repeat(100_000);
    for n in 1..=MAILS {
        alice.ok(&[
            "send",
            "--reply-to",
            &thread,
            "--to",
            "bob@mfa-b.test",
            "--subject",
            &format!("Outage {n}"),
            "--body",
            &body,
        ]);
    }
    // Another peer is not held up.
    alice.ok(&[
        "send",
        "--to",
        "carol@hq-c.test",
        "--subject",
        "While B is down",
        "--body",
        "1",
    ]);
    received(&carol, "While B is down");
    let waiting = peer_status(&f.servers[0], "mfa-b.test");
    assert_eq!(waiting["outbox_items"], MAILS as u64, "{waiting}");
    assert!(waiting["outbox_oldest_secs"].is_u64(), "{waiting}");
    let text = ok(f.servers[0].admin(&f.dirs[0], &["federation", "status"]));
    assert!(
        text.contains(&format!("outbox: {MAILS} item(s) waiting")),
        "{text}"
    );
    let metrics = f.servers[0].metrics();
    assert_eq!(
        metrics[r#"pouch_federation_outbox_items{"peer": "mfa-b.test"}"#],
        MAILS as f64
    );
    assert!(waiting["last_error"].is_string(), "{waiting}");

    // The hub is killed with the backlog in its database, started again,
    // B comes back, and the hub is killed again while it forwards.
    restart(&mut f, 0);
    restart(&mut f, 1);
    for pause in [150, 400] {
        std::thread::sleep(Duration::from_millis(pause));
        restart(&mut f, 0);
    }
    wait_for("the backlog forwarded", || {
        (peer_status(&f.servers[0], "mfa-b.test")["outbox_items"] == 0).then_some(())
    });
    // Every mail exactly once (a second copy would also be refused by
    // Bob's device as a replay, which `copies` asserts does not happen).
    wait_for("every mail", || {
        (1..=MAILS)
            .all(|n| copies(&bob, &format!("Outage {n}")) >= 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in 1..=MAILS {
        assert_eq!(copies(&bob, &format!("Outage {n}")), 1, "mail {n}");
    }
    assert_eq!(copies(&bob, "Outage thread"), 1);
}

#[test]
fn a_peer_writing_outside_its_conversations_is_refused_and_a_repeated_forwarding_is_queued_once() {
    let scratch = Scratch::new("federation-hostile-hub");
    let f = federate(&scratch);
    let (a, b_dir) = (&f.servers[0], &f.dirs[1]);
    let alice = enroll(&scratch, a, "alice@mfa-a.test");
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    let carol = enroll(&scratch, &f.servers[2], "carol@hq-c.test");
    wait_until_federated(&alice, &["bob@mfa-b.test", "carol@hq-c.test"]);
    wait_until_federated(&carol, &["alice@mfa-a.test"]);
    // A conversation A hosts (Alice to Bob), and one C hosts (Carol to Alice).
    alice.ok(&[
        "send",
        "--to",
        "bob@mfa-b.test",
        "--subject",
        "At A",
        "--body",
        "1",
    ]);
    received(&bob, "At A");
    carol.ok(&[
        "send",
        "--to",
        "alice@mfa-a.test",
        "--subject",
        "At C",
        "--body",
        "2",
    ]);
    received(&alice, "At C");
    let alice_device = device_id_of(&alice);
    let db = a.db();
    let hosted_at_a: String = db
        .query_row("SELECT group_id FROM mls_groups", [], |r| r.get(0))
        .unwrap();
    let hosted_at_c: String = db
        .query_row(
            "SELECT group_id FROM federation_groups WHERE hub = 'hq-c.test'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let queued = || -> i64 {
        a.db()
            .query_row(
                "SELECT COUNT(*) FROM queue WHERE device_id = ?1",
                [&alice_device],
                |r| r.get(0),
            )
            .unwrap()
    };
    // B forwards items to A as if it were their conversations' hub (with
    // its own certificate: it is a configured peer).
    let a_fed = a.federation.clone().unwrap();
    let a_anchor = f.dirs[0].join("tls-anchor.pem");
    let body = scratch.path("delivery.json");
    let deliver = |items: Vec<serde_json::Value>| -> serde_json::Value {
        std::fs::write(&body, serde_json::json!({ "items": items }).to_string()).unwrap();
        let out = curl_federation(
            &format!("{a_fed}/federation/v1/deliver"),
            &a_anchor,
            Some(b_dir),
            &[
                "-f",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", body.display()),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // B's nonce, shown with every item (only a Welcome's is read).
    let nonce_b64 = "c2l4dGVlbi1ieXRlcy1iIQ=="; // "sixteen-bytes-b!"
    let item = |device: &str, kind: &str, group: &str, seq: u64| {
        serde_json::json!({
            "device": device,
            "hub_nonce": nonce_b64,
            "item": {
                "seq": seq, "kind": kind, "group_id": group,
                "sender_device": "0".repeat(32), "epoch": 1,
                "payload": "aGVsbG8=", "received_at": 0,
            }
        })
    };
    let hosted_at_b = pouch_proto::GroupId::from_bytes(&pouch_proto::hub_group_id(
        "mfa-b.test",
        b"sixteen-bytes-b!",
    ))
    .0;
    // An id made for C's domain with that nonce: B cannot be its hub.
    let made_for_c = pouch_proto::GroupId::from_bytes(&pouch_proto::hub_group_id(
        "hq-c.test",
        b"sixteen-bytes-b!",
    ))
    .0;
    let before = queued();
    // Into the conversation A hosts, one C hosts, one nobody Welcomed
    // A's devices into, and for a device that is not A's: each refused
    // (and counted as received, so an honest hub would drop it).
    let refused = deliver(vec![
        item(&alice_device, "application", &hosted_at_a, 1000),
        item(&alice_device, "commit", &hosted_at_c, 1001),
        item(&alice_device, "application", &"cd".repeat(16), 1002),
        item(&"ef".repeat(16), "welcome", &hosted_at_b, 1),
        item(&alice_device, "welcome", &made_for_c, 1003),
    ]);
    assert_eq!(queued(), before, "{refused}");
    assert!(
        refused["received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["device"] == alice_device.as_str() && r["up_to"] == 1003),
        "{refused}"
    );
    let alert = raised(a, "peer_foreign_write");
    assert_eq!(alert["severity"], "high", "{alert}");
    let events = ok(a.admin(&a.data_dir, &["events", "export"]));
    assert!(
        events
            .lines()
            .any(|l| l.contains("federation_peer_delivery") && l.contains("hosted at hq-c.test")),
        "{events}"
    );

    // A conversation B does host (its id is B's, and it Welcomed Alice's
    // device first): each item queued once, however often B forwards it.
    let first = vec![
        item(&alice_device, "welcome", &hosted_at_b, 2000),
        item(&alice_device, "application", &hosted_at_b, 2001),
    ];
    deliver(first.clone());
    deliver(vec![item(&alice_device, "application", &hosted_at_b, 2001)]);
    let again = deliver(first);
    assert_eq!(queued(), before + 2, "{again}");
    assert!(
        again["received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["up_to"] == 2001),
        "{again}"
    );

    // B, speaking for Bob's device in the conversation A hosts, names a
    // device under Carol's account (C's domain) that is not on her list
    // as C serves it: refused before anything is recorded.
    let planted = "ab".repeat(16);
    let post = |path: &str, body: serde_json::Value| -> (String, String) {
        let file = scratch.path("peer-request.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let out = curl_federation(
            &format!("{a_fed}{path}"),
            &a_anchor,
            Some(b_dir),
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", file.display()),
                "-w",
                "\n%{http_code}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, said) = post(
        &format!("/federation/v1/groups/{hosted_at_a}/commits"),
        serde_json::json!({
            "device": device_id_of(&bob),
            "request": {"base_epoch": 1, "added": [planted], "welcome": "AAAA", "commit": "AAAA"},
            "devices": [{"device_id": planted, "address": "carol@hq-c.test", "signature_key": "AAAA"}],
        }),
    );
    assert_eq!(code, "400", "{said}");
    assert!(
        said.contains("not on carol@hq-c.test's device list"),
        "{said}"
    );
    let known: i64 = a
        .db()
        .query_row(
            "SELECT COUNT(*) FROM devices WHERE device_id = ?1",
            [&planted],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(known, 0);
    // Nor may B claim key packages on behalf of another domain's account.
    let (code, said) = post(
        "/federation/v1/key-packages/claim",
        serde_json::json!({"addresses": ["alice@mfa-a.test"], "for_address": "carol@hq-c.test"}),
    );
    assert_eq!(code, "403", "{said}");
    // Nor speak for a device of A's in the conversation A hosts.
    let (code, said) = post(
        &format!("/federation/v1/groups/{hosted_at_a}/messages"),
        serde_json::json!({"device": alice_device, "request": {"epoch": 1, "message": "AAAA"}}),
    );
    assert_eq!(code, "403", "{said}");
    raised(a, "peer_out_of_role");
}

#[test]
fn a_message_a_hub_forwards_again_under_a_new_position_is_refused_by_the_device_with_an_alert() {
    let scratch = Scratch::new("federation-replay");
    let f = federate(&scratch);
    let (a, b_dir) = (&f.servers[0], &f.dirs[1]);
    let alice = enroll(&scratch, a, "alice@mfa-a.test");
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    wait_until_federated(&bob, &["alice@mfa-a.test"]);
    wait_until_federated(&alice, &["bob@mfa-b.test"]);
    // A conversation B hosts: its message reaches Alice's queue at A.
    bob.ok(&[
        "send",
        "--to",
        "alice@mfa-a.test",
        "--subject",
        "Hosted at B",
        "--body",
        "once",
    ]);
    let alice_device = device_id_of(&alice);
    let (group, sender, epoch, payload): (String, String, i64, Vec<u8>) =
        wait_for("the message at A", || {
            a.db()
                .query_row(
                    "SELECT q.group_id, q.sender_device, q.epoch, p.data FROM queue q \
                     JOIN queue_payloads p ON p.payload_id = q.payload_id \
                     WHERE q.device_id = ?1 AND q.kind = 'application'",
                    [&alice_device],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .ok()
        });
    received(&alice, "Hosted at B");
    // B, the conversation's hub, forwards the same ciphertext again under a
    // new queue position: A queues it (B does host that conversation), and
    // Alice's device refuses it as a replay and tells A's security team.
    use base64::Engine as _;
    let body = scratch.path("replay.json");
    std::fs::write(
        &body,
        serde_json::json!({"items": [{
            "device": alice_device,
            "item": {
                "seq": 1_000_000, "kind": "application", "group_id": group,
                "sender_device": sender, "epoch": epoch,
                "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
                "received_at": 0,
            }
        }]})
        .to_string(),
    )
    .unwrap();
    let out = curl_federation(
        &format!("{}/federation/v1/deliver", a.federation.clone().unwrap()),
        &f.dirs[0].join("tls-anchor.pem"),
        Some(b_dir),
        &[
            "-f",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = alice.run(&["sync", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !report["rejected"].as_array().unwrap().is_empty(),
        "the replay was not refused: {report}"
    );
    assert_eq!(
        alice
            .inbox()
            .iter()
            .filter(|m| m["subject"] == "Hosted at B")
            .count(),
        1
    );
    let alert = raised(a, "rejected_item");
    assert!(alert["summary"].is_string(), "{alert}");
}

#[test]
fn a_device_revoked_in_its_own_domain_leaves_the_conversations_another_domain_hosts() {
    let scratch = Scratch::new("federation-revoke");
    let f = federate(&scratch);
    let (a, b) = (&f.servers[0], &f.servers[1]);
    let alice = enroll(&scratch, a, "alice@mfa-a.test");
    let bob = enroll(&scratch, b, "bob@mfa-b.test");
    let bob2 = link(scratch.path("bob2"), b, &bob);
    wait_until_federated(&alice, &["bob@mfa-b.test"]);
    wait_until_federated(&bob, &["alice@mfa-a.test"]);
    alice.ok(&[
        "send",
        "--to",
        "bob@mfa-b.test",
        "--subject",
        "Before revocation",
        "--body",
        "1",
    ]);
    received(&bob, "Before revocation");
    received(&bob2, "Before revocation");
    let bob2_id = device_id_of(&bob2);
    let members_at_a = |device: &str| -> i64 {
        a.db()
            .query_row(
                "SELECT COUNT(*) FROM group_members WHERE device_id = ?1",
                [device],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(members_at_a(&bob2_id), 1);

    // Bob revokes his second device at his own server (B); his remaining
    // device removes it from the conversation, which A hosts.
    bob.ok(&["device", "revoke", &bob2_id]);
    bob.sync();
    assert_eq!(
        members_at_a(&bob2_id),
        0,
        "A still delivers to the revoked device"
    );
    assert_one_line_error(&bob2.run(&["sync"]), "sign-in failed");

    // Alice's next mail in the thread reaches Bob's remaining device only.
    let first = alice.sent()[0]["id"].to_string();
    let after = alice.json(&[
        "send",
        "--reply-to",
        &first,
        "--to",
        "bob@mfa-b.test",
        "--body",
        "after",
        "--json",
    ]);
    assert_eq!(after["recipient_devices"], 1, "{after}");
    received(&bob, "Re: Before revocation");
    let queued_for_bob2: i64 = a
        .db()
        .query_row(
            "SELECT COUNT(*) FROM queue WHERE device_id = ?1",
            [&bob2_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued_for_bob2, 0);
    // The commit removing it still went to it (as to every member the
    // commit leaves): B drops it for a revoked device, no alert.
    wait_for("A's outbox drained", || {
        (peer_status(a, "mfa-b.test")["outbox_items"] == 0).then_some(())
    });
    assert!(
        !b.alerts().iter().any(|x| x["rule"] == "peer_foreign_write"),
        "{:?}",
        b.alerts()
    );
}

const SMTP_AND_IMAP: &str = r#"
import imaplib, smtplib, sys, time
port_smtp, port_imap, password, me, to, expected = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
msg = ('From: %s\r\nTo: %s\r\nSubject: From smtplib\r\n\r\nacross the border\r\n' % (me, to)).encode()
with smtplib.SMTP('127.0.0.1', int(port_smtp)) as s:
    s.login(me, password)
    print('refused', s.sendmail(me, [to], msg))
m = imaplib.IMAP4('127.0.0.1', int(port_imap))
m.login(me, password)
deadline = time.time() + 60
while True:
    m.select('INBOX')
    typ, data = m.search(None, 'SUBJECT', '"%s"' % expected)
    if data[0]:
        break
    if time.time() > deadline:
        raise SystemExit('never arrived')
    time.sleep(1)
typ, data = m.fetch(data[0].split()[-1], '(RFC822)')
import email
got = email.message_from_bytes(data[0][1])
print('from', got['From'])
print(got.get_payload(decode=True).decode())
m.logout()
"#;

#[test]
fn python_and_thunderbird_write_and_read_across_domains_through_the_bridge() {
    let scratch = Scratch::new("federation-bridge");
    let f = federate(&scratch);
    let alice = enroll(&scratch, &f.servers[0], "alice@mfa-a.test");
    let bob = enroll(&scratch, &f.servers[1], "bob@mfa-b.test");
    wait_until_federated(&alice, &["bob@mfa-b.test"]);
    wait_until_federated(&bob, &["alice@mfa-a.test"]);
    alice.ok(&[
        "send",
        "--to",
        "bob@mfa-b.test",
        "--subject",
        "For the bridge",
        "--body",
        "read me in imaplib",
    ]);

    // Bob's mail client (Python's smtplib and imaplib) through his bridge:
    // RCPT to Alice's domain is taken, her mail is read.
    let bridge = Bridge::start(&bob);
    let out = Command::new("python3")
        .arg("-c")
        .arg(SMTP_AND_IMAP)
        .args([
            &bridge.smtp_port.to_string(),
            &bridge.imap_port.to_string(),
            &bridge.password,
            "bob@mfa-b.test",
            "alice@mfa-a.test",
            "For the bridge",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("refused {}"), "{said}");
    assert!(said.contains("from <alice@mfa-a.test>"), "{said}");
    assert!(said.contains("read me in imaplib"), "{said}");
    let m = received(&alice, "From smtplib");
    assert_eq!(m["from"], "bob@mfa-b.test");
    drop(bridge);

    // Alice's Thunderbird (headless) reads Bob's mail and answers him.
    let bridge = Bridge::start(&alice);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/thunderbird.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(scratch.path("thunderbird-profile"))
        .args([
            &bridge.imap_port.to_string(),
            &bridge.smtp_port.to_string(),
            &bridge.password,
            "From smtplib",
            "bob@mfa-b.test",
            "Thunderbird across the border",
        ])
        .env("POUCH_TB_USER", "alice@mfa-a.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thunderbird run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        seen["subjects"].to_string().contains("From smtplib"),
        "{seen}"
    );
    assert_eq!(seen["sent"], "sent", "{seen}");
    let m = received(&bob, "Thunderbird across the border");
    assert_eq!(m["from"], "alice@mfa-a.test");
}
