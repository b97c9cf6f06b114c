//! The server's storage contract, with no database driver in it.
//!
//! The server is generic over [`Store`]; `pouch-store-sqlite` and
//! `pouch-store-postgres` implement it, each with its own migrations, and
//! `pouch-store`'s conformance story (the `conformance` module) runs the
//! same checks against both. Every method that changes more than one row is
//! one transaction in the backend: an acknowledged write is durable and whole.
//!
//! Ordering guarantees the server relies on:
//! - queue sequence numbers are per device, strictly increasing, and become
//!   visible in order (a device never sees seq N+1 before seq N is committed);
//! - a group accepts exactly one commit per epoch.
#![forbid(unsafe_code)]

pub mod conformance;

/// The store traits, for code that calls a concrete backend's methods.
pub mod prelude {
    pub use super::{
        AuditStore, DirectoryStore, FederationStore, LogStore, MailStore, SettingsStore, Store,
    };
}

use async_trait::async_trait;
use pouch_proto::{
    Address, DeviceId, GroupId,
    api::{AdminRole, ApprovalAction, QueueItem, QueueKind, UserSummary},
};

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("storage quota exceeded")]
    QuotaExceeded,
    #[error("storage failure: {0}")]
    Backend(String),
    /// The backend does not do this itself; the message says what does.
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub device_id: DeviceId,
    pub address: Address,
    pub name: String,
    pub signature_key: Vec<u8>,
    pub created_at: UnixTime,
    /// When the device was allowed in: at enrollment, or when a link was approved.
    pub approved_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
    /// Who revoked it: "account" (a signed device list), "admin", "denied", "expired", "reset".
    pub revoked_by: Option<String>,
    /// `Some(domain)` for a device of another domain's account that is a
    /// member of a conversation hosted here (federation): it never signs in
    /// here; its queue is what this server still owes that domain.
    pub home_domain: Option<String>,
}

impl Device {
    pub fn is_active(&self) -> bool {
        self.approved_at.is_some() && self.revoked_at.is_none()
    }
    /// A device of this server's own accounts (one that may sign in).
    pub fn is_local(&self) -> bool {
        self.home_domain.is_none()
    }
}

/// A device of another domain's account, as the peer that hosts it
/// described it (its key package's credential and key say the same, or the
/// commit adding it does not verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDevice {
    pub device_id: DeviceId,
    pub address: Address,
    pub signature_key: Vec<u8>,
}

/// One queue item a peer (a conversation's hub) forwards for one of this
/// server's devices: `seq` is its position in that device's queue at the
/// peer, what makes a repeated delivery recognisable.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub device: DeviceId,
    pub seq: u64,
    pub item: QueueItem,
    /// With a Welcome: the nonce that makes the conversation's id the
    /// forwarding peer's (`pouch_proto::hub_group_id`).
    pub hub_nonce: Option<Vec<u8>>,
}

/// What became of one [`Forwarded`] item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardedOutcome {
    /// In the device's queue now.
    Queued,
    /// Delivered before (a retry after a lost answer): dropped.
    Duplicate,
    /// A device of this server that is revoked (or not yet approved): its
    /// mail goes nowhere, as for a local sender. Dropped.
    DeviceGone,
    /// Not a device of this server: dropped.
    NotOurDevice,
    /// A conversation hosted here, or at another peer, or not known here
    /// (only a Welcome starts following one): dropped.
    NotItsConversation { hub: Option<String> },
    /// The device's queue is full: this item and the rest wait at the peer.
    QueueFull,
    /// The blob it refers to is not here whole (the peer pushes blobs
    /// before items): it waits at the peer, as for a full queue.
    MissingBlob,
}

/// A blob as stored: who owns it, and once finished its chunks and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobState {
    pub owner: DeviceId,
    pub finished: Option<(u32, u64)>,
}

/// The device id that owns the blobs a peer pushes here (and counts their
/// bytes against the peer's quota): a row of `devices` that is never
/// active, never signs in, never joins a conversation.
pub fn peer_stand_in(domain: &str) -> DeviceId {
    DeviceId(format!("peer:{domain}"))
}

/// One version of an account's signed device list, as stored (opaque to the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredList {
    pub version: u64,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

impl From<StoredList> for pouch_proto::devices::SignedDeviceList {
    fn from(l: StoredList) -> Self {
        pouch_proto::devices::SignedDeviceList {
            body: l.body,
            signature: l.signature,
        }
    }
}

/// A device that has not refreshed its key material in a group in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleMember {
    pub address: Address,
    pub device_id: DeviceId,
    pub group_id: GroupId,
    pub updated_at: UnixTime,
}

/// An administrator: a person with an Ed25519 key and a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRecord {
    pub name: String,
    pub role: AdminRole,
    pub public_key: Vec<u8>,
    /// Who added them (none for the first, bootstrapped one).
    pub added_by: Option<String>,
    pub added_at: UnixTime,
}

/// An action waiting for a second administrator's approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub action: ApprovalAction,
    /// The account a reset or revocation is for.
    pub address: Option<Address>,
    pub device: Option<DeviceId>,
    /// The operator an addition or removal is for, and the key to add.
    pub admin_name: Option<String>,
    pub admin_key: Option<Vec<u8>>,
    pub requested_by: String,
    pub requested_at: UnixTime,
    pub expires_at: UnixTime,
    pub approved_by: Option<String>,
    pub approved_at: Option<UnixTime>,
}

/// What the store knew of a device's network sources before a sighting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceHistory {
    /// When it was last seen from this source (None: never).
    pub last_here: Option<UnixTime>,
    /// When it was last seen from any source (None: never).
    pub last_anywhere: Option<UnixTime>,
    /// How many distinct sources it had been seen from.
    pub sources: u64,
}

/// A device waiting for an existing device's approval.
pub struct NewLinkRequest {
    pub code: String,
    pub poll_hash: Vec<u8>,
    pub nonce: Vec<u8>,
    pub source: String,
    pub expires_at: UnixTime,
    pub device: NewDevice,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRequest {
    pub code: String,
    pub device: Device,
    pub nonce: Vec<u8>,
    pub source: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    /// "pending", "approved", "denied" or "expired".
    pub status: String,
}

/// Why an invite could not be redeemed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InviteRejection {
    #[error("unknown invite")]
    Unknown,
    #[error("invite already used")]
    Used,
    #[error("invite expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Invite(#[from] InviteRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct NewDevice {
    pub device_id: DeviceId,
    pub address: Address,
    pub name: String,
    pub signature_key: Vec<u8>,
    pub key_packages: Vec<Vec<u8>>,
    pub last_resort: Vec<u8>,
    /// For an enrollment: the account's first (or post-reset) signed device
    /// list, and its entry for the transparency log.
    pub device_list: Option<(StoredList, LogRecord)>,
}

/// One transparency-log record: the public `leaf` (hashed into the tree and
/// served in the tiles; it names no one) and the full `entry` it commits to
/// (served to this server's signed-in devices only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub leaf: Vec<u8>,
    pub entry: Vec<u8>,
}

/// A stored log entry about one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEntry {
    pub index: u64,
    pub leaf: Vec<u8>,
    /// The full entry; `None` for a leaf from before commitments, which is its own entry.
    pub entry: Option<Vec<u8>>,
}

/// What [`Store::claim_key_packages`] handed out.
#[derive(Debug)]
pub enum Claim {
    Claimed(Vec<Claimed>),
    /// This address has no account: nothing was handed out.
    UnknownAddress(Address),
}

impl Claim {
    /// The packages, for callers that know every address exists.
    pub fn claimed(self) -> Vec<Claimed> {
        match self {
            Claim::Claimed(c) => c,
            Claim::UnknownAddress(_) => Vec::new(),
        }
    }
}

/// A key package handed out by [`Store::claim_key_packages`].
#[derive(Clone, Debug)]
pub struct Claimed {
    pub device: Device,
    pub key_package: Vec<u8>,
    pub last_resort: bool,
}

/// A commit for the delivery service to order and fan out.
pub struct CommitSubmission {
    pub group_id: GroupId,
    pub sender: DeviceId,
    pub base_epoch: u64,
    pub commit: Option<Vec<u8>>,
    pub welcome: Option<Vec<u8>>,
    pub added: Vec<DeviceId>,
    pub removed: Vec<DeviceId>,
    /// The conversation's public MLS state after this commit, as the server
    /// checked it; stored with the epoch it belongs to.
    pub public_state: Option<Vec<u8>>,
    /// For a new conversation: the nonce its id was made from with this
    /// server's domain (`pouch_proto::hub_group_id`), kept to show peers.
    pub hub_nonce: Option<Vec<u8>>,
    /// The most an added device's queue may hold, its Welcome included: a
    /// Welcome to a full queue is refused with the commit (whereas commits to
    /// existing members always pass, or the conversation would be stuck).
    pub max_queued_bytes: u64,
    pub now: UnixTime,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupRejection {
    #[error("stale epoch; the group is at epoch {current}")]
    StaleEpoch { current: u64 },
    #[error("the sending device is not a member of this group")]
    NotMember,
    #[error("no such group")]
    UnknownGroup,
    #[error("a device named in the commit does not exist or is revoked")]
    UnknownDevice,
    #[error("the queue of device {device} is full")]
    QueueFull { device: DeviceId },
    #[error("no finished blob with that id belongs to the sending device")]
    UnknownBlob,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Rejected(#[from] GroupRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A commit the delivery service accepted: the conversation's epoch after it,
/// and the devices whose queues it reached (the ones to wake).
#[derive(Debug)]
pub struct Accepted {
    pub epoch: u64,
    pub queued_for: Vec<DeviceId>,
}

/// An application message handed to the delivery service.
pub struct Message<'a> {
    pub group_id: &'a GroupId,
    pub sender: &'a DeviceId,
    pub epoch: u64,
    pub payload: &'a [u8],
    /// The blob this message refers to (its id is visible anyway, when
    /// recipients download it): kept until no queue item refers to it.
    pub blob: Option<&'a str>,
    /// The most a recipient's queue may hold, this message included.
    pub max_queued_bytes: u64,
    /// The outer copy of the message's classification label, delivered
    /// beside it (the server checked it against the recipients' clearances).
    pub label: Option<&'a str>,
    pub now: UnixTime,
}

/// The server's whole persistent state. Implementations must be safe to use
/// from several server processes at once (PostgreSQL) or one (SQLite).
/// Server-wide settings shared by every node (domain, ciphersuite, the
/// administrator token's hash, the sealed log key).
#[async_trait]
pub trait SettingsStore: Send + Sync + 'static {
    async fn get_setting(&self, key: &str) -> Result<Option<String>>;
    /// Sets the value only if the key is not set yet; returns the stored value.
    async fn init_setting(&self, key: &str, value: &str) -> Result<String>;
    /// Removes a setting (a secret moved elsewhere); true if it was there.
    async fn delete_setting(&self, key: &str) -> Result<bool>;
}

/// Who exists and with which devices: accounts and invites, device lists
/// and link requests, revocation, sign-in challenges and tokens, and the
/// key-package directory.
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    async fn create_user(&self, address: &Address, name: Option<&str>, now: UnixTime)
    -> Result<()>;
    async fn list_users(&self) -> Result<Vec<UserSummary>>;
    async fn user_exists(&self, address: &Address) -> Result<bool>;
    async fn create_invite(
        &self,
        address: &Address,
        secret_hash: &[u8],
        expires_at: UnixTime,
    ) -> Result<()>;
    /// Whether an unused, unexpired invite with this secret hash exists for `address`.
    async fn invite_valid(
        &self,
        address: &Address,
        secret_hash: &[u8],
        now: UnixTime,
    ) -> Result<bool>;
    /// Redeems the invite and registers the device in one transaction.
    async fn enroll(
        &self,
        secret_hash: &[u8],
        device: NewDevice,
        now: UnixTime,
    ) -> std::result::Result<Device, EnrollError>;
    async fn latest_device_list(&self, address: &Address) -> Result<Option<StoredList>>;
    async fn device_list_history(&self, address: &Address) -> Result<Vec<StoredList>>;
    /// Stores `list` (whose version must be the next one: a taken version is
    /// a `Conflict`), appends `log_entry` to the transparency log, approves
    /// the `activate` devices and revokes the `revoke` ones, in one
    /// transaction. Signature checks are the caller's.
    async fn publish_device_list(
        &self,
        address: &Address,
        list: &StoredList,
        log_entry: &LogRecord,
        activate: &[DeviceId],
        revoke: &[DeviceId],
        now: UnixTime,
    ) -> Result<()>;
    async fn create_link_request(&self, request: NewLinkRequest, now: UnixTime) -> Result<()>;
    async fn link_request(&self, code: &str) -> Result<Option<LinkRequest>>;
    async fn link_request_by_poll(&self, poll_hash: &[u8]) -> Result<Option<LinkRequest>>;
    async fn link_request_for_device(&self, device_id: &DeviceId) -> Result<Option<LinkRequest>>;
    /// Moves a pending request to `status`; a refused or expired one also revokes its device.
    /// Returns false when the request was no longer pending.
    async fn finish_link_request(&self, code: &str, status: &str, now: UnixTime) -> Result<bool>;
    /// How many link requests are pending for `address`, and from `source`.
    async fn count_pending_links(&self, address: &Address, source: &str) -> Result<(u64, u64)>;
    /// Pending link requests whose time ran out by `now` (at most `limit`),
    /// for the sweeper that expires them and frees what they hold.
    async fn overdue_links(&self, now: UnixTime, limit: u32) -> Result<Vec<LinkRequest>>;
    /// Revokes a device; with `log_entry`, records the revocation in the
    /// transparency log in the same transaction.
    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: &str,
        log_entry: Option<&LogRecord>,
        now: UnixTime,
    ) -> Result<bool>;
    /// Administrator reset: revokes every device and ends the address's
    /// unused invites; the next enrollment may start a new account key.
    async fn reset_user(&self, address: &Address, now: UnixTime) -> Result<()>;
    async fn reset_at(&self, address: &Address) -> Result<Option<UnixTime>>;
    /// Member devices (not revoked) whose last fresh key material in a group dates from `older_than` or before.
    async fn stale_members(&self, older_than: UnixTime) -> Result<Vec<StaleMember>>;
    async fn device(&self, device_id: &DeviceId) -> Result<Option<Device>>;
    /// Every device the server has for the address, in any state.
    async fn devices_of(&self, address: &Address) -> Result<Vec<Device>>;
    async fn put_challenge(
        &self,
        challenge: &[u8],
        device_id: &DeviceId,
        expires_at: UnixTime,
    ) -> Result<()>;
    /// Removes the challenge and returns its device if it was issued and has not expired.
    async fn take_challenge(&self, challenge: &[u8], now: UnixTime) -> Result<Option<DeviceId>>;
    async fn put_token(
        &self,
        token_hash: &[u8],
        device_id: &DeviceId,
        expires_at: UnixTime,
    ) -> Result<()>;
    async fn token_device(&self, token_hash: &[u8], now: UnixTime) -> Result<Option<DeviceId>>;
    /// Adds `packages` (replacing the device's ordinary packages when
    /// `replace_pool`), and replaces its last-resort package when given.
    async fn add_key_packages(
        &self,
        device_id: &DeviceId,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        replace_pool: bool,
    ) -> Result<()>;
    async fn count_key_packages(&self, device_id: &DeviceId) -> Result<u32>;
    /// One package for every active device of each of `addresses` except
    /// `exclude` (restricted to `only` when it is not empty): an ordinary
    /// one, removed as it is handed out, or else the last-resort one. One
    /// transaction for the whole mail; if an address has no account, nothing
    /// is handed out.
    async fn claim_key_packages(
        &self,
        addresses: &[Address],
        exclude: &DeviceId,
        only: &[DeviceId],
    ) -> Result<Claim>;
}

/// The key-transparency log: its entries and stored hashes, the commitment
/// key, and the signed checkpoint.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Number of entries in the log.
    async fn log_size(&self) -> Result<u64>;
    /// Stored hashes by tlog index; `NotFound` if one is missing.
    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<[u8; 32]>>;
    /// Leaves `from..to` (exact bytes, as hashed into the tree).
    async fn log_entries(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>>;
    /// Every entry about `address`, oldest first.
    async fn log_entries_of(&self, address: &Address) -> Result<Vec<LoggedEntry>>;
    /// Appends the log's commitment-key leaf unless the log has one; returns
    /// its index. A `Conflict` if the log holds a different one (the log's
    /// key was replaced: commitments made under the old one would not open).
    async fn log_commitment_key(&self, leaf: &[u8]) -> Result<u64>;
    /// Appends a security officer's statement about `subject` (see
    /// `pouch_log::OfficerEntry`) as its `version`, which must be the one
    /// after the newest stored: a `Conflict` otherwise (another publisher
    /// came first), and nothing is appended.
    async fn append_officer_statement(
        &self,
        subject: &str,
        version: u64,
        record: &LogRecord,
    ) -> Result<u64>;
    /// The officer's statements about `subject`, oldest first.
    async fn officer_statements(&self, subject: &str) -> Result<Vec<LoggedEntry>>;
    /// The newest signed checkpoint: (tree size, note).
    async fn checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>>;
    /// Stores a checkpoint if it is for a larger tree than the stored one.
    async fn save_checkpoint(&self, size: u64, note: &[u8]) -> Result<bool>;
    /// Replaces the stored checkpoint of this size (the same checkpoint with more cosignatures).
    async fn replace_checkpoint(&self, size: u64, note: &[u8]) -> Result<bool>;
}

/// The audit trail: hash-chained access events, alerts, and the state the
/// detection rules keep as events arrive.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Adds `n` to the counter `name` of the window starting at
    /// `window_start`; returns that window's count after the addition
    /// (atomic: concurrent additions each see their own total).
    async fn count(&self, name: &str, window_start: UnixTime, n: u64) -> Result<u64>;
    /// Adds one to each counter in `names` (repeats count once) for the
    /// window, in one transaction.
    async fn count_each(&self, names: &[String], window_start: UnixTime) -> Result<()>;
    /// The counter `name` summed over the windows starting in `[since, until)`.
    async fn counted(&self, name: &str, since: UnixTime, until: UnixTime) -> Result<u64>;
    /// Deletes counter windows that started before `before`; returns how many.
    async fn prune_counts(&self, before: UnixTime) -> Result<u64>;
    /// Appends events to the hash chain in one transaction, in order;
    /// returns their sequence numbers (consecutive). All or none.
    async fn append_events(&self, bodies: &[pouch_proto::api::EventBody]) -> Result<Vec<u64>>;
    /// Appends one event; returns its sequence number.
    async fn append_event(&self, body: &pouch_proto::api::EventBody) -> Result<u64> {
        let seqs = self.append_events(std::slice::from_ref(body)).await?;
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Backend("no sequence number for an appended event".into()))
    }
    /// Events after `after_seq` (all accounts, or one), oldest first.
    async fn events(
        &self,
        after_seq: u64,
        account: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<pouch_proto::api::Event>>;
    /// The chain's head as recorded: (last sequence number, last hash).
    async fn event_head(&self) -> Result<(u64, String)>;
    /// Events at or after `since` (all accounts, or one), oldest first.
    async fn events_since(
        &self,
        since: UnixTime,
        account: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<pouch_proto::api::Event>>;
    /// How many events the table holds (a deleted row shows here at once).
    async fn event_count(&self) -> Result<u64>;
    /// Where the kept chain starts: (sequence number, hash) of the last
    /// pruned event, or (0, the chain's start) if none was pruned.
    async fn event_anchor(&self) -> Result<(u64, String)>;
    /// Deletes events older than `before` (the retention period), moving the
    /// anchor to the last one deleted, in one transaction. Returns how many.
    async fn prune_events(&self, before: UnixTime) -> Result<u64>;
    async fn add_alert(&self, alert: &pouch_proto::api::Alert) -> Result<u64>;
    /// Alerts after `after_id` (all accounts, or one's — which includes the
    /// critical alerts about the whole server, such as a broken audit chain), oldest first.
    async fn alerts(
        &self,
        after_id: u64,
        account: Option<&Address>,
    ) -> Result<Vec<pouch_proto::api::Alert>>;
    /// Adds `items` to the device's fetch count for the window starting at
    /// `window_start`; returns the window's new total.
    async fn count_fetch(
        &self,
        device_id: &DeviceId,
        window_start: UnixTime,
        items: u64,
    ) -> Result<u64>;
    /// Deletes fetch counts of windows that started before `before` (past
    /// every device's baseline); returns how many.
    async fn prune_fetch_windows(&self, before: UnixTime) -> Result<u64>;
    /// The device's fetch counts per window from `since` on: (window start, items).
    async fn fetch_windows(
        &self,
        device_id: &DeviceId,
        since: UnixTime,
    ) -> Result<Vec<(UnixTime, u64)>>;
    /// Records that the device was seen from `source` at `now`.
    async fn see_source(
        &self,
        device_id: &DeviceId,
        source: &str,
        now: UnixTime,
    ) -> Result<SourceHistory>;
}

/// What waits in every device queue together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub items: u64,
    pub bytes: u64,
    /// When the oldest waiting item was queued (None: nothing waits).
    pub oldest: Option<UnixTime>,
}

/// Delivery: conversations (one commit per epoch), per-device queues, and
/// blobs.
#[async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Accepts the commit if `base_epoch` is the group's epoch (0 creates the
    /// group), then queues the commit for the other current members and the
    /// welcome for the added devices, all in one transaction.
    async fn submit_commit(
        &self,
        submission: CommitSubmission,
    ) -> std::result::Result<Accepted, GroupError>;
    /// Queues an application message for every member but the sender and
    /// returns them. The payload is stored once for all of them. The message
    /// is refused whole when any recipient's queue would hold more than
    /// `max_queued_bytes` (nothing is ever dropped for some members).
    async fn submit_message(
        &self,
        message: &Message<'_>,
    ) -> std::result::Result<Vec<DeviceId>, GroupError>;
    /// As [`Self::submit_message`], at most once per sender and
    /// `submission` id (a device sending again after the answer was lost):
    /// a repeat queues nothing and is answered `None`, whatever the group's
    /// epoch now. Ids are kept until [`Self::forget_submissions`].
    async fn submit_message_once(
        &self,
        message: &Message<'_>,
        submission: &str,
    ) -> std::result::Result<Option<Vec<DeviceId>>, GroupError>;
    /// Forgets submission ids accepted before `before`; returns how many.
    async fn forget_submissions(&self, before: UnixTime) -> Result<u64>;
    /// A group's current epoch and its public MLS state, if the server keeps
    /// one for it (None: no such group).
    async fn group_public_state(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<(u64, Option<Vec<u8>>)>>;
    /// A group's current epoch and member devices (None: no such group).
    async fn group_members(&self, group_id: &GroupId) -> Result<Option<(u64, Vec<DeviceId>)>>;
    /// The accounts whose devices are members of the group (each once,
    /// sorted); `None` for an unknown group. (The server's label check.)
    async fn group_member_addresses(&self, group_id: &GroupId) -> Result<Option<Vec<Address>>>;
    /// The device's queue after `after`, in order: at most `limit` items,
    /// and no more than `max_bytes` of payload (but always the first item),
    /// so one fetch never holds more than that in memory.
    async fn fetch_queue(
        &self,
        device_id: &DeviceId,
        after: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<QueueItem>>;
    /// Deletes every item up to and including `up_to`; returns when each
    /// deleted item was queued (its `received_at`), so the caller can
    /// measure delivery latency; its length is how many.
    async fn ack_queue(&self, device_id: &DeviceId, up_to: u64) -> Result<Vec<UnixTime>>;
    /// Everything waiting in device queues: for the operator's metrics.
    async fn queue_depth(&self) -> Result<QueueDepth>;
    /// The highest queue position the device has acknowledged, ever.
    async fn queue_acked(&self, device_id: &DeviceId) -> Result<u64>;
    /// Whether the device's queue holds anything after `after` (what a
    /// waiting device is woken for).
    async fn queue_pending(&self, device_id: &DeviceId, after: u64) -> Result<bool>;
    /// Deletes blobs nothing refers to any more: sent ones no queue item
    /// refers to, and never-sent ones created before `unsent_before`.
    /// Returns how many.
    async fn collect_blobs(&self, unsent_before: UnixTime) -> Result<u64>;
    /// Deletes up to 1,000 stored queue payloads no queue item refers to
    /// (left by two acknowledgements racing on a multi-node backend and a
    /// crash before the re-check); returns how many. A full scan: run it
    /// seldom (the server does, with its detection sweep).
    async fn collect_orphan_payloads(&self) -> Result<u64>;
    async fn create_blob(&self, blob_id: &str, owner: &DeviceId, now: UnixTime) -> Result<()>;
    /// Stores a chunk of an open blob; refused with `QuotaExceeded` when the
    /// owner's stored blob bytes would pass `max_owned_bytes`.
    async fn put_blob_chunk(
        &self,
        blob_id: &str,
        owner: &DeviceId,
        index: u32,
        data: &[u8],
        max_owned_bytes: u64,
    ) -> Result<()>;
    async fn finish_blob(
        &self,
        blob_id: &str,
        owner: &DeviceId,
        chunks: u32,
        size: u64,
    ) -> Result<()>;
    /// A chunk of a finished blob.
    async fn blob_chunk(&self, blob_id: &str, index: u32) -> Result<Option<Vec<u8>>>;
}

/// Everything the server stores, by area; every backend implements each
/// area (one conformance story per area runs on each backend).
/// Administrators: who they are, their sign-in, and the actions waiting for
/// a second administrator (the two-person rule).
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    /// The first administrator, in one transaction with the consumption of
    /// the one-time setup secret: only if the setting `setup_key` still holds
    /// `setup_hash` and no administrator exists. False otherwise (the secret
    /// was used, or someone was first).
    async fn bootstrap_admin(
        &self,
        admin: &AdminRecord,
        setup_key: &str,
        setup_hash: &str,
    ) -> Result<bool>;
    /// Adds an administrator; `Conflict` if the name was ever taken.
    async fn add_admin(&self, admin: &AdminRecord) -> Result<()>;
    /// Whether the name is or ever was an administrator's (names are never reused).
    async fn admin_name_taken(&self, name: &str) -> Result<bool>;
    /// A current administrator.
    async fn admin(&self, name: &str) -> Result<Option<AdminRecord>>;
    /// Every current administrator, by name.
    async fn list_admins(&self) -> Result<Vec<AdminRecord>>;
    /// Removes an administrator (their tokens stop working); false if there
    /// was none of that name.
    async fn remove_admin(&self, name: &str, now: UnixTime) -> Result<bool>;
    async fn put_admin_challenge(
        &self,
        challenge: &[u8],
        name: &str,
        expires_at: UnixTime,
    ) -> Result<()>;
    /// Removes the challenge and returns whose it was, if unexpired.
    async fn take_admin_challenge(&self, challenge: &[u8], now: UnixTime)
    -> Result<Option<String>>;
    async fn put_admin_token(
        &self,
        token_hash: &[u8],
        name: &str,
        expires_at: UnixTime,
    ) -> Result<()>;
    /// The current administrator an unexpired token belongs to.
    async fn admin_of_token(&self, token_hash: &[u8], now: UnixTime)
    -> Result<Option<AdminRecord>>;
    /// Records a request for approval; `Conflict` if the id is taken.
    async fn create_approval(&self, approval: &Approval) -> Result<()>;
    async fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// Requests not approved and not expired at `now`, oldest first.
    async fn pending_approvals(&self, now: UnixTime) -> Result<Vec<Approval>>;
    /// Marks the request approved by `by` if it is still pending and
    /// unexpired at `now`: true for exactly one caller.
    async fn approve(&self, id: &str, by: &str, now: UnixTime) -> Result<bool>;
}

/// A consistent copy of the whole store, taken while it serves.
#[async_trait]
pub trait BackupStore: Send + Sync + 'static {
    /// Writes a consistent snapshot of everything to `dest` (a new file).
    /// [`StoreError::Unsupported`] where the database has its own tools
    /// (PostgreSQL: `pg_dump`).
    async fn snapshot_into(&self, dest: &std::path::Path) -> Result<()>;
}

/// Conversations across domains: the devices of other domains a hub
/// delivers to, and what a follower received from hubs.
#[async_trait]
pub trait FederationStore: Send + Sync + 'static {
    /// Records devices of `domain`'s accounts (a peer) so that conversations
    /// hosted here can include them. A device known before must be the same
    /// (address, key, domain); an id or key of this server's own devices,
    /// or of another peer's, is [`StoreError::Conflict`] and nothing is
    /// recorded.
    async fn register_remote_devices(
        &self,
        domain: &str,
        devices: &[RemoteDevice],
        now: UnixTime,
    ) -> Result<()>;
    /// The devices of `domain` with items queued here, each with the queue
    /// position that peer acknowledged last.
    async fn remote_queues(&self, domain: &str) -> Result<Vec<(DeviceId, u64)>>;
    /// What waits here for `domain`: items, and when the oldest was queued.
    async fn remote_backlog(&self, domain: &str) -> Result<(u64, Option<UnixTime>)>;
    /// Creates the stand-in device that owns blobs `domain` pushes here
    /// ([`peer_stand_in`]), once.
    async fn ensure_peer_stand_in(&self, domain: &str, now: UnixTime) -> Result<DeviceId>;
    /// A blob's owner and, once finished, its chunks and size.
    async fn blob_state(&self, blob_id: &str) -> Result<Option<BlobState>>;
    /// The nonce a conversation hosted here was begun with (None: unknown
    /// conversation, or one begun without).
    async fn group_hub_nonce(&self, group_id: &GroupId) -> Result<Option<Vec<u8>>>;
    /// The peer that hosts a conversation this server follows.
    async fn group_hub(&self, group_id: &GroupId) -> Result<Option<String>>;
    /// Puts items `origin` forwarded into this server's device queues, in
    /// one transaction, each at most once: an item at or below the position
    /// received before from `origin` for its device is a duplicate; a
    /// Welcome into a conversation neither hosted nor followed here, whose
    /// id is `origin`'s by its nonce, starts following it with `origin` as
    /// its hub; any other item must be for a
    /// conversation `origin` hosts. One outcome per item, in order; after a
    /// [`ForwardedOutcome::QueueFull`] that device's later items are not
    /// taken either (they wait at the peer). Refused items count as
    /// received (the peer drops them).
    async fn receive_forwarded(
        &self,
        origin: &str,
        items: &[Forwarded],
        max_queued_bytes: u64,
        now: UnixTime,
    ) -> Result<Vec<ForwardedOutcome>>;
}

pub trait Store:
    SettingsStore
    + DirectoryStore
    + LogStore
    + AuditStore
    + MailStore
    + AdminStore
    + BackupStore
    + FederationStore
{
}

impl<
    T: SettingsStore
        + DirectoryStore
        + LogStore
        + AuditStore
        + MailStore
        + AdminStore
        + BackupStore
        + FederationStore,
> Store for T
{
}

/// Helpers shared by the backends so that both apply the same rules.
pub mod rules {
    use super::QueueKind;
    /// Parses a stored queue kind; storage only ever writes the three names.
    pub fn queue_kind(s: &str) -> super::Result<QueueKind> {
        QueueKind::parse(s)
            .ok_or_else(|| super::StoreError::Backend(format!("unknown queue kind {s}")))
    }
}
