//! What Pouch reads out of an RFC 5322 message, and the copy every recipient
//! gets.
//!
//! Parsing (mail-parser) only ever reads the head of a message: the headers
//! and the first parts, enough to index it. The message may come from a mail
//! client through the bridge or from another member, so every function here
//! takes any bytes and answers in time linear in their length.

use mail_parser::{Address as MpAddress, MessageParser, MimeHeaders};
use pouch_proto::Address;

/// How much of a message is read to index it.
pub const HEAD_LIMIT: usize = 256 * 1024;

/// Why a message could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    #[error("not an RFC 5322 message")]
    NotAMessage,
    /// An address field names something that is not an address Pouch can
    /// deliver to.
    #[error("{0}")]
    BadAddress(String),
}

/// What Pouch reads out of a message's head.
#[derive(Debug, Default)]
pub struct Parsed {
    pub from: Option<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub has_bcc: bool,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub date: i64,
    pub attachments: Vec<String>,
}

fn addresses(list: Option<&MpAddress<'_>>) -> Result<Vec<Address>, MimeError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.iter()
        .filter_map(|a| a.address())
        .map(|a| Address::parse(a).map_err(|e| MimeError::BadAddress(e.to_string())))
        .collect()
}

/// Indexes a message from its head (the first [`HEAD_LIMIT`] bytes suffice).
pub fn parse(head: &[u8]) -> Result<Parsed, MimeError> {
    let msg = MessageParser::default()
        .parse(head)
        .ok_or(MimeError::NotAMessage)?;
    let from = addresses(msg.from())?.into_iter().next();
    let attachments = msg
        .attachments()
        .map(|a| a.attachment_name().unwrap_or("unnamed").to_string())
        .collect();
    Ok(Parsed {
        from,
        to: addresses(msg.to())?,
        cc: addresses(msg.cc())?,
        has_bcc: msg.bcc().is_some(),
        bcc: addresses(msg.bcc())?,
        subject: msg.subject().unwrap_or_default().to_string(),
        message_id: msg.message_id().map(str::to_string),
        in_reply_to: msg.in_reply_to().as_text().map(str::to_string),
        date: msg.date().map(|d| d.to_timestamp()).unwrap_or_default(),
        attachments,
    })
}

/// The message without its Bcc header fields (and their folded lines): what
/// every recipient gets, so that nobody learns who else was sent a blind copy.
pub fn without_bcc(raw: &[u8]) -> Vec<u8> {
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    let (head, body) = raw.split_at(header_end);
    let mut out = Vec::with_capacity(raw.len());
    let mut dropping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            dropping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcc_fields_are_removed_with_their_folded_lines_and_nothing_else() {
        let raw = b"From: a@x.y\r\nBcc: d@x.y,\r\n e@x.y\r\nTo: b@x.y\r\nbcc: f@x.y\r\nSubject: Bcc: in subject\r\n\r\nBcc: in the body\r\n";
        let out = without_bcc(raw);
        assert_eq!(
            out,
            b"From: a@x.y\r\nTo: b@x.y\r\nSubject: Bcc: in subject\r\n\r\nBcc: in the body\r\n"
                .to_vec()
        );
        // (RFC 5322 allows one Bcc field; its folded addresses are all read.)
        let one_field = b"From: a@x.y\r\nBcc: d@x.y,\r\n e@x.y\r\nTo: b@x.y\r\n\r\nbody\r\n";
        assert_eq!(parse(one_field).unwrap().bcc.len(), 2);
        assert!(without_bcc(b"To: b@x.y\r\n\r\nhi").ends_with(b"hi"));
    }
}
