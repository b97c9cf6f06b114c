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
    /// Every `SIO-Label` field's value (RFC 7444), unfolded: more than one
    /// is ambiguous, and refused by whoever reads the label.
    pub sio_labels: Vec<String>,
    /// Why the sender lowered the label of what this answers
    /// (`Pouch-Label-Downgrade`), if they did.
    pub label_downgrade: Option<String>,
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
        sio_labels: raw_values(&msg, "SIO-Label"),
        label_downgrade: raw_values(&msg, "Pouch-Label-Downgrade")
            .into_iter()
            .next()
            .filter(|r| !r.is_empty()),
    })
}

/// Every value of the header field `name` (any case), unfolded and trimmed.
fn raw_values(msg: &mail_parser::Message<'_>, name: &str) -> Vec<String> {
    msg.headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| {
            let raw = msg
                .raw_message()
                .get(h.offset_start as usize..h.offset_end as usize)?;
            let text = String::from_utf8_lossy(raw);
            Some(
                text.split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

/// The message without its Bcc header fields (and their folded lines): what
/// every recipient gets, so that nobody learns who else was sent a blind copy.
///
/// The fields removed are exactly those [`parse`] reads as Bcc (mail-parser's
/// own offsets), so no spelling it accepts (`Bcc :`, `BCC:`) stays behind.
pub fn without_bcc(raw: &[u8]) -> Vec<u8> {
    let Some(msg) = MessageParser::default().parse_headers(raw) else {
        // Not a message: nothing can be read as Bcc either.
        return raw.to_vec();
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0usize;
    for h in msg.headers() {
        if h.name != mail_parser::HeaderName::Bcc {
            continue;
        }
        let (start, end) = (h.offset_field as usize, h.offset_end as usize);
        if start < at || end > raw.len() || start > end {
            continue;
        }
        out.extend_from_slice(&raw[at..start]);
        at = end;
    }
    out.extend_from_slice(&raw[at..]);
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
        // Spellings mail-parser reads as Bcc are removed as well.
        for raw in [
            &b"From: a@x.y\r\nBcc : d@x.y\r\nTo: b@x.y\r\n\r\nbody\r\n"[..],
            &b"From: a@x.y\r\nBCC:d@x.y\r\nTo: b@x.y\r\n\r\nbody\r\n"[..],
        ] {
            assert!(parse(raw).unwrap().has_bcc);
            let out = without_bcc(raw);
            assert!(
                !parse(&out).unwrap().has_bcc,
                "{}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(out, b"From: a@x.y\r\nTo: b@x.y\r\n\r\nbody\r\n".to_vec());
        }
    }
}
