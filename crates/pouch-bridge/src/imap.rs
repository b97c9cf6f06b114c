//! IMAP4rev1 for local mail clients. Commands are parsed by imap-codec
//! (literals, LITERAL+, every command's grammar); responses are written
//! here, with every string that is not a plain atom sent as a literal or a
//! quoted string, so that no message byte is ever re-encoded.
//!
//! Folders, UIDs and flags are the device's ([`pouch_client::mailboxes`]);
//! message bytes are served exactly as stored, and RFC822.SIZE is their length.
//! Sessions learn of each other's changes (and of new mail found by the
//! sync loop) through a broadcast, and tell their client on NOOP, CHECK and
//! during IDLE — never in the middle of a FETCH, STORE or SEARCH.

use crate::Shared;
use crate::tls::Conn;
use base64::Engine;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use pouch_client::mailboxes::Entry;
use pouch_mail_proto::imap::pattern::matches;
use pouch_mail_proto::imap::render::{
    body_structure, envelope, header_end, header_fields, imap_date, section_bytes, section_name,
    string,
};
use pouch_mail_proto::imap::sequence::{in_ranges, set_ranges};
use pouch_mail_proto::imap::{CommandReceiver, MAX_LINE, PRE_LOGIN_MAX, Received};
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAPABILITIES: &str =
    "IMAP4rev1 IDLE UIDPLUS MOVE UNSELECT ID NAMESPACE LITERAL+ SPECIAL-USE AUTH=PLAIN";
/// The folder a session has selected, as its client knows it.
struct Selected {
    id: i64,
    read_only: bool,
    /// UIDs in sequence-number order, with the flags the client was told.
    known: Vec<(u32, Vec<String>)>,
}

impl Selected {
    /// Drops the messages whose UID `gone` picks; returns the EXPUNGE lines,
    /// from the highest sequence number down, so that the numbers stay right.
    fn forget(&mut self, gone: impl Fn(u32) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        for i in (0..self.known.len()).rev() {
            if gone(self.known[i].0) {
                lines.push(format!("{} EXPUNGE", i + 1));
                self.known.remove(i);
            }
        }
        lines
    }
}

struct Session {
    shared: Shared,
    /// Offered until the connection is encrypted (STARTTLS mode).
    starttls: Option<Arc<rustls::ServerConfig>>,
    tls_on: bool,
    out: Vec<u8>,
    authenticated: bool,
    auth_failures: u32,
    selected: Option<Selected>,
    logout: bool,
    /// Before login the whole session has one deadline (not one per read):
    /// a stranger cannot hold a slot by sending a NOOP now and then.
    login_deadline: std::time::Instant,
}

// ---------- writing ----------

/// A string as IMAP wants it: quoted when it is short plain ASCII, a literal otherwise.
fn flag_list(flags: &[String]) -> String {
    format!("({})", flags.join(" "))
}

fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

fn list_pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

// ---------- search ----------

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

struct Candidate<'a> {
    seq: u32,
    largest_seq: u32,
    entry: &'a Entry,
    largest_uid: u32,
    raw: &'a [u8],
}

fn in_set(set: &SequenceSet, n: u32, largest: u32) -> bool {
    NonZeroU32::new(largest).is_some_and(|largest| in_ranges(&set_ranges(set, largest), n))
}

fn has(c: &Candidate<'_>, flag: &str) -> bool {
    c.entry.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn date_of(ts: i64) -> chrono_like::Date {
    chrono_like::Date::from_unix(ts)
}

/// Just enough calendar for SINCE/BEFORE/ON (UTC days).
mod chrono_like {
    #[derive(PartialEq, PartialOrd, Clone, Copy)]
    pub struct Date(pub i64);
    impl Date {
        pub fn from_unix(ts: i64) -> Date {
            Date(ts.div_euclid(86_400))
        }
        pub fn from_ymd(y: i32, m: u32, d: u32) -> Date {
            // Days since 1970-01-01.
            let y = i64::from(y) - i64::from(m <= 2);
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let m = i64::from(m);
            let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            Date(era * 146_097 + doe - 719_468)
        }
    }
}

fn naive(d: &imap_codec::imap_types::datetime::NaiveDate) -> chrono_like::Date {
    use chrono::Datelike;
    let d: &chrono::NaiveDate = d.as_ref();
    chrono_like::Date::from_ymd(d.year(), d.month(), d.day())
}

fn matches_key(c: &Candidate<'_>, key: &SearchKey<'_>) -> bool {
    let text = |a: &imap_codec::imap_types::core::AString<'_>| a.as_ref().to_vec();
    let header = |name: &str, value: &[u8]| {
        let head = &c.raw[..header_end(c.raw)];
        let fields = header_fields(head, &[name.to_string()], true);
        fields.len() > 2 && contains_ci(&fields[name.len().min(fields.len())..], value)
    };
    match key {
        SearchKey::All => true,
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches_key(c, k)),
        SearchKey::Or(a, b) => matches_key(c, a) || matches_key(c, b),
        SearchKey::Not(k) => !matches_key(c, k),
        SearchKey::SequenceSet(s) => in_set(s, c.seq, c.largest_seq),
        SearchKey::Uid(s) => in_set(s, c.entry.uid, c.largest_uid),
        SearchKey::Answered => has(c, "\\Answered"),
        SearchKey::Unanswered => !has(c, "\\Answered"),
        SearchKey::Deleted => has(c, "\\Deleted"),
        SearchKey::Undeleted => !has(c, "\\Deleted"),
        SearchKey::Draft => has(c, "\\Draft"),
        SearchKey::Undraft => !has(c, "\\Draft"),
        SearchKey::Flagged => has(c, "\\Flagged"),
        SearchKey::Unflagged => !has(c, "\\Flagged"),
        SearchKey::Seen => has(c, "\\Seen"),
        SearchKey::Unseen => !has(c, "\\Seen"),
        SearchKey::New | SearchKey::Recent => false,
        SearchKey::Old => true,
        SearchKey::Keyword(k) => has(c, k.as_ref()),
        SearchKey::Unkeyword(k) => !has(c, k.as_ref()),
        SearchKey::Larger(n) => c.entry.size > u64::from(*n),
        SearchKey::Smaller(n) => c.entry.size < u64::from(*n),
        SearchKey::Subject(s) => header("Subject", &text(s)),
        SearchKey::From(s) => header("From", &text(s)),
        SearchKey::To(s) => header("To", &text(s)),
        SearchKey::Cc(s) => header("Cc", &text(s)),
        SearchKey::Bcc(s) => header("Bcc", &text(s)),
        SearchKey::Header(name, value) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            header(&name, &text(value))
        }
        SearchKey::Body(s) => contains_ci(&c.raw[header_end(c.raw)..], &text(s)),
        SearchKey::Text(s) => contains_ci(c.raw, &text(s)),
        SearchKey::Since(d) => date_of(c.entry.stored_at) >= naive(d),
        SearchKey::Before(d) => date_of(c.entry.stored_at) < naive(d),
        SearchKey::On(d) => date_of(c.entry.stored_at) == naive(d),
        SearchKey::SentSince(d) => date_of(c.entry.stored_at) >= naive(d),
        SearchKey::SentBefore(d) => date_of(c.entry.stored_at) < naive(d),
        SearchKey::SentOn(d) => date_of(c.entry.stored_at) == naive(d),
    }
}

// ---------- the session ----------

impl Session {
    /// In STARTTLS mode nothing secret is accepted before TLS (RFC 3501 §6.2).
    fn login_disabled(&self) -> bool {
        self.starttls.is_some() && !self.tls_on
    }

    fn capabilities(&self) -> String {
        if self.login_disabled() {
            CAPABILITIES.replace("AUTH=PLAIN", "STARTTLS LOGINDISABLED")
        } else {
            CAPABILITIES.to_string()
        }
    }

    fn untagged(&mut self, line: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn tagged(&mut self, tag: &str, status: &str, text: &str) {
        let text = text.replace(['\r', '\n'], " ");
        self.out
            .extend_from_slice(format!("{tag} {status} {text}\r\n").as_bytes());
    }

    async fn login(&mut self, tag: &str, user: &[u8], password: String) {
        if self.shared.check_login(user, password).await {
            self.authenticated = true;
            let caps = self.capabilities();
            self.tagged(tag, "OK", &format!("[CAPABILITY {caps}] Logged in"));
        } else {
            self.auth_failures += 1;
            tracing::warn!("IMAP login refused");
            self.tagged(
                tag,
                "NO",
                "[AUTHENTICATIONFAILED] Use your Pouch address and the bridge password ('pouch bridge --show-password')",
            );
            if self.auth_failures >= 3 {
                self.untagged("BYE Too many failed logins");
                self.logout = true;
            }
        }
    }

    async fn plain(&mut self, tag: &str, response: &[u8]) {
        // authzid NUL authcid NUL passwd
        let mut it = response.split(|&b| b == 0);
        let (_, user, pass) = (it.next(), it.next(), it.next());
        match (user, pass) {
            (Some(u), Some(p)) => {
                let p = String::from_utf8_lossy(p).into_owned();
                self.login(tag, u, p).await
            }
            _ => self.tagged(tag, "BAD", "Cannot decode the AUTHENTICATE PLAIN response"),
        }
    }

    /// New, changed and removed messages of the selected folder since the client was last told.
    async fn updates(&mut self) {
        let Some(sel) = &self.selected else { return };
        let id = sel.id;
        let now = match self.shared.with(move |d| d.entries(id)).await {
            Ok(e) => e,
            Err(_) => return,
        };
        let sel = self.selected.as_mut().expect("checked above");
        let mut lines = sel.forget(|uid| !now.iter().any(|e| e.uid == uid));
        for (i, (uid, flags)) in sel.known.iter_mut().enumerate() {
            if let Some(e) = now.iter().find(|e| e.uid == *uid)
                && &e.flags != flags
            {
                *flags = e.flags.clone();
                lines.push(format!(
                    "{} FETCH (UID {uid} FLAGS {})",
                    i + 1,
                    flag_list(flags)
                ));
            }
        }
        let last = sel.known.last().map(|k| k.0).unwrap_or(0);
        let added: Vec<(u32, Vec<String>)> = now
            .iter()
            .filter(|e| e.uid > last)
            .map(|e| (e.uid, e.flags.clone()))
            .collect();
        if !added.is_empty() {
            sel.known.extend(added);
            lines.push(format!("{} EXISTS", sel.known.len()));
        }
        for l in lines {
            self.untagged(&l);
        }
    }

    async fn select(&mut self, tag: &str, name: String, read_only: bool) {
        self.selected = None;
        let n = name.clone();
        let found = self
            .shared
            .with(move |d| {
                let mb = d.mailbox(&n)?;
                match mb {
                    Some(mb) => {
                        let entries = d.entries(mb.id)?;
                        Ok::<_, pouch_client::ClientError>(Some((mb, entries)))
                    }
                    None => Ok(None),
                }
            })
            .await;
        let Ok(Some((mb, entries))) = found else {
            self.tagged(tag, "NO", &format!("[NONEXISTENT] No folder {name}"));
            return;
        };
        self.untagged("FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)");
        self.untagged("OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted");
        self.untagged(&format!("{} EXISTS", entries.len()));
        self.untagged("0 RECENT");
        if let Some(i) = entries
            .iter()
            .position(|e| !e.flags.iter().any(|f| f == "\\Seen"))
        {
            self.untagged(&format!("OK [UNSEEN {}] First unseen", i + 1));
        }
        self.untagged(&format!("OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        self.untagged(&format!("OK [UIDNEXT {}] Predicted next UID", mb.uidnext));
        self.selected = Some(Selected {
            id: mb.id,
            read_only,
            known: entries.iter().map(|e| (e.uid, e.flags.clone())).collect(),
        });
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        self.tagged(tag, "OK", &format!("[{mode}] Selected"));
    }

    /// (sequence number, UID) pairs a set names, by sequence number or UID.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let Some(sel) = &self.selected else {
            return Vec::new();
        };
        let largest = if uid {
            sel.known.last().map(|k| k.0).unwrap_or(0)
        } else {
            sel.known.len() as u32
        };
        let Some(largest) = NonZeroU32::new(largest) else {
            return Vec::new();
        };
        let ranges = set_ranges(set, largest);
        sel.known
            .iter()
            .enumerate()
            .map(|(i, (u, _))| (i as u32 + 1, *u))
            .filter(|(s, u)| in_ranges(&ranges, if uid { *u } else { *s }))
            .collect()
    }

    async fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
    ) {
        let mut names: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => {
                let mut v = vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ];
                if matches!(m, Macro::All | Macro::Full) {
                    v.push(MessageDataItemName::Envelope);
                }
                v
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        // The UID first, always (Thunderbird relies on it).
        names.retain(|n| !matches!(n, MessageDataItemName::Uid));
        let targets = self.resolve(set, uid);
        let Some(sel) = &self.selected else {
            self.tagged(tag, "BAD", "Select a folder first");
            return;
        };
        let (mailbox, read_only) = (sel.id, sel.read_only);
        let marks_seen = !read_only
            && names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let needs_bytes = names.iter().any(|n| {
            !matches!(
                n,
                MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
            )
        });
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let (lo, hi) = (
            uids.iter().copied().min().unwrap_or(1),
            uids.iter().copied().max().unwrap_or(0),
        );
        let loaded = self
            .shared
            .with(move |d| {
                let entries = d.entries_between(mailbox, lo, hi)?;
                let mut out = Vec::new();
                for e in entries.into_iter().filter(|e| uids.contains(&e.uid)) {
                    let mut e = e;
                    if marks_seen && !e.flags.iter().any(|f| f == "\\Seen") {
                        e.flags.push("\\Seen".into());
                        e.flags.sort();
                        d.set_flags(mailbox, e.uid, &e.flags)?;
                    }
                    let raw = if needs_bytes {
                        d.raw(e.message)?
                    } else {
                        Vec::new()
                    };
                    out.push((e, raw));
                }
                Ok::<_, pouch_client::ClientError>(out)
            })
            .await;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.tagged(tag, "NO", &format!("Cannot read the messages: {e}"));
                return;
            }
        };
        for (seq, uid_) in targets {
            let Some((e, raw)) = loaded.iter().find(|(e, _)| e.uid == uid_) else {
                continue;
            };
            let mut o = format!("* {seq} FETCH (UID {uid_}").into_bytes();
            for n in &names {
                o.push(b' ');
                match n {
                    MessageDataItemName::Flags => {
                        o.extend_from_slice(format!("FLAGS {}", flag_list(&e.flags)).as_bytes())
                    }
                    MessageDataItemName::InternalDate => o.extend_from_slice(
                        format!("INTERNALDATE \"{}\"", imap_date(e.stored_at)).as_bytes(),
                    ),
                    MessageDataItemName::Rfc822Size => {
                        o.extend_from_slice(format!("RFC822.SIZE {}", e.size).as_bytes())
                    }
                    MessageDataItemName::Envelope => envelope(&mut o, raw),
                    MessageDataItemName::BodyStructure => {
                        o.extend_from_slice(b"BODYSTRUCTURE ");
                        body_structure(&mut o, raw, true);
                    }
                    MessageDataItemName::Body => {
                        o.extend_from_slice(b"BODY ");
                        body_structure(&mut o, raw, false);
                    }
                    MessageDataItemName::Rfc822 => {
                        o.extend_from_slice(b"RFC822 ");
                        string(&mut o, raw);
                    }
                    MessageDataItemName::Rfc822Header => {
                        o.extend_from_slice(b"RFC822.HEADER ");
                        string(&mut o, &raw[..header_end(raw)]);
                    }
                    MessageDataItemName::Rfc822Text => {
                        o.extend_from_slice(b"RFC822.TEXT ");
                        string(&mut o, &raw[header_end(raw)..]);
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let bytes = section_bytes(raw, section);
                        o.extend_from_slice(format!("BODY[{}]", section_name(section)).as_bytes());
                        match partial {
                            Some((origin, count)) => {
                                let start = (*origin as usize).min(bytes.len());
                                let end =
                                    start.saturating_add(count.get() as usize).min(bytes.len());
                                o.extend_from_slice(format!("<{origin}> ").as_bytes());
                                string(&mut o, &bytes[start..end]);
                            }
                            None => {
                                o.push(b' ');
                                string(&mut o, &bytes);
                            }
                        }
                    }
                    _ => {
                        o.pop();
                    }
                }
            }
            o.extend_from_slice(b")\r\n");
            self.out.extend_from_slice(&o);
            if let Some(sel) = self.selected.as_mut()
                && let Some(k) = sel.known.iter_mut().find(|k| k.0 == uid_)
            {
                k.1 = e.flags.clone();
            }
        }
        self.tagged(tag, "OK", "Fetch completed");
    }

    async fn store(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        kind: StoreType,
        silent: bool,
        flags: Vec<String>,
        uid: bool,
    ) {
        let targets = self.resolve(set, uid);
        let Some(sel) = &self.selected else {
            self.tagged(tag, "BAD", "Select a folder first");
            return;
        };
        if sel.read_only {
            self.tagged(tag, "NO", "The folder is read-only (EXAMINE)");
            return;
        }
        let mailbox = sel.id;
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let (lo, hi) = (
            uids.iter().copied().min().unwrap_or(1),
            uids.iter().copied().max().unwrap_or(0),
        );
        let result = self
            .shared
            .with(move |d| {
                let mut changed = Vec::new();
                for e in d
                    .entries_between(mailbox, lo, hi)?
                    .into_iter()
                    .filter(|e| uids.contains(&e.uid))
                {
                    let mut f = match kind {
                        StoreType::Replace => flags.clone(),
                        StoreType::Add => e.flags.iter().chain(&flags).cloned().collect(),
                        StoreType::Remove => e
                            .flags
                            .iter()
                            .filter(|x| !flags.iter().any(|r| r.eq_ignore_ascii_case(x)))
                            .cloned()
                            .collect(),
                    };
                    f.sort();
                    f.dedup();
                    d.set_flags(mailbox, e.uid, &f)?;
                    changed.push((e.uid, f));
                }
                Ok::<_, pouch_client::ClientError>(changed)
            })
            .await;
        match result {
            Ok(changed) => {
                for (seq, u) in targets {
                    if let Some((_, f)) = changed.iter().find(|c| c.0 == u) {
                        if let Some(sel) = self.selected.as_mut()
                            && let Some(k) = sel.known.iter_mut().find(|k| k.0 == u)
                        {
                            k.1 = f.clone();
                        }
                        if !silent {
                            self.untagged(&format!("{seq} FETCH (UID {u} FLAGS {})", flag_list(f)));
                        }
                    }
                }
                self.shared.changed();
                self.tagged(tag, "OK", "Store completed");
            }
            Err(e) => self.tagged(tag, "NO", &format!("Cannot store flags: {e}")),
        }
    }

    /// Removes the \Deleted messages (of `only`, when given) and tells the client.
    async fn expunge(&mut self, only: Option<Vec<u32>>) -> Result<(), String> {
        let Some(sel) = &self.selected else {
            return Err("Select a folder first".into());
        };
        if sel.read_only {
            return Err("The folder is read-only (EXAMINE)".into());
        }
        let mailbox = sel.id;
        let gone: Vec<u32> = sel
            .known
            .iter()
            .filter(|(u, f)| {
                f.iter().any(|x| x == "\\Deleted") && only.as_ref().is_none_or(|o| o.contains(u))
            })
            .map(|(u, _)| *u)
            .collect();
        let g = gone.clone();
        self.shared
            .with(move |d| d.remove_messages(mailbox, &g))
            .await
            .map_err(|e| e.to_string())?;
        let sel = self.selected.as_mut().expect("checked above");
        let lines = sel.forget(|uid| gone.contains(&uid));
        for l in lines {
            self.untagged(&l);
        }
        self.shared.changed();
        Ok(())
    }

    async fn copy(&mut self, tag: &str, set: &SequenceSet, to: String, uid: bool, moving: bool) {
        let targets = self.resolve(set, uid);
        let Some(sel) = &self.selected else {
            self.tagged(tag, "BAD", "Select a folder first");
            return;
        };
        let from = sel.id;
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let to_name = to.clone();
        let result = self
            .shared
            .with(move |d| {
                let dest = d.mailbox(&to_name)?.ok_or_else(|| {
                    pouch_client::ClientError::Invalid(format!("No folder {to_name}"))
                })?;
                let pairs = d.copy_messages(from, &uids, dest.id)?;
                Ok::<_, pouch_client::ClientError>((dest.uidvalidity, pairs))
            })
            .await;
        let (validity, pairs) = match result {
            Ok(r) => r,
            Err(e) => {
                self.tagged(tag, "NO", &format!("[TRYCREATE] {e}"));
                return;
            }
        };
        let join = |v: Vec<u32>| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let code = if pairs.is_empty() {
            String::new()
        } else {
            format!(
                "[COPYUID {validity} {} {}] ",
                join(pairs.iter().map(|p| p.0).collect()),
                join(pairs.iter().map(|p| p.1).collect())
            )
        };
        if moving {
            let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            if let Some(sel) = self.selected.as_mut() {
                for k in sel.known.iter_mut().filter(|k| moved.contains(&k.0)) {
                    k.1.push("\\Deleted".into());
                }
            }
            self.untagged(&format!("OK {code}Moved"));
            if let Err(e) = self.expunge(Some(moved)).await {
                self.tagged(tag, "NO", &e);
                return;
            }
            self.tagged(tag, "OK", "Move completed");
        } else {
            self.shared.changed();
            self.tagged(tag, "OK", &format!("{code}Copy completed"));
        }
    }

    async fn list(
        &mut self,
        t: &str,
        verb: &str,
        reference: &Mailbox<'_>,
        wildcard: &ListMailbox<'_>,
    ) {
        // The reference is a prefix for the pattern (RFC 3501 §6.3.8).
        let pattern = format!("{}{}", mailbox_name(reference), list_pattern(wildcard));
        if pattern.is_empty() {
            self.untagged(&format!("{verb} (\\Noselect) \"/\" \"\""));
            self.tagged(t, "OK", "List completed");
            return;
        }
        match self.shared.with(|d| d.mailboxes()).await {
            Ok(all) => {
                for mb in all {
                    if !matches(pattern.as_bytes(), mb.name.as_bytes()) {
                        continue;
                    }
                    let mut attrs = vec!["\\HasNoChildren".to_string()];
                    attrs.extend(mb.special_use.clone());
                    let mut line = format!("* {verb} ({}) \"/\" ", attrs.join(" ")).into_bytes();
                    string(&mut line, mb.name.as_bytes());
                    line.extend_from_slice(b"\r\n");
                    self.out.extend_from_slice(&line);
                }
                self.tagged(t, "OK", "List completed");
            }
            Err(e) => self.tagged(t, "NO", &e.to_string()),
        }
    }

    async fn handle(
        &mut self,
        command: Command<'_>,
        stream: &mut Conn,
        input: &mut CommandReceiver,
    ) {
        let tag = command.tag.as_ref().to_string();
        let t = tag.as_str();
        match command.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.untagged(&format!("CAPABILITY {caps}"));
                self.tagged(t, "OK", "Capability completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                self.updates().await;
                self.tagged(t, "OK", "Done");
            }
            CommandBody::Logout => {
                self.untagged("BYE Pouch bridge logging out");
                self.tagged(t, "OK", "Logout completed");
                self.logout = true;
            }
            #[allow(unreachable_patterns)]
            CommandBody::Id { .. } => {
                self.untagged(&format!(
                    "ID (\"name\" \"Pouch bridge\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                self.tagged(t, "OK", "ID completed");
            }
            CommandBody::StartTLS => match self.starttls.clone() {
                Some(config) if !self.tls_on => {
                    self.tagged(t, "OK", "Begin TLS negotiation now");
                    let _ = stream.write_all(&self.out).await;
                    self.out.clear();
                    // Nothing sent in the clear before the handshake may count after it.
                    input.clear();
                    if stream.start_tls(config).await.is_err() {
                        self.logout = true;
                        return;
                    }
                    self.tls_on = true;
                }
                _ => self.tagged(t, "BAD", "STARTTLS is not available here"),
            },
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
                if self.login_disabled() =>
            {
                self.tagged(t, "NO", "[PRIVACYREQUIRED] Run STARTTLS first")
            }
            CommandBody::Login { username, password } => {
                let p = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(t, username.as_ref(), p).await;
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if !mechanism.to_string().eq_ignore_ascii_case("PLAIN") {
                    self.tagged(t, "NO", "Use AUTHENTICATE PLAIN or LOGIN");
                    return;
                }
                let response = match initial_response {
                    Some(r) => r.declassify().to_vec(),
                    None => {
                        self.out.extend_from_slice(b"+ \r\n");
                        let _ = stream.write_all(&self.out).await;
                        self.out.clear();
                        let Some(line) = read_line(stream, input, self.login_deadline).await else {
                            self.logout = true;
                            return;
                        };
                        if line.trim() == "*" {
                            self.tagged(t, "BAD", "Authentication cancelled");
                            return;
                        }
                        base64::engine::general_purpose::STANDARD
                            .decode(line.trim())
                            .unwrap_or_default()
                    }
                };
                self.plain(t, &response).await;
            }
            _ if !self.authenticated => {
                self.tagged(t, "NO", "Log in first (LOGIN or AUTHENTICATE PLAIN)")
            }
            #[allow(unreachable_patterns)]
            CommandBody::Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.tagged(t, "OK", "Namespace completed");
            }
            CommandBody::Enable { .. } => self.tagged(t, "OK", "Nothing enabled"),
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(t, "LIST", &reference, &mailbox_wildcard).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(t, "LSUB", &reference, &mailbox_wildcard).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                let name = mailbox_name(&mailbox);
                let n = name.clone();
                let found = self
                    .shared
                    .with(move |d| {
                        let Some(mb) = d.mailbox(&n)? else {
                            return Ok(None);
                        };
                        let e = d.entries(mb.id)?;
                        Ok::<_, pouch_client::ClientError>(Some((mb, e)))
                    })
                    .await;
                let Ok(Some((mb, entries))) = found else {
                    self.tagged(t, "NO", &format!("[NONEXISTENT] No folder {name}"));
                    return;
                };
                let mut items = Vec::new();
                for i in item_names.iter() {
                    items.push(match i {
                        StatusDataItemName::Messages => format!("MESSAGES {}", entries.len()),
                        StatusDataItemName::Recent => "RECENT 0".into(),
                        StatusDataItemName::UidNext => format!("UIDNEXT {}", mb.uidnext),
                        StatusDataItemName::UidValidity => {
                            format!("UIDVALIDITY {}", mb.uidvalidity)
                        }
                        StatusDataItemName::Unseen => format!(
                            "UNSEEN {}",
                            entries
                                .iter()
                                .filter(|e| !e.flags.iter().any(|f| f == "\\Seen"))
                                .count()
                        ),
                        _ => continue,
                    });
                }
                let mut line = b"STATUS ".to_vec();
                string(&mut line, mb.name.as_bytes());
                line.extend_from_slice(format!(" ({})", items.join(" ")).as_bytes());
                self.out.extend_from_slice(b"* ");
                self.out.extend_from_slice(&line);
                self.out.extend_from_slice(b"\r\n");
                self.tagged(t, "OK", "Status completed");
            }
            CommandBody::Select { mailbox, .. } => {
                self.select(t, mailbox_name(&mailbox), false).await
            }
            CommandBody::Examine { mailbox, .. } => {
                self.select(t, mailbox_name(&mailbox), true).await
            }
            CommandBody::Create { mailbox } => {
                let name = mailbox_name(&mailbox).trim_end_matches('/').to_string();
                match self.shared.with(move |d| d.create_mailbox(&name)).await {
                    Ok(()) => self.tagged(t, "OK", "Create completed"),
                    Err(e) => self.tagged(t, "NO", &e.to_string()),
                }
            }
            CommandBody::Delete { mailbox } => {
                let name = mailbox_name(&mailbox);
                match self.shared.with(move |d| d.delete_mailbox(&name)).await {
                    Ok(()) => self.tagged(t, "OK", "Delete completed"),
                    Err(e) => self.tagged(t, "NO", &e.to_string()),
                }
            }
            CommandBody::Rename { from, to } => {
                let (from, to) = (mailbox_name(&from), mailbox_name(&to));
                match self
                    .shared
                    .with(move |d| d.rename_mailbox(&from, &to))
                    .await
                {
                    Ok(()) => self.tagged(t, "OK", "Rename completed"),
                    Err(e) => self.tagged(t, "NO", &e.to_string()),
                }
            }
            CommandBody::Subscribe { .. } | CommandBody::Unsubscribe { .. } => {
                self.tagged(t, "OK", "Every folder is subscribed")
            }
            CommandBody::Append {
                mailbox,
                flags,
                message,
                ..
            } => {
                let name = mailbox_name(&mailbox);
                let raw = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                        l.data().to_vec()
                    }
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.to_vec()
                    }
                };
                let flags: Vec<String> = flags.iter().map(Flag::to_string).collect();
                let n = name.clone();
                let result = self
                    .shared
                    .with(move |d| {
                        let mb = d.mailbox(&n)?.ok_or_else(|| {
                            pouch_client::ClientError::Invalid(format!("No folder {n}"))
                        })?;
                        let uid = d.append_message(mb.id, raw, &flags)?;
                        Ok::<_, pouch_client::ClientError>((mb.uidvalidity, uid))
                    })
                    .await;
                match result {
                    Ok((v, uid)) => {
                        self.shared.changed();
                        self.tagged(t, "OK", &format!("[APPENDUID {v} {uid}] Append completed"))
                    }
                    Err(pouch_client::ClientError::Invalid(m)) if m.starts_with("No folder") => {
                        self.tagged(t, "NO", &format!("[TRYCREATE] {m}"))
                    }
                    Err(e) => self.tagged(t, "NO", &e.to_string()),
                }
            }
            _ if self.selected.is_none() => self.tagged(t, "BAD", "Select a folder first"),
            CommandBody::Close => {
                if self.selected.as_ref().is_some_and(|s| !s.read_only) {
                    let _ = self.expunge(None).await;
                    // CLOSE expunges silently.
                    self.out.clear();
                }
                self.selected = None;
                self.tagged(t, "OK", "Close completed");
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.tagged(t, "OK", "Unselect completed");
            }
            CommandBody::Expunge => match self.expunge(None).await {
                Ok(()) => self.tagged(t, "OK", "Expunge completed"),
                Err(e) => self.tagged(t, "NO", &e),
            },
            CommandBody::ExpungeUid { sequence_set } => {
                let uids = self
                    .resolve(&sequence_set, true)
                    .into_iter()
                    .map(|p| p.1)
                    .collect();
                match self.expunge(Some(uids)).await {
                    Ok(()) => self.tagged(t, "OK", "Expunge completed"),
                    Err(e) => self.tagged(t, "NO", &e),
                }
            }
            CommandBody::Search { criteria, uid, .. } => {
                let sel = self.selected.as_ref().expect("checked above");
                let mailbox = sel.id;
                let known: Vec<u32> = sel.known.iter().map(|k| k.0).collect();
                let result = self
                    .shared
                    .with(move |d| {
                        let entries = d.entries(mailbox)?;
                        let mut loaded = Vec::new();
                        for e in entries.into_iter().filter(|e| known.contains(&e.uid)) {
                            let raw = d.raw(e.message)?;
                            loaded.push((e, raw));
                        }
                        Ok::<_, pouch_client::ClientError>(loaded)
                    })
                    .await;
                let loaded = match result {
                    Ok(l) => l,
                    Err(e) => {
                        self.tagged(t, "NO", &e.to_string());
                        return;
                    }
                };
                let largest_uid = loaded.last().map(|l| l.0.uid).unwrap_or(0);
                let largest_seq = loaded.len() as u32;
                let mut hits = Vec::new();
                for (i, (e, raw)) in loaded.iter().enumerate() {
                    let c = Candidate {
                        seq: i as u32 + 1,
                        largest_seq,
                        entry: e,
                        largest_uid,
                        raw,
                    };
                    if criteria.as_ref().iter().all(|k| matches_key(&c, k)) {
                        hits.push(if uid { e.uid } else { c.seq });
                    }
                }
                let list: Vec<String> = hits.iter().map(u32::to_string).collect();
                self.untagged(&format!(
                    "SEARCH{}{}",
                    if list.is_empty() { "" } else { " " },
                    list.join(" ")
                ));
                self.tagged(t, "OK", "Search completed");
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => self.fetch(t, &sequence_set, macro_or_item_names, uid).await,
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => {
                let silent = matches!(
                    response,
                    imap_codec::imap_types::flag::StoreResponse::Silent
                );
                let flags = flags.iter().map(Flag::to_string).collect();
                self.store(t, &sequence_set, kind, silent, flags, uid).await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(t, &sequence_set, mailbox_name(&mailbox), uid, false)
                    .await
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(t, &sequence_set, mailbox_name(&mailbox), uid, true)
                    .await
            }
            _ => self.tagged(t, "BAD", "Command not supported by the Pouch bridge"),
        }
    }
}

/// Reads once into the receiver; false when the client left, failed or
/// stayed silent for `idle`.
async fn read_more(
    stream: &mut Conn,
    input: &mut CommandReceiver,
    idle: std::time::Duration,
) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
        Ok(Ok(n)) => {
            input.push(&chunk[..n]);
            true
        }
    }
}

/// How long a client may stay silent: briefly before login, and the
/// 30 minutes RFC 3501 (5.4) asks for after it.
fn idle_limit(authenticated: bool) -> std::time::Duration {
    std::time::Duration::from_secs(if authenticated { 30 * 60 } else { 60 })
}

/// One continuation line (an AUTHENTICATE response, sent before login):
/// at most [`PRE_LOGIN_MAX`], within the session's login deadline.
async fn read_line(
    stream: &mut Conn,
    input: &mut CommandReceiver,
    deadline: std::time::Instant,
) -> Option<String> {
    loop {
        if let Some(line) = input.take_line() {
            return Some(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if input.line_too_long(PRE_LOGIN_MAX)
            || left.is_zero()
            || !read_more(stream, input, left).await
        {
            return None;
        }
    }
}

/// One client connection, from greeting to LOGOUT.
pub async fn session(
    shared: Shared,
    mut stream: Conn,
    starttls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let mut changes = shared.subscribe();
    let mut s = Session {
        shared,
        tls_on: stream.is_tls(),
        starttls,
        out: Vec::new(),
        authenticated: false,
        auth_failures: 0,
        selected: None,
        logout: false,
        login_deadline: std::time::Instant::now() + idle_limit(false),
    };
    let caps = s.capabilities();
    stream
        .write_all(format!("* OK [CAPABILITY {caps}] Pouch bridge ready\r\n").as_bytes())
        .await?;
    let mut input = CommandReceiver::default();
    loop {
        let command = match input.next(s.authenticated) {
            Received::Command(command) => command,
            Received::NeedMore => {
                let idle = if s.authenticated {
                    idle_limit(true)
                } else {
                    s.login_deadline
                        .saturating_duration_since(std::time::Instant::now())
                };
                if idle.is_zero() || !read_more(&mut stream, &mut input, idle).await {
                    let _ = stream.write_all(b"* BYE Idle for too long\r\n").await;
                    return Ok(());
                }
                continue;
            }
            Received::TooLong => {
                let _ = stream
                    .write_all(b"* BYE Command too long; closing the connection\r\n")
                    .await;
                return Ok(());
            }
            Received::ContinueLiteral => {
                stream.write_all(b"+ Ready for literal data\r\n").await?;
                continue;
            }
            Received::LiteralTooLarge { tag } => {
                stream
                    .write_all(format!("{tag} NO Literal too large\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            Received::Bad { tag } => {
                stream
                    .write_all(format!("{tag} BAD Could not parse that command\r\n").as_bytes())
                    .await?;
                continue;
            }
            Received::BadLiteral { tag } => {
                let _ = stream
                    .write_all(
                        format!("{tag} BAD Could not parse that command\r\n* BYE Cannot tell where its literal ends; closing\r\n")
                            .as_bytes(),
                    )
                    .await;
                return Ok(());
            }
        };
        if matches!(command.body, CommandBody::Idle) {
            if !s.authenticated || s.selected.is_none() {
                s.tagged(command.tag.as_ref(), "BAD", "Select a folder before IDLE");
            } else {
                stream.write_all(b"+ idling\r\n").await?;
                let tag = command.tag.as_ref().to_string();
                loop {
                    if let Some(line) = input.take_line() {
                        if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                            s.tagged(&tag, "OK", "IDLE terminated");
                        } else {
                            s.tagged(&tag, "BAD", "Expected DONE");
                        }
                        break;
                    }
                    let mut chunk = [0u8; 4096];
                    tokio::select! {
                        n = stream.read(&mut chunk) => {
                            let n = n?;
                            if n == 0 || input.line_too_long(MAX_LINE) { return Ok(()) }
                            input.push(&chunk[..n]);
                        }
                        _ = changes.recv() => {
                            s.updates().await;
                            stream.write_all(&s.out).await?;
                            s.out.clear();
                        }
                    }
                }
            }
        } else {
            s.handle(*command, &mut stream, &mut input).await;
        }
        stream.write_all(&s.out).await?;
        s.out.clear();
        if s.logout {
            return Ok(());
        }
    }
}
