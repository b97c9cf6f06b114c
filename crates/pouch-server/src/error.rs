//! API errors: an HTTP status and a JSON [`ErrorBody`] with one actionable
//! line. The operations below return [`ServiceError`]s; the status is chosen
//! here, from the error's code alone.

use crate::service::ServiceError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pouch_proto::api::{ErrorBody, ErrorCode};
use pouch_store::{EnrollError, GroupError, StoreError};

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
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The HTTP status of an error code.
fn status_of(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden
        | ErrorCode::InviteInvalid
        | ErrorCode::InviteUsed
        | ErrorCode::InviteExpired
        | ErrorCode::NotMember => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::UnknownRecipient => StatusCode::NOT_FOUND,
        ErrorCode::Conflict | ErrorCode::StaleEpoch => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError {
            status: status_of(&e.code),
            body: ErrorBody {
                error: e.code,
                message: e.message,
                current_epoch: e.current_epoch,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ServiceError::from(e).into()
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        ServiceError::from(e).into()
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        ServiceError::from(e).into()
    }
}
