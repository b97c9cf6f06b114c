//! `pouch bench`: mails per second through the whole path — compose, MLS
//! encrypt, HTTPS to a real server, database queues, fetch, MLS decrypt,
//! store — with a real server on loopback (SQLite or a scratch PostgreSQL
//! database) and real client devices in temporary directories.

use anyhow::{Context, Result, anyhow, bail};
use pouch_client::{Compose, Device};
use pouch_proto::Address;
use pouch_proto::invite::Invite;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub(crate) const PASSPHRASE: &str = "benchmark passphrase";

/// The transparency log: appends per second and proof sizes at 10^4..10^6
/// entries (Merkle work in memory), and appends per second through the real
/// store, where each append is one transaction with its device list.
pub fn log(postgres: Option<String>, store_entries: u64) -> Result<()> {
    use pouch_log::{
        FetchedHashes, prove_record, prove_tree, stored_hash_index, stored_hashes, tree_hash,
    };
    let entry = vec![b'x'; 1500]; // about the size of a signed two-device list entry
    println!(
        "| entries | appends/s (hashing, in memory) | inclusion proof | consistency proof (from half) |"
    );
    println!("|---:|---:|---:|---:|");
    let mut store = FetchedHashes(Default::default());
    let mut done = 0u64;
    let mut elapsed = 0f64;
    for target in [10_000u64, 100_000, 1_000_000] {
        let t = Instant::now();
        while done < target {
            let mut e = entry.clone();
            e[..8].copy_from_slice(&done.to_be_bytes());
            let new = stored_hashes(done, &e, &store).map_err(|e| anyhow!("{e}"))?;
            let base = stored_hash_index(0, done);
            for (k, h) in new.into_iter().enumerate() {
                store.0.insert(base + k as u64, h);
            }
            done += 1;
        }
        elapsed += t.elapsed().as_secs_f64();
        let root = tree_hash(target, &store).map_err(|e| anyhow!("{e}"))?;
        let inclusion = prove_record(target, target / 3, &store).map_err(|e| anyhow!("{e}"))?;
        let consistency = prove_tree(target, target / 2, &store).map_err(|e| anyhow!("{e}"))?;
        let _ = root;
        println!(
            "| {target} | {:.0} | {} hashes = {} B | {} hashes = {} B |",
            target as f64 / elapsed,
            inclusion.len(),
            inclusion.len() * 32,
            consistency.len(),
            consistency.len() * 32
        );
    }

    // Through the store: enrollment of a fresh account = one list + one log entry, one transaction.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = std::env::temp_dir().join(format!("pouch-logbench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (store, drop): (Arc<dyn pouch_store::Store>, Option<_>) = rt.block_on(async {
        match &postgres {
            Some(base) => {
                let (url, drop) =
                    pouch_store_sql::testing::fresh_postgres_database(base, "logbench").await?;
                Ok::<_, anyhow::Error>((
                    Arc::new(pouch_store_sql::SqlStore::connect(&url).await?)
                        as Arc<dyn pouch_store::Store>,
                    Some(drop),
                ))
            }
            None => Ok((
                Arc::new(pouch_store_sql::SqlStore::open_sqlite(&scratch.join("log.db")).await?)
                    as Arc<dyn pouch_store::Store>,
                None,
            )),
        }
    })?;
    let backend = if postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let t = Instant::now();
    rt.block_on(async {
        for i in 0..store_entries {
            let address = Address::parse(&format!("u{i}@pouch.local"))?;
            store.create_user(&address, None, 0).await?;
            let secret = format!("invite-{i}");
            store
                .create_invite(&address, secret.as_bytes(), i64::MAX)
                .await?;
            let device = pouch_store::NewDevice {
                device_id: pouch_proto::DeviceId(format!("{i:032x}")),
                address: address.clone(),
                name: "bench".into(),
                signature_key: i.to_be_bytes().repeat(4),
                key_packages: vec![vec![0u8; 16]],
                last_resort: vec![0u8; 16],
                device_list: Some((
                    pouch_store::StoredList {
                        version: 1,
                        body: entry.clone(),
                        signature: vec![0u8; 64],
                    },
                    // A leaf the size of a real commitment, and the full entry.
                    pouch_store::LogRecord {
                        leaf: vec![b'c'; 200],
                        entry: entry.clone(),
                    },
                )),
            };
            store
                .enroll(secret.as_bytes(), device, 0)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!();
    println!(
        "{backend}: {store_entries} appends through the store (each its own durable transaction with a device list): {:.0} appends/s",
        store_entries as f64 / secs
    );
    if let Some(d) = drop {
        rt.block_on(d);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

pub struct BenchArgs {
    pub postgres: Option<String>,
    pub recipients: Vec<usize>,
    pub messages: usize,
    pub size: usize,
    /// Instead of throughput: send one attachment of this many MiB and report peak memory.
    pub attachment_mib: Option<u64>,
}

/// Resident memory of this process (Linux), in MiB: `VmRSS` now or `VmHWM`, the peak.
fn rss_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Sends one large attachment through the server and reads it back,
/// reporting time and peak memory: memory must not grow with the size.
fn attachment_round(server: &Running, scratch: &Path, mib: u64) -> Result<()> {
    let path = scratch.join("attachment.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            block
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j as u64 ^ i).wrapping_mul(2654435761) as u8);
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let mut sender = enroll(server, &scratch.join("sender"), "sender@pouch.local")?;
    let mut reader = enroll(server, &scratch.join("reader"), "reader@pouch.local")?;
    // Start the peak from here: enrollment's Argon2id (64 MiB) must not mask the transfer.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_mib("VmRSS:").unwrap_or(0.0);
    let t = Instant::now();
    sender.send(Compose {
        to: vec![Address::parse("reader@pouch.local")?],
        subject: "large attachment".into(),
        body: "see attached".into(),
        attachments: vec![("large.bin".into(), path.clone())],
        ..Default::default()
    })?;
    let send_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = reader.sync()?;
    let id = *report
        .new_messages
        .first()
        .ok_or_else(|| anyhow!("the attachment did not arrive"))?;
    let fetch_s = t.elapsed().as_secs_f64();
    let mut counted = CountingSink(0);
    reader.write_raw(id, &mut counted, None)?;
    let after = rss_mib("VmHWM:").unwrap_or(0.0);
    println!(
        "| {mib} MiB | {:.1} | {:.1} | {} | {before:.0} | {after:.0} |",
        send_s, fetch_s, counted.0
    );
    Ok(())
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) struct Running {
    url: String,
    fingerprint: String,
    /// The benchmark's administrator (an operator made with the setup secret).
    admin: pouch_client::admin::AdminIdentity,
    /// Its security team (reads the alerts), added by the operator.
    security: pouch_client::admin::AdminIdentity,
    _rt: tokio::runtime::Runtime,
}

impl Running {
    /// A connection signed in as the benchmark's administrator.
    fn admin_api(&self) -> Result<pouch_client::net::Api> {
        let api = pouch_client::net::Api::new(&self.url, &self.fingerprint)?;
        self.admin.sign_in(&api)?;
        Ok(api)
    }

    /// Every alert the server has raised so far.
    pub(crate) fn alerts(&self) -> Result<Vec<pouch_proto::api::Alert>> {
        let api = pouch_client::net::Api::new(&self.url, &self.fingerprint)?;
        self.security.sign_in(&api)?;
        let mut all: Vec<pouch_proto::api::Alert> = Vec::new();
        loop {
            let after = all.last().map(|a| a.id).unwrap_or(0);
            let page: Vec<pouch_proto::api::Alert> =
                api.get(&format!("/v1/admin/alerts?after={after}"))?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }
}

impl Running {
    /// Puts labels in force as a ministry would: a security officer whose
    /// key the security administrator registers, the example policy
    /// published, and every one of `addresses` cleared up to SECRET for
    /// CZE — all signed by the officer, handed in from the device at
    /// `officer_device`.
    pub(crate) fn deploy_labels(&self, officer_device: &Path, addresses: &[String]) -> Result<()> {
        let home = officer_device.with_extension("officer");
        let officer =
            pouch_client::officer::OfficerIdentity::create(&home, "Bench Officer", PASSPHRASE)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let card = officer.card(now);
        let api = pouch_client::net::Api::new(&self.url, &self.fingerprint)?;
        self.security.sign_in(&api)?;
        let answer: pouch_proto::api::RegisterOfficerResponse = api.post(
            "/v1/admin/security-officer",
            &pouch_proto::api::RegisterOfficerRequest {
                card: pouch_proto::api::OfficerStatement {
                    body: card.body,
                    signature: card.signature,
                },
            },
        )?;
        // One security administrator here: registered at once.
        anyhow::ensure!(
            answer.registered.is_some(),
            "the officer's key was not registered: {:?}",
            answer.pending.map(|p| p.id)
        );
        let text = include_str!("../../../dist/labels/ministry-example.toml");
        let policy = pouch_label::LabelPolicy::from_toml(text)?;
        let mut device = Device::open(officer_device, PASSPHRASE)?;
        device.publish_statement(&officer.sign(&pouch_label::statement::Statement::Policy {
            sequence: 1,
            version: 1,
            policy: text.to_string(),
            issued_at: now,
        }))?;
        let clearance = policy.clearance("SECRET", &["REL TO CZE".to_string()], None)?;
        for a in addresses {
            device.publish_statement(&officer.sign(
                &pouch_label::statement::Statement::clearance(a, &clearance, 1, now),
            ))?;
        }
        Ok(())
    }
}

/// The server configuration every benchmark server runs with.
fn bench_config(
    data_dir: &Path,
    domain: &str,
    federation: pouch_server::config::FederationSettings,
) -> pouch_server::ServerConfig {
    pouch_server::ServerConfig {
        data_dir: data_dir.to_path_buf(),
        domain: domain.into(),
        tls: Default::default(),
        ciphersuite: pouch_proto::DEFAULT_CIPHERSUITE,
        rotation_secs: 24 * 3600,
        link_ttl_secs: 600,
        token_ttl_secs: pouch_server::TOKEN_TTL_SECS,
        // Every benchmark device connects from 127.0.0.1: a thousand
        // devices' pooled connections would pass the per-address cap
        // meant for one client (256), which a real deployment's devices,
        // each from its own address, never share.
        connections: pouch_server::conncap::ConnectionLimits {
            total: 4096,
            per_source: 4096,
        },
        limits: Default::default(),
        witnesses: Vec::new(),
        policy: Default::default(),
        federation,
    }
}

/// The federation card of a server for `domain` in `data_dir` (SQLite),
/// federating on `listen`: its keys are made (prepared, not served), so a
/// partner can be configured before either starts.
fn federation_card(
    data_dir: &Path,
    domain: &str,
    listen: &str,
) -> Result<pouch_proto::api::FederationCard> {
    std::fs::create_dir_all(data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store: Arc<dyn pouch_store::Store> =
            Arc::new(pouch_store_sql::SqlStore::open_sqlite(&data_dir.join("pouch.db")).await?);
        let config = bench_config(
            data_dir,
            domain,
            pouch_server::config::FederationSettings {
                listen: Some(listen.to_string()),
                ..Default::default()
            },
        );
        let prepared = pouch_server::prepare(&config, store).await?;
        let card = prepared
            .state
            .federation
            .as_ref()
            .map(|f| f.card.clone())
            .ok_or_else(|| anyhow!("the server does not federate"))?;
        Ok(card)
    })
}

pub(crate) fn start_server(data_dir: &Path, database_url: Option<&str>) -> Result<Running> {
    start_server_as(data_dir, database_url, "pouch.local", Default::default())
}

/// A server for `domain` in this process, federating as `federation` says.
pub(crate) fn start_server_as(
    data_dir: &Path,
    database_url: Option<&str>,
    domain: &str,
    federation: pouch_server::config::FederationSettings,
) -> Result<Running> {
    std::fs::create_dir_all(data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (url, fingerprint, setup) = rt.block_on(async {
        let store: Arc<dyn pouch_store::Store> = match database_url {
            Some(u) => Arc::new(pouch_store_sql::SqlStore::connect(u).await?),
            None => {
                Arc::new(pouch_store_sql::SqlStore::open_sqlite(&data_dir.join("pouch.db")).await?)
            }
        };
        let config = bench_config(data_dir, domain, federation);
        let prepared = pouch_server::prepare(&config, store).await?;
        let setup = std::fs::read_to_string(&prepared.admin_setup_path)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("https://{}", listener.local_addr()?);
        let fingerprint = prepared.tls.anchor_fingerprint.clone();
        tokio::spawn(async move {
            let _ = pouch_server::serve(&prepared, listener, std::future::pending()).await;
        });
        Ok::<_, anyhow::Error>((url, fingerprint, setup))
    })?;
    let admin = pouch_client::admin::AdminIdentity::create(
        &data_dir.join("bench-admin"),
        "bench",
        &url,
        &fingerprint,
        PASSPHRASE,
    )?;
    admin.bootstrap(&admin.api(None)?, &setup)?;
    let security = pouch_client::admin::AdminIdentity::create(
        &data_dir.join("bench-security"),
        "bench-security",
        &url,
        &fingerprint,
        PASSPHRASE,
    )?;
    let api = admin.api(None)?;
    admin.sign_in(&api)?;
    let _: pouch_proto::api::AddAdminResponse = api.post(
        "/v1/admin/admins",
        &pouch_proto::api::AddAdminRequest {
            name: security.name.clone(),
            role: pouch_proto::api::AdminRole::Security,
            public_key: security.public_key().to_vec(),
        },
    )?;
    Ok(Running {
        url,
        fingerprint,
        admin,
        security,
        _rt: rt,
    })
}

pub(crate) fn enroll(server: &Running, home: &Path, address: &str) -> Result<Device> {
    let api = server.admin_api()?;
    let address = Address::parse(address)?;
    let resp: pouch_proto::api::AddUserResponse = api.post(
        "/v1/admin/users",
        &pouch_proto::api::AddUserRequest {
            address: address.clone(),
            name: None,
            invite_ttl_secs: None,
        },
    )?;
    let invite = Invite::new(
        &server.url,
        &server.fingerprint,
        address,
        &resp.invite_secret,
    );
    Device::enroll(home, PASSPHRASE, &invite, "bench")?;
    Ok(Device::open(home, PASSPHRASE)?)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("pouch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = match &args.postgres {
        Some(base) => Some(
            rt.block_on(pouch_store_sql::testing::fresh_postgres_database(
                base, "bench",
            ))
            .with_context(|| format!("cannot create a scratch database beside {base}"))?,
        ),
        None => None,
    };
    let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let result = (|| {
        let server = start_server(
            &scratch.join("server"),
            pg.as_ref().map(|(u, _)| u.as_str()),
        )?;
        if let Some(mib) = args.attachment_mib {
            println!(
                "backend: {backend}; one mail with an attachment, sender and reader in this process, server in this process"
            );
            println!(
                "| attachment | send+upload (s) | sync+download (s) | message bytes read back | RSS before (MiB) | peak RSS during (MiB) |"
            );
            println!("|---:|---:|---:|---:|---:|---:|");
            return attachment_round(&server, &scratch, mib);
        }
        let max = *args
            .recipients
            .iter()
            .max()
            .ok_or_else(|| anyhow!("give at least one --recipients count"))?;
        eprintln!("enrolling 1 sender and {max} recipient devices ({backend})...");
        let mut sender = enroll(&server, &scratch.join("sender"), "sender@pouch.local")?;
        let mut recipients = Vec::with_capacity(max);
        for i in 0..max {
            recipients.push(enroll(
                &server,
                &scratch.join(format!("r{i}")),
                &format!("r{i}@pouch.local"),
            )?);
        }
        let body: String = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
            .chars()
            .cycle()
            .take(args.size)
            .collect();
        println!(
            "backend: {backend}; ciphersuite 0x{:04x}; {} mails of {} bytes per round",
            pouch_proto::DEFAULT_CIPHERSUITE,
            args.messages,
            args.size
        );
        println!(
            "| recipients | new conversation (ms) | send (mails/s) | fetch+decrypt (deliveries/s) | end to end (mails/s) | requests (new conversation) | requests per reply |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for &r in &args.recipients {
            let f = mail_round(&mut sender, &mut recipients, r, args.messages, &body)?;
            println!(
                "| {r} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
                f.create_ms, f.send, f.fetch, f.end_to_end, f.create_requests, f.requests_per_mail
            );
        }
        Ok(())
    })();
    if let Some((_, drop)) = pg {
        rt.block_on(drop);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// One round of the mail benchmark's figures.
struct Round {
    create_ms: f64,
    /// HTTPS requests the sender made for the new conversation, and per reply.
    create_requests: u64,
    requests_per_mail: f64,
    /// Mails accepted by the server per second.
    send: f64,
    /// Deliveries stored per second, all recipient devices together.
    fetch: f64,
    end_to_end: f64,
}

/// One new conversation with the first `r` recipients, then `messages`
/// replies in it, then every recipient device syncs (each must get all).
fn mail_round(
    sender: &mut Device,
    recipients: &mut [Device],
    r: usize,
    messages: usize,
    body: &str,
) -> Result<Round> {
    let to: Vec<Address> = (0..r)
        .map(|i| Address::parse(&format!("r{i}@pouch.local")).expect("a valid address"))
        .collect();
    let t0 = Instant::now();
    let before = sender.requests_made();
    let first = sender.send(Compose {
        to: to.clone(),
        subject: format!("bench {r}"),
        body: body.to_string(),
        ..Default::default()
    })?;
    let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let create_requests = sender.requests_made() - before;
    for d in recipients.iter_mut().take(r) {
        d.sync()?;
    }
    let t_send = Instant::now();
    let before = sender.requests_made();
    for i in 0..messages {
        sender.send(Compose {
            to: to.clone(),
            subject: format!("bench {r} #{i}"),
            body: body.to_string(),
            reply_to: Some(first.id),
            ..Default::default()
        })?;
    }
    let send_s = t_send.elapsed().as_secs_f64();
    let requests_per_mail = (sender.requests_made() - before) as f64 / messages.max(1) as f64;
    let t_fetch = Instant::now();
    for d in recipients.iter_mut().take(r) {
        let report = d.sync()?;
        if report.new_messages.len() != messages {
            bail!(
                "a recipient received {} of {messages} mails",
                report.new_messages.len()
            );
        }
    }
    let fetch_s = t_fetch.elapsed().as_secs_f64();
    let n = messages as f64;
    Ok(Round {
        create_ms,
        create_requests,
        requests_per_mail,
        send: n / send_s,
        fetch: n * r as f64 / fetch_s,
        end_to_end: n / (send_s + fetch_s),
    })
}

/// Raw OpenMLS in this process, the yardstick of the regression guard:
/// messages of `size` bytes sealed per second in a two-member conversation
/// (memory storage, no I/O) — what this machine and build can do at all.
fn raw_mls_seals_per_s(messages: usize, size: usize) -> Result<f64> {
    use openmls_libcrux_crypto::Provider;
    let suite = pouch_mls::ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE)?;
    let (a_p, b_p) = (Provider::default(), Provider::default());
    let alice = pouch_mls::new_device_signer(&a_p)?;
    let bob = pouch_mls::new_device_signer(&b_p)?;
    let (a, b) = (
        Address::parse("a@pouch.local")?,
        Address::parse("b@pouch.local")?,
    );
    let kp = pouch_mls::key_packages(&b_p, suite, &bob, &b, 1, false)?.remove(0);
    let kp = pouch_mls::validate_key_package(
        &a_p,
        suite,
        &pouch_mls::ClaimedPackage {
            bytes: &kp,
            address: &b,
            signature_key: bob.public(),
        },
    )?;
    let (mut group, _) = pouch_mls::create_conversation(
        &a_p,
        suite,
        &alice,
        &a,
        b"the benchmark's one conversation",
        &[kp],
    )?;
    pouch_mls::merge_pending(&a_p, &mut group)?;
    let payload = vec![b'x'; size];
    let t = Instant::now();
    for _ in 0..messages {
        pouch_mls::seal(&a_p, &alice, &mut group, &payload)?;
    }
    Ok(messages as f64 / t.elapsed().as_secs_f64())
}

/// The regression guard's committed baseline: per build profile, the whole
/// path's rates as ratios to raw OpenMLS sealing measured in the same run (a
/// ratio travels between machines and hours far better than a rate).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Baseline {
    debug: Option<Ratios>,
    release: Option<Ratios>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct Ratios {
    send: f64,
    end_to_end: f64,
}

/// Mails per guard round: enough to average out single slow requests.
const GUARD_MESSAGES: usize = 60;

/// `pouch bench --guard FILE`: a short run (one recipient, 60 mails of 4 KiB,
/// SQLite) whose send and end-to-end rates, as ratios to raw OpenMLS
/// sealing, must stay above half the baseline in FILE for this build
/// profile. With `record`, the measured ratios become the baseline.
pub fn guard(file: &Path, record: bool) -> Result<()> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let scratch = std::env::temp_dir().join(format!("pouch-guard-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let measured = (|| {
        let raw = raw_mls_seals_per_s(GUARD_MESSAGES * 5, 4096)?;
        let server = start_server(&scratch.join("server"), None)?;
        let mut sender = enroll(&server, &scratch.join("sender"), "sender@pouch.local")?;
        let mut recipients = vec![enroll(&server, &scratch.join("r0"), "r0@pouch.local")?];
        let body: String = "Lorem ipsum dolor sit amet. "
            .chars()
            .cycle()
            .take(4096)
            .collect();
        // A warm-up round (first conversation, caches), then the measured one.
        mail_round(&mut sender, &mut recipients, 1, 5, &body)?;
        let round = mail_round(&mut sender, &mut recipients, 1, GUARD_MESSAGES, &body)?;
        println!(
            "{profile} build: raw OpenMLS {raw:.0} seals/s; whole path {:.1} mails/s sent, {:.1} end to end",
            round.send, round.end_to_end
        );
        Ok::<_, anyhow::Error>(Ratios {
            send: round.send / raw,
            end_to_end: round.end_to_end / raw,
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let measured = measured?;
    println!(
        "ratios to raw OpenMLS: send {:.4}, end to end {:.4}",
        measured.send, measured.end_to_end
    );
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut baseline: Baseline = if text.trim().is_empty() {
        Baseline::default()
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a guard baseline", file.display()))?
    };
    if record {
        match profile {
            "debug" => baseline.debug = Some(measured),
            _ => baseline.release = Some(measured),
        }
        std::fs::write(file, serde_json::to_string_pretty(&baseline)? + "\n")?;
        println!("recorded as the {profile} baseline in {}", file.display());
        return Ok(());
    }
    let Some(base) = (if profile == "debug" {
        baseline.debug
    } else {
        baseline.release
    }) else {
        bail!(
            "{} has no {profile} baseline; record one with --guard-record",
            file.display()
        );
    };
    println!(
        "baseline: send {:.4}, end to end {:.4} (the guard fails below half)",
        base.send, base.end_to_end
    );
    for (what, now, then) in [
        ("send", measured.send, base.send),
        ("end-to-end", measured.end_to_end, base.end_to_end),
    ] {
        if now < then / 2.0 {
            bail!(
                "the {what} rate fell to {:.0} % of the baseline (as a ratio to raw OpenMLS): a slowdown on the mail path; profile it, or re-record the baseline if it is explained",
                100.0 * now / then
            );
        }
    }
    println!("within the guard");
    Ok(())
}

/// `pouch bench --bridge-mails N`: N mails delivered to a device, then a full
/// mbsync download through the bridge, timed beside the same messages
/// downloaded by mbsync from a private Dovecot (over a pipe, PREAUTH).
/// Needs `mbsync` and `/usr/lib/dovecot/imap` (as `.ci/run` installs).
pub fn bridge(mails: usize, size: usize) -> Result<()> {
    use std::process::Command;
    let scratch = std::env::temp_dir().join(format!("pouch-bench-bridge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = (|| -> Result<()> {
        let server = start_server(&scratch.join("server"), None)?;
        let mut sender = enroll(&server, &scratch.join("sender"), "sender@pouch.local")?;
        let mut reader = enroll(&server, &scratch.join("reader"), "reader@pouch.local")?;
        let body: String = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
            .chars()
            .cycle()
            .take(size)
            .collect();
        let to = vec![Address::parse("reader@pouch.local")?];
        eprintln!("sending {mails} mails...");
        let t = Instant::now();
        let first = sender.send(Compose {
            to: to.clone(),
            subject: "bench 0".into(),
            body: body.clone(),
            ..Default::default()
        })?;
        for i in 1..mails {
            sender.send(Compose {
                to: to.clone(),
                subject: format!("bench {i}"),
                body: body.clone(),
                reply_to: Some(first.id),
                ..Default::default()
            })?;
        }
        let send_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        loop {
            if reader.sync()?.new_messages.is_empty() {
                break;
            }
        }
        reader.refresh_mailboxes()?;
        let sync_s = t.elapsed().as_secs_f64();
        let inbox = reader
            .mailbox("INBOX")?
            .ok_or_else(|| anyhow!("no INBOX"))?;
        let entries = reader.entries(inbox.id)?;
        // The inbox also holds Pouch's own notices (a new device, …).
        if entries.len() < mails {
            bail!("the reader has {} mails, not {mails}", entries.len());
        }
        let mails = entries.len();
        // The same bytes into a Maildir for Dovecot.
        let dovecot = scratch.join("dovecot");
        let cur = dovecot.join("Maildir/cur");
        std::fs::create_dir_all(&cur)?;
        std::fs::create_dir_all(dovecot.join("Maildir/new"))?;
        std::fs::create_dir_all(dovecot.join("Maildir/tmp"))?;
        let mut bytes = 0u64;
        for (i, e) in entries.iter().enumerate() {
            let raw = reader.raw(e.message)?;
            bytes += raw.len() as u64;
            std::fs::write(cur.join(format!("{i}.bench:2,")), raw)?;
        }
        let password = reader.bridge_password()?.to_string();
        drop(reader);
        let conf = dovecot.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "mail_location = maildir:{0}/Maildir\nlog_path = {0}/dovecot.log\n",
                dovecot.display()
            ),
        )?;
        Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(&dovecot)
            .status()?;
        Command::new("chmod").arg("a+rx").arg(&scratch).status()?;

        // The bridge, in this process.
        let rt = tokio::runtime::Runtime::new()?;
        let home = scratch.join("reader");
        let shared = pouch_bridge::Shared::start(move || {
            let d = Device::open(&home, PASSPHRASE)?;
            Ok(d)
        })?;
        let config = pouch_bridge::BridgeConfig {
            imap: "127.0.0.1:0".parse()?,
            smtp: "127.0.0.1:0".parse()?,
            allow_non_loopback: false,
            sync_every: std::time::Duration::from_secs(3600),
            tls: pouch_bridge::tls::TlsMode::None,
            certificate: None,
        };
        let port = rt.block_on(async {
            let (imap, smtp) = pouch_bridge::bind(&config).await?;
            let port = imap.local_addr()?.port();
            tokio::spawn(pouch_bridge::serve(shared, imap, smtp, config));
            Ok::<_, anyhow::Error>(port)
        })?;

        let run_mbsync = |name: &str, store: &str| -> Result<f64> {
            let local = scratch.join(format!("mbsync-{name}"));
            std::fs::create_dir_all(&local)?;
            let rc = scratch.join(format!("mbsyncrc-{name}"));
            std::fs::write(
                &rc,
                format!(
                    "{store}\nIMAPStore remote\nAccount far\n\nMaildirStore local\nPath {0}/\nInbox {0}/INBOX\n\n\
                     Channel bench\nFar :remote:INBOX\nNear :local:INBOX\nCreate Near\nSyncState *\nSync Pull\n",
                    local.display()
                ),
            )?;
            let t = Instant::now();
            let out = Command::new("mbsync")
                .arg("-c")
                .arg(&rc)
                .arg("-a")
                .output()?;
            let secs = t.elapsed().as_secs_f64();
            if !out.status.success() {
                bail!(
                    "mbsync ({name}) failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let got = std::fs::read_dir(local.join("INBOX/cur"))?.count()
                + std::fs::read_dir(local.join("INBOX/new"))?.count();
            if got != mails {
                bail!("mbsync ({name}) fetched {got} mails, not {mails}");
            }
            Ok(secs)
        };
        eprintln!("mbsync through the bridge...");
        let bridge_s = run_mbsync(
            "bridge",
            &format!(
                "IMAPAccount far\nHost 127.0.0.1\nPort {port}\nUser reader@pouch.local\nPass {password}\nSSLType None\nAuthMechs LOGIN\n"
            ),
        )?;
        eprintln!("mbsync from Dovecot...");
        let dovecot_s = run_mbsync(
            "dovecot",
            &format!(
                "IMAPAccount far\nTunnel \"setpriv --reuid 65534 --regid 65534 --clear-groups env -i USER=nobody HOME={0} PATH=/usr/bin:/bin /usr/lib/dovecot/imap -c {1}\"\n",
                dovecot.display(),
                conf.display()
            ),
        )?;
        println!(
            "| mails | bytes | send (s) | device sync (s) | mbsync via the bridge (s) | mbsync from Dovecot (s) | bridge / Dovecot |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {mails} | {bytes} | {send_s:.1} | {sync_s:.1} | {bridge_s:.2} | {dovecot_s:.2} | {:.1}× |",
            bridge_s / dovecot_s
        );
        drop(rt);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A circular: one mail to `n` recipients (up to 1,000), each with a device
/// of its own, first as a new conversation (a commit adding `n` devices and
/// one Welcome for all), then as a reply in it. Reports the time from
/// submission until every recipient device has stored the mail, with the
/// recipients fetching in parallel (one worker per core, as many devices of
/// one ministry would at once), and how much the server's database grew.
pub fn circular(postgres: Option<String>, n: usize, size: usize) -> Result<()> {
    if n == 0 || n > pouch_proto::MAX_RECIPIENTS {
        bail!(
            "--circular takes 1 to {} recipients",
            pouch_proto::MAX_RECIPIENTS
        );
    }
    let scratch = std::env::temp_dir().join(format!("pouch-circular-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = match &postgres {
        Some(base) => Some(
            rt.block_on(pouch_store_sql::testing::fresh_postgres_database(
                base, "circular",
            ))
            .with_context(|| format!("cannot create a scratch database beside {base}"))?,
        ),
        None => None,
    };
    let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let result = (|| {
        let server_dir = scratch.join("server");
        let server = start_server(&server_dir, pg.as_ref().map(|(u, _)| u.as_str()))?;
        let database_url = match &pg {
            Some((url, _)) => url.clone(),
            None => format!("sqlite://{}?mode=ro", server_dir.join("pouch.db").display()),
        };
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut sender = enroll(&server, &scratch.join("sender"), "sender@pouch.local")?;
        let to: Vec<Address> = (0..n)
            .map(|i| Address::parse(&format!("r{i}@pouch.local")).expect("a valid address"))
            .collect();
        let body: String = "Circular to all posts. "
            .chars()
            .cycle()
            .take(size)
            .collect();
        const MAILS: [&str; 2] = ["new conversation", "reply"];
        // A device stays on the thread that opened it (its store is not
        // Send): each worker enrolls its share, then fetches with it after
        // each mail. The barrier marks the phases: enrolled, then per mail
        // sent and every device has it.
        let phases = std::sync::Barrier::new(workers + 1);
        let failed: std::sync::Mutex<Option<anyhow::Error>> = Default::default();
        let fail = |e: anyhow::Error| {
            failed.lock().expect("not poisoned").get_or_insert(e);
        };
        std::thread::scope(|s| -> Result<()> {
            for w in 0..workers {
                let (server, scratch, phases, fail) = (&server, &scratch, &phases, &fail);
                s.spawn(move || {
                    let mut devices = Vec::new();
                    for i in (w..n).step_by(workers) {
                        match enroll(
                            server,
                            &scratch.join(format!("r{i}")),
                            &format!("r{i}@pouch.local"),
                        ) {
                            Ok(d) => devices.push(d),
                            Err(e) => {
                                fail(e);
                                break;
                            }
                        }
                    }
                    phases.wait();
                    for _ in MAILS {
                        phases.wait();
                        for d in &mut devices {
                            let deadline = Instant::now() + std::time::Duration::from_secs(600);
                            let got = loop {
                                match d.sync_mail() {
                                    Ok(r) if !r.new_messages.is_empty() => break Ok(()),
                                    Ok(_) if Instant::now() > deadline => {
                                        break Err(anyhow!(
                                            "a recipient device did not get the circular within 10 minutes"
                                        ));
                                    }
                                    Ok(_) => {}
                                    Err(e) => break Err(e.into()),
                                }
                            };
                            if let Err(e) = got {
                                fail(e);
                                break;
                            }
                        }
                        phases.wait();
                    }
                });
            }
            let t = Instant::now();
            phases.wait();
            eprintln!(
                "enrolled {n} recipient devices in {:.0} s ({backend}, {workers} workers)",
                t.elapsed().as_secs_f64()
            );
            println!(
                "backend: {backend}; ciphersuite 0x{:04x}; one mail of {size} bytes to {n} recipients, each with one device; {workers} fetching workers",
                pouch_proto::DEFAULT_CIPHERSUITE
            );
            println!(
                "| mail | sent (s) | until every device has it (s) | queue rows | payloads stored | payload bytes stored (MiB) |"
            );
            println!("|---|---:|---:|---:|---:|---:|");
            let mut reply_to = None;
            for what in MAILS {
                let t = Instant::now();
                let sent = if failed.lock().expect("not poisoned").is_none() {
                    sender
                        .send(Compose {
                            to: to.clone(),
                            subject: format!("circular: {what}"),
                            body: body.clone(),
                            reply_to,
                            ..Default::default()
                        })
                        .map_err(anyhow::Error::from)
                } else {
                    Err(anyhow!("a worker failed"))
                };
                let sent_s = t.elapsed().as_secs_f64();
                // Before any device fetches (and acknowledges) it.
                let stored = rt.block_on(pouch_store_sql::testing::queue_storage(&database_url));
                match &sent {
                    Ok(sent) if sent.recipient_devices as usize != n => fail(anyhow!(
                        "the server queued the mail for {} devices, not {n}",
                        sent.recipient_devices
                    )),
                    Ok(sent) => reply_to = Some(sent.id),
                    Err(e) => fail(anyhow!("{e:#}")),
                }
                // The workers fetch (or, after a failure, only pass the phases).
                phases.wait();
                phases.wait();
                let all_s = t.elapsed().as_secs_f64();
                // Every phase is passed even after a failure, or the workers would wait.
                if failed.lock().expect("not poisoned").is_some() {
                    continue;
                }
                match stored {
                    Ok((rows, payloads, bytes)) => println!(
                        "| {what} | {sent_s:.2} | {all_s:.1} | {rows} | {payloads} | {:.2} |",
                        bytes as f64 / (1024.0 * 1024.0)
                    ),
                    Err(e) => fail(anyhow!("cannot read the queue's storage: {e}")),
                }
            }
            Ok(())
        })?;
        if let Some(e) = failed.into_inner().expect("not poisoned") {
            return Err(e);
        }
        Ok(())
    })();
    if let Some((_, drop)) = pg {
        rt.block_on(drop);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Cross-domain mail beside same-domain mail: two servers in this process
/// (`mfa-a.test` and `mfa-b.test`) federating on loopback, a sender at A
/// writing to a colleague at A and to a partner at B. For each: `messages`
/// replies in one conversation (sent, then read by the recipient: mails/s),
/// and `samples` single mails each timed from the send until the recipient
/// has it (the delivery latency; for B: A's server forwards to B's).
pub fn federation(messages: usize, size: usize, samples: usize) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("pouch-bench-fed-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let domains = ["mfa-a.test", "mfa-b.test"];
        let mut listens = Vec::new();
        for _ in domains {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            listens.push(l.local_addr()?.to_string());
        }
        let dirs: Vec<std::path::PathBuf> = domains.iter().map(|d| scratch.join(d)).collect();
        let cards = (0..2)
            .map(|i| federation_card(&dirs[i], domains[i], &listens[i]))
            .collect::<Result<Vec<_>>>()?;
        let servers = (0..2)
            .map(|i| {
                let partner = &cards[1 - i];
                start_server_as(
                    &dirs[i],
                    None,
                    domains[i],
                    pouch_server::config::FederationSettings {
                        listen: Some(listens[i].clone()),
                        peers: vec![pouch_server::config::PeerSettings {
                            domain: partner.domain.clone(),
                            url: partner.url.clone(),
                            tls_anchor: partner.tls_anchor.clone(),
                            log_key: partner.log_key.clone(),
                            witness_key: partner.witness_key.clone(),
                        }],
                        ..Default::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut sender = enroll(&servers[0], &scratch.join("sender"), "sender@mfa-a.test")?;
        let mut near = enroll(&servers[0], &scratch.join("near"), "near@mfa-a.test")?;
        let mut far = enroll(&servers[1], &scratch.join("far"), "far@mfa-b.test")?;
        // Usable once A's witness has cosigned B's log (a few seconds).
        let far_address = Address::parse("far@mfa-b.test")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while let Err(e) = sender.verify(&far_address) {
            if Instant::now() > deadline {
                bail!("mfa-b.test never became usable from mfa-a.test: {e}");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let body: String = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
            .chars()
            .cycle()
            .take(size)
            .collect();
        println!(
            "two servers in this process on SQLite, federating over loopback (mutual TLS); {messages} replies of {size} bytes, then {samples} single mails timed"
        );
        println!(
            "| recipient | new conversation (ms) | send (mails/s) | end to end (mails/s) | delivery latency median (ms) | p95 (ms) |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (label, address, reader) in [
            ("same domain (A to A)", "near@mfa-a.test", &mut near),
            ("other domain (A to B)", "far@mfa-b.test", &mut far),
        ] {
            let to = vec![Address::parse(address)?];
            let t0 = Instant::now();
            let first = sender.send(Compose {
                to: to.clone(),
                subject: format!("bench {label}"),
                body: body.clone(),
                ..Default::default()
            })?;
            let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
            until_received(reader, 1)?;
            let reply = |sender: &mut Device, i: usize| {
                sender.send(Compose {
                    to: to.clone(),
                    subject: format!("bench {label} #{i}"),
                    body: body.clone(),
                    reply_to: Some(first.id),
                    ..Default::default()
                })
            };
            let t_send = Instant::now();
            for i in 0..messages {
                reply(&mut sender, i)?;
            }
            let send_s = t_send.elapsed().as_secs_f64();
            until_received(reader, messages)?;
            let total_s = t_send.elapsed().as_secs_f64();
            let mut latencies = Vec::with_capacity(samples);
            for i in 0..samples {
                let t = Instant::now();
                reply(&mut sender, messages + i)?;
                until_received(reader, 1)?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            println!(
                "| {label} | {create_ms:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                messages as f64 / send_s,
                messages as f64 / total_s,
                at(0.5),
                at(0.95)
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Syncs `reader` until `n` new mails arrived (a minute at most).
fn until_received(reader: &mut Device, n: usize) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut got = 0;
    while got < n {
        got += reader.sync()?.new_messages.len();
        if got < n {
            if Instant::now() > deadline {
                bail!("{got} of {n} mails arrived within a minute");
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    if got > n {
        bail!("{got} mails arrived where {n} were sent");
    }
    Ok(())
}
