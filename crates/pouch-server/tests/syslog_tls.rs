//! Alerts to syslog over TLS (RFC 5425): the server verifies the collector's
//! certificate against the CA it was given and sends octet-counted RFC 5424
//! messages; a collector with a certificate from another CA gets nothing.

use pouch_proto::api::Alert;
use pouch_server::config::AlertOutputs;
use pouch_server::sinks::Sinks;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A TLS syslog collector on loopback with a certificate for "localhost"
/// signed by a fresh CA; returns its port, the CA's PEM and what it receives.
async fn collector() -> (u16, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tls.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Octet counting: "LEN SP MSG".
                    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        let _ = tx.send(msg);
                    }
                }
            });
        }
    });
    (port, ca.pem(), rx)
}

fn alert(rule: &str) -> Alert {
    Alert {
        id: 41,
        at: 1_767_571_200,
        rule: pouch_proto::security::Rule::parse(rule),
        severity: pouch_proto::security::Severity::Critical,
        account: Some(pouch_proto::Address::parse("ambassador@mfa.example").unwrap()),
        device: None,
        summary: "event 2 is missing".into(),
        event_seq: None,
    }
}

#[tokio::test]
async fn alerts_reach_a_tls_syslog_collector_that_the_configured_ca_vouches_for() {
    let dir = std::env::temp_dir().join(format!("pouch-syslog-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, ca_pem, mut received) = collector().await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let sinks = Sinks::start(
        &AlertOutputs {
            syslog: Some(format!("tls://localhost:{port}")),
            syslog_ca: Some(ca_file),
            ..Default::default()
        },
        "mfa.example",
    )
    .unwrap();
    sinks.send(&alert("audit_chain_broken"));
    sinks.send(&alert("event_logging_interrupted"));
    for rule in ["audit_chain_broken", "event_logging_interrupted"] {
        let msg = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("a message within 5 s")
            .unwrap();
        // PRI 82 = facility 10 (security/authorization) × 8 + severity 2 (critical).
        assert!(
            msg.starts_with("<82>1 2026-01-05T00:00:00Z mfa.example pouch "),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                " {rule} [pouch@32473 alert_id=\"41\" rule=\"{rule}\""
            )),
            "{msg}"
        );
        assert!(msg.contains("account=\"ambassador@mfa.example\""), "{msg}");
        assert!(msg.ends_with("] event 2 is missing"), "{msg}");
    }

    // A collector whose certificate another CA signed is not trusted: nothing reaches it.
    let (other_port, _, mut other_received) = collector().await;
    let sinks = Sinks::start(
        &AlertOutputs {
            syslog: Some(format!("tls://localhost:{other_port}")),
            syslog_ca: Some(dir.join("ca.pem")),
            ..Default::default()
        },
        "mfa.example",
    )
    .unwrap();
    sinks.send(&alert("audit_chain_broken"));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), other_received.recv())
            .await
            .is_err(),
        "an untrusted collector received an alert"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
