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
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub log_size: u64,
    pub events_lost: u64,
    pub devices_waiting: usize,
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
        let gauges = [
            (
                "pouch_log_entries",
                "Entries in the transparency log.",
                g.log_size as f64,
            ),
            (
                "pouch_events_lost",
                "Access events the database refused since logging last worked.",
                g.events_lost as f64,
            ),
            (
                "pouch_devices_waiting",
                "Devices waiting for mail on a long poll.",
                g.devices_waiting as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
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
