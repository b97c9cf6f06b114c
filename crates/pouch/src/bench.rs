//! `pouch bench`: mails per second through the whole path — compose, MLS
//! encrypt, HTTPS to a real server, database queues, fetch, MLS decrypt,
//! store — with a real server on loopback (SQLite or a scratch PostgreSQL
//! database) and real client devices in temporary directories.

use anyhow::{Context, Result, anyhow};
use pouch_client::{Compose, Device};
use pouch_proto::Address;
use pouch_proto::invite::Invite;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const PASSPHRASE: &str = "benchmark passphrase";

pub struct BenchArgs {
    pub postgres: Option<String>,
    pub recipients: Vec<usize>,
    pub messages: usize,
    pub size: usize,
}

struct Running {
    url: String,
    fingerprint: String,
    token: String,
    _rt: tokio::runtime::Runtime,
}

fn start_server(data_dir: &Path, database_url: Option<&str>) -> Result<Running> {
    std::fs::create_dir_all(data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (url, fingerprint, token) = rt.block_on(async {
        let store: Arc<dyn pouch_store::Store> = match database_url {
            Some(u) => Arc::new(pouch_store_sql::SqlStore::connect(u).await?),
            None => Arc::new(pouch_store_sql::SqlStore::open_sqlite(&data_dir.join("pouch.db")).await?),
        };
        let config = pouch_server::ServerConfig {
            data_dir: data_dir.to_path_buf(),
            domain: "pouch.local".into(),
            tls_cert: None,
            tls_key: None,
            ciphersuite: pouch_proto::DEFAULT_CIPHERSUITE,
        };
        let prepared = pouch_server::prepare(&config, store).await?;
        let token = std::fs::read_to_string(&prepared.admin_token_path)?.trim().to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("https://{}", listener.local_addr()?);
        let fingerprint = prepared.fingerprint.clone();
        tokio::spawn(async move {
            let _ = pouch_server::serve(&prepared, listener, std::future::pending()).await;
        });
        Ok::<_, anyhow::Error>((url, fingerprint, token))
    })?;
    Ok(Running { url, fingerprint, token, _rt: rt })
}

fn enroll(server: &Running, home: &Path, address: &str) -> Result<Device> {
    let api = pouch_client::net::Api::new(&server.url, &server.fingerprint)?;
    let address = Address::parse(address)?;
    let resp: pouch_proto::api::AddUserResponse = api.admin_post(
        "/v1/admin/users",
        &server.token,
        &pouch_proto::api::AddUserRequest { address: address.clone(), name: None, invite_ttl_secs: None },
    )?;
    let invite = Invite::new(&server.url, &server.fingerprint, address, &resp.invite_secret);
    Device::enroll(home, PASSPHRASE, &invite, "bench")?;
    Ok(Device::open(home, PASSPHRASE)?)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("pouch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pg = match &args.postgres {
        Some(base) => Some(
            rt.block_on(pouch_store_sql::testing::fresh_postgres_database(base, "bench"))
                .with_context(|| format!("cannot create a scratch database beside {base}"))?,
        ),
        None => None,
    };
    let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let result = (|| {
        let server = start_server(&scratch.join("server"), pg.as_ref().map(|(u, _)| u.as_str()))?;
        let max = *args.recipients.iter().max().ok_or_else(|| anyhow!("give at least one --recipients count"))?;
        eprintln!("enrolling 1 sender and {max} recipient devices ({backend})...");
        let mut sender = enroll(&server, &scratch.join("sender"), "sender@pouch.local")?;
        let mut recipients = Vec::with_capacity(max);
        for i in 0..max {
            recipients.push(enroll(&server, &scratch.join(format!("r{i}")), &format!("r{i}@pouch.local"))?);
        }
        let body: String = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".chars().cycle().take(args.size).collect();
        println!("backend: {backend}; ciphersuite 0x{:04x}; {} mails of {} bytes per round", pouch_proto::DEFAULT_CIPHERSUITE, args.messages, args.size);
        println!("| recipients | new conversation (ms) | send (mails/s) | fetch+decrypt (deliveries/s) | end to end (mails/s) |");
        println!("|---:|---:|---:|---:|---:|");
        for &r in &args.recipients {
            let to: Vec<Address> = (0..r).map(|i| Address::parse(&format!("r{i}@pouch.local")).unwrap()).collect();
            let t0 = Instant::now();
            let first = sender.send(Compose { to: to.clone(), subject: format!("bench {r}"), body: body.clone(), ..Default::default() })?;
            let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
            for d in recipients.iter_mut().take(r) {
                d.sync()?;
            }
            let t_send = Instant::now();
            for i in 0..args.messages {
                sender.send(Compose { to: to.clone(), subject: format!("bench {r} #{i}"), body: body.clone(), reply_to: Some(first.id), ..Default::default() })?;
            }
            let send_s = t_send.elapsed().as_secs_f64();
            let t_fetch = Instant::now();
            for d in recipients.iter_mut().take(r) {
                let report = d.sync()?;
                if report.new_messages.len() != args.messages {
                    return Err(anyhow!("a recipient received {} of {} mails", report.new_messages.len(), args.messages));
                }
            }
            let fetch_s = t_fetch.elapsed().as_secs_f64();
            let n = args.messages as f64;
            println!(
                "| {r} | {create_ms:.0} | {:.1} | {:.1} | {:.1} |",
                n / send_s,
                n * r as f64 / fetch_s,
                n / (send_s + fetch_s)
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
