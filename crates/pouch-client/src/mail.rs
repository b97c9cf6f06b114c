//! RFC 5322 in and out: composing a message from `pouch send` arguments
//! (mail-builder) and reading the headers Pouch needs (mail-parser). The
//! raw bytes are what travels and what is stored; parsing only indexes them.

use crate::error::{ClientError, Result};
use crate::Compose;
use mail_builder::MessageBuilder;
use mail_parser::{Address as MpAddress, MessageParser, MimeHeaders};
use pouch_proto::Address;

/// The message being answered.
pub struct ReplyTo {
    pub message_id: Option<String>,
    pub subject: String,
}

/// What Pouch reads out of a message's headers.
#[derive(Debug, Default)]
pub struct Parsed {
    pub from: Option<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub has_bcc: bool,
    pub subject: String,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub date: i64,
    pub attachments: Vec<String>,
}

pub fn compose(from: &Address, c: &Compose, reply: Option<&ReplyTo>, attachments: &[(String, Vec<u8>)], domain: &str) -> Result<Vec<u8>> {
    let id: [u8; 16] = rand::random();
    let message_id = format!("{}@{domain}", hex::encode(id));
    let subject = match reply {
        Some(r) if c.subject.is_empty() => {
            if r.subject.to_ascii_lowercase().starts_with("re:") { r.subject.clone() } else { format!("Re: {}", r.subject) }
        }
        _ => c.subject.clone(),
    };
    let mut b = MessageBuilder::new()
        .from(from.as_str())
        .subject(subject)
        .message_id(message_id)
        .date(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default())
        .text_body(c.body.clone());
    if !c.to.is_empty() {
        b = b.to(c.to.iter().map(|a| a.as_str().to_string()).collect::<Vec<_>>());
    }
    if !c.cc.is_empty() {
        b = b.cc(c.cc.iter().map(|a| a.as_str().to_string()).collect::<Vec<_>>());
    }
    if let Some(ReplyTo { message_id: Some(parent), .. }) = reply {
        b = b.in_reply_to(parent.clone()).references(parent.clone());
    }
    for (name, bytes) in attachments {
        b = b.attachment("application/octet-stream", name.clone(), bytes.as_slice());
    }
    b.write_to_vec().map_err(|e| ClientError::Io(format!("cannot build the message: {e}")))
}

fn addresses(list: Option<&MpAddress<'_>>) -> Result<Vec<Address>> {
    let Some(list) = list else { return Ok(Vec::new()) };
    list.iter()
        .filter_map(|a| a.address())
        .map(|a| Address::parse(a).map_err(|e| ClientError::Invalid(e.to_string())))
        .collect()
}

pub fn parse(raw: &[u8]) -> Result<Parsed> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| ClientError::Invalid("not an RFC 5322 message".into()))?;
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
        subject: msg.subject().unwrap_or_default().to_string(),
        message_id: msg.message_id().map(str::to_string),
        in_reply_to: msg.in_reply_to().as_text().map(str::to_string),
        date: msg.date().map(|d| d.to_timestamp()).unwrap_or_default(),
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_messages_parse_back() {
        let a = Address::parse("alice@pouch.local").unwrap();
        let c = Compose {
            to: vec![Address::parse("bob@pouch.local").unwrap()],
            cc: vec![Address::parse("carol@pouch.local").unwrap()],
            subject: "Démarche".into(),
            body: "Texte".into(),
            ..Default::default()
        };
        let raw = compose(&a, &c, None, &[("plan.pdf".into(), vec![1, 2, 3])], "pouch.local").unwrap();
        let p = parse(&raw).unwrap();
        assert_eq!(p.from, Some(a));
        assert_eq!(p.to[0].as_str(), "bob@pouch.local");
        assert_eq!(p.cc[0].as_str(), "carol@pouch.local");
        assert_eq!(p.subject, "Démarche");
        assert_eq!(p.attachments, vec!["plan.pdf".to_string()]);
        assert!(p.message_id.unwrap().ends_with("@pouch.local"));
        let reply = compose(
            &Address::parse("bob@pouch.local").unwrap(),
            &Compose { to: vec![Address::parse("alice@pouch.local").unwrap()], ..Default::default() },
            Some(&ReplyTo { message_id: Some("x1@pouch.local".into()), subject: "Démarche".into() }),
            &[],
            "pouch.local",
        )
        .unwrap();
        let r = parse(&reply).unwrap();
        assert_eq!(r.subject, "Re: Démarche");
        assert_eq!(r.in_reply_to.as_deref(), Some("x1@pouch.local"));
    }
}
