//! HTTPS to the Pouch server, trusting only the anchor from the invite.
//!
//! The usual web PKI plays no part: a ministry's server is trusted because
//! the invite named its trust anchor (the SHA-256 of a CA certificate), not
//! because a public CA says so. The server sends that anchor at the end of
//! its chain; the client finds it there by its fingerprint and accepts the
//! serving certificate only if it chains to it, is within its dates and
//! names the host connected to (rustls's own WebPKI checks, with the one
//! anchor as the only root). So the server can renew its certificate
//! freely, and a certificate from any other CA is refused.
//!
//! A fingerprint that names the serving certificate itself (devices
//! enrolled before anchors; a server given a certificate without its CA) is
//! still accepted as an exact pin.
//!
//! **A change of anchor** is accepted only when the old anchor endorses the
//! new one: the server sends, after the new anchor, a cross-certificate (the
//! new anchor's name and key, issued by the old anchor) and the old anchor.
//! The chain then verifies under the old anchor through the
//! cross-certificate, and the new anchor — the certificate in the chain with
//! the cross-certificate's name and key, under which the serving certificate
//! verifies directly — becomes the [`Api::endorsed_successor`], which the
//! device then pins in place of the old. Any other new anchor is refused
//! until the user accepts it by its fingerprint (`pouch trust-anchor
//! accept`), after comparing it with what the operator announced.

use crate::error::{ClientError, Result};
use pouch_proto::DeviceId;
use pouch_proto::api::{self, ErrorBody, ErrorCode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Marks the verifier's refusals, so that they reach the user as
/// [`ClientError::UntrustedCertificate`] with their reason.
const REFUSED: &str = "pouch refused the certificate: ";

const NOT_FROM_ANCHOR: &str = "the server's TLS certificate is not issued by the trust anchor from your invite; refusing to talk to it (if the server's CA really changed, ask your administrator)";

#[derive(Debug)]
struct AnchoredCertificate {
    /// SHA-256 of the anchor certificate (or of a pinned serving certificate).
    anchor_sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// SHA-256 of a new anchor the pinned one endorsed, once seen.
    successor: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl AnchoredCertificate {
    fn is_anchor(&self, cert: &CertificateDer<'_>) -> bool {
        bool::from(
            Sha256::digest(cert.as_ref())
                .as_slice()
                .ct_eq(&self.anchor_sha256),
        )
    }

    fn refuse(reason: String) -> rustls::Error {
        rustls::Error::General(format!("{REFUSED}{reason}"))
    }
}

impl AnchoredCertificate {
    /// The new anchor among `others` that the pinned anchor endorsed (the
    /// chain already verified under the pinned anchor): a certificate with
    /// the same name and key as another one in the chain (the
    /// cross-certificate), under which the serving certificate verifies on
    /// its own. An intermediate CA of an ordinary chain has no such twin.
    fn endorsed_successor(
        &self,
        pinned: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        others: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Option<Vec<u8>> {
        // (subject, issuer, key) of a certificate.
        let names = |c: &CertificateDer<'_>| {
            let parsed = webpki::EndEntityCert::try_from(c).ok()?;
            Some((
                parsed.subject().to_vec(),
                parsed.issuer().to_vec(),
                parsed.subject_public_key_info().as_ref().to_vec(),
            ))
        };
        let (pinned_subject, _, _) = names(pinned)?;
        for candidate in others {
            // A new anchor: self-issued (an intermediate of an ordinary,
            // even cross-signed, chain is not)…
            let Some((subject, issuer, key)) = names(candidate) else {
                continue;
            };
            if subject != issuer {
                continue;
            }
            // …whose name and key the pinned anchor issued (the
            // cross-certificate)…
            let endorsed = others.iter().any(|o| {
                o != candidate
                    && names(o)
                        .is_some_and(|(s, i, k)| s == subject && k == key && i == pinned_subject)
            });
            if !endorsed {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(candidate.clone().into_owned()).is_err() {
                continue;
            }
            let Ok(direct) =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
            else {
                continue;
            };
            if direct
                .verify_server_cert(end_entity, &[], server_name, &[], now)
                .is_ok()
            {
                return Some(Sha256::digest(candidate.as_ref()).to_vec());
            }
        }
        None
    }
}

impl ServerCertVerifier for AnchoredCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.is_anchor(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(anchor) = intermediates.iter().find(|c| self.is_anchor(c)) else {
            return Err(Self::refuse(NOT_FROM_ANCHOR.into()));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| Self::refuse(format!("the server's trust anchor is damaged ({e})")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| !self.is_anchor(c))
            .cloned()
            .collect();
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| Self::refuse(e.to_string()))?;
        let verified = webpki
            .verify_server_cert(end_entity, &others, server_name, ocsp, now)
            .map_err(|e| {
                let host = server_name.to_str();
                Self::refuse(match e {
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => format!(
                        "the server's TLS certificate is not valid for {host}: connect by a name it covers, or start the server with --tls-name {host}"
                    ),
                    rustls::Error::InvalidCertificate(
                        CertificateError::Expired
                        | CertificateError::ExpiredContext { .. }
                        | CertificateError::NotValidYet
                        | CertificateError::NotValidYetContext { .. },
                    ) => "the server's TLS certificate is out of its dates: check this computer's clock, or tell the server's operator".into(),
                    // A certificate signed by another key under the anchor's name is as foreign.
                    rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature,
                    ) => NOT_FROM_ANCHOR.into(),
                    other => format!("the server's TLS certificate was refused: {other}"),
                })
            })?;
        if others.len() >= 2
            && let Some(next) =
                self.endorsed_successor(anchor, end_entity, &others, server_name, now)
        {
            *self.successor.lock().unwrap_or_else(|p| p.into_inner()) = Some(next);
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Signs a sign-in challenge with the device's (or administrator's) key.
pub type ChallengeSigner = Rc<dyn Fn(&[u8]) -> Result<Vec<u8>>>;

/// Who a connection signs in as.
#[derive(Clone)]
enum Principal {
    Device(DeviceId),
    Admin(String),
}

/// The reason given when no connection could be made: the request never
/// reached the server (unlike a timeout or a reset after sending).
pub(crate) const CONNECT_FAILED: &str = "connection refused or unreachable";

/// A connection to one server, with the device's session token once signed in.
///
/// Tokens are short-lived (the server's `--token-ttl-secs`). A long-running
/// client (the bridge, a sync loop) renews its token before it runs out and
/// signs in afresh when the server answers 401 (a restarted server, a token
/// revoked), so a session never silently stops working.
pub struct Api {
    base: String,
    http: reqwest::blocking::Client,
    token: RefCell<Option<String>>,
    /// Renew the token once this instant has passed.
    renew_at: Cell<Option<Instant>>,
    /// Who signs in, and how: set by the first sign-in.
    signer: RefCell<Option<(Principal, ChallengeSigner)>>,
    /// Requests sent so far (for `pouch bench`: round trips per mail).
    requests: Cell<u64>,
    /// The highest queue position this process acknowledged, shared with
    /// its [`QueueWaiter`]s on other threads.
    acked: Arc<std::sync::atomic::AtomicU64>,
    /// A new anchor the pinned one endorsed, seen by the TLS verifier.
    successor: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Api {
    pub fn new(server: &str, fingerprint_hex: &str) -> Result<Self> {
        let fingerprint = hex::decode(fingerprint_hex)
            .ok()
            .filter(|f| f.len() == 32)
            .ok_or_else(|| {
                ClientError::Invalid("the certificate fingerprint must be 64 hex digits".into())
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let successor: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnchoredCertificate {
                anchor_sha256: fingerprint,
                provider,
                successor: successor.clone(),
            }))
            .with_no_client_auth();
        let mut builder = reqwest::blocking::Client::builder();
        // On a host with several addresses, POUCH_BIND_ADDRESS picks the one to connect from.
        if let Ok(ip) = std::env::var("POUCH_BIND_ADDRESS") {
            let ip: std::net::IpAddr = ip.parse().map_err(|_| {
                ClientError::Invalid(format!("POUCH_BIND_ADDRESS is not an IP address: {ip}"))
            })?;
            builder = builder.local_address(ip);
        }
        let http = builder
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(120))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(ClientError::Invalid(format!(
                "the server URL must start with https:// (got {base})"
            )));
        }
        Ok(Api {
            base,
            http,
            token: RefCell::new(None),
            renew_at: Cell::new(None),
            signer: RefCell::new(None),
            requests: Cell::new(0),
            acked: Default::default(),
            successor,
        })
    }

    /// The SHA-256 (hex) of a new trust anchor the pinned one endorsed, if
    /// a connection saw one: the caller pins it in place of the old.
    pub fn endorsed_successor(&self) -> Option<String> {
        self.successor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(hex::encode)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// How many requests this client has sent.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Result<reqwest::blocking::Response> {
        self.requests.set(self.requests.get() + 1);
        let resp = req.send().map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Option<ErrorBody> = json_of(resp, MAX_ERROR_BYTES).ok();
        Err(match body {
            Some(b) => ClientError::Server {
                status,
                code: b.error,
                message: b.message,
            },
            None => ClientError::Server {
                status,
                code: ErrorCode::Internal,
                message: format!("HTTP {status}"),
            },
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if let Some(at) = text.find(REFUSED) {
                return ClientError::UntrustedCertificate(text[at + REFUSED.len()..].to_string());
            }
            source = s.source();
        }
        let reason = if e.is_connect() {
            CONNECT_FAILED.to_string()
        } else if e.is_timeout() {
            "timed out".to_string()
        } else {
            e.to_string()
        };
        ClientError::Unreachable(self.base.clone(), reason)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn authed(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::RequestBuilder> {
        let token = self
            .token
            .borrow()
            .clone()
            .ok_or_else(|| ClientError::Protocol("not signed in".into()))?;
        Ok(req.bearer_auth(token))
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.http.get(self.url(path)))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    /// An unauthenticated GET with one extra header (an invite's proof).
    pub fn get_json_with<T: DeserializeOwned>(
        &self,
        path: &str,
        header: &str,
        value: &str,
    ) -> Result<T> {
        let resp = self.send(self.http.get(self.url(path)).header(header, value))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    pub fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.http.post(self.url(path)).json(body))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    /// Signs in with the device key (challenge, signature, token) and keeps
    /// the means to do it again when the token is due for renewal.
    pub fn sign_in(&self, device_id: &DeviceId, sign: ChallengeSigner) -> Result<()> {
        *self.signer.borrow_mut() = Some((Principal::Device(device_id.clone()), sign));
        self.renew()
    }

    /// Signs in as an administrator (their own challenge and token routes;
    /// the signed payload is domain-separated from a device's).
    pub fn sign_in_admin(&self, name: &str, sign: ChallengeSigner) -> Result<()> {
        *self.signer.borrow_mut() = Some((Principal::Admin(name.to_string()), sign));
        self.renew()
    }

    /// The current bearer token, for a caller that must present it itself
    /// (an operator's script against `/metrics`, the tests' curl).
    pub fn bearer(&self) -> Option<String> {
        self.token.borrow().clone()
    }

    /// Whether a sign-in has happened (and can be renewed).
    pub fn signed_in(&self) -> bool {
        self.signer.borrow().is_some()
    }

    /// A fresh token with the kept signer.
    fn renew(&self) -> Result<()> {
        let (principal, sign) = self
            .signer
            .borrow()
            .clone()
            .ok_or_else(|| ClientError::Protocol("not signed in".into()))?;
        let tok: api::TokenResponse = match principal {
            Principal::Device(device_id) => {
                let ch: api::ChallengeResponse = self.post_json(
                    "/v1/auth/challenge",
                    &api::ChallengeRequest {
                        device_id: device_id.clone(),
                    },
                )?;
                let signature = sign(&api::auth_signing_payload(&device_id, &ch.challenge))?;
                self.post_json(
                    "/v1/auth/token",
                    &api::TokenRequest {
                        device_id,
                        challenge: ch.challenge,
                        signature,
                    },
                )?
            }
            Principal::Admin(name) => {
                let ch: api::ChallengeResponse = self.post_json(
                    "/v1/admin/auth/challenge",
                    &api::AdminChallengeRequest { name: name.clone() },
                )?;
                let signature = sign(&api::admin_auth_signing_payload(&name, &ch.challenge))?;
                self.post_json(
                    "/v1/admin/auth/token",
                    &api::AdminTokenRequest {
                        name,
                        challenge: ch.challenge,
                        signature,
                    },
                )?
            }
        };
        // Renew at four fifths of the lifetime: well before the server refuses it.
        let lifetime = Duration::from_secs(tok.expires_in_secs.max(1));
        self.renew_at
            .set(Some(Instant::now() + lifetime.mul_f64(0.8)));
        *self.token.borrow_mut() = Some(tok.token);
        Ok(())
    }

    /// Sends an authenticated request built by `make`: renews a token that
    /// is due first, and on 401 signs in once more and repeats the request.
    fn send_authed(
        &self,
        make: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        if self.signed_in() && self.renew_at.get().is_some_and(|t| Instant::now() >= t) {
            self.renew()?;
        }
        match self.send(self.authed(make())?) {
            Err(ClientError::Server { status: 401, .. }) if self.signed_in() => {
                self.renew()?;
                self.send(self.authed(make())?)
            }
            other => other,
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send_authed(|| self.http.get(self.url(path)))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send_authed(|| self.http.post(self.url(path)).json(body))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    /// An authenticated POST whose answer is streamed into `out` (a backup:
    /// too large to hold in memory); returns the bytes written.
    pub fn post_to_writer(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let mut resp = self.send_authed(|| {
            self.http
                .post(self.url(path))
                .json(&serde_json::json!({}))
                .timeout(Duration::from_secs(3600))
        })?;
        std::io::copy(&mut resp, out)
            .map_err(|e| ClientError::Unreachable(self.base.clone(), format!("download cut: {e}")))
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.send_authed(|| self.http.delete(self.url(path)))?;
        Ok(())
    }

    /// An authenticated DELETE whose answer is JSON.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send_authed(|| self.http.delete(self.url(path)))?;
        json_of(resp, MAX_RESPONSE_BYTES)
    }

    pub fn post_empty(&self, path: &str, body: &impl Serialize) -> Result<()> {
        self.send_authed(|| self.http.post(self.url(path)).json(body))?;
        Ok(())
    }

    pub fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.send_authed(|| self.http.put(self.url(path)).body(bytes.clone()))?;
        Ok(())
    }

    /// An unauthenticated GET of raw bytes (the log's checkpoint and tiles).
    pub fn get_bytes_public(&self, path: &str) -> Result<Vec<u8>> {
        let resp = self.send(self.http.get(self.url(path)))?;
        body_of(resp, MAX_RESPONSE_BYTES)
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let resp = self.send_authed(|| self.http.get(self.url(path)))?;
        body_of(resp, MAX_RESPONSE_BYTES)
    }

    /// Records that the queue was acknowledged up to `up_to`.
    pub fn note_acked(&self, up_to: u64) {
        self.acked
            .fetch_max(up_to, std::sync::atomic::Ordering::Relaxed);
    }

    /// A long-poll for mail queued after `after`, to run on another thread
    /// than this client's (it holds a token renewed now if it is due).
    pub fn queue_waiter(&self, after: u64, secs: u64) -> Result<QueueWaiter> {
        if self.signed_in() && self.renew_at.get().is_some_and(|t| Instant::now() >= t) {
            self.renew()?;
        }
        let token = self
            .token
            .borrow()
            .clone()
            .ok_or_else(|| ClientError::Protocol("not signed in".into()))?;
        Ok(QueueWaiter {
            http: self.http.clone(),
            url: self.url(&format!("/v1/queue/wait?after={after}&secs={secs}")),
            token,
            base: self.base.clone(),
            after,
            acked: self.acked.clone(),
        })
    }
}

/// A wait for mail that can leave the device's thread: the device stays
/// free for the mail client's commands while it waits.
pub struct QueueWaiter {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
    base: String,
    after: u64,
    acked: Arc<std::sync::atomic::AtomicU64>,
}

impl QueueWaiter {
    /// The queue position this wait is for (what was fetched so far).
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The page of queue items after [`Self::after`], for
    /// [`crate::Device::receive_page`], with the position it was asked
    /// after. If this process acknowledged further while the wait lasted
    /// (a send that caught up first), it asks after that: asking from
    /// before an acknowledgement is what a second copy of the device does,
    /// and the server raises an alert for it.
    pub fn page(&self) -> Result<(u64, api::QueueResponse)> {
        let after = self
            .after
            .max(self.acked.load(std::sync::atomic::Ordering::Relaxed));
        let url = format!("{}/v1/queue?after={after}&limit=100", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let page = json_of(checked(resp, "fetching mail")?, MAX_RESPONSE_BYTES)?;
        Ok((after, page))
    }

    /// Acknowledges everything up to `up_to` (which must be on disk: the
    /// server then deletes it).
    pub fn ack(&self, up_to: u64) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/v1/queue/ack", self.base))
            .bearer_auth(&self.token)
            .json(&api::AckRequest { up_to })
            .send()
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        checked(resp, "acknowledging mail")?;
        self.acked
            .fetch_max(up_to, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether mail is waiting: answers as soon as some is queued, else
    /// `false` after the seconds asked for (the server holds at most 25).
    pub fn wait(&self) -> Result<bool> {
        #[derive(serde::Deserialize)]
        struct Pending {
            pending: bool,
        }
        let resp = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let p: Pending = json_of(checked(resp, "waiting for mail")?, MAX_ERROR_BYTES)?;
        Ok(p.pending)
    }
}

/// The most an answer of the server may hold. The largest honest ones are
/// a page of queued mail (at most 8 MiB of payloads, in base64) and the
/// directory's answer for a thousand recipients; a hostile server must not
/// make a device allocate without bound.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// The most an error answer (or a waiter's yes/no) may hold.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// Reads a response's body, refusing one larger than `limit` bytes (before
/// reading, when the server declares it; else as soon as it passes).
fn body_of(resp: reqwest::blocking::Response, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let too_large = || {
        ClientError::Protocol(format!(
            "the server's answer is larger than {} KiB; refused (a misbehaving or hostile server)",
            limit >> 10
        ))
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let base = resp.url().origin().ascii_serialization();
    let mut body = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| ClientError::Unreachable(base, e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// A JSON answer of at most `limit` bytes.
fn json_of<T: DeserializeOwned>(resp: reqwest::blocking::Response, limit: u64) -> Result<T> {
    serde_json::from_slice(&body_of(resp, limit)?).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A waiter's response if it succeeded, else the server's refusal.
fn checked(resp: reqwest::blocking::Response, what: &str) -> Result<reqwest::blocking::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(ClientError::Server {
        status: resp.status().as_u16(),
        code: ErrorCode::Internal,
        message: format!("{what}: HTTP {}", resp.status()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// Serves one HTTP response on loopback: `declared` says whether the
    /// length is announced (else the body comes chunked, of unknown length).
    fn serve_once(body_len: usize, declared: bool) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let body = vec![b' '; body_len];
            let _ = if declared {
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n"
                )
                .and_then(|_| conn.write_all(&body))
            } else {
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .and_then(|_| {
                    for piece in body.chunks(4096) {
                        write!(conn, "{:x}\r\n", piece.len())?;
                        conn.write_all(piece)?;
                        conn.write_all(b"\r\n")?;
                    }
                    conn.write_all(b"0\r\n\r\n")
                })
            };
        });
        url
    }

    #[test]
    fn an_answer_larger_than_the_cap_is_refused_whether_declared_or_not() {
        let http = reqwest::blocking::Client::new();
        let limit = 100 << 10;
        for declared in [true, false] {
            let small = http.get(serve_once(1000, declared)).send().unwrap();
            assert_eq!(body_of(small, limit).unwrap().len(), 1000);
            let exact = http
                .get(serve_once(limit as usize, declared))
                .send()
                .unwrap();
            assert_eq!(body_of(exact, limit).unwrap().len(), limit as usize);
            let huge = http
                .get(serve_once(limit as usize + 1, declared))
                .send()
                .unwrap();
            let e = body_of(huge, limit).unwrap_err().to_string();
            assert!(e.contains("larger than 100 KiB"), "{declared}: {e}");
        }
    }
}

#[cfg(test)]
mod anchor_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(by: &Ca, names: &[&str], days: u64) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + Duration::from_secs(86_400 * days)).into();
        p.signed_by(&key, &by.cert, &by.key).unwrap().der().clone()
    }

    fn verifier(trusted: &CertificateDer<'_>) -> AnchoredCertificate {
        AnchoredCertificate {
            anchor_sha256: Sha256::digest(trusted.as_ref()).to_vec(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            successor: Default::default(),
        }
    }

    /// What the client makes of `chain` (leaf first) when connecting to `host`
    /// at `now`: `Ok` or the reason it gives the user.
    fn check(
        v: &AnchoredCertificate,
        chain: &[CertificateDer<'static>],
        host: &str,
        at: SystemTime,
    ) -> std::result::Result<(), String> {
        let name = ServerName::try_from(host.to_string()).unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        v.verify_server_cert(&chain[0], &chain[1..], &name, &[], at)
            .map(|_| ())
            .map_err(|e| {
                let text = e.to_string();
                text[text.find(REFUSED).expect("marked") + REFUSED.len()..].to_string()
            })
    }

    #[test]
    fn the_anchor_accepts_any_certificate_it_issued_for_the_host_and_nothing_else() {
        let ministry = ca("Ministry CA");
        let anchor = ministry.cert.der().clone();
        let v = verifier(&anchor);
        let now = SystemTime::now();
        let first = leaf(&ministry, &["127.0.0.1", "mail.ministry.example"], 90);
        let renewed = leaf(&ministry, &["127.0.0.1", "mail.ministry.example"], 90);
        for cert in [&first, &renewed] {
            assert_eq!(
                check(&v, &[cert.clone(), anchor.clone()], "127.0.0.1", now),
                Ok(())
            );
            assert_eq!(
                check(
                    &v,
                    &[cert.clone(), anchor.clone()],
                    "mail.ministry.example",
                    now
                ),
                Ok(())
            );
        }
        // Another host name than the certificate covers.
        let e = check(&v, &[first.clone(), anchor.clone()], "other.example", now).unwrap_err();
        assert!(
            e.contains("not valid for other.example") && e.contains("--tls-name"),
            "{e}"
        );
        // Past its end (or a clock far ahead).
        let later = now + Duration::from_secs(86_400 * 91);
        let e = check(&v, &[first.clone(), anchor.clone()], "127.0.0.1", later).unwrap_err();
        assert!(e.contains("out of its dates"), "{e}");
        // Issued by another CA, whether that CA is sent along or not.
        let other = ca("Ministry CA");
        let forged = leaf(&other, &["127.0.0.1"], 90);
        for chain in [
            vec![forged.clone(), other.cert.der().clone()],
            vec![forged.clone()],
            // The right anchor sent along does not make a forged leaf good.
            vec![forged.clone(), anchor.clone()],
        ] {
            let e = check(&v, &chain, "127.0.0.1", now).unwrap_err();
            assert!(
                e.contains("not issued by the trust anchor from your invite"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_pinned_serving_certificate_is_still_accepted_as_it_is() {
        let own = ca("Pouch");
        let cert = leaf(&own, &["localhost"], 90);
        let v = verifier(&cert);
        assert_eq!(
            check(
                &v,
                std::slice::from_ref(&cert),
                "anything.example",
                SystemTime::now()
            ),
            Ok(())
        );
        let e = check(
            &v,
            &[leaf(&own, &["localhost"], 90)],
            "localhost",
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(e.contains("not issued by the trust anchor"), "{e}");
    }

    /// A change of anchor endorsed by the old one (a cross-certificate) is
    /// followed: the chain verifies and the new anchor becomes the
    /// successor. A new anchor without the old one's endorsement is refused,
    /// and an ordinary chain through an intermediate CA names no successor.
    #[test]
    fn a_new_anchor_is_followed_only_when_the_old_one_cross_signed_it() {
        let old = ca("Pouch anchor 1");
        let old_der = old.cert.der().clone();
        let new_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Pouch anchor 2");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let new_cert = p.clone().self_signed(&new_key).unwrap();
        let cross = p.signed_by(&new_key, &old.cert, &old.key).unwrap();
        let new = Ca {
            cert: new_cert,
            key: new_key,
        };
        let serving = leaf(&new, &["127.0.0.1"], 90);
        let now = SystemTime::now();
        let endorsed = vec![
            serving.clone(),
            new.cert.der().clone(),
            cross.der().clone(),
            old_der.clone(),
        ];
        let v = verifier(&old_der);
        assert_eq!(check(&v, &endorsed, "127.0.0.1", now), Ok(()));
        assert_eq!(
            *v.successor.lock().unwrap(),
            Some(Sha256::digest(new.cert.der().as_ref()).to_vec())
        );
        // The new anchor alone, without the old one's signature: refused.
        let v = verifier(&old_der);
        let unendorsed = vec![serving.clone(), new.cert.der().clone(), old_der.clone()];
        let e = check(&v, &unendorsed, "127.0.0.1", now).unwrap_err();
        assert!(e.contains("not issued by the trust anchor"), "{e}");
        assert!(v.successor.lock().unwrap().is_none());
        // A device already on the new anchor accepts the same chain, and
        // names no successor (the old anchor has no twin there).
        let v = verifier(new.cert.der());
        assert_eq!(check(&v, &endorsed, "127.0.0.1", now), Ok(()));
        assert!(v.successor.lock().unwrap().is_none());
        // An ordinary chain: leaf ← intermediate ← anchor. No successor.
        let root = ca("Ministry root");
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let mut ip = rcgen::CertificateParams::default();
        ip.distinguished_name
            .push(rcgen::DnType::CommonName, "Ministry issuing CA");
        ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let inter = Ca {
            cert: ip.signed_by(&inter_key, &root.cert, &root.key).unwrap(),
            key: inter_key,
        };
        let leaf_cert = leaf(&inter, &["127.0.0.1"], 90);
        let v = verifier(root.cert.der());
        let chain = vec![leaf_cert, inter.cert.der().clone(), root.cert.der().clone()];
        assert_eq!(check(&v, &chain, "127.0.0.1", now), Ok(()));
        assert!(v.successor.lock().unwrap().is_none());
        // A cross-signed intermediate (the same issuing CA under two
        // roots) is a twin too, but not self-issued: still no successor.
        let other_root = ca("Other root");
        let mut ip2 = rcgen::CertificateParams::default();
        ip2.distinguished_name
            .push(rcgen::DnType::CommonName, "Ministry issuing CA");
        ip2.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let inter_by_other = ip2
            .signed_by(&inter.key, &other_root.cert, &other_root.key)
            .unwrap();
        let v = verifier(root.cert.der());
        let chain = vec![
            chain[0].clone(),
            inter.cert.der().clone(),
            inter_by_other.der().clone(),
            root.cert.der().clone(),
        ];
        assert_eq!(check(&v, &chain, "127.0.0.1", now), Ok(()));
        assert!(v.successor.lock().unwrap().is_none());
    }
}
