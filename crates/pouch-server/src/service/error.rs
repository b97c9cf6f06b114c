//! The service layer's error: what went wrong as a stable [`ErrorCode`] and
//! one line the user can act on, with no HTTP in it. The HTTP layer maps the
//! code to a status ([`crate::error::ApiError`]); federation or a console
//! would map it their own way. Backend detail is logged here, never sent.

use pouch_proto::api::ErrorCode;
use pouch_store::{EnrollError, GroupError, GroupRejection, InviteRejection, StoreError};

#[derive(Debug)]
pub struct ServiceError {
    pub code: ErrorCode,
    /// One line saying what to do.
    pub message: String,
    /// With [`ErrorCode::StaleEpoch`]: the conversation's epoch now.
    pub current_epoch: Option<u64>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            current_epoch: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// Something on the server is broken (not the request): logged in full,
    /// told to the caller in one line.
    pub fn internal(logged: &str, message: impl Into<String>) -> Self {
        tracing::error!(error = %logged, "internal failure");
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::new(ErrorCode::Conflict, "already exists"),
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::QuotaExceeded => Self::new(
                ErrorCode::QuotaExceeded,
                "a storage quota is full; try again once recipients have fetched their mail",
            ),
            StoreError::Unsupported(what) => Self::bad_request(what),
            StoreError::Backend(detail) => {
                // The detail stays in the server log; the client gets no internals.
                tracing::error!(%detail, "storage failure");
                Self::new(
                    ErrorCode::Internal,
                    "the server's storage failed; try again shortly",
                )
            }
        }
    }
}

impl From<EnrollError> for ServiceError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Invite(InviteRejection::Unknown) => Self::new(
                ErrorCode::InviteInvalid,
                "this invite is not valid for this address; ask your administrator for a new one",
            ),
            EnrollError::Invite(InviteRejection::Used) => Self::new(
                ErrorCode::InviteUsed,
                "this invite has already been used; ask your administrator for a new one",
            ),
            EnrollError::Invite(InviteRejection::Expired) => Self::new(
                ErrorCode::InviteExpired,
                "this invite has expired; ask your administrator for a new one",
            ),
            EnrollError::Store(StoreError::Conflict) => Self::new(
                ErrorCode::Conflict,
                "this account already has devices: add this one with 'pouch link', approved from an existing device",
            ),
            EnrollError::Store(s) => s.into(),
        }
    }
}

impl From<GroupError> for ServiceError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Rejected(GroupRejection::StaleEpoch { current }) => {
                let mut err = Self::new(
                    ErrorCode::StaleEpoch,
                    format!("the conversation moved on to epoch {current}; sync and retry"),
                );
                err.current_epoch = Some(current);
                err
            }
            GroupError::Rejected(GroupRejection::NotMember) => Self::new(
                ErrorCode::NotMember,
                "this device is not a member of that conversation",
            ),
            GroupError::Rejected(GroupRejection::UnknownGroup) => {
                Self::not_found("no such conversation on the server")
            }
            GroupError::Rejected(GroupRejection::UnknownDevice) => {
                Self::bad_request("a device named in the commit does not exist or was revoked")
            }
            GroupError::Rejected(GroupRejection::QueueFull { device }) => Self::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "device {device} of a recipient has too much mail waiting on the server; nothing was sent: try again once it has synced"
                ),
            ),
            GroupError::Rejected(GroupRejection::UnknownBlob) => Self::bad_request(
                "the message refers to a blob that is not a finished upload of this device",
            ),
            GroupError::Store(s) => s.into(),
        }
    }
}
