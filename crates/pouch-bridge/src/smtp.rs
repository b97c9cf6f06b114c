//! SMTP submission (RFC 6409) for local mail clients, on smtp-proto's parser.
//!
//! A session must authenticate (AUTH PLAIN or AUTH LOGIN, with the bridge
//! password) before MAIL. MAIL FROM must be the device's own address. Each
//! RCPT TO is checked against the server at once: an address outside Pouch
//! is refused there, with the reason, so that nothing is ever written that
//! would have to leave unencrypted. After DATA the message is queued in the
//! device's encrypted outbox and the answer is 250 once it is on disk, as
//! Postfix answers once a mail is in its queue ([`pouch_client::outbox`]);
//! the device then encrypts and sends it ([`pouch_client::Device::submit_mail`]):
//! To and Cc in one conversation, each blind copy on its own, and one Sent
//! copy. A mail that turns out not to be sendable comes back as a notice in
//! the INBOX.

use crate::Shared;
use crate::tls::Conn;
use base64::Engine;
use pouch_mail_proto::smtp::{Expect, Input, MAX_MESSAGE, Receiver};
use pouch_proto::Address;
use smtp_proto::{EhloResponse, Request};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Failed logins before the session is closed.
const MAX_AUTH_FAILURES: u32 = 3;

enum State {
    Command,
    /// AUTH PLAIN without an initial response: the next line is it.
    AuthPlain,
    /// AUTH LOGIN: the next line is the user name, then the password.
    AuthLoginUser,
    AuthLoginPassword(String),
    Data,
}

impl State {
    fn expects(&self) -> Expect {
        match self {
            State::Command => Expect::Command,
            State::AuthPlain | State::AuthLoginUser | State::AuthLoginPassword(_) => Expect::Line,
            State::Data => Expect::Data,
        }
    }
}

struct Session {
    shared: Shared,
    /// Offered until the connection is encrypted (STARTTLS mode).
    starttls: Option<Arc<rustls::ServerConfig>>,
    tls_on: bool,
    /// Set when the client asked for STARTTLS and was told to go ahead.
    switch_to_tls: bool,
    out: Vec<u8>,
    authenticated: bool,
    auth_failures: u32,
    from: Option<Address>,
    recipients: Vec<Address>,
    quit: bool,
}

impl Session {
    fn must_start_tls(&self) -> bool {
        self.starttls.is_some() && !self.tls_on
    }

    fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        let text = text.replace(['\r', '\n'], " ");
        if enhanced.is_empty() {
            self.out
                .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
        } else {
            self.out
                .extend_from_slice(format!("{code} {enhanced} {text}\r\n").as_bytes());
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
    }

    async fn login(&mut self, user: &str, password: String) {
        if self.shared.check_login(user.as_bytes(), password).await {
            self.authenticated = true;
            self.reply(235, "2.7.0", "Authentication succeeded");
        } else {
            self.auth_failures += 1;
            tracing::warn!("SMTP login refused");
            self.reply(
                535,
                "5.7.8",
                "Authentication failed: use your Pouch address and the bridge password ('pouch bridge --show-password')",
            );
            if self.auth_failures >= MAX_AUTH_FAILURES {
                self.reply(421, "4.7.0", "Too many failed logins; closing");
                self.quit = true;
            }
        }
    }

    async fn plain(&mut self, b64: &str) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok());
        // authzid NUL authcid NUL passwd
        let parts: Option<(String, String)> = decoded.and_then(|s| {
            let mut it = s.split('\0');
            let _authzid = it.next()?;
            let user = it.next()?.to_string();
            let pass = it.next()?.to_string();
            Some((user, pass))
        });
        match parts {
            Some((user, pass)) => self.login(&user, pass).await,
            None => self.reply(501, "5.5.2", "Cannot decode the AUTH PLAIN response"),
        }
    }

    async fn command(&mut self, request: Request<String>) -> Option<State> {
        match request {
            Request::Ehlo { host: _ } | Request::Lhlo { host: _ } => {
                let mut ehlo = EhloResponse::new("pouch-bridge".to_string());
                ehlo.capabilities = smtp_proto::EXT_8BIT_MIME
                    | smtp_proto::EXT_ENHANCED_STATUS_CODES
                    | smtp_proto::EXT_PIPELINING
                    | smtp_proto::EXT_SIZE;
                if self.must_start_tls() {
                    ehlo.capabilities |= smtp_proto::EXT_START_TLS;
                } else {
                    ehlo.capabilities |= smtp_proto::EXT_AUTH;
                    ehlo.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
                }
                ehlo.size = MAX_MESSAGE;
                let _ = ehlo.write(&mut self.out);
                self.reset();
            }
            Request::Helo { host: _ } => self.reply(250, "", "pouch-bridge"),
            Request::Auth { .. } if self.must_start_tls() => {
                self.reply(530, "5.7.0", "Must issue a STARTTLS command first")
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                if self.authenticated {
                    self.reply(503, "5.5.1", "Already authenticated");
                } else if mechanism == smtp_proto::AUTH_PLAIN {
                    if initial_response.is_empty() {
                        self.out.extend_from_slice(b"334 \r\n");
                        return Some(State::AuthPlain);
                    }
                    self.plain(&initial_response).await;
                } else if mechanism == smtp_proto::AUTH_LOGIN {
                    if initial_response.is_empty() {
                        self.out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                        return Some(State::AuthLoginUser);
                    }
                    let user = decode_line(&initial_response).unwrap_or_default();
                    self.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                    return Some(State::AuthLoginPassword(user));
                } else {
                    self.reply(504, "5.5.4", "Use AUTH PLAIN or AUTH LOGIN");
                }
            }
            Request::Mail { from } => {
                if !self.authenticated {
                    self.reply(530, "5.7.0", "Authentication required: log in with your Pouch address and the bridge password");
                } else if self.from.is_some() {
                    self.reply(503, "5.5.1", "Sender already given; RSET to start over");
                } else if Address::parse(&from.address).is_ok_and(|a| a == self.shared.address) {
                    self.from = Some(self.shared.address.clone());
                    self.reply(250, "2.1.0", "Sender OK");
                } else {
                    let me = self.shared.address.clone();
                    self.reply(553, "5.7.1", &format!("This bridge sends as {me} only"));
                }
            }
            Request::Rcpt { to } => {
                if self.from.is_none() {
                    self.reply(503, "5.5.1", "MAIL FROM first");
                } else {
                    self.recipient(&to.address).await;
                }
            }
            Request::Data => {
                if self.recipients.is_empty() {
                    self.reply(503, "5.5.1", "No valid recipients");
                } else {
                    self.out
                        .extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
                    return Some(State::Data);
                }
            }
            Request::Rset => {
                self.reset();
                self.reply(250, "2.0.0", "Reset");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0", "OK"),
            Request::Vrfy { .. } => self.reply(252, "2.5.0", "Cannot verify; try RCPT"),
            Request::Quit => {
                self.reply(221, "2.0.0", "Bye");
                self.quit = true;
            }
            Request::StartTls if self.must_start_tls() => {
                self.reply(220, "2.0.0", "Ready to start TLS");
                self.switch_to_tls = true;
            }
            Request::StartTls => self.reply(502, "5.5.1", "STARTTLS is not offered here"),
            Request::Bdat { .. } => self.reply(502, "5.5.1", "CHUNKING is not offered; use DATA"),
            _ => self.reply(502, "5.5.1", "Command not implemented"),
        }
        None
    }

    async fn recipient(&mut self, raw: &str) {
        let Ok(address) = Address::parse(raw) else {
            self.reply(501, "5.1.3", &format!("'{raw}' is not an address"));
            return;
        };
        if self.recipients.contains(&address) {
            self.reply(250, "2.1.5", "Recipient OK (again)");
            return;
        }
        if self.shared.recipient_known(&address) {
            self.recipients.push(address);
            self.reply(250, "2.1.5", "Recipient OK");
            return;
        }
        let a = address.clone();
        match self.shared.with(move |d| d.check_recipient(&a)).await {
            Ok(Ok(())) => {
                self.shared.recipient_reachable(&address);
                self.recipients.push(address);
                self.reply(250, "2.1.5", "Recipient OK");
            }
            Ok(Err(reason)) => self.reply(
                550,
                "5.1.1",
                &format!("{address} cannot receive Pouch mail, and Pouch never sends unencrypted: {reason}"),
            ),
            Err(e) => self.reply(451, "4.4.1", &format!("Cannot check {address} now: {e}")),
        }
    }

    async fn deliver(&mut self, raw: Vec<u8>) {
        let envelope = std::mem::take(&mut self.recipients);
        self.from = None;
        if raw.len() > MAX_MESSAGE {
            self.reply(552, "5.3.4", "Message too big");
            return;
        }
        // A mail its label does not allow to go is refused now, naming the
        // recipient and why, and nothing is queued.
        let head = raw[..raw.len().min(pouch_mail_proto::mime::HEAD_LIMIT)].to_vec();
        // First from what the device last verified (no wait for its
        // thread); the device itself only when that is not enough.
        let early = match self.shared.label_gate.check(&head, &envelope) {
            pouch_client::labels::GateAnswer::Go => Ok(Ok(())),
            pouch_client::labels::GateAnswer::Refused(why) => Ok(Err(why)),
            pouch_client::labels::GateAnswer::AskTheDevice => {
                let recipients = envelope.clone();
                self.shared
                    .with(move |d| d.check_submission_label(&head, &recipients))
                    .await
            }
        };
        match early {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                self.reply(550, "5.7.1", &format!("Not sent: {why}"));
                return;
            }
            Err(e) => {
                self.reply(
                    451,
                    "4.7.0",
                    &format!("The label cannot be checked now, try again: {e}"),
                );
                return;
            }
        }
        // Accepted once it is in the outbox, on disk; the device sends it
        // next (see pouch_client::outbox).
        let (outbox, own) = (self.shared.outbox.clone(), self.shared.address.clone());
        match tokio::task::spawn_blocking(move || outbox.queue(&own, raw, &envelope)).await {
            Ok(Ok(message_id)) => {
                self.shared.send_queued();
                self.reply(
                    250,
                    "2.0.0",
                    &format!(
                        "Queued for encrypted delivery <{}>",
                        message_id.unwrap_or_default()
                    ),
                )
            }
            Ok(Err(e @ pouch_client::ClientError::Invalid(_))) => {
                self.reply(554, "5.6.0", &format!("Not sent: {e}"))
            }
            Ok(Err(e @ pouch_client::ClientError::OutboxFull(_))) => {
                self.reply(452, "4.3.1", &format!("Not queued: {e}"))
            }
            Ok(Err(e)) => self.reply(451, "4.3.0", &format!("Not queued, try again: {e}")),
            Err(_) => self.reply(451, "4.3.0", "Not queued, try again"),
        }
    }
}

fn decode_line(line: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
}

/// One client connection, from greeting to QUIT.
pub async fn session(
    shared: Shared,
    mut conn: Conn,
    starttls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let mut s = Session {
        shared,
        tls_on: conn.is_tls(),
        starttls,
        switch_to_tls: false,
        out: Vec::new(),
        authenticated: false,
        auth_failures: 0,
        from: None,
        recipients: Vec::new(),
        quit: false,
    };
    conn.write_all(b"220 pouch-bridge ESMTP Pouch bridge ready\r\n")
        .await?;
    let mut input = Receiver::default();
    let mut state = State::Command;
    let mut chunk = vec![0u8; 64 * 1024];
    // Before login the whole session has one minute, not one per read.
    let login_deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // RFC 5321 (4.5.3.2) gives a server 5 minutes per command.
        let idle = if s.authenticated {
            std::time::Duration::from_secs(300)
        } else {
            login_deadline.saturating_duration_since(std::time::Instant::now())
        };
        let n = match tokio::time::timeout(idle, conn.read(&mut chunk)).await {
            Ok(n) => n?,
            Err(_) => {
                let _ = conn
                    .write_all(b"421 4.4.2 Idle for too long; closing\r\n")
                    .await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        input.push(&chunk[..n]);
        // Handle everything complete in what has arrived (pipelining).
        while !s.quit && !s.switch_to_tls {
            match input.next(state.expects()) {
                Input::NeedMore => break,
                Input::Message(raw) => {
                    state = State::Command;
                    s.deliver(raw).await;
                }
                Input::MessageTooBig => {
                    s.reply(552, "5.3.4", "Message too big; closing");
                    s.quit = true;
                }
                Input::LineTooLong => {
                    s.reply(500, "5.5.2", "Line too long; closing");
                    s.quit = true;
                }
                Input::UnknownCommand => s.reply(500, "5.5.2", "Unknown command"),
                Input::Syntax(e) => s.reply(501, "5.5.4", &format!("Syntax error: {e}")),
                Input::Line(line) => match std::mem::replace(&mut state, State::Command) {
                    State::AuthPlain if line == "*" => {
                        s.reply(501, "5.7.0", "Authentication cancelled")
                    }
                    State::AuthPlain => s.plain(&line).await,
                    State::AuthLoginUser if line == "*" => {
                        s.reply(501, "5.7.0", "Authentication cancelled")
                    }
                    State::AuthLoginUser => {
                        s.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                        state = State::AuthLoginPassword(decode_line(&line).unwrap_or_default());
                    }
                    State::AuthLoginPassword(_) if line == "*" => {
                        s.reply(501, "5.7.0", "Authentication cancelled")
                    }
                    State::AuthLoginPassword(user) => {
                        s.login(&user, decode_line(&line).unwrap_or_default()).await
                    }
                    State::Command | State::Data => {}
                },
                Input::Request(request) => {
                    if let Some(next) = s.command(request).await {
                        state = next;
                    }
                }
            }
        }
        conn.write_all(&s.out).await?;
        s.out.clear();
        if s.quit {
            return Ok(());
        }
        if s.switch_to_tls {
            s.switch_to_tls = false;
            // Nothing sent in the clear before the handshake may count after it.
            input.clear();
            let config = s.starttls.clone().expect("offered only with a certificate");
            conn.start_tls(config).await?;
            s.tls_on = true;
            s.authenticated = false;
            s.reset();
        }
    }
}
