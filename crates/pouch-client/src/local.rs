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
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use zeroize::Zeroizing;

pub const DB_FILE: &str = "device.db";
pub const KDF_FILE: &str = "kdf.json";

/// Argon2id parameters, stored beside the database so they can be raised later.
#[derive(Serialize, Deserialize)]
struct KdfParams {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

impl KdfParams {
    fn fresh() -> Self {
        let salt: [u8; 16] = rand::random();
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: hex::encode(salt),
        }
    }

    fn derive(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>> {
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

/// OpenMLS state is stored as JSON: a self-describing format survives
/// OpenMLS upgrades that add or reorder fields.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// OpenMLS's view of the device: libcrux cryptography, storage in our database.
pub struct Provider {
    crypto: openmls_libcrux_crypto::CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, Rc<Connection>>,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = openmls_libcrux_crypto::CryptoProvider;
    type RandProvider = openmls_libcrux_crypto::CryptoProvider;
    type StorageProvider = SqliteStorageProvider<JsonCodec, Rc<Connection>>;
    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

pub struct LocalStore {
    pub conn: Rc<Connection>,
    pub provider: Provider,
    pub home: PathBuf,
}

fn open_connection(path: &Path, key: &[u8; 32]) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // A raw key (x'..') skips SQLCipher's own PBKDF2: Argon2id already did that work.
    let hex_key = Zeroizing::new(format!("x'{}'", hex::encode(key)));
    conn.pragma_update(None, "key", hex_key.as_str())?;
    // SQLCipher would report a wrong key on stderr by itself (its logging
    // starts with the key); Pouch says it once, in its own words.
    let _ = conn.pragma_update(None, "cipher_log_level", "NONE");
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
        let storage = SqliteStorageProvider::<JsonCodec, Rc<Connection>>::new(conn.clone());
        // run_migrations needs the connection mutably; do it on a short-lived second handle.
        {
            let mut migrations_conn = open_connection(&home.join(DB_FILE), key)?;
            let mut migrator =
                SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut migrations_conn);
            migrator.run_migrations().map_err(|e| {
                ClientError::Local(format!("OpenMLS storage migration failed: {e}"))
            })?;
        }
        let crypto = openmls_libcrux_crypto::CryptoProvider::new()
            .map_err(|e| ClientError::Local(format!("crypto provider unavailable: {e:?}")))?;
        Ok(LocalStore {
            conn,
            provider: Provider { crypto, storage },
            home: home.to_path_buf(),
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn require_meta(&self, key: &str) -> Result<String> {
        self.meta(key)?.ok_or_else(|| {
            ClientError::Local(format!("device state lacks '{key}'; re-enroll this device"))
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
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

    /// As [`Self::atomically`], but rolls back a successful `f` whose result
    /// satisfies `discard` (a look that must leave no trace).
    pub fn atomically_unless<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T>,
        discard: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) if discard(&v) => {
                self.conn.execute_batch("ROLLBACK")?;
                Ok(v)
            }
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
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
}
