//! Mail's wire formats, as Pouch's bridge and client speak them: bytes in,
//! typed commands out, and responses rendered from stored messages.
//!
//! Nothing here opens a socket, reads a file or waits: the bridge
//! (`pouch-bridge`) owns connections, deadlines and the device, and feeds
//! what it reads to a receiver here ([`imap::CommandReceiver`],
//! [`smtp::Receiver`]). Every byte a mail client or another member's message
//! can put in front of Pouch passes through this crate first, so this is
//! where the size bounds live and what the fuzz targets (`fuzz/`) drive.
//!
//! - [`imap`]: command framing with literals and limits, sequence sets as
//!   ranges, LIST patterns in linear time, and FETCH renderings (ENVELOPE,
//!   BODYSTRUCTURE, BODY[section]) of a raw message.
//! - [`smtp`]: command lines, AUTH continuation lines and DATA, bounded.
//! - [`mime`]: what Pouch indexes from a message's head, and the copy every
//!   recipient gets (without Bcc).
#![forbid(unsafe_code)]

pub mod imap;
pub mod mime;
pub mod smtp;
