//! The device's local state: one SQLCipher database holding the OpenMLS
//! state (through `openmls_sqlite_storage`), the mail store and settings.
//!
//! The whole file is encrypted with a 256-bit key derived from the user's
//! passphrase with Argon2id; the only other file, `kdf.json`, holds the salt
//! and parameters. A copy of the directory reveals no mail and no key.
//! Every sync step is one SQL transaction, so a crash loses nothing and shows
//! nothing twice.

use crate::error::{ClientError, Result};
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use pouch_mls::MlsGroup;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use zeroize::Zeroizing;

pub const DB_FILE: &str = "device.db";
pub const KDF_FILE: &str = "kdf.json";

/// Bounds on Argon2id parameters read from a file (16 times, 20 times and
/// 16 times what Pouch writes today: room to raise them later).
const MAX_KDF_MEMORY_KIB: u32 = 1 << 20;
const MAX_KDF_ITERATIONS: u32 = 64;
const MAX_KDF_PARALLELISM: u32 = 16;

/// Argon2id parameters, stored beside the database so they can be raised later.
#[derive(Serialize, Deserialize)]
pub(crate) struct KdfParams {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

impl KdfParams {
    pub(crate) fn fresh() -> Self {
        let salt: [u8; 16] = rand::random();
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: hex::encode(salt),
        }
    }

    pub(crate) fn derive(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>> {
        // The parameters come from a file: bounded, so an edited file
        // cannot make opening it take gigabytes or hours.
        if self.memory_kib > MAX_KDF_MEMORY_KIB
            || self.iterations > MAX_KDF_ITERATIONS
            || self.parallelism > MAX_KDF_PARALLELISM
        {
            return Err(ClientError::Local(format!(
                "the key-derivation parameters are beyond what Pouch writes ({} KiB, {} passes, {} lanes at most): the key file was edited",
                MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS, MAX_KDF_PARALLELISM
            )));
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| ClientError::Local(format!("bad key-derivation parameters: {e}")))?;
        let salt =
            hex::decode(&self.salt).map_err(|_| ClientError::Local("damaged kdf.json".into()))?;
        let mut key = Zeroizing::new([0u8; 32]);
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, key.as_mut())
            .map_err(|e| ClientError::Local(format!("key derivation failed: {e}")))?;
        Ok(key)
    }
}

/// How OpenMLS state is stored: MessagePack with field names, behind a
/// one-byte tag. Self-describing, so it survives OpenMLS upgrades that add
/// or reorder fields (as JSON did); binary, because OpenMLS serialises its
/// byte strings as sequences of numbers, and parsing them back from JSON
/// text was a fifth of a busy receiver's time (the ratchet tree is read
/// for every message). State written before the tag existed is JSON and is
/// still read; it is rewritten in this form the next time OpenMLS stores it.
#[derive(Default)]
pub struct StateCodec;

/// The first byte of a value in [`StateCodec`]'s binary form. No JSON text
/// starts with it, which is what tells the two forms apart.
const STATE_MSGPACK: u8 = 0x01;

/// The first byte of a stored value (never a key) in the binary form with
/// byte strings as MessagePack `bin`: a 1.2 KiB X-Wing key is then 1.2 KiB
/// and one copy, not up to 2.4 KiB of one-number-per-byte written a number
/// at a time (encoding was 5 % of a joining device's time, and the bytes
/// went on through SQLCipher and the WAL). It decodes with the same reader:
/// MessagePack's reader gives a `bin` to a type that asks for a sequence.
/// Keys keep [`STATE_MSGPACK`]: OpenMLS looks them up by their bytes.
const STATE_MSGPACK_BYTES: u8 = 0x02;

/// Why OpenMLS state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateCodecError {
    #[error("cannot encode state: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode state: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot decode state written as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Codec for StateCodec {
    type Error = StateCodecError;
    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![STATE_MSGPACK];
        value.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())?;
        Ok(out)
    }
    fn entity_to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![STATE_MSGPACK_BYTES];
        value.serialize(
            &mut rmp_serde::Serializer::new(&mut out)
                .with_struct_map()
                .with_bytes(rmp_serde::config::BytesMode::ForceIterables),
        )?;
        Ok(out)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&(STATE_MSGPACK | STATE_MSGPACK_BYTES), rest)) => {
                Ok(rmp_serde::from_slice(rest)?)
            }
            _ => Ok(serde_json::from_slice(slice)?),
        }
    }
}

/// The tables OpenMLS's storage keeps (openmls_sqlite_storage's migrations).
const OPENMLS_TABLES: &[&str] = &[
    "openmls_encryption_keys",
    "openmls_epoch_keys_pairs",
    "openmls_group_data",
    "openmls_key_packages",
    "openmls_own_leaf_nodes",
    "openmls_proposals",
    "openmls_psks",
    "openmls_signature_keys",
    "vc_emulation_group_secrets",
    "vc_emulation_bindings",
    "vc_operation_trees",
    "vc_retained_key_package_material",
];

/// Client schema step 3: rewrites OpenMLS state from JSON into
/// [`StateCodec`]'s binary form, keys as well as values — keys are looked
/// up by their encoded bytes, so a key left in JSON would no longer be
/// found. The JSON is transcoded without knowing its Rust type; for the
/// shapes OpenMLS stores (structs, sequences of numbers, enums, options)
/// that gives the same bytes as encoding the value itself, which
/// `group_state_written_as_json_by_an_earlier_release_still_opens` checks
/// on every kind of key a conversation uses. A value that is not JSON is
/// left as it is.
pub(crate) fn state_to_binary(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    for table in OPENMLS_TABLES {
        for column in &columns_of(tx, table)? {
            let rows: Vec<(i64, Vec<u8>)> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT rowid, \"{column}\" FROM \"{table}\" WHERE typeof(\"{column}\") = 'blob'"
                ))?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut update = tx.prepare(&format!(
                "UPDATE \"{table}\" SET \"{column}\" = ?1 WHERE rowid = ?2"
            ))?;
            for (rowid, json) in rows {
                if let Some(binary) = json_state_to_binary(&json) {
                    update.execute(params![binary, rowid])?;
                }
            }
        }
    }
    Ok(())
}

/// The columns of `table` (none when it does not exist).
fn columns_of(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    stmt.query_map([table], |r| r.get(0))?.collect()
}

/// One value of OpenMLS state from JSON into [`StateCodec`]'s form; `None`
/// when it is not JSON (already binary, or not state at all).
fn json_state_to_binary(json: &[u8]) -> Option<Vec<u8>> {
    if matches!(json.first(), Some(&(STATE_MSGPACK | STATE_MSGPACK_BYTES))) {
        return None;
    }
    let mut out = vec![STATE_MSGPACK];
    let mut from = serde_json::Deserializer::from_slice(json);
    serde_transcode::transcode(
        &mut from,
        &mut rmp_serde::Serializer::new(&mut out).with_struct_map(),
    )
    .ok()?;
    from.end().ok()?;
    Some(out)
}

/// OpenMLS's view of the device: libcrux cryptography, storage in our
/// database in the codec `C` ([`StateCodec`]; its tests also write the JSON
/// an earlier release wrote).
pub struct CodecProvider<C: Codec> {
    crypto: pouch_mls::crypto::Crypto,
    storage: SqliteStorageProvider<C, Rc<Connection>>,
}

/// The device's OpenMLS provider.
pub type Provider = CodecProvider<StateCodec>;

impl<C: Codec> CodecProvider<C> {
    fn over(conn: Rc<Connection>) -> Result<Self> {
        Ok(Self {
            crypto: pouch_mls::crypto::Crypto::new()
                .map_err(|e| ClientError::Local(format!("crypto provider unavailable: {e:?}")))?,
            storage: SqliteStorageProvider::new(conn),
        })
    }
}

impl<C: Codec> OpenMlsProvider for CodecProvider<C> {
    type CryptoProvider = pouch_mls::crypto::Crypto;
    type RandProvider = openmls_libcrux_crypto::CryptoProvider;
    type StorageProvider = SqliteStorageProvider<C, Rc<Connection>>;
    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.crypto.rand()
    }
}

pub struct LocalStore {
    pub conn: Rc<Connection>,
    pub provider: Provider,
    pub home: PathBuf,
    groups: std::cell::RefCell<GroupCache>,
    /// The store's key, for the outbox's database beside it.
    key: Zeroizing<[u8; 32]>,
    /// Whether a batch is open ([`Self::begin_batch`]): transactions are
    /// then savepoints inside it.
    batch: std::cell::Cell<bool>,
    /// The label policy and own clearance as last read for receipts.
    pub(crate) receipt_cache: crate::labels::ReceiptCache,
}

/// Conversations' MLS state kept in memory between operations, so that each
/// mail does not parse its conversation's whole ratchet tree again
/// (`MlsGroup::load` was a quarter of a receiving device's CPU).
///
/// It holds only what equals the store: a group is taken out while it is
/// used ([`LocalStore::group`]), and put back ([`LocalStore::keep_group`])
/// only after a success; inside a transaction, only once that transaction
/// commits (a rollback restores the store, not a group in memory). Another
/// process writing to this home (a `pouch send` beside a bridge) changes
/// SQLite's `data_version`, and then everything held is dropped.
#[derive(Default)]
struct GroupCache {
    /// `data_version` when the groups held were last known to be current.
    version: Option<i64>,
    held: std::collections::HashMap<Vec<u8>, MlsGroup>,
    /// Kept during the open transaction: held once it commits.
    pending: Vec<MlsGroup>,
}

impl GroupCache {
    /// Groups held at most (a conversation's state is some tens of KiB).
    const MAX: usize = 128;

    fn hold(&mut self, group: MlsGroup) {
        if self.held.len() >= Self::MAX {
            self.held.clear();
        }
        self.held.insert(pouch_mls::group_id_bytes(&group), group);
    }
}

pub(crate) fn open_connection(path: &Path, key: &[u8; 32]) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // A raw key (x'..') skips SQLCipher's own PBKDF2: Argon2id already did that work.
    let hex_key = Zeroizing::new(format!("x'{}'", hex::encode(key)));
    conn.pragma_update(None, "key", hex_key.as_str())?;
    // SQLCipher would report a wrong key on stderr by itself (its logging
    // starts with the key); Pouch says it once, in its own words.
    let _ = conn.pragma_update(None, "cipher_log_level", "NONE");
    // Another process using this home (a bridge beside a `pouch send`)
    // holds the write lock for one transaction at a time: wait for it.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Room for every statement of the receiving path (rusqlite keeps 16)
    // and OpenMLS's storage (about 40 of its own, cached since our patch).
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl LocalStore {
    pub fn exists(home: &Path) -> bool {
        home.join(DB_FILE).exists()
    }

    /// Creates a new, empty encrypted store.
    pub fn create(home: &Path, passphrase: &str) -> Result<Self> {
        Self::create_at_schema(home, passphrase, crate::migrations::current())
    }

    /// A new store at schema `version`: the current one, or an older one
    /// for the migration tests to make a store as an earlier release wrote it.
    pub(crate) fn create_at_schema(home: &Path, passphrase: &str, version: u32) -> Result<Self> {
        if Self::exists(home) {
            return Err(ClientError::AlreadyEnrolled(home.display().to_string()));
        }
        std::fs::create_dir_all(home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
        }
        let params = KdfParams::fresh();
        std::fs::write(
            home.join(KDF_FILE),
            serde_json::to_vec_pretty(&params).expect("serialises"),
        )?;
        let key = params.derive(passphrase)?;
        Self::finish_open_at(home, &key, version)
    }

    /// Opens an existing store; a wrong passphrase is reported as such.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self> {
        if !Self::exists(home) {
            return Err(ClientError::NotEnrolled(home.display().to_string()));
        }
        let params: KdfParams = serde_json::from_slice(&std::fs::read(home.join(KDF_FILE))?)
            .map_err(|_| {
                ClientError::Local(format!("{} is damaged", home.join(KDF_FILE).display()))
            })?;
        let key = params.derive(passphrase)?;
        Self::finish_open(home, &key)
    }

    fn finish_open(home: &Path, key: &[u8; 32]) -> Result<Self> {
        Self::finish_open_at(home, key, crate::migrations::current())
    }

    fn finish_open_at(home: &Path, key: &[u8; 32], schema: u32) -> Result<Self> {
        let mut conn = open_connection(&home.join(DB_FILE), key)?;
        // The first read is where SQLCipher finds out whether the key is right.
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::NotADatabase =>
            {
                return Err(ClientError::WrongPassphrase(home.display().to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        crate::migrations::migrate_to(&mut conn, schema)?;
        let conn = Rc::new(conn);
        // run_migrations needs the connection mutably; do it on a short-lived second handle.
        {
            let mut migrations_conn = open_connection(&home.join(DB_FILE), key)?;
            let mut migrator =
                SqliteStorageProvider::<StateCodec, &mut Connection>::new(&mut migrations_conn);
            migrator.run_migrations().map_err(|e| {
                ClientError::Local(format!("OpenMLS storage migration failed: {e}"))
            })?;
        }
        Ok(LocalStore {
            provider: Provider::over(conn.clone())?,
            conn,
            home: home.to_path_buf(),
            groups: Default::default(),
            receipt_cache: Default::default(),
            key: Zeroizing::new(*key),
            batch: Default::default(),
        })
    }

    /// The outbox beside this store, under the same key.
    pub(crate) fn open_outbox(&self) -> Result<crate::outbox::Outbox> {
        crate::outbox::Outbox::open(&self.home, &self.key)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    pub fn require_meta(&self, key: &str) -> Result<String> {
        self.meta(key)?.ok_or_else(|| {
            ClientError::Local(format!("device state lacks '{key}'; re-enroll this device"))
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Runs `f` in one transaction: all of it is stored, or none of it.
    pub fn atomically<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.atomically_unless(f, |_| false)
    }

    /// Lets transactions commit without waiting for the disk until the
    /// returned guard's [`Deferred::barrier`] (or its drop) makes them
    /// durable together. Each transaction stays atomic (WAL: a power loss
    /// keeps or loses it whole); what a power loss can undo is only what
    /// came after the last barrier — so a receiver acknowledges a page of
    /// queue items to the server only after its barrier, and pays one fsync
    /// per page instead of one per item.
    pub fn defer_durability(&self) -> Result<Deferred> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Deferred {
            conn: self.conn.clone(),
            mail_dir: self.mail_dir(),
        })
    }

    /// SQLite's `data_version`: it changes when another connection (another
    /// process using this home) commits, never for this one's own commits.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// As [`Self::atomically`], but rolls back a successful `f` whose result
    /// satisfies `discard` (a look that must leave no trace).
    pub fn atomically_unless<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T>,
        discard: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        // Cached statements: parsing these three was a tenth of the SQL
        // parsing a receiving device did.
        let run = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
        };
        if self.batch.get() {
            if self.conn.is_autocommit() {
                // SQLite rolled the batch's transaction back on its own (a
                // full disk, an I/O error): what it held is gone, and a
                // savepoint now would be a transaction of its own.
                self.batch.set(false);
                self.groups.borrow_mut().pending.clear();
                return Err(ClientError::Local(
                    "the store rolled back a batch of received mail; it is fetched again".into(),
                ));
            }
            // Inside a batch: a savepoint, released into the batch's
            // transaction or rolled back on its own. (Groups kept in the
            // batch are let go on a rollback: simpler than knowing which.)
            run("SAVEPOINT item")?;
            let release = |rollback: bool| -> rusqlite::Result<()> {
                if rollback {
                    run("ROLLBACK TO item")?;
                    self.groups.borrow_mut().pending.clear();
                }
                run("RELEASE item").map(|_| ())
            };
            return match f(self) {
                Ok(v) => {
                    release(discard(&v))?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = release(true);
                    Err(e)
                }
            };
        }
        run("BEGIN IMMEDIATE")?;
        let outcome = match f(self) {
            Ok(v) if discard(&v) => run("ROLLBACK").map(|_| (v, false)),
            Ok(v) => run("COMMIT").map(|_| (v, true)),
            Err(e) => {
                let _ = run("ROLLBACK");
                self.groups.borrow_mut().pending.clear();
                return Err(e);
            }
        };
        let mut groups = self.groups.borrow_mut();
        let pending = std::mem::take(&mut groups.pending);
        match outcome {
            Ok((v, committed)) => {
                if committed {
                    for g in pending {
                        groups.hold(g);
                    }
                }
                Ok(v)
            }
            // A failed COMMIT (busy, full disk) may leave the transaction
            // open: end it, or every later BEGIN fails. Nothing is kept.
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e.into())
            }
        }
    }

    /// Opens a batch: the transactions that follow ([`Self::atomically`])
    /// become savepoints of one transaction, committed by
    /// [`Self::end_batch`] — one commit (SQLCipher encrypting and writing
    /// each dirty page once) for a page of received items instead of one
    /// per item, which was a quarter of a receiving device's CPU. Each item
    /// stays atomic on its own. Network waits must not happen inside a
    /// batch (they would hold the store's write lock): end it before them.
    pub fn begin_batch(&self) -> Result<()> {
        if !self.batch.get() {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.batch.set(true);
        }
        Ok(())
    }

    /// Commits the batch (what each item did, or did not, as its savepoint
    /// said) and closes it.
    pub fn end_batch(&self) -> Result<()> {
        if !self.batch.replace(false) {
            return Ok(());
        }
        let committed = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        let mut groups = self.groups.borrow_mut();
        let pending = std::mem::take(&mut groups.pending);
        match committed {
            Ok(_) => {
                for g in pending {
                    groups.hold(g);
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// A conversation's MLS state: the one held in memory if it is still
    /// current, else read from the store. It is taken out of the cache: give
    /// it back with [`Self::keep_group`] once it was used successfully.
    pub fn group(&self, group_id: &[u8]) -> Result<MlsGroup> {
        let version = self.data_version()?;
        {
            let mut groups = self.groups.borrow_mut();
            if groups.version != Some(version) {
                groups.held.clear();
                groups.version = Some(version);
            }
            if let Some(g) = groups.held.remove(group_id) {
                return Ok(g);
            }
            // Kept earlier in the open batch (a Welcome, then its first mail).
            if let Some(i) = groups
                .pending
                .iter()
                .position(|g| pouch_mls::group_id_bytes(g) == group_id)
            {
                return Ok(groups.pending.swap_remove(i));
            }
        }
        Ok(pouch_mls::load_group(&self.provider, group_id)?)
    }

    /// Gives a group back after a successful use (its state is what the
    /// store holds, or will hold once the open transaction commits).
    pub fn keep_group(&self, group: MlsGroup) {
        let mut groups = self.groups.borrow_mut();
        if self.conn.is_autocommit() {
            groups.hold(group);
        } else {
            groups.pending.push(group);
        }
    }
}

/// Transactions committed but not yet forced to disk ([`LocalStore::defer_durability`]).
pub struct Deferred {
    conn: Rc<Connection>,
    /// Where large mails are kept as files: their directory entries must be
    /// on disk before the rows that name them are acknowledged.
    mail_dir: PathBuf,
}

impl Deferred {
    /// Everything committed so far is on disk when this returns: one
    /// transaction committed with `synchronous = FULL` syncs the WAL, and
    /// with it every frame the earlier commits wrote. Call it between
    /// transactions.
    pub fn barrier(&self) -> Result<()> {
        // Mail files are synced as they are written; their names in the
        // directory are synced here, once per page.
        if let Ok(dir) = std::fs::File::open(&self.mail_dir) {
            dir.sync_all()?;
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let synced = self.sync_now();
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        synced
    }

    fn sync_now(&self) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('durable_at', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![crate::now().to_string()],
        )?;
        Ok(())
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // Back to a disk wait per commit, and what was deferred is forced now
        // (unless a transaction is still open: its commit will do it).
        if self.conn.pragma_update(None, "synchronous", "FULL").is_ok() && self.conn.is_autocommit()
        {
            let _ = self.sync_now();
        }
    }
}

/// A large mail kept as an encrypted file under `HOME/mail/`, with its own
/// random key (stored in the encrypted database, never beside the file).
#[derive(Clone, Debug)]
pub struct MailFile {
    pub name: String,
    pub key: Zeroizing<Vec<u8>>,
    pub size: u64,
}

/// Writes a mail file chunk by chunk: memory use is one chunk.
pub struct MailFileWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    cipher: crate::blob::ChunkCipher,
    meta: MailFile,
    buf: Vec<u8>,
    index: u32,
    emitted: u64,
}

const FILE_CHUNK: usize = pouch_proto::envelope::BLOB_CHUNK_SIZE;

impl MailFileWriter {
    fn emit(&mut self) -> std::io::Result<()> {
        let last = self.emitted + self.buf.len() as u64 >= self.meta.size;
        let sealed = self.cipher.seal(self.index, last, &self.buf);
        use std::io::Write;
        self.file.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.file.write_all(&sealed)?;
        self.emitted += self.buf.len() as u64;
        self.index += 1;
        self.buf.clear();
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Flushes the last chunk and makes the file durable.
    pub fn finish(mut self) -> Result<MailFile> {
        if self.emitted + self.buf.len() as u64 != self.meta.size {
            let _ = std::fs::remove_file(&self.path);
            return Err(ClientError::Invalid(
                "mail size differs from what was announced".into(),
            ));
        }
        if !self.buf.is_empty() || self.index == 0 {
            self.emit()?;
        }
        use std::io::Write;
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        Ok(self.meta)
    }
}

impl std::io::Write for MailFileWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(FILE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FILE_CHUNK {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LocalStore {
    fn mail_dir(&self) -> PathBuf {
        self.home.join("mail")
    }

    /// Starts a new encrypted mail file for `size` plaintext bytes.
    pub fn new_mail_file(&self, size: u64) -> Result<MailFileWriter> {
        std::fs::create_dir_all(self.mail_dir())?;
        let name = format!("{}.msg", hex::encode(rand::random::<[u8; 16]>()));
        let key = Zeroizing::new(rand::random::<[u8; 32]>().to_vec());
        let path = self.mail_dir().join(&name);
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        Ok(MailFileWriter {
            file,
            path,
            cipher: crate::blob::ChunkCipher::new(&key, &name)?,
            meta: MailFile { name, key, size },
            buf: Vec::with_capacity(FILE_CHUNK),
            index: 0,
            emitted: 0,
        })
    }

    /// Mail files on disk that no stored message refers to.
    pub fn orphan_mail_files(&self, kept: &[String]) -> Result<Vec<String>> {
        let Ok(entries) = std::fs::read_dir(self.mail_dir()) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| !kept.contains(n))
            .collect())
    }

    pub fn remove_mail_file(&self, name: &str) {
        let _ = std::fs::remove_file(self.mail_dir().join(name));
    }

    /// Decrypts a mail file into `out`, stopping after `limit` bytes if given.
    pub fn read_mail_file(
        &self,
        f: &MailFile,
        out: &mut dyn std::io::Write,
        limit: Option<u64>,
    ) -> Result<()> {
        use std::io::Read;
        let cipher = crate::blob::ChunkCipher::new(&f.key, &f.name)?;
        let mut file = std::io::BufReader::new(std::fs::File::open(self.mail_dir().join(&f.name))?);
        let chunks = f.size.div_ceil(FILE_CHUNK as u64).max(1) as u32;
        let mut written = 0u64;
        for index in 0..chunks {
            let mut len = [0u8; 4];
            file.read_exact(&mut len)?;
            let mut sealed = vec![0u8; u32::from_be_bytes(len) as usize];
            file.read_exact(&mut sealed)?;
            let plain = cipher.open(index, index + 1 == chunks, &sealed)?;
            let take = match limit {
                Some(l) => (l - written).min(plain.len() as u64) as usize,
                None => plain.len(),
            };
            out.write_all(&plain[..take])?;
            written += take as u64;
            if limit.is_some_and(|l| written >= l) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &LocalStore) -> i64 {
        store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    /// Alice's and Bob's device stores in a fresh scratch directory.
    struct TwoStores {
        scratch: PathBuf,
        suite: pouch_mls::Ciphersuite,
        alice: pouch_proto::Address,
        bob: pouch_proto::Address,
        alice_store: LocalStore,
        bob_store: LocalStore,
    }

    fn two_stores(tag: &str) -> TwoStores {
        let scratch = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        TwoStores {
            suite: pouch_mls::ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE).unwrap(),
            alice: pouch_proto::Address::parse("alice@mfa.test").unwrap(),
            bob: pouch_proto::Address::parse("bob@mfa.test").unwrap(),
            alice_store: LocalStore::create(&scratch.join("alice"), "correct horse").unwrap(),
            bob_store: LocalStore::create(&scratch.join("bob"), "battery staple").unwrap(),
            scratch,
        }
    }

    /// OpenMLS state as the releases before [`StateCodec`] wrote it.
    #[derive(Default)]
    struct EarlierJson;

    impl Codec for EarlierJson {
        type Error = serde_json::Error;
        fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
            serde_json::to_vec(value)
        }
        fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
            serde_json::from_slice(slice)
        }
    }

    /// First bytes of every stored group-state value.
    fn group_state_starts(store: &LocalStore) -> Vec<u8> {
        let mut stmt = store
            .conn
            .prepare("SELECT group_data FROM openmls_group_data")
            .unwrap();
        stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|v| v.unwrap()[0])
            .collect()
    }

    /// First bytes of every value (keys too) in every OpenMLS table.
    fn stored_state_starts(store: &LocalStore) -> Vec<u8> {
        let mut firsts = Vec::new();
        for table in OPENMLS_TABLES {
            for column in columns_of(&store.conn, table).unwrap() {
                let mut stmt = store
                    .conn
                    .prepare(&format!(
                        "SELECT \"{column}\" FROM \"{table}\" WHERE typeof(\"{column}\") = 'blob'"
                    ))
                    .unwrap();
                firsts.extend(
                    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
                        .unwrap()
                        .map(|v| v.unwrap()[0]),
                );
            }
        }
        firsts
    }

    /// A device enrolled by an earlier release keeps its conversations and
    /// its unused key packages: after the schema step that moves OpenMLS
    /// state into the binary form, every kind of key is still found — the
    /// group (group id), its epoch secrets, the leaf's encryption key (a
    /// commit is processed), a key package (a Welcome is joined) and the
    /// device's signature key — and nothing is left in JSON.
    #[test]
    fn group_state_written_as_json_by_an_earlier_release_still_opens() {
        let TwoStores {
            scratch,
            suite,
            alice,
            bob,
            alice_store,
            bob_store,
        } = two_stores("pouch-state-codec");
        let earlier = CodecProvider::<EarlierJson>::over(bob_store.conn.clone()).unwrap();
        let alice_signer = pouch_mls::new_device_signer(&alice_store.provider).unwrap();
        let validated = |package: &[u8], key: &[u8]| {
            pouch_mls::validate_key_package(
                &alice_store.provider,
                suite,
                &pouch_mls::ClaimedPackage {
                    bytes: package,
                    address: &bob,
                    signature_key: key,
                },
            )
            .unwrap()
        };

        // Bob's device as the earlier release ran it: two key packages,
        // one used to join a conversation, all in JSON.
        let bob_signer = pouch_mls::new_device_signer(&earlier).unwrap();
        let bob_key = bob_signer.to_public_vec();
        let mut packages =
            pouch_mls::key_packages(&earlier, suite, &bob_signer, &bob, 2, false).unwrap();
        let (mut group, out) = pouch_mls::create_conversation(
            &alice_store.provider,
            suite,
            &alice_signer,
            &alice,
            &rand::random::<[u8; 32]>(),
            &[validated(&packages.remove(0), &bob_key)],
        )
        .unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut group).unwrap();
        let (joined, _) = pouch_mls::join(&earlier, &out.welcome.unwrap()).unwrap();
        let group_id = pouch_mls::group_id_bytes(&joined);
        let starts = group_state_starts(&bob_store);
        assert!(!starts.is_empty());
        assert!(!starts.contains(&STATE_MSGPACK), "{starts:?}");

        // The schema step.
        let tx = bob_store.conn.unchecked_transaction().unwrap();
        state_to_binary(&tx).unwrap();
        tx.commit().unwrap();
        let firsts = stored_state_starts(&bob_store);
        assert!(firsts.len() > 10, "{firsts:?}");
        assert!(firsts.iter().all(|b| *b == STATE_MSGPACK), "{firsts:?}");
        assert!(
            group_state_starts(&bob_store)
                .iter()
                .all(|b| *b == STATE_MSGPACK)
        );

        // A message, then a commit (the leaf's new encryption key).
        let sealed = pouch_mls::seal(
            &alice_store.provider,
            &alice_signer,
            &mut group,
            b"dispatch 7",
        )
        .unwrap();
        let mut reopened = pouch_mls::load_group(&bob_store.provider, &group_id).unwrap();
        match pouch_mls::open(&bob_store.provider, &mut reopened, &sealed).unwrap() {
            pouch_mls::Opened::Application {
                payload, sender, ..
            } => {
                assert_eq!(payload, b"dispatch 7");
                assert_eq!(sender, alice);
            }
            _ => panic!("expected an application message"),
        }
        let update =
            pouch_mls::self_update(&alice_store.provider, &alice_signer, &mut group).unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut group).unwrap();
        assert!(matches!(
            pouch_mls::open(&bob_store.provider, &mut reopened, &update.commit).unwrap(),
            pouch_mls::Opened::Commit { .. }
        ));
        let sealed = pouch_mls::seal(
            &alice_store.provider,
            &alice_signer,
            &mut group,
            b"dispatch 8",
        )
        .unwrap();
        let mut again = pouch_mls::load_group(&bob_store.provider, &group_id).unwrap();
        assert_eq!(pouch_mls::epoch(&again), pouch_mls::epoch(&group));
        assert!(matches!(
            pouch_mls::open(&bob_store.provider, &mut again, &sealed).unwrap(),
            pouch_mls::Opened::Application { payload, .. } if payload == b"dispatch 8"
        ));

        // The key package made before the step joins a new conversation,
        // and the device key signs as before.
        let (mut second, out) = pouch_mls::create_conversation(
            &alice_store.provider,
            suite,
            &alice_signer,
            &alice,
            &rand::random::<[u8; 32]>(),
            &[validated(&packages.remove(0), &bob_key)],
        )
        .unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut second).unwrap();
        pouch_mls::join(&bob_store.provider, &out.welcome.unwrap()).unwrap();
        let loaded = pouch_mls::load_device_signer(&bob_store.provider, &bob_key).unwrap();
        assert_eq!(loaded.to_public_vec(), bob_key);
        assert!(
            stored_state_starts(&bob_store)
                .iter()
                .all(|b| matches!(*b, STATE_MSGPACK | STATE_MSGPACK_BYTES))
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// The binary form before byte strings became `bin`: every value
    /// MessagePack with one number per byte (tag [`STATE_MSGPACK`]).
    #[derive(Default)]
    struct EarlierMsgpack;

    impl Codec for EarlierMsgpack {
        type Error = StateCodecError;
        fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
            StateCodec::to_vec(value)
        }
        fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
            StateCodec::from_slice(slice)
        }
    }

    /// A device whose state the previous release wrote (byte strings as
    /// sequences of numbers) keeps its conversation, its key packages and
    /// its signature key; what is stored afterwards is in the `bin` form,
    /// and keys never change form (they are looked up by their bytes).
    #[test]
    fn group_state_written_before_byte_strings_became_bin_still_opens() {
        let TwoStores {
            scratch,
            suite,
            alice,
            bob,
            alice_store,
            bob_store,
        } = two_stores("pouch-state-bin");
        let earlier = CodecProvider::<EarlierMsgpack>::over(bob_store.conn.clone()).unwrap();
        let alice_signer = pouch_mls::new_device_signer(&alice_store.provider).unwrap();
        let bob_signer = pouch_mls::new_device_signer(&earlier).unwrap();
        let bob_key = bob_signer.to_public_vec();
        let validated = |package: &[u8]| {
            pouch_mls::validate_key_package(
                &alice_store.provider,
                suite,
                &pouch_mls::ClaimedPackage {
                    bytes: package,
                    address: &bob,
                    signature_key: &bob_key,
                },
            )
            .unwrap()
        };
        let mut packages =
            pouch_mls::key_packages(&earlier, suite, &bob_signer, &bob, 2, false).unwrap();
        let (mut group, out) = pouch_mls::create_conversation(
            &alice_store.provider,
            suite,
            &alice_signer,
            &alice,
            &rand::random::<[u8; 32]>(),
            &[validated(&packages.remove(0))],
        )
        .unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut group).unwrap();
        let (joined, _) = pouch_mls::join(&earlier, &out.welcome.unwrap()).unwrap();
        let group_id = pouch_mls::group_id_bytes(&joined);
        assert!(
            stored_state_starts(&bob_store)
                .iter()
                .all(|b| *b == STATE_MSGPACK)
        );

        // Today's codec: a message, a commit, another message.
        let mut reopened = pouch_mls::load_group(&bob_store.provider, &group_id).unwrap();
        let sealed =
            pouch_mls::seal(&alice_store.provider, &alice_signer, &mut group, b"one").unwrap();
        assert!(matches!(
            pouch_mls::open(&bob_store.provider, &mut reopened, &sealed).unwrap(),
            pouch_mls::Opened::Application { payload, .. } if payload == b"one"
        ));
        let update =
            pouch_mls::self_update(&alice_store.provider, &alice_signer, &mut group).unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut group).unwrap();
        pouch_mls::open(&bob_store.provider, &mut reopened, &update.commit).unwrap();
        let sealed =
            pouch_mls::seal(&alice_store.provider, &alice_signer, &mut group, b"two").unwrap();
        let mut again = pouch_mls::load_group(&bob_store.provider, &group_id).unwrap();
        assert!(matches!(
            pouch_mls::open(&bob_store.provider, &mut again, &sealed).unwrap(),
            pouch_mls::Opened::Application { payload, .. } if payload == b"two"
        ));
        assert!(group_state_starts(&bob_store).contains(&STATE_MSGPACK_BYTES));

        // The key package the previous form stored joins; the key signs.
        let (mut second, out) = pouch_mls::create_conversation(
            &alice_store.provider,
            suite,
            &alice_signer,
            &alice,
            &rand::random::<[u8; 32]>(),
            &[validated(&packages.remove(0))],
        )
        .unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut second).unwrap();
        pouch_mls::join(&bob_store.provider, &out.welcome.unwrap()).unwrap();
        let loaded = pouch_mls::load_device_signer(&bob_store.provider, &bob_key).unwrap();
        assert_eq!(loaded.to_public_vec(), bob_key);

        // Keys kept their form: the group is found by the same bytes.
        let group_keys: Vec<u8> = {
            let mut stmt = bob_store
                .conn
                .prepare("SELECT group_id FROM openmls_group_data")
                .unwrap();
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|v| v.unwrap()[0])
                .collect()
        };
        assert!(
            group_keys.iter().all(|b| *b == STATE_MSGPACK),
            "{group_keys:?}"
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// A receiver defers the disk wait only between its barriers: commits
    /// stay whole, the barrier writes (and so syncs) the WAL, and leaving —
    /// by any way — restores a disk wait per commit.
    #[test]
    fn deferred_durability_ends_at_each_barrier_and_when_dropped() {
        let home = std::env::temp_dir().join(format!("pouch-deferred-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let store = LocalStore::create(&home, "correct horse").unwrap();
        const FULL: i64 = 2;
        const NORMAL: i64 = 1;
        assert_eq!(synchronous(&store), FULL);
        {
            let deferred = store.defer_durability().unwrap();
            assert_eq!(synchronous(&store), NORMAL);
            store
                .atomically(|l| l.set_meta("queue_cursor", "7"))
                .unwrap();
            assert_eq!(store.meta("durable_at").unwrap(), None);
            deferred.barrier().unwrap();
            assert!(store.meta("durable_at").unwrap().is_some());
            assert_eq!(
                synchronous(&store),
                NORMAL,
                "still deferring after a barrier"
            );
            store
                .atomically(|l| l.set_meta("queue_cursor", "8"))
                .unwrap();
        }
        assert_eq!(synchronous(&store), FULL);
        drop(store);
        // What was committed after the last barrier is there on reopening.
        let store = LocalStore::open(&home, "correct horse").unwrap();
        assert_eq!(store.meta("queue_cursor").unwrap().as_deref(), Some("8"));
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn a_group_is_held_in_memory_only_as_the_store_holds_it() {
        let TwoStores {
            scratch,
            suite,
            alice,
            bob,
            alice_store,
            bob_store,
        } = two_stores("pouch-group-cache");
        let alice_signer = pouch_mls::new_device_signer(&alice_store.provider).unwrap();
        let bob_signer = pouch_mls::new_device_signer(&bob_store.provider).unwrap();
        let package =
            pouch_mls::key_packages(&bob_store.provider, suite, &bob_signer, &bob, 1, false)
                .unwrap()
                .remove(0);
        let package = pouch_mls::validate_key_package(
            &alice_store.provider,
            suite,
            &pouch_mls::ClaimedPackage {
                bytes: &package,
                address: &bob,
                signature_key: &bob_signer.to_public_vec(),
            },
        )
        .unwrap();
        let (mut group, out) = pouch_mls::create_conversation(
            &alice_store.provider,
            suite,
            &alice_signer,
            &alice,
            &rand::random::<[u8; 32]>(),
            &[package],
        )
        .unwrap();
        pouch_mls::merge_pending(&alice_store.provider, &mut group).unwrap();
        let gid = pouch_mls::group_id_bytes(&group);
        let (mut bobs, _) = pouch_mls::join(&bob_store.provider, &out.welcome.unwrap()).unwrap();
        let held = |store: &LocalStore| store.groups.borrow().held.contains_key(&gid);

        // Outside a transaction a kept group is held at once, and taken out while used.
        alice_store.keep_group(group);
        assert!(held(&alice_store));
        let group = alice_store.group(&gid).unwrap();
        assert!(!held(&alice_store), "a group in use is not also held");

        // Used in a transaction that rolls back (its seal undone in the
        // store, not in memory): not held.
        let group = alice_store
            .atomically_unless(
                |l| {
                    let mut g = group;
                    pouch_mls::seal(&l.provider, &alice_signer, &mut g, b"undone").unwrap();
                    l.keep_group(g);
                    Ok(())
                },
                |_| true,
            )
            .map(|()| alice_store.group(&gid).unwrap())
            .unwrap();
        assert!(!held(&alice_store), "kept in a rolled-back transaction");
        // Nor when the transaction fails.
        let failed: Result<()> = alice_store.atomically(|l| {
            l.keep_group(group);
            Err(ClientError::Local("fails".into()))
        });
        assert!(failed.is_err());
        assert!(!held(&alice_store), "kept in a failed transaction");

        // Committed: held, and what it seals opens at Bob's.
        alice_store
            .atomically(|l| {
                let mut g = l.group(&gid)?;
                let sealed = pouch_mls::seal(&l.provider, &alice_signer, &mut g, b"kept").unwrap();
                l.keep_group(g);
                Ok(sealed)
            })
            .map(|sealed| {
                assert!(held(&alice_store));
                let mut g = alice_store.group(&gid).unwrap();
                let again =
                    pouch_mls::seal(&alice_store.provider, &alice_signer, &mut g, b"from memory")
                        .unwrap();
                alice_store.keep_group(g);
                for (m, text) in [(sealed, &b"kept"[..]), (again, &b"from memory"[..])] {
                    match pouch_mls::open(&bob_store.provider, &mut bobs, &m).unwrap() {
                        pouch_mls::Opened::Application { payload, .. } => assert_eq!(payload, text),
                        _ => panic!("not an application message"),
                    }
                }
            })
            .unwrap();
        assert!(held(&alice_store));

        // Asking for another conversation leaves this one held...
        assert!(alice_store.group(b"another conversation").is_err());
        assert!(held(&alice_store));
        // ...until another process writes to this home: then nothing held is trusted.
        let other = LocalStore::open(&scratch.join("alice"), "correct horse").unwrap();
        other.set_meta("written_elsewhere", "1").unwrap();
        assert!(alice_store.group(b"another conversation").is_err());
        assert!(!held(&alice_store), "held across another process's write");
        let _ = std::fs::remove_dir_all(&scratch);
    }

    #[test]
    fn a_batch_commits_once_and_each_item_stays_atomic() {
        let scratch = std::env::temp_dir().join(format!("pouch-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let store = LocalStore::create(&scratch.join("a"), "correct horse").unwrap();
        let other = LocalStore::open(&scratch.join("a"), "correct horse").unwrap();
        store.begin_batch().unwrap();
        store.atomically(|l| l.set_meta("kept", "1")).unwrap();
        store
            .atomically_unless(|l| l.set_meta("looked", "1"), |_| true)
            .unwrap();
        let failed: Result<()> = store.atomically(|l| {
            l.set_meta("failed", "1")?;
            Err(ClientError::Local("fails".into()))
        });
        assert!(failed.is_err());
        // Nothing is visible to another connection before the batch commits.
        assert_eq!(other.meta("kept").unwrap(), None);
        store.end_batch().unwrap();
        assert_eq!(other.meta("kept").unwrap().as_deref(), Some("1"));
        assert_eq!(
            other.meta("looked").unwrap(),
            None,
            "a discarded item left a trace"
        );
        assert_eq!(
            other.meta("failed").unwrap(),
            None,
            "a failed item left a trace"
        );
        // Outside a batch, transactions are transactions again.
        store.atomically(|l| l.set_meta("after", "1")).unwrap();
        assert_eq!(other.meta("after").unwrap().as_deref(), Some("1"));
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

#[cfg(test)]
mod kdf_bounds {
    use super::*;

    #[test]
    fn parameters_beyond_the_bounds_are_refused_before_any_work() {
        let mut p = KdfParams::fresh();
        p.memory_kib = u32::MAX;
        let e = p.derive("x").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("the key file was edited"), "{e}");
        let mut p = KdfParams::fresh();
        p.iterations = 1_000_000;
        assert!(p.derive("x").is_err());
        let mut p = KdfParams::fresh();
        p.memory_kib = 8;
        p.iterations = 1;
        assert!(p.derive("x").is_ok(), "small parameters still derive");
    }
}
