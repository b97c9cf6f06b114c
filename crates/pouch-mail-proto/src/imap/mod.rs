//! IMAP4rev1 as the bridge speaks it, without the connection.
//!
//! [`CommandReceiver`] turns the bytes a client sends into commands (parsed
//! by imap-codec, literals and LITERAL+ included), enforcing the size limits
//! below; [`sequence`], [`pattern`] and [`render`] answer from a mailbox and
//! its messages.

pub mod pattern;
mod receiver;
pub mod render;
pub mod sequence;

pub use receiver::{CommandReceiver, Received};

/// Largest literal accepted after login (an APPENDed message).
pub const MAX_LITERAL: u32 = 64 * 1024 * 1024;
/// Longest command text around literals.
pub const MAX_LINE: usize = 64 * 1024;
/// Everything a client may send before it has logged in (a LOGIN or
/// AUTHENTICATE line, with a literal password): small, so that a stranger
/// on the port cannot make the bridge hold megabytes.
pub const PRE_LOGIN_MAX: usize = 16 * 1024;
