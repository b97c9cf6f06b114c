//! What an operator's tooling asks of a running server: liveness and
//! readiness probes, and which build runs (version and commit).

mod common;

use common::*;

/// Status code and body of a GET, by curl (an independent HTTP client).
fn get(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (
        code.trim().parse().expect("a status code"),
        body.to_string(),
    )
}

/// The commit this checkout is at, as the build recorded it.
fn head_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn probes_answer_and_readiness_follows_the_database() {
    let dir = Scratch::new("ops-probes");
    let pg = PgDatabase::new("opsprobes");
    let server = Server::start(&dir.path("server"), Some(&pg.url));
    assert_eq!(
        get(&format!("{}/healthz", server.url)),
        (200, "ok\n".into())
    );
    assert_eq!(
        get(&format!("{}/readyz", server.url)),
        (200, "ready\n".into())
    );

    // The database stops answering what the server needs (here: a table
    // moved away): not ready, with a reason and no database detail; alive.
    pg.execute("ALTER TABLE log_state RENAME TO log_state_hidden");
    let (code, body) = get(&format!("{}/readyz", server.url));
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: the database does not answer"),
        "{body}"
    );
    assert!(!body.contains("log_state"), "no database detail: {body}");
    assert_eq!(get(&format!("{}/healthz", server.url)).0, 200);

    pg.execute("ALTER TABLE log_state_hidden RENAME TO log_state");
    assert_eq!(get(&format!("{}/readyz", server.url)).0, 200);
}

#[test]
fn the_server_and_the_binary_say_which_build_runs() {
    let dir = Scratch::new("ops-version");
    let server = Server::start(&dir.path("server"), None);
    let (code, body) = get(&format!("{}/v1/info", server.url));
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let commit = info["commit"].as_str().unwrap().to_string();
    assert!(!commit.is_empty(), "{info}");
    if let Some(head) = head_commit() {
        assert_eq!(commit, head, "the build's commit");
    }
    let version = pouch().arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&version.stdout);
    assert!(
        line.starts_with(&format!(
            "pouch {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )),
        "{line}"
    );
}

/// `--log-format json`: every line of the server's log is one JSON object
/// with its fields as plain values (an alert names the account as an
/// address, not as Rust's `Some(Address("…"))`); the text log written to a
/// file has no colour codes.
#[test]
fn the_server_logs_json_lines_and_plain_text_without_colour() {
    let dir = Scratch::new("ops-logs");
    let log = dir.path("server.log");
    let server = Server::start_logging(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--log-format", "json"],
        Some(&log),
    );
    // A first device raises a (low) alert naming the account.
    let _alice = user(&dir, &server, "alice");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let alert = lines
        .iter()
        .find(|l| l["message"] == "ALERT" && l["rule"] == "new_device")
        .unwrap_or_else(|| panic!("no alert line in {text}"));
    assert_eq!(alert["account"], "alice@pouch.local", "{alert}");
    assert!(
        !text.contains("Some("),
        "Rust debug formatting in the log: {text}"
    );
    drop(server);

    let log = dir.path("text.log");
    let server = Server::start_logging(&dir.path("server2"), None, "127.0.0.1:0", &[], Some(&log));
    let _bob = user(&dir, &server, "bob");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("ALERT"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}

/// Prints `{name{labels}: value}` as JSON for what Prometheus's parser reads.
/// `/metrics` in Prometheus's text format, read by Prometheus's own parser
/// (`prometheus_client`): refused without the administrator's token, and
/// its counters move when mail flows.
#[test]
fn metrics_parse_as_prometheus_and_move_when_mail_flows() {
    let dir = Scratch::new("ops-metrics");
    let server = Server::start(&dir.path("server"), None);
    let scrape = || server.metrics();
    let sent = |m: &serde_json::Value| -> f64 {
        m.as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.starts_with("pouch_http_requests_total")
                    && k.contains("/messages")
                    && k.contains("\"200\"")
            })
            .map(|(_, v)| v.as_f64().unwrap())
            .sum()
    };

    // No token, no metrics.
    let (code, _) = get(&format!("{}/metrics", server.url));
    assert_eq!(code, 401);

    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let before = scrape();
    assert!(
        before["pouch_log_entries{}"].as_f64().unwrap() >= 2.0,
        "{before}"
    );
    assert!(
        before["pouch_alerts_raised_total{\"severity\": \"low\"}"]
            .as_f64()
            .unwrap()
            >= 2.0,
        "a first device raises a low alert: {before}"
    );
    for i in 0..3 {
        let subject = format!("counted {i}");
        alice.ok(&[
            "send",
            "--to",
            "bob@pouch.local",
            "--subject",
            &subject,
            "--body",
            "x",
        ]);
    }
    // Waiting for Bob: the queues hold the three mails (and the welcome).
    let waiting = scrape();
    assert!(
        waiting["pouch_queue_items{}"].as_f64().unwrap() >= 3.0,
        "{waiting}"
    );
    assert!(waiting["pouch_queue_bytes{}"].as_f64().unwrap() > 0.0);
    let delivered = |m: &serde_json::Value| m["pouch_delivery_seconds_count{}"].as_f64().unwrap();
    bob.sync();
    let after = scrape();
    assert!(
        sent(&after) >= sent(&before) + 3.0,
        "before {before}\nafter {after}"
    );
    // Bob acknowledged them: out of the queues, into the latency histogram
    // (a local delivery: every one in the buckets up to a minute).
    assert_eq!(
        after["pouch_queue_items{}"].as_f64().unwrap(),
        0.0,
        "{after}"
    );
    assert_eq!(after["pouch_queue_oldest_seconds{}"].as_f64().unwrap(), 0.0);
    assert!(delivered(&after) >= delivered(&waiting) + 4.0, "{after}");
    assert_eq!(
        after["pouch_delivery_seconds_bucket{\"le\": \"60.0\"}"],
        after["pouch_delivery_seconds_bucket{\"le\": \"+Inf\"}"],
        "{after}"
    );
    // A running bridge holds a wait open: one bridge session.
    assert_eq!(after["pouch_bridge_sessions{}"].as_f64().unwrap(), 0.0);
    let bridge = Bridge::start_syncing(&bob, 1, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scrape()["pouch_bridge_sessions{}"].as_f64().unwrap() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no bridge session seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(bridge);
    // Routes are patterns: no address or conversation id in a label.
    let text = after.to_string();
    assert!(!text.contains("alice@") && !text.contains("bob@"), "{text}");
}

/// Backup and restore: an operator's online backup, taken while mail is
/// being sent, restored into a new data directory holding the old one's key
/// files. Every mail acknowledged before the backup is there, devices carry
/// on, and the audit chain and the transparency log verify.
#[test]
fn a_backup_taken_while_mail_flows_restores_with_nothing_acknowledged_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = Scratch::new("ops-backup");
    let data = dir.path("server");
    let mut server = Server::start(&data, None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = Arc::new(user(&dir, &server, "alice"));
    let bob = user(&dir, &server, "bob");

    // Alice sends, one mail after another, on another thread.
    let acknowledged: Arc<Mutex<Vec<(String, std::time::Instant)>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (alice, acknowledged, stop) = (alice.clone(), acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let subject = format!("loop {i}");
                let out = alice.run(&[
                    "send",
                    "--to",
                    "bob@pouch.local",
                    "--subject",
                    &subject,
                    "--body",
                    "x",
                ]);
                if out.status.success() {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push((subject, std::time::Instant::now()));
                }
            }
        })
    };
    let count = |acknowledged: &Mutex<Vec<(String, std::time::Instant)>>| {
        acknowledged.lock().unwrap().len()
    };
    while count(&acknowledged) < 3 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let backup = dir.path("backup.db");
    let asked_at = std::time::Instant::now();
    let out = server.admin(&data, &["backup", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup written to"));
    let before: Vec<String> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at <= asked_at)
        .map(|(s, _)| s.clone())
        .collect();
    // The loop goes on past the backup, then stops.
    let wanted = count(&acknowledged) + 2;
    while count(&acknowledged) < wanted {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    server.stop();
    // The backup is private, and a database.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A data directory without the old key files is refused, saying what to copy.
    let bare = dir.path("bare");
    let out = pouch()
        .args(["server", "--listen", "127.0.0.1:0", "--restore"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&bare)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        "copy log-wrap.key and tls-*.pem from the old data directory",
    );
    let restored = dir.path("restored");
    let server = restore(&data, &backup, &restored, &listen);
    // Restoring over a database is refused.
    let out = pouch()
        .args(["server", "--listen", "127.0.0.1:0", "--restore"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .unwrap();
    assert_one_line_error(&out, "already holds a database");

    // Nothing acknowledged before the backup is missing.
    let out = bob.run(&["sync"]);
    assert_no_panic(&out);
    let inbox: Vec<String> = bob
        .inbox()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    for subject in &before {
        assert!(inbox.contains(subject), "{subject} lost: {inbox:?}");
    }
    // Devices carry on.
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "after the restore",
        "--body",
        "y",
    ]);
    let out = bob.run(&["sync"]);
    assert_no_panic(&out);
    assert!(
        bob.inbox()
            .iter()
            .any(|m| m["subject"] == "after the restore")
    );
    // The audit chain and the transparency log verify.
    let out = server.admin(&data, &["events", "verify"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit chain intact"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pouch()
        .args([
            "log",
            "verify",
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The config file holds every server setting: a server started with only
/// `--config` takes them from it (relative paths from the file's
/// directory, whatever the working directory), a flag given on the command
/// line wins over the file, `--check` says where each came from, and a
/// misspelt key or a half-given TLS pair stops the start with one line.
#[test]
fn the_config_file_holds_every_setting_and_a_flag_wins_over_it() {
    let dir = Scratch::new("ops-config");
    let pg = PgDatabase::new("opsconfig");
    let conf_dir = dir.path("etc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = conf_dir.join("pouch.toml");
    std::fs::write(
        &conf,
        format!(
            r#"# a ministry's server
[server]
listen = "127.0.0.1:0"
data_dir = "state"
database_url = "{url}"
domain = "mfa.example"
tls_name = ["mail.mfa.example"]
ciphersuite = "004F"
rotation_hours = 2.0
link_ttl_secs = 120
token_ttl_secs = 900
max_queue_mib = 64
max_blob_mib = 8
max_connections = 100
max_connections_per_source = 10
log_format = "json"

[detection]
window = "5m"
"#,
            url = pg.url.replacen(
                "postgres://postgres@",
                "postgres://postgres:not-the-password@",
                1
            )
        ),
    )
    .unwrap();
    let elsewhere = dir.path("cwd");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let check = |extra: &[&str]| {
        let out = pouch()
            .current_dir(&elsewhere)
            .args(["server", "--check", "--config"])
            .arg(&conf)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let settings = check(&[]);
    assert!(
        settings.contains("domain = \"mfa.example\"  # config file"),
        "{settings}"
    );
    let state = conf_dir.join("state");
    assert!(
        settings.contains(&format!(
            "data_dir = \"{}\"  # config file",
            state.display()
        )),
        "a relative data_dir is the file's directory's: {settings}"
    );
    assert!(
        settings.contains("max_blob_mib = 8  # config file"),
        "{settings}"
    );
    assert!(
        settings.contains("max_connections = 100  # config file"),
        "{settings}"
    );
    assert!(settings.contains("witness = []  # default"), "{settings}");
    assert!(
        settings.contains(":***@") && !settings.contains("not-the-password"),
        "the database password is not printed: {settings}"
    );
    let settings = check(&["--domain", "other.example", "--max-blob-mib", "16"]);
    assert!(
        settings.contains("domain = \"other.example\"  # command line"),
        "{settings}"
    );
    assert!(
        settings.contains("max_blob_mib = 16  # command line"),
        "{settings}"
    );

    // Served from the file alone (the real database URL this time).
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf)
            .unwrap()
            .replace(":not-the-password@", "@"),
    )
    .unwrap();
    let log = dir.path("server.log");
    let mut cmd = pouch();
    cmd.current_dir(&elsewhere)
        .args(["server", "--config"])
        .arg(&conf)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let server = Server::spawn(cmd, &state, Some(&pg.url));
    let (code, body) = get(&format!("{}/v1/info", server.url));
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["domain"], "mfa.example");
    assert_eq!(info["ciphersuite"], 0x004F);
    assert_eq!(info["rotation_secs"], 7200);
    assert!(
        state.join("tls-anchor.pem").exists(),
        "the data directory is where the file says"
    );
    assert!(
        !elsewhere.join("pouch-data").exists(),
        "nothing in the working directory"
    );
    // log_format = "json": the log is JSON lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server logs nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let first = std::fs::read_to_string(&log).unwrap();
    let first = first.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "a JSON log line: {first}"
    );
    drop(server);

    // Refusals: one line, naming the key and what to do.
    let refused = |text: &str, wanted: &[&str]| {
        std::fs::write(&conf, text).unwrap();
        let out = pouch()
            .current_dir(&elsewhere)
            .args(["server", "--check", "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for w in wanted {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
    };
    refused(
        "[server]\nlisten_on = \"0.0.0.0:8443\"\n",
        &["listen_on", "fix the file"],
    );
    refused(
        "[server]\ntls_cert = \"cert.pem\"\n",
        &["server.tls_cert", "tls_key"],
    );
    refused("[server]\nlog_format = \"xml\"\n", &["log_format", "json"]);
    refused("[server]\nmax_blob_mib = -1\n", &["max_blob_mib"]);
    // A policy left in the data directory beside another config file is
    // not silently ignored (an upgrade from before the config file).
    std::fs::write(&conf, "[server]\ndata_dir = \"state\"\n").unwrap();
    std::fs::write(
        state.join("pouch.toml"),
        "[response]\nrevoke_cloned_devices = true\n",
    )
    .unwrap();
    let out = pouch()
        .current_dir(&elsewhere)
        .args(["server", "--check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_one_line_error(&out, "would not be read");
}

/// A new data directory `restored` holding `old`'s key files, served from
/// `backup` on `listen` (the address devices know).
fn restore(
    old: &std::path::Path,
    backup: &std::path::Path,
    restored: &std::path::Path,
    listen: &str,
) -> Server {
    std::fs::create_dir_all(restored).unwrap();
    for f in [
        "log-wrap.key",
        "tls-anchor.pem",
        "tls-anchor-key.pem",
        "tls-cert.pem",
        "tls-key.pem",
    ] {
        std::fs::copy(old.join(f), restored.join(f)).unwrap();
    }
    // The tests' administrator "ops" is in the backup: their key serves
    // the restored server too (the harness finds it beside the data dir).
    let ops = admin_home_of(old);
    if ops.join("admin.json").exists() {
        let to = admin_home_of(restored);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&ops).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    Server::start_with(
        restored,
        None,
        listen,
        &["--restore", backup.to_str().unwrap()],
    )
}

/// Restoring an older backup takes the transparency log back. A device
/// that saw the newer log refuses the server with the word "rollback"
/// (and, once the log grows again, as a rewrite), so an operator cannot
/// quietly undo key changes; a device that saw nothing newer carries on.
#[test]
fn an_older_backup_restored_is_seen_by_devices_as_a_log_rollback() {
    let dir = Scratch::new("ops-rollback");
    let data = dir.path("server");
    let mut server = Server::start(&data, None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "before",
        "--body",
        "x",
    ]);
    bob.sync();
    let backup = dir.path("old-backup.db");
    let out = server.admin(&data, &["backup", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After the backup the log grows (Carol and her device), and Alice's
    // device sees it.
    let _carol = user(&dir, &server, "carol");
    alice.sync();
    server.stop();

    let server = restore(&data, &backup, &dir.path("restored"), &listen);
    let out = alice.run(&["sync"]);
    assert!(
        !out.status.success(),
        "Alice's device accepted an older log"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollback") && err.contains("security team"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    // The restored log grows past what Alice saw: a different tree, still refused.
    let _dave = user(&dir, &server, "dave");
    let _erin = user(&dir, &server, "erin");
    let out = alice.run(&["sync"]);
    assert!(
        !out.status.success(),
        "Alice's device accepted a rewritten log"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollback") || err.contains("not consistent"),
        "{err}"
    );
    // Bob's device saw nothing after the backup: it carries on.
    let out = bob.run(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
