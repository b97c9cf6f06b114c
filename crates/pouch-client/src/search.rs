//! The local full-text index (`pouch search`), over decrypted mail.
//!
//! It is an SQLite FTS5 table inside the device's SQLCipher database, so it
//! is encrypted at rest with everything else: a copy of the device's
//! directory reveals no indexed word without the passphrase. Messages are
//! indexed as they are filed; large mail by its first 256 KiB (the head the
//! store already keeps at hand), which covers the text of any real message.

use crate::error::Result;
use crate::{Device, MessageSummary};
use rusqlite::params;

/// The words of a user's query as an FTS5 query: every word must occur
/// (as a word or the start of one); no FTS syntax reaches the engine.
fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Messages indexed per transaction (bounds the memory one transaction
/// holds when a large mailbox is indexed for the first time).
const INDEX_BATCH: usize = 200;

/// What the index keeps of one message.
struct IndexRow {
    subject: String,
    people: String,
    body: String,
    attachments: String,
}

/// The indexed fields of a message's head; `None` when it does not parse.
fn index_row(head: &[u8]) -> Option<IndexRow> {
    let msg = mail_parser::MessageParser::default().parse(head)?;
    let people: Vec<String> = [msg.from(), msg.to(), msg.cc()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .map(|a| {
            format!(
                "{} {}",
                a.name.as_deref().unwrap_or_default(),
                a.address.as_deref().unwrap_or_default()
            )
        })
        .collect();
    let body: String = (0..msg.text_body.len())
        .filter_map(|i| msg.body_text(i))
        .collect::<Vec<_>>()
        .join("\n");
    let attachments: Vec<String> = msg
        .attachments()
        .filter_map(|a| mail_parser::MimeHeaders::attachment_name(a).map(str::to_string))
        .collect();
    Some(IndexRow {
        subject: msg.subject().unwrap_or_default().to_string(),
        people: people.join(", "),
        body,
        attachments: attachments.join(" "),
    })
}

impl Device {
    /// Indexes every message not indexed yet; returns how many.
    ///
    /// A batch of messages goes into one transaction: FTS5 writes a segment
    /// and SQLCipher encrypts every dirty page at each commit, so one
    /// commit per message cost more than the indexing itself (a fifth of a
    /// busy bridge's device thread). The batch's position is committed with
    /// it, so an interrupted batch is simply indexed again.
    pub fn update_search_index(&mut self) -> Result<usize> {
        let mut indexed = 0;
        loop {
            let n = self.index_batch()?;
            indexed += n;
            if n < INDEX_BATCH {
                return Ok(indexed);
            }
        }
    }

    /// Indexes up to [`INDEX_BATCH`] messages in one transaction.
    fn index_batch(&mut self) -> Result<usize> {
        let done: i64 = self
            .local
            .meta("search_indexed_up_to")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ids: Vec<i64> = {
            let mut stmt = self
                .local
                .conn
                .prepare_cached("SELECT id FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            stmt.query_map(params![done, INDEX_BATCH as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let Some(&last) = ids.last() else {
            return Ok(0);
        };
        let mut rows = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(row) = index_row(&self.head(*id)?) {
                rows.push((*id, row));
            }
        }
        self.local.atomically(|l| {
            let mut insert = l.conn.prepare_cached(
                "INSERT OR REPLACE INTO search_index (rowid, subject, people, body, attachments) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, r) in &rows {
                insert.execute(params![id, r.subject, r.people, r.body, r.attachments])?;
            }
            l.set_meta("search_indexed_up_to", &last.to_string())
        })?;
        Ok(ids.len())
    }

    /// Messages matching every word of `query` (subject, people, text,
    /// attachment names), best first.
    pub fn search(&mut self, query: &str) -> Result<Vec<MessageSummary>> {
        self.update_search_index()?;
        let Some(q) = fts_query(query) else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = {
            let mut stmt = self.local.conn.prepare(
                "SELECT rowid FROM search_index WHERE search_index MATCH ?1 ORDER BY rank LIMIT 500",
            )?;
            stmt.query_map([q], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        ids.into_iter().map(|id| self.summary(id)).collect()
    }

    /// Messages labelled `label` (its classification, and at least its
    /// category values), matching every word of `query` when it has any;
    /// read with the label policy this device last verified (no network).
    pub fn search_labelled(&mut self, query: &str, label: &str) -> Result<Vec<MessageSummary>> {
        let policy = crate::labels::stored_policy(&self.local)?.ok_or_else(|| {
            crate::error::ClientError::Label(
                "this device knows no label policy yet: run 'pouch sync' first".into(),
            )
        })?;
        let wanted = policy
            .parse(label, crate::now())
            .map_err(|e| crate::error::ClientError::Label(e.to_string()))?;
        let candidates = if fts_query(query).is_some() {
            self.search(query)?
        } else {
            self.list_all()?
        };
        Ok(candidates
            .into_iter()
            .filter(|m| {
                let Some(found) = m.label.as_deref().and_then(|x| policy.read_xml(x).ok()) else {
                    return false;
                };
                found.classification == wanted.classification
                    && wanted.categories.iter().all(|(tag, values)| {
                        found
                            .categories
                            .get(tag)
                            .is_some_and(|have| values.is_subset(have))
                    })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_words_only() {
        assert_eq!(
            super::fts_query("treaty draft").unwrap(),
            "\"treaty\"* \"draft\"*"
        );
        assert_eq!(
            super::fts_query("a\" OR x:*").unwrap(),
            "\"a\"* \"OR\"* \"x\"*"
        );
        assert!(super::fts_query("  \"*  ").is_none());
    }
}
