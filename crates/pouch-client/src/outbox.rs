//! The outbox: mail a mail client submitted through the bridge, accepted
//! as soon as it is on disk and sent by the device afterwards.
//!
//! Why: a mail client waits for SMTP's answer to `DATA`. When that answer
//! waited for the send itself — the device's turn, the encryption, the
//! server's reply — four mail clients kept the whole machine a third idle,
//! and an embassy whose link to headquarters is down could not hand over a
//! mail at all. Postfix answers once the mail is in its queue; so does the
//! bridge now.
//!
//! What holds:
//! - **Nothing acknowledged is lost.** `queue` returns only after the mail
//!   is committed with `synchronous = FULL` to `outbox.db`, a SQLCipher
//!   database in the home under the store's own key (the mail is as
//!   protected at rest as mail already sent). A crash or a restart leaves
//!   it queued; the next bridge sends it.
//! - **What can be refused at once is.** The sender must be this device's
//!   account and there must be a recipient; recipients outside Pouch were
//!   refused at `RCPT`.
//! - **What fails later is said.** A mail the device cannot send for good
//!   (a recipient's account key changed, a member refused) is taken out and
//!   a notice in the INBOX says which mail, to whom, and why (the server's
//!   words quoted, never as Pouch's own). One that cannot be sent *now* (the
//!   server unreachable or busy) waits and is tried again, backing off to
//!   once every 15 minutes, for up to five days.
//! - **Never twice to the same people.** A mail is sent as one conversation
//!   for To and Cc and one per blind copy; once any of them went, a failure
//!   of the rest is not retried (that would resend to those who have it):
//!   the notice says who got it and who did not.
//! - **In order.** The oldest mail goes first, and nothing overtakes a mail
//!   that waits to be retried.
//!
//! The outbox has its own connection and file, so an SMTP session writes to
//! it without waiting for the device's thread, and its writes do not make
//! the device re-read its conversations (another connection's commit to
//! the store would: see `LocalStore::group`). Sending at least once: a
//! crash between the server's acceptance and the removal from the outbox
//! sends the mail again on restart.

use crate::error::{ClientError, Result};
use pouch_proto::Address;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

/// The outbox's file in a device's home.
pub const OUTBOX_FILE: &str = "outbox.db";
/// The longest wait between two attempts at a mail that could not go.
const MAX_BACKOFF_SECS: i64 = 15 * 60;
/// The file a sending process locks (see [`Outbox::next_due`]).
pub const SENDING_LOCK_FILE: &str = "outbox.sending.lock";
/// A mail that could not go for this long comes back (Postfix: 5 days).
pub const GIVE_UP_AFTER_SECS: i64 = 5 * 86_400;

/// Mails the outbox holds at most, and their bytes at most: beyond either,
/// a mail client is told to try again later (SMTP 452) rather than a
/// runaway client, or a long outage, filling the disk.
pub const MAX_WAITING_MAILS: i64 = 10_000;
pub const MAX_WAITING_BYTES: i64 = 2 << 30;

/// A mail waiting to be sent.
pub struct Queued {
    pub id: i64,
    pub queued_at: i64,
    pub raw: Vec<u8>,
    pub envelope: Vec<Address>,
    pub attempts: u32,
    /// An earlier attempt may have reached the server (its answer was
    /// lost): only then may the server answer "accepted before".
    pub may_have_reached: bool,
}

pub struct Outbox {
    conn: Mutex<Connection>,
    submission_key: zeroize::Zeroizing<[u8; 32]>,
    /// Held from [`Outbox::next_due`] until the mail is removed or
    /// postponed: an exclusive lock on [`SENDING_LOCK_FILE`], so that a
    /// bridge and a `pouch sync` on one home never send the same mail. The
    /// system drops it if the process dies. The file is opened once; each
    /// mail locks and unlocks it (`true` while this process holds it).
    lock_file: std::fs::File,
    sending: Mutex<bool>,
}

/// A waiting mail as `pouch outbox` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Waiting {
    pub id: i64,
    pub queued_at: i64,
    pub to: Vec<Address>,
    pub subject: String,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
}

impl Outbox {
    /// Opens (creating if needed) the outbox of the home whose store key is `key`.
    pub(crate) fn open(home: &Path, key: &[u8; 32]) -> Result<Outbox> {
        let conn = crate::local::open_connection(&home.join(OUTBOX_FILE), key)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 queued_at INTEGER NOT NULL,
                 envelope TEXT NOT NULL,
                 raw BLOB NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 next_attempt_at INTEGER NOT NULL,
                 last_error TEXT
             );",
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                ClientError::Local(format!(
                    "{} is not this device's outbox (another key); move it aside",
                    home.join(OUTBOX_FILE).display()
                ))
            }
            other => other.into(),
        })?;
        // Outboxes from before submission ids lack the columns. Added
        // under the write lock, checked again inside it: a bridge and a
        // `pouch sync` may open an old outbox at the same moment.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let upgraded = (|| -> rusqlite::Result<()> {
            for (column, ddl) in [
                (
                    "may_have_reached",
                    "ALTER TABLE outbox ADD COLUMN may_have_reached INTEGER NOT NULL DEFAULT 0",
                ),
                (
                    "in_flight",
                    "ALTER TABLE outbox ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0",
                ),
            ] {
                let has: bool = conn
                    .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = ?1")?
                    .exists([column])?;
                if !has {
                    conn.execute_batch(ddl)?;
                }
            }
            Ok(())
        })();
        conn.execute_batch(if upgraded.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        })?;
        upgraded?;
        // The key of submission ids: derived from the outbox's own key, so
        // the server (which sees the ids) cannot tell from them when a mail
        // was queued or how many were.
        let submission_key = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"pouch outbox submission key v1\0");
            h.update(key);
            zeroize::Zeroizing::new(<[u8; 32]>::from(h.finalize()))
        };
        Ok(Outbox {
            conn: Mutex::new(conn),
            submission_key,
            lock_file: std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(home.join(SENDING_LOCK_FILE))?,
            sending: Mutex::new(false),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a mail for `envelope`; returns once it is on disk, with the
    /// mail's Message-ID. `own` is this device's address: the mail must be
    /// from it.
    pub fn queue(
        &self,
        own: &Address,
        raw: Vec<u8>,
        envelope: &[Address],
    ) -> Result<Option<String>> {
        self.queue_within(own, raw, envelope, MAX_WAITING_MAILS, MAX_WAITING_BYTES)
    }

    /// [`Self::queue`], refusing with [`ClientError::OutboxFull`] when the
    /// mail would take the outbox past `max_mails` or `max_bytes`.
    fn queue_within(
        &self,
        own: &Address,
        raw: Vec<u8>,
        envelope: &[Address],
        max_mails: i64,
        max_bytes: i64,
    ) -> Result<Option<String>> {
        let head = &raw[..raw.len().min(crate::mail::HEAD_LIMIT)];
        let parsed = crate::mail::parse(head).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if let Some(problem) = crate::submission_problem(&parsed, own, envelope) {
            return Err(ClientError::Invalid(problem));
        }
        let envelope = serde_json::to_string(envelope).expect("addresses serialise");
        let now = crate::now();
        let conn = self.conn();
        let (mails, bytes): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(raw)), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if mails >= max_mails || bytes.saturating_add(raw.len() as i64) > max_bytes {
            return Err(ClientError::OutboxFull(format!(
                "{mails} mails ({} MiB) are waiting to be sent",
                bytes >> 20
            )));
        }
        conn.execute(
            "INSERT INTO outbox (queued_at, envelope, raw, next_attempt_at) VALUES (?1, ?2, ?3, ?1)",
            params![now, envelope, raw],
        )?;
        Ok(parsed.message_id)
    }

    /// The oldest mail, if it is due now (one waiting for a retry holds back
    /// those behind it), for this process alone until it is removed or
    /// postponed: a bridge and a `pouch sync` on one home never both send
    /// it. While another process sends, nothing is due here.
    pub fn next_due(&self, now: i64) -> Result<Option<Queued>> {
        let mut sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        if !*sending {
            match self.lock_file.try_lock() {
                Ok(()) => *sending = true,
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        let found = self.oldest_due(now);
        if !matches!(found, Ok(Some(_))) {
            self.unlock(&mut sending);
        }
        found
    }

    fn oldest_due(&self, now: i64) -> Result<Option<Queued>> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT id, raw, envelope, attempts, next_attempt_at, queued_at, may_have_reached OR in_flight FROM outbox ORDER BY id LIMIT 1",
            )?
            .query_row([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .optional()?;
        let Some((id, raw, envelope, attempts, due, queued_at, may_have_reached)) = row else {
            return Ok(None);
        };
        if due > now {
            return Ok(None);
        }
        let envelope = serde_json::from_str(&envelope).map_err(|e| {
            ClientError::Local(format!("a queued mail's recipients are damaged: {e}"))
        })?;
        // On disk before any request about it leaves: if this process dies
        // before the attempt ends (removed or postponed), the next one
        // knows the server may have it (and may answer "accepted before").
        conn.prepare_cached(
            "UPDATE outbox SET may_have_reached = may_have_reached OR in_flight, in_flight = 1 WHERE id = ?1",
        )?
        .execute([id])?;
        Ok(Some(Queued {
            id,
            queued_at,
            raw,
            envelope,
            attempts: attempts.max(0) as u32,
            may_have_reached,
        }))
    }

    /// How many mails wait.
    pub fn waiting(&self) -> Result<u64> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Every waiting mail, oldest first (subjects read from their heads).
    pub fn list(&self) -> Result<Vec<Waiting>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, queued_at, envelope, substr(raw, 1, ?1), attempts, last_error, next_attempt_at \
             FROM outbox ORDER BY id",
        )?;
        let rows = stmt.query_map([crate::mail::HEAD_LIMIT as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, queued_at, envelope, head, attempts, last_error, next_attempt_at) = row?;
            out.push(Waiting {
                id,
                queued_at,
                to: serde_json::from_str(&envelope).unwrap_or_default(),
                subject: crate::mail::parse(&head)
                    .map(|p| p.subject)
                    .unwrap_or_default(),
                attempts: attempts.max(0) as u32,
                last_error,
                next_attempt_at,
            });
        }
        Ok(out)
    }

    /// Makes every waiting mail due now (the user asked to send).
    pub fn all_due_now(&self) -> Result<()> {
        self.conn()
            .execute("UPDATE outbox SET next_attempt_at = ?1", [crate::now()])?;
        Ok(())
    }

    /// Takes a mail out (sent, or refused for good).
    pub fn remove(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        self.done_sending();
        Ok(())
    }

    /// What the submission ids of the mail `id` queued at `queued_at` derive
    /// from: keyed by this outbox's secret, the same on every attempt.
    pub fn submission_base(&self, id: i64, queued_at: i64) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.submission_key.as_ref())
            .expect("HMAC takes any key length");
        mac.update(&id.to_be_bytes());
        mac.update(&queued_at.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Lets another process send again.
    fn done_sending(&self) {
        self.unlock(&mut self.sending.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn unlock(&self, sending: &mut bool) {
        if *sending {
            let _ = self.lock_file.unlock();
            *sending = false;
        }
    }

    /// A mail that could not go now: tried again after a wait that doubles
    /// with each attempt, up to [`MAX_BACKOFF_SECS`].
    /// `may_have_reached`: the attempt may have reached the server (remembered
    /// for good once set).
    pub fn postpone(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        may_have_reached: bool,
    ) -> Result<()> {
        let wait = (1i64 << attempts.min(10)).min(MAX_BACKOFF_SECS);
        self.conn().execute(
            "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, \
             may_have_reached = may_have_reached OR ?5, in_flight = 0 WHERE id = ?1",
            params![
                id,
                attempts as i64 + 1,
                crate::now() + wait,
                error,
                may_have_reached
            ],
        )?;
        self.done_sending();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two senders on one home (a bridge and `pouch sync`): the oldest mail
    /// goes to one of them only; once it is postponed (or the sender dies,
    /// which drops its lock) the other may take it.
    #[test]
    fn two_senders_never_take_the_same_mail() {
        let home = std::env::temp_dir().join(format!("pouch-outbox-claim-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let bridge = Outbox::open(&home, &[9; 32]).unwrap();
        let cli = Outbox::open(&home, &[9; 32]).unwrap();
        let alice = Address::parse("alice@pouch.local").unwrap();
        let bob = Address::parse("bob@pouch.local").unwrap();
        let mail = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: once\r\n\r\nx\r\n";
        bridge
            .queue(&alice, mail.to_vec(), std::slice::from_ref(&bob))
            .unwrap();
        let now = crate::now();
        let taken = bridge.next_due(now).unwrap().expect("the bridge takes it");
        assert!(cli.next_due(now).unwrap().is_none(), "taken twice");
        // Postponed: due again later, to whoever asks first.
        bridge.postpone(taken.id, 0, "server busy", false).unwrap();
        assert!(cli.next_due(now + 5).unwrap().is_some());
        assert!(bridge.next_due(now + 6).unwrap().is_none());
        // The sender that holds it dies: the other one sends it.
        drop(cli);
        assert!(bridge.next_due(now + 6).unwrap().is_some());
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// A full outbox refuses the next mail, saying why, and takes mail
    /// again once one has gone.
    #[test]
    fn a_full_outbox_refuses_more_until_mail_goes() {
        let home = std::env::temp_dir().join(format!("pouch-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let outbox = Outbox::open(&home, &[7; 32]).unwrap();
        let alice = Address::parse("alice@pouch.local").unwrap();
        let bob = Address::parse("bob@pouch.local").unwrap();
        let mail = |n: usize| {
            format!(
                "From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: {n}\r\n\r\nbody\r\n"
            )
            .into_bytes()
        };
        let to = std::slice::from_ref(&bob);
        for n in 0..2 {
            outbox
                .queue_within(&alice, mail(n), to, 2, 1 << 20)
                .unwrap();
        }
        let full = outbox
            .queue_within(&alice, mail(2), to, 2, 1 << 20)
            .unwrap_err();
        assert!(matches!(full, ClientError::OutboxFull(_)), "{full}");
        assert!(full.to_string().contains("2 mails"), "{full}");
        // Bytes count too: a mail that would pass the byte limit is refused.
        let big = outbox
            .queue_within(&alice, mail(3), to, 10, 100)
            .unwrap_err();
        assert!(matches!(big, ClientError::OutboxFull(_)), "{big}");

        let first = outbox.next_due(i64::MAX).unwrap().unwrap();
        outbox.remove(first.id).unwrap();
        outbox
            .queue_within(&alice, mail(4), to, 2, 1 << 20)
            .unwrap();
        drop(outbox);
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// A sender that dies while a mail is out (between the server taking it
    /// and its removal) leaves a mark: the next attempt knows the server
    /// may have it. A postponed attempt that never reached the server
    /// leaves none.
    #[test]
    fn a_mail_in_flight_when_its_sender_died_may_have_reached_the_server() {
        let home = std::env::temp_dir().join(format!("pouch-outbox-flight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let key = [9u8; 32];
        let own = Address::parse("alice@pouch.local").unwrap();
        let to = [Address::parse("bob@pouch.local").unwrap()];
        let mail =
            b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: x\r\n\r\nx\r\n".to_vec();
        {
            let outbox = Outbox::open(&home, &key).unwrap();
            outbox.queue(&own, mail.clone(), &to).unwrap();
            let first = outbox.next_due(i64::MAX).unwrap().unwrap();
            assert!(!first.may_have_reached);
            // Refused at the door: postponed, nothing reached the server.
            outbox
                .postpone(first.id, 0, "connection refused", false)
                .unwrap();
            let again = outbox.next_due(i64::MAX).unwrap().unwrap();
            assert!(
                !again.may_have_reached,
                "a postponed attempt leaves no mark"
            );
            assert_eq!(
                outbox.submission_base(again.id, again.queued_at),
                outbox.submission_base(first.id, first.queued_at),
                "the same ids on every attempt"
            );
            // …and this process dies while the mail is out.
        }
        let outbox = Outbox::open(&home, &key).unwrap();
        let after = outbox.next_due(i64::MAX).unwrap().unwrap();
        assert!(after.may_have_reached, "the server may have it");
        // The ids are keyed: another outbox key, other ids.
        std::fs::create_dir_all(home.join("other")).unwrap();
        let other = Outbox::open(&home.join("other"), &[1u8; 32]).unwrap();
        assert_ne!(
            other.submission_base(after.id, after.queued_at),
            outbox.submission_base(after.id, after.queued_at)
        );
        drop(other);
        drop(outbox);
        std::fs::remove_dir_all(&home).unwrap();
    }
}
