//! What a receiver checks before it believes anything the server delivers.
//!
//! The server is trusted for availability only. MLS proves that a message
//! comes from a member of the group; it does not prove that the member is who
//! its credential says. A hostile server (or a modified client) can present a
//! Welcome or commit whose leaves carry any address and any key. So, before a
//! Welcome is joined, a commit merged or a message stored, every member device
//! must be one its account signed for:
//!
//! - its credential names an address, and that address's verified device
//!   list (chain of signatures, pinned account key, inclusion in the
//!   transparency log — see `devices::trusted_list`) names the device's
//!   signature key under the account key this device has pinned;
//! - a member whose account key changed since pinning holds the item back
//!   until the user accepts the new key (`pouch verify ADDRESS --accept`);
//! - anything else is rejected and reported as a forged sender.
//!
//! And every application message carries its sender's [`ChainLink`]: a
//! counter per conversation and sending device with the hash of the previous
//! envelope, so that a message the server withheld, reordered or swapped shows
//! as a gap, a late arrival or a fork.
//!
//! Everything here works on the local store inside the caller's transaction
//! and does no network I/O: when a list must be fetched, the caller is told
//! which ([`Authentication::NeedLists`]), rolls back, fetches, and tries again.

use crate::error::{ClientError, Result};
use crate::local::LocalStore;
use pouch_proto::envelope::ChainLink;
use pouch_proto::{Address, GroupId};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What fetching an address's device list found, for the retry.
#[derive(Clone, Debug)]
pub(crate) enum ListOutcome {
    /// Verified; its keys are in `verified_keys`.
    Verified,
    /// The account key differs from the pinned one.
    KeyChanged,
    /// The list could not be trusted (not enrolled, broken chain, rollback…).
    Untrusted(String),
}

/// Lists fetched during the processing of one queue item.
pub(crate) type Fetched = BTreeMap<Address, ListOutcome>;

pub(crate) enum Authentication {
    /// Every member is on its account's signed list.
    Verified,
    /// These addresses' lists must be fetched first.
    NeedLists(Vec<Address>),
}

/// The account key this device has pinned for `address` (its own for itself).
fn pinned_key(l: &LocalStore, address: &Address) -> Result<Option<Vec<u8>>> {
    if l.require_meta("address")? == address.as_str() {
        if let Some(k) = l.account_key()? {
            return Ok(Some(k.public()));
        }
        // A newly linked device learns its account key over MLS; until then
        // it trusts the list that names this very device.
        return Ok(l
            .meta("expected_account_key")?
            .and_then(|h| hex::decode(h).ok()));
    }
    Ok(l.conn
        .prepare_cached("SELECT account_key FROM contacts WHERE address = ?1")?
        .query_row([address.as_str()], |r| r.get(0))
        .optional()?)
}

/// Records the devices verified on `address`'s lists signed by
/// `account_key`: every version's (`all`), and which of them the newest
/// version names (`current`).
pub(crate) fn remember_verified(
    l: &LocalStore,
    address: &Address,
    account_key: &[u8],
    all: &[Vec<u8>],
    current: &[Vec<u8>],
) -> Result<()> {
    l.conn.execute(
        "UPDATE verified_keys SET current = 0 WHERE address = ?1",
        [address.as_str()],
    )?;
    let mut stmt = l.conn.prepare_cached(
        "INSERT INTO verified_keys (address, signature_key, account_key, current) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (address, signature_key, account_key) DO UPDATE SET current = excluded.current",
    )?;
    for k in all {
        stmt.execute(params![
            address.as_str(),
            k,
            account_key,
            current.contains(k)
        ])?;
    }
    for k in current.iter().filter(|k| !all.contains(k)) {
        stmt.execute(params![address.as_str(), k, account_key, true])?;
    }
    Ok(())
}

fn fingerprint(key: &[u8]) -> String {
    pouch_proto::devices::fingerprint(key)
}

/// How much a leaf must prove.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// It speaks now (sends, commits, adds): on the newest verified list,
    /// under the account key this device has pinned.
    Speaker,
    /// It sits in the group: on some list its account signed while this
    /// device trusted that account key (a device removed since, or one of
    /// an account reset and accepted since, may not have been removed yet).
    Member,
}

fn is_listed(l: &LocalStore, address: &Address, key: &[u8], role: Role) -> Result<bool> {
    let found = match role {
        Role::Member => l
            .conn
            .prepare_cached("SELECT 1 FROM verified_keys WHERE address = ?1 AND signature_key = ?2")?
            .query_row(params![address.as_str(), key], |_| Ok(()))
            .optional()?,
        Role::Speaker => match pinned_key(l, address)? {
            Some(account_key) => l
                .conn
                .prepare_cached(
                    "SELECT 1 FROM verified_keys WHERE address = ?1 AND signature_key = ?2 AND account_key = ?3 AND current = 1",
                )?
                .query_row(params![address.as_str(), key, account_key], |_| Ok(()))
                .optional()?,
            None => None,
        },
    };
    Ok(found.is_some())
}

/// Checks leaves (credential address, signature key) against the verified
/// lists, each as its role requires. `fetched` holds what was fetched for
/// this item; an address not fetched yet is asked for first.
pub(crate) fn authenticate(
    l: &LocalStore,
    leaves: &[(&pouch_mls::Leaf, Role)],
    fetched: &Fetched,
) -> Result<Authentication> {
    let mut need = Vec::new();
    for ((address, key), role) in leaves {
        let Some(address) = address else {
            return Err(ClientError::Security(format!(
                "a member device ({}) presents a credential that is not an address: forged",
                fingerprint(key)
            )));
        };
        if is_listed(l, address, key, *role)? {
            continue;
        }
        match fetched.get(address) {
            None => {
                if !need.contains(address) {
                    need.push(address.clone());
                }
            }
            Some(ListOutcome::KeyChanged) => {
                return Err(ClientError::AccountKeyChanged(address.to_string()));
            }
            Some(ListOutcome::Verified) => {
                return Err(ClientError::Security(format!(
                    "forged sender: a device ({}) claims to be {address}, but {}",
                    fingerprint(key),
                    if *role == Role::Speaker {
                        format!("{address}'s current device list does not name its key")
                    } else {
                        format!("no device list {address} signed names its key")
                    }
                )));
            }
            Some(ListOutcome::Untrusted(why)) => {
                return Err(ClientError::Security(format!(
                    "forged sender: a device ({}) claims to be {address}, whose device list cannot be trusted ({why})",
                    fingerprint(key)
                )));
            }
        }
    }
    Ok(if need.is_empty() {
        Authentication::Verified
    } else {
        Authentication::NeedLists(need)
    })
}

/// The roster as members, and `speaker` as the one who speaks.
pub(crate) fn roster_with<'a>(
    roster: &'a [pouch_mls::Leaf],
    speaker: &'a pouch_mls::Leaf,
) -> Vec<(&'a pouch_mls::Leaf, Role)> {
    std::iter::once((speaker, Role::Speaker))
        .chain(roster.iter().map(|m| (m, Role::Member)))
        .collect()
}

/// A finding to report: written in the item's transaction, so it is never
/// lost and never reported for an item that was rolled back.
pub(crate) fn record_finding(
    l: &LocalStore,
    kind: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    l.conn.execute(
        "INSERT INTO findings (kind, detail) VALUES (?1, ?2)",
        params![kind, detail],
    )?;
    l.notice(subject, detail)?;
    Ok(())
}

/// Findings not yet reported, oldest first.
pub(crate) fn take_findings(l: &LocalStore) -> Result<Vec<(i64, String, String)>> {
    let mut stmt = l
        .conn
        .prepare("SELECT id, kind, detail FROM findings ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn drop_finding(l: &LocalStore, id: i64) -> Result<()> {
    l.conn.execute("DELETE FROM findings WHERE id = ?1", [id])?;
    Ok(())
}

/// Notes the epoch at which this device entered a conversation. Entering
/// again (removed, then added back) starts every sender's count afresh.
pub(crate) fn note_joined(l: &LocalStore, group: &GroupId, epoch: u64) -> Result<()> {
    l.conn.execute(
        "INSERT OR REPLACE INTO joined (group_id, epoch) VALUES (?1, ?2)",
        params![group.0, epoch as i64],
    )?;
    l.conn
        .execute("DELETE FROM recv_chain WHERE group_id = ?1", [&group.0])?;
    Ok(())
}

pub(crate) fn envelope_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// This device's next link in `group` (not yet consumed).
pub(crate) fn next_link(l: &LocalStore, group: &GroupId) -> Result<ChainLink> {
    let last: Option<(i64, String)> = l
        .conn
        .query_row(
            "SELECT n, hash FROM send_chain WHERE group_id = ?1",
            [&group.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (n, prev) = last.unwrap_or((0, String::new()));
    Ok(ChainLink {
        n: n as u64 + 1,
        prev,
    })
}

/// Consumes a link: the envelope with these bytes is this device's `n`-th
/// in `group`. Done before the envelope is handed to the server, so a crash
/// in between shows receivers a gap (reported), never two different
/// envelopes with one number.
pub(crate) fn consume_link(l: &LocalStore, group: &GroupId, n: u64, hash: &str) -> Result<()> {
    l.conn.execute(
        "INSERT INTO send_chain (group_id, n, hash) VALUES (?1, ?2, ?3) \
         ON CONFLICT (group_id) DO UPDATE SET n = excluded.n, hash = excluded.hash",
        params![group.0, n as i64, hash],
    )?;
    Ok(())
}

/// Gives a link back after the server definitely refused the envelope.
pub(crate) fn restore_link(l: &LocalStore, group: &GroupId, previous: &ChainLink) -> Result<()> {
    if previous.n <= 1 {
        l.conn
            .execute("DELETE FROM send_chain WHERE group_id = ?1", [&group.0])?;
        Ok(())
    } else {
        consume_link(l, group, previous.n - 1, &previous.prev)
    }
}

/// Checks a received envelope's link against what this device saw before
/// from the same sending device, records it, and reports a gap (withheld
/// mail), a late arrival (reordered) or a fork. A late message is still
/// stored: MLS proved it genuine and unique; only its delay is reported.
pub(crate) fn check_link(
    l: &LocalStore,
    group: &GroupId,
    sender: &Address,
    sender_key: &[u8],
    link: Option<&ChainLink>,
    hash: &str,
) -> Result<()> {
    let link = link.ok_or_else(|| {
        ClientError::Security(format!(
            "a message from {sender} carries no sequence number: it was not made by a Pouch that protects against withheld mail"
        ))
    })?;
    if link.n == 0 {
        return Err(ClientError::Security(format!(
            "a message from {sender} has sequence number 0"
        )));
    }
    let last: Option<(i64, String)> = l
        .conn
        .prepare_cached("SELECT n, hash FROM recv_chain WHERE group_id = ?1 AND sender_key = ?2")?
        .query_row(params![group.0, sender_key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // A device that was in the conversation from its first epoch has seen
    // every sender from their first message on; a later joiner starts from
    // the first message it sees.
    let from_start = l
        .conn
        .prepare_cached("SELECT epoch FROM joined WHERE group_id = ?1")?
        .query_row([&group.0], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|e| e <= 1);
    let last = match last {
        Some((n, h)) => Some((n as u64, h)),
        None if from_start => Some((0, String::new())),
        None => None,
    };
    let who = format!("{sender} (device {})", fingerprint(sender_key));
    let mut advance = true;
    if let Some((last_n, last_hash)) = last {
        if link.n == last_n + 1 && link.prev != last_hash {
            record_finding(
                l,
                "sender_fork",
                "ALERT: two different histories from one sender",
                &format!(
                    "In conversation {}, message {} from {who} follows a message {n} this device never received: a copy of that sender's device may be sending as well, or the server swapped messages. Tell your security team.",
                    group.0,
                    link.n,
                    n = last_n
                ),
            )?;
        } else if link.n > last_n + 1 {
            let missing = if link.n == last_n + 2 {
                format!("message {}", last_n + 1)
            } else {
                format!("messages {} to {}", last_n + 1, link.n - 1)
            };
            record_finding(
                l,
                "mail_withheld",
                "ALERT: mail was withheld from you",
                &format!(
                    "In conversation {}, {missing} from {who} never arrived before message {}: the server withheld, dropped or delayed them. Tell your security team.",
                    group.0, link.n
                ),
            )?;
        } else if link.n <= last_n {
            advance = false;
            record_finding(
                l,
                "mail_withheld",
                "ALERT: mail arrived out of order",
                &format!(
                    "In conversation {}, message {} from {who} arrived after message {last_n}: the server delayed it. It is shown now.",
                    group.0, link.n
                ),
            )?;
        }
    }
    if advance {
        l.conn
            .prepare_cached(
                "INSERT INTO recv_chain (group_id, sender_key, n, hash) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (group_id, sender_key) DO UPDATE SET n = excluded.n, hash = excluded.hash",
            )?
            .execute(params![group.0, sender_key, link.n as i64, hash])?;
    }
    Ok(())
}
