//! Bytes in, commands out: the framing of an IMAP command stream.
//!
//! A command may span several lines (each literal announces its length and,
//! unless it is LITERAL+, waits for the server's "+"), so the receiver keeps
//! what has arrived and asks imap-codec again only when a line has ended:
//! a long line costs one parse, not one per read. Before login only a
//! little may be buffered ([`PRE_LOGIN_MAX`]); after it, one literal of at
//! most [`MAX_LITERAL`] plus [`MAX_LINE`] of command text.

use super::{MAX_LINE, MAX_LITERAL, PRE_LOGIN_MAX};
use imap_codec::CommandCodec;
use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::core::LiteralMode;

/// What the receiver has for the session after the bytes it was given.
#[derive(Debug)]
pub enum Received {
    /// Nothing complete yet: read more from the client.
    NeedMore,
    /// A whole command.
    Command(Box<Command<'static>>),
    /// A synchronizing literal was announced and fits: send
    /// `+ Ready for literal data`, then read more.
    ContinueLiteral,
    /// A literal larger than allowed was announced: answer
    /// `TAG NO Literal too large` and close the connection.
    LiteralTooLarge { tag: String },
    /// More than the limit arrived without a complete command: answer
    /// `* BYE` and close the connection.
    TooLong,
    /// A line that is no command was dropped: answer `TAG BAD` (the tag is
    /// `*` when the line had none).
    Bad { tag: String },
    /// A command with a literal failed to parse: where the literal ends is
    /// not known, so its bytes (a message being appended, written by
    /// someone else) must never be read as commands. Answer `TAG BAD` and
    /// close the connection.
    BadLiteral { tag: String },
}

/// Whether a line ends with a literal announcement (`{12}` or `{12+}`).
fn announces_literal(line: &[u8]) -> bool {
    let line = line.trim_ascii_end();
    let Some(inner) = line.strip_suffix(b"}") else {
        return false;
    };
    let inner = inner.strip_suffix(b"+").unwrap_or(inner);
    let digits = inner
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    digits > 0 && inner.len() > digits && inner[inner.len() - digits - 1] == b'{'
}

/// The command stream of one connection.
#[derive(Default)]
pub struct CommandReceiver {
    codec: CommandCodec,
    buf: Vec<u8>,
    /// Whether a line end arrived since the last parse that needed more.
    line_ended: bool,
    /// Where the buffer ended when a literal was last acknowledged, so that
    /// one announcement gets one "+".
    literal_acknowledged_at: Option<usize>,
}

impl CommandReceiver {
    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.line_ended |= bytes.contains(&b'\n');
        self.buf.extend_from_slice(bytes);
    }

    /// The number of bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets everything received (after STARTTLS, nothing sent in the clear
    /// may count).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.line_ended = false;
        self.literal_acknowledged_at = None;
    }

    /// Takes one whole line (an AUTHENTICATE response, IDLE's DONE), without
    /// its line end, if one has arrived.
    pub fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        self.line_ended = self.buf.contains(&b'\n');
        Some(line)
    }

    /// Whether more than `max` bytes are held without a line end: the
    /// limit for continuation lines.
    pub fn line_too_long(&self, max: usize) -> bool {
        self.buf.len() > max && !self.buf.contains(&b'\n')
    }

    /// The next thing the session must act on. `authenticated` selects the
    /// limits: before login everything is small.
    pub fn next(&mut self, authenticated: bool) -> Received {
        if !self.line_ended {
            let limit = if authenticated {
                MAX_LITERAL as usize + MAX_LINE
            } else {
                PRE_LOGIN_MAX
            };
            return if self.buf.len() > limit {
                Received::TooLong
            } else {
                Received::NeedMore
            };
        }
        let decoded = match self.codec.decode(&self.buf) {
            Ok((rest, command)) => Ok((self.buf.len() - rest.len(), command.into_static())),
            Err(e) => Err(e.into_static()),
        };
        match decoded {
            Ok((used, command)) => {
                self.buf.drain(..used);
                self.literal_acknowledged_at = None;
                self.line_ended = self.buf.contains(&b'\n');
                Received::Command(Box::new(command))
            }
            Err(CommandDecodeError::Incomplete) => {
                self.line_ended = false;
                self.next(authenticated)
            }
            Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
                self.line_ended = false;
                // Before login only a LOGIN's literal password fits.
                let max = if authenticated {
                    MAX_LITERAL
                } else {
                    PRE_LOGIN_MAX as u32 / 2
                };
                if length > max {
                    return Received::LiteralTooLarge {
                        tag: tag.as_ref().to_string(),
                    };
                }
                if mode == LiteralMode::Sync && self.literal_acknowledged_at != Some(self.buf.len())
                {
                    self.literal_acknowledged_at = Some(self.buf.len());
                    return Received::ContinueLiteral;
                }
                self.next(authenticated)
            }
            Err(CommandDecodeError::Failed) => {
                // Drop the bad line; answer with its tag if it has one.
                let end = self
                    .buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|p| p + 1)
                    .unwrap_or(self.buf.len());
                let line: Vec<u8> = self.buf.drain(..end).collect();
                self.literal_acknowledged_at = None;
                self.line_ended = self.buf.contains(&b'\n');
                let tag = line
                    .split(|&b| b == b' ')
                    .next()
                    .filter(|t| {
                        !t.is_empty()
                            && t.len() <= 64
                            && t.iter()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
                    })
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .unwrap_or_else(|| "*".into());
                if announces_literal(&line) {
                    self.buf.clear();
                    self.line_ended = false;
                    return Received::BadLiteral { tag };
                }
                Received::Bad { tag }
            }
        }
    }
}
