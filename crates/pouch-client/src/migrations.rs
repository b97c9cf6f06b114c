//! The client store's schema as numbered migrations.
//!
//! A device's store is encrypted and long-lived: it is created at
//! enrolment and opened by every later release. Each release may only add
//! migrations at the end of [`MIGRATIONS`]; a migration, once released, is
//! never edited (a test opens a store written by the first release and
//! checks that it migrates to the current schema with its data intact).
//! SQLite's `user_version` records how far a store has come; each step runs
//! in its own transaction together with the bump of `user_version`, so a
//! crash leaves the store at one version or the next, never between.

use crate::error::{ClientError, Result};
use rusqlite::Connection;

/// One step of the schema.
pub(crate) struct Migration {
    pub version: u32,
    /// What the step adds, for the error message if it fails.
    pub what: &'static str,
    pub sql: &'static str,
    /// Work SQL cannot express, run after `sql` in the same transaction.
    pub then: Option<fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>>,
}

/// Every schema step, oldest first. Append only.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "the first release's tables",
        // Stores written before versioning have these tables already and
        // user_version 0: every statement here is IF NOT EXISTS.
        sql: V1,
        then: None,
    },
    Migration {
        version: 2,
        what: "the cache of verified device lists",
        sql: V2,
        then: None,
    },
    Migration {
        version: 3,
        what: "OpenMLS state in binary form",
        sql: "",
        then: Some(crate::local::state_to_binary),
    },
    Migration {
        version: 4,
        what: "classification labels",
        sql: V4,
        then: None,
    },
];

/// The newest schema version this build writes.
pub(crate) fn current() -> u32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Brings `conn` to `target` (normally [`current`]). A store newer than this
/// build is refused rather than used with a schema it does not know.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<u32> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > current() {
        return Err(ClientError::Local(format!(
            "this device's store has schema version {found}, newer than this Pouch knows ({}): upgrade Pouch to open it",
            current()
        )));
    }
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= target)
    {
        // Immediate: a second process opening the store at the same moment
        // waits, then sees the step done and skips it.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now >= m.version {
            continue;
        }
        tx.execute_batch(m.sql)
            .and_then(|()| m.then.map_or(Ok(()), |then| then(&tx)))
            .map_err(|e| {
                ClientError::Local(format!(
                    "updating this device's store to schema version {} ({}) failed: {e}",
                    m.version, m.what
                ))
            })?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
    }
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

const V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    group_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    -- 'mail', or 'system' for a channel between the account's own devices.
    kind TEXT NOT NULL DEFAULT 'mail',
    -- When this device last put fresh key material into the group.
    last_update INTEGER NOT NULL DEFAULT 0
);
-- Every device key seen on any version of any device list, to name removed members.
CREATE TABLE IF NOT EXISTS device_keys (
    signature_key BLOB PRIMARY KEY,
    device_id TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    server_seq INTEGER UNIQUE,
    outgoing INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    cc TEXT NOT NULL,
    subject TEXT NOT NULL,
    message_id TEXT,
    date INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    size INTEGER NOT NULL,
    attachments TEXT NOT NULL,
    -- The exact RFC 5322 bytes: in the row when small, else in an encrypted file.
    raw BLOB,
    raw_file TEXT,
    raw_key BLOB,
    -- 1 for Pouch's own notices (links, revocations, alerts).
    system INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS contacts (
    address TEXT PRIMARY KEY,
    account_key BLOB NOT NULL,
    version INTEGER NOT NULL,
    list_hash TEXT NOT NULL,
    first_seen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_message_id ON messages(message_id);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server_seq INTEGER UNIQUE,
    group_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    special_use TEXT,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    subscribed INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS mailbox_messages (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX IF NOT EXISTS mailbox_messages_by_message ON mailbox_messages(message_id);

CREATE VIRTUAL TABLE IF NOT EXISTS search_index USING fts5(
    subject, people, body, attachments,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Device keys this device verified on a signed device list, with the
-- account key that signed it (only versions under the pinned key).
-- `current`: on the newest version this device verified (a device that may
-- speak now); the others were members once and may still sit in a group.
CREATE TABLE IF NOT EXISTS verified_keys (
    address TEXT NOT NULL,
    signature_key BLOB NOT NULL,
    account_key BLOB NOT NULL,
    current INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (address, signature_key, account_key)
);
-- Queue items held back until the user decides about a changed account key.
CREATE TABLE IF NOT EXISTS held (
    server_seq INTEGER PRIMARY KEY,
    group_id TEXT NOT NULL,
    address TEXT NOT NULL,
    item TEXT NOT NULL,
    at INTEGER NOT NULL
);
-- Security findings made while processing an item, in the same transaction;
-- reported to the server and to the caller, then cleared.
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
-- The epoch at which this device entered a conversation (0: it created it).
CREATE TABLE IF NOT EXISTS joined (
    group_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
-- Per conversation and sending device: the last counter and envelope hash seen.
CREATE TABLE IF NOT EXISTS recv_chain (
    group_id TEXT NOT NULL,
    sender_key BLOB NOT NULL,
    n INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (group_id, sender_key)
);
-- This device's own counter per conversation.
CREATE TABLE IF NOT EXISTS send_chain (
    group_id TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    hash TEXT NOT NULL
);
";

const V2: &str = "
-- Device lists this device verified, each in the log and covered by a
-- checkpoint every required witness cosigned. Kept until the log shows a
-- newer entry for the account: before relying on the cache, the device
-- takes the newest checkpoint and looks through the leaves added since its
-- last look for these accounts' commitments (transparency.rs).
CREATE TABLE directory_cache (
    address TEXT PRIMARY KEY,
    -- The account's commitment in the log's public leaves.
    commitment TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- The leaf of this version: a later leaf for the account means a change.
    log_index INTEGER NOT NULL,
    -- The verified list (JSON of a DeviceListBody).
    body TEXT NOT NULL,
    verified_at INTEGER NOT NULL
);
CREATE INDEX directory_cache_by_commitment ON directory_cache(commitment);
";

const V4: &str = "
-- The security officer's statements this device verified (its key, the
-- label policy, people's clearances), by the log's commitment to their
-- subject. floor_index: the log holds a statement about the subject at or
-- after this index (seen in the leaves the directory scan looked through),
-- so a statement older than it is a withheld update; stale: the scan could
-- not look (too far behind), so the statement is fetched again.
CREATE TABLE officer_statements (
    commitment TEXT PRIMARY KEY,
    subject TEXT,
    log_index INTEGER,
    -- The statement's number among those about its subject (the log entry's).
    version INTEGER,
    floor_index INTEGER NOT NULL DEFAULT 0,
    body TEXT,
    signature TEXT,
    stale INTEGER NOT NULL DEFAULT 0
);
-- Each labelled mail's classification label (canonical STANAG 4774 XML),
-- its marking as the policy wrote it when the mail was stored, and what the
-- bridge shows mail clients of its header section (the verified label as
-- an SIO-Label field, the subject marked) in place of the first head_len
-- bytes the sender wrote (kept as they are). A table of its own: columns
-- appended to `messages` would sit behind each row's raw mail, and every
-- listing would read through it to reach them.
CREATE TABLE message_labels (
    message INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    marking TEXT NOT NULL,
    bridge_head BLOB,
    head_len INTEGER
);
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalStore;
    use std::path::{Path, PathBuf};

    fn version(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Rows every release's store may hold, written with the first schema.
    fn first_release_rows(conn: &Connection) {
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('address', 'ana@mfa.test');
             INSERT INTO contacts (address, account_key, version, list_hash, first_seen)
                 VALUES ('bo@mfa.test', x'0102', 3, 'abc', 1700000000);
             INSERT INTO messages (group_id, server_seq, outgoing, sender, recipients, cc, subject,
                 message_id, date, stored_at, size, attachments, raw)
                 VALUES ('g1', 7, 0, 'bo@mfa.test', 'ana@mfa.test', '', 'Démarche', '<m1@mfa.test>',
                 1700000000, 1700000001, 5, '[]', x'68656c6c6f');",
        )
        .unwrap();
    }

    fn first_release_rows_intact(conn: &Connection) {
        let (version, key): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT version, account_key FROM contacts WHERE address = 'bo@mfa.test'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, key), (3, vec![1, 2]));
        let (subject, raw): (String, Vec<u8>) = conn
            .query_row(
                "SELECT subject, raw FROM messages WHERE server_seq = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (subject.as_str(), raw.as_slice()),
            ("Démarche", &b"hello"[..])
        );
    }

    #[test]
    fn versions_are_numbered_one_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.what);
        }
    }

    #[test]
    fn a_store_from_before_versioning_keeps_its_data() {
        // Stores enrolled before migrations were numbered: the first schema's
        // tables, user_version 0.
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(V1).unwrap();
        first_release_rows(&conn);
        assert_eq!(version(&conn), 0);
        assert_eq!(migrate_to(&mut conn, current()).unwrap(), current());
        first_release_rows_intact(&conn);
        assert!(tables(&conn).contains(&"directory_cache".to_string()));
    }

    #[test]
    fn every_earlier_version_migrates_to_the_current_one() {
        for from in 0..current() {
            let mut conn = Connection::open_in_memory().unwrap();
            assert_eq!(migrate_to(&mut conn, from).unwrap(), from);
            if from >= 1 {
                first_release_rows(&conn);
            }
            assert_eq!(migrate_to(&mut conn, current()).unwrap(), current());
            if from >= 1 {
                first_release_rows_intact(&conn);
            }
            // Opening again changes nothing.
            let before = tables(&conn);
            assert_eq!(migrate_to(&mut conn, current()).unwrap(), current());
            assert_eq!(tables(&conn), before);
        }
    }

    #[test]
    fn a_store_from_a_newer_release_is_refused_with_advice() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", current() + 1)
            .unwrap();
        let err = migrate_to(&mut conn, current()).unwrap_err().to_string();
        assert!(err.contains("upgrade Pouch"), "{err}");
        assert_eq!(version(&conn), current() + 1, "left as it was");
    }

    #[test]
    fn a_failing_step_leaves_the_store_at_the_version_before() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        // A table in the way of version 2's CREATE TABLE.
        conn.execute_batch("CREATE TABLE directory_cache (x INTEGER)")
            .unwrap();
        let err = migrate_to(&mut conn, current()).unwrap_err().to_string();
        assert!(err.contains("schema version 2"), "{err}");
        assert_eq!(version(&conn), 1);
    }

    const FIXTURE_PASSPHRASE: &str = "fixture passphrase";

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pouch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// How tests/fixtures/store-v1 was made: an encrypted store with the
    /// first schema's tables and user_version 0, as Pouch wrote it before
    /// migrations were numbered, with sample rows.
    /// Run with --ignored only to remake it; the committed file is the point.
    #[test]
    #[ignore]
    fn write_the_first_release_fixture() {
        let dir = scratch("fixture-v1");
        {
            let store = LocalStore::create_at_schema(&dir, FIXTURE_PASSPHRASE, 1).unwrap();
            first_release_rows(&store.conn);
            // The first release did not number its schema.
            store.conn.pragma_update(None, "user_version", 0).unwrap();
        }
        std::fs::create_dir_all(fixture_dir()).unwrap();
        for f in [crate::local::DB_FILE, crate::local::KDF_FILE] {
            std::fs::copy(dir.join(f), fixture_dir().join(f)).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_first_releases_encrypted_store_opens_and_migrates() {
        let dir = scratch("open-v1");
        std::fs::create_dir_all(&dir).unwrap();
        for f in [crate::local::DB_FILE, crate::local::KDF_FILE] {
            std::fs::copy(fixture_dir().join(f), dir.join(f)).unwrap();
        }
        {
            let store = LocalStore::open(&dir, FIXTURE_PASSPHRASE).unwrap();
            assert_eq!(version(&store.conn), current());
            first_release_rows_intact(&store.conn);
            assert_eq!(
                store.meta("address").unwrap().as_deref(),
                Some("ana@mfa.test")
            );
            let cached: i64 = store
                .conn
                .query_row("SELECT count(*) FROM directory_cache", [], |r| r.get(0))
                .unwrap();
            assert_eq!(cached, 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
