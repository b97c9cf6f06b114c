//! The server's config file (`pouch server --config pouch.toml`, or
//! `pouch.toml` in the data directory when present): the server's settings
//! (`[server]`: every `pouch server` flag, under the flag's name with `_`
//! for `-`; a flag given on the command line wins) and its policy — event
//! retention, detection thresholds, where alerts go, the automatic responses.
//!
//! Every field has a default, so an empty file — or none — gives the
//! defaults the README documents. Unknown keys are refused, so a misspelt
//! threshold cannot silently stay at its default. Relative paths in the
//! file are relative to the file's own directory, so the file means the
//! same whichever directory the server is started from.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file: `[server]` and the policy's tables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub server: ServerSettings,
    pub events: EventsPolicy,
    pub detection: Thresholds,
    pub alerts: AlertOutputs,
    pub response: Response,
    pub federation: FederationSettings,
}

/// `[federation]`: this server's federation listener and its peers — other
/// ministries' Pouch servers, each added from its operator's card
/// (`pouch admin federation card`). Changes take a restart.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSettings {
    /// Where peers connect (mutual TLS), `HOST:PORT`. Without it the server
    /// does not federate.
    pub listen: Option<String>,
    /// How peers reach that listener, as the card says (`https://HOST:PORT`);
    /// by default `https://` and the address bound.
    pub url: Option<String>,
    /// Requests one peer may make per minute (a burst of as many, refilled
    /// steadily); more are answered 429. Default 600.
    pub peer_requests_per_minute: Option<u32>,
    pub peers: Vec<PeerSettings>,
}

/// One `[[federation.peers]]` entry: a partner's card, as printed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    pub domain: String,
    pub url: String,
    pub tls_anchor: String,
    pub log_key: String,
    pub witness_key: String,
}

/// `[server]`: the settings `pouch server` also takes as flags, each under
/// the flag's long name with `_` for `-` (`--max-queue-mib` is
/// `max_queue_mib`); flags that repeat take arrays. Absent means the flag's
/// default. The CLI merges these with the command line; the server itself
/// only ever sees the merged [`crate::ServerConfig`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub domain: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_name: Option<Vec<String>>,
    pub ciphersuite: Option<String>,
    pub rotation_hours: Option<f64>,
    pub link_ttl_secs: Option<u64>,
    pub token_ttl_secs: Option<u64>,
    pub max_queue_mib: Option<u64>,
    pub max_blob_mib: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub witness: Option<Vec<String>>,
    pub log_format: Option<String>,
}

/// The policy: what the server does with events and alerts.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub events: EventsPolicy,
    pub detection: Thresholds,
    pub alerts: AlertOutputs,
    pub response: Response,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsPolicy {
    /// Events older than this are deleted (the chain keeps its anchor).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for EventsPolicy {
    fn default() -> Self {
        EventsPolicy {
            retention: Duration::from_secs(400 * 86_400),
        }
    }
}

/// Detection thresholds. The defaults are what the benign-week simulation
/// (crates/pouch-server/tests/benign_week.rs) was run against.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// The sliding window the counting rules look at.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Failed enrollments or sign-ins from one source within the window.
    pub invite_failures: usize,
    /// Deliveries by one account the server refused within the window
    /// because a recipient was not cleared for the label.
    pub label_refusals: usize,
    /// Claims of one account's key packages by one device within the
    /// window that no Welcome followed (a client claims, then starts the
    /// conversation at once; half a pool of 100 unused is no client).
    pub key_package_claims: u64,
    /// Queue items one device may fetch within the window whatever its baseline.
    pub bulk_fetch_floor: u64,
    /// …and above this multiple of its busiest window over the baseline period.
    pub bulk_fetch_factor: u64,
    /// How far back a device's own baseline reaches.
    #[serde(with = "humantime_serde")]
    pub baseline: Duration,
    /// A device silent this long that signs in again is "dormant, waking".
    #[serde(with = "humantime_serde")]
    pub dormant_after: Duration,
    /// Returns of one device to an address it already used within the
    /// window (A→B→A is one, A→B→A→B two) that mean two copies take turns.
    /// Moving on (A→B→C) is a device changing networks, which is normal.
    pub cloned_address_returns: usize,
    /// Accounts of other domains one device may look up within the window
    /// (each lookup tells the partner's server which of its accounts were
    /// asked about): more is a scan of the partner's staff.
    pub remote_lookups: u64,
    /// Accounts of this server one federation peer may ask about within the
    /// window (its users writing to this ministry's): more is unusual volume.
    pub peer_lookups: u64,
    /// How often the stale-device and retention sweeps run.
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// How often the whole kept audit chain is re-verified: the longest an
    /// *edited* old event goes unnoticed (new events and deletions are
    /// checked every 2 s).
    #[serde(with = "humantime_serde")]
    pub chain_full_check: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            window: Duration::from_secs(600),
            invite_failures: 5,
            label_refusals: 3,
            key_package_claims: 50,
            bulk_fetch_floor: 2000,
            bulk_fetch_factor: 10,
            baseline: Duration::from_secs(14 * 86_400),
            dormant_after: Duration::from_secs(60 * 86_400),
            cloned_address_returns: 2,
            remote_lookups: 1000,
            peer_lookups: 20_000,
            sweep_every: Duration::from_secs(60),
            chain_full_check: Duration::from_secs(300),
        }
    }
}

impl Thresholds {
    pub fn window_secs(&self) -> i64 {
        self.window.as_secs().max(1) as i64
    }
}

/// Where alerts go besides the database (`pouch admin alerts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertOutputs {
    /// Appends one OCSF Detection Finding (JSON) per line.
    pub ocsf_file: Option<PathBuf>,
    /// `tcp://host:port` or `tls://host:port`: RFC 5424 messages, octet-counted (RFC 6587).
    pub syslog: Option<String>,
    /// The CA certificate (PEM) that signed the syslog server's certificate, for `tls://`.
    pub syslog_ca: Option<PathBuf>,
    /// `http://…` or `https://…`: each alert is POSTed as an OCSF Detection Finding.
    pub webhook: Option<String>,
    /// The CA certificate (PEM) for an `https://` webhook.
    pub webhook_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Response {
    /// Revoke a device (as an administrator would, in the transparency log)
    /// as soon as it is found in use by two copies.
    pub revoke_cloned_devices: bool,
}

/// A message with every "quoted" part replaced by "…".
fn without_quoted(msg: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in msg.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…\"");
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

impl ConfigFile {
    /// Reads a config file; a missing file at the default place means defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<ConfigFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(ConfigFile::default());
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut file: ConfigFile = toml::from_str(&text).map_err(|e| {
            // Without any quoted value (`invalid type: string "postgres://…"`).
            let msg = without_quoted(&e.message().replace('\n', " "));
            // Where: the line and its key — not its value, which may be a
            // database URL with a password.
            let at = e
                .span()
                .map(|span| {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("");
                    // Only a key: a line without '=' (a string's
                    // continuation) is named by its number alone.
                    let key: String = line
                        .split_once('=')
                        .map(|(k, _)| k.trim())
                        .filter(|k| {
                            k.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
                        })
                        .unwrap_or("")
                        .chars()
                        .take(64)
                        .collect();
                    format!(" line {line_no} ({key})")
                })
                .unwrap_or_default();
            format!(
                "{}{at}: {msg}; fix the file or remove the key to use its default",
                path.display()
            )
        })?;
        if let Some(s) = &file.alerts.syslog {
            if !(s.starts_with("tcp://") || s.starts_with("tls://")) {
                return Err(format!(
                    "{}: alerts.syslog must be tcp://HOST:PORT or tls://HOST:PORT (got {s})",
                    path.display()
                ));
            }
            if s.starts_with("tls://") && file.alerts.syslog_ca.is_none() {
                return Err(format!(
                    "{}: alerts.syslog uses tls:// — set alerts.syslog_ca to the CA certificate that signed the syslog server's",
                    path.display()
                ));
            }
        }
        if let Some(w) = &file.alerts.webhook
            && !(w.starts_with("http://") || w.starts_with("https://"))
        {
            return Err(format!(
                "{}: alerts.webhook must be an http:// or https:// URL (got {w})",
                path.display()
            ));
        }
        if let Some(format) = &file.server.log_format
            && !matches!(format.as_str(), "text" | "json")
        {
            return Err(format!(
                "{}: server.log_format must be \"text\" or \"json\" (got {format:?})",
                path.display()
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        file.resolve_paths(base);
        Ok(file)
    }

    /// Relative paths are the file's directory's.
    fn resolve_paths(&mut self, base: &Path) {
        let server = &mut self.server;
        for path in [
            &mut server.data_dir,
            &mut server.tls_cert,
            &mut server.tls_key,
            &mut server.tls_ca,
            &mut self.alerts.ocsf_file,
            &mut self.alerts.syslog_ca,
            &mut self.alerts.webhook_ca,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The policy part, for the server.
    pub fn policy(&self) -> Policy {
        Policy {
            events: self.events.clone(),
            detection: self.detection.clone(),
            alerts: self.alerts.clone(),
            response: self.response.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults_and_durations_read_as_people_write_them() {
        let p: ConfigFile = toml::from_str("").unwrap();
        assert_eq!(p.detection.window, Duration::from_secs(600));
        assert_eq!(p.events.retention, Duration::from_secs(400 * 86_400));
        let p: ConfigFile =
            toml::from_str("[detection]\ndormant_after = \"3s\"\nbulk_fetch_floor = 20\n").unwrap();
        assert_eq!(p.detection.dormant_after, Duration::from_secs(3));
        assert_eq!(p.detection.bulk_fetch_floor, 20);
        assert_eq!(p.detection.invite_failures, 5);
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("pouch-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pouch.toml");
        std::fs::write(&f, "[detection]\nbulk_fetch_flor = 3\n").unwrap();
        let e = ConfigFile::load(&f, true).unwrap_err();
        assert!(e.contains("bulk_fetch_flor"), "{e}");
        assert!(!e.contains('\n'));
        std::fs::write(&f, "[server]\ndatabase_url = postgres://u:secret@db/x\n").unwrap();
        let e = ConfigFile::load(&f, true).unwrap_err();
        assert!(e.contains("line 2 (database_url)"), "{e}");
        assert!(!e.contains("secret"), "no value in the error: {e}");
        std::fs::write(
            &f,
            "[server]\nmax_queue_mib = \"postgres://u:secret@db/x\"\n",
        )
        .unwrap();
        let e = ConfigFile::load(&f, true).unwrap_err();
        assert!(e.contains("max_queue_mib") && !e.contains("secret"), "{e}");
        std::fs::write(&f, "[alerts]\nsyslog = \"udp://x:514\"\n").unwrap();
        assert!(ConfigFile::load(&f, true).unwrap_err().contains("tcp://"));
        assert!(ConfigFile::load(&dir.join("absent.toml"), false).is_ok());
        assert!(ConfigFile::load(&dir.join("absent.toml"), true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
