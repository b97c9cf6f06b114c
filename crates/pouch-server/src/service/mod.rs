//! The server's operations, with no HTTP in them.
//!
//! Each operation takes the [`AppState`](crate::AppState), the [`Caller`]
//! (an authenticated device and where it came from) and typed input, does
//! its checks, its store calls and its audit events, and returns a typed
//! result or a [`ServiceError`]. The axum handlers (`api.rs` and the other
//! route modules) only extract, call one operation, and answer; federation
//! or an operator console can call the same operations and audit the same
//! way.
//!
//! Dependencies point one way: HTTP → service → store, recorder; nothing
//! here names axum.

pub mod accounts;
pub mod admin;
pub mod administrators;
pub mod alerts;
pub mod audit;
pub mod devices;
pub mod directory;
pub mod error;
pub mod links;
pub mod log;
pub mod mail;
pub mod security;

pub use error::ServiceError;

use pouch_proto::DeviceId;
use std::net::IpAddr;

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Who asks: an enrolled, unrevoked device that proved its key, from where.
#[derive(Clone, Debug)]
pub struct Caller {
    pub device: DeviceId,
    pub source: Option<IpAddr>,
}

impl Caller {
    pub fn new(device: DeviceId, source: Option<IpAddr>) -> Caller {
        Caller { device, source }
    }
}
