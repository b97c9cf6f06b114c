//! SMTP submission (RFC 5321, RFC 6409) as the bridge receives it, without
//! the connection: bytes in, requests, AUTH lines and whole messages out.
//!
//! Command lines are parsed by smtp-proto, which bounds them; AUTH
//! continuation lines are bounded here ([`MAX_LINE`]), and a message after
//! DATA at [`MAX_MESSAGE`] (what EHLO advertises as SIZE) plus a little room
//! for dot-stuffing. What the session expects next (a command, an AUTH line
//! or message data) is its own state, passed to [`Receiver::next`].

use smtp_proto::Request;
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};

/// The largest message accepted (advertised as SIZE).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Longest line outside DATA (AUTH lines with their base64 included).
pub const MAX_LINE: usize = 16 * 1024;

/// What the session reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Command,
    /// One line answering a 334 challenge (AUTH PLAIN or LOGIN).
    Line,
    /// Message data after a 354, up to the `.` line.
    Data,
}

/// What the receiver has for the session after the bytes it was given.
#[derive(Debug)]
pub enum Input {
    /// Nothing complete yet: read more from the client.
    NeedMore,
    Request(Request<String>),
    /// An AUTH continuation line, without its line end.
    Line(String),
    /// A whole message, dot-unstuffed, without the final `.` line.
    Message(Vec<u8>),
    /// A line that is no SMTP command: answer 500 and go on.
    UnknownCommand,
    /// A command with bad arguments: answer 501 and go on.
    Syntax(String),
    /// A line longer than allowed: answer 500 and close.
    LineTooLong,
    /// More message data than allowed: answer 552 and close.
    MessageTooBig,
}

/// The input of one connection.
#[derive(Default)]
pub struct Receiver {
    pending: Vec<u8>,
    requests: RequestReceiver,
    data: Option<DataReceiver>,
    message: Vec<u8>,
}

impl Receiver {
    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Forgets everything received (after STARTTLS, nothing sent in the clear
    /// may count).
    pub fn clear(&mut self) {
        *self = Receiver::default();
    }

    /// The next thing the session must act on, given what it expects.
    pub fn next(&mut self, expect: Expect) -> Input {
        match expect {
            Expect::Data => self.data(),
            Expect::Line => match self.pending.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    Input::Line(String::from_utf8_lossy(&line).trim_end().to_string())
                }
                None => self.need_more(),
            },
            Expect::Command => {
                if self.pending.is_empty() {
                    return Input::NeedMore;
                }
                let mut iter = self.pending.iter();
                let parsed = self.requests.ingest(&mut iter).map(|r| r.into_owned());
                let used = self.pending.len() - iter.as_slice().len();
                self.pending.drain(..used);
                match parsed {
                    Ok(request) => Input::Request(request),
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => self.need_more(),
                    Err(smtp_proto::Error::UnknownCommand) => Input::UnknownCommand,
                    Err(smtp_proto::Error::ResponseTooLong) => Input::LineTooLong,
                    Err(e) => Input::Syntax(format!("{e:?}")),
                }
            }
        }
    }

    /// Nothing complete: more is needed, unless a line already runs past
    /// the limit without ending.
    fn need_more(&self) -> Input {
        if self.pending.len() > MAX_LINE {
            Input::LineTooLong
        } else {
            Input::NeedMore
        }
    }

    fn data(&mut self) -> Input {
        let data = self.data.get_or_insert_with(DataReceiver::new);
        let mut iter = self.pending.iter();
        let done = data.ingest(&mut iter, &mut self.message);
        let used = self.pending.len() - iter.as_slice().len();
        self.pending.drain(..used);
        // Room for the line ends and dots the limit does not count.
        if self.message.len() > MAX_MESSAGE + 1024 {
            self.message = Vec::new();
            self.data = None;
            return Input::MessageTooBig;
        }
        if done {
            self.data = None;
            return Input::Message(std::mem::take(&mut self.message));
        }
        Input::NeedMore
    }
}
