//! API errors: an HTTP status and a JSON [`ErrorBody`] with one actionable line.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pouch_proto::api::{ErrorBody, ErrorCode};
use pouch_store::{EnrollError, GroupError, GroupRejection, InviteRejection, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
                current_epoch: None,
            },
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, "already exists")
            }
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::QuotaExceeded => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                "a storage quota is full; try again once recipients have fetched their mail",
            ),
            StoreError::Backend(detail) => {
                // The detail stays in the server log; the client gets no internals.
                tracing::error!(%detail, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Internal,
                    "the server's storage failed; try again shortly",
                )
            }
        }
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Invite(InviteRejection::Unknown) => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::InviteInvalid,
                "this invite is not valid for this address; ask your administrator for a new one",
            ),
            EnrollError::Invite(InviteRejection::Used) => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::InviteUsed,
                "this invite has already been used; ask your administrator for a new one",
            ),
            EnrollError::Invite(InviteRejection::Expired) => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::InviteExpired,
                "this invite has expired; ask your administrator for a new one",
            ),
            EnrollError::Store(StoreError::Conflict) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "this account already has devices: add this one with 'pouch link', approved from an existing device",
            ),
            EnrollError::Store(s) => s.into(),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Rejected(GroupRejection::StaleEpoch { current }) => {
                let mut err = Self::new(
                    StatusCode::CONFLICT,
                    ErrorCode::StaleEpoch,
                    format!("the conversation moved on to epoch {current}; sync and retry"),
                );
                err.body.current_epoch = Some(current);
                err
            }
            GroupError::Rejected(GroupRejection::NotMember) => Self::new(
                StatusCode::FORBIDDEN,
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
                StatusCode::INSUFFICIENT_STORAGE,
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
