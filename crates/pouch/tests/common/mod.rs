//! Test harness: real `pouch server` processes on loopback and real `pouch`
//! client invocations, each test in its own scratch directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const PASSPHRASE: &str = "correct horse battery staple";

pub fn pouch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pouch"))
}

/// A scratch directory removed at the end of the test (kept on failure for inspection).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pouch-it-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, sub: &str) -> PathBuf {
        self.0.join(sub)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn pg_base() -> String {
    std::env::var("POUCH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database for one test; dropped at the end.
pub struct PgDatabase {
    pub url: String,
    drop: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl PgDatabase {
    pub fn new(tag: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, drop) = rt
            .block_on(pouch_store_sql::testing::fresh_postgres_database(&pg_base(), tag))
            .expect("PostgreSQL is required at POUCH_TEST_PG (default postgres://postgres@127.0.0.1:5432/test)");
        PgDatabase {
            url,
            drop: Some(Box::pin(drop)),
        }
    }
    /// Runs one SQL statement on this database.
    pub fn execute(&self, statement: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(pouch_store_sql::testing::execute(&self.url, statement))
            .unwrap()
    }

    pub fn dump(&self) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(pouch_store_sql::testing::dump_postgres(&self.url))
            .unwrap()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Some(d) = self.drop.take() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(d);
        }
    }
}

/// Where the tests' first administrator ("ops") of the database first
/// served from `first_node_dir` keeps their key.
pub fn admin_home_of(first_node_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}-admin", first_node_dir.display()))
}

/// Runs a Python script (an independent reader: Prometheus's parser,
/// `xml.etree`) on `input` and returns the JSON it prints; `what` names
/// what the input should have been, for the failure message.
pub fn python_json(script: &str, input: &[u8], what: &str) -> serde_json::Value {
    use std::io::Write;
    let parse = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    parse.stdin.as_ref().unwrap().write_all(input).unwrap();
    let parsed = parse.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "not {what}: {}",
        String::from_utf8_lossy(input)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// A running `pouch server` process.
pub struct Server {
    child: Child,
    pub url: String,
    pub fingerprint: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// The federation listener (`https://…`), when `pouch.toml` sets one.
    pub federation: Option<String>,
}

impl Server {
    pub fn start(data_dir: &Path, database_url: Option<&str>) -> Self {
        Self::start_on(data_dir, database_url, "127.0.0.1:0")
    }

    pub fn start_on(data_dir: &Path, database_url: Option<&str>, listen: &str) -> Self {
        Self::start_with(data_dir, database_url, listen, &[])
    }

    pub fn start_with(
        data_dir: &Path,
        database_url: Option<&str>,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_logging(data_dir, database_url, listen, extra, None)
    }

    /// As `start_with`, the server's log (standard error) going to `log`
    /// when given (at RUST_LOG=info then), to the test's output otherwise.
    pub fn start_logging(
        data_dir: &Path,
        database_url: Option<&str>,
        listen: &str,
        extra: &[&str],
        log: Option<&Path>,
    ) -> Self {
        let mut cmd = pouch();
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra);
        if let Some(db) = database_url {
            cmd.args(["--database-url", db]);
        }
        match log {
            Some(path) => cmd
                .env("RUST_LOG", "info")
                .stderr(std::fs::File::create(path).expect("a log file")),
            None => cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
        };
        Self::spawn(cmd, data_dir, database_url)
    }

    /// Starts a `pouch server` command line made by the caller and waits
    /// until it says where it listens and its anchor's fingerprint.
    pub fn spawn(mut cmd: Command, data_dir: &Path, database_url: Option<&str>) -> Self {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start pouch server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut fingerprint = None;
        let mut federation = None;
        // "storage: …" is the last line the server prints before serving.
        loop {
            let line = lines
                .next()
                .expect("server exited before it was ready")
                .unwrap();
            if let Some(rest) = line.strip_prefix("federation listening on ") {
                federation = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("trust anchor SHA-256 fingerprint: ") {
                fingerprint = Some(rest.trim().to_string());
            }
            if line.starts_with("storage: ") && url.is_some() && fingerprint.is_some() {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url: url.unwrap(),
            fingerprint: fingerprint.unwrap(),
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.map(str::to_string),
            federation,
        }
    }

    /// Admin command against this server by "ops", the operator made with
    /// the setup secret of the node first started in `first_node_dir` (its
    /// key kept in `FIRST_NODE_DIR-admin`).
    /// The security team's commands (`events`, `alerts`) are run by "sec",
    /// an administrator with the security role whom "ops" adds on first use.
    pub fn admin(&self, first_node_dir: &Path, args: &[&str]) -> Output {
        if matches!(args.first(), Some(&"events") | Some(&"alerts")) {
            let sec = PathBuf::from(format!("{}-admin-sec", first_node_dir.display()));
            if !sec.join("admin.json").exists() {
                self.add_admin_by(first_node_dir, "sec", "security");
            }
            return self.admin_as(&sec, args);
        }
        self.ops(first_node_dir, args)
    }

    /// `pouch admin init` of `name` in `home` against this server, with the
    /// setup secret in `setup` if that file exists.
    pub fn admin_init(&self, home: &Path, name: &str, setup: &Path) -> Output {
        self.admin_init_as(home, name, "operator", setup)
    }

    /// [`Self::admin_init`] for an administrator who will ask for `role`.
    pub fn admin_init_as(&self, home: &Path, name: &str, role: &str, setup: &Path) -> Output {
        pouch()
            .env("POUCH_PASSPHRASE", PASSPHRASE)
            .args(["admin", "--admin-home"])
            .arg(home)
            .args([
                "init", "--name", name, "--role", role, "--server", &self.url,
            ])
            .args(["--fingerprint", &self.fingerprint, "--setup-token-file"])
            .arg(setup)
            .output()
            .unwrap()
    }

    /// Admin command by "ops" (see [`Self::admin`]).
    fn ops(&self, first_node_dir: &Path, args: &[&str]) -> Output {
        let home = admin_home_of(first_node_dir);
        if !home.join("admin.json").exists() {
            let out = self.admin_init(&home, "ops", &first_node_dir.join("admin-setup.token"));
            assert!(
                out.status.success(),
                "admin init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.admin_as(&home, args)
    }

    /// A bearer token of the administrator whose key is in `home` (for
    /// requests made by hand, with curl).
    pub fn admin_token(&self, home: &Path) -> String {
        let me = pouch_client::admin::AdminIdentity::open(home, PASSPHRASE).unwrap();
        let api = me.api(Some(&self.url)).unwrap();
        me.sign_in(&api).unwrap();
        api.bearer().unwrap()
    }

    /// `/metrics` scraped with curl as "ops" and read by Prometheus's own
    /// parser (Python's `prometheus_client`): each sample as
    /// `name{"label": "value", …}` → value.
    pub fn metrics(&self) -> serde_json::Value {
        const PARSE: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
print(json.dumps(out))
"#;
        let token = self.ops_token();
        let out = Command::new("curl")
            .args(["-sSfk", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("{}/metrics", self.url))
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        python_json(PARSE, &out.stdout, "Prometheus text")
    }

    /// The bearer token of "ops", this server's first administrator.
    pub fn ops_token(&self) -> String {
        let out = self.admin(&self.data_dir, &["list"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.admin_token(&admin_home_of(&self.data_dir))
    }

    /// Admin command against this server by the administrator whose key is in `home`.
    pub fn admin_as(&self, home: &Path, args: &[&str]) -> Output {
        pouch()
            .env("POUCH_PASSPHRASE", PASSPHRASE)
            .args(["admin", "--admin-home"])
            .arg(home)
            .args(["--server", &self.url])
            .args(args)
            .output()
            .unwrap()
    }

    /// A further administrator `name` with `role`, added by "ops"; returns
    /// the home of their key.
    pub fn add_admin(&self, name: &str, role: &str) -> PathBuf {
        self.add_admin_by(&self.data_dir.clone(), name, role)
    }

    /// [`Self::add_admin`] on the database first served from `first_node_dir`.
    pub fn add_admin_by(&self, first_node_dir: &Path, name: &str, role: &str) -> PathBuf {
        let home = PathBuf::from(format!("{}-admin-{name}", first_node_dir.display()));
        let second = PathBuf::from(format!("{}-admin-ops2", self.data_dir.display()));
        let two_operators = second.join("admin.json").exists();
        let out = self.admin_init_as(&home, name, role, &home.join("no-setup-secret"));
        assert!(
            out.status.success(),
            "admin init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        // "pouch admin add NAME --role ROLE --key KEY", for an operator to run.
        let line = String::from_utf8(out.stdout).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..3], ["pouch", "admin", "add"], "{line}");
        // Once there are two operators ("ops2", see admin_approved), an
        // operator or a security administrator is asked for by one and
        // approved by the other (ops2 may not approve what ops, who added
        // them, asked; the other way round works).
        let out = if role != "auditor" && two_operators {
            let asked = self.admin_as(&second, &words[2..]);
            let asked = String::from_utf8(asked.stdout).unwrap();
            let approve: Vec<&str> = asked.split_whitespace().collect();
            assert_eq!(&approve[..3], ["pouch", "admin", "approve"], "{asked}");
            // The approver takes the key's fingerprint from its holder's own
            // `admin init` ("your key: … (fingerprint …)"), not from the request.
            let fingerprint = said
                .split("(fingerprint ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap_or_else(|| panic!("{said}"))
                .to_string();
            let approve: Vec<&str> = approve[2..]
                .iter()
                .map(|w| {
                    if *w == "FINGERPRINT" {
                        fingerprint.as_str()
                    } else {
                        w
                    }
                })
                .collect();
            self.ops(first_node_dir, &approve)
        } else {
            self.ops(first_node_dir, &words[2..])
        };
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("added "),
            "admin add (a third operator waits for approval; add them by hand): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        home
    }

    /// A reset or revocation asked by "ops2", a second operator (made on
    /// first use, by "ops"), and approved by "ops": what `approve` printed.
    /// (An operator may not approve what the operator who added them asked.)
    pub fn admin_approved(&self, args: &[&str]) -> Output {
        let second = PathBuf::from(format!("{}-admin-ops2", self.data_dir.display()));
        if !second.join("admin.json").exists() {
            self.add_admin("ops2", "operator");
        }
        let out = self.admin_as(&second, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "pouch admin approve ID"
        let line = String::from_utf8(out.stdout).unwrap();
        let id = line
            .split_whitespace()
            .nth(3)
            .expect("an approval id")
            .to_string();
        self.ops(&self.data_dir.clone(), &["approve", &id])
    }

    /// Every alert the security team's stream holds (`pouch admin alerts --json`).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let out = self.admin(&self.data_dir, &["alerts", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A fresh invite for `address`, issued with this server's own token.
    pub fn invite(&self, address: &str) -> String {
        self.invite_with(&self.data_dir, address, &[])
    }

    pub fn invite_with(&self, token_dir: &Path, address: &str, extra: &[&str]) -> String {
        let mut args = vec!["user", "add", address];
        args.extend_from_slice(extra);
        let out = self.admin(token_dir, &args);
        assert!(
            out.status.success(),
            "admin user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The server's SQLite database, opened beside the running server (an intruder's view).
    pub fn db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.data_dir.join("pouch.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        db
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One enrolled device, driven through the `pouch` command.
pub struct Client {
    pub home: PathBuf,
    pub address: String,
}

impl Client {
    pub fn enroll(home: PathBuf, invite: &str, address: &str) -> Self {
        let c = Client {
            home,
            address: address.to_string(),
        };
        let out = c.run(&["enroll", invite, "--device-name", "test-laptop"]);
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = pouch();
        cmd.arg("--home")
            .arg(&self.home)
            .env("POUCH_PASSPHRASE", PASSPHRASE);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert_no_panic(&out);
        out
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`pouch {}` failed for {}: {}",
            args.join(" "),
            self.address,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_slice(&self.ok(args)).unwrap()
    }

    pub fn sync(&self) -> serde_json::Value {
        self.json(&["sync", "--json"])
    }

    pub fn inbox(&self) -> Vec<serde_json::Value> {
        self.json(&["inbox", "--json"]).as_array().unwrap().clone()
    }

    pub fn sent(&self) -> Vec<serde_json::Value> {
        self.json(&["sent", "--json"]).as_array().unwrap().clone()
    }

    pub fn raw(&self, id: i64) -> Vec<u8> {
        self.ok(&["read", &id.to_string(), "--raw"])
    }
}

pub fn assert_no_panic(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "pouch panicked: {err}");
}

/// A failed command: exit status 1 and exactly one line on stderr, which must contain `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert_no_panic(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line of error, got: {err}");
    assert!(
        lines[0].starts_with("error: "),
        "error line lacks the prefix: {err}"
    );
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error {err:?} does not mention {needle:?}"
    );
}

/// Every file under `dir`, concatenated.
pub fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.extend(std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A `pouch link` process waiting for approval, and the code it shows.
pub struct PendingLink {
    pub child: Child,
    pub code: String,
    pub client: Client,
}

impl PendingLink {
    /// Waits for the link process and returns its exit status and stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, Client) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err).unwrap();
        }
        assert!(!err.contains("panicked"), "pouch link panicked: {err}");
        (status, err, self.client)
    }
}

/// Starts `pouch link` for a new device of `address` and reads its code.
pub fn start_link(home: PathBuf, server: &Server, address: &str, extra: &[&str]) -> PendingLink {
    let mut child = pouch()
        .arg("--home")
        .arg(&home)
        .env("POUCH_PASSPHRASE", PASSPHRASE)
        .args([
            "link",
            address,
            "--server",
            &server.url,
            "--fingerprint",
            &server.fingerprint,
            "--device-name",
            "new-laptop",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let code = loop {
        let line = lines
            .next()
            .expect("pouch link exited before showing a code")
            .unwrap();
        if let Some(code) = line.strip_prefix("link code: ") {
            break code.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    PendingLink {
        child,
        code,
        client: Client {
            home,
            address: address.to_string(),
        },
    }
}

/// Links a new device of `approver`'s account, approved by `approver`.
pub fn link(home: PathBuf, server: &Server, approver: &Client) -> Client {
    link_with(home, server, approver, &[])
}

/// As [`link`], with more arguments to `pouch device approve`.
pub fn link_with(
    home: PathBuf,
    server: &Server,
    approver: &Client,
    approve_args: &[&str],
) -> Client {
    let pending = start_link(home, server, &approver.address, &[]);
    let mut args = vec!["device", "approve", pending.code.as_str(), "--yes"];
    args.extend_from_slice(approve_args);
    approver.ok(&args);
    let (status, err, client) = pending.finish();
    assert!(status.success(), "pouch link failed: {err}");
    client
}

/// Enrolls `name@pouch.local` with a fresh invite, its state in `dir/name`.
pub fn user(dir: &Scratch, server: &Server, name: &str) -> Client {
    let address = format!("{name}@pouch.local");
    Client::enroll(dir.path(name), &server.invite(&address), &address)
}

/// A running `pouch witness` process.
pub struct WitnessProc {
    child: Child,
    pub url: String,
    pub key: String,
    pub data_dir: PathBuf,
}

impl WitnessProc {
    /// Starts a witness for the log whose verifier key is `log_key`.
    pub fn start(data_dir: &Path, log_key: &str, listen: &str) -> Self {
        let mut child = pouch()
            .args([
                "witness",
                "--listen",
                listen,
                "--name",
                "witness.ally.example",
                "--log",
                log_key,
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pouch witness");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut key) = (None, None);
        while url.is_none() || key.is_none() {
            let line = lines.next().expect("witness exited early").unwrap();
            if let Some(u) = line.strip_prefix("Pouch witness listening on ") {
                url = Some(u.trim().to_string());
            }
            if let Some(k) = line.strip_prefix("witness key: ") {
                key = Some(k.trim().to_string());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        WitnessProc {
            child,
            url: url.unwrap(),
            key: key.unwrap(),
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The log verifier key a server announces.
pub fn log_key_of(server: &Server) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sSfk", &format!("{}/v1/info", server.url)])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["log_key"].as_str().unwrap().to_string()
}

/// Copies a directory tree (a server's or a device's state).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The device id of `c` itself, from `pouch device list`.
pub fn device_id_of(c: &Client) -> String {
    let list = c.json(&["device", "list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["this_device"] == true)
        .unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A running `pouch bridge` for one device.
pub struct Bridge {
    pub child: Child,
    pub imap_port: u16,
    pub smtp_port: u16,
    pub password: String,
}

impl Bridge {
    pub fn start(device: &Client) -> Bridge {
        Bridge::start_with(device, &[])
    }

    pub fn start_with(device: &Client, extra: &[&str]) -> Bridge {
        Bridge::start_syncing(device, 1, extra)
    }

    /// A bridge whose full syncs are `sync_secs` apart (mail itself is pushed).
    pub fn start_syncing(device: &Client, sync_secs: u64, extra: &[&str]) -> Bridge {
        let password = String::from_utf8(device.ok(&["bridge", "--show-password"]))
            .unwrap()
            .trim()
            .to_string();
        let mut child = device
            .cmd()
            .args([
                "bridge",
                "--imap",
                "127.0.0.1:0",
                "--smtp",
                "127.0.0.1:0",
                "--sync-secs",
                &sync_secs.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = |line: &str| -> u16 { line.rsplit(':').next().unwrap().parse().unwrap() };
        let (mut imap_port, mut smtp_port) = (0, 0);
        while imap_port == 0 || smtp_port == 0 {
            let line = lines.next().expect("the bridge exited early").unwrap();
            if let Some(addr) = line.strip_prefix("IMAP listening on ") {
                imap_port = port(addr);
            }
            if let Some(addr) = line.strip_prefix("SMTP listening on ") {
                smtp_port = port(addr);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Bridge {
            child,
            imap_port,
            smtp_port,
            password,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw connection to one of the bridge's ports.
pub struct Raw {
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        // A server that stops reading must not hang the test's writes.
        s.set_write_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.reader.read_line(&mut l);
        l
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.writer.write_all(bytes)
    }

    /// Sends a tagged command; returns every line up to its tagged answer.
    pub fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes())
            .unwrap();
        self.until(tag)
    }

    pub fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; got {lines:?}");
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    /// Reads until the server closes the connection; returns what it said.
    pub fn rest(&mut self) -> String {
        use std::io::Read;
        let mut out = String::new();
        let _ = self.reader.read_to_string(&mut out);
        out
    }

    pub fn imap_login(port: u16, password: &str) -> Raw {
        let mut c = Raw::connect(port);
        assert!(c.line().starts_with("* OK"));
        let answer = c.command("l", &format!("LOGIN alice@pouch.local {password}"));
        assert!(answer.last().unwrap().starts_with("l OK"), "{answer:?}");
        c
    }
}

/// A device the test drives itself over the API (enrolled honestly with an
/// invite): for modified clients and for reading signed-in routes.
pub struct RawDevice {
    pub device_id: pouch_proto::DeviceId,
    pub api: pouch_client::net::Api,
    pub provider: openmls_libcrux_crypto::Provider,
    pub signer: pouch_mls::DeviceSigner,
    pub suite: pouch_mls::Ciphersuite,
}

impl RawDevice {
    pub fn enroll(server: &Server, address: &str) -> Self {
        let invite = pouch_proto::invite::Invite::decode(&server.invite(address)).unwrap();
        let api = pouch_client::net::Api::new(&invite.server, &invite.fingerprint).unwrap();
        let info: pouch_proto::api::ServerInfo = api.get_json("/v1/info").unwrap();
        let suite = pouch_mls::ciphersuite(info.ciphersuite).unwrap();
        let provider = openmls_libcrux_crypto::Provider::default();
        let signer = pouch_mls::new_device_signer(&provider).unwrap();
        let address = pouch_proto::Address::parse(address).unwrap();
        let device_id = pouch_proto::DeviceId(format!("{:032x}", rand::random::<u128>()));
        let account = pouch_client::devices::AccountKey::generate();
        let body = pouch_proto::devices::DeviceListBody {
            address: address.clone(),
            version: 1,
            previous: None,
            account_key: account.public(),
            devices: vec![pouch_proto::devices::ListedDevice {
                device_id: device_id.clone(),
                signature_key: signer.to_public_vec(),
                name: "modified".into(),
                added_at: 0,
                added_from: None,
                sealed: None,
            }],
            issued_at: 0,
            reason: "enrolled".into(),
        };
        let kps = pouch_mls::key_packages(&provider, suite, &signer, &address, 5, false).unwrap();
        let last = pouch_mls::key_packages(&provider, suite, &signer, &address, 1, true).unwrap();
        let _: pouch_proto::api::EnrollResponse = api
            .post_json(
                "/v1/enroll",
                &pouch_proto::api::EnrollRequest {
                    address: address.clone(),
                    device_id: device_id.clone(),
                    device_list: account.sign(&body),
                    invite_secret: invite.secret_bytes().unwrap(),
                    device_name: "modified".into(),
                    signature_key: signer.to_public_vec(),
                    key_packages: kps,
                    last_resort_key_package: last[0].clone(),
                },
            )
            .unwrap();
        let s = pouch_mls::load_device_signer(&provider, signer.public()).unwrap();
        api.sign_in(
            &device_id,
            std::rc::Rc::new(move |p| Ok(pouch_mls::sign_raw(&s, p).unwrap())),
        )
        .unwrap();
        RawDevice {
            device_id,
            api,
            provider,
            signer,
            suite,
        }
    }

    /// A fresh bearer token of this device, for requests made by hand.
    /// Claims key packages for `addresses`, as any device may (a modified
    /// client needs no conversation to follow).
    pub fn claim(
        &self,
        addresses: &[pouch_proto::Address],
    ) -> pouch_client::Result<pouch_proto::api::ClaimResponse> {
        self.api.post(
            "/v1/key-packages/claim",
            &pouch_proto::api::ClaimRequest {
                addresses: addresses.to_vec(),
                only: vec![],
            },
        )
    }

    pub fn token(&self) -> String {
        use pouch_proto::api;
        let ch: api::ChallengeResponse = self
            .api
            .post_json(
                "/v1/auth/challenge",
                &api::ChallengeRequest {
                    device_id: self.device_id.clone(),
                },
            )
            .unwrap();
        let payload = api::auth_signing_payload(&self.device_id, &ch.challenge);
        let tok: api::TokenResponse = self
            .api
            .post_json(
                "/v1/auth/token",
                &api::TokenRequest {
                    device_id: self.device_id.clone(),
                    challenge: ch.challenge,
                    signature: pouch_mls::sign_raw(&self.signer, &payload).unwrap(),
                },
            )
            .unwrap();
        tok.token
    }
}
