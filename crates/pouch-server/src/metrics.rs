//! Prometheus metrics for `GET /metrics` (text exposition format 0.0.4),
//! behind the administrator's token: what an operator graphs and alerts on
//! without reading the database.
//!
//! Counters live in memory from start-up (a restart resets them, as
//! Prometheus expects of counters); gauges are read when scraped. Nothing
//! here names an account, a device or a conversation: labels are routes,
//! status codes and severities only, so a scrape reveals no metadata the
//! server's log would not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counters the server keeps while it runs.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by route pattern (`/v1/groups/{id}/messages`,
    /// never the path itself) and status code.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Alerts raised, by severity.
    alerts: Mutex<BTreeMap<String, u64>>,
    /// Seconds from a queue item being accepted to its device acknowledging it.
    delivery: Mutex<Histogram>,
}

/// Upper bounds (seconds) of the delivery-latency buckets: from a mail
/// fetched at once to a laptop back from a week's mission. Queue times are
/// kept to the second, so the first bucket holds "within the second".
const DELIVERY_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound of `DELIVERY_BUCKETS` (not cumulative).
    counts: [u64; DELIVERY_BUCKETS.len()],
    /// …and above the last.
    over: u64,
    sum: f64,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub log_size: u64,
    pub events_lost: u64,
    /// Devices holding a wait for new mail open: only the bridge waits, so
    /// this is the bridges connected now.
    pub bridge_sessions: usize,
    pub queue: pouch_store::QueueDepth,
    pub now: pouch_store::UnixTime,
    /// Size of the stored checkpoint, and each configured witness (by name)
    /// with the time of its valid cosignature on it, if it has one.
    pub checkpoint_size: u64,
    pub witnesses: Vec<(String, Option<u64>)>,
    /// Federation peers as this node sees them (empty without federation).
    pub peers: Vec<pouch_proto::api::PeerStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub fn count_alert(&self, severity: &str) {
        *lock(&self.alerts).entry(severity.to_string()).or_default() += 1;
    }

    pub fn observe_delivery(&self, seconds: u64) {
        let mut h = lock(&self.delivery);
        let seconds = seconds as f64;
        h.sum += seconds;
        match DELIVERY_BUCKETS.iter().position(|&bound| seconds <= bound) {
            Some(i) => h.counts[i] += 1,
            None => h.over += 1,
        }
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP pouch_http_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE pouch_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "pouch_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP pouch_alerts_raised_total Alerts raised by the detection rules, by severity.\n",
        );
        out.push_str("# TYPE pouch_alerts_raised_total counter\n");
        for (severity, n) in lock(&self.alerts).iter() {
            let _ = writeln!(
                out,
                "pouch_alerts_raised_total{{severity=\"{}\"}} {n}",
                escape(severity)
            );
        }
        {
            let h = lock(&self.delivery);
            out.push_str(
                "# HELP pouch_delivery_seconds From a mail or key change being queued for a device to that device acknowledging it.\n",
            );
            out.push_str("# TYPE pouch_delivery_seconds histogram\n");
            let mut cumulative = 0;
            for (bound, n) in DELIVERY_BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "pouch_delivery_seconds_bucket{{le=\"{bound:?}\"}} {cumulative}"
                );
            }
            cumulative += h.over;
            let _ = writeln!(
                out,
                "pouch_delivery_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "pouch_delivery_seconds_sum {:?}", h.sum);
            let _ = writeln!(out, "pouch_delivery_seconds_count {cumulative}");
        }
        let oldest_age = g.queue.oldest.map_or(0, |t| (g.now - t).max(0));
        let gauges = [
            (
                "pouch_log_entries",
                "Entries in the transparency log.",
                g.log_size as f64,
            ),
            (
                "pouch_checkpoint_size",
                "Entries covered by the newest signed checkpoint.",
                g.checkpoint_size as f64,
            ),
            (
                "pouch_events_lost",
                "Access events the database refused since logging last worked.",
                g.events_lost as f64,
            ),
            (
                "pouch_bridge_sessions",
                "Bridges connected: devices holding a wait for new mail open (only the bridge waits).",
                g.bridge_sessions as f64,
            ),
            (
                "pouch_queue_items",
                "Mail and key changes waiting in device queues, all devices together.",
                g.queue.items as f64,
            ),
            (
                "pouch_queue_bytes",
                "Bytes waiting in device queues (encrypted payloads), all devices together.",
                g.queue.bytes as f64,
            ),
            (
                "pouch_queue_oldest_seconds",
                "Age of the oldest item waiting in any device queue (0: none waits).",
                oldest_age as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out.push_str("# HELP pouch_witness_cosigned Whether the newest checkpoint carries this witness's valid cosignature (1) or not yet (0).\n");
        out.push_str("# TYPE pouch_witness_cosigned gauge\n");
        for (name, at) in &g.witnesses {
            let _ = writeln!(
                out,
                "pouch_witness_cosigned{{witness=\"{}\"}} {}",
                escape(name),
                u8::from(at.is_some())
            );
        }
        out.push_str("# HELP pouch_witness_cosignature_age_seconds Age of this witness's cosignature on the newest checkpoint.\n");
        out.push_str("# TYPE pouch_witness_cosignature_age_seconds gauge\n");
        for (name, at) in &g.witnesses {
            if let Some(at) = at {
                let _ = writeln!(
                    out,
                    "pouch_witness_cosignature_age_seconds{{witness=\"{}\"}} {}",
                    escape(name),
                    (g.now - *at as i64).max(0)
                );
            }
        }
        let peer_gauge =
            |out: &mut String,
             name: &str,
             help: &str,
             value: &dyn Fn(&pouch_proto::api::PeerStatus) -> Option<u64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for p in &g.peers {
                    if let Some(v) = value(p) {
                        let _ = writeln!(out, "{name}{{peer=\"{}\"}} {v}", escape(&p.domain));
                    }
                }
            };
        peer_gauge(
            &mut out,
            "pouch_federation_peer_up",
            "Whether the federation peer's last exchange worked (1) or failed (0).",
            &|p| {
                Some(u64::from(
                    p.last_contact.is_some() && p.last_error.is_none(),
                ))
            },
        );
        peer_gauge(
            &mut out,
            "pouch_federation_peer_cosigned_age_seconds",
            "How long ago this server's witness last cosigned the peer's log.",
            &|p| p.cosigned_age_secs,
        );
        peer_gauge(
            &mut out,
            "pouch_federation_outbox_items",
            "Items of conversations hosted here waiting to be forwarded to the peer.",
            &|p| Some(p.outbox_items),
        );
        peer_gauge(
            &mut out,
            "pouch_federation_outbox_oldest_seconds",
            "How long the oldest item for the peer has waited.",
            &|p| Some(p.outbox_oldest_secs.unwrap_or(0)),
        );
        out
    }
}

/// A label value as the format wants it (backslash, quote, newline escaped).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
