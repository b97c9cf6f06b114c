//! The client's one error type. Every variant prints as one line that says
//! what happened and what to do; none carries a secret.

use pouch_proto::api::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Pouch device at {0}: enroll first with 'pouch enroll INVITE'")]
    NotEnrolled(String),
    #[error("a Pouch device is already enrolled at {0}; use another --home to enroll a second one")]
    AlreadyEnrolled(String),
    #[error("wrong passphrase for the Pouch device at {0}")]
    WrongPassphrase(String),
    #[error("a passphrase is required: set POUCH_PASSPHRASE or run in a terminal")]
    NoPassphrase,
    #[error("cannot reach the Pouch server at {0}: is it running? ({1})")]
    Unreachable(String, String),
    /// The server's certificate does not chain to the invite's trust anchor,
    /// names another host, or is out of its dates (the reason says which).
    #[error("{0}")]
    UntrustedCertificate(String),
    #[error("server refused: {message}")]
    Server {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no message {0} on this device; see 'pouch inbox' or 'pouch sent' for ids")]
    NoSuchMessage(i64),
    #[error("SECURITY: {0}")]
    Security(String),
    #[error(
        "the account key of {0} has changed (a reset, or an attack): compare with 'pouch verify {0}', then accept with 'pouch verify {0} --accept'"
    )]
    AccountKeyChanged(String),
    #[error("cryptography: {0}")]
    Mls(#[from] pouch_mls::MlsError),
    /// The mail's classification label does not allow it (a recipient not
    /// cleared, above the ceiling, a reply labelled lower): nothing was sent.
    #[error("not sent: {0}")]
    Label(String),
    /// A message whose label inside differs from the copy the server
    /// delivered beside it: a tampered client or server.
    #[error("SECURITY: {0}")]
    LabelMismatch(String),
    #[error("the outbox is full: {0}; try again once they have gone")]
    OutboxFull(String),
    #[error("local store: {0}")]
    Local(String),
    #[error("{0}")]
    Io(String),
}

impl From<pouch_mail_proto::mime::MimeError> for ClientError {
    fn from(e: pouch_mail_proto::mime::MimeError) -> Self {
        ClientError::Invalid(e.to_string())
    }
}

impl ClientError {
    /// Whether no request reached the server at all (it refused the
    /// connection or could not be reached): then nothing was sent, and the
    /// mail may be kept and sent later without sending it twice.
    pub fn never_reached_server(&self) -> bool {
        matches!(self, ClientError::Unreachable(_, reason) if reason == crate::net::CONNECT_FAILED)
    }

    pub fn is_stale_epoch(&self) -> bool {
        matches!(
            self,
            ClientError::Server {
                code: ErrorCode::StaleEpoch,
                ..
            }
        )
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Local(e.to_string())
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
