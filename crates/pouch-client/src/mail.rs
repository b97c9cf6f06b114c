//! RFC 5322 in and out, without holding large mail in memory.
//!
//! [`Outgoing`] is a message to send, described as a list of pieces — literal
//! bytes and files to be base64-encoded — so it can be read as many times as
//! needed (to encrypt and upload it, then to keep the sent copy) in constant
//! memory, and its exact size is known before the first byte is produced.
//! Parsing lives in [`pouch_mail_proto::mime`], which reads only the head.

use crate::Compose;
use crate::error::{ClientError, Result};
use base64::Engine;
use pouch_proto::Address;
use std::io::{Cursor, Read};
use std::path::PathBuf;

pub use pouch_mail_proto::mime::{HEAD_LIMIT, Parsed, parse, without_bcc};
/// Base64 line: 57 input bytes → 76 characters + CRLF.
const B64_LINE_IN: usize = 57;

/// The message being answered.
pub struct ReplyTo {
    pub message_id: Option<String>,
    pub subject: String,
}

enum Piece {
    Bytes(Vec<u8>),
    /// A file of `len` bytes, emitted as base64 lines.
    Base64File {
        path: PathBuf,
        len: u64,
    },
    /// A file emitted as it is.
    RawFile {
        path: PathBuf,
        len: u64,
    },
}

impl Piece {
    fn size(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::RawFile { len, .. } => *len,
            Piece::Base64File { len, .. } => {
                let full = len / B64_LINE_IN as u64;
                let rest = len % B64_LINE_IN as u64;
                full * 78
                    + if rest > 0 {
                        rest.div_ceil(3) * 4 + 2
                    } else {
                        0
                    }
            }
        }
    }
}

/// A message ready to send: its pieces, its exact size and its parsed head.
pub struct Outgoing {
    pieces: Vec<Piece>,
    pub size: u64,
    pub parsed: Parsed,
}

impl Outgoing {
    fn new(pieces: Vec<Piece>) -> Result<Self> {
        let size = pieces.iter().map(Piece::size).sum();
        let mut out = Outgoing {
            pieces,
            size,
            parsed: Parsed::default(),
        };
        let mut head = Vec::new();
        out.reader()?
            .take(HEAD_LIMIT as u64)
            .read_to_end(&mut head)?;
        out.parsed = parse(&head)?;
        Ok(out)
    }

    /// A complete message from memory.
    pub fn from_bytes(raw: Vec<u8>) -> Result<Self> {
        Self::new(vec![Piece::Bytes(raw)])
    }

    /// A complete message in a file, sent byte for byte.
    pub fn from_file(path: PathBuf) -> Result<Self> {
        let len = std::fs::metadata(&path)
            .map_err(|e| ClientError::Io(format!("cannot read {}: {e}", path.display())))?
            .len();
        Self::new(vec![Piece::RawFile { path, len }])
    }

    /// Reads the whole message from the start.
    pub fn reader(&self) -> Result<Box<dyn Read + '_>> {
        let mut chain: Box<dyn Read> = Box::new(std::io::empty());
        for piece in &self.pieces {
            let next: Box<dyn Read> = match piece {
                Piece::Bytes(b) => Box::new(Cursor::new(b.as_slice())),
                Piece::RawFile { path, .. } => Box::new(open(path)?),
                Piece::Base64File { path, .. } => Box::new(Base64Lines::new(open(path)?)),
            };
            chain = Box::new(chain.chain(next));
        }
        Ok(chain)
    }

    /// The whole message in memory (for messages known to be small).
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.size as usize);
        self.reader()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

fn open(path: &PathBuf) -> Result<std::fs::File> {
    std::fs::File::open(path)
        .map_err(|e| ClientError::Io(format!("cannot read {}: {e}", path.display())))
}

/// Encodes a reader as base64 in 76-character CRLF-terminated lines.
struct Base64Lines<R> {
    inner: R,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> Base64Lines<R> {
    fn new(inner: R) -> Self {
        Base64Lines {
            inner,
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }
    fn refill(&mut self) -> std::io::Result<()> {
        // 1024 lines at a time: 57 KiB in, 78 KiB out.
        let mut buf = vec![0u8; B64_LINE_IN * 1024];
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.inner.read(&mut buf[filled..])?;
            if n == 0 {
                self.done = true;
                break;
            }
            filled += n;
        }
        self.out.clear();
        self.pos = 0;
        for line in buf[..filled].chunks(B64_LINE_IN) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(line);
            self.out.extend_from_slice(encoded.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }
}

impl<R: Read> Read for Base64Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
            if self.out.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An RFC 2047 encoded word when the text is not plain ASCII.
pub(crate) fn encode_header_text(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_string();
    }
    // Encoded words of at most ~45 bytes of UTF-8, never splitting a character.
    let mut words = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if current.len() + ch.len_utf8() > 45 {
            words.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    words.push(current);
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

fn filename_param(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if clean.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !clean.contains('"')
        && !clean.contains('\\')
    {
        format!("filename=\"{clean}\"")
    } else {
        let encoded: String = clean
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("filename*=utf-8''{encoded}")
    }
}

pub(crate) fn rfc5322_date(ts: i64) -> String {
    let Ok(d) = time::OffsetDateTime::from_unix_timestamp(ts) else {
        return String::new();
    };
    let weekday = &d.weekday().to_string()[..3];
    let month = &d.month().to_string()[..3];
    format!(
        "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} +0000",
        d.day(),
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

fn address_list(list: &[Address]) -> String {
    list.iter()
        .map(|a| format!("<{a}>"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Composes a message from `pouch send` arguments. Attachments stay on disk
/// and are streamed as base64 when the message is read.
pub fn compose(
    from: &Address,
    c: &Compose,
    reply: Option<&ReplyTo>,
    domain: &str,
) -> Result<Outgoing> {
    let id: [u8; 16] = rand::random();
    let boundary = format!("pouch-{}", hex::encode(rand::random::<[u8; 12]>()));
    let subject = match reply {
        Some(r) if c.subject.is_empty() => {
            if r.subject.to_ascii_lowercase().starts_with("re:") {
                r.subject.clone()
            } else {
                format!("Re: {}", r.subject)
            }
        }
        _ => c.subject.clone(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut head = String::new();
    head += &format!("From: <{from}>\r\n");
    if !c.to.is_empty() {
        head += &format!("To: {}\r\n", address_list(&c.to));
    }
    if !c.cc.is_empty() {
        head += &format!("Cc: {}\r\n", address_list(&c.cc));
    }
    head += &format!("Subject: {}\r\n", encode_header_text(&subject));
    head += &format!("Message-ID: <{}@{domain}>\r\n", hex::encode(id));
    if let Some(ReplyTo {
        message_id: Some(parent),
        ..
    }) = reply
    {
        head += &format!("In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n");
    }
    head += &format!("Date: {}\r\nMIME-Version: 1.0\r\n", rfc5322_date(now));
    for (name, value) in &c.headers {
        head += &format!("{name}: {value}\r\n");
    }

    let body = c.body.replace("\r\n", "\n").replace('\n', "\r\n");
    let text_part = |h: &mut String| {
        *h +=
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n";
        for line in body.as_bytes().chunks(B64_LINE_IN) {
            *h += &base64::engine::general_purpose::STANDARD.encode(line);
            *h += "\r\n";
        }
    };
    let mut pieces = Vec::new();
    if c.attachments.is_empty() {
        text_part(&mut head);
        pieces.push(Piece::Bytes(head.into_bytes()));
    } else {
        head += &format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n"
        );
        text_part(&mut head);
        pieces.push(Piece::Bytes(head.into_bytes()));
        for (name, path) in &c.attachments {
            let len = std::fs::metadata(path)
                .map_err(|e| {
                    ClientError::Io(format!("cannot read attachment {}: {e}", path.display()))
                })?
                .len();
            pieces.push(Piece::Bytes(
                format!(
                    "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; {}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                    filename_param(name)
                )
                .into_bytes(),
            ));
            pieces.push(Piece::Base64File {
                path: path.clone(),
                len,
            });
        }
        pieces.push(Piece::Bytes(format!("--{boundary}--\r\n").into_bytes()));
    }
    Outgoing::new(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn composed_messages_parse_back_with_attachments_streamed() {
        let dir = std::env::temp_dir().join(format!("pouch-mail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sizes = vec![
            0usize,
            1,
            56,
            57,
            58,
            114,
            1000,
            57 * 1024,
            57 * 1024 + 1,
            200_000,
        ];
        sizes.push(3 * 57 * 1024 + 5);
        for (i, size) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
            let path = dir.join(format!("a{i}.bin"));
            std::fs::write(&path, &data).unwrap();
            let c = Compose {
                to: vec![addr("bob@pouch.local")],
                cc: vec![addr("carol@pouch.local")],
                subject: "Démarche diplomatique — ordre du jour très long pour forcer plusieurs mots encodés".into(),
                body: "Texte\nsur deux lignes".into(),
                attachments: vec![("plan été.pdf".into(), path.clone())],
                ..Default::default()
            };
            let out = compose(&addr("alice@pouch.local"), &c, None, "pouch.local").unwrap();
            let raw = out.to_vec().unwrap();
            assert_eq!(
                raw.len() as u64,
                out.size,
                "announced size is exact for {size} bytes"
            );
            let msg = MessageParser::default().parse(&raw).unwrap();
            assert_eq!(msg.subject().unwrap(), c.subject);
            assert_eq!(
                msg.body_text(0).unwrap().trim_end(),
                "Texte\r\nsur deux lignes"
            );
            let att = msg.attachments().next().unwrap();
            assert_eq!(att.attachment_name(), Some("plan été.pdf"));
            assert!(
                att.contents() == data.as_slice(),
                "attachment of {size} bytes differs"
            );
            assert_eq!(out.parsed.cc, vec![addr("carol@pouch.local")]);
            assert_eq!(out.parsed.attachments, vec!["plan été.pdf".to_string()]);
            // A second read gives the same bytes.
            assert!(out.to_vec().unwrap() == raw);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replies_thread_and_prefix_the_subject_once() {
        let c = Compose {
            to: vec![addr("alice@pouch.local")],
            body: "ok".into(),
            ..Default::default()
        };
        let parent = ReplyTo {
            message_id: Some("x1@pouch.local".into()),
            subject: "Démarche".into(),
        };
        let r = compose(&addr("bob@pouch.local"), &c, Some(&parent), "pouch.local").unwrap();
        assert_eq!(r.parsed.subject, "Re: Démarche");
        assert_eq!(r.parsed.in_reply_to.as_deref(), Some("x1@pouch.local"));
        let again = ReplyTo {
            message_id: None,
            subject: "Re: Démarche".into(),
        };
        assert_eq!(
            compose(&addr("bob@pouch.local"), &c, Some(&again), "pouch.local")
                .unwrap()
                .parsed
                .subject,
            "Re: Démarche"
        );
    }
}
