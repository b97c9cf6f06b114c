//! A benign simulated week: a ministry's mailboxes — headquarters and
//! embassies, laptops, phones and office desktops — doing nothing wrong:
//! syncing through the working day, mail in and out, new conversations,
//! devices linked with approval and old ones retired, people travelling and
//! phones hopping between Wi-Fi and mobile networks, laptops left off over
//! the weekend, a newcomer fumbling an expired invite. Every event goes
//! through the server's real recording and rules (`events::record`) into a
//! real SQLite store, at the default thresholds, with simulated timestamps.
//!
//! Everything here is benign, so every alert of medium severity or above is
//! a false alert. The budget is 1 per 1,000 mailboxes per day; the test
//! prints the count, per rule, with the notices (low) beside it.

use pouch_proto::security::{Action, Reason, Severity};
use pouch_proto::{Address, DeviceId};
use pouch_server::events::{Ev, record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const MAILBOXES: usize = 60;
const DAYS: i64 = 7;
/// Monday 2026-01-05 00:00 UTC.
const START: i64 = 1_767_571_200;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Laptop,
    Phone,
    Desktop,
}

struct Device {
    id: DeviceId,
    kind: Kind,
    /// Items waiting in its queue.
    pending: u64,
    /// Where it is now.
    source: String,
    /// Minutes between its syncs while in use.
    every: i64,
    next_sync: i64,
    signed_in_until: i64,
    retired: bool,
}

struct Mailbox {
    address: Address,
    office: String,
    home: String,
    carrier: usize,
    devices: Vec<Device>,
    /// Travelling until this time, from this network.
    travel: Option<(i64, String)>,
}

fn working(t: i64) -> bool {
    let day = (t - START).div_euclid(86_400);
    let hour = (t - START).rem_euclid(86_400) / 3600;
    day % 7 < 5 && (7..19).contains(&hour)
}

fn awake(t: i64) -> bool {
    let hour = (t - START).rem_euclid(86_400) / 3600;
    (7..23).contains(&hour)
}

fn new_device(rng: &mut StdRng, n: usize, kind: Kind, source: &str) -> Device {
    Device {
        id: DeviceId(format!("{:032x}", rng.r#gen::<u128>() ^ n as u128)),
        kind,
        pending: 0,
        source: source.to_string(),
        every: match kind {
            Kind::Phone => rng.gen_range(2..6),
            _ => rng.gen_range(5..15),
        },
        next_sync: START + rng.gen_range(0..600),
        signed_in_until: 0,
        retired: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benign_week_raises_at_most_one_false_alert_per_thousand_mailboxes_a_day() {
    // Durability is not what is measured: on a RAM disk when there is one.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("pouch-benign-week-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn pouch_store::Store> = Arc::new(
        pouch_store_sql::SqlStore::open_sqlite(&dir.join("pouch.db"))
            .await
            .unwrap(),
    );
    let config = pouch_server::ServerConfig {
        data_dir: dir.clone(),
        domain: "mfa.example".into(),
        tls: Default::default(),
        ciphersuite: pouch_proto::DEFAULT_CIPHERSUITE,
        rotation_secs: 24 * 3600,
        link_ttl_secs: 600,
        token_ttl_secs: pouch_server::TOKEN_TTL_SECS,
        connections: Default::default(),
        limits: Default::default(),
        witnesses: Vec::new(),
        policy: Default::default(),
        federation: Default::default(),
    };
    let prepared = pouch_server::prepare(&config, store.clone()).await.unwrap();
    let s = prepared.state.clone();

    let mut rng = StdRng::seed_from_u64(20261130);
    // Headquarters and nine embassies, each behind its own address; a few mobile carriers.
    let offices: Vec<String> = (0..10).map(|i| format!("198.51.100.{}", 10 + i)).collect();
    let carrier_pool = |c: usize, rng: &mut StdRng| {
        format!(
            "100.{}.{}.{}",
            64 + c,
            rng.gen_range(0..4),
            rng.gen_range(1..250)
        )
    };
    let mut boxes: Vec<Mailbox> = (0..MAILBOXES)
        .map(|i| {
            let office = offices[if i < MAILBOXES / 2 { 0 } else { 1 + i % 9 }].clone();
            let home = format!("203.0.113.{}", i % 250 + 1);
            let carrier = i % 3;
            let mut devices = vec![new_device(&mut rng, i, Kind::Laptop, &office)];
            if rng.gen_bool(0.7) {
                let src = carrier_pool(carrier, &mut rng);
                devices.push(new_device(&mut rng, i, Kind::Phone, &src));
            }
            if rng.gen_bool(0.3) {
                devices.push(new_device(&mut rng, i, Kind::Desktop, &office));
            }
            Mailbox {
                address: Address::parse(&format!("staff{i}@mfa.example")).unwrap(),
                office,
                home,
                carrier,
                devices,
                travel: None,
            }
        })
        .collect();

    // Enrollment of every existing device happened before the week (outside the window).
    let before = START - 30 * 86_400;
    for b in &boxes {
        for (n, d) in b.devices.iter().enumerate() {
            let action = if n == 0 {
                Action::Enroll
            } else {
                Action::LinkApproved
            };
            record(
                &s,
                Ev::new(action)
                    .at(before)
                    .account(&b.address)
                    .device(&d.id)
                    .source(&d.source),
            )
            .await;
            record(
                &s,
                Ev::new(Action::SignIn)
                    .at(before + 60)
                    .account(&b.address)
                    .device(&d.id)
                    .source(&d.source),
            )
            .await;
        }
    }

    let mut events = 0u64;
    let mut t = START;
    let end = START + DAYS * 86_400;
    while t < end {
        // Each minute: mail written, devices moving and syncing.
        for i in 0..boxes.len() {
            let (writes, new_thread) = if working(t) {
                (rng.gen_bool(30.0 / 720.0), rng.gen_bool(0.3))
            } else if awake(t) {
                (rng.gen_bool(4.0 / 960.0), rng.gen_bool(0.3))
            } else {
                (false, false)
            };
            if writes {
                let n = rng.gen_range(1..=4);
                let to: Vec<usize> = (0..n)
                    .map(|_| rng.gen_range(0..boxes.len()))
                    .filter(|&j| j != i)
                    .collect();
                if new_thread && !to.is_empty() {
                    let sender = boxes[i]
                        .devices
                        .iter()
                        .find(|d| !d.retired)
                        .map(|d| (d.id.clone(), d.source.clone()));
                    if let Some((dev, src)) = sender {
                        let names: Vec<String> =
                            to.iter().map(|&j| boxes[j].address.to_string()).collect();
                        record(
                            &s,
                            Ev::new(Action::KeyPackageClaim)
                                .at(t)
                                .account(&boxes[i].address)
                                .device(&dev)
                                .source(&src)
                                .amount(to.len() as u64, 0)
                                .targets(to.iter().map(|&j| boxes[j].address.clone()))
                                .detail(format!("for {}", names.join(","))),
                        )
                        .await;
                        events += 1;
                    }
                }
                for j in to.into_iter().chain(std::iter::once(i)) {
                    for d in boxes[j].devices.iter_mut().filter(|d| !d.retired) {
                        d.pending += 1;
                    }
                }
            }
            let b = &mut boxes[i];
            // Travel: a trip of 2–4 days from a hotel network, now and then.
            if b.travel.is_none() && t % 86_400 == START % 86_400 + 6 * 3600 && rng.gen_bool(0.04) {
                b.travel = Some((
                    t + rng.gen_range(2..=4) * 86_400,
                    format!("192.0.2.{}", rng.gen_range(1..250)),
                ));
            }
            if b.travel.as_ref().is_some_and(|(until, _)| *until <= t) {
                b.travel = None;
            }
            for d in b.devices.iter_mut().filter(|d| !d.retired) {
                // Where the device is this minute.
                let hour = (t - START).rem_euclid(86_400) / 3600;
                let at_work = working(t) && (9..18).contains(&hour);
                let want = match (&b.travel, d.kind) {
                    (_, Kind::Desktop) => b.office.clone(),
                    (Some((_, hotel)), Kind::Laptop) => hotel.clone(),
                    (Some((_, hotel)), Kind::Phone) => {
                        if rng.gen_bool(0.02) {
                            carrier_pool(b.carrier, &mut rng)
                        } else if d.source.starts_with("100.") {
                            d.source.clone()
                        } else {
                            hotel.clone()
                        }
                    }
                    (None, Kind::Laptop) => {
                        if at_work {
                            b.office.clone()
                        } else {
                            b.home.clone()
                        }
                    }
                    (None, Kind::Phone) => {
                        // Wi-Fi at work or at home, mobile in between; now and
                        // then the phone drops to mobile and back.
                        let wifi = if at_work {
                            b.office.clone()
                        } else {
                            b.home.clone()
                        };
                        if rng.gen_bool(0.015) {
                            if d.source.starts_with("100.") {
                                wifi
                            } else {
                                carrier_pool(b.carrier, &mut rng)
                            }
                        } else if (hour == 8 || hour == 18) && rng.gen_bool(0.05) {
                            carrier_pool(b.carrier, &mut rng)
                        } else {
                            d.source.clone()
                        }
                    }
                };
                d.source = want;
                let in_use = match d.kind {
                    Kind::Desktop => working(t),
                    Kind::Laptop => awake(t) && (working(t) || rng.gen_bool(0.3)),
                    Kind::Phone => awake(t),
                };
                // Laptops of some people stay shut all weekend.
                let weekend = (t - START).div_euclid(86_400) % 7 >= 5;
                if !in_use || (weekend && d.kind == Kind::Laptop && i % 3 == 0) {
                    d.signed_in_until = 0;
                    continue;
                }
                if t < d.next_sync {
                    continue;
                }
                d.next_sync = t + d.every * 60;
                // A running client (the bridge, the phone app) signs in when it
                // starts and when its hour-long token runs out, and polls between.
                if t >= d.signed_in_until {
                    d.signed_in_until = t + 3600;
                    record(
                        &s,
                        Ev::new(Action::SignIn)
                            .at(t)
                            .account(&b.address)
                            .device(&d.id)
                            .source(&d.source),
                    )
                    .await;
                    events += 1;
                }
                if d.pending > 0 {
                    let n = d.pending;
                    d.pending = 0;
                    record(
                        &s,
                        Ev::new(Action::QueueFetch)
                            .at(t + 1)
                            .account(&b.address)
                            .device(&d.id)
                            .source(&d.source)
                            .amount(n, n * 6000),
                    )
                    .await;
                    events += 1;
                }
            }
            // Devices coming and going, always with approval: about 2 % of people a day.
            if working(t) && rng.gen_bool(0.02 / 720.0) {
                let src = b.office.clone();
                let fresh = new_device(&mut rng, i, Kind::Laptop, &src);
                record(
                    &s,
                    Ev::new(Action::LinkRequest)
                        .at(t)
                        .account(&b.address)
                        .source(&src)
                        .detail("device name 'new-laptop'"),
                )
                .await;
                if rng.gen_bool(0.1) {
                    // Abandoned half-way: it expires.
                    record(
                        &s,
                        Ev::new(Action::LinkExpired)
                            .at(t + 600)
                            .account(&b.address)
                            .device(&fresh.id)
                            .source(&src),
                    )
                    .await;
                } else {
                    record(
                        &s,
                        Ev::new(Action::LinkApproved)
                            .at(t + 60)
                            .account(&b.address)
                            .device(&fresh.id)
                            .detail("approved by the laptop"),
                    )
                    .await;
                    // The old laptop is retired.
                    if let Some(old) = b
                        .devices
                        .iter_mut()
                        .find(|d| d.kind == Kind::Laptop && !d.retired)
                    {
                        old.retired = true;
                        record(
                            &s,
                            Ev::new(Action::DeviceRevoked)
                                .at(t + 120)
                                .account(&b.address)
                                .device(&old.id)
                                .detail("revoked by the new laptop"),
                        )
                        .await;
                    }
                    b.devices.push(fresh);
                }
                events += 3;
            }
        }
        // A newcomer tries an expired invite a few times, from the office.
        if t == START + 2 * 86_400 + 10 * 3600 {
            for k in 0..3 {
                record(
                    &s,
                    Ev::new(Action::Enroll)
                        .at(t + k * 30)
                        .source(&offices[3])
                        .account(&Address::parse("newcomer@mfa.example").unwrap())
                        .failed(
                            Reason::InviteExpired,
                            "the invite has expired: ask your administrator for a new one",
                        ),
                )
                .await;
            }
        }
        t += 60;
    }

    // Every alert, page by page (one call returns at most 1,000), once the
    // rules have seen every event.
    pouch_server::events::settled(&s).await;
    let mut alerts = Vec::new();
    loop {
        let after = alerts
            .last()
            .map(|a: &pouch_proto::api::Alert| a.id)
            .unwrap_or(0);
        let page = s.store.alerts(after, None).await.unwrap();
        if page.is_empty() {
            break;
        }
        alerts.extend(page);
    }
    let mut by_rule: BTreeMap<(Severity, String), u64> = BTreeMap::new();
    for a in &alerts {
        *by_rule.entry((a.severity, a.rule.to_string())).or_default() += 1;
    }
    let false_alerts: Vec<_> = alerts.iter().filter(|a| a.severity.is_alert()).collect();
    let mailbox_days = (MAILBOXES as i64 * DAYS) as f64;
    let rate = false_alerts.len() as f64 * 1000.0 / mailbox_days;
    println!(
        "benign week: {MAILBOXES} mailboxes x {DAYS} days, {events} events; {} false alerts (medium or above) = {rate:.2} per 1,000 mailboxes per day (budget 1)",
        false_alerts.len()
    );
    // What the sample can show: the 95 % upper bound of a Poisson rate with
    // k events observed (exact for k <= 2, the usual approximation above).
    let k = false_alerts.len() as f64;
    let upper_events = match false_alerts.len() {
        0 => 3.0,
        1 => 4.74,
        2 => 6.30,
        _ => k + 1.96 * k.sqrt() + 2.0,
    };
    println!(
        "  with {mailbox_days} mailbox-days, the true rate is below {:.2} per 1,000 mailboxes per day at 95 % confidence; {:.0} mailbox-days without a false alert would show the budget of 1",
        upper_events * 1000.0 / mailbox_days,
        3.0 * 1000.0
    );
    for ((severity, rule), n) in &by_rule {
        println!("  {severity:>8} {rule:<22} {n}");
    }
    for a in &false_alerts {
        println!("  false alert: {} {}: {}", a.severity, a.rule, a.summary);
    }
    assert!(
        events > 30_000,
        "the week was too quiet to mean anything: {events} events"
    );
    assert!(rate <= 1.0, "{} false alerts", false_alerts.len());
    // The notices are there (travel shows as new networks): the rules ran.
    assert!(
        by_rule.keys().any(|(_, r)| r == "new_network"),
        "{by_rule:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
