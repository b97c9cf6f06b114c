//! Where alerts go besides the database: an OCSF JSON-lines file, syslog
//! (RFC 5424 over TCP, optionally TLS per RFC 5425, octet-counted framing per
//! RFC 6587) and a webhook. Each output has its own task and queue, so a
//! syslog server that is down delays nothing else; each retries in order
//! until it delivers. These copies live outside the database, so an intruder
//! who edits the database cannot unsay an alert that has left.

use crate::config::AlertOutputs;
use pouch_proto::api::Alert;
use pouch_proto::security::Severity;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The alert outputs a server was configured with.
#[derive(Default)]
pub struct Sinks {
    outputs: Vec<UnboundedSender<Alert>>,
}

impl Sinks {
    /// Starts one task per configured output. Needs a Tokio runtime.
    pub fn start(config: &AlertOutputs, origin: &str) -> Result<Sinks, String> {
        let mut sinks = Sinks::default();
        if let Some(path) = &config.ocsf_file {
            let (tx, rx) = unbounded_channel();
            tokio::spawn(ocsf_file(path.clone(), origin.to_string(), rx));
            sinks.outputs.push(tx);
        }
        if let Some(url) = &config.syslog {
            let target = SyslogTarget::parse(url, config.syslog_ca.as_deref())?;
            let (tx, rx) = unbounded_channel();
            tokio::spawn(syslog(target, origin.to_string(), rx));
            sinks.outputs.push(tx);
        }
        if let Some(url) = &config.webhook {
            let mut client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .use_rustls_tls();
            if let Some(ca) = &config.webhook_ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read alerts.webhook_ca {}: {e}", ca.display()))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| format!("alerts.webhook_ca {}: {e}", ca.display()))?;
                client = client.add_root_certificate(cert);
            }
            let client = client.build().map_err(|e| format!("alerts.webhook: {e}"))?;
            let (tx, rx) = unbounded_channel();
            tokio::spawn(webhook(client, url.clone(), origin.to_string(), rx));
            sinks.outputs.push(tx);
        }
        Ok(sinks)
    }

    /// Hands an alert to every output; never blocks.
    pub fn send(&self, alert: &Alert) {
        for out in &self.outputs {
            let _ = out.send(alert.clone());
        }
    }
}

/// Retries `attempt` with a growing pause until it succeeds; logs each failure once.
async fn deliver<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(output = what, error = %e, "cannot deliver an alert; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn ocsf_file(path: PathBuf, origin: String, mut rx: UnboundedReceiver<Alert>) {
    while let Some(alert) = rx.recv().await {
        let mut line = pouch_proto::ocsf::finding(&alert, &origin).to_string();
        line.push('\n');
        deliver("ocsf_file", || async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            f.sync_data().await.map_err(|e| e.to_string())
        })
        .await;
    }
}

struct SyslogTarget {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl SyslogTarget {
    fn parse(url: &str, ca: Option<&std::path::Path>) -> Result<SyslogTarget, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("tls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else {
            return Err(format!(
                "alerts.syslog: {url} is not tcp://HOST:PORT or tls://HOST:PORT"
            ));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("alerts.syslog: {url} has no HOST:PORT"))?;
        let tls = if tls {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let ca = ca.ok_or("alerts.syslog uses tls:// but alerts.syslog_ca is not set")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("alerts.syslog_ca {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("alerts.syslog_ca {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("alerts.syslog_ca {}: {e}", ca.display()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(SyslogTarget { host, port, tls })
    }

    async fn connect(&self) -> Result<Box<dyn tokio::io::AsyncWrite + Send + Unpin>, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("syslog {}:{}: connection timed out", self.host, self.port))?
        .map_err(|e| format!("syslog {}:{}: {e}", self.host, self.port))?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("syslog host {}: {e}", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("syslog {}:{} TLS: {e}", self.host, self.port))?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// RFC 5424 severity for a Pouch severity (facility 10, security/authorization).
fn syslog_pri(severity: Severity) -> u8 {
    let level = match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    };
    10 * 8 + level
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// One alert as an RFC 5424 message. The structured data uses the
/// documentation enterprise number 32473 (RFC 5612) until Pouch has its own.
pub fn rfc5424(alert: &Alert, hostname: &str) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp(alert.at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    let printable = |s: &str, max: usize| -> String {
        let s: String = s
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(max)
            .collect();
        if s.is_empty() { "-".into() } else { s }
    };
    let mut sd = format!(
        "[pouch@32473 alert_id=\"{}\" rule=\"{}\" severity=\"{}\"",
        alert.id,
        sd_escape(alert.rule.as_str()),
        sd_escape(alert.severity.as_str())
    );
    if let Some(a) = &alert.account {
        sd.push_str(&format!(" account=\"{}\"", sd_escape(a.as_str())));
    }
    if let Some(d) = &alert.device {
        sd.push_str(&format!(" device=\"{}\"", sd_escape(&d.0)));
    }
    sd.push(']');
    format!(
        "<{}>1 {time} {} pouch {} {} {sd} {}",
        syslog_pri(alert.severity),
        printable(hostname, 255),
        std::process::id(),
        printable(alert.rule.as_str(), 32),
        alert.summary.replace(['\n', '\r'], " ")
    )
}

async fn syslog(target: SyslogTarget, hostname: String, mut rx: UnboundedReceiver<Alert>) {
    let mut conn: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    while let Some(alert) = rx.recv().await {
        let msg = rfc5424(&alert, &hostname);
        let frame = format!("{} {msg}", msg.len());
        let mut pause = Duration::from_millis(250);
        loop {
            if conn.is_none() {
                match target.connect().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::error!(output = "syslog", error = %e, "cannot deliver an alert; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let sent = async {
                c.write_all(frame.as_bytes()).await?;
                c.flush().await
            }
            .await;
            match sent {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(output = "syslog", error = %e, "connection lost; reconnecting");
                    conn = None;
                }
            }
        }
    }
}

async fn webhook(
    client: reqwest::Client,
    url: String,
    origin: String,
    mut rx: UnboundedReceiver<Alert>,
) {
    while let Some(alert) = rx.recv().await {
        let body = pouch_proto::ocsf::finding(&alert, &origin);
        deliver("webhook", || async {
            let r = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("the webhook answered {}", r.status()))
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rfc5424_line_has_the_header_and_escaped_structured_data() {
        let alert = Alert {
            id: 7,
            at: 1_700_000_000,
            rule: pouch_proto::security::Rule::ClonedDevice,
            severity: Severity::High,
            account: None,
            device: Some(pouch_proto::DeviceId("d\"1]".into())),
            summary: "two\ncopies".into(),
            event_seq: None,
        };
        let line = rfc5424(&alert, "pouch.example");
        assert!(
            line.starts_with("<83>1 2023-11-14T22:13:20Z pouch.example pouch "),
            "{line}"
        );
        assert!(
            line.contains(" cloned_device [pouch@32473 alert_id=\"7\""),
            "{line}"
        );
        assert!(line.contains("device=\"d\\\"1\\]\"]"), "{line}");
        assert!(line.ends_with(" two copies"), "{line}");
    }
}
