//! `pouch bench --workload mail`: the mail workload a ministry's users make,
//! measured end to end through the protocols their mail clients speak, on
//! Pouch and on a private Postfix + Dovecot started beside it.
//!
//! 20 users; N mails of 4 KiB, each from one user to 10 others; 4 SMTP
//! submissions at a time (one connection per mail, as mail clients do);
//! every user's IMAP client polls its INBOX and fetches each new mail whole,
//! checking it once (its id, its recipient, its body byte for byte). The
//! same code drives both systems; only the addresses and ports differ.
//!
//! - Pouch: a real server on loopback and one real `pouch bridge` per user
//!   (the bridge's own code, in this process), syncing at the bridge's
//!   default interval, SMTP AUTH with each bridge's password.
//! - Postfix + Dovecot: `bench/postfix-dovecot.sh` starts both in a scratch
//!   directory on loopback ports with their default durability; Postfix
//!   delivers to Dovecot over LMTP.
//!
//! Two variants: every mail a new conversation, and replies in existing
//! conversations (each sender first starts one thread with its recipients,
//! not counted, and every measured mail answers it). Runs alternate between
//! the systems; the medians and Pouch's ratio to Postfix + Dovecot are
//! printed. Delivery latency is from the start of a mail's submission to
//! the moment the recipient's IMAP client has fetched it.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USERS: usize = 20;
const RECIPIENTS: usize = 10;
const SUBMITTERS: usize = 4;
const MAIL_BYTES: usize = 4096;
/// The IMAP clients look for new mail this often (a mail client's IDLE
/// would hear sooner; polling costs both systems the same).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// A run that has not delivered everything by then has failed.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30 * 60);
const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    NewConversations,
    Replies,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NewConversations => "new conversations",
            Variant::Replies => "replies",
        }
    }
}

pub struct WorkloadArgs {
    pub mails: usize,
    pub runs: usize,
    pub variants: Vec<Variant>,
    pub postgres: Option<String>,
    /// Seconds between each bridge's syncs with the server.
    pub sync_secs: u64,
    /// Also run Postfix + Dovecot (needs root and the Debian packages).
    pub compare: bool,
    /// Pouch with a label policy in force: every user cleared, every mail
    /// labelled by its subject marking (checked by sender, server and
    /// receivers; shown to the IMAP clients with an SIO-Label header).
    pub labels: bool,
}

/// The label every mail of a labelled run carries (its subject marking).
const LABEL_MARKING: &str = "[RESTRICTED//REL TO CZE]";

/// How one user's mail client reaches its system.
#[derive(Clone)]
struct Account {
    address: String,
    login: String,
    password: String,
    smtp: SocketAddr,
    imap: SocketAddr,
    /// Whether submission needs SMTP AUTH (the bridge does; the private
    /// Postfix relays for loopback).
    auth: bool,
    /// Put before each subject (a label's marking, in a labelled run).
    subject_prefix: &'static str,
}

/// What one run measured.
struct Outcome {
    submit_s: f64,
    delivered_s: f64,
    latencies: Vec<f64>,
    /// Alerts the Pouch server raised during the run (None for Postfix).
    alerts: Option<usize>,
    /// CPU time this process spent per mail while the mails were measured:
    /// Pouch's server, devices and bridges, with the SMTP and IMAP clients
    /// (None for Postfix, which runs in processes of its own). Steadier
    /// than throughput on a shared machine.
    cpu_ms_per_mail: Option<f64>,
    /// The label checks' share of that, per mail (None for Postfix): the
    /// CPU time the devices spent in them (`pouch_client::labels::meter`)
    /// and the server in its delivery check (`delivery_check_time`).
    label_checks: Option<LabelChecks>,
}

#[derive(Clone, Copy)]
struct LabelChecks {
    devices_ms_per_mail: f64,
    server_ms_per_mail: f64,
}

impl LabelChecks {
    fn now() -> (Duration, Duration) {
        (
            pouch_client::labels::meter::spent(),
            pouch_server::service::security::delivery_check_time(),
        )
    }

    fn since(before: (Duration, Duration), mails: usize) -> Self {
        let (devices, server) = Self::now();
        let per_mail = |d: Duration| d.as_secs_f64() * 1000.0 / mails as f64;
        LabelChecks {
            devices_ms_per_mail: per_mail(devices.saturating_sub(before.0)),
            server_ms_per_mail: per_mail(server.saturating_sub(before.1)),
        }
    }

    fn total(self) -> f64 {
        self.devices_ms_per_mail + self.server_ms_per_mail
    }
}

/// "devices + server (share of the CPU per mail)", or a dash.
fn describe_checks(checks: Option<LabelChecks>, cpu: Option<f64>) -> String {
    match (checks, cpu) {
        (Some(c), Some(cpu)) if cpu > 0.0 => format!(
            "{:.3} + {:.3} ({:.1} %)",
            c.devices_ms_per_mail,
            c.server_ms_per_mail,
            c.total() * 100.0 / cpu
        ),
        _ => "–".into(),
    }
}

/// CPU seconds (user and system, every thread) this process has used.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

pub fn run(args: WorkloadArgs) -> Result<()> {
    if args.mails == 0 || args.runs == 0 {
        bail!("give at least one mail (--messages) and one run (--runs)");
    }
    let body = filler();
    println!(
        "workload: {USERS} users, {} mails of {MAIL_BYTES} B each to {RECIPIENTS} of them, {SUBMITTERS} concurrent SMTP submissions, IMAP fetch of every copy; bridges sync every {} s; Pouch on {}",
        args.mails,
        args.sync_secs,
        if args.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!(
        "| run | system | variant | submit (msg/s) | all delivered (s) | end to end (msg/s) | latency p50 (s) | latency p99 (s) | CPU (ms/mail) | label checks: devices + server (ms/mail, share of CPU) | alerts |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut results: Vec<(&str, Variant, Outcome)> = Vec::new();
    for run in 0..args.runs {
        for &variant in &args.variants {
            let mut systems = vec!["Pouch"];
            if args.compare {
                // Alternate which goes first, so drift in the machine hits both.
                if run % 2 == 0 {
                    systems.insert(0, "Postfix + Dovecot");
                } else {
                    systems.push("Postfix + Dovecot");
                }
            }
            for system in systems {
                let tag = format!(
                    "r{run}{}",
                    if variant == Variant::Replies {
                        "r"
                    } else {
                        "n"
                    }
                );
                let outcome = if system == "Pouch" {
                    pouch_run(&args, variant, &tag, &body)
                } else {
                    postfix_run(&args, variant, &tag, &body)
                }
                .with_context(|| format!("{system}, {}, run {}", variant.name(), run + 1))?;
                println!(
                    "| {} | {system} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} |",
                    run + 1,
                    variant.name(),
                    args.mails as f64 / outcome.submit_s,
                    outcome.delivered_s,
                    args.mails as f64 / outcome.delivered_s,
                    percentile(&outcome.latencies, 0.50),
                    percentile(&outcome.latencies, 0.99),
                    outcome
                        .cpu_ms_per_mail
                        .map(|c| format!("{c:.2}"))
                        .unwrap_or_else(|| "–".into()),
                    describe_checks(outcome.label_checks, outcome.cpu_ms_per_mail),
                    outcome
                        .alerts
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "–".into()),
                );
                results.push((system, variant, outcome));
            }
        }
    }
    println!();
    println!(
        "| system | variant | submit (msg/s) | end to end (msg/s) | latency p50 (s) | latency p99 (s) | CPU (ms/mail) | label checks (ms/mail, share of CPU) | Pouch ÷ Postfix + Dovecot (end to end) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for &variant in &args.variants {
        let median_of = |system: &str, f: &dyn Fn(&Outcome) -> f64| {
            let v: Vec<f64> = results
                .iter()
                .filter(|(s, v, _)| *s == system && *v == variant)
                .map(|(_, _, o)| f(o))
                .collect();
            percentile(&v, 0.5)
        };
        let e2e = |o: &Outcome| args.mails as f64 / o.delivered_s;
        let pouch_e2e = median_of("Pouch", &e2e);
        let postfix_e2e = args.compare.then(|| median_of("Postfix + Dovecot", &e2e));
        let mut systems = vec!["Pouch"];
        if args.compare {
            systems.push("Postfix + Dovecot");
        }
        for system in systems {
            let cpu = median_of(system, &|o| o.cpu_ms_per_mail.unwrap_or(f64::NAN));
            let checks = median_of(system, &|o| {
                o.label_checks.map(LabelChecks::total).unwrap_or(f64::NAN)
            });
            println!(
                "| {system} (median) | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} |",
                variant.name(),
                median_of(system, &|o| args.mails as f64 / o.submit_s),
                median_of(system, &e2e),
                median_of(system, &|o| percentile(&o.latencies, 0.50)),
                median_of(system, &|o| percentile(&o.latencies, 0.99)),
                if cpu.is_nan() {
                    "–".to_string()
                } else {
                    format!("{cpu:.2}")
                },
                if checks.is_nan() || cpu.is_nan() {
                    "–".to_string()
                } else {
                    format!("{checks:.3} ({:.1} %)", checks * 100.0 / cpu)
                },
                match (system, postfix_e2e) {
                    ("Pouch", Some(p)) => format!("{:.2}×", pouch_e2e / p),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(())
}

/// The body every mail carries after its id line: 4 KiB of text in lines
/// of 72 characters, compared byte for byte on arrival.
fn filler() -> String {
    let words = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor ";
    let mut out = String::new();
    let mut chars = words.chars().cycle();
    while out.len() < MAIL_BYTES - 200 {
        let line: String = chars.by_ref().take(72).collect();
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pouch-workload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---------- the two systems ----------

fn pouch_run(args: &WorkloadArgs, variant: Variant, tag: &str, body: &str) -> Result<Outcome> {
    let dir = scratch(&format!("pouch-{tag}"))?;
    let pg = match &args.postgres {
        Some(base) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(pouch_store_sql::testing::fresh_postgres_database(
                    base, "workload",
                ))
                .with_context(|| format!("cannot create a scratch database beside {base}"))?,
        ),
        None => None,
    };
    let result = (|| {
        let server =
            crate::bench::start_server(&dir.join("server"), pg.as_ref().map(|(u, _)| u.as_str()))?;
        eprintln!("Pouch: enrolling {USERS} users and starting their bridges...");
        let rt = tokio::runtime::Runtime::new()?;
        let mut accounts = Vec::new();
        for u in 0..USERS {
            let address = format!("u{u}@pouch.local");
            let home = dir.join(format!("u{u}"));
            let device = crate::bench::enroll(&server, &home, &address)?;
            let password = device.bridge_password()?.to_string();
            drop(device);
            let shared = pouch_bridge::Shared::start(move || {
                pouch_client::Device::open(&home, crate::bench::PASSPHRASE)
            })?;
            let config = pouch_bridge::BridgeConfig {
                imap: "127.0.0.1:0".parse()?,
                smtp: "127.0.0.1:0".parse()?,
                allow_non_loopback: false,
                sync_every: Duration::from_secs(args.sync_secs.max(1)),
                tls: pouch_bridge::tls::TlsMode::None,
                certificate: None,
            };
            let (imap, smtp) = rt.block_on(async {
                let (imap, smtp) = pouch_bridge::bind(&config).await?;
                let addrs = (imap.local_addr()?, smtp.local_addr()?);
                tokio::spawn(pouch_bridge::serve(shared, imap, smtp, config));
                Ok::<_, anyhow::Error>(addrs)
            })?;
            accounts.push(Account {
                login: address.clone(),
                address,
                password,
                smtp,
                imap,
                auth: true,
                subject_prefix: if args.labels { LABEL_MARKING } else { "" },
            });
        }
        if args.labels {
            let addresses: Vec<String> = accounts.iter().map(|a| a.address.clone()).collect();
            server.deploy_labels(&dir.join("u0"), &addresses)?;
        }
        let before = server.alerts()?.len();
        let mut outcome = drive(&accounts, "pouch.local", variant, tag, args.mails, body)?;
        let raised: Vec<String> = server
            .alerts()?
            .into_iter()
            .skip(before)
            .map(|a| format!("{} ({}): {}", a.rule, a.severity, a.summary))
            .collect();
        for a in &raised {
            eprintln!("alert during the run: {a}");
        }
        outcome.alerts = Some(raised.len());
        drop(rt);
        Ok(outcome)
    })();
    if let Some((_, drop_db)) = pg {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(drop_db);
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The private Postfix + Dovecot, started and stopped by its script.
fn postfix_run(args: &WorkloadArgs, variant: Variant, tag: &str, body: &str) -> Result<Outcome> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/postfix-dovecot.sh");
    let dir = scratch(&format!("postfix-{tag}"))?;
    let (smtp, imap, lmtp) = (free_port()?, free_port()?, free_port()?);
    let password = "workload-password";
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .args([smtp, imap, lmtp].map(|p| p.to_string()))
        .arg(password)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "Postfix + Dovecot did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let accounts: Vec<Account> = (0..USERS)
        .map(|u| Account {
            address: format!("u{u}@bench.test"),
            login: format!("u{u}@bench.test"),
            password: password.into(),
            smtp: SocketAddr::from(([127, 0, 0, 1], smtp)),
            imap: SocketAddr::from(([127, 0, 0, 1], imap)),
            auth: false,
            subject_prefix: if args.labels { LABEL_MARKING } else { "" },
        })
        .collect();
    // This process's CPU is only the mail clients' here.
    let result = drive(&accounts, "bench.test", variant, tag, args.mails, body).map(|o| Outcome {
        cpu_ms_per_mail: None,
        label_checks: None,
        ..o
    });
    let _ = std::process::Command::new("bash")
        .arg(&script)
        .arg("stop")
        .arg(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

// ---------- the workload ----------

/// Who sends mail `i`, and to whom: the same sets in every run and system.
fn parties(i: usize) -> (usize, Vec<usize>) {
    let from = i % USERS;
    (from, (1..=RECIPIENTS).map(|k| (from + k) % USERS).collect())
}

fn message(
    accounts: &[Account],
    domain: &str,
    id: &str,
    from: usize,
    to: &[usize],
    in_reply_to: Option<&str>,
    body: &str,
) -> String {
    let to_header: Vec<&str> = to.iter().map(|&r| accounts[r].address.as_str()).collect();
    let mut m = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}workload {id}\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{id}@{domain}>\r\n",
        accounts[from].address,
        to_header.join(", "),
        accounts[from].subject_prefix,
    );
    if let Some(parent) = in_reply_to {
        m.push_str(&format!(
            "In-Reply-To: <{parent}@{domain}>\r\nReferences: <{parent}@{domain}>\r\n"
        ));
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n");
    m.push_str(&format!("workload-id {id}\r\n"));
    m.push_str(body);
    m
}

/// Submits every mail through the senders' SMTP, four at a time, while the
/// recipients' IMAP clients poll; returns when every copy was fetched.
fn drive(
    accounts: &[Account],
    domain: &str,
    variant: Variant,
    tag: &str,
    mails: usize,
    body: &str,
) -> Result<Outcome> {
    // Replies: each sender starts its thread first (not measured).
    if variant == Variant::Replies {
        let starters: Vec<(String, usize, Vec<usize>)> = (0..USERS)
            .map(|s| {
                let (from, to) = parties(s);
                (format!("{tag}-start-{s}"), from, to)
            })
            .collect();
        let t = Instant::now();
        submit_all(
            accounts,
            domain,
            &starters,
            None,
            body,
            &Mutex::new(HashMap::new()),
        )?;
        collect(accounts, &starters, &Mutex::new(HashMap::new()), t)?;
    }
    let batch: Vec<(String, usize, Vec<usize>)> = (0..mails)
        .map(|i| {
            let (from, to) = parties(i);
            (format!("{tag}-{i}"), from, to)
        })
        .collect();
    let parents = (variant == Variant::Replies).then(|| {
        (0..USERS)
            .map(|s| format!("{tag}-start-{s}"))
            .collect::<Vec<_>>()
    });
    let t0 = Instant::now();
    let cpu0 = process_cpu_s();
    let checks0 = LabelChecks::now();
    let submitted = Arc::new(Mutex::new(HashMap::new()));
    let collector = {
        let accounts = accounts.to_vec();
        let batch = batch.clone();
        let submitted = submitted.clone();
        std::thread::spawn(move || collect(&accounts, &batch, &submitted, t0))
    };
    let submit = submit_all(
        accounts,
        domain,
        &batch,
        parents.as_deref(),
        body,
        &submitted,
    );
    let submit_s = t0.elapsed().as_secs_f64();
    submit?;
    let (delivered_s, latencies) = collector
        .join()
        .map_err(|_| anyhow!("the IMAP clients' thread failed"))??;
    let cpu_ms_per_mail = match (cpu0, process_cpu_s()) {
        (Some(a), Some(b)) => Some((b - a) * 1000.0 / mails as f64),
        _ => None,
    };
    Ok(Outcome {
        submit_s,
        delivered_s,
        latencies,
        alerts: None,
        cpu_ms_per_mail,
        label_checks: Some(LabelChecks::since(checks0, mails)),
    })
}

type Batch = [(String, usize, Vec<usize>)];

/// Four submitters take the next mail in turn; each mail's submission start
/// is recorded for the latency.
fn submit_all(
    accounts: &[Account],
    domain: &str,
    batch: &Batch,
    parents: Option<&[String]>,
    body: &str,
    submitted: &Mutex<HashMap<String, Instant>>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SUBMITTERS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((id, from, to)) = batch.get(i) else {
                            return Ok(());
                        };
                        let parent = parents.map(|p| p[*from].as_str());
                        let text = message(accounts, domain, id, *from, to, parent, body);
                        submitted
                            .lock()
                            .expect("not poisoned")
                            .insert(id.clone(), Instant::now());
                        let recipients: Vec<&str> =
                            to.iter().map(|&r| accounts[r].address.as_str()).collect();
                        smtp_send(&accounts[*from], &recipients, &text)
                            .with_context(|| format!("submitting {id}"))?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow!("a submitter panicked"))??;
        }
        Ok(())
    })
}

/// Every recipient's IMAP client polls its INBOX and fetches new mail whole
/// until every copy of `batch` has arrived, each checked once. Returns the
/// seconds from `t0` until the last copy, and each copy's latency from its
/// submission (when recorded).
fn collect(
    accounts: &[Account],
    batch: &Batch,
    submitted: &Mutex<HashMap<String, Instant>>,
    t0: Instant,
) -> Result<(f64, Vec<f64>)> {
    let body = filler();
    // Which ids each user still waits for.
    let mut waiting: Vec<HashSet<String>> = vec![HashSet::new(); accounts.len()];
    for (id, _, to) in batch {
        for &r in to {
            waiting[r].insert(id.clone());
        }
    }
    let in_batch: HashSet<String> = batch.iter().map(|(id, _, _)| id.clone()).collect();
    let mut clients: Vec<Option<ImapClient>> = accounts
        .iter()
        .zip(&waiting)
        .map(|(a, w)| {
            if w.is_empty() {
                Ok(None)
            } else {
                ImapClient::login(a).map(Some)
            }
        })
        .collect::<Result<_>>()?;
    let mut latencies = Vec::new();
    let mut last = t0;
    loop {
        let round = Instant::now();
        for (u, client) in clients.iter_mut().enumerate() {
            let Some(client) = client else { continue };
            if waiting[u].is_empty() {
                continue;
            }
            for raw in client.fetch_new()? {
                let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
                let Some(id) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("workload-id "))
                    .map(|s| s.trim().to_string())
                else {
                    continue; // a system notice, not the workload's
                };
                if !in_batch.contains(&id) {
                    continue; // an earlier phase's mail (a reply's thread starter)
                }
                if !waiting[u].remove(&id) {
                    bail!(
                        "{} received {id} twice, or a mail not addressed to it",
                        accounts[u].address
                    );
                }
                if !text.contains(&body.replace("\r\n", "\n")) {
                    bail!("{id} reached {} altered", accounts[u].address);
                }
                let now = Instant::now();
                last = now;
                if let Some(at) = submitted.lock().expect("not poisoned").get(&id) {
                    latencies.push(now.duration_since(*at).as_secs_f64());
                }
            }
        }
        if waiting.iter().all(|w| w.is_empty()) {
            break;
        }
        if t0.elapsed() > DELIVERY_DEADLINE {
            let missing: usize = waiting.iter().map(|w| w.len()).sum();
            bail!(
                "{missing} copies not delivered after {} s",
                DELIVERY_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(POLL_EVERY.saturating_sub(round.elapsed()));
    }
    Ok((last.duration_since(t0).as_secs_f64(), latencies))
}

// ---------- minimal SMTP and IMAP clients ----------

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One mail over one SMTP connection: EHLO, AUTH PLAIN when needed, MAIL,
/// RCPT for each recipient, DATA, QUIT.
fn smtp_send(account: &Account, to: &[&str], text: &str) -> Result<()> {
    use base64::Engine;
    let stream = connect(account.smtp)?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let expect = |r: &mut BufReader<TcpStream>, code: &str| -> Result<()> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("the SMTP server closed the connection");
            }
            if !line.starts_with(code) {
                bail!("SMTP: expected {code}, got {}", line.trim());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    };
    expect(&mut r, "220")?;
    w.write_all(b"EHLO workload.local\r\n")?;
    expect(&mut r, "250")?;
    if account.auth {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", account.login, account.password));
        w.write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())?;
        expect(&mut r, "235")?;
    }
    w.write_all(format!("MAIL FROM:<{}>\r\n", account.address).as_bytes())?;
    expect(&mut r, "250")?;
    for rcpt in to {
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())?;
        expect(&mut r, "250")?;
    }
    w.write_all(b"DATA\r\n")?;
    expect(&mut r, "354")?;
    // No line of the workload's mail starts with a dot: no stuffing needed.
    w.write_all(text.as_bytes())?;
    w.write_all(b"\r\n.\r\n")?;
    expect(&mut r, "250")?;
    w.write_all(b"QUIT\r\n")?;
    let _ = expect(&mut r, "221");
    Ok(())
}

/// An IMAP client holding INBOX selected, fetching what is new by UID.
struct ImapClient {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
    next_uid: u32,
}

impl ImapClient {
    fn login(account: &Account) -> Result<Self> {
        let stream = connect(account.imap)?;
        let mut c = ImapClient {
            r: BufReader::new(stream.try_clone()?),
            w: stream,
            tag: 0,
            next_uid: 1,
        };
        let mut greeting = String::new();
        c.r.read_line(&mut greeting)?;
        if !greeting.starts_with("* OK") {
            bail!("IMAP greeting: {}", greeting.trim());
        }
        c.command(&format!(
            "LOGIN \"{}\" \"{}\"",
            account.login, account.password
        ))?;
        c.command("SELECT INBOX")?;
        Ok(c)
    }

    /// Sends a command; returns its untagged responses, each as its text
    /// (literals left out) and its literals.
    fn command(&mut self, command: &str) -> Result<Vec<(String, Vec<Vec<u8>>)>> {
        self.tag += 1;
        let tag = format!("w{}", self.tag);
        self.w
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        let mut responses = Vec::new();
        loop {
            let (text, literals) = self.response()?;
            if let Some(rest) = text.strip_prefix(&format!("{tag} ")) {
                if !rest.starts_with("OK") {
                    bail!("IMAP {command}: {}", rest.trim());
                }
                return Ok(responses);
            }
            responses.push((text, literals));
        }
    }

    /// One response: a line, and for each `{n}` at its end, n bytes and the
    /// line's continuation.
    fn response(&mut self) -> Result<(String, Vec<Vec<u8>>)> {
        let mut text = String::new();
        let mut literals = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                bail!("the IMAP server closed the connection");
            }
            let trimmed = line.trim_end_matches(['\r', '\n']);
            let literal = trimmed
                .strip_suffix('}')
                .and_then(|s| s.rsplit_once('{'))
                .and_then(|(head, n)| {
                    n.trim_end_matches('+')
                        .parse::<usize>()
                        .ok()
                        .map(|n| (head, n))
                });
            match literal {
                Some((head, n)) => {
                    text.push_str(head);
                    let mut bytes = vec![0u8; n];
                    self.r.read_exact(&mut bytes)?;
                    literals.push(bytes);
                }
                None => {
                    text.push_str(trimmed);
                    return Ok((text, literals));
                }
            }
        }
    }

    /// Mail that arrived since the last call, whole.
    fn fetch_new(&mut self) -> Result<Vec<Vec<u8>>> {
        self.command("NOOP")?;
        let responses =
            self.command(&format!("UID FETCH {}:* (UID BODY.PEEK[])", self.next_uid))?;
        let mut mails = Vec::new();
        for (text, mut literals) in responses {
            if !text.contains(" FETCH ") {
                continue;
            }
            let uid: u32 = text
                .split("UID ")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("a FETCH response without a UID: {text}"))?;
            // "n:*" also answers with the newest mail when n is past it.
            if uid < self.next_uid || literals.is_empty() {
                continue;
            }
            self.next_uid = self.next_uid.max(uid + 1);
            mails.push(literals.remove(0));
        }
        Ok(mails)
    }
}
