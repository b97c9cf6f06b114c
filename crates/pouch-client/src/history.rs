//! History transfer: an approving device sends its mail store (never its MLS
//! secrets) to a newly linked device of the same account, as one encrypted
//! blob referenced inside an MLS message between the two devices.
//!
//! Stream format, repeated for each message, oldest first:
//! `u32 header length ‖ header JSON ‖ u64 body length ‖ the exact RFC 5322 bytes`.
//! Both ends work message by message: memory use is bounded by the largest
//! single message held inline, never by the size of the store.

use crate::error::{ClientError, Result};
use crate::local::{LocalStore, MailFileWriter};
use crate::mail::Parsed;
use crate::{Body, Device};
use pouch_proto::{Address, GroupId};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};

#[derive(Serialize, Deserialize)]
struct Record {
    group_id: String,
    outgoing: bool,
    sender: String,
    recipients: Vec<String>,
    cc: Vec<String>,
    subject: String,
    message_id: Option<String>,
    date: i64,
    attachments: Vec<String>,
    size: u64,
}

fn records(local: &LocalStore) -> Result<Vec<(i64, Vec<u8>, u64)>> {
    let mut stmt = local.conn.prepare(
        "SELECT id, group_id, outgoing, sender, recipients, cc, subject, message_id, date, attachments, size \
         FROM messages WHERE system = 0 ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        let size: i64 = r.get(10)?;
        let rec = Record {
            group_id: r.get(1)?,
            outgoing: r.get(2)?,
            sender: r.get(3)?,
            recipients: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
            cc: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            subject: r.get(6)?,
            message_id: r.get(7)?,
            date: r.get(8)?,
            attachments: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
            size: size as u64,
        };
        Ok((
            r.get::<_, i64>(0)?,
            serde_json::to_vec(&rec).expect("a record serialises"),
            size as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Reads the history stream message by message.
struct HistoryReader<'a> {
    device: &'a Device,
    pending: VecDeque<(i64, Vec<u8>, u64)>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for HistoryReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some((id, header, size)) = self.pending.pop_front() else {
                return Ok(0);
            };
            self.buf.clear();
            self.pos = 0;
            self.buf
                .extend_from_slice(&(header.len() as u32).to_be_bytes());
            self.buf.extend_from_slice(&header);
            self.buf.extend_from_slice(&size.to_be_bytes());
            self.device
                .write_raw(id, &mut self.buf, None)
                .map_err(std::io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Device {
    /// Uploads this device's mail store as one encrypted blob.
    pub(crate) fn export_history(&mut self) -> Result<pouch_proto::envelope::BlobRef> {
        self.sign_in()?;
        let pending: VecDeque<_> = records(&self.local)?.into();
        let total: u64 = pending
            .iter()
            .map(|(_, h, size)| 4 + h.len() as u64 + 8 + size)
            .sum();
        let mut progress = self.progress.take();
        let result = {
            let mut reader = HistoryReader {
                device: self,
                pending,
                buf: Vec::new(),
                pos: 0,
            };
            let mut report = |done: u64, all: u64| {
                if let Some(p) = progress.as_mut() {
                    p("sending history", done, all);
                }
            };
            crate::blob::upload(&self.api, &mut reader, total, &mut report)
        };
        self.progress = progress;
        result
    }
}

/// Parses the history stream as it arrives and stores each message.
pub(crate) struct Importer<'a> {
    local: &'a LocalStore,
    head: Vec<u8>,
    current: Option<(Record, Sink)>,
    remaining: u64,
    pub imported: u32,
}

enum Sink {
    Inline(Vec<u8>),
    File(MailFileWriter),
}

impl<'a> Importer<'a> {
    pub(crate) fn new(local: &'a LocalStore) -> Self {
        Importer {
            local,
            head: Vec::new(),
            current: None,
            remaining: 0,
            imported: 0,
        }
    }

    /// Parses a record header at `head[pos..]` if it is complete.
    fn start_record(&mut self, pos: &mut usize) -> Result<bool> {
        let buf = &self.head[*pos..];
        if buf.len() < 4 {
            return Ok(false);
        }
        let hlen = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if buf.len() < 4 + hlen + 8 {
            return Ok(false);
        }
        let record: Record = serde_json::from_slice(&buf[4..4 + hlen])
            .map_err(|_| ClientError::Invalid("damaged history stream".into()))?;
        let size = u64::from_be_bytes(buf[4 + hlen..4 + hlen + 8].try_into().expect("8 bytes"));
        if size != record.size {
            return Err(ClientError::Invalid("damaged history stream".into()));
        }
        *pos += 4 + hlen + 8;
        let sink = if size <= pouch_proto::envelope::INLINE_LIMIT as u64 {
            Sink::Inline(Vec::with_capacity(size as usize))
        } else {
            Sink::File(self.local.new_mail_file(size)?)
        };
        self.current = Some((record, sink));
        self.remaining = size;
        Ok(true)
    }

    fn finish_record(&mut self) -> Result<()> {
        let (record, sink) = self.current.take().expect("a record in progress");
        let body = match sink {
            Sink::Inline(v) => Body::Inline(v),
            Sink::File(w) => Body::File(w.finish()?),
        };
        let parse = |v: &[String]| {
            v.iter()
                .filter_map(|a| Address::parse(a).ok())
                .collect::<Vec<_>>()
        };
        let parsed = Parsed {
            from: Address::parse(&record.sender).ok(),
            to: parse(&record.recipients),
            cc: parse(&record.cc),
            has_bcc: false,
            bcc: Vec::new(),
            subject: record.subject,
            message_id: record.message_id,
            in_reply_to: None,
            date: record.date,
            attachments: record.attachments,
            ..Default::default()
        };
        crate::store_message(
            self.local,
            &GroupId(record.group_id),
            None,
            record.outgoing,
            &parsed,
            &body,
        )?;
        self.imported += 1;
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.head.extend_from_slice(data);
        let mut pos = 0;
        loop {
            if self.current.is_none() && !self.start_record(&mut pos)? {
                break;
            }
            let n = self.remaining.min((self.head.len() - pos) as u64) as usize;
            match &mut self.current.as_mut().expect("a record in progress").1 {
                Sink::Inline(v) => v.extend_from_slice(&self.head[pos..pos + n]),
                Sink::File(w) => w.write_all(&self.head[pos..pos + n])?,
            }
            pos += n;
            self.remaining -= n as u64;
            if self.remaining > 0 {
                break;
            }
            self.finish_record()?;
        }
        self.head.drain(..pos);
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<u32> {
        if self.current.is_some() || !self.head.is_empty() {
            return Err(ClientError::Invalid(
                "the history stream ended in the middle of a message".into(),
            ));
        }
        Ok(self.imported)
    }
}

impl Write for Importer<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.feed(data).map_err(std::io::Error::other)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
