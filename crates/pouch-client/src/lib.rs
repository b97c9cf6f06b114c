//! A Pouch device: enrolling, sending, syncing and reading mail.
//!
//! This crate is the client core the CLI (and later the IMAP/SMTP bridge)
//! drives. It prints nothing and asks nothing: passphrases come in as
//! arguments, results go out as values. Network I/O is blocking HTTPS to one
//! pinned server; all state lives in the encrypted [`local::LocalStore`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod blob;
pub mod devices;
pub mod error;
mod history;
pub mod labels;
pub mod local;
pub mod mail;
pub mod mailboxes;
mod migrations;
pub mod net;
pub mod officer;
pub mod outbox;
mod receipt;
mod remote;
mod sealed;
pub mod search;
pub mod transparency;

pub use error::{ClientError, Result};

use local::LocalStore;
use mail::{Outgoing, Parsed};
use net::Api;
use pouch_mls::{Ciphersuite, DeviceSigner, MlsGroup, Opened};
use pouch_proto::api::{self, QueueItem, QueueKind};
use pouch_proto::devices::{DeviceListBody, ListedDevice};
use pouch_proto::envelope::{BlobRef, Content, Envelope, INLINE_LIMIT};
use pouch_proto::invite::Invite;
use pouch_proto::{Address, DeviceId, GroupId};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::Path;

/// Key packages a device keeps on the server; topped up below half.
pub const KEY_PACKAGE_POOL: u32 = 100;
/// How often a device replaces its key packages on the server (four weeks,
/// well inside their twelve-week lifetime).
pub const KEY_REFRESH_SECS: i64 = 28 * 86_400;
/// How often a send retries after losing a race for the conversation's epoch.
const EPOCH_RETRIES: usize = 5;

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A link request waiting for approval.
#[derive(Debug, Serialize)]
pub struct LinkPending {
    pub code: String,
    pub expires_at: i64,
    pub device_id: DeviceId,
    pub key_fingerprint: String,
}

fn suite_code(info: &api::ServerInfo) -> u16 {
    info.ciphersuite
}

/// Called with (what, bytes done, bytes in all) during long transfers.
pub type Progress = Box<dyn FnMut(&str, u64, u64)>;
pub type ProgressHook = Option<Progress>;

/// Adapts the device's progress hook (if any) to one transfer.
fn progress_hook<'a>(hook: &'a mut ProgressHook, what: &'a str) -> impl FnMut(u64, u64) + 'a {
    move |done, total| {
        if let Some(p) = hook.as_mut() {
            p(what, done, total);
        }
    }
}

/// RFC 3339 in UTC, for notices.
pub fn format_time(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// What `pouch enroll` reports.
#[derive(Debug, Serialize)]
pub struct Enrolled {
    pub address: Address,
    pub device_id: DeviceId,
    pub ciphersuite: u16,
}

/// A mail to compose and send.
#[derive(Debug, Default)]
pub struct Compose {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    pub body: String,
    /// (file name, path) of each attachment.
    pub attachments: Vec<(String, std::path::PathBuf)>,
    /// Local id of the message this one answers: the reply joins its conversation.
    pub reply_to: Option<i64>,
    /// The classification label as the user typed it (a marking such as
    /// `SECRET//REL TO CZE`); the policy's default when absent.
    pub label: Option<String>,
    /// Why this reply carries a lower label than what it answers.
    pub downgrade: Option<String>,
    /// Further header fields, written after Date (the label's, from the above).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct Sent {
    pub id: i64,
    pub message_id: String,
    pub conversation: String,
    pub recipient_devices: u32,
    /// Security findings made while sending (e.g. a device refused).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, Clone)]
pub struct MessageSummary {
    pub id: i64,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub date: i64,
    pub size: u64,
    pub attachments: Vec<String>,
    pub conversation: String,
    /// The mail's classification label (canonical STANAG 4774 XML, byte
    /// for byte as the sender's client wrote it), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The label as people read it (`SECRET//REL TO CZE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marking: Option<String>,
}

/// What one `sync` did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub new_messages: Vec<i64>,
    pub joined_conversations: u32,
    pub commits: u32,
    /// Items that could not be opened or failed a check: (server seq, reason).
    pub rejected: Vec<(u64, String)>,
    pub key_packages_uploaded: u32,
    /// Messages imported from another device's history.
    pub history_imported: u32,
    /// Conversations in which this device made a rotation (self-update) commit.
    pub rotated: u32,
    /// Alerts the server's detection rules raised about this account since the last sync.
    pub security_alerts: Vec<String>,
    /// Seconds since the newest checkpoint the required witnesses cosigned (when the log has witnesses).
    pub witnessed_age_secs: Option<u64>,
    /// Security alerts about this account (e.g. a device the account never approved).
    pub alerts: Vec<String>,
}

/// Why a submitted mail cannot be sent at all, if it cannot: checked before
/// it is queued ([`outbox::Outbox::queue`]) and again when it is sent.
pub(crate) fn submission_problem(
    parsed: &mail::Parsed,
    own: &Address,
    envelope: &[Address],
) -> Option<String> {
    if parsed.from.as_ref() != Some(own) {
        return Some(format!(
            "the message's From must be this device's address {own}"
        ));
    }
    if parsed.to.is_empty() && parsed.cc.is_empty() && parsed.bcc.is_empty() && envelope.is_empty()
    {
        return Some("the message has no recipients".into());
    }
    None
}

/// What became of a mail handed to [`Device::send_or_keep`].
#[derive(Debug)]
pub enum Submitted {
    Sent(Sent),
    /// Kept in the outbox: the server could not be reached (or earlier
    /// mail still waits); the next `pouch sync`, `pouch send` or the bridge
    /// sends it.
    Kept {
        message_id: String,
        reason: String,
        /// Mails in the outbox now, this one included.
        waiting: u64,
    },
}

/// What [`Device::send_waiting`] did with the outbox.
#[derive(Debug, Default, Serialize)]
pub struct Drained {
    /// Message-IDs of the mails that went.
    pub sent: Vec<String>,
    /// Why each mail that can never go was taken out (a notice in the INBOX says more).
    pub bounced: Vec<String>,
    /// Mails still waiting.
    pub waiting: u64,
    /// Why the oldest still waits.
    pub waiting_because: Option<String>,
}

/// What [`Device::send_next_queued`] did.
#[derive(Debug)]
pub enum Sending {
    /// Nothing is due.
    Idle,
    /// The oldest mail went.
    Sent { message_id: String },
    /// The oldest mail can never go: taken out, and a notice in the INBOX says why.
    Bounced { reason: String },
    /// The oldest mail cannot go now: it is tried again later.
    Postponed { reason: String },
}

/// Whether a send that failed may work later: the server or the network
/// failed, not the mail.
fn worth_retrying(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable(..)
        | ClientError::UntrustedCertificate(_)
        | ClientError::Protocol(_)
        | ClientError::Local(_)
        | ClientError::Io(_) => true,
        ClientError::Server { status, .. } => *status >= 500 || *status == 429,
        // Another member committed first, again and again: a race, not the mail.
        e if e.is_stale_epoch() => true,
        _ => false,
    }
}

/// What applying a page of queued items came to ([`Device::receive_page`]).
pub struct ReceivedPage {
    pub report: SyncReport,
    /// Everything up to this queue position is on disk: acknowledge it.
    pub ack: Option<u64>,
    /// The checks after the page (fan-out against roster, held items) could
    /// not run; they run on a later sync.
    pub checks_failed: Option<ClientError>,
}

pub struct Device {
    local: LocalStore,
    api: Api,
    address: Address,
    device_id: DeviceId,
    suite: Ciphersuite,
    signer: DeviceSigner,
    /// Security findings to report with the current operation's result.
    warnings: Vec<String>,
    progress: ProgressHook,
    /// When this device last brought its directory cache up to the log.
    directory_checked: Option<std::time::Instant>,
    /// When each conversation's fan-out was last compared with its roster.
    membership_checked: std::collections::HashMap<GroupId, std::time::Instant>,
    /// The conversation last loaded for sending, and the store's
    /// `data_version` then: unchanged at sealing time means no other
    /// process wrote to the store since, so the loaded state is current.
    loaded_for_send: Option<(Vec<u8>, i64)>,
    /// Who the last [`Device::submit_mail`] delivered to before it failed
    /// (To and Cc as one entry, then each blind copy): a mail that reached
    /// some is never sent again as a whole.
    delivered: Vec<String>,
    /// While an outbox mail is being sent: what its submission ids (one
    /// per delivery: the shared copy, then each blind copy) derive from,
    /// the same on every attempt, so the server queues it once however
    /// often an answer is lost.
    submission_base: Option<[u8; 32]>,
    /// An earlier attempt at that mail may have reached the server: only
    /// then is "accepted before" believable (else a server could drop a
    /// mail and have this device hide the gap by giving its link back).
    duplicate_possible: bool,
    /// The label policy in force, as last verified ([`labels`]).
    labels: Option<labels::LabelContext>,
    /// The officer's statements as last looked up ([`labels::OfficerMemo`]).
    officer_memo: labels::OfficerMemo,
    /// The label of the mail being sent and its policy.
    sending_label: Option<labels::Sending>,
    /// A reply being sent with a lower label than what it answers, and why
    /// (reported to the security team once it is sent).
    downgraded: Option<String>,
    /// The early check of the bridge's SMTP submissions ([`labels::LabelGate`]).
    gate: labels::LabelGate,
    /// The log's commitment key once read from the store (it never changes).
    commitments_pinned: Option<pouch_log::Commitments>,
    /// Other domains' accounts this process verified: the SHA-256 of the
    /// answer checked, and the list it gave ([`remote`]). The same answer
    /// again is not checked again.
    remote_verified: std::collections::HashMap<Address, remote::Verified>,
    /// Officer statements this process verified ([`labels`]).
    verified: labels::Verified,
    /// The officer's card last verified: (body, signature, key, name).
    officer_card: Option<(String, String, ed25519_dalek::VerifyingKey, String)>,
    /// Set only by tests that play a modified client: the inner and outer
    /// labels to send, with no check ([`Device::play_modified_client`]).
    modified_labels: Option<(Option<String>, Option<String>)>,
}

/// How often a conversation that keeps receiving mail has its fan-out
/// compared with the MLS roster (a request and a load of the group state):
/// after every commit or Welcome, and otherwise at most this often, so a
/// busy conversation does not pay it per message while a fan-out changed
/// behind the members' backs is still seen within this time of the next mail.
const MEMBERSHIP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Device {
    /// Creates this device's keys and registers it with the invite's server
    /// as the account's first device: it creates the account key and signs
    /// the first device list (or, after an administrator reset, the next one).
    pub fn enroll(
        home: &Path,
        passphrase: &str,
        invite: &Invite,
        device_name: &str,
    ) -> Result<Enrolled> {
        let api = Api::new(&invite.server, &invite.fingerprint)?;
        let info: api::ServerInfo = api.get_json("/v1/info")?;
        let suite = pouch_mls::ciphersuite(info.ciphersuite)?;
        let secret = invite
            .secret_bytes()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        // The lists so far (after a reset, the new list continues them). An
        // invite the server does not take shows nothing; enrolling then
        // says why (used, expired, unknown).
        let history: api::DeviceListHistory = match api.get_json_with(
            &format!("/v1/device-lists/{}", invite.address),
            api::INVITE_HEADER,
            &hex::encode(&secret),
        ) {
            Err(ClientError::Server { status: 401, .. }) => api::DeviceListHistory {
                address: invite.address.clone(),
                lists: Vec::new(),
            },
            other => other?,
        };
        let local = LocalStore::create(home, passphrase)?;
        let result = (|| {
            let p = &local.provider;
            let signer = pouch_mls::new_device_signer(p)?;
            let device_id = DeviceId(hex::encode(rand::random::<[u8; 16]>()));
            let account = devices::AccountKey::generate();
            let previous = history.lists.last();
            let body = DeviceListBody {
                address: invite.address.clone(),
                version: previous
                    .and_then(|l| l.body_unverified().ok())
                    .map(|b| b.version + 1)
                    .unwrap_or(1),
                previous: previous.map(|l| l.hash()),
                account_key: account.public(),
                devices: vec![ListedDevice {
                    device_id: device_id.clone(),
                    signature_key: signer.to_public_vec(),
                    name: device_name.to_string(),
                    added_at: now(),
                    added_from: None,
                    sealed: None,
                }],
                issued_at: now(),
                reason: if previous.is_some() {
                    "reset"
                } else {
                    "enrolled"
                }
                .into(),
            };
            let key_packages = pouch_mls::key_packages(
                p,
                suite,
                &signer,
                &invite.address,
                KEY_PACKAGE_POOL as usize,
                false,
            )?;
            let last_resort =
                pouch_mls::key_packages(p, suite, &signer, &invite.address, 1, true)?.remove(0);
            let resp: api::EnrollResponse = api.post_json(
                "/v1/enroll",
                &api::EnrollRequest {
                    address: invite.address.clone(),
                    device_id: device_id.clone(),
                    device_list: account.sign(&body),
                    invite_secret: invite
                        .secret_bytes()
                        .map_err(|e| ClientError::Invalid(e.to_string()))?,
                    device_name: device_name.to_string(),
                    signature_key: signer.to_public_vec(),
                    key_packages,
                    last_resort_key_package: last_resort,
                },
            )?;
            local.set_account_key(&account)?;
            Self::remember_log(&local, &info)?;
            local.set_meta("own_list_version", &body.version.to_string())?;
            Self::remember_server(
                &local,
                &api,
                &invite.fingerprint,
                &invite.address,
                &resp.device_id,
                &signer,
                resp.ciphersuite,
                &info.domain,
            )?;
            Ok(Enrolled {
                address: invite.address.clone(),
                device_id: resp.device_id,
                ciphersuite: resp.ciphersuite,
            })
        })();
        if result.is_err() {
            Self::discard(local, home);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn remember_server(
        local: &LocalStore,
        api: &Api,
        fingerprint: &str,
        address: &Address,
        device_id: &DeviceId,
        signer: &DeviceSigner,
        suite: u16,
        domain: &str,
    ) -> Result<()> {
        local.set_meta("server", api.base())?;
        local.set_meta("fingerprint", fingerprint)?;
        local.set_meta("address", address.as_str())?;
        local.set_meta("device_id", &device_id.0)?;
        local.set_meta("signature_key", &hex::encode(signer.public()))?;
        local.set_meta("ciphersuite", &suite.to_string())?;
        local.set_meta("queue_cursor", "0")?;
        // The packages uploaded at enrollment are fresh.
        local.set_meta("key_packages_refreshed_at", &now().to_string())?;
        local.set_meta("domain", domain)
    }

    /// Pins the transparency log's key and origin, as announced over the pinned TLS connection.
    fn remember_log(local: &LocalStore, info: &api::ServerInfo) -> Result<()> {
        if info.log_key.is_empty() {
            return Err(ClientError::Protocol(
                "the server announces no transparency log; upgrade the server".into(),
            ));
        }
        local.set_meta("log_key", &info.log_key)?;
        local.set_meta(
            "log_witnesses",
            &serde_json::to_string(&info.witnesses).expect("serialises"),
        )?;
        local.set_meta("log_origin", &info.log_origin)
    }

    /// Leaves nothing half-made behind: the user starts again from scratch.
    fn discard(local: LocalStore, home: &Path) {
        drop(local);
        for f in [
            local::DB_FILE,
            local::KDF_FILE,
            "device.db-wal",
            "device.db-shm",
        ] {
            let _ = std::fs::remove_file(home.join(f));
        }
        let _ = std::fs::remove_dir_all(home.join("mail"));
    }

    /// A new device asks to join an account; an existing device must approve
    /// it with the returned code. Nothing is usable until then.
    pub fn link_start(
        home: &Path,
        passphrase: &str,
        server: &str,
        fingerprint: &str,
        address: &Address,
        device_name: &str,
    ) -> Result<LinkPending> {
        let api = Api::new(server, fingerprint)?;
        let info: api::ServerInfo = api.get_json("/v1/info")?;
        let suite = pouch_mls::ciphersuite(info.ciphersuite)?;
        let local = LocalStore::create(home, passphrase)?;
        let result = (|| {
            let p = &local.provider;
            let signer = pouch_mls::new_device_signer(p)?;
            let device_id = DeviceId(hex::encode(rand::random::<[u8; 16]>()));
            let nonce = rand::random::<[u8; 16]>().to_vec();
            let poll_secret = rand::random::<[u8; 32]>().to_vec();
            let key_packages = pouch_mls::key_packages(
                p,
                suite,
                &signer,
                address,
                KEY_PACKAGE_POOL as usize,
                false,
            )?;
            let last_resort =
                pouch_mls::key_packages(p, suite, &signer, address, 1, true)?.remove(0);
            let created: api::LinkCreated = api.post_json(
                "/v1/link",
                &api::LinkRequestBody {
                    address: address.clone(),
                    device_id: device_id.clone(),
                    device_name: device_name.to_string(),
                    signature_key: signer.to_public_vec(),
                    nonce,
                    poll_secret: poll_secret.clone(),
                    key_packages,
                    last_resort_key_package: last_resort,
                },
            )?;
            Self::remember_server(
                &local,
                &api,
                fingerprint,
                address,
                &device_id,
                &signer,
                suite_code(&info),
                &info.domain,
            )?;
            local.set_meta("link_poll_secret", &hex::encode(&poll_secret))?;
            Self::remember_log(&local, &info)?;
            Ok(LinkPending {
                code: created.code,
                expires_at: created.expires_at,
                device_id,
                key_fingerprint: pouch_proto::devices::fingerprint(signer.public()),
            })
        })();
        if result.is_err() {
            Self::discard(local, home);
        }
        result
    }

    /// Waits for the approval of a link started with [`Device::link_start`]:
    /// `Ok(true)` once approved and the account key has arrived.
    pub fn link_wait(
        home: &Path,
        passphrase: &str,
        timeout: std::time::Duration,
        progress: ProgressHook,
    ) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        let (api, secret) = {
            let local = LocalStore::open(home, passphrase)?;
            let api = Api::new(
                &local.require_meta("server")?,
                &local.require_meta("fingerprint")?,
            )?;
            let secret = hex::decode(local.require_meta("link_poll_secret")?)
                .map_err(|_| ClientError::Local("damaged link state".into()))?;
            (api, secret)
        };
        let status = loop {
            let info: api::LinkInfo = api.post_json(
                "/v1/link/status",
                &api::LinkPoll {
                    poll_secret: secret.clone(),
                },
            )?;
            if info.status != "pending" || std::time::Instant::now() >= deadline {
                break info.status;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        };
        match status.as_str() {
            "approved" => {
                let mut device = Device::open(home, passphrase)?;
                device.progress = progress;
                // The account key (and any history) comes over MLS from the approving device.
                let key_deadline =
                    deadline.max(std::time::Instant::now() + std::time::Duration::from_secs(60));
                while std::time::Instant::now() < key_deadline {
                    device.sync()?;
                    if device.local.account_key()?.is_some() {
                        device.local.set_meta("link_poll_secret", "")?;
                        return Ok(true);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(ClientError::Protocol(
                    "approved, but the account key did not arrive; run 'pouch sync' later".into(),
                ))
            }
            other => {
                if let Ok(local) = LocalStore::open(home, passphrase) {
                    Self::discard(local, home);
                }
                Err(ClientError::Invalid(if other == "pending" {
                    "no device approved this one in time; start 'pouch link' again".to_string()
                } else {
                    format!("the link request was {other}; this device was not added")
                }))
            }
        }
    }

    /// Opens the device's encrypted state. No network traffic until needed.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self> {
        let local = LocalStore::open(home, passphrase)?;
        let api = Api::new(
            &local.require_meta("server")?,
            &local.require_meta("fingerprint")?,
        )?;
        let address = Address::parse(&local.require_meta("address")?)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let device_id = DeviceId(local.require_meta("device_id")?);
        let suite_code: u16 = local
            .require_meta("ciphersuite")?
            .parse()
            .map_err(|_| ClientError::Local("damaged ciphersuite".into()))?;
        let suite = pouch_mls::ciphersuite(suite_code)?;
        let public = hex::decode(local.require_meta("signature_key")?)
            .map_err(|_| ClientError::Local("damaged key id".into()))?;
        let signer = pouch_mls::load_device_signer(&local.provider, &public)?;
        Ok(Device {
            local,
            api,
            address,
            device_id,
            suite,
            signer,
            warnings: Vec::new(),
            progress: None,
            directory_checked: None,
            membership_checked: Default::default(),
            loaded_for_send: None,
            delivered: Vec::new(),
            submission_base: None,
            labels: None,
            sending_label: None,
            officer_memo: Default::default(),
            downgraded: None,
            modified_labels: None,
            verified: Default::default(),
            officer_card: None,
            commitments_pinned: None,
            remote_verified: Default::default(),
            gate: Default::default(),
            duplicate_possible: false,
        })
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// Signs in once; the connection renews the token by itself afterwards.
    pub(crate) fn sign_in(&mut self) -> Result<()> {
        if !self.api.signed_in() {
            // Its own copy of the key, read from the device's storage.
            let signer = pouch_mls::load_device_signer(&self.local.provider, self.signer.public())?;
            self.api.sign_in(
                &self.device_id,
                std::rc::Rc::new(move |payload| Ok(pouch_mls::sign_raw(&signer, payload)?)),
            )?;
            self.follow_endorsed_anchor()?;
        }
        Ok(())
    }

    /// Pins the new TLS trust anchor the pinned one endorsed (cross-signed),
    /// if the server showed one, and tells the user once.
    fn follow_endorsed_anchor(&mut self) -> Result<()> {
        let Some(new) = self.api.endorsed_successor() else {
            return Ok(());
        };
        let old = self.local.require_meta("fingerprint")?;
        if new == old {
            return Ok(());
        }
        self.local.set_meta("previous_fingerprint", &old)?;
        self.local.set_meta("fingerprint", &new)?;
        self.warnings.push(format!(
            "the server's TLS trust anchor changed from {old} to {new}, endorsed by the old one; this device trusts the new one now (if your administrator did not announce it, tell your security team)"
        ));
        Ok(())
    }

    /// The trust anchor's SHA-256 this device pins, and the one it
    /// replaced (if it changed).
    pub fn trust_anchor(&self) -> Result<(String, Option<String>)> {
        Ok((
            self.local.require_meta("fingerprint")?,
            self.local.meta("previous_fingerprint")?,
        ))
    }

    /// `pouch trust-anchor accept`: trusts the anchor with this SHA-256
    /// after the user compared it with the one the operator announced. The
    /// server must show it (its certificate must chain to it) before it is
    /// pinned. Returns the anchor it replaced.
    pub fn accept_trust_anchor(home: &Path, passphrase: &str, fingerprint: &str) -> Result<String> {
        let fingerprint = fingerprint.trim().to_ascii_lowercase();
        let local = LocalStore::open(home, passphrase)?;
        let api = Api::new(&local.require_meta("server")?, &fingerprint)?;
        let _: api::ServerInfo = api.get_json("/v1/info")?;
        let old = local.require_meta("fingerprint")?;
        if old != fingerprint {
            local.set_meta("previous_fingerprint", &old)?;
            local.set_meta("fingerprint", &fingerprint)?;
        }
        Ok(old)
    }

    // ---------- sending ----------

    /// HTTPS requests this device has made since it was opened.
    pub fn requests_made(&self) -> u64 {
        self.api.requests()
    }

    /// Composes an RFC 5322 message and sends it. Attachments are streamed
    /// from disk, never held in memory whole.
    pub fn send(&mut self, compose: Compose) -> Result<Sent> {
        let (out, group) = self.composed(compose)?;
        self.deliver(&out, group)
    }

    /// As [`Self::send`], but a mail the server could not be reached for at
    /// all is kept in the outbox (see [`Self::submit_or_keep`]).
    pub fn send_or_keep(&mut self, compose: Compose) -> Result<Submitted> {
        let (out, group) = self.composed(compose)?;
        self.submit_or_keep(out, group)
    }

    /// As [`Self::send_eml`], keeping the mail when the server cannot be reached.
    pub fn send_eml_or_keep(&mut self, path: &Path) -> Result<Submitted> {
        let (out, group) = self.eml_outgoing(path)?;
        self.submit_or_keep(out, group)
    }

    /// For tests only: makes this device behave as a *modified* client
    /// would — send `inner` as the label inside each message and `outer` as
    /// the copy for the server, skipping every label check — so the tests
    /// can show that the server and the receivers catch it. Nothing in the
    /// CLI or the bridge calls it.
    #[doc(hidden)]
    pub fn play_modified_client(&mut self, inner: Option<String>, outer: Option<String>) {
        self.modified_labels = Some((inner, outer));
    }

    /// Hands a mail over as an embassy on a poor link needs it: what waits
    /// in the outbox goes first; if anything still waits, or the server
    /// cannot be reached at all (no request reached it), the mail is kept in
    /// the outbox behind it, for the next `pouch sync`, `pouch send` or the
    /// bridge. Never lost (the outbox is written with `synchronous = FULL`
    /// before this returns) and never sent twice (a mail is kept only when
    /// nothing of it reached the server).
    fn submit_or_keep(&mut self, out: Outgoing, group: Option<GroupId>) -> Result<Submitted> {
        let outbox = self.local.open_outbox()?;
        let mut waiting_reason = None;
        if outbox.waiting()? > 0 {
            // The user is sending now: what waits is tried now, whatever its
            // back-off, and nothing overtakes what still waits after that.
            outbox.all_due_now()?;
            let drained = self.send_queued(&outbox)?;
            if drained.waiting > 0 {
                waiting_reason = Some(
                    drained
                        .waiting_because
                        .unwrap_or_else(|| "earlier mail still waits".into()),
                );
            }
        }
        if waiting_reason.is_none() {
            match self.deliver(&out, group) {
                Ok(sent) => return Ok(Submitted::Sent(sent)),
                Err(e) if e.never_reached_server() => waiting_reason = Some(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        let mut envelope: Vec<Address> = out
            .parsed
            .to
            .iter()
            .chain(&out.parsed.cc)
            .cloned()
            .collect();
        envelope.sort();
        envelope.dedup();
        let message_id = outbox
            .queue(&self.address, out.to_vec()?, &envelope)?
            .unwrap_or_default();
        Ok(Submitted::Kept {
            message_id,
            reason: waiting_reason.unwrap_or_default(),
            waiting: outbox.waiting()?,
        })
    }

    /// Sends what waits in the outbox now, oldest first, whatever its
    /// back-off (the user asked), until it is empty or a mail must wait.
    pub fn send_waiting(&mut self) -> Result<Drained> {
        let outbox = self.local.open_outbox()?;
        if outbox.waiting()? == 0 {
            return Ok(Drained::default());
        }
        outbox.all_due_now()?;
        self.send_queued(&outbox)
    }

    fn send_queued(&mut self, outbox: &outbox::Outbox) -> Result<Drained> {
        let mut drained = Drained::default();
        loop {
            match self.send_next_queued(outbox)? {
                Sending::Idle => break,
                Sending::Sent { message_id } => drained.sent.push(message_id),
                Sending::Bounced { reason } => drained.bounced.push(reason),
                Sending::Postponed { reason } => {
                    drained.waiting_because = Some(reason);
                    break;
                }
            }
        }
        drained.waiting = outbox.waiting()?;
        Ok(drained)
    }

    /// The mails waiting in the outbox, oldest first.
    pub fn outbox_list(&self) -> Result<Vec<outbox::Waiting>> {
        self.local.open_outbox()?.list()
    }

    fn composed(&mut self, compose: Compose) -> Result<(Outgoing, Option<GroupId>)> {
        if compose.to.is_empty() && compose.cc.is_empty() {
            return Err(ClientError::Invalid(
                "name at least one recipient with --to".into(),
            ));
        }
        let domain = self
            .local
            .meta("domain")?
            .unwrap_or_else(|| self.address.domain().to_string());
        let reply = match compose.reply_to {
            Some(id) => Some(self.reply_context(id)?),
            None => None,
        };
        let mut compose = compose;
        self.label_headers(&mut compose)?;
        let out = mail::compose(
            &self.address,
            &compose,
            reply.as_ref().map(|r| &r.1),
            &domain,
        )?;
        Ok((out, reply.map(|r| r.0)))
    }

    /// Sends a complete RFC 5322 message from a file, byte for byte.
    pub fn send_eml(&mut self, path: &Path) -> Result<Sent> {
        let (out, group) = self.eml_outgoing(path)?;
        self.deliver(&out, group)
    }

    fn eml_outgoing(&mut self, path: &Path) -> Result<(Outgoing, Option<GroupId>)> {
        let out = Outgoing::from_file(path.to_path_buf())?;
        let parsed = &out.parsed;
        if parsed.from.as_ref() != Some(&self.address) {
            return Err(ClientError::Invalid(format!(
                "the message's From must be this device's address {}",
                self.address
            )));
        }
        if parsed.has_bcc {
            return Err(ClientError::Invalid(
                "Bcc is not supported by 'pouch send --eml' yet; remove the Bcc header".into(),
            ));
        }
        // A reply to a known message stays in that message's conversation.
        let group = match &parsed.in_reply_to {
            Some(mid) => self
                .local
                .conn
                .query_row(
                    "SELECT group_id FROM messages WHERE message_id = ?1 LIMIT 1",
                    [mid],
                    |r| r.get::<_, String>(0),
                )
                .optional()?,
            None => None,
        };
        Ok((out, group.map(GroupId)))
    }

    fn reply_context(&self, id: i64) -> Result<(GroupId, mail::ReplyTo)> {
        let row: Option<(String, Option<String>, String)> = self
            .local
            .conn
            .query_row(
                "SELECT group_id, message_id, subject FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (group, message_id, subject) = row.ok_or(ClientError::NoSuchMessage(id))?;
        Ok((
            GroupId(group),
            mail::ReplyTo {
                message_id,
                subject,
            },
        ))
    }

    fn deliver(&mut self, out: &Outgoing, group: Option<GroupId>) -> Result<Sent> {
        let mut wanted: Vec<Address> = out
            .parsed
            .to
            .iter()
            .chain(out.parsed.cc.iter())
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Err(ClientError::Invalid(
                "the message has no recipients (To or Cc)".into(),
            ));
        }
        if wanted.len() > pouch_proto::MAX_RECIPIENTS {
            return Err(ClientError::Invalid(format!(
                "the message has {} recipients in To and Cc; at most {} can share one conversation: split the list",
                wanted.len(),
                pouch_proto::MAX_RECIPIENTS
            )));
        }
        let (group_id, recipient_devices) = self.deliver_to(out, group, &wanted, None)?;
        // Only now, with the server's acceptance, is the mail recorded as sent.
        let id = self.store_sent_copy(&group_id, out)?;
        Ok(Sent {
            id,
            message_id: out.parsed.message_id.clone().unwrap_or_default(),
            conversation: group_id.0,
            recipient_devices,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// Sends a message as a mail client submits it (the bridge's SMTP): to
    /// the envelope's recipients. Those named in To and Cc share one
    /// conversation; each blind-copy recipient (in the envelope or a Bcc
    /// field, not in To or Cc) gets the message in a conversation of their
    /// own, so no recipient — not even through the conversation's
    /// membership — learns of another's blind copy. Nobody receives the Bcc
    /// field; the sender's own Sent copy keeps the message as submitted.
    pub fn submit_mail(&mut self, raw: Vec<u8>, envelope: &[Address]) -> Result<Sent> {
        self.submit_outgoing(&Outgoing::from_bytes(raw)?, envelope)
    }

    fn submit_outgoing(&mut self, original: &Outgoing, envelope: &[Address]) -> Result<Sent> {
        let parsed = &original.parsed;
        if let Some(problem) = submission_problem(parsed, &self.address, envelope) {
            return Err(ClientError::Invalid(problem));
        }
        let mut visible: Vec<Address> = parsed.to.iter().chain(&parsed.cc).cloned().collect();
        visible.sort();
        visible.dedup();
        let mut blind: Vec<Address> = envelope
            .iter()
            .chain(&parsed.bcc)
            .filter(|a| !visible.contains(a))
            .cloned()
            .collect();
        blind.sort();
        blind.dedup();
        if visible.is_empty() && blind.is_empty() {
            return Err(ClientError::Invalid("the message has no recipients".into()));
        }
        let shared = Outgoing::from_bytes(mail::without_bcc(&original.to_vec()?))?;
        let thread = match &parsed.in_reply_to {
            Some(mid) => self
                .local
                .conn
                .query_row(
                    "SELECT group_id FROM messages WHERE message_id = ?1 LIMIT 1",
                    [mid],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .map(GroupId),
            None => None,
        };
        let mut first: Option<(GroupId, u32)> = None;
        let mut devices = 0;
        self.delivered.clear();
        if !visible.is_empty() {
            let submission = self.submission_id(0);
            let (g, n) = self.deliver_to(&shared, thread, &visible, submission)?;
            devices += n;
            first = Some((g, n));
            let names: Vec<&str> = visible.iter().map(|a| a.as_str()).collect();
            self.delivered.push(names.join(", "));
        }
        for (part, b) in blind.iter().enumerate() {
            let submission = self.submission_id(part as u32 + 1);
            let (g, n) = self.deliver_to(&shared, None, std::slice::from_ref(b), submission)?;
            devices += n;
            first.get_or_insert((g, n));
            self.delivered.push(format!("{b} (blind copy)"));
        }
        let (group_id, _) = first.expect("at least one recipient");
        let id = self.store_sent_copy(&group_id, original)?;
        Ok(Sent {
            id,
            message_id: original.parsed.message_id.clone().unwrap_or_default(),
            conversation: group_id.0,
            recipient_devices: devices,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// The outbox of this device's home, for the bridge's SMTP sessions
    /// (they queue into it from their own threads).
    pub fn outbox(&self) -> Result<std::sync::Arc<outbox::Outbox>> {
        Ok(std::sync::Arc::new(self.local.open_outbox()?))
    }

    /// Sends the oldest mail of the outbox, if it is due. A mail that can
    /// never go is taken out and a notice in the INBOX says which and why;
    /// one that cannot go now waits for a later attempt (and holds back the
    /// mails behind it).
    pub fn send_next_queued(&mut self, outbox: &outbox::Outbox) -> Result<Sending> {
        let Some(queued) = outbox.next_due(now())? else {
            return Ok(Sending::Idle);
        };
        self.delivered.clear();
        let original = Outgoing::from_bytes(queued.raw);
        self.submission_base = Some(outbox.submission_base(queued.id, queued.queued_at));
        self.duplicate_possible = queued.may_have_reached;
        let sent = match &original {
            Ok(o) => self.submit_outgoing(o, &queued.envelope),
            Err(e) => Err(ClientError::Invalid(e.to_string())),
        };
        self.submission_base = None;
        self.duplicate_possible = false;
        let (reason, why) = match sent {
            Ok(sent) => {
                outbox.remove(queued.id)?;
                return Ok(Sending::Sent {
                    message_id: sent.message_id,
                });
            }
            Err(e) => (e.to_string(), e),
        };
        let subject: String = original
            .map(|o| o.parsed.subject)
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let to: Vec<&str> = queued.envelope.iter().map(|a| a.as_str()).collect();
        let to = to.join(", ");
        let delivered = std::mem::take(&mut self.delivered);
        let too_old = now() - queued.queued_at > outbox::GIVE_UP_AFTER_SECS;
        // Retried only while nobody has it: a mail that reached some
        // recipients is never sent to them again.
        if delivered.is_empty() && worth_retrying(&why) && !too_old {
            // Whether the server may have taken it: anything but a refused
            // connection or a definite refusal.
            let may_have_reached = !why.never_reached_server()
                && !matches!(&why, ClientError::Server { status, .. } if *status < 500 || *status == 507);
            outbox.postpone(queued.id, queued.attempts, &reason, may_have_reached)?;
            return Ok(Sending::Postponed { reason });
        }
        // The reason may be the server's words: quoted, cut short, never
        // presented as Pouch's own instruction.
        let quoted: String = reason.chars().take(300).collect();
        let mut text = if too_old {
            format!(
                "Your mail \"{subject}\" to {to} could not be sent for {} days and was taken out of the outbox. The last attempt failed with: \"{quoted}\"",
                outbox::GIVE_UP_AFTER_SECS / 86_400
            )
        } else {
            format!(
                "Your mail \"{subject}\" to {to} could not be sent and was taken out of the outbox. The attempt failed with: \"{quoted}\""
            )
        };
        if !delivered.is_empty() {
            text.push_str(&format!(
                "\r\nIt did reach: {}. Do not send it to them again.",
                delivered.join("; ")
            ));
        }
        self.local
            .atomically(|l| l.notice(&format!("Not sent: {subject}"), &text).map(|_| ()))?;
        outbox.remove(queued.id)?;
        Ok(Sending::Bounced { reason })
    }

    /// Whether `address` can receive mail through Pouch: it has a signed
    /// device list on this server. Mail to anyone else is refused before it
    /// is written, so that nothing ever leaves unencrypted.
    ///
    /// `Ok(Err(reason))`: this recipient cannot be written to, and why;
    /// `Err`: the question could not be answered now (try again later).
    pub fn check_recipient(&mut self, address: &Address) -> Result<Result<(), String>> {
        self.sign_in()?;
        match self.trusted_list(address) {
            Ok(_) => Ok(Ok(())),
            Err(
                e @ (ClientError::Unreachable(..)
                | ClientError::Local(_)
                | ClientError::Io(_)
                | ClientError::Protocol(_)),
            ) => Err(e),
            Err(ClientError::Server {
                status, message, ..
            }) if status < 500 => Ok(Err(message)),
            Err(e @ ClientError::Server { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Encrypts `out` to the devices of `wanted` in `group` (a new
    /// conversation when None) and hands it to the server.
    /// The submission id of one delivery of the outbox mail being sent.
    fn submission_id(&self, part: u32) -> Option<String> {
        self.submission_base.map(|base| {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(base);
            h.update(part.to_be_bytes());
            hex::encode(h.finalize())
        })
    }

    fn deliver_to(
        &mut self,
        out: &Outgoing,
        group: Option<GroupId>,
        wanted: &[Address],
        submission: Option<String>,
    ) -> Result<(GroupId, u32)> {
        let wanted = wanted.to_vec();
        self.sign_in()?;
        // Refused before anything is uploaded or sealed.
        self.downgraded = None;
        self.sending_label = None;
        let label = match &self.modified_labels {
            Some((inner, _)) => inner.clone(),
            None => self.outgoing_label(&out.parsed, &wanted)?,
        };
        let mut envelope = if out.size <= INLINE_LIMIT as u64 {
            Envelope::new(Content::Inline {
                rfc5322: out.to_vec()?,
            })
        } else {
            Envelope::new(Content::Blob(
                self.upload_blob(&mut out.reader()?, out.size)?,
            ))
        };
        envelope.label = label;
        let mut attempt = 0;
        let (group_id, recipient_devices) = loop {
            attempt += 1;
            let outcome: Result<(GroupId, u32)> = (|| {
                let mut group = match &group {
                    Some(g) => {
                        let version = self.local.data_version()?;
                        let loaded = self.load_group(g)?;
                        self.loaded_for_send = Some((pouch_mls::group_id_bytes(&loaded), version));
                        loaded
                    }
                    None => self.create_conversation(&wanted, &[], "mail")?,
                };
                self.reconcile(&mut group, &wanted)?;
                // Everyone the conversation still holds reads it, not only
                // those the mail names.
                self.check_members_cleared(&group, &wanted)?;
                let gid = GroupId::from_bytes(&pouch_mls::group_id_bytes(&group));
                let resp = self.post_sealed(&mut group, &envelope, submission.as_deref())?;
                self.local.keep_group(group);
                Ok((gid, resp.recipients))
            })();
            match outcome {
                Err(e) if e.is_stale_epoch() && attempt < EPOCH_RETRIES && group.is_some() => {
                    // Someone else committed first: catch up, then try again.
                    self.sync()?;
                }
                other => break other?,
            }
        };
        if let Some(why) = self.downgraded.take() {
            // The security team sees every lowered label (best effort: the
            // mail is sent; a failed report is a warning to the user).
            if let Err(e) = self.api.post_empty(
                "/v1/reports",
                &api::ClientReport {
                    kind: pouch_proto::security::ReportKind::LabelDowngrade,
                    detail: why.chars().take(480).collect(),
                },
            ) {
                self.warnings
                    .push(format!("the lowered label could not be reported: {e}"));
            }
        }
        Ok((group_id, recipient_devices))
    }

    /// Records a mail the server accepted as sent (with its label, if it
    /// carries one): the Sent copy.
    fn store_sent_copy(&mut self, group_id: &GroupId, out: &Outgoing) -> Result<i64> {
        let body = self.keep_body(out)?;
        let head = self.labelled_head(out)?;
        self.local.atomically(|l| {
            let id = store_message(l, group_id, None, true, &out.parsed, &body)?;
            if let Some(sending) = &self.sending_label {
                let marking = labels::subject_marking(l)?;
                set_label(
                    l,
                    id,
                    &labels::StoredLabel::new(&sending.shown, marking, &head),
                )?;
            }
            Ok(id)
        })
    }

    /// The header section of a labelled mail being sent (for the bridge's
    /// view of its Sent copy); nothing is read for an unlabelled one.
    fn labelled_head(&self, out: &Outgoing) -> Result<Vec<u8>> {
        let mut head = Vec::new();
        if self.sending_label.is_some() {
            out.reader()?
                .take(pouch_mail_proto::mime::HEAD_LIMIT as u64)
                .read_to_end(&mut head)?;
        }
        Ok(head)
    }

    /// The local copy of a message: in the database when small, else an encrypted file.
    fn keep_body(&self, out: &Outgoing) -> Result<Body> {
        if out.size <= INLINE_LIMIT as u64 {
            return Ok(Body::Inline(out.to_vec()?));
        }
        let mut w = self.local.new_mail_file(out.size)?;
        std::io::copy(&mut out.reader()?, &mut w)?;
        Ok(Body::File(w.finish()?))
    }

    /// Encrypts and uploads `size` bytes from `reader` chunk by chunk.
    pub fn upload_blob(&mut self, reader: &mut dyn Read, size: u64) -> Result<BlobRef> {
        self.sign_in()?;
        blob::upload(
            &self.api,
            reader,
            size,
            &mut progress_hook(&mut self.progress, "upload"),
        )
    }

    /// Downloads, decrypts and verifies a blob into `out`.
    pub fn download_blob(&mut self, r: &BlobRef, out: &mut dyn std::io::Write) -> Result<()> {
        self.sign_in()?;
        blob::download(
            &self.api,
            r,
            out,
            &mut progress_hook(&mut self.progress, "download"),
        )
    }

    /// Reports long transfers (history, large mail) to whoever set a progress hook.
    pub fn set_progress(&mut self, hook: Progress) {
        self.progress = Some(hook);
    }

    /// Key packages for the devices on these accounts' signed device lists
    /// (only `only`, when given). A device the server offers that its
    /// account never signed for is refused and reported, never encrypted to.
    fn claim(
        &mut self,
        addresses: &[Address],
        only: &[DeviceId],
    ) -> Result<(Vec<pouch_mls::KeyPackage>, Vec<DeviceId>)> {
        let lists = self.trusted_lists(addresses)?;
        let resp: api::ClaimResponse = self.api.post(
            "/v1/key-packages/claim",
            &api::ClaimRequest {
                addresses: addresses.to_vec(),
                only: only.to_vec(),
            },
        )?;
        let mut packages = Vec::new();
        let mut devices = Vec::new();
        for d in &resp.devices {
            if !lists
                .get(&d.address)
                .is_some_and(|l| l.lists(&d.device_id, &d.signature_key))
            {
                self.warnings.push(format!(
                    "SECURITY: the server offered a device {} for {} that is not on {}'s signed device list; nothing was encrypted to it",
                    d.device_id, d.address, d.address
                ));
                continue;
            }
            let claimed = pouch_mls::ClaimedPackage {
                bytes: &d.key_package,
                address: &d.address,
                signature_key: &d.signature_key,
            };
            packages.push(pouch_mls::validate_key_package(
                &self.local.provider,
                self.suite,
                &claimed,
            )?);
            devices.push(d.device_id.clone());
        }
        if only.is_empty() {
            for address in addresses.iter().filter(|a| **a != self.address) {
                if !resp
                    .devices
                    .iter()
                    .any(|d| &d.address == address && devices.contains(&d.device_id))
                {
                    return Err(ClientError::Invalid(format!(
                        "{address} has no enrolled device yet, so nothing can be encrypted to them; ask them to enroll"
                    )));
                }
            }
        }
        Ok((packages, devices))
    }

    fn create_conversation(
        &mut self,
        recipients: &[Address],
        only: &[DeviceId],
        kind: &str,
    ) -> Result<MlsGroup> {
        let mut addresses: Vec<Address> = recipients.to_vec();
        if !addresses.contains(&self.address) {
            addresses.push(self.address.clone()); // the sender's own other devices
        }
        let (packages, devices) = self.claim(&addresses, only)?;
        // Its own server is the conversation's hub: the id says so.
        let hub_nonce: [u8; 16] = rand::random();
        let (mut group, out) = pouch_mls::create_conversation(
            &self.local.provider,
            self.suite,
            &self.signer,
            &self.address,
            &pouch_proto::hub_group_id(self.address.domain(), &hub_nonce),
            &packages,
        )?;
        let gid = GroupId::from_bytes(&pouch_mls::group_id_bytes(&group));
        let submitted: Result<api::CommitResponse> = self.api.post(
            &format!("/v1/groups/{gid}/commits"),
            &api::CommitRequest {
                base_epoch: 0,
                commit: Some(out.commit),
                welcome: out.welcome,
                added: devices,
                removed: vec![],
                group_info: out.group_info,
                hub_nonce: Some(hub_nonce.to_vec()),
            },
        );
        match submitted {
            Ok(_) => {
                pouch_mls::merge_pending(&self.local.provider, &mut group)?;
                self.local.conn.execute(
                    "INSERT OR IGNORE INTO conversations (group_id, created_at, kind, last_update) VALUES (?1, ?2, ?3, ?2)",
                    params![gid.0, now(), kind],
                )?;
                receipt::note_joined(&self.local, &gid, 0)?;
                Ok(group)
            }
            Err(e) => {
                let _ = pouch_mls::delete_group(&self.local.provider, &mut group);
                Err(e)
            }
        }
    }

    /// Submits a pending commit; merges it if the server accepts, discards it otherwise.
    fn submit(
        &mut self,
        group: &mut MlsGroup,
        base_epoch: u64,
        out: pouch_mls::CommitOut,
        added: Vec<DeviceId>,
        removed: Vec<DeviceId>,
    ) -> Result<()> {
        let gid = GroupId::from_bytes(&pouch_mls::group_id_bytes(group));
        let submitted: Result<api::CommitResponse> = self.api.post(
            &format!("/v1/groups/{gid}/commits"),
            &api::CommitRequest {
                base_epoch,
                commit: Some(out.commit),
                welcome: out.welcome,
                added,
                removed,
                group_info: None,
                hub_nonce: None,
            },
        );
        match submitted {
            Ok(_) => {
                pouch_mls::merge_pending(&self.local.provider, group)?;
                // Every commit of ours carries a fresh leaf key: it counts as a rotation.
                self.local.conn.execute(
                    "UPDATE conversations SET last_update = ?1 WHERE group_id = ?2",
                    params![now(), gid.0],
                )?;
                Ok(())
            }
            Err(e) => {
                pouch_mls::discard_pending(&self.local.provider, group)?;
                Err(e)
            }
        }
    }

    /// Enforced rotation: a self-update in every conversation whose key
    /// material from this device is older than the server's window, so a
    /// copy of this device's state taken before goes dark.
    fn rotate(&mut self) -> Result<u32> {
        let info: api::ServerInfo = self.api.get_json("/v1/info")?;
        let due_before = now() - info.rotation_secs as i64;
        let due: Vec<String> = {
            let mut stmt = self.local.conn.prepare(
                "SELECT group_id FROM conversations WHERE kind = 'mail' AND last_update <= ?1",
            )?;
            let rows = stmt.query_map([due_before], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut rotated = 0;
        for g in due {
            let gid = GroupId(g);
            let mut group = self.load_group(&gid)?;
            let base = pouch_mls::epoch(&group);
            let out = pouch_mls::self_update(&self.local.provider, &self.signer, &mut group)?;
            match self.submit(&mut group, base, out, vec![], vec![]) {
                Ok(()) => rotated += 1,
                // Someone else committed first; the next sync rotates.
                Err(e) if e.is_stale_epoch() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(rotated)
    }

    /// Brings a conversation's membership in line with the signed device
    /// lists: devices no longer listed (revoked) are removed, listed devices
    /// of the wanted people and of current members are added. Returns the
    /// number of commits made.
    fn reconcile(&mut self, group: &mut MlsGroup, wanted: &[Address]) -> Result<u32> {
        let members = pouch_mls::members(group);
        let mut addresses: Vec<Address> = wanted
            .iter()
            .cloned()
            .chain(members.iter().map(|(a, _)| a.clone()))
            .collect();
        addresses.sort();
        addresses.dedup();
        let lists = self.trusted_lists(&addresses)?;
        let own_key = self.signer.to_public_vec();
        let stale: Vec<Vec<u8>> = members
            .iter()
            .filter(|(a, key)| {
                *key != own_key && !lists[a].devices.iter().any(|d| &d.signature_key == key)
            })
            .map(|(_, key)| key.clone())
            .collect();
        let mut commits = 0;
        if !stale.is_empty() {
            let removed = self.device_ids_for(&stale)?;
            let base = pouch_mls::epoch(group);
            let out = pouch_mls::remove_members(&self.local.provider, &self.signer, group, &stale)?;
            self.submit(group, base, out, vec![], removed)?;
            commits += 1;
        }
        let missing: Vec<(Address, DeviceId)> = lists
            .iter()
            .flat_map(|(a, l)| l.devices.iter().map(move |d| (a, d)))
            .filter(|(_, d)| {
                d.signature_key != own_key && !members.iter().any(|(_, k)| k == &d.signature_key)
            })
            .map(|(a, d)| (a.clone(), d.device_id.clone()))
            .collect();
        if !missing.is_empty() {
            let mut who: Vec<Address> = missing.iter().map(|(a, _)| a.clone()).collect();
            who.dedup();
            let ids: Vec<DeviceId> = missing.into_iter().map(|(_, d)| d).collect();
            let (packages, devices) = self.claim(&who, &ids)?;
            if !packages.is_empty() {
                let base = pouch_mls::epoch(group);
                let out =
                    pouch_mls::add_members(&self.local.provider, &self.signer, group, &packages)?;
                self.submit(group, base, out, devices, vec![])?;
                commits += 1;
            }
        }
        Ok(commits)
    }

    /// Reconciles every mail conversation (after a link or a revocation).
    pub(crate) fn reconcile_all(&mut self) -> Result<u32> {
        let groups: Vec<String> = {
            let mut stmt = self.local.conn.prepare(
                "SELECT group_id FROM conversations WHERE kind = 'mail' ORDER BY created_at",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut commits = 0;
        for g in groups {
            let gid = GroupId(g);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut group = self.load_group(&gid)?;
                let members = pouch_mls::member_addresses(&group);
                match self.reconcile(&mut group, &members) {
                    Ok(n) => {
                        commits += n;
                        break;
                    }
                    Err(e) if e.is_stale_epoch() && attempt < EPOCH_RETRIES => {
                        self.sync()?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(commits)
    }

    /// Device ids of member keys, from every device list this device has seen.
    fn device_ids_for(&self, keys: &[Vec<u8>]) -> Result<Vec<DeviceId>> {
        let mut ids = Vec::new();
        for k in keys {
            let id: Option<String> = self
                .local
                .conn
                .query_row(
                    "SELECT device_id FROM device_keys WHERE signature_key = ?1",
                    [k],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                ids.push(DeviceId(id));
            }
        }
        Ok(ids)
    }

    /// Starts a conversation with exactly these devices and sends one
    /// non-mail envelope (the account key for a newly linked device).
    pub(crate) fn send_system(
        &mut self,
        addresses: &[Address],
        only: &[DeviceId],
        envelopes: Vec<Envelope>,
    ) -> Result<()> {
        let mut group = self.create_conversation(addresses, only, "system")?;
        for envelope in envelopes {
            self.post_sealed(&mut group, &envelope, None)?;
        }
        Ok(())
    }

    /// Seals `envelope` as this device's next message in `group` (its chain
    /// link inside the encryption) and hands it to the server. The link is
    /// consumed before sending and given back only if the server definitely
    /// refused the message.
    fn post_sealed(
        &mut self,
        group: &mut MlsGroup,
        envelope: &Envelope,
        submission: Option<&str>,
    ) -> Result<api::SendResponse> {
        let group_id = pouch_mls::group_id_bytes(group);
        let gid = GroupId::from_bytes(&group_id);
        let mut envelope = envelope.clone();
        // The ratchet's step and the link's use are on disk before the
        // message leaves (after a crash this device never uses a key
        // twice), in one commit: OpenMLS writes its state in several
        // statements, each of which was a commit of its own, waiting for
        // the disk. The group and the link are read inside that
        // transaction, under the store's write lock: another process
        // sending from this home (a bridge and a `pouch send`) cannot step
        // the ratchet between the read and the commit, so the two never
        // seal with the same key and nonce or take the same link.
        // (Read again only if another process wrote to the store since
        // the group was loaded: a load costs about as much as the seal.)
        let signer = &self.signer;
        let loaded = self.loaded_for_send.take();
        let (sealed, link) = self.local.atomically(|l| {
            let version = l.data_version()?;
            let current = loaded
                .as_ref()
                .is_some_and(|(id, v)| *id == group_id && *v == version);
            if !current {
                *group = pouch_mls::load_group(&l.provider, &group_id)?;
            }
            let link = receipt::next_link(l, &gid)?;
            envelope.chain = Some(link.clone());
            let bytes = envelope.to_bytes();
            let sealed = pouch_mls::seal(&l.provider, signer, group, &bytes)?;
            receipt::consume_link(l, &gid, link.n, &receipt::envelope_hash(&bytes))?;
            Ok((sealed, link))
        })?;
        let blob = match &envelope.content {
            Content::Blob(b) | Content::History(b) => Some(b.blob_id.clone()),
            Content::Inline { .. } | Content::AccountKey { .. } => None,
        };
        let sent: Result<api::SendResponse> = self.api.post(
            &format!("/v1/groups/{gid}/messages"),
            &api::SendRequest {
                epoch: pouch_mls::epoch(group),
                message: sealed,
                blob,
                submission: submission.map(str::to_string),
                label: match &self.modified_labels {
                    Some((_, outer)) => outer.clone(),
                    None => envelope.label.clone(),
                },
            },
        );
        // A refusal (4xx, or 507 for a full queue) rolled the message back
        // on the server, and a connection never made never reached it: the
        // link is given back, so receivers see no gap. (After a timeout the
        // server may have the message: the link stays used.)
        // "Accepted before" for a mail no earlier attempt of which can have
        // reached the server is a server dropping it: refused, the link
        // kept used, so receivers see the gap.
        if let Ok(resp) = &sent
            && resp.duplicate
            && !self.duplicate_possible
        {
            return Err(ClientError::Security(
                "the server says it already had a mail no earlier attempt could have reached it with: it may be withholding mail; report this to your security team".into(),
            ));
        }
        // So is a repeat the server had accepted before (an outbox mail
        // whose answer was lost): this attempt's message went nowhere.
        let never_delivered = match &sent {
            Err(ClientError::Server { status, .. }) => *status < 500 || *status == 507,
            Err(ClientError::Unreachable(_, reason)) => reason == net::CONNECT_FAILED,
            Ok(resp) => resp.duplicate,
            _ => false,
        };
        if never_delivered {
            receipt::restore_link(&self.local, &gid, &link)?;
        }
        sent
    }

    /// A conversation's state, from memory if current (see
    /// `LocalStore::group`); give it back with `keep_group` after a success.
    fn load_group(&self, g: &GroupId) -> Result<MlsGroup> {
        let bytes = g
            .to_bytes()
            .ok_or_else(|| ClientError::Local("damaged conversation id".into()))?;
        self.local.group(&bytes)
    }

    // ---------- receiving ----------

    /// Fetches and processes everything queued for this device, then tops up key packages.
    pub fn sync(&mut self) -> Result<SyncReport> {
        self.sign_in()?;
        self.check_log()?;
        let mut report = SyncReport::default();
        self.fetch_mail(&mut report)?;
        self.housekeeping(&mut report)?;
        report.alerts.append(&mut self.warnings);
        Ok(report)
    }

    /// Only what is queued for this device: what a push asks for between
    /// the full syncs (which also top up key packages, rotate keys, and
    /// audit the account and the log).
    pub fn sync_mail(&mut self) -> Result<SyncReport> {
        self.sign_in()?;
        let mut report = SyncReport::default();
        self.fetch_mail(&mut report)?;
        report.alerts.append(&mut self.warnings);
        Ok(report)
    }

    /// A wait for this device's next mail, to run off the device's thread
    /// (`secs`: how long the server may hold it, at most 25).
    pub fn mail_waiter(&mut self, secs: u64) -> Result<net::QueueWaiter> {
        self.sign_in()?;
        self.api.queue_waiter(queue_cursor(&self.local)?, secs)
    }

    fn fetch_mail(&mut self, report: &mut SyncReport) -> Result<()> {
        // One fsync per page of items (before its acknowledgement), not one
        // per item; the guard forces the rest to disk on any way out.
        let deferred = self.local.defer_durability()?;
        self.replay_held(report)?;
        let mut touched = Touched::default();
        loop {
            let cursor = queue_cursor(&self.local)?;
            let batch: api::QueueResponse = self
                .api
                .get(&format!("/v1/queue?after={cursor}&limit=100"))?;
            if batch.items.is_empty() {
                break;
            }
            let more = batch.more;
            let last = self.apply_page(batch.items, report, &mut touched, &deferred)?;
            self.api
                .post_empty("/v1/queue/ack", &api::AckRequest { up_to: last })?;
            self.api.note_acked(last);
            // A page that moved the cursor nowhere (a server repeating
            // what was processed) ends the sync rather than spinning it.
            if more == Some(false) || queue_cursor(&self.local)? <= cursor {
                break;
            }
        }
        self.after_pages(&touched, report)
    }

    /// Applies a page of queue items that was fetched away from the
    /// device's thread ([`net::QueueWaiter::page`], asked with the cursor
    /// `after`), so that a busy device's thread spends no time waiting on
    /// the server — the page's request and its acknowledgement were two
    /// thirds of a receiving turn. Returns what the sync found and the
    /// position to acknowledge ([`net::QueueWaiter::ack`]): everything up to
    /// it is on disk. A page asked before the cursor moved (another sync
    /// got there first) is left alone.
    pub fn receive_page(&mut self, after: u64, page: api::QueueResponse) -> Result<ReceivedPage> {
        self.sign_in()?;
        let mut received = ReceivedPage {
            report: SyncReport::default(),
            ack: None,
            checks_failed: None,
        };
        if page.items.is_empty() || queue_cursor(&self.local)? != after {
            return Ok(received);
        }
        let deferred = self.local.defer_durability()?;
        self.replay_held(&mut received.report)?;
        let mut touched = Touched::default();
        let last = self.apply_page(page.items, &mut received.report, &mut touched, &deferred)?;
        // Stored is stored: acknowledged even if the checks after the page
        // fail (a conversation whose check did not run is checked when its
        // next item arrives, as one never checked).
        received.ack = Some(last);
        received.checks_failed = self.after_pages(&touched, &mut received.report).err();
        received.report.alerts.append(&mut self.warnings);
        Ok(received)
    }

    /// Processes one page of queue items and makes it durable. Returns the
    /// last position, which may now be acknowledged.
    fn apply_page(
        &mut self,
        items: Vec<QueueItem>,
        report: &mut SyncReport,
        touched: &mut Touched,
        deferred: &local::Deferred,
    ) -> Result<u64> {
        // The label policy and own clearance are compared with the store
        // once per page (not per mail).
        self.local.receipt_cache.recheck();
        self.prepare_label_receipt(&items)?;
        let cursor = queue_cursor(&self.local)?;
        // Queue numbers are per device and gap-free: a gap means another
        // copy of this device fetched and acknowledged mail, or the server
        // deleted it. (A server that also renumbers leaves no gap here;
        // the senders' chain links inside the messages show that.)
        if let Some(first) = items.first()
            && first.seq > cursor + 1
        {
            let what = format!(
                "queue items {} to {} of this device are missing: a copy of this device fetched them, or the server deleted them",
                cursor + 1,
                first.seq - 1
            );
            let _ = self.api.post_empty(
                "/v1/reports",
                &api::ClientReport {
                    kind: pouch_proto::security::ReportKind::QueueGap,
                    detail: what.clone(),
                },
            );
            self.local.notice(
                "ALERT: mail was fetched by another copy of this device",
                &what,
            )?;
            report.alerts.push(what);
        }
        let mut last = cursor;
        // One transaction for the page (each item a savepoint of it; an
        // item that must ask the network first commits the batch, and the
        // next item opens another).
        let applied: Result<()> = (|| {
            for item in items {
                self.local.begin_batch()?;
                if !self.process(&item, report, false)? {
                    if item.kind != QueueKind::Application {
                        touched.changed.insert(item.group_id.clone());
                    }
                    touched.all.insert(item.group_id.clone());
                }
                last = item.seq;
            }
            Ok(())
        })();
        // What was applied stays applied, as with a commit per item.
        self.local.end_batch()?;
        applied?;
        self.flush_findings(report)?;
        // Only what is durably stored is acknowledged.
        deferred.barrier()?;
        Ok(last)
    }

    /// After the pages of a sync: the fan-out of the conversations
    /// something arrived in is compared with their rosters (always where a
    /// commit or Welcome arrived), and held items are reported.
    fn after_pages(&mut self, touched: &Touched, report: &mut SyncReport) -> Result<()> {
        for group in &touched.all {
            let due = self
                .membership_checked
                .get(group)
                .is_none_or(|at| at.elapsed() >= MEMBERSHIP_CHECK_EVERY);
            if due || touched.changed.contains(group) {
                self.check_membership(group)?;
                self.membership_checked
                    .insert(group.clone(), std::time::Instant::now());
            }
        }
        self.flush_findings(report)?;
        self.report_held(report)?;
        Ok(())
    }

    fn housekeeping(&mut self, report: &mut SyncReport) -> Result<()> {
        report.key_packages_uploaded = self.top_up_key_packages()?;
        report.rotated = self.rotate()?;
        report.alerts.extend(self.audit_own_account()?);
        report.security_alerts = self.fetch_alerts()?;
        report.witnessed_age_secs = self.witnessed_age()?;
        if let Some(age) = report.witnessed_age_secs {
            let max: u64 = std::env::var("POUCH_MAX_WITNESS_AGE_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(24 * 3600);
            if age > max {
                report.alerts.push(format!(
                    "the newest log checkpoint cosigned by the witnesses is {age} s old (limit {max} s): the witnesses may be down, or this device is being shown a separate view"
                ));
            }
        }
        Ok(())
    }

    /// Applies one queue item. Returns whether it was held back (a member's
    /// account key changed) rather than applied or rejected.
    fn process(
        &mut self,
        item: &QueueItem,
        report: &mut SyncReport,
        replaying: bool,
    ) -> Result<bool> {
        // The server hands out each position once, after the cursor; one it
        // hands out again (to slip a message in under a stored one's number)
        // is refused unopened.
        if !replaying && item.seq <= queue_cursor(&self.local)? {
            self.reject(
                item,
                ClientError::Invalid(format!(
                    "the server delivered queue position {} again, after this device had processed it",
                    item.seq
                )),
                report,
            )?;
            return Ok(false);
        }
        // Later items of a conversation wait behind a held one: they depend on it.
        if let Some(address) = self.held_before(item)? {
            self.hold(item, &address)?;
            return Ok(true);
        }
        // A message whose body is a blob is opened twice: the first attempt
        // learns the blob reference and is rolled back, so that no transaction
        // waits on the network; the second stores the mail. The same goes for
        // a member whose device list must be fetched before it is believed.
        let mut fetched = receipt::Fetched::new();
        let outcome = loop {
            let first = self.local.atomically_unless(
                |l| {
                    let step = open_item(l, item, &fetched)?;
                    if !step.rolls_back() {
                        advance_cursor(l, item.seq)?;
                    }
                    Ok(step)
                },
                Step::rolls_back,
            );
            // The network is asked below: not while holding the store's lock.
            if matches!(
                first,
                Ok(Step::NeedLists(_) | Step::NeedsBlob { .. } | Step::NeedsHistory { .. })
            ) {
                self.local.end_batch()?;
            }
            match first {
                Ok(Step::NeedLists(addresses)) => {
                    for (a, found) in self.list_outcomes(&addresses)? {
                        fetched.insert(a, found);
                    }
                }
                Ok(Step::NeedsBlob { blob }) => break self.receive_blob(item, &blob, &fetched),
                Ok(Step::NeedsHistory { blob }) => {
                    break self.receive_history(item, &blob, &fetched);
                }
                other => break other,
            }
        };
        match outcome {
            Ok(Step::Joined) => report.joined_conversations += 1,
            Ok(Step::Committed) => report.commits += 1,
            Ok(Step::Stored(id)) => report.new_messages.push(id),
            Ok(Step::Imported(n)) => report.history_imported += n,
            Ok(Step::Ignored)
            | Ok(Step::NeedsBlob { .. })
            | Ok(Step::NeedsHistory { .. })
            | Ok(Step::NeedLists(_)) => {}
            // A member's account key changed: wait for the user's decision.
            Err(ClientError::AccountKeyChanged(address)) => {
                self.hold(item, &address)?;
                return Ok(true);
            }
            // The server or network failed: stop here; the item is retried next sync.
            Err(
                e @ (ClientError::Unreachable(..)
                | ClientError::Server { .. }
                | ClientError::Local(_)
                | ClientError::Io(_)),
            ) => {
                return Err(e);
            }
            Err(e) => self.reject(item, e, report)?,
        }
        Ok(false)
    }

    /// Compares whom the server delivers a conversation to with the MLS
    /// roster this device holds, when both are at the same epoch: a device
    /// the server dropped from the fan-out (its mail silently suppressed) or
    /// added without a commit is reported.
    fn check_membership(&mut self, group: &GroupId) -> Result<()> {
        let Ok(mls) = self.load_group(group) else {
            return Ok(()); // not joined: a refused Welcome, reported as such
        };
        let (epoch, member_keys) = (pouch_mls::epoch(&mls), pouch_mls::member_keys(&mls));
        self.local.keep_group(mls);
        let server: api::GroupMembers = match self.api.get(&format!("/v1/groups/{group}/members")) {
            Ok(m) => m,
            // No longer a member (removed since): nothing to compare.
            Err(ClientError::Server { status: 404, .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if server.epoch != epoch {
            return Ok(()); // a commit is still on its way; compared on a later sync
        }
        let mut roster = std::collections::BTreeSet::new();
        for key in member_keys {
            let id: Option<String> = self
                .local
                .conn
                .query_row(
                    "SELECT device_id FROM device_keys WHERE signature_key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()?;
            roster.insert(
                id.unwrap_or_else(|| format!("(key {})", pouch_proto::devices::fingerprint(&key))),
            );
        }
        let served: std::collections::BTreeSet<String> =
            server.devices.into_iter().map(|d| d.0).collect();
        let dropped: Vec<&String> = roster.difference(&served).collect();
        let added: Vec<&String> = served.difference(&roster).collect();
        if dropped.is_empty() && added.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "In conversation {group} at epoch {}, the server {}{}{} — no commit the members saw says so. Tell your security team.",
            server.epoch,
            if dropped.is_empty() {
                String::new()
            } else {
                format!("no longer delivers to member device(s) {dropped:?}")
            },
            if dropped.is_empty() || added.is_empty() {
                ""
            } else {
                " and "
            },
            if added.is_empty() {
                String::new()
            } else {
                format!("delivers to device(s) {added:?} that are not members")
            },
        );
        if self.first_time(&format!(
            "membership:{}",
            receipt::envelope_hash(detail.as_bytes())
        ))? {
            self.local.atomically(|l| {
                receipt::record_finding(
                    l,
                    "membership_mismatch",
                    "ALERT: the server changed who receives a conversation",
                    &detail,
                )
            })?;
        }
        Ok(())
    }

    /// Fetches and verifies `address`'s device list for the receiving checks.
    /// Network failures stop the sync (the item is retried); anything else is
    /// an answer about the list.
    fn list_outcomes(
        &mut self,
        addresses: &[Address],
    ) -> Result<Vec<(Address, receipt::ListOutcome)>> {
        // Asked only when a speaker is not yet known: the cache could predate it.
        self.fresh_trusted_lists(addresses)?
            .into_iter()
            .map(|(a, found)| Ok((a, list_outcome(found)?)))
            .collect()
    }

    /// The address that holds back an earlier item of this item's conversation.
    fn held_before(&self, item: &QueueItem) -> Result<Option<String>> {
        Ok(self
            .local
            .conn
            .prepare_cached(
                "SELECT address FROM held WHERE group_id = ?1 AND server_seq < ?2 ORDER BY server_seq LIMIT 1",
            )?
            .query_row(params![item.group_id.0, item.seq as i64], |r| r.get(0))
            .optional()?)
    }

    /// Keeps an item aside until the user accepts `address`'s new account key.
    fn hold(&mut self, item: &QueueItem, address: &str) -> Result<()> {
        let json = serde_json::to_string(item).expect("a queue item serialises");
        self.local.atomically(|l| {
            l.conn.execute(
                "INSERT OR REPLACE INTO held (server_seq, group_id, address, item, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![item.seq as i64, item.group_id.0, address, json, now()],
            )?;
            advance_cursor(l, item.seq)
        })
    }

    /// Tries the held items again (the user may have accepted a new key), in
    /// queue order. An item that is still blocked stays held.
    fn replay_held(&mut self, report: &mut SyncReport) -> Result<()> {
        // Held mail is checked against the store as it is now (see apply_page).
        self.local.receipt_cache.recheck();
        let held: Vec<(i64, String)> = {
            let mut stmt = self
                .local
                .conn
                .prepare("SELECT server_seq, item FROM held ORDER BY server_seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (seq, json) in held {
            let item: QueueItem = serde_json::from_str(&json)
                .map_err(|_| ClientError::Local("a held queue item is damaged".into()))?;
            // Other rows of the same conversation must not block it: it is the earliest.
            match self.process(&item, report, true) {
                Ok(true) => {}
                Ok(false) => {
                    self.local
                        .conn
                        .execute("DELETE FROM held WHERE server_seq = ?1", [seq])?;
                }
                // Its blob is gone from the server (every other recipient
                // fetched it while this one waited): refused, said so.
                Err(e @ ClientError::Server { status: 404, .. }) => {
                    self.reject(&item, e, report)?;
                    self.local
                        .conn
                        .execute("DELETE FROM held WHERE server_seq = ?1", [seq])?;
                }
                // The server is unreachable: try again next sync, and let
                // this one go on with the queue.
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// One alert per account whose mail is held back, and an inbox notice
    /// the first time for each new key.
    fn report_held(&mut self, report: &mut SyncReport) -> Result<()> {
        let held: Vec<(String, i64)> = {
            let mut stmt = self
                .local
                .conn
                .prepare("SELECT address, count(*) FROM held GROUP BY address ORDER BY address")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (address, n) in held {
            let text = format!(
                "{}; {n} item(s) from or with them are held back until then",
                ClientError::AccountKeyChanged(address.clone())
            );
            let newest: i64 = self.local.conn.query_row(
                "SELECT max(server_seq) FROM held WHERE address = ?1",
                [&address],
                |r| r.get(0),
            )?;
            if self.first_time(&format!("held:{address}:{newest}"))? {
                self.local.notice(
                    &format!("Mail involving {address} is held back: their account key changed"),
                    &text,
                )?;
            }
            report.alerts.push(text);
        }
        Ok(())
    }

    /// Reports findings made while processing (withheld mail, forged
    /// senders) to the security team, and to the caller.
    fn flush_findings(&mut self, report: &mut SyncReport) -> Result<()> {
        for (id, kind, detail) in receipt::take_findings(&self.local)? {
            // Truncated to what the server accepts (500 bytes); the inbox
            // notice has it whole.
            let mut end = detail.len().min(480);
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            let posted = self.api.post_empty(
                "/v1/reports",
                &api::ClientReport {
                    kind: pouch_proto::security::ReportKind::parse(&kind),
                    detail: detail[..end].to_string(),
                },
            );
            // Kept for the next sync unless the server took it (or will never).
            if let Err(ClientError::Unreachable(..) | ClientError::Server { status: 500.., .. }) =
                posted
            {
                if !report.rejected.iter().any(|(_, r)| *r == detail) {
                    report.alerts.push(detail);
                }
                continue;
            }
            // A refused item is already in the report, as refused.
            if !report.rejected.iter().any(|(_, r)| *r == detail) {
                report.alerts.push(detail);
            }
            receipt::drop_finding(&self.local, id)?;
        }
        Ok(())
    }

    /// Downloads a blob into an encrypted mail file (constant memory),
    /// keeping the head for indexing, then stores the mail.
    fn receive_blob(
        &mut self,
        item: &QueueItem,
        blob: &BlobRef,
        fetched: &receipt::Fetched,
    ) -> Result<Step> {
        let mut file = self.local.new_mail_file(blob.size)?;
        let name = file.name().to_string();
        let mut tee = HeadTee {
            head: Vec::new(),
            inner: &mut file,
        };
        let downloaded = self.download_blob(blob, &mut tee);
        let head = std::mem::take(&mut tee.head);
        let stored = downloaded.and_then(|()| file.finish()).and_then(|f| {
            let body = Body::File(f);
            self.local.atomically(|l| {
                let step = finish_application(l, item, Some((head, &body)), fetched)?;
                if step.rolls_back() {
                    return Err(ClientError::Protocol(
                        "the message changed between its two openings".into(),
                    ));
                }
                advance_cursor(l, item.seq)?;
                Ok(step)
            })
        });
        if !matches!(stored, Ok(Step::Stored(_))) {
            self.local.remove_mail_file(&name);
        }
        stored
    }

    /// Imports a mail history in one transaction with the MLS message that
    /// announced it: all of it is stored, or none of it.
    fn receive_history(
        &mut self,
        item: &QueueItem,
        blob: &BlobRef,
        fetched: &receipt::Fetched,
    ) -> Result<Step> {
        let (local, api) = (&self.local, &self.api);
        let mut hook = progress_hook(&mut self.progress, "receiving history");
        let result = local.atomically(|l| {
            let mut importer = history::Importer::new(l);
            blob::download(api, blob, &mut importer, &mut hook)?;
            let imported = importer.finish()?;
            finish_application(
                l,
                item,
                Some((Vec::new(), &Body::Inline(Vec::new()))),
                fetched,
            )?;
            advance_cursor(l, item.seq)?;
            Ok(Step::Imported(imported))
        });
        if result.is_err() {
            // Files of a rolled-back import are orphans: remove them.
            let mut stmt = local
                .conn
                .prepare("SELECT raw_file FROM messages WHERE raw_file IS NOT NULL")?;
            let kept: Vec<String> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for f in local.orphan_mail_files(&kept)? {
                local.remove_mail_file(&f);
            }
        }
        result
    }

    /// Refuses an item for good: recorded, shown in the inbox, reported to
    /// the security team (a forged sender as such), and skipped.
    fn reject(&mut self, item: &QueueItem, e: ClientError, report: &mut SyncReport) -> Result<()> {
        let reason = format!(
            "{} in conversation {}: {e}",
            item.kind.as_str(),
            item.group_id
        );
        let (kind, subject) = match e {
            ClientError::LabelMismatch(_) => (
                "label_mismatch",
                "ALERT: a message whose label was changed on the way was refused",
            ),
            ClientError::Security(_) => (
                "forged_sender",
                "ALERT: a message with a forged sender was refused",
            ),
            _ => (
                "rejected_item",
                "A message could not be opened and was refused",
            ),
        };
        self.local.atomically(|l| {
            l.conn.execute(
                "INSERT OR IGNORE INTO rejected (server_seq, group_id, reason, at) VALUES (?1, ?2, ?3, ?4)",
                params![item.seq as i64, item.group_id.0, reason, now()],
            )?;
            l.conn.execute(
                "INSERT INTO findings (kind, detail) VALUES (?1, ?2)",
                params![kind, reason],
            )?;
            l.notice(subject, &reason)?;
            advance_cursor(l, item.seq)
        })?;
        report.rejected.push((item.seq, reason));
        Ok(())
    }

    /// Keeps the device's packages on the server usable: tops the pool up
    /// when it is half used, and every [`KEY_REFRESH_SECS`] replaces the
    /// whole pool and the last-resort package, since packages expire (twelve
    /// weeks in OpenMLS) and a device that starts few conversations would
    /// otherwise be left with expired ones. Private keys of replaced packages
    /// stay in the local store, so a Welcome for one claimed earlier still
    /// opens.
    fn top_up_key_packages(&mut self) -> Result<u32> {
        let now = now();
        let refresh_every = std::env::var("POUCH_KEY_REFRESH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(KEY_REFRESH_SECS);
        let refreshed_at: Option<i64> = self
            .local
            .meta("key_packages_refreshed_at")?
            .and_then(|v| v.parse().ok());
        let refresh = refreshed_at.is_none_or(|t| now - t >= refresh_every);
        let count: api::KeyPackageCount = self.api.get("/v1/key-packages/count")?;
        if !refresh && count.available >= KEY_PACKAGE_POOL / 2 {
            return Ok(0);
        }
        let n = if refresh {
            KEY_PACKAGE_POOL
        } else {
            KEY_PACKAGE_POOL - count.available
        };
        let kps = pouch_mls::key_packages(
            &self.local.provider,
            self.suite,
            &self.signer,
            &self.address,
            n as usize,
            false,
        )?;
        let last_resort = if refresh {
            Some(
                pouch_mls::key_packages(
                    &self.local.provider,
                    self.suite,
                    &self.signer,
                    &self.address,
                    1,
                    true,
                )?
                .remove(0),
            )
        } else {
            None
        };
        let _: api::KeyPackageCount = self.api.post(
            "/v1/key-packages",
            &api::UploadKeyPackages {
                key_packages: kps,
                last_resort,
                replace_pool: refresh,
            },
        )?;
        if refresh {
            self.local
                .set_meta("key_packages_refreshed_at", &now.to_string())?;
        }
        Ok(n)
    }

    // ---------- the bridge's password ----------

    /// The password mail clients give the local bridge: generated on first
    /// use, kept in this device's encrypted state. It opens only the bridge
    /// on this machine; the device's keys stay behind the passphrase.
    pub fn bridge_password(&self) -> Result<zeroize::Zeroizing<String>> {
        if let Some(p) = self.local.meta("bridge_password")? {
            return Ok(zeroize::Zeroizing::new(p));
        }
        use rand::Rng;
        // 20 characters from 32 unambiguous ones: 100 bits.
        const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
        let mut rng = rand::rngs::OsRng;
        let password: String = (0..20)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        self.local.set_meta("bridge_password", &password)?;
        Ok(zeroize::Zeroizing::new(password))
    }

    /// What checks a mail client's password away from the device: the
    /// bridge's sessions check logins without waiting in the device's
    /// queue (behind its sync work, an SMTP login waited 75 ms on average
    /// under load). The password is made once and never changes.
    pub fn bridge_login(&self) -> Result<BridgeLogin> {
        use sha2::Digest;
        Ok(BridgeLogin {
            digest: sha2::Sha256::digest(self.bridge_password()?.as_bytes()).into(),
        })
    }

    // ---------- reading ----------

    pub fn inbox(&self) -> Result<Vec<MessageSummary>> {
        self.list("outgoing = 0 AND sender <> ?1")
    }

    /// Every stored mail, in and out.
    pub fn list_all(&self) -> Result<Vec<MessageSummary>> {
        self.list("?1 = ?1")
    }

    pub fn sent(&self) -> Result<Vec<MessageSummary>> {
        self.list("(outgoing = 1 OR sender = ?1)")
    }

    fn list(&self, filter: &str) -> Result<Vec<MessageSummary>> {
        let mut stmt = self.local.conn.prepare(&format!(
            "SELECT id, sender, recipients, cc, subject, date, size, attachments, group_id, l.label, l.marking \
             FROM messages LEFT JOIN message_labels l ON l.message = messages.id WHERE {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map([self.address.as_str()], |r| {
            Ok(MessageSummary {
                id: r.get(0)?,
                from: r.get(1)?,
                to: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                cc: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                subject: r.get(4)?,
                date: r.get(5)?,
                size: r.get::<_, i64>(6)? as u64,
                attachments: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
                conversation: r.get(8)?,
                label: r.get(9)?,
                marking: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes the exact RFC 5322 bytes of a stored message to `out`, or
    /// its first `limit` bytes; large mail is decrypted chunk by chunk.
    pub fn write_raw(&self, id: i64, out: &mut dyn Write, limit: Option<u64>) -> Result<()> {
        type Row = (Option<Vec<u8>>, Option<String>, Option<Vec<u8>>, i64);
        let row: Option<Row> = self
            .local
            .conn
            .prepare_cached("SELECT raw, raw_file, raw_key, size FROM messages WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        match row.ok_or(ClientError::NoSuchMessage(id))? {
            (Some(raw), _, _, _) => {
                let end = limit
                    .map(|l| (l as usize).min(raw.len()))
                    .unwrap_or(raw.len());
                out.write_all(&raw[..end])?;
            }
            (None, Some(name), Some(key), size) => {
                let f = local::MailFile {
                    name,
                    key: zeroize::Zeroizing::new(key),
                    size: size as u64,
                };
                self.local.read_mail_file(&f, out, limit)?;
            }
            _ => {
                return Err(ClientError::Local(format!(
                    "message {id} has no stored body"
                )));
            }
        }
        Ok(())
    }

    /// The exact RFC 5322 bytes of a stored message, in memory.
    pub fn raw(&self, id: i64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_raw(id, &mut v, None)?;
        Ok(v)
    }

    /// The message as mail clients are shown it through the bridge: a
    /// labelled mail's header section carries its verified label (an
    /// RFC 7444 `SIO-Label` field and the subject marking, see
    /// [`labels`]); everything else is the stored bytes.
    pub fn raw_for_clients(&self, id: i64) -> Result<Vec<u8>> {
        let view: Option<(Vec<u8>, i64)> = self
            .local
            .conn
            .prepare_cached(
                "SELECT bridge_head, head_len FROM message_labels WHERE message = ?1 AND bridge_head IS NOT NULL",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let raw = self.raw(id)?;
        Ok(match view {
            Some((head, len)) if (len as usize) <= raw.len() => {
                let mut shown = Vec::with_capacity(head.len() + raw.len() - len as usize);
                shown.extend_from_slice(&head);
                shown.extend_from_slice(&raw[len as usize..]);
                shown
            }
            _ => raw,
        })
    }

    /// The first bytes of a message: enough to show its text part.
    pub fn head(&self, id: i64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_raw(id, &mut v, Some(mail::HEAD_LIMIT as u64))?;
        Ok(v)
    }

    pub fn summary(&self, id: i64) -> Result<MessageSummary> {
        self.list(&format!("id = {id} AND ?1 = ?1"))?
            .pop()
            .ok_or(ClientError::NoSuchMessage(id))
    }

    /// Problems found during earlier syncs, newest last.
    pub fn rejected(&self) -> Result<Vec<(i64, String)>> {
        let mut stmt = self
            .local
            .conn
            .prepare("SELECT at, reason FROM rejected ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The bridge password's SHA-256, to check logins against. The password is
/// 100 random bits, so a fast hash suffices; the password itself stays in
/// the encrypted store.
pub struct BridgeLogin {
    digest: [u8; 32],
}

impl BridgeLogin {
    /// Whether `given` is the bridge password (compared in constant time).
    pub fn matches(&self, given: &str) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let given: [u8; 32] = sha2::Sha256::digest(given.as_bytes()).into();
        self.digest.ct_eq(&given).into()
    }
}

impl Drop for BridgeLogin {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.digest);
    }
}

/// Passes everything through to `inner`, keeping a copy of the first bytes.
struct HeadTee<'a, W: Write> {
    head: Vec<u8>,
    inner: &'a mut W,
}

impl<W: Write> Write for HeadTee<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        let room = mail::HEAD_LIMIT.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&data[..room]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Result of applying one queue item to local state.
enum Step {
    Joined,
    Committed,
    Stored(i64),
    Ignored,
    NeedsBlob {
        blob: BlobRef,
    },
    /// A mail history from another device of the account, to download and import.
    NeedsHistory {
        blob: BlobRef,
    },
    Imported(u32),
    /// These members' device lists must be fetched before the item is believed.
    NeedLists(Vec<Address>),
}

/// Conversations something arrived in during a sync.
#[derive(Default)]
struct Touched {
    all: std::collections::BTreeSet<GroupId>,
    /// Those where a commit or Welcome arrived (not only messages).
    changed: std::collections::BTreeSet<GroupId>,
}

impl Step {
    /// A look that must leave no trace: the transaction is rolled back and
    /// the item opened again once the missing piece is fetched.
    fn rolls_back(&self) -> bool {
        matches!(
            self,
            Step::NeedsBlob { .. } | Step::NeedsHistory { .. } | Step::NeedLists(_)
        )
    }
}

/// Moves the queue cursor forward (never back: a held item replayed later
/// has a lower number than what was processed since).
fn advance_cursor(l: &LocalStore, seq: u64) -> Result<()> {
    if seq > queue_cursor(l)? {
        l.set_meta("queue_cursor", &seq.to_string())?;
    }
    Ok(())
}

/// What a fetched device list means for a receiver: verified, a changed
/// account key (held for the user), or untrusted (the item is rejected);
/// `Err` when the question could not be answered now (retried next sync).
fn list_outcome(found: Result<DeviceListBody>) -> Result<receipt::ListOutcome> {
    match found {
        Ok(_) => Ok(receipt::ListOutcome::Verified),
        Err(ClientError::AccountKeyChanged(_)) => Ok(receipt::ListOutcome::KeyChanged),
        Err(
            e @ (ClientError::Unreachable(..)
            | ClientError::Local(_)
            | ClientError::Io(_)
            | ClientError::Protocol(_)),
        ) => Err(e),
        Err(e @ ClientError::Server { status, .. }) if status >= 500 || status == 401 => Err(e),
        Err(e) => Ok(receipt::ListOutcome::Untrusted(e.to_string())),
    }
}

/// The last queue position this device has processed.
fn queue_cursor(l: &LocalStore) -> Result<u64> {
    Ok(l.meta("queue_cursor")?
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

fn open_item(l: &LocalStore, item: &QueueItem, fetched: &receipt::Fetched) -> Result<Step> {
    match item.kind {
        QueueKind::Welcome => {
            let (group, adder) = pouch_mls::join(&l.provider, &item.payload)?;
            // The adder must be a device its account names now; every other
            // member one its account signed for.
            let roster = pouch_mls::roster(&group);
            if let receipt::Authentication::NeedLists(a) =
                receipt::authenticate(l, &receipt::roster_with(&roster, &adder), fetched)?
            {
                return Ok(Step::NeedLists(a));
            }
            let gid = GroupId::from_bytes(&pouch_mls::group_id_bytes(&group));
            if gid != item.group_id {
                return Err(ClientError::Invalid(format!(
                    "the server filed a Welcome to conversation {gid} under {}",
                    item.group_id
                )));
            }
            receipt::note_joined(l, &gid, pouch_mls::epoch(&group))?;
            l.conn.execute(
                "INSERT OR IGNORE INTO conversations (group_id, created_at, last_update) VALUES (?1, ?2, ?2)",
                params![gid.0, now()],
            )?;
            // The conversation's first mail usually follows in the same page.
            l.keep_group(group);
            Ok(Step::Joined)
        }
        QueueKind::Commit => {
            let mut group = load(l, &item.group_id)?;
            match pouch_mls::open(&l.provider, &mut group, &item.payload)? {
                Opened::Commit { committer: speaker } | Opened::Proposal { proposer: speaker } => {
                    // The committer must be a device its account names now;
                    // after the commit, every member (those it added, and
                    // any leaf it changed) one its account signed for.
                    let roster = pouch_mls::roster(&group);
                    match receipt::authenticate(
                        l,
                        &receipt::roster_with(&roster, &speaker),
                        fetched,
                    )? {
                        receipt::Authentication::NeedLists(a) => Ok(Step::NeedLists(a)),
                        receipt::Authentication::Verified => {
                            l.keep_group(group);
                            Ok(Step::Committed)
                        }
                    }
                }
                Opened::Application { .. } => Err(ClientError::Invalid(
                    "expected a commit, got an application message".into(),
                )),
            }
        }
        QueueKind::Application => finish_application(l, item, None, fetched),
    }
}

fn load(l: &LocalStore, g: &GroupId) -> Result<MlsGroup> {
    let bytes = g
        .to_bytes()
        .ok_or_else(|| ClientError::Invalid("malformed conversation id".into()))?;
    l.group(&bytes)
}

/// A mail's bytes as stored locally.
pub(crate) enum Body {
    Inline(Vec<u8>),
    File(local::MailFile),
}

impl Body {
    /// The bytes of an inline body (a file body's bytes are read separately).
    fn inline_bytes(&self) -> &[u8] {
        match self {
            Body::Inline(raw) => raw,
            Body::File(_) => &[],
        }
    }
}

/// Decrypts an application message and stores the mail. With `downloaded`
/// the message's blob is already in a local file (the MLS decryption is
/// redone in this transaction; the earlier attempt was rolled back).
fn finish_application(
    l: &LocalStore,
    item: &QueueItem,
    downloaded: Option<(Vec<u8>, &Body)>,
    fetched: &receipt::Fetched,
) -> Result<Step> {
    let mut group = load(l, &item.group_id)?;
    let (sender, sender_key, payload) =
        match pouch_mls::open(&l.provider, &mut group, &item.payload)? {
            Opened::Application {
                sender,
                sender_key,
                payload,
            } => (sender, sender_key, payload),
            _ => return Ok(Step::Committed),
        };
    // Held again only if this item's transaction commits (a refusal below,
    // or a first attempt that needs a blob or lists, rolls it back).
    l.keep_group(group);
    let speaker = (Some(sender.clone()), sender_key.clone());
    if let receipt::Authentication::NeedLists(a) =
        receipt::authenticate(l, &[(&speaker, receipt::Role::Speaker)], fetched)?
    {
        return Ok(Step::NeedLists(a));
    }
    let envelope =
        Envelope::from_bytes(&payload).map_err(|e| ClientError::Invalid(e.to_string()))?;
    receipt::check_link(
        l,
        &item.group_id,
        &sender,
        &sender_key,
        envelope.chain.as_ref(),
        &receipt::envelope_hash(&payload),
    )?;
    let label = labels::check_received(l, envelope.label.as_deref(), item.label.as_deref())?;
    let own = l.require_meta("address")?;
    let content = match envelope.content {
        // Only the account's own devices may hand over the account key, and only once.
        Content::AccountKey { secret } => {
            if sender.as_str() != own {
                return Err(ClientError::Security(format!(
                    "{sender} tried to hand this device an account key"
                )));
            }
            if l.account_key()?.is_none() {
                let key = devices::AccountKey::from_secret(&secret)?;
                // It must be the key that signed the list naming this device.
                let expected = l.meta("expected_account_key")?;
                if expected.is_some_and(|e| e != hex::encode(key.public())) {
                    return Err(ClientError::Security(format!(
                        "{sender} handed this device an account key that did not sign its device list"
                    )));
                }
                l.set_account_key(&key)?;
            }
            l.conn.execute(
                "UPDATE conversations SET kind = 'system' WHERE group_id = ?1",
                [&item.group_id.0],
            )?;
            return Ok(Step::Committed);
        }
        Content::History(blob) => {
            if sender.as_str() != own {
                return Err(ClientError::Security(format!(
                    "{sender} tried to send this device a mail history"
                )));
            }
            return Ok(match downloaded {
                Some(_) => Step::Committed,
                None => Step::NeedsHistory { blob },
            });
        }
        other => other,
    };
    let inline;
    let (head, body): (&[u8], &Body) = match (content, &downloaded) {
        (Content::Inline { rfc5322 }, _) => {
            inline = Body::Inline(rfc5322);
            (inline.inline_bytes(), &inline)
        }
        (Content::Blob(_), Some((head, body))) => (head.as_slice(), *body),
        (Content::Blob(blob), None) => return Ok(Step::NeedsBlob { blob }),
        (Content::History(_) | Content::AccountKey { .. }, _) => unreachable!("handled above"),
    };
    let parsed = mail::parse(head)?;
    if parsed.from.as_ref() != Some(&sender) {
        return Err(ClientError::Invalid(format!(
            "forged sender: the From header says {} but the message was signed by {sender}",
            parsed
                .from
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "nobody".into())
        )));
    }
    let exists: Option<i64> = l
        .conn
        .query_row(
            "SELECT id FROM messages WHERE server_seq = ?1",
            [item.seq as i64],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok(Step::Ignored);
    }
    let id = store_message(l, &item.group_id, Some(item.seq), false, &parsed, body)?;
    if let Some(label) = &label {
        set_label(
            l,
            id,
            &labels::StoredLabel::new(&label.shown, label.subject_marking, head),
        )?;
    }
    Ok(Step::Stored(id))
}

/// Records a stored mail's label, its marking, and what the bridge shows
/// of its header section.
fn set_label(l: &LocalStore, id: i64, label: &labels::StoredLabel) -> Result<()> {
    let (head, len) = match &label.bridge_head {
        Some((h, n)) => (Some(h.as_slice()), Some(*n as i64)),
        None => (None, None),
    };
    l.conn
        .prepare_cached(
            "INSERT OR REPLACE INTO message_labels (label, marking, bridge_head, head_len, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![label.xml, label.marking, head, len, id])?;
    Ok(())
}

pub(crate) fn store_message(
    l: &LocalStore,
    group: &GroupId,
    seq: Option<u64>,
    outgoing: bool,
    p: &Parsed,
    body: &Body,
) -> Result<i64> {
    let (raw, file, key, size) = match body {
        Body::Inline(raw) => (Some(raw.as_slice()), None, None, raw.len() as u64),
        Body::File(f) => (None, Some(f.name.as_str()), Some(f.key.as_slice()), f.size),
    };
    let list = |v: &[Address]| {
        serde_json::to_string(&v.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .expect("serialises")
    };
    l.conn.execute(
        "INSERT INTO messages (group_id, server_seq, outgoing, sender, recipients, cc, subject, message_id, date, stored_at, size, attachments, raw, raw_file, raw_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            group.0,
            seq.map(|s| s as i64),
            outgoing,
            p.from.as_ref().map(|a| a.as_str()).unwrap_or_default(),
            list(&p.to),
            list(&p.cc),
            p.subject,
            p.message_id,
            p.date,
            now(),
            size as i64,
            serde_json::to_string(&p.attachments).expect("serialises"),
            raw,
            file,
            key,
        ],
    )?;
    Ok(l.conn.last_insert_rowid())
}
