//! The server's TLS identity: a long-lived **trust anchor** and a
//! short-lived **serving certificate** that chains to it.
//!
//! Devices do not trust the web PKI. An invite names one anchor (the SHA-256
//! of a CA certificate); a client accepts the server's certificate only if it
//! chains to that anchor, is within its validity and names the host the
//! client connects to (`pouch-client`'s `net.rs`). So the serving certificate
//! can be renewed as often as wanted without any device noticing: only a
//! change of anchor is visible, and that is refused.
//!
//! Two ways to run:
//! - **Pouch's own anchor** (the default). On first start the server makes a
//!   CA (`tls-anchor.pem`; its key in `tls-anchor-key.pem`, used for nothing
//!   but issuing) and issues itself a serving certificate for
//!   [`SERVING_DAYS`] days (`tls-cert.pem`, `tls-key.pem`), which it renews
//!   when fewer than [`RENEW_DAYS`] days are left — at start, and while it
//!   runs, without a restart ([`TlsIdentity::renew_if_due`]).
//! - **The ministry's CA**: `--tls-cert`/`--tls-key` issued by it, and
//!   `--tls-ca` its certificate (the anchor). The operator renews by
//!   replacing the files and restarting. Without `--tls-ca`, a given
//!   certificate is its own anchor: renewing it would lock every device out,
//!   and the server says so when it starts.
//!
//! The server always sends the anchor at the end of its chain, so that a
//! client finds it by its fingerprint without carrying the certificate.
//!
//! **Changing the anchor** (`pouch server --rotate-anchor`) makes a new
//! anchor and has the old one sign it: a cross-certificate, the new anchor's
//! name and key issued by the old anchor, as public CAs roll over. The
//! server then sends the cross-certificate and the old anchor after the new
//! one, so a device that trusts the old anchor still finds a path
//! (leaf ← cross-certificate ← old anchor), and seeing the new anchor in
//! the chain with the same key, endorsed that way, it trusts the new one
//! from then on (`pouch-client`'s `net.rs`). No other change of anchor is
//! accepted without the user (`pouch trust-anchor accept`). The change is an
//! access event with a high alert. A ministry CA rolls over the same way:
//! put its cross-certificate and old CA after the chain in `--tls-cert`.
//!
//! Data directories from before anchors hold a self-signed `tls-cert.pem`
//! whose fingerprint their devices pinned. On upgrade that certificate
//! becomes the anchor (and its key the anchor key): those devices keep
//! working, and from then on the serving certificate is renewed like any.

use crate::{StartError, write_private_file};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How long a serving certificate Pouch issues itself is valid.
pub const SERVING_DAYS: u64 = 90;
/// A serving certificate with fewer days left than this is renewed.
pub const RENEW_DAYS: u64 = 30;
/// How long Pouch's own anchor is valid (clients do not check an anchor's
/// dates; this is for other tools that look at it).
const ANCHOR_YEARS: u64 = 20;
/// The names every serving certificate Pouch issues covers, besides
/// `--tls-name`: what a client on the server's own machine connects to.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const DAY: Duration = Duration::from_secs(86_400);

pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(crate::sha256(cert_der))
}

/// Where the TLS identity comes from (`pouch server`'s `--tls-*` flags).
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// A serving certificate chain (PEM) and its key, from the operator.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The operator's CA certificate (PEM): the anchor devices trust.
    pub ca: Option<PathBuf>,
    /// Names the serving certificate Pouch issues covers besides
    /// [`LOCAL_NAMES`] (DNS names or IP addresses).
    pub names: Vec<String>,
    /// Change Pouch's own anchor before starting (`--rotate-anchor`).
    pub rotate_anchor: bool,
}

/// The server's TLS identity while it runs.
pub struct TlsIdentity {
    /// SHA-256 of the anchor certificate: what invites carry.
    pub anchor_fingerprint: String,
    pub config: Arc<rustls::ServerConfig>,
    /// When the serving certificate in use stops being valid.
    pub serving_until: SystemTime,
    /// The names the serving certificate Pouch issued covers (empty with the
    /// operator's certificate).
    pub serving_names: Vec<String>,
    /// Something the operator should know (a pinned leaf, a certificate
    /// about to expire), said once at start.
    pub warnings: Vec<String>,
    serving: Arc<ServingCertificate>,
    /// Present when Pouch issues its own serving certificates.
    issuer: Option<Issuer>,
    anchor: CertificateDer<'static>,
}

/// Hands every handshake the current serving certificate; renewal swaps it.
#[derive(Debug)]
struct ServingCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The same certificate, presented when this server calls a federation
/// peer (it is issued for client authentication too).
impl rustls::client::ResolvesClientCert for ServingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Pouch's own anchor, able to issue serving certificates.
struct Issuer {
    anchor: rcgen::Certificate,
    anchor_der: CertificateDer<'static>,
    /// The anchor as written in `tls-anchor.pem`, sent after the leaf.
    anchor_pem: String,
    anchor_key: rcgen::KeyPair,
    /// After a change of anchor: the cross-certificate and the previous
    /// anchor, sent after the anchor so devices that trust the previous one
    /// find their path and move to the new one.
    endorsement: Vec<CertificateDer<'static>>,
    names: Vec<String>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn tls_error(what: impl std::fmt::Display) -> StartError {
    StartError::Tls(what.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads (or, on first start, makes) the identity in `data_dir`.
    pub fn load(data_dir: &Path, domain: &str, settings: &TlsSettings) -> Result<Self, StartError> {
        match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => Self::operator(cert, key, settings.ca.as_deref()),
            (None, None) if settings.ca.is_some() => Err(StartError::Config(
                "--tls-ca needs the serving certificate it issued: give --tls-cert and --tls-key too"
                    .into(),
            )),
            (None, None) => Self::own(data_dir, domain, &settings.names),
            _ => Err(StartError::Config(
                "give both --tls-cert and --tls-key, or neither".into(),
            )),
        }
    }

    /// The operator's certificate, anchored at `--tls-ca` (or at itself).
    fn operator(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Self, StartError> {
        let mut chain = read_certs(cert)?;
        let key = read_key(key)?;
        let mut warnings = Vec::new();
        let anchor = match ca {
            Some(ca) => {
                let anchor = read_certs(ca)?.remove(0);
                let intermediates: Vec<_> = chain[1..].to_vec();
                chains_to(&chain[0], &intermediates, &anchor, SystemTime::now())
                    .map_err(|e| {
                        StartError::Tls(format!(
                            "{} does not chain to the CA in {} ({e}): give the certificate that CA issued",
                            cert.display(),
                            ca.display()
                        ))
                    })?;
                if chains_to(&chain[0], &intermediates, &anchor, until_now(RENEW_DAYS)).is_err() {
                    warnings.push(format!(
                        "the serving certificate {} expires within {RENEW_DAYS} days: renew it from the same CA and restart",
                        cert.display()
                    ));
                }
                if !chain.contains(&anchor) {
                    chain.push(anchor.clone());
                }
                anchor
            }
            None => {
                warnings.push(format!(
                    "{} is its own trust anchor: devices will refuse a renewed certificate; give the CA that issued it with --tls-ca",
                    cert.display()
                ));
                chain[0].clone()
            }
        };
        let serving_until = valid_until(&chain[0], &chain[1..], &anchor);
        let certified = certified_key(chain, key)?;
        Self::finish(anchor, certified, serving_until, Vec::new(), warnings, None)
    }

    /// Pouch's own anchor in the data directory, made on first start.
    fn own(data_dir: &Path, domain: &str, extra_names: &[String]) -> Result<Self, StartError> {
        // A change of anchor cut off after its files were written: finish it.
        finish_anchor_change(data_dir)?;
        let anchor_path = data_dir.join("tls-anchor.pem");
        let anchor_key_path = data_dir.join("tls-anchor-key.pem");
        let cert_path = data_dir.join("tls-cert.pem");
        let key_path = data_dir.join("tls-key.pem");
        if !anchor_path.exists()
            && !anchor_key_path.exists()
            && cert_path.exists()
            && key_path.exists()
        {
            // A data directory from before anchors: its self-signed
            // certificate (which devices pinned) becomes the anchor. The
            // certificate moves first, so that a crash in between leaves a
            // state the next start finishes (below), never one it overwrites.
            std::fs::rename(&cert_path, &anchor_path).map_err(|e| io_error(&cert_path, e))?;
            std::fs::rename(&key_path, &anchor_key_path).map_err(|e| io_error(&key_path, e))?;
            tracing::info!("the self-signed certificate devices pinned is now the trust anchor");
        }
        if anchor_path.exists()
            && !anchor_key_path.exists()
            && key_path.exists()
            && !cert_path.exists()
        {
            // That move, cut off half-way: finish it.
            std::fs::rename(&key_path, &anchor_key_path).map_err(|e| io_error(&key_path, e))?;
        }
        match (anchor_path.exists(), anchor_key_path.exists()) {
            (true, true) => {}
            (false, false) => make_anchor(domain, &anchor_path, &anchor_key_path)?,
            // Never replaced: a new anchor would lock every device out.
            (true, false) => {
                return Err(StartError::Tls(format!(
                    "{} is there but its key {} is not: put the key back (devices trust this anchor), or start with --tls-cert/--tls-key/--tls-ca",
                    anchor_path.display(),
                    anchor_key_path.display()
                )));
            }
            (false, true) => {
                return Err(StartError::Tls(format!(
                    "{} is there but its certificate {} is not: put it back (devices trust that anchor)",
                    anchor_key_path.display(),
                    anchor_path.display()
                )));
            }
        }
        let anchor_der = read_certs(&anchor_path)?.remove(0);
        let anchor_pem = pem_of(&anchor_path)?;
        let anchor_key_pem =
            std::fs::read_to_string(&anchor_key_path).map_err(|e| io_error(&anchor_key_path, e))?;
        let anchor_key = rcgen::KeyPair::from_pem(&anchor_key_pem)
            .map_err(|e| tls_error(format!("cannot read {}: {e}", anchor_key_path.display())))?;
        let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| n.to_string()).collect();
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let anchor = issuing_certificate(&anchor_der, &anchor_key, domain)?;
        let endorsement = endorsement(data_dir, &anchor_der)?;
        let issuer = Issuer {
            anchor,
            anchor_der: anchor_der.clone(),
            anchor_pem,
            anchor_key,
            endorsement,
            names: names.clone(),
            cert_path,
            key_path,
        };
        let (certified, until) = match issuer.current()? {
            Some(current) => current,
            None => issuer.issue()?,
        };
        Self::finish(
            anchor_der,
            certified,
            until,
            names,
            Vec::new(),
            Some(issuer),
        )
    }

    fn finish(
        anchor: CertificateDer<'static>,
        certified: CertifiedKey,
        serving_until: SystemTime,
        serving_names: Vec<String>,
        warnings: Vec<String>,
        issuer: Option<Issuer>,
    ) -> Result<Self, StartError> {
        let serving = Arc::new(ServingCertificate(RwLock::new(Arc::new(certified))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_cert_resolver(serving.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            anchor_fingerprint: fingerprint(anchor.as_ref()),
            config: Arc::new(config),
            serving_until,
            serving_names,
            warnings,
            serving,
            issuer,
            anchor,
        })
    }

    /// Whether the serving certificate may also authenticate this server
    /// as a client (what federation peers require).
    pub fn for_clients_too(&self) -> bool {
        let current = self
            .serving
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match current.cert.split_first() {
            Some((leaf, rest)) => for_clients_too(leaf, rest, &self.anchor),
            None => false,
        }
    }

    /// The anchor certificate (DER): what federation peers trust.
    pub fn anchor_der(&self) -> &CertificateDer<'static> {
        &self.anchor
    }

    /// The current serving certificate, for another listener (federation).
    pub fn cert_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        self.serving.clone()
    }

    /// The current serving certificate as this server's client
    /// certificate, when it calls a federation peer.
    pub fn client_cert_resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        self.serving.clone()
    }

    /// Issues and starts using a new serving certificate if the one in use
    /// has fewer than [`RENEW_DAYS`] days left (only with Pouch's own
    /// anchor). Returns the new certificate's end of validity.
    pub fn renew_if_due(&self) -> Result<Option<SystemTime>, StartError> {
        let Some(issuer) = &self.issuer else {
            return Ok(None);
        };
        if issuer.current()?.is_some() {
            return Ok(None);
        }
        let (certified, until) = issuer.issue()?;
        *self.serving.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(Some(until))
    }
}

impl Issuer {
    /// What the server sends: the leaf, the anchor, then any endorsement.
    fn chain(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![leaf, self.anchor_der.clone()];
        chain.extend(self.endorsement.iter().cloned());
        chain
    }

    /// The serving certificate on disk, if it chains to the anchor, covers
    /// every name and has at least [`RENEW_DAYS`] days left.
    fn current(&self) -> Result<Option<(CertifiedKey, SystemTime)>, StartError> {
        if !self.cert_path.exists() || !self.key_path.exists() {
            return Ok(None);
        }
        // Anything wrong with the files (damaged, a key that is not the
        // certificate's after a crash between the two writes) is mended by
        // issuing afresh.
        let Ok(chain) = read_certs(&self.cert_path) else {
            return Ok(None);
        };
        let leaf = &chain[0];
        // Certificates from before federation were for servers only:
        // issued again, for clients too.
        if chains_to(leaf, &[], &self.anchor_der, until_now(RENEW_DAYS)).is_err()
            || !covers(leaf, &self.names)
            || !for_clients_too(leaf, &[], &self.anchor_der)
        {
            return Ok(None);
        }
        let until = valid_until(leaf, &[], &self.anchor_der);
        let Ok(key) = read_key(&self.key_path) else {
            return Ok(None);
        };
        Ok(certified_key(self.chain(leaf.clone()), key)
            .ok()
            .map(|certified| (certified, until)))
    }

    /// A new serving certificate, written before it is used.
    fn issue(&self) -> Result<(CertifiedKey, SystemTime), StartError> {
        let key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let mut params = rcgen::CertificateParams::new(self.names.clone()).map_err(|e| {
            StartError::Config(format!(
                "a --tls-name is neither a DNS name nor an IP address ({e})"
            ))
        })?;
        let now = SystemTime::now();
        // A day back, for clients whose clock is behind.
        params.not_before = (now - DAY).into();
        params.not_after = (now + DAY * SERVING_DAYS as u32).into();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Pouch server");
        // Client authentication too: the same identity is what this server
        // presents to its federation peers (federation/peer_tls.rs).
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.anchor, &self.anchor_key)
            .map_err(tls_error)?;
        // Checked before use: a certificate the clients would refuse must
        // never replace one they accept.
        chains_to(cert.der(), &[], &self.anchor_der, now).map_err(|e| {
            tls_error(format!(
                "the serving certificate issued does not chain to the anchor ({e})"
            ))
        })?;
        let chain_pem = format!("{}{}", cert.pem(), self.anchor_pem);
        write_private_file(&self.key_path, key.serialize_pem().as_bytes())
            .map_err(|e| io_error(&self.key_path, e))?;
        write_private_file(&self.cert_path, chain_pem.as_bytes())
            .map_err(|e| io_error(&self.cert_path, e))?;
        let chain = self.chain(cert.der().clone());
        let private = PrivateKeyDer::try_from(key.serialize_der()).map_err(tls_error)?;
        tracing::info!(days = SERVING_DAYS, "issued a new serving certificate");
        Ok((
            certified_key(chain, private)?,
            now + DAY * SERVING_DAYS as u32,
        ))
    }
}

fn make_anchor(domain: &str, cert_path: &Path, key_path: &Path) -> Result<(), StartError> {
    let key = rcgen::KeyPair::generate().map_err(tls_error)?;
    let cert = anchor_params(domain, 1)
        .self_signed(&key)
        .map_err(tls_error)?;
    write_private_file(key_path, key.serialize_pem().as_bytes())
        .map_err(|e| io_error(key_path, e))?;
    std::fs::write(cert_path, cert.pem()).map_err(|e| io_error(cert_path, e))?;
    tracing::info!("made the TLS trust anchor");
    Ok(())
}

/// The anchor's name; each change of anchor takes the next generation, so
/// that old and new differ (a path from the new anchor's name must be able
/// to end at the old one).
fn anchor_name(domain: &str, generation: u32) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(
        rcgen::DnType::CommonName,
        if generation <= 1 {
            format!("Pouch trust anchor for {domain}")
        } else {
            format!("Pouch trust anchor for {domain} (generation {generation})")
        },
    );
    name
}

/// Changes of anchor one data directory can go through.
const MAX_GENERATIONS: u32 = 64;

fn anchor_params(domain: &str, generation: u32) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = anchor_name(domain, generation);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY * (365 * ANCHOR_YEARS) as u32).into();
    params
}

const PREVIOUS_ANCHOR: &str = "tls-anchor-previous.pem";
const CROSS_CERTIFICATE: &str = "tls-anchor-cross.pem";

/// The cross-certificate and previous anchor after a change, if this data
/// directory went through one; checked to really endorse `anchor` (the
/// cross-certificate carries the anchor's key and chains to the previous
/// anchor), else the start stops.
fn endorsement(
    data_dir: &Path,
    anchor: &CertificateDer<'static>,
) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let (previous, cross) = (
        data_dir.join(PREVIOUS_ANCHOR),
        data_dir.join(CROSS_CERTIFICATE),
    );
    if !previous.exists() && !cross.exists() {
        return Ok(Vec::new());
    }
    let previous_der = read_certs(&previous)?.remove(0);
    let cross_der = read_certs(&cross)?.remove(0);
    let same_key = webpki::anchor_from_trusted_cert(anchor)
        .ok()
        .zip(webpki::anchor_from_trusted_cert(&cross_der).ok())
        .is_some_and(|(a, c)| a.subject_public_key_info == c.subject_public_key_info);
    if !same_key {
        return Err(tls_error(format!(
            "{} does not certify the anchor in tls-anchor.pem: remove it and {} (devices that trust only the previous anchor then need 'pouch trust-anchor accept')",
            cross.display(),
            previous.display()
        )));
    }
    Ok(vec![cross_der, previous_der])
}

/// What `--rotate-anchor` did.
pub struct AnchorChange {
    pub previous: String,
    pub new: String,
}

/// `pouch server --rotate-anchor`: a new anchor of the next generation, a
/// cross-certificate for it signed by the current anchor, and a new serving
/// certificate at the next start of the identity. The new files are written
/// beside the old ones first and then renamed into place, the certificate
/// last, so an interrupted change is finished by the next start
/// ([`finish_anchor_change`]).
pub fn rotate_anchor(data_dir: &Path, domain: &str) -> Result<AnchorChange, StartError> {
    finish_anchor_change(data_dir)?;
    // Not twice in a row (a restart loop with the flag left on would strand
    // every device that had not yet seen the first change).
    if let Ok(meta) = std::fs::metadata(data_dir.join(CROSS_CERTIFICATE))
        && meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < MIN_BETWEEN_CHANGES)
    {
        return Err(StartError::Config(format!(
            "the trust anchor was changed less than {} days ago and devices may not all have moved to it; start without --rotate-anchor",
            MIN_BETWEEN_CHANGES.as_secs() / 86_400
        )));
    }
    let anchor_path = data_dir.join("tls-anchor.pem");
    let anchor_key_path = data_dir.join("tls-anchor-key.pem");
    if !anchor_path.exists() || !anchor_key_path.exists() {
        return Err(StartError::Config(
            "--rotate-anchor changes the anchor the server made itself, and there is none in this data directory (a ministry CA rolls over by putting its cross-certificate in --tls-cert)".into(),
        ));
    }
    let old_der = read_certs(&anchor_path)?.remove(0);
    let old_key_pem =
        std::fs::read_to_string(&anchor_key_path).map_err(|e| io_error(&anchor_key_path, e))?;
    let old_key = rcgen::KeyPair::from_pem(&old_key_pem)
        .map_err(|e| tls_error(format!("cannot read {}: {e}", anchor_key_path.display())))?;
    let (old_issuing, generation) = issuing_certificate_and_generation(&old_der, &old_key, domain)?;
    if generation >= MAX_GENERATIONS {
        return Err(tls_error(
            "this data directory's anchor was changed too often",
        ));
    }
    let new_key = rcgen::KeyPair::generate().map_err(tls_error)?;
    let params = anchor_params(domain, generation + 1);
    let new_anchor = params.clone().self_signed(&new_key).map_err(tls_error)?;
    let cross = params
        .signed_by(&new_key, &old_issuing, &old_key)
        .map_err(tls_error)?;
    let old_pem = pem_of(&anchor_path)?;
    // Everything written beside first, synced, then moved into place by
    // one step that a later start repeats if it was cut off.
    let next = |p: &Path| PathBuf::from(format!("{}.next", p.display()));
    write_private_file(&next(&anchor_key_path), new_key.serialize_pem().as_bytes())
        .map_err(|e| io_error(&anchor_key_path, e))?;
    for (path, text) in [
        (data_dir.join(PREVIOUS_ANCHOR), old_pem),
        (data_dir.join(CROSS_CERTIFICATE), cross.pem()),
        (anchor_path.clone(), new_anchor.pem()),
    ] {
        write_synced(&next(&path), text.as_bytes()).map_err(|e| io_error(&path, e))?;
    }
    finish_anchor_change(data_dir)?;
    tracing::warn!("changed the TLS trust anchor; the old one endorses the new");
    Ok(AnchorChange {
        previous: fingerprint(old_der.as_ref()),
        new: fingerprint(new_anchor.der().as_ref()),
    })
}

/// Moves a written change of anchor into place, the anchor certificate
/// last; its `.next` file is written last too, so its presence means the
/// others are complete. Then the serving certificate the old anchor issued
/// goes.
fn finish_anchor_change(data_dir: &Path) -> Result<(), StartError> {
    let cert_next = data_dir.join("tls-anchor.pem.next");
    if !cert_next.exists() {
        // Cut off before the certificate was written: the change did not
        // happen; its partial files go.
        for f in ["tls-anchor-key.pem", PREVIOUS_ANCHOR, CROSS_CERTIFICATE] {
            let _ = std::fs::remove_file(data_dir.join(format!("{f}.next")));
        }
        return Ok(());
    }
    for f in [
        "tls-anchor-key.pem",
        PREVIOUS_ANCHOR,
        CROSS_CERTIFICATE,
        "tls-anchor.pem",
    ] {
        let next = data_dir.join(format!("{f}.next"));
        if next.exists() {
            std::fs::rename(&next, data_dir.join(f)).map_err(|e| io_error(&next, e))?;
        }
    }
    for f in ["tls-cert.pem", "tls-key.pem"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    Ok(())
}

/// Writes a file and waits for the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The shortest time between two changes of anchor.
const MIN_BETWEEN_CHANGES: Duration = Duration::from_secs(7 * 86_400);

/// The anchor as rcgen needs it to issue: its name and key. Only the
/// subject name and key of the issuer end up in what it issues, so an
/// rcgen certificate with the same name and key stands in for the stored
/// one. The name is the one this version writes, or (for a data directory
/// from before anchors) rcgen's default name of the old self-signed
/// certificate: whichever encodes to the anchor's subject, byte for byte.
fn issuing_certificate(
    anchor_der: &CertificateDer<'static>,
    key: &rcgen::KeyPair,
    domain: &str,
) -> Result<rcgen::Certificate, StartError> {
    Ok(issuing_certificate_and_generation(anchor_der, key, domain)?.0)
}

/// As [`issuing_certificate`], with the anchor's generation (1 for the
/// first anchor and for the name of data directories from before anchors).
fn issuing_certificate_and_generation(
    anchor_der: &CertificateDer<'static>,
    key: &rcgen::KeyPair,
    domain: &str,
) -> Result<(rcgen::Certificate, u32), StartError> {
    let subject = webpki::anchor_from_trusted_cert(anchor_der)
        .map_err(|e| tls_error(format!("the trust anchor certificate is damaged ({e:?})")))?
        .subject
        .to_vec();
    let earlier = (rcgen::CertificateParams::default().distinguished_name, 1);
    let names = (1..=MAX_GENERATIONS)
        .map(|g| (anchor_name(domain, g), g))
        .chain([earlier]);
    let anchor_key = webpki::anchor_from_trusted_cert(anchor_der)
        .map_err(|e| tls_error(format!("the trust anchor certificate is damaged ({e:?})")))?
        .subject_public_key_info
        .to_vec();
    for (name, generation) in names {
        let mut params = anchor_params(domain, generation);
        params.distinguished_name = name;
        let cert = params.self_signed(key).map_err(tls_error)?;
        let Ok(made) = webpki::anchor_from_trusted_cert(cert.der()) else {
            continue;
        };
        if made.subject.as_ref() == subject.as_slice() {
            // Serving certificates signed with another key than the
            // anchor's would be refused by every device.
            if made.subject_public_key_info.as_ref() != anchor_key.as_slice() {
                return Err(tls_error(
                    "tls-anchor-key.pem is not the key of tls-anchor.pem: put the anchor's own key back",
                ));
            }
            return Ok((cert, generation));
        }
    }
    Err(tls_error(
        "the trust anchor's name is not one Pouch wrote: give the certificates with --tls-cert, --tls-key and --tls-ca",
    ))
}

/// A PEM file's text, for sending it on as it is.
fn pem_of(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map_err(|e| tls_error(format!("cannot read certificate {}: {e}", path.display())))
}

/// Checks that `leaf` chains to `anchor` as a server certificate at `at`;
/// names are not checked here (see [`covers`]).
fn chains_to(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor: &CertificateDer<'_>,
    at: SystemTime,
) -> Result<SystemTime, String> {
    let anchors = [webpki::anchor_from_trusted_cert(anchor).map_err(|e| format!("{e:?}"))?];
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("{e:?}"))?;
    let time = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    end_entity
        .verify_for_usage(
            provider().signature_verification_algorithms.all,
            &anchors,
            intermediates,
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| at)
        .map_err(|e| format!("{e:?}"))
}

/// Whether the leaf may also authenticate this server as a client (to
/// federation peers).
fn for_clients_too(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor: &CertificateDer<'_>,
) -> bool {
    let Ok(anchors) = webpki::anchor_from_trusted_cert(anchor).map(|a| [a]) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    end_entity
        .verify_for_usage(
            provider().signature_verification_algorithms.all,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
}

/// When the leaf stops being valid, found by asking the same checker the
/// clients use (to the day: renewal needs no finer).
fn valid_until(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor: &CertificateDer<'_>,
) -> SystemTime {
    let now = SystemTime::now();
    let (mut valid, mut invalid) = (0u64, 365 * 200);
    if chains_to(leaf, intermediates, anchor, now).is_err() {
        return now;
    }
    while invalid - valid > 1 {
        let mid = (valid + invalid) / 2;
        if chains_to(leaf, intermediates, anchor, now + DAY * mid as u32).is_ok() {
            valid = mid;
        } else {
            invalid = mid;
        }
    }
    now + DAY * valid as u32
}

fn until_now(days: u64) -> SystemTime {
    SystemTime::now() + DAY * days as u32
}

/// Whether the leaf is valid for every name.
fn covers(leaf: &CertificateDer<'_>, names: &[String]) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    names.iter().all(|n| {
        ServerName::try_from(n.as_str())
            .map(|name| end_entity.verify_is_valid_for_subject_name(&name).is_ok())
            .unwrap_or(false)
    })
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, StartError> {
    CertifiedKey::from_der(chain, key, &provider()).map_err(tls_error)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| tls_error(format!("cannot read certificate {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| tls_error(format!("cannot read private key {}: {e}", path.display())))
}

fn io_error(path: &Path, e: std::io::Error) -> StartError {
    StartError::Io(format!("cannot write {}: {e}", path.display()))
}

/// The SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem_file(path: &Path) -> Result<String, StartError> {
    Ok(fingerprint(read_certs(path)?[0].as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when the test passes.
    struct Dir(PathBuf);

    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn dir() -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "pouch-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn a_renewed_serving_certificate_keeps_the_anchor() {
        let d = dir();
        let first = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        let first_cert = std::fs::read(d.path().join("tls-cert.pem")).unwrap();
        // Restarting keeps the certificate that has days left.
        let again = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("tls-cert.pem")).unwrap(),
            first_cert
        );
        assert!(again.renew_if_due().unwrap().is_none());
        // A new name needs a new certificate, from the same anchor.
        let settings = TlsSettings {
            names: vec!["mail.ministry.example".into()],
            ..Default::default()
        };
        let renamed = TlsIdentity::load(d.path(), "pouch.local", &settings).unwrap();
        assert_ne!(
            std::fs::read(d.path().join("tls-cert.pem")).unwrap(),
            first_cert
        );
        assert_eq!(renamed.anchor_fingerprint, first.anchor_fingerprint);
        let days_left = renamed
            .serving_until
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!(
            (SERVING_DAYS - 2..=SERVING_DAYS).contains(&days_left),
            "{days_left}"
        );
    }

    #[test]
    fn a_serving_certificate_near_its_end_is_renewed_while_running() {
        let d = dir();
        let identity = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        let issuer = identity.issuer.as_ref().unwrap();
        // A certificate with 10 days left, as time would leave it.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(issuer.names.clone()).unwrap();
        params.not_after = (SystemTime::now() + DAY * 10).into();
        let short = params
            .signed_by(&key, &issuer.anchor, &issuer.anchor_key)
            .unwrap();
        std::fs::write(&issuer.cert_path, short.pem()).unwrap();
        std::fs::write(&issuer.key_path, key.serialize_pem()).unwrap();
        let until = identity.renew_if_due().unwrap().expect("renewed");
        assert!(until > SystemTime::now() + DAY * (SERVING_DAYS as u32 - 1));
        // Handshakes from now on get the new certificate.
        let served = identity.serving.0.read().unwrap().cert[0].clone();
        assert_eq!(served, read_certs(&issuer.cert_path).unwrap()[0]);
        assert_ne!(served.as_ref(), short.der().as_ref());
        assert!(identity.renew_if_due().unwrap().is_none());
    }

    #[test]
    fn a_data_directory_from_before_anchors_keeps_its_pinned_certificate_as_anchor() {
        let d = dir();
        // What earlier versions wrote.
        let old = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(d.path().join("tls-cert.pem"), old.cert.pem()).unwrap();
        std::fs::write(d.path().join("tls-key.pem"), old.key_pair.serialize_pem()).unwrap();
        let pinned = fingerprint(old.cert.der());
        let identity = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(identity.anchor_fingerprint, pinned);
        let chain = read_certs(&d.path().join("tls-cert.pem")).unwrap();
        assert_eq!(fingerprint(chain[1].as_ref()), pinned);
        assert!(chains_to(&chain[0], &[], old.cert.der(), SystemTime::now()).is_ok());
    }

    #[test]
    fn a_missing_anchor_key_stops_the_start_and_nothing_is_overwritten() {
        let d = dir();
        let first = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        let anchor = std::fs::read(d.path().join("tls-anchor.pem")).unwrap();
        std::fs::rename(d.path().join("tls-anchor-key.pem"), d.path().join("moved")).unwrap();
        let Err(e) = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()) else {
            panic!("started without the anchor's key");
        };
        assert!(e.to_string().contains("put the key back"), "{e}");
        assert_eq!(
            std::fs::read(d.path().join("tls-anchor.pem")).unwrap(),
            anchor
        );
        // A serving key that no longer matches its certificate (a crash
        // between the two writes) is mended by issuing afresh.
        std::fs::rename(d.path().join("moved"), d.path().join("tls-anchor-key.pem")).unwrap();
        let stray = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.path().join("tls-key.pem"), stray.serialize_pem()).unwrap();
        let mended = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(mended.anchor_fingerprint, first.anchor_fingerprint);
    }

    #[test]
    fn a_migration_cut_off_half_way_is_finished_not_overwritten() {
        let d = dir();
        let old = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        // The certificate moved, the key not yet.
        std::fs::write(d.path().join("tls-anchor.pem"), old.cert.pem()).unwrap();
        std::fs::write(d.path().join("tls-key.pem"), old.key_pair.serialize_pem()).unwrap();
        let identity = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(identity.anchor_fingerprint, fingerprint(old.cert.der()));
        assert_eq!(
            std::fs::read_to_string(d.path().join("tls-anchor-key.pem")).unwrap(),
            old.key_pair.serialize_pem()
        );
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_at_start() {
        let d = dir();
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            (p.self_signed(&key).unwrap(), key)
        };
        let (ministry, ministry_key) = ca("Ministry CA");
        let (other, _) = ca("Other CA");
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ministry, &ministry_key)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let settings = TlsSettings {
            cert: Some(write("leaf.pem", leaf.pem())),
            key: Some(write("leaf-key.pem", leaf_key.serialize_pem())),
            ca: Some(write("ministry.pem", ministry.pem())),
            names: vec![],
            rotate_anchor: false,
        };
        let ok = TlsIdentity::load(d.path(), "pouch.local", &settings).unwrap();
        assert_eq!(ok.anchor_fingerprint, fingerprint(ministry.der()));
        let wrong = TlsSettings {
            ca: Some(write("other.pem", other.pem())),
            ..settings
        };
        let Err(e) = TlsIdentity::load(d.path(), "pouch.local", &wrong) else {
            panic!("a certificate from another CA was accepted");
        };
        assert!(e.to_string().contains("does not chain to the CA"), "{e}");
    }

    /// A change of anchor: the new anchor signs the serving certificate,
    /// the old one cross-signs the new, and the chain sent lets a client
    /// that trusts either anchor find a path; a second change goes on from
    /// the new anchor; a cross-certificate for another key stops the start.
    #[test]
    fn a_changed_anchor_is_endorsed_by_the_old_one() {
        let d = dir();
        let first = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        let change = rotate_anchor(d.path(), "pouch.local").unwrap();
        assert_eq!(change.previous, first.anchor_fingerprint);
        let second = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(second.anchor_fingerprint, change.new);
        assert_ne!(change.new, change.previous);
        let chain = second.serving.0.read().unwrap().cert.clone();
        assert_eq!(
            chain.len(),
            4,
            "leaf, anchor, cross-certificate, previous anchor"
        );
        let old_anchor = read_certs(&d.path().join("tls-anchor-previous.pem"))
            .unwrap()
            .remove(0);
        assert_eq!(fingerprint(old_anchor.as_ref()), change.previous);
        assert_eq!(fingerprint(chain[3].as_ref()), change.previous);
        // Under the new anchor directly; under the old through the cross-certificate.
        let now = SystemTime::now();
        chains_to(&chain[0], &[], &chain[1], now).unwrap();
        chains_to(&chain[0], &[], &old_anchor, now).unwrap_err();
        chains_to(&chain[0], &chain[1..3], &old_anchor, now).unwrap();

        // Not again right away (a restart loop with the flag on)…
        let Err(e) = rotate_anchor(d.path(), "pouch.local") else {
            panic!("a second change right away was made");
        };
        assert!(
            e.to_string().contains("changed less than 7 days ago"),
            "{e}"
        );
        // …but a week later: generation 3, endorsed by generation 2 only.
        let cross = std::fs::File::options()
            .write(true)
            .open(d.path().join(CROSS_CERTIFICATE))
            .unwrap();
        cross
            .set_modified(SystemTime::now() - Duration::from_secs(8 * 86_400))
            .unwrap();
        drop(cross);
        let third = rotate_anchor(d.path(), "pouch.local").unwrap();
        assert_eq!(third.previous, change.new);
        let id = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        let chain = id.serving.0.read().unwrap().cert.clone();
        assert_eq!(fingerprint(chain[1].as_ref()), third.new);
        assert_eq!(fingerprint(chain[3].as_ref()), change.new);

        // A change cut off before its anchor certificate was written did
        // not happen: the next start drops its partial files.
        let before = id.anchor_fingerprint.clone();
        for f in ["tls-anchor-key.pem", "tls-anchor.pem"] {
            std::fs::copy(d.path().join(f), d.path().join(format!("{f}.keep"))).unwrap();
        }
        std::fs::write(d.path().join("tls-anchor-key.pem.next"), "half").unwrap();
        let unchanged =
            TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()).unwrap();
        assert_eq!(unchanged.anchor_fingerprint, before);
        assert!(!d.path().join("tls-anchor-key.pem.next").exists());
        // The anchor with a key that is not its own: refused, nothing issued.
        std::fs::write(
            d.path().join("tls-anchor-key.pem"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let Err(e) = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()) else {
            panic!("an anchor with a foreign key was used");
        };
        assert!(
            e.to_string().contains("is not the key of tls-anchor.pem"),
            "{e}"
        );
        std::fs::copy(
            d.path().join("tls-anchor-key.pem.keep"),
            d.path().join("tls-anchor-key.pem"),
        )
        .unwrap();

        // A cross-certificate that certifies some other key is refused.
        std::fs::copy(
            d.path().join("tls-anchor-previous.pem"),
            d.path().join("tls-anchor-cross.pem"),
        )
        .unwrap();
        let Err(e) = TlsIdentity::load(d.path(), "pouch.local", &TlsSettings::default()) else {
            panic!("a foreign cross-certificate was sent");
        };
        assert!(e.to_string().contains("does not certify the anchor"), "{e}");
    }
}
