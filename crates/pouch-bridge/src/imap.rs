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
//!
//! The protocol is a core without a socket, as rustls is: [`ImapSession`]
//! is fed the bytes a client sent and gives back the bytes to send, saying
//! what it wants next ([`Wanted`]: more input, a TLS handshake, IDLE,
//! closing). Where the session stands is one [`State`] (RFC 3501 §3), so
//! a command is answered by what the state allows, not by a set of flags.
//! [`session`] is the thin loop that connects the core to a connection;
//! tests drive the core directly.
//!
//! FETCH commands a client sends back to back (pipelined) are answered
//! together, in one turn of the device's thread, and a FETCH of many
//! bodies goes out in parts of at most [`FETCH_TURN_BYTES`] of messages, so
//! that the bridge never holds a whole folder in memory.

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
use std::collections::VecDeque;
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

/// Where a session stands (RFC 3501 §3).
enum State {
    /// Before login. The phase has one deadline ([`ImapSession`]'s
    /// `login_deadline`), and failed logins are counted: three end it.
    NotAuthenticated {
        failures: u32,
    },
    Authenticated,
    Selected(Selected),
    /// BYE was said: the connection closes once the output is written.
    Logout,
}

impl State {
    fn authenticated(&self) -> bool {
        matches!(self, State::Authenticated | State::Selected(_))
    }

    fn selected(&self) -> Option<&Selected> {
        match self {
            State::Selected(s) => Some(s),
            _ => None,
        }
    }

    fn selected_mut(&mut self) -> Option<&mut Selected> {
        match self {
            State::Selected(s) => Some(s),
            _ => None,
        }
    }

    /// Leaves the selected folder (after CLOSE, UNSELECT, a failed SELECT).
    fn deselect(&mut self) {
        if let State::Selected(_) = self {
            *self = State::Authenticated;
        }
    }
}

/// A command that cannot finish before the client sends more.
enum Waiting {
    /// AUTHENTICATE PLAIN without an initial response: `+` was sent.
    AuthResponse { tag: String },
    /// IDLE, until the client's DONE.
    Idle { tag: String },
}

/// What the session wants from its connection after [`ImapSession::advance`].
/// In every case, first write [`ImapSession::take_output`].
pub enum Wanted {
    /// Read from the client and [`ImapSession::feed`] what arrives, waiting
    /// at most this long; if nothing arrives, call [`ImapSession::timed_out`]
    /// and close.
    Input(std::time::Duration),
    /// Call `advance` again at once (a long FETCH goes out in parts).
    Write,
    /// Run the TLS handshake with this configuration, then call
    /// [`ImapSession::tls_started`]; close if it fails.
    StartTls(Arc<rustls::ServerConfig>),
    /// IDLE: feed what the client sends (then `advance`), and call
    /// [`ImapSession::changed`] when a folder changes; call `timed_out`
    /// after [`idle_limit`] of silence.
    Idle,
    /// Close the connection.
    Close,
}

/// Message bytes one turn of the device's thread loads for FETCH (beyond
/// the first message, which is always sent whole).
pub const FETCH_TURN_BYTES: u64 = 8 * 1024 * 1024;
/// Pipelined FETCH commands answered in one turn at most.
const FETCH_BATCH: usize = 32;

/// A FETCH being answered: the items asked for and the messages still to send.
struct FetchJob {
    tag: String,
    names: Vec<MessageDataItemName<'static>>,
    /// (sequence number, UID) of each message not yet sent, in order.
    left: VecDeque<(u32, u32)>,
    marks_seen: bool,
    /// Items of each response that carry message bytes.
    byte_items: u64,
}

/// One IMAP connection's protocol, without the connection: bytes in
/// ([`Self::feed`]), bytes out ([`Self::take_output`]).
pub struct ImapSession {
    shared: Shared,
    /// Offered until the connection is encrypted (STARTTLS mode).
    starttls: Option<Arc<rustls::ServerConfig>>,
    tls_on: bool,
    input: CommandReceiver,
    out: Vec<u8>,
    state: State,
    waiting: Option<Waiting>,
    /// FETCH commands being answered, oldest first.
    fetches: VecDeque<FetchJob>,
    /// What the receiver gave after a run of pipelined FETCH commands:
    /// handled once they are answered.
    held: Option<Received>,
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

impl ImapSession {
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
            self.state = State::Authenticated;
            let caps = self.capabilities();
            self.tagged(tag, "OK", &format!("[CAPABILITY {caps}] Logged in"));
        } else {
            tracing::warn!("IMAP login refused");
            self.tagged(
                tag,
                "NO",
                "[AUTHENTICATIONFAILED] Use your Pouch address and the bridge password ('pouch bridge --show-password')",
            );
            if let State::NotAuthenticated { failures } = &mut self.state {
                *failures += 1;
                if *failures >= 3 {
                    self.state = State::Logout;
                    self.untagged("BYE Too many failed logins");
                }
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
        let Some(sel) = self.state.selected() else {
            return;
        };
        let id = sel.id;
        let now = match self.shared.with(move |d| d.entries(id)).await {
            Ok(e) => e,
            Err(_) => return,
        };
        let Some(sel) = self.state.selected_mut() else {
            return;
        };
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
        self.state.deselect();
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
        self.state = State::Selected(Selected {
            id: mb.id,
            read_only,
            known: entries.iter().map(|e| (e.uid, e.flags.clone())).collect(),
        });
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        self.tagged(tag, "OK", &format!("[{mode}] Selected"));
    }

    /// (sequence number, UID) pairs a set names, by sequence number or UID.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let Some(sel) = self.state.selected() else {
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

    /// Queues a FETCH: what it asks for and which messages, in order.
    fn queue_fetch(
        &mut self,
        tag: String,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
    ) {
        let mut names: Vec<MessageDataItemName<'static>> = match items {
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
        let left = self.resolve(set, uid).into();
        let Some(sel) = self.state.selected() else {
            self.tagged(&tag, "BAD", "Select a folder first");
            return;
        };
        let marks_seen = !sel.read_only
            && names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let byte_items = names
            .iter()
            .filter(|n| {
                !matches!(
                    n,
                    MessageDataItemName::Flags
                        | MessageDataItemName::InternalDate
                        | MessageDataItemName::Rfc822Size
                )
            })
            .count() as u64;
        self.fetches.push_back(FetchJob {
            tag,
            names,
            left,
            marks_seen,
            byte_items,
        });
    }

    /// One turn of the device's thread for the queued FETCH commands: as
    /// many of their messages as [`FETCH_TURN_BYTES`] allows, in order.
    async fn fetch_turn(&mut self) {
        let Some(mailbox) = self.state.selected().map(|s| s.id) else {
            while let Some(job) = self.fetches.pop_front() {
                self.tagged(&job.tag, "BAD", "Select a folder first");
            }
            return;
        };
        let plans: Vec<FetchPlan> = self
            .fetches
            .iter()
            .map(|j| FetchPlan {
                uids: j.left.iter().take(FETCH_WINDOW).map(|t| t.1).collect(),
                marks_seen: j.marks_seen,
                byte_items: j.byte_items,
                more_after: j.left.len() > FETCH_WINDOW,
            })
            .collect();
        let results = self
            .shared
            .with(move |d| load_for_fetch(d, mailbox, plans))
            .await;
        for result in results {
            let Some(mut job) = self.fetches.pop_front() else {
                break;
            };
            match result {
                Ok((consumed, loaded)) => {
                    for (seq, uid) in job.left.drain(..consumed.min(job.left.len())) {
                        let Some((e, raw)) = loaded.iter().find(|(e, _)| e.uid == uid) else {
                            continue;
                        };
                        render_fetch(&mut self.out, seq, e, raw, &job.names);
                        if let Some(sel) = self.state.selected_mut()
                            && let Some(k) = sel.known.iter_mut().find(|k| k.0 == uid)
                        {
                            k.1 = e.flags.clone();
                        }
                    }
                    if job.left.is_empty() {
                        self.tagged(&job.tag, "OK", "Fetch completed");
                    } else {
                        // Not all of it fitted this turn: the rest goes next.
                        self.fetches.push_front(job);
                        return;
                    }
                }
                Err(e) => self.tagged(&job.tag, "NO", &format!("Cannot read the messages: {e}")),
            }
        }
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
        let Some(sel) = self.state.selected() else {
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
                        if let Some(sel) = self.state.selected_mut()
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
        let Some(sel) = self.state.selected() else {
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
        let Some(sel) = self.state.selected_mut() else {
            return Err("Select a folder first".into());
        };
        let lines = sel.forget(|uid| gone.contains(&uid));
        for l in lines {
            self.untagged(&l);
        }
        self.shared.changed();
        Ok(())
    }

    async fn copy(&mut self, tag: &str, set: &SequenceSet, to: String, uid: bool, moving: bool) {
        let targets = self.resolve(set, uid);
        let Some(sel) = self.state.selected() else {
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
            if let Some(sel) = self.state.selected_mut() {
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

    /// Answers one command. `Some` when the connection must act first
    /// (a TLS handshake); a command that waits on the client (IDLE,
    /// AUTHENTICATE) sets [`Self::waiting`] instead.
    async fn handle(&mut self, command: Command<'static>) -> Option<Wanted> {
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
                self.state = State::Logout;
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
                    // Nothing sent in the clear before the handshake may count after it.
                    self.input.clear();
                    self.held = None;
                    return Some(Wanted::StartTls(config));
                }
                _ => self.tagged(t, "BAD", "STARTTLS is not available here"),
            },
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
                if self.state.authenticated() =>
            {
                self.tagged(t, "BAD", "Already logged in")
            }
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
                    return None;
                }
                match initial_response {
                    Some(r) => self.plain(t, r.declassify().as_ref()).await,
                    None => {
                        self.out.extend_from_slice(b"+ \r\n");
                        self.waiting = Some(Waiting::AuthResponse { tag });
                    }
                }
            }
            CommandBody::Idle => {
                if self.state.selected().is_some() {
                    self.out.extend_from_slice(b"+ idling\r\n");
                    self.waiting = Some(Waiting::Idle { tag });
                } else {
                    self.tagged(t, "BAD", "Select a folder before IDLE");
                }
            }
            _ if !self.state.authenticated() => {
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
                    return None;
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
            _ if self.state.selected().is_none() => self.tagged(t, "BAD", "Select a folder first"),
            CommandBody::Close => {
                if self.state.selected().is_some_and(|s| !s.read_only) {
                    // CLOSE expunges silently.
                    let said = self.out.len();
                    let _ = self.expunge(None).await;
                    self.out.truncate(said);
                }
                self.state.deselect();
                self.tagged(t, "OK", "Close completed");
            }
            CommandBody::Unselect => {
                self.state.deselect();
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
                let sel = self.state.selected()?;
                let mailbox = sel.id;
                let known: Vec<u32> = sel.known.iter().map(|k| k.0).collect();
                let result = self
                    .shared
                    .with(move |d| {
                        let entries = d.entries(mailbox)?;
                        let mut loaded = Vec::new();
                        for e in entries.into_iter().filter(|e| known.contains(&e.uid)) {
                            let raw = d.raw_for_clients(e.message)?;
                            loaded.push((e, raw));
                        }
                        Ok::<_, pouch_client::ClientError>(loaded)
                    })
                    .await;
                let loaded = match result {
                    Ok(l) => l,
                    Err(e) => {
                        self.tagged(t, "NO", &e.to_string());
                        return None;
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
            } => self.queue_fetch(tag, &sequence_set, macro_or_item_names, uid),
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
        None
    }
}

/// What one FETCH needs from the device.
struct FetchPlan {
    uids: Vec<u32>,
    marks_seen: bool,
    /// How many items of each message's response carry its bytes (or part
    /// of them): 0 when only flags, dates and sizes are asked for.
    byte_items: u64,
    /// Whether the FETCH has messages beyond `uids` (a later window).
    more_after: bool,
}

/// Messages one FETCH looks at in one turn at most (its entries are read
/// for this window only, not for everything it has left).
const FETCH_WINDOW: usize = 1000;
/// What one message's response costs against [`FETCH_TURN_BYTES`] besides
/// its bytes (UID, flags, dates and sizes).
const FETCH_LINE_COST: u64 = 256;

/// A FETCH's share of one turn: how many of its UIDs were dealt with (sent
/// or found gone), and the messages among them.
type FetchLoad = Result<(usize, Vec<(Entry, Vec<u8>)>), pouch_client::ClientError>;

/// On the device's thread: the messages of each plan in order, marked seen
/// where the FETCH reads a body, until their responses would pass
/// [`FETCH_TURN_BYTES`]. A plan is touched only once every plan before it
/// is done: a FETCH behind one that did not fit waits for the next turn
/// (nothing of it, not even its \Seen marks, happens early).
fn load_for_fetch(
    d: &mut pouch_client::Device,
    mailbox: i64,
    plans: Vec<FetchPlan>,
) -> Vec<FetchLoad> {
    let mut loaded_bytes = 0u64;
    let mut results = Vec::new();
    for plan in plans {
        let planned = plan.uids.len();
        let mut one = || -> FetchLoad {
            let (Some(&lo), Some(&hi)) = (plan.uids.iter().min(), plan.uids.iter().max()) else {
                return Ok((0, Vec::new()));
            };
            let mut entries: std::collections::HashMap<u32, Entry> = d
                .entries_between(mailbox, lo, hi)?
                .into_iter()
                .map(|e| (e.uid, e))
                .collect();
            let mut consumed = 0;
            let mut loaded = Vec::new();
            for uid in &plan.uids {
                if let Some(mut e) = entries.remove(uid) {
                    let cost =
                        FETCH_LINE_COST.saturating_add(e.size.saturating_mul(plan.byte_items));
                    if loaded_bytes > 0 && loaded_bytes.saturating_add(cost) > FETCH_TURN_BYTES {
                        break;
                    }
                    if plan.marks_seen && !e.flags.iter().any(|f| f == "\\Seen") {
                        e.flags.push("\\Seen".into());
                        e.flags.sort();
                        d.set_flags(mailbox, e.uid, &e.flags)?;
                    }
                    let raw = if plan.byte_items > 0 {
                        d.raw_for_clients(e.message)?
                    } else {
                        Vec::new()
                    };
                    loaded_bytes = loaded_bytes.saturating_add(cost);
                    loaded.push((e, raw));
                }
                consumed += 1;
            }
            Ok((consumed, loaded))
        };
        let result = one();
        let whole =
            !plan.more_after && matches!(&result, Ok((consumed, _)) if *consumed == planned);
        results.push(result);
        if !whole || loaded_bytes >= FETCH_TURN_BYTES {
            break;
        }
    }
    results
}

/// One message's FETCH response line: the UID first, then each item asked for.
fn render_fetch(
    out: &mut Vec<u8>,
    seq: u32,
    e: &Entry,
    raw: &[u8],
    names: &[MessageDataItemName<'_>],
) {
    let mut o = format!("* {seq} FETCH (UID {}", e.uid).into_bytes();
    for n in names {
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
                        let end = start.saturating_add(count.get() as usize).min(bytes.len());
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
    out.extend_from_slice(&o);
}

/// How long a client may stay silent: briefly before login, and the
/// 30 minutes RFC 3501 (5.4) asks for after it (IDLE included: clients
/// renew it every 29 minutes, RFC 2177).
pub fn idle_limit(authenticated: bool) -> std::time::Duration {
    std::time::Duration::from_secs(if authenticated { 30 * 60 } else { 60 })
}

impl ImapSession {
    /// A new session; its output starts with the greeting.
    pub fn new(shared: Shared, tls_on: bool, starttls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut s = ImapSession {
            shared,
            starttls,
            tls_on,
            input: CommandReceiver::default(),
            out: Vec::new(),
            state: State::NotAuthenticated { failures: 0 },
            waiting: None,
            fetches: VecDeque::new(),
            held: None,
            login_deadline: std::time::Instant::now() + idle_limit(false),
        };
        let caps = s.capabilities();
        s.untagged(&format!("OK [CAPABILITY {caps}] Pouch bridge ready"));
        s
    }

    /// Bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.push(bytes);
    }

    /// Bytes to send to the client (taken: the next call has only what came after).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The TLS handshake [`Wanted::StartTls`] asked for succeeded.
    pub fn tls_started(&mut self) {
        self.tls_on = true;
    }

    /// The client stayed silent for as long as [`Wanted`] allowed.
    pub fn timed_out(&mut self) {
        self.untagged("BYE Idle for too long");
        self.state = State::Logout;
    }

    /// A folder changed (another session, or new mail): during IDLE the
    /// client is told at once; otherwise at its next NOOP or CHECK.
    pub async fn changed(&mut self) {
        if matches!(self.waiting, Some(Waiting::Idle { .. })) {
            self.updates().await;
        }
    }

    /// Answers what the client has sent so far, and says what the session
    /// needs next.
    pub async fn advance(&mut self) -> Wanted {
        loop {
            if matches!(self.state, State::Logout) {
                return Wanted::Close;
            }
            match self.waiting.take() {
                Some(Waiting::AuthResponse { tag }) => {
                    let Some(line) = self.input.take_line() else {
                        if self.input.line_too_long(PRE_LOGIN_MAX) {
                            return Wanted::Close;
                        }
                        self.waiting = Some(Waiting::AuthResponse { tag });
                        return self.more_input();
                    };
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    if line == "*" {
                        self.tagged(&tag, "BAD", "Authentication cancelled");
                    } else {
                        let response = base64::engine::general_purpose::STANDARD
                            .decode(&line)
                            .unwrap_or_default();
                        self.plain(&tag, &response).await;
                    }
                    continue;
                }
                Some(Waiting::Idle { tag }) => {
                    let Some(line) = self.input.take_line() else {
                        if self.input.line_too_long(MAX_LINE) {
                            return Wanted::Close;
                        }
                        self.waiting = Some(Waiting::Idle { tag });
                        return Wanted::Idle;
                    };
                    if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        self.tagged(&tag, "OK", "IDLE terminated");
                    } else {
                        self.tagged(&tag, "BAD", "Expected DONE");
                    }
                    continue;
                }
                None => {}
            }
            if !self.fetches.is_empty() {
                self.fetch_turn().await;
                return Wanted::Write;
            }
            let received = match self.held.take() {
                Some(r) => r,
                None => self.input.next(self.state.authenticated()),
            };
            match received {
                Received::Command(command) => {
                    if matches!(command.body, CommandBody::Fetch { .. }) {
                        self.queue_pipelined(*command);
                    } else if let Some(wanted) = self.handle(*command).await {
                        return wanted;
                    }
                }
                Received::NeedMore => return self.more_input(),
                Received::TooLong => {
                    self.untagged("BYE Command too long; closing the connection");
                    return Wanted::Close;
                }
                Received::ContinueLiteral => {
                    self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                }
                Received::LiteralTooLarge { tag } => {
                    self.tagged(&tag, "NO", "Literal too large");
                    return Wanted::Close;
                }
                Received::Bad { tag } => self.tagged(&tag, "BAD", "Could not parse that command"),
                Received::BadLiteral { tag } => {
                    self.tagged(&tag, "BAD", "Could not parse that command");
                    self.untagged("BYE Cannot tell where its literal ends; closing");
                    return Wanted::Close;
                }
            }
        }
    }

    /// Queues `first` and every FETCH the client sent right behind it (up to
    /// [`FETCH_BATCH`]), so that they are answered in one turn; whatever
    /// came after them waits in [`Self::held`].
    fn queue_pipelined(&mut self, first: Command<'static>) {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            let tag = command.tag.as_ref().to_string();
            match command.body {
                CommandBody::Fetch {
                    sequence_set,
                    macro_or_item_names,
                    uid,
                    ..
                } if self.state.authenticated() => {
                    self.queue_fetch(tag, &sequence_set, macro_or_item_names, uid)
                }
                _ => self.tagged(&tag, "NO", "Log in first (LOGIN or AUTHENTICATE PLAIN)"),
            }
            if self.fetches.len() >= FETCH_BATCH {
                break;
            }
            match self.input.next(self.state.authenticated()) {
                Received::Command(c) if matches!(c.body, CommandBody::Fetch { .. }) => {
                    next = Some(*c)
                }
                Received::NeedMore => {}
                other => self.held = Some(other),
            }
        }
    }

    /// Waits for the client: 30 minutes once logged in, what is left of
    /// the login deadline before.
    fn more_input(&mut self) -> Wanted {
        if self.state.authenticated() {
            return Wanted::Input(idle_limit(true));
        }
        let left = self
            .login_deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            self.timed_out();
            return Wanted::Close;
        }
        Wanted::Input(left)
    }
}

/// One client connection, from greeting to LOGOUT: the [`ImapSession`]
/// core, connected to the socket.
pub async fn session(
    shared: Shared,
    mut stream: Conn,
    starttls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let mut changes = shared.subscribe();
    let mut s = ImapSession::new(shared, stream.is_tls(), starttls);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let wanted = s.advance().await;
        send(&mut stream, &s.take_output()).await?;
        match wanted {
            Wanted::Write => {}
            Wanted::Close => return Ok(()),
            Wanted::StartTls(config) => {
                if stream.start_tls(config).await.is_err() {
                    return Ok(());
                }
                s.tls_started();
            }
            Wanted::Input(wait) => {
                match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => s.feed(&chunk[..n]),
                    Ok(Ok(_)) | Ok(Err(_)) => return Ok(()),
                    Err(_) => {
                        s.timed_out();
                        let _ = send(&mut stream, &s.take_output()).await;
                        return Ok(());
                    }
                }
            }
            Wanted::Idle => {
                let limit = tokio::time::sleep(idle_limit(true));
                tokio::pin!(limit);
                // Changes are told until the client sends something.
                loop {
                    tokio::select! {
                        n = stream.read(&mut chunk) => {
                            match n {
                                Ok(n) if n > 0 => { s.feed(&chunk[..n]); break }
                                _ => return Ok(()),
                            }
                        }
                        _ = changes.recv() => {
                            s.changed().await;
                            send(&mut stream, &s.take_output()).await?;
                        }
                        _ = &mut limit => {
                            s.timed_out();
                            let _ = send(&mut stream, &s.take_output()).await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// How long a client may take to read what it is sent: one that never
/// reads does not keep its connection slot.
const WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn send(stream: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_LIMIT, stream.write_all(bytes))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
        })?
}
