//! Bodies of the HTTPS API (JSON). Everything here is visible to the server:
//! addresses, device ids, group ids, epochs, sizes and opaque MLS bytes. No
//! subject, body, attachment or Cc list ever appears in these types.

use crate::devices::SignedDeviceList;
use crate::security::{Action, Outcome, Reason, ReportKind, Rule, Severity};
use crate::{Address, DeviceId, GroupId, b64};
use serde::{Deserialize, Serialize};

/// `GET /v1/info` (unauthenticated).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub domain: String,
    /// The MLS ciphersuite every client of this server must use.
    pub ciphersuite: u16,
    pub version: String,
    /// The commit the server was built from ("unknown" outside git).
    #[serde(default)]
    pub commit: String,
    /// Every device must put fresh key material into each conversation it is
    /// active in at least this often (post-compromise security).
    #[serde(default = "default_rotation")]
    pub rotation_secs: u64,
    /// The transparency log's origin line and its checkpoint verifier key (C2SP signed-note form).
    #[serde(default)]
    pub log_origin: String,
    #[serde(default)]
    pub log_key: String,
    /// Verifier keys of the witnesses that cosign the log's checkpoints.
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// The witness this server runs for its federation peers' logs: a
    /// device accepts another domain's checkpoint only with its cosignature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_witness: Option<String>,
}

/// `GET /v1/log/inclusion?address=A&version=V`: where a device-list version
/// sits in the log, proven against the current checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogInclusion {
    pub index: u64,
    /// The leaf's exact bytes (what the tree hashes and the tiles serve).
    #[serde(with = "b64")]
    pub entry: Vec<u8>,
    /// The full entry the leaf commits to (empty for a leaf from before
    /// commitments, which is its own entry).
    #[serde(with = "b64", default)]
    pub full: Vec<u8>,
    /// The signed checkpoint the proof is for.
    pub checkpoint: String,
    /// Base64 hashes.
    pub proof: Vec<String>,
}

/// `GET /v1/log/consistency?from=M&to=N`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogConsistency {
    pub proof: Vec<String>,
}

/// `GET /v1/log/entries/{address}`: every entry about one account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntries {
    pub entries: Vec<IndexedEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexedEntry {
    pub index: u64,
    /// The leaf, as in the tiles.
    #[serde(with = "b64")]
    pub entry: Vec<u8>,
    /// The full entry it commits to (empty for a leaf from before commitments).
    #[serde(with = "b64", default)]
    pub full: Vec<u8>,
}

/// `GET /v1/log/commitment-key`: the key of the log's account commitments
/// (for signed-in devices), with the proof that the log records its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogCommitmentKey {
    /// Base64 of the 32-byte key.
    pub key: String,
    pub inclusion: LogInclusion,
}

fn default_rotation() -> u64 {
    24 * 3600
}

/// `GET /v1/admin/devices/stale`: devices past the rotation window, per conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StaleDevice {
    pub address: Address,
    pub device_id: DeviceId,
    pub group_id: GroupId,
    pub last_update: i64,
}

/// Every error the server returns has this body, with an HTTP status to match.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// One line a person can act on.
    pub message: String,
    /// For [`ErrorCode::StaleEpoch`]: the group's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    InviteInvalid,
    InviteUsed,
    InviteExpired,
    UnknownRecipient,
    Conflict,
    StaleEpoch,
    NotMember,
    TooLarge,
    /// Too many requests of this kind are waiting; try again later.
    RateLimited,
    /// A storage or queue quota is full.
    QuotaExceeded,
    Internal,
}

// ----- administration (bearer: the admin token) -----

/// `POST /v1/admin/users`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddUserRequest {
    pub address: Address,
    #[serde(default)]
    pub name: Option<String>,
    /// Invite lifetime; the server's default (72 h) when absent.
    #[serde(default)]
    pub invite_ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddUserResponse {
    pub address: Address,
    /// The invite secret, shown once; the server keeps only its hash.
    #[serde(with = "b64")]
    pub invite_secret: Vec<u8>,
    pub expires_at: i64,
}

/// `GET /v1/admin/users`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserSummary {
    pub address: Address,
    pub name: Option<String>,
    pub created_at: i64,
    pub devices: u32,
}

// ----- enrollment and authentication -----

/// `POST /v1/enroll`: the invite secret buys one device registration, the
/// account's first device (or its first after an administrator reset).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub address: Address,
    /// Chosen by the device (16 random bytes, hex): the signed list names it.
    pub device_id: DeviceId,
    /// Version 1 of the account's device list (or the next version after a
    /// reset), listing this device alone, signed by the new account key.
    pub device_list: SignedDeviceList,
    #[serde(with = "b64")]
    pub invite_secret: Vec<u8>,
    pub device_name: String,
    /// The device's Ed25519 public key: its MLS signature key and its login.
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    #[serde(with = "b64::list")]
    pub key_packages: Vec<Vec<u8>>,
    #[serde(with = "b64")]
    pub last_resort_key_package: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: DeviceId,
    pub ciphersuite: u16,
}

/// `POST /v1/auth/challenge`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub device_id: DeviceId,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeResponse {
    #[serde(with = "b64")]
    pub challenge: Vec<u8>,
}

/// `POST /v1/auth/token`: the challenge signed with the device key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRequest {
    pub device_id: DeviceId,
    #[serde(with = "b64")]
    pub challenge: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_in_secs: u64,
}

/// What a device signs to log in. Domain-separated so that the signature can
/// never be replayed as an MLS signature or anything else.
pub fn auth_signing_payload(device_id: &DeviceId, challenge: &[u8]) -> Vec<u8> {
    let mut out = b"pouch-auth-v1\0".to_vec();
    out.extend_from_slice(device_id.0.as_bytes());
    out.push(0);
    out.extend_from_slice(challenge);
    out
}

// ----- key packages -----

/// `POST /v1/key-packages`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UploadKeyPackages {
    #[serde(with = "b64::list")]
    pub key_packages: Vec<Vec<u8>>,
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<Vec<u8>>,
    /// These replace every ordinary package the device has on the server
    /// (key packages expire: OpenMLS gives each twelve weeks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_pool: bool,
}

/// `GET /v1/key-packages/count`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyPackageCount {
    pub available: u32,
}

/// `POST /v1/key-packages/claim`: one key package for every device of every address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub addresses: Vec<Address>,
    /// When not empty, only these devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<DeviceId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub devices: Vec<ClaimedDevice>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimedDevice {
    pub address: Address,
    pub device_id: DeviceId,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    #[serde(with = "b64")]
    pub key_package: Vec<u8>,
    pub last_resort: bool,
}

// ----- groups -----

/// `POST /v1/groups/{group}/commits`. The server accepts exactly one commit per
/// epoch: `base_epoch` must be the group's current epoch (0 creates the group).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitRequest {
    pub base_epoch: u64,
    /// The MLS commit (a PublicMessage, which the server checks), fanned out
    /// to the group's current members.
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub commit: Option<Vec<u8>>,
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub welcome: Option<Vec<u8>>,
    #[serde(default)]
    pub added: Vec<DeviceId>,
    #[serde(default)]
    pub removed: Vec<DeviceId>,
    /// For a new conversation (`base_epoch` 0): the creator's MLS GroupInfo
    /// at epoch 0 with the ratchet tree, from which the server starts the
    /// public state it checks every commit against.
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub group_info: Option<Vec<u8>>,
    /// For a new conversation: the nonce its id was made from with the
    /// server's domain ([`crate::hub_group_id`]); without it (a device of
    /// an earlier release) the conversation cannot include other domains.
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub hub_nonce: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitResponse {
    pub epoch: u64,
}

/// `GET /v1/groups/{group}/members`: whom the server delivers the
/// conversation to, at its current epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupMembers {
    pub epoch: u64,
    pub devices: Vec<DeviceId>,
}

/// `POST /v1/groups/{group}/messages`: an MLS application message for the
/// group's other members, sent in the group's current epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    pub epoch: u64,
    #[serde(with = "b64")]
    pub message: Vec<u8>,
    /// The blob the message refers to (large mail, a history): the server
    /// keeps it until every recipient has acknowledged the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The sender's id for this submission (64 hex digits at most), the
    /// same on every attempt: a message sent again after its answer was
    /// lost is queued once (the outbox's retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<String>,
    /// The outer copy of the classification label inside the message
    /// (STANAG 4774 XML, canonical): the server checks it against every
    /// recipient's clearance and delivers it beside the message. The server
    /// sees the label, never the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The longest submission id a server takes.
pub const SUBMISSION_ID_MAX: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub recipients: u32,
    /// The server had accepted this submission before: nothing was queued
    /// now (this attempt's message, and its chain link, went nowhere).
    #[serde(default)]
    pub duplicate: bool,
}

// ----- the device queue -----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Welcome,
    Commit,
    Application,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Welcome => "welcome",
            QueueKind::Commit => "commit",
            QueueKind::Application => "application",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "welcome" => Some(QueueKind::Welcome),
            "commit" => Some(QueueKind::Commit),
            "application" => Some(QueueKind::Application),
            _ => None,
        }
    }
}

/// The header with which a device not yet enrolled shows its invite's
/// secret (hex) to read its own address's device lists.
pub const INVITE_HEADER: &str = "x-pouch-invite";

/// `GET /v1/queue?after=SEQ&limit=N`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueItem {
    /// Monotonic per device, with no gaps the device has not acknowledged.
    pub seq: u64,
    pub kind: QueueKind,
    pub group_id: GroupId,
    pub sender_device: DeviceId,
    pub epoch: u64,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    pub received_at: i64,
    /// The outer copy of an application message's classification label
    /// (STANAG 4774 XML), as the sender gave it to the server: the receiver
    /// compares it with the label inside the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The blob the message refers to (large mail): what a conversation's
    /// hub pushes to a peer before the item (devices learn it from the
    /// message itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueResponse {
    pub items: Vec<QueueItem>,
    /// Whether more is queued after these items: `Some(false)` spares the
    /// device a request that would come back empty. Absent from servers
    /// that predate it (the device then asks until a page is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
}

/// `POST /v1/queue/ack`: everything up to and including `up_to` is durably stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AckRequest {
    pub up_to: u64,
}

// ----- blobs -----

/// `POST /v1/blobs` answers with a fresh blob id; chunks follow with
/// `PUT /v1/blobs/{id}/{index}` and `POST /v1/blobs/{id}/finish`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobCreated {
    pub blob_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobFinish {
    pub chunks: u32,
    pub size: u64,
}

/// The largest chunk the server accepts (ciphertext), a little over 1 MiB.
pub const MAX_BLOB_CHUNK: usize = (1 << 20) + 1024;

// ----- devices: lists, linking, revocation -----

/// `GET /v1/device-lists/{address}` (public): every version, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceListHistory {
    pub address: Address,
    pub lists: Vec<SignedDeviceList>,
}

/// `POST /v1/directory/lists` (signed-in devices): the device lists of many
/// accounts at once, each with the inclusion proof of its newest version,
/// all against one checkpoint — what a sender needs for a new conversation
/// and a receiver for a Welcome into one, in one round trip instead of two
/// per member. At most `MAX_RECIPIENTS + 1` addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectoryRequest {
    pub addresses: Vec<Address>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectoryResponse {
    /// The signed checkpoint every proof below is for.
    pub checkpoint: String,
    pub entries: Vec<DirectoryEntry>,
    /// Addresses with no account on this server.
    #[serde(default)]
    pub unknown: Vec<Address>,
    /// Accounts of federated domains, as their servers answered this one
    /// (one per domain asked about).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteDirectory>,
}

/// Another domain's accounts, as its server answered this one: its lists
/// with the proofs of their newest versions, its commitment key, all
/// against one checkpoint of its log — which carries this server's
/// witness's cosignature (the device accepts nothing else).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteDirectory {
    pub domain: String,
    /// Why the domain's server could not be asked (then nothing else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its log's checkpoint key, as this server's configuration has it.
    #[serde(default)]
    pub log_key: String,
    /// The signed checkpoint every proof is for, with this server's
    /// witness's cosignature.
    #[serde(default)]
    pub checkpoint: String,
    /// Its log's commitment key (base64) and the proof of its leaf.
    #[serde(default)]
    pub commitment_key: String,
    #[serde(default)]
    pub commitment_key_proof: Option<LeafProof>,
    #[serde(default)]
    pub entries: Vec<DirectoryEntry>,
    #[serde(default)]
    pub unknown: Vec<Address>,
}

/// `POST /federation/v1/directory/lists` (a peer asking about this
/// server's accounts): the directory's answer and the log's commitment key,
/// against the same checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerDirectory {
    pub directory: DirectoryResponse,
    pub commitment_key: LogCommitmentKey,
}

/// One account's device lists, every version, oldest first, and the proof
/// that the newest is in the log (None: not in the checkpoint yet).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub address: Address,
    pub lists: Vec<SignedDeviceList>,
    pub newest: Option<LeafProof>,
}

/// A leaf and its inclusion proof, for the checkpoint given beside it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeafProof {
    pub index: u64,
    #[serde(with = "b64")]
    pub entry: Vec<u8>,
    #[serde(with = "b64", default)]
    pub full: Vec<u8>,
    pub proof: Vec<String>,
}

impl LeafProof {
    /// The inclusion this proof makes with the checkpoint it was given for.
    pub fn with_checkpoint(self, checkpoint: &str) -> LogInclusion {
        LogInclusion {
            index: self.index,
            entry: self.entry,
            full: self.full,
            checkpoint: checkpoint.to_string(),
            proof: self.proof,
        }
    }
}

impl From<LogInclusion> for LeafProof {
    fn from(i: LogInclusion) -> Self {
        LeafProof {
            index: i.index,
            entry: i.entry,
            full: i.full,
            proof: i.proof,
        }
    }
}

/// `POST /v1/device-lists`: publish the next version, signed by the account key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishDeviceList {
    pub list: SignedDeviceList,
}

/// `GET /v1/devices` (own account): every device the server has, in any state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisteredDevice {
    pub device_id: DeviceId,
    pub name: String,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    pub created_at: i64,
    pub approved_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

/// `POST /v1/link` (unauthenticated): a new device asks to join an account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkRequestBody {
    pub address: Address,
    pub device_id: DeviceId,
    pub device_name: String,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    /// Random; with the signature key it determines the link code.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// The new device polls its request's status with this secret (the server keeps its hash).
    #[serde(with = "b64")]
    pub poll_secret: Vec<u8>,
    #[serde(with = "b64::list")]
    pub key_packages: Vec<Vec<u8>>,
    #[serde(with = "b64")]
    pub last_resort_key_package: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkCreated {
    pub code: String,
    pub expires_at: i64,
}

/// `POST /v1/link/status` (poll secret in the body).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkPoll {
    #[serde(with = "b64")]
    pub poll_secret: Vec<u8>,
}

/// A link request as an existing device of the account sees it (`GET /v1/link/{code}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkInfo {
    pub code: String,
    pub address: Address,
    pub device_id: DeviceId,
    pub device_name: String,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// The network address the request came from.
    pub source: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// "pending", "approved", "denied" or "expired".
    pub status: String,
}

/// The link code for a device key and nonce: 60 bits of SHA-256 as
/// base32 in three groups of four (e.g. `K7QM-3XPA-9D2F`). Because it is
/// derived from the key, a server cannot slip its own key under a code the
/// user typed.
pub fn link_code(signature_key: &[u8], nonce: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKMNPQRSTVWXYZ0123456789";
    let mut h = Sha256::new();
    h.update(b"pouch-link-code-v1\0");
    h.update(signature_key);
    h.update(nonce);
    let digest = h.finalize();
    let mut bits: u64 = 0;
    for b in &digest[..8] {
        bits = (bits << 8) | *b as u64;
    }
    let chars: Vec<u8> = (0..12)
        .map(|i| ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize])
        .collect();
    let s = String::from_utf8(chars).expect("ASCII alphabet");
    format!("{}-{}-{}", &s[..4], &s[4..8], &s[8..])
}

/// Normalises a code as typed: upper case, dashes optional, spaces ignored.
pub fn normalise_link_code(typed: &str) -> Option<String> {
    let clean: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    (clean.len() == 12).then(|| format!("{}-{}-{}", &clean[..4], &clean[4..8], &clean[8..]))
}

/// `POST /v1/admin/devices/{device}/revoke` and `POST /v1/admin/users/{address}/reset` answer with this.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminActionDone {
    pub address: Address,
    pub detail: String,
}

// ----- administrators (people with keys and roles) -----

/// What an administrator may do. Every administrator route names the roles
/// it admits (`pouch-server`'s `routes.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Users, invites, devices, administrators.
    Operator,
    /// Events, alerts and exports; reads accounts.
    Security,
    /// Reads everything, changes nothing.
    Auditor,
}

impl AdminRole {
    pub const ALL: [AdminRole; 3] = [AdminRole::Operator, AdminRole::Security, AdminRole::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Operator => "operator",
            AdminRole::Security => "security",
            AdminRole::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<AdminRole> {
        AdminRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The longest administrator name (a person's short name or login).
pub const ADMIN_NAME_MAX: usize = 64;

/// Whether `name` is a usable administrator name: 1–64 of a–z, 0–9, `.`, `-`, `_`.
pub fn admin_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ADMIN_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// `POST /v1/admin/bootstrap`: the first administrator, with the server's
/// one-time setup secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootstrapRequest {
    pub name: String,
    /// Ed25519 public key.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    pub setup_secret: String,
}

/// `POST /v1/admin/admins`: an operator adds an administrator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddAdminRequest {
    pub name: String,
    pub role: AdminRole,
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
}

/// `GET /v1/admin/admins`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminSummary {
    pub name: String,
    pub role: AdminRole,
    /// SHA-256 of the public key, hex: what the person compares.
    pub key_fingerprint: String,
    #[serde(default)]
    pub added_by: Option<String>,
    pub added_at: i64,
}

/// `POST /v1/admin/auth/challenge`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminChallengeRequest {
    pub name: String,
}

/// `POST /v1/admin/auth/token`: the challenge signed with the administrator's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminTokenRequest {
    pub name: String,
    #[serde(with = "b64")]
    pub challenge: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

/// What an administrator signs to sign in; domain-separated from the
/// devices' sign-in and from everything else.
pub fn admin_auth_signing_payload(name: &str, challenge: &[u8]) -> Vec<u8> {
    let mut out = b"pouch-admin-auth-v1\0".to_vec();
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(challenge);
    out
}

/// An action that waits for a second administrator (the two-person rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalAction {
    /// Revoke every device of an account and invite a new first device.
    Reset,
    /// Revoke one device.
    Revoke,
    /// Add an operator (once there are two: else one could make the second
    /// person of the two-person rule up).
    AddOperator,
    /// Remove an operator (once there are two).
    RemoveOperator,
    /// Register the security officer's key (once there are two security
    /// administrators: the key signs every clearance and the label policy).
    RegisterOfficer,
    /// Add a security administrator (once there are two operators: else one
    /// operator could make up both people of the officer key's rule).
    AddSecurityAdmin,
}

impl ApprovalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::Reset => "reset",
            ApprovalAction::Revoke => "revoke",
            ApprovalAction::AddOperator => "add_operator",
            ApprovalAction::RemoveOperator => "remove_operator",
            ApprovalAction::RegisterOfficer => "register_officer",
            ApprovalAction::AddSecurityAdmin => "add_security_admin",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalAction> {
        [
            ApprovalAction::Reset,
            ApprovalAction::Revoke,
            ApprovalAction::AddOperator,
            ApprovalAction::RemoveOperator,
            ApprovalAction::RegisterOfficer,
            ApprovalAction::AddSecurityAdmin,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// A request waiting for approval (`GET /v1/admin/approvals`, and the
/// answer to a reset or revocation: 202).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingApproval {
    pub id: String,
    pub action: ApprovalAction,
    /// The account of a reset or revocation.
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub device: Option<DeviceId>,
    /// The operator to add or remove.
    #[serde(default)]
    pub admin: Option<String>,
    /// The SHA-256 (hex) of the key an operator would be added with, or of
    /// the security officer's key to register: the approver compares it
    /// with the person's own before approving.
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    pub requested_by: String,
    pub requested_at: i64,
    pub expires_at: i64,
}

/// What an approval is about, for people: the account, or the person
/// ("operator NAME", "security administrator NAME", "security officer NAME").
pub fn approval_subject(
    action: ApprovalAction,
    address: Option<&Address>,
    admin: Option<&str>,
) -> String {
    let who = match action {
        ApprovalAction::AddSecurityAdmin => "security administrator",
        ApprovalAction::RegisterOfficer => "security officer",
        _ => "operator",
    };
    match (address, admin) {
        (Some(a), _) => a.to_string(),
        (None, Some(name)) => format!("{who} {name}"),
        (None, None) => "(nothing)".to_string(),
    }
}

impl PendingApproval {
    pub fn subject(&self) -> String {
        approval_subject(self.action, self.address.as_ref(), self.admin.as_deref())
    }
}

/// `POST /v1/admin/approvals/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApproveRequest {
    /// To add an operator or register the security officer's key: the
    /// key's fingerprint as the approver got it from the person (not from
    /// the requester).
    #[serde(default)]
    pub key_fingerprint: Option<String>,
}

/// `POST /v1/admin/admins`: the administrator added, or (an operator, once
/// there are two) the request a second operator must approve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddAdminResponse {
    #[serde(default)]
    pub added: Option<AdminSummary>,
    #[serde(default)]
    pub pending: Option<PendingApproval>,
}

/// `DELETE /v1/admin/admins/{name}`: done, or (an operator, once there are
/// two) the request a second operator must approve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveAdminResponse {
    #[serde(default)]
    pub pending: Option<PendingApproval>,
}

/// The answer to an approval: what the approved action did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalDone {
    pub id: String,
    pub action: ApprovalAction,
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub admin: Option<String>,
    pub detail: String,
    /// A reset's invite for the account's new first device.
    #[serde(default)]
    pub invite: Option<AddUserResponse>,
}

impl ApprovalDone {
    pub fn subject(&self) -> String {
        approval_subject(self.action, self.address.as_ref(), self.admin.as_deref())
    }
}

// ----- the security officer's statements (label policy, clearances) -----

/// A statement the security officer signed (`pouch-label`'s
/// `SignedStatement`): the JSON exactly as signed, and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficerStatement {
    pub body: String,
    pub signature: String,
}

/// `POST /v1/admin/security-officer` (security administrators): the
/// officer's key card, signed by that key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterOfficerRequest {
    pub card: OfficerStatement,
}

/// `GET /v1/admin/federation/card`: what a partner ministry's operator puts
/// in their `pouch.toml` as one `[[federation.peers]]` entry (the keys are
/// those of the file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederationCard {
    pub domain: String,
    /// The federation listener (mutual TLS), `https://HOST:PORT`.
    pub url: String,
    /// The TLS trust anchor certificate (DER, base64): peers trust only it.
    pub tls_anchor: String,
    /// Its SHA-256 (hex), for the two operators to compare by voice.
    pub tls_anchor_sha256: String,
    /// The transparency log's checkpoint verifier key.
    pub log_key: String,
    /// This server's witness (it cosigns its peers' checkpoints).
    pub witness_key: String,
}

/// `GET /v1/admin/federation/status`: this server's peers as this node sees
/// them (`pouch admin federation status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FederationStatus {
    pub domain: String,
    /// This server's federation listener, as its card says.
    pub url: String,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub domain: String,
    pub url: String,
    /// When the peer last answered (Unix seconds); None: not since this
    /// node started.
    pub last_contact: Option<i64>,
    /// Why the last exchange failed (None once one works again).
    pub last_error: Option<String>,
    /// The size of the peer's log at its newest checkpoint this server's
    /// witness cosigned.
    pub log_size: Option<u64>,
    /// How long ago this server's witness last cosigned the peer's
    /// checkpoint (it does every few seconds while the peer answers).
    pub cosigned_age_secs: Option<u64>,
    /// The size of this server's log the peer's witness last cosigned.
    pub ours_cosigned: Option<u64>,
    /// Items of conversations hosted here that wait to be forwarded to the
    /// peer (for its devices), and how long the oldest has waited.
    #[serde(default)]
    pub outbox_items: u64,
    #[serde(default)]
    pub outbox_oldest_secs: Option<u64>,
}

/// `POST /federation/v1/blobs/{blob}`: the pushing peer's blob, created
/// here if it is not; `have`: it is here whole already (nothing to push).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerBlobState {
    pub have: bool,
}

/// `POST /federation/v1/key-packages/claim`: one key package of each
/// device of these accounts (all of the answering peer's domain), for a
/// send of one of the asking server's devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerClaimRequest {
    pub addresses: Vec<Address>,
    /// When not empty, only these devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<DeviceId>,
    /// Who claims (for the answering server's access events).
    pub for_address: Address,
}

/// A device of another domain, as a hub must know it to check the commit
/// that adds it: its account and its key (the leaf must carry both).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerDevice {
    pub device_id: DeviceId,
    pub address: Address,
    #[serde(with = "b64")]
    pub signature_key: Vec<u8>,
}

/// `POST /federation/v1/groups/{group}/commits`: a commit of one of the
/// asking server's devices into a conversation the answering server hosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCommit {
    pub device: DeviceId,
    pub request: CommitRequest,
    /// The devices the commit adds that the hub may not know (other
    /// domains' devices the asking server claimed key packages of).
    #[serde(default)]
    pub devices: Vec<PeerDevice>,
}

/// `POST /federation/v1/groups/{group}/messages`: a message of one of the
/// asking server's devices into a conversation the answering server hosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerSend {
    pub device: DeviceId,
    pub request: SendRequest,
}

/// `POST /federation/v1/deliver`: queue items a hub forwards for the
/// answering server's devices, in queue order per device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerDelivery {
    pub items: Vec<ForwardedItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedItem {
    /// One of the answering server's devices.
    pub device: DeviceId,
    /// With a Welcome: the nonce the conversation's id was made from with
    /// the forwarding hub's domain ([`crate::hub_group_id`]), its proof of
    /// being the hub.
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub hub_nonce: Option<Vec<u8>>,
    /// The item as queued at the hub for that device (`seq`: its position
    /// there, which makes a repeated delivery recognisable).
    pub item: QueueItem,
}

/// The answer to a [`PeerDelivery`]: how far each device's items were
/// received (queued, or dropped as duplicates or refused). Items after
/// that wait at the hub (a full queue).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerDeliveryAnswer {
    pub received: Vec<ReceivedUpTo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceivedUpTo {
    pub device: DeviceId,
    pub up_to: u64,
}

/// `GET /federation/v1/hello` on the federation listener: who answered and
/// whom it recognised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FederationHello {
    pub domain: String,
    pub peer: String,
}

/// The answer to `POST /v1/admin/security-officer`: the key registered, or
/// (once there are two security administrators) the request a second one
/// must approve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterOfficerResponse {
    #[serde(default)]
    pub registered: Option<OfficerRegistered>,
    #[serde(default)]
    pub pending: Option<PendingApproval>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OfficerRegistered {
    pub name: String,
    /// SHA-256 of the key (hex), as people compare it.
    pub fingerprint: String,
    /// The key it replaced, if any: devices that pinned it refuse labelled
    /// mail until their user accepts the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// `POST /v1/security/statements` (any signed-in device: the officer's
/// signature is the authority, not the device).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishStatementRequest {
    pub statement: OfficerStatement,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatementPublished {
    /// What it is filed under: `officer-key`, `label-policy`, or an address.
    pub subject: String,
    pub version: u64,
    /// Its index in the transparency log.
    pub index: u64,
}

// ----- access events (what was tried, for the user and the security team) -----

/// One access event. Never contains mail content: who, from where, what, how
/// much, with what outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub action: Action,
    pub outcome: Outcome,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub bytes: u64,
    /// For people; may be reworded at any time, so no rule reads it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The accounts it was aimed at (whose key packages a claim took).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Address>,
    /// The devices it was aimed at (a Welcome's new members, the device
    /// whose key-package pool ran dry, a device approved or revoked). A
    /// Welcome names at most [`EVENT_DEVICES_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// The device that acted, when the event is recorded on another one's
    /// account (who claimed a dry pool, who approved a link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<DeviceId>,
    /// An enrollment into an account whose devices an administrator reset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_reset: bool,
    /// The administrator (a person, by name) who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

impl EventBody {
    /// A successful `action` at `at`, about nobody yet (fields are set by the caller).
    pub fn new(action: Action, at: i64) -> EventBody {
        EventBody {
            at,
            account: None,
            device: None,
            source: None,
            action,
            outcome: Outcome::Success,
            count: 0,
            bytes: 0,
            detail: String::new(),
            reason: None,
            targets: Vec::new(),
            devices: Vec::new(),
            by: None,
            after_reset: false,
            admin: None,
        }
    }
}

/// At most this many devices are named in one event, so that a Welcome to a
/// conversation of a thousand devices is not a 32 KB event.
pub const EVENT_DEVICES_MAX: usize = 200;

/// An event as stored: numbered and hash-chained, so a deletion or an edit
/// anywhere breaks the chain from that point on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// The exact JSON of the [`EventBody`] that was hashed.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Event {
    /// SHA-256 over the previous hash, the sequence number and the body.
    pub fn chain_hash(prev_hash: &str, seq: u64, body: &str) -> String {
        crate::sha256_hex(format!("{prev_hash}\n{seq}\n{body}").as_bytes())
    }

    pub fn parsed(&self) -> Option<EventBody> {
        serde_json::from_str(&self.body).ok()
    }
}

/// The hash before the first event.
pub const EVENT_CHAIN_START: &str = "pouch-events-v1";

/// Checks a run of events starting at `first_seq` after `prev_hash`: contiguous
/// numbers and every hash. Returns the first problem found.
pub fn verify_event_chain(
    events: &[Event],
    first_seq: u64,
    mut prev_hash: String,
) -> Result<(), String> {
    for (expected, e) in (first_seq..).zip(events) {
        if e.seq != expected {
            return Err(format!(
                "event {expected} is missing (next is {}): events were deleted",
                e.seq
            ));
        }
        if e.prev_hash != prev_hash || e.hash != Event::chain_hash(&prev_hash, e.seq, &e.body) {
            return Err(format!(
                "event {} does not match the chain: events were edited",
                e.seq
            ));
        }
        prev_hash = e.hash.clone();
    }
    Ok(())
}

/// An alert raised by a detection rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub at: i64,
    pub rule: Rule,
    pub severity: Severity,
    pub account: Option<Address>,
    pub device: Option<DeviceId>,
    pub summary: String,
    pub event_seq: Option<u64>,
}

/// `POST /v1/reports`: a device reports something only it can see (e.g. a gap in its queue).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientReport {
    pub kind: ReportKind,
    pub detail: String,
}
