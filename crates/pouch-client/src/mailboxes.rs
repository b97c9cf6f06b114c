//! Folders as mail clients see them (for the bridge's IMAP), kept in the
//! device's encrypted store beside the mail.
//!
//! The rules that Proton Mail Bridge's issue tracker shows to matter:
//! - a UID is given once per folder and never again (a per-folder `uidnext`
//!   that only grows), and UIDVALIDITY is fixed when the folder is created,
//!   so a client never deletes or re-downloads the wrong mail;
//! - flags are stored, not derived;
//! - a message a client APPENDs to Sent after sending it over SMTP is
//!   recognised by its Message-ID and not shown twice;
//! - message bytes are the ones stored (`Device::raw`), never re-encoded.
//!
//! New mail is filed as it is found: received mail to INBOX, sent mail to
//! Sent, Pouch's own notices to INBOX.

use crate::error::{ClientError, Result};
use crate::{Device, mail, store_message};
use pouch_proto::GroupId;
use rusqlite::{OptionalExtension, params};

/// The folders every account has, with their RFC 6154 special use.
pub const STANDARD: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Archive", Some("\\Archive")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub id: i64,
    pub name: String,
    pub special_use: Option<String>,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub subscribed: bool,
}

/// One message in a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    /// The message's id in the device's store.
    pub message: i64,
    pub flags: Vec<String>,
    /// The size mail clients are shown ([`crate::Device::raw_for_clients`]).
    pub size: u64,
    /// When it was stored (the IMAP INTERNALDATE).
    pub stored_at: i64,
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(ClientError::Invalid(format!(
            "'{name}' is not a usable folder name"
        )));
    }
    Ok(())
}

fn flags_text(flags: &[String]) -> String {
    let mut f: Vec<&str> = flags.iter().map(String::as_str).collect();
    f.sort_unstable();
    f.dedup();
    f.join(" ")
}

impl Device {
    /// Creates the standard folders if missing and files new mail; returns
    /// how many messages were filed.
    pub fn refresh_mailboxes(&mut self) -> Result<usize> {
        self.local.atomically(|l| {
            for (name, special) in STANDARD {
                let exists: bool = l
                    .conn
                    .query_row("SELECT 1 FROM mailboxes WHERE name = ?1", [name], |_| Ok(true))
                    .optional()?
                    .unwrap_or(false);
                if !exists {
                    l.conn.execute(
                        "INSERT INTO mailboxes (name, special_use, uidvalidity) VALUES (?1, ?2, ?3)",
                        params![name, special, new_uidvalidity(&l.conn)?],
                    )?;
                }
            }
            let filed_up_to: i64 = l
                .meta("mailboxes_filed_up_to")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let new: Vec<(i64, bool, Option<String>)> = {
                let mut stmt = l.conn.prepare(
                    "SELECT id, outgoing, message_id FROM messages WHERE id > ?1 ORDER BY id",
                )?;
                stmt.query_map([filed_up_to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut filed_now = 0;
            for (id, outgoing, message_id) in &new {
                // Already filed (an APPEND stores and files in one step).
                let filed: bool = l
                    .conn
                    .query_row(
                        "SELECT 1 FROM mailbox_messages WHERE message_id = ?1 LIMIT 1",
                        [id],
                        |_| Ok(true),
                    )
                    .optional()?
                    .unwrap_or(false);
                // The mail client's own copy of a mail it sent, APPENDed to
                // Sent before the outbox sent the mail (the other order is
                // caught in `append_message`): one copy in Sent, the client's.
                if filed || (*outgoing && client_copy_in_sent(l, message_id.as_deref())?) {
                    continue;
                }
                let (folder, flags) = if *outgoing {
                    ("Sent", "\\Seen")
                } else {
                    ("INBOX", "")
                };
                file_into(l, folder, *id, flags)?;
                filed_now += 1;
            }
            if let Some((last, ..)) = new.last() {
                l.set_meta("mailboxes_filed_up_to", &last.to_string())?;
            }
            Ok(filed_now)
        })
    }

    pub fn mailboxes(&self) -> Result<Vec<Mailbox>> {
        let mut stmt = self.local.conn.prepare(
            "SELECT id, name, special_use, uidvalidity, uidnext, subscribed FROM mailboxes ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], mailbox_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A folder by name (INBOX in any case, as IMAP wants).
    pub fn mailbox(&self, name: &str) -> Result<Option<Mailbox>> {
        let name = canonical(name);
        Ok(self
            .local
            .conn
            .query_row(
                "SELECT id, name, special_use, uidvalidity, uidnext, subscribed FROM mailboxes WHERE name = ?1",
                [name],
                mailbox_row,
            )
            .optional()?)
    }

    /// A folder's messages in UID order.
    pub fn entries(&self, mailbox: i64) -> Result<Vec<Entry>> {
        self.entries_between(mailbox, 1, u32::MAX)
    }

    /// A folder's messages with UIDs from `first` to `last`, in UID order.
    pub fn entries_between(&self, mailbox: i64, first: u32, last: u32) -> Result<Vec<Entry>> {
        let mut stmt = self.local.conn.prepare_cached(
            "SELECT mm.uid, mm.message_id, mm.flags, \
               CASE WHEN l.bridge_head IS NULL THEN m.size ELSE m.size - l.head_len + length(l.bridge_head) END, \
               m.stored_at FROM mailbox_messages mm \
             JOIN messages m ON m.id = mm.message_id \
             LEFT JOIN message_labels l ON l.message = mm.message_id \
             WHERE mm.mailbox_id = ?1 AND mm.uid BETWEEN ?2 AND ?3 ORDER BY mm.uid",
        )?;
        let rows = stmt
            .query_map(params![mailbox, first as i64, last as i64], |r| {
                let flags: String = r.get(2)?;
                Ok(Entry {
                    uid: r.get::<_, i64>(0)? as u32,
                    message: r.get(1)?,
                    flags: flags.split_whitespace().map(str::to_string).collect(),
                    size: r.get::<_, i64>(3)? as u64,
                    stored_at: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn set_flags(&mut self, mailbox: i64, uid: u32, flags: &[String]) -> Result<()> {
        self.local.conn.execute(
            "UPDATE mailbox_messages SET flags = ?3 WHERE mailbox_id = ?1 AND uid = ?2",
            params![mailbox, uid as i64, flags_text(flags)],
        )?;
        Ok(())
    }

    pub fn create_mailbox(&mut self, name: &str) -> Result<()> {
        valid_name(name)?;
        if self.mailbox(name)?.is_some() {
            return Err(ClientError::Invalid(format!(
                "folder '{name}' already exists"
            )));
        }
        let v = new_uidvalidity(&self.local.conn)?;
        self.local.conn.execute(
            "INSERT INTO mailboxes (name, uidvalidity) VALUES (?1, ?2)",
            params![name, v],
        )?;
        Ok(())
    }

    /// Deletes a folder the user made (its messages stay in the store and in other folders).
    pub fn delete_mailbox(&mut self, name: &str) -> Result<()> {
        let mb = self
            .mailbox(name)?
            .ok_or_else(|| ClientError::Invalid(format!("no folder '{name}'")))?;
        if STANDARD.iter().any(|(n, _)| *n == mb.name) {
            return Err(ClientError::Invalid(format!(
                "'{}' cannot be deleted",
                mb.name
            )));
        }
        self.local.atomically(|l| {
            l.conn.execute(
                "DELETE FROM mailbox_messages WHERE mailbox_id = ?1",
                [mb.id],
            )?;
            l.conn
                .execute("DELETE FROM mailboxes WHERE id = ?1", [mb.id])?;
            Ok(())
        })
    }

    /// Renames a folder the user made. Its UIDVALIDITY changes, as RFC 3501
    /// requires when a name comes to mean a different folder.
    pub fn rename_mailbox(&mut self, from: &str, to: &str) -> Result<()> {
        valid_name(to)?;
        let mb = self
            .mailbox(from)?
            .ok_or_else(|| ClientError::Invalid(format!("no folder '{from}'")))?;
        if STANDARD.iter().any(|(n, _)| *n == mb.name) {
            return Err(ClientError::Invalid(format!(
                "'{}' cannot be renamed",
                mb.name
            )));
        }
        if self.mailbox(to)?.is_some() {
            return Err(ClientError::Invalid(format!(
                "folder '{to}' already exists"
            )));
        }
        let v = new_uidvalidity(&self.local.conn)?;
        self.local.conn.execute(
            "UPDATE mailboxes SET name = ?2, uidvalidity = ?3 WHERE id = ?1",
            params![mb.id, to, v],
        )?;
        Ok(())
    }

    /// Copies messages (by UID) into another folder; returns (old, new) UID pairs.
    pub fn copy_messages(&mut self, from: i64, uids: &[u32], to: i64) -> Result<Vec<(u32, u32)>> {
        self.local.atomically(|l| {
            let mut pairs = Vec::new();
            for uid in uids {
                let row: Option<(i64, String)> = l
                    .conn
                    .query_row(
                        "SELECT message_id, flags FROM mailbox_messages WHERE mailbox_id = ?1 AND uid = ?2",
                        params![from, *uid as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((message, flags)) = row {
                    let new_uid = next_uid(l, to)?;
                    l.conn.execute(
                        "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags) VALUES (?1, ?2, ?3, ?4)",
                        params![to, new_uid as i64, message, flags],
                    )?;
                    pairs.push((*uid, new_uid));
                }
            }
            Ok(pairs)
        })
    }

    /// Removes messages (by UID) from a folder. The mail stays in the store.
    pub fn remove_messages(&mut self, mailbox: i64, uids: &[u32]) -> Result<()> {
        self.local.atomically(|l| {
            for uid in uids {
                l.conn.execute(
                    "DELETE FROM mailbox_messages WHERE mailbox_id = ?1 AND uid = ?2",
                    params![mailbox, *uid as i64],
                )?;
            }
            Ok(())
        })
    }

    /// Stores a message a mail client APPENDs and files it; returns its UID.
    /// A message appended to Sent that was sent from this device (same
    /// Message-ID) is the copy the client keeps after SMTP: it is not shown twice.
    pub fn append_message(&mut self, mailbox: i64, raw: Vec<u8>, flags: &[String]) -> Result<u32> {
        let special: Option<String> = self.local.conn.query_row(
            "SELECT special_use FROM mailboxes WHERE id = ?1",
            [mailbox],
            |r| r.get(0),
        )?;
        let parsed = mail::parse(&raw[..raw.len().min(mail::HEAD_LIMIT)])?;
        if special.as_deref() == Some("\\Sent")
            && let Some(mid) = &parsed.message_id
        {
            let known: Option<u32> = self
                    .local
                    .conn
                    .query_row(
                        "SELECT mm.uid FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id \
                         WHERE mm.mailbox_id = ?1 AND m.message_id = ?2 AND m.outgoing = 1 LIMIT 1",
                        params![mailbox, mid],
                        |r| r.get::<_, i64>(0).map(|u| u as u32),
                    )
                    .optional()?;
            if let Some(uid) = known {
                return Ok(uid);
            }
        }
        let body = crate::Body::Inline(raw);
        let flags = flags_text(flags);
        self.local.atomically(|l| {
            // A local message: no conversation, never on the server.
            let id = store_message(l, &GroupId(String::new()), None, false, &parsed, &body)?;
            let uid = next_uid(l, mailbox)?;
            l.conn.execute(
                "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags) VALUES (?1, ?2, ?3, ?4)",
                params![mailbox, uid as i64, id, flags],
            )?;
            Ok(uid)
        })
    }
}

/// Whether Sent holds a copy a mail client appended (not one this device
/// sent) with this Message-ID.
fn client_copy_in_sent(l: &crate::local::LocalStore, message_id: Option<&str>) -> Result<bool> {
    let Some(message_id) = message_id else {
        return Ok(false);
    };
    Ok(l.conn
        .prepare_cached(
            "SELECT 1 FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id \
             JOIN mailboxes b ON b.id = mm.mailbox_id \
             WHERE b.special_use = '\\Sent' AND m.message_id = ?1 AND m.outgoing = 0 LIMIT 1",
        )?
        .query_row([message_id], |_| Ok(()))
        .optional()?
        .is_some())
}

fn canonical(name: &str) -> &str {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name
    }
}

fn mailbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Mailbox> {
    Ok(Mailbox {
        id: r.get(0)?,
        name: r.get(1)?,
        special_use: r.get(2)?,
        uidvalidity: r.get::<_, i64>(3)? as u32,
        uidnext: r.get::<_, i64>(4)? as u32,
        subscribed: r.get::<_, i64>(5)? != 0,
    })
}

/// UIDVALIDITY values only grow: the clock, or one past the largest given.
fn new_uidvalidity(conn: &rusqlite::Connection) -> Result<i64> {
    let max: Option<i64> =
        conn.query_row("SELECT MAX(uidvalidity) FROM mailboxes", [], |r| r.get(0))?;
    Ok((crate::now() & 0x7fff_ffff).max(max.unwrap_or(0) + 1))
}

fn next_uid(l: &crate::local::LocalStore, mailbox: i64) -> Result<u32> {
    let uid: i64 = l
        .conn
        .prepare_cached(
            "UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?1 RETURNING uidnext - 1",
        )?
        .query_row([mailbox], |r| r.get(0))?;
    Ok(uid as u32)
}

fn file_into(l: &crate::local::LocalStore, folder: &str, message: i64, flags: &str) -> Result<u32> {
    let mailbox: i64 =
        l.conn
            .query_row("SELECT id FROM mailboxes WHERE name = ?1", [folder], |r| {
                r.get(0)
            })?;
    let uid = next_uid(l, mailbox)?;
    l.conn.prepare_cached("INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![mailbox, uid as i64, message, flags])?;
    Ok(uid)
}
