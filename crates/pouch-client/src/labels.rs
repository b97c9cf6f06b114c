//! Classification labels on this device: the security officer's statements
//! as this device verified them, the label a mail carries, and the checks
//! on sending and on receipt.
//!
//! Trust: the officer's key is pinned on first sight from the transparency
//! log (every device of the domain sees the same entry), or accepted by the
//! user after a change (`pouch security accept FINGERPRINT`); every policy,
//! clearance and revocation must be signed by it and proven in the log.
//! The server serves statements but cannot make one: a statement it
//! withholds (an older clearance served after a revocation) is caught by
//! the directory scan, which notes the log index of every officer leaf
//! (`officer_statements.floor_index`), and a rollback by the stored index.
//!
//! Sending: the label comes from the mail itself — an RFC 7444 `SIO-Label`
//! header (what `pouch send --label` writes, and what a mail client may
//! send), else a subject marking the policy knows (`[SECRET] …`), else the
//! policy's default — so a mail kept in the outbox keeps its label. It must
//! be within the deployment's ceiling, at least the label of what it
//! answers (unless `Pouch-Label-Downgrade: REASON`, an audited event), and
//! every recipient — and the sender's own account, whose other devices
//! receive it — must be cleared for it. The label rides inside the MLS
//! envelope (bound to content and sender by the sender's signature) and as
//! an outer copy for the server's own check.
//!
//! Receipt: the inner and outer labels must be byte-identical (else a
//! critical report), and the account must be cleared for the label (else
//! the mail is refused, not stored).

use crate::error::{ClientError, Result};
use crate::local::LocalStore;
use crate::{Device, now};
use ed25519_dalek::VerifyingKey;
use pouch_label::statement::{
    SignedStatement, Statement, StatementError, officer_fingerprint, open_officer_card,
};
use pouch_label::{Clearance, Label, LabelPolicy};
use pouch_log::OfficerEntry;
use pouch_mail_proto::mime::Parsed;
use pouch_proto::Address;
use pouch_proto::api;
use rusqlite::OptionalExtension;
use std::collections::HashMap;
use std::sync::Arc;

pub mod meter;

fn security(msg: String) -> ClientError {
    ClientError::Security(msg)
}

/// What a submission through the bridge's SMTP is checked against without
/// waiting for the device's thread (which may be busy receiving a page):
/// the policy and the clearances the device last verified, kept up to date
/// by the device as it sends and at each full sync. It answers only what it
/// knows; anything else goes to the device ([`Device::check_submission_label`]).
/// Sending checks everything again against the log: this is the early
/// answer a mail client gets, not the decision.
#[derive(Clone, Default)]
pub struct LabelGate(std::sync::Arc<std::sync::Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    /// Whether the device has looked at all (else every answer is "ask").
    known: bool,
    policy: Option<Arc<LabelPolicy>>,
    me: Option<Address>,
    clearances: std::collections::HashMap<Address, Option<Clearance>>,
}

/// The gate's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum GateAnswer {
    /// Labels allow it (or none are in use).
    Go,
    /// It may not go, and why (naming the recipient).
    Refused(String),
    /// The gate does not know enough: ask the device.
    AskTheDevice,
}

impl LabelGate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The early answer for a submission with this `head` to `envelope`.
    pub fn check(&self, head: &[u8], envelope: &[Address]) -> GateAnswer {
        let _metered = meter::start();
        let (policy, me) = {
            let st = self.state();
            if !st.known {
                return GateAnswer::AskTheDevice;
            }
            match (&st.policy, &st.me) {
                (Some(policy), Some(me)) => (policy.clone(), me.clone()),
                _ => return GateAnswer::Go,
            }
        };
        // Parsed outside the lock: a mail client's other sessions wait on it.
        let Ok(parsed) = pouch_mail_proto::mime::parse(head) else {
            return GateAnswer::AskTheDevice;
        };
        let (policy, me) = (&*policy, &me);
        let at = now();
        let label = match mail_label(&parsed, policy, at) {
            Ok(l) => l,
            Err(ClientError::Label(why)) => return GateAnswer::Refused(why),
            Err(_) => return GateAnswer::AskTheDevice,
        };
        if let Err(r) = policy.within_ceiling(&label) {
            return GateAnswer::Refused(r.to_string());
        }
        let mut everyone = submission_recipients(envelope, &parsed);
        everyone.push(me.clone());
        let st = self.state();
        // The device moved to another policy meanwhile: ask it.
        if !st.known
            || !st
                .policy
                .as_ref()
                .is_some_and(|p| std::ptr::eq(&**p, policy))
        {
            return GateAnswer::AskTheDevice;
        }
        for address in &everyone {
            let Some(clearance) = st.clearances.get(address) else {
                return GateAnswer::AskTheDevice;
            };
            if let Err(why) = policy.check(&label, clearance.as_ref(), at) {
                return GateAnswer::Refused(refusal(address, me, &policy.marking(&label), &why));
            }
        }
        GateAnswer::Go
    }
}

/// Statements this process verified, by key and signature (with the body,
/// compared in full): a sender checks the same clearances mail after mail.
#[derive(Default)]
pub(crate) struct Verified(std::collections::HashMap<String, (String, Statement)>);

impl Verified {
    fn verify(
        &mut self,
        signed: &SignedStatement,
        key: &VerifyingKey,
    ) -> std::result::Result<Statement, StatementError> {
        let k = format!("{}{}", hex::encode(key.as_bytes()), signed.signature);
        if let Some((body, st)) = self.0.get(&k)
            && *body == signed.body
        {
            return Ok(st.clone());
        }
        let st = signed.verify(key)?;
        if self.0.len() > 10_000 {
            self.0.clear();
        }
        self.0.insert(k, (signed.body.clone(), st.clone()));
        Ok(st)
    }
}

/// What this device last found about the officer's statements, held in
/// memory so that a sender checking a dozen clearances per mail does not
/// read each from its store and commit to its subject again.
///
/// It holds only what the store holds: it is emptied whenever the store's
/// statements may have changed — the directory scan saw new leaves or
/// started over, a receipt looked again, a key was pinned or accepted, or
/// another process using this home wrote to it (SQLite's `data_version`).
#[derive(Default)]
pub(crate) struct OfficerMemo {
    data_version: Option<i64>,
    statements: HashMap<String, Option<(u64, u64, SignedStatement)>>,
    /// The label context, once found (`Some(None)`: no policy in force).
    context: Option<Option<LabelContext>>,
    /// People's clearances under that context (also in the gate).
    clearances: HashMap<Address, Option<Clearance>>,
}

impl OfficerMemo {
    /// Forgets everything (the store's statements may have changed).
    pub(crate) fn forget(&mut self) {
        self.statements.clear();
        self.context = None;
        self.clearances.clear();
    }
}

/// The label of the mail being sent, under the policy it was checked with.
pub(crate) struct Sending {
    pub policy: Arc<LabelPolicy>,
    pub shown: ShownLabel,
}

/// The policy in force and the key that signed it.
#[derive(Clone)]
pub(crate) struct LabelContext {
    pub policy: Arc<LabelPolicy>,
    pub key: VerifyingKey,
    /// The policy statement's log index (the parsed policy is kept per index).
    index: u64,
}

impl Device {
    /// The newest statement about `subject` this device can rely on: from
    /// its store when the log shows nothing newer, else fetched, proven in
    /// the log and kept. `None`: the log holds no statement about it.
    fn officer_statement(&mut self, subject: &str) -> Result<Option<(u64, u64, SignedStatement)>> {
        self.refresh_directory()?;
        if let Some(known) = self.officer_memo.statements.get(subject) {
            return Ok(known.clone());
        }
        let found = self.look_up_officer_statement(subject)?;
        self.officer_memo
            .statements
            .insert(subject.to_string(), found.clone());
        Ok(found)
    }

    /// The store's officer statements may have changed: what was read of
    /// them is read again.
    pub(crate) fn officer_store_changed(&mut self) {
        self.officer_memo.forget();
        self.local.receipt_cache.recheck();
    }

    /// Empties the memo if another process wrote to this home since (once
    /// per check of a mail, in [`Self::label_context`]).
    fn check_officer_memo(&mut self) -> Result<()> {
        let version = self.local.data_version()?;
        if self.officer_memo.data_version != Some(version) {
            self.officer_store_changed();
            self.officer_memo.data_version = Some(version);
        }
        Ok(())
    }

    fn look_up_officer_statement(
        &mut self,
        subject: &str,
    ) -> Result<Option<(u64, u64, SignedStatement)>> {
        let commitment = self.commitments()?.key.commit_officer(subject);
        type Row = (
            Option<i64>,
            Option<i64>,
            i64,
            Option<String>,
            Option<String>,
            bool,
        );
        let held: Option<Row> = self
            .local
            .conn
            .prepare_cached(
                "SELECT log_index, version, floor_index, body, signature, stale FROM officer_statements WHERE commitment = ?1",
            )?
            .query_row([&commitment], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()?;
        let (held_index, floor) = match &held {
            Some((Some(index), Some(version), floor, Some(body), Some(signature), stale)) => {
                if !stale && index >= floor {
                    return Ok(Some((
                        *index as u64,
                        *version as u64,
                        SignedStatement {
                            body: body.clone(),
                            signature: signature.clone(),
                        },
                    )));
                }
                (Some(*index as u64), *floor as u64)
            }
            // Known to have no statement at the last look, and the log
            // showed none since: no request.
            Some((None, _, 0, None, _, false)) => return Ok(None),
            Some((_, _, floor, ..)) => (None, *floor as u64),
            None => (None, 0),
        };
        let fetched: std::result::Result<api::LogInclusion, ClientError> =
            self.api.get(&format!("/v1/security/statements/{subject}"));
        let inc = match fetched {
            Ok(inc) => inc,
            Err(ClientError::Server { status: 404, .. }) => {
                if held_index.is_some() || floor > 0 {
                    return Err(security(format!(
                        "the server no longer shows the security officer's statement about {subject} that its transparency log holds"
                    )));
                }
                // Remembered as absent until the scan sees a leaf for it.
                self.local.receipt_cache.recheck();
                self.local.conn.execute(
                    "INSERT INTO officer_statements (commitment, subject, floor_index, stale) VALUES (?1, ?2, 0, 0) \
                     ON CONFLICT (commitment) DO UPDATE SET stale = 0",
                    rusqlite::params![commitment, subject],
                )?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.prove_in_log(
            &inc,
            &format!("the security officer's statement about {subject}"),
        )?;
        let entry = self
            .commitments()?
            .open_officer(inc.index, &inc.entry, &inc.full, subject)
            .map_err(|e| {
                security(format!(
                    "the security officer's statement about {subject} is not the one the log holds: {e}"
                ))
            })?;
        if inc.index < floor || held_index.is_some_and(|h| inc.index < h) {
            return Err(security(format!(
                "the server served an older statement about {subject} than its transparency log holds (a withheld update)"
            )));
        }
        self.local.receipt_cache.recheck();
        self.local.conn.execute(
            "INSERT INTO officer_statements (commitment, subject, log_index, version, floor_index, body, signature, stale) \
             VALUES (?1, ?2, ?3, ?6, ?3, ?4, ?5, 0) \
             ON CONFLICT (commitment) DO UPDATE SET subject = ?2, log_index = ?3, version = ?6, floor_index = MAX(floor_index, ?3), body = ?4, signature = ?5, stale = 0",
            rusqlite::params![commitment, subject, inc.index as i64, entry.body, entry.signature, entry.version as i64],
        )?;
        Ok(Some((
            inc.index,
            entry.version,
            SignedStatement {
                body: entry.body,
                signature: entry.signature,
            },
        )))
    }

    /// The security officer's key: pinned on first sight (with a notice),
    /// refused when it changes until the user accepts the new one.
    fn officer_key(&mut self) -> Result<Option<VerifyingKey>> {
        let pinned = self.local.meta("officer_key")?;
        let Some((_, key_number, card)) = self.officer_statement(OfficerEntry::KEY)? else {
            if pinned.is_some() {
                return Err(security(
                    "the server no longer shows the security officer's key this device pinned"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let (key, name) = match &self.officer_card {
            Some((body, signature, key, name))
                if *body == card.body && *signature == card.signature =>
            {
                (*key, name.clone())
            }
            _ => {
                let (key, name, _) = open_officer_card(&card).map_err(|e| {
                    security(format!(
                        "the security officer's key in the log is not valid: {e}"
                    ))
                })?;
                self.officer_card =
                    Some((card.body.clone(), card.signature.clone(), key, name.clone()));
                (key, name)
            }
        };
        let key_hex = hex::encode(key.as_bytes());
        let fingerprint = officer_fingerprint(&key);
        match pinned {
            Some(p) if p == key_hex => {}
            Some(_)
                if self.local.meta("officer_key_accepted")?.as_deref()
                    == Some(fingerprint.as_str()) =>
            {
                self.local.set_meta("officer_key", &key_hex)?;
                self.officer_store_changed();
                self.local.notice(
                    "Your domain's security officer key changed (accepted)",
                    &format!("This device now trusts security officer {name}, key fingerprint {fingerprint}, as you accepted."),
                )?;
            }
            Some(_) => {
                return Err(security(format!(
                    "the security officer's key changed to {fingerprint} (officer {name}): compare it with your security officer, then run 'pouch security accept {fingerprint}'"
                )));
            }
            // Only the domain's first officer key is taken on first sight: a
            // later one (a replacement, or an old card registered again) is
            // this device's to accept.
            None if key_number > 1
                && self.local.meta("officer_key_accepted")?.as_deref()
                    != Some(fingerprint.as_str()) =>
            {
                return Err(security(format!(
                    "this domain's security officer key has been replaced since it was first registered; the one in force is {fingerprint} (officer {name}): compare it with your security officer, then run 'pouch security accept {fingerprint}'"
                )));
            }
            None => {
                self.local.set_meta("officer_key", &key_hex)?;
                self.officer_store_changed();
                self.local.notice(
                    "Your domain's security officer",
                    &format!(
                        "Classification labels are in use. This device trusts security officer {name}, key fingerprint {fingerprint} (from the transparency log). Compare it with what your security officer announced; a different one means someone else registered it."
                    ),
                )?;
            }
        }
        Ok(Some(key))
    }

    /// Lets this device trust a changed officer key (after the user
    /// compared its fingerprint with the officer's own).
    pub fn accept_officer_key(&mut self, fingerprint: &str) -> Result<String> {
        let fingerprint = fingerprint.trim().to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Invalid(
                "an officer key fingerprint is 64 hex digits, as 'pouch security init' printed it"
                    .into(),
            ));
        }
        self.sign_in()?;
        // Only the key the log shows now, and only if it is the one named.
        let Some((_, _, card)) = self.officer_statement(OfficerEntry::KEY)? else {
            return Err(ClientError::Invalid(
                "no security officer is registered on this server: nothing to accept".into(),
            ));
        };
        let (key, _, _) = open_officer_card(&card).map_err(|e| {
            security(format!(
                "the security officer's key in the log is not valid: {e}"
            ))
        })?;
        if officer_fingerprint(&key) != fingerprint {
            return Err(ClientError::Invalid(format!(
                "the key in force is {}, not {fingerprint}: nothing changed",
                officer_fingerprint(&key)
            )));
        }
        self.local.set_meta("officer_key_accepted", &fingerprint)?;
        self.officer_store_changed();
        self.officer_key()?;
        Ok(fingerprint)
    }

    /// The display colours (`#rrggbb` foreground, background) the label
    /// policy gives a stored mail's label, if it gives any (no network).
    pub fn label_colours(&self, label_xml: &str) -> Option<(String, String)> {
        let policy = stored_policy(&self.local).ok()??;
        let label = policy.read_xml(label_xml).ok()?;
        let c = policy.classification(&label.classification)?;
        Some((c.fgcolor.clone()?, c.bgcolor.clone()?))
    }

    /// Hands a statement the officer signed to the server, which files it
    /// in the transparency log.
    pub fn publish_statement(
        &mut self,
        signed: &SignedStatement,
    ) -> Result<api::StatementPublished> {
        self.sign_in()?;
        self.api.post(
            "/v1/security/statements",
            &api::PublishStatementRequest {
                statement: api::OfficerStatement {
                    body: signed.body.clone(),
                    signature: signed.signature.clone(),
                },
            },
        )
    }

    /// The label policy in force, as this device verified it.
    pub fn published_policy(&mut self) -> Result<Option<LabelPolicy>> {
        self.sign_in()?;
        Ok(self.label_context()?.map(|c| (*c.policy).clone()))
    }

    /// The version of the label policy in force (0: none yet).
    pub fn published_policy_version(&mut self) -> Result<u64> {
        self.sign_in()?;
        // Read, not verified: only to number the next one (under a new
        // officer key too); the server refuses a version that does not grow.
        match self.officer_statement(OfficerEntry::POLICY)? {
            Some((_, _, signed)) => match serde_json::from_str(&signed.body) {
                Ok(Statement::Policy { version, .. }) => Ok(version),
                _ => Ok(0),
            },
            None => Ok(0),
        }
    }

    /// The label policy in force, if the officer published one.
    pub(crate) fn label_context(&mut self) -> Result<Option<LabelContext>> {
        let _metered = meter::start();
        self.refresh_directory()?;
        self.check_officer_memo()?;
        if let Some(known) = &self.officer_memo.context {
            return Ok(known.clone());
        }
        // Clearances are read under a context: found again with it.
        self.officer_memo.clearances.clear();
        let found = self.find_label_context();
        if let Ok(ctx) = &found {
            self.officer_memo.context = Some(ctx.clone());
        }
        let mut gate = self.gate.state();
        match &found {
            Ok(Some(ctx)) => {
                if !gate
                    .policy
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p, &ctx.policy))
                {
                    gate.clearances.clear();
                }
                gate.policy = Some(ctx.policy.clone());
                gate.me = Some(self.address.clone());
                gate.known = true;
            }
            Ok(None) => {
                gate.policy = None;
                gate.clearances.clear();
                gate.known = true;
            }
            // Nothing is known for sure: every submission asks the device.
            Err(_) => gate.known = false,
        }
        drop(gate);
        found
    }

    fn find_label_context(&mut self) -> Result<Option<LabelContext>> {
        let Some(key) = self.officer_key()? else {
            return Ok(None);
        };
        let Some((index, number, signed)) = self.officer_statement(OfficerEntry::POLICY)? else {
            return Ok(None);
        };
        if let Some(ctx) = &self.labels
            && ctx.index == index
            && ctx.key == key
        {
            return Ok(Some(ctx.clone()));
        }
        // Fails closed: a policy entry that does not verify (junk, or one
        // signed by an earlier officer and not yet published again under
        // the new key) stops labelled sending rather than switching it off.
        let text = match self.in_log(OfficerEntry::POLICY, number, &signed, &key)? {
            Statement::Policy { policy, .. } => policy,
            _ => {
                return Err(security(
                    "the log's label policy entry holds another kind of statement".into(),
                ));
            }
        };
        let policy = LabelPolicy::from_toml(&text)
            .map_err(|e| security(format!("the published label policy is not valid: {e}")))?;
        let ctx = LabelContext {
            policy: Arc::new(policy),
            key,
            index,
        };
        self.labels = Some(ctx.clone());
        Ok(Some(ctx))
    }

    /// A statement from the log, checked: signed by `key`, about `subject`,
    /// and signed as the very number the log files it under (`number`), so
    /// one appended again elsewhere in the log does not verify there.
    fn in_log(
        &mut self,
        subject: &str,
        number: u64,
        signed: &SignedStatement,
        key: &VerifyingKey,
    ) -> Result<Statement> {
        let st = self.verified.verify(signed, key).map_err(|e| {
            security(format!(
                "the newest statement about {subject} in the transparency log does not verify: {e}"
            ))
        })?;
        if st.subject() != subject {
            return Err(security(format!(
                "the log's statement filed under {subject} is about {}",
                st.subject()
            )));
        }
        if st.sequence() != Some(number) {
            return Err(security(format!(
                "the log files a statement about {subject} as number {number} but the officer signed it as number {} (a statement replayed)",
                st.sequence()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "none".into())
            )));
        }
        Ok(st)
    }

    /// The log's commitment key, as this signed-in device holds it (for
    /// tests that play a hostile server appending to its own log).
    #[doc(hidden)]
    pub fn log_commitment_key(&mut self) -> Result<[u8; 32]> {
        self.sign_in()?;
        Ok(*self.commitments()?.key.as_bytes())
    }

    /// The number the next statement about `subject` takes (one more than
    /// the newest in the log), for the officer's commands.
    pub fn next_statement_number(&mut self, subject: &str) -> Result<u64> {
        self.sign_in()?;
        Ok(self
            .officer_statement(subject)?
            .map(|(_, number, _)| number)
            .unwrap_or(0)
            + 1)
    }

    /// What `address` is cleared for now, as the officer signed it.
    pub(crate) fn clearance_of(
        &mut self,
        address: &Address,
        ctx: &LabelContext,
    ) -> Result<Option<Clearance>> {
        let _metered = meter::start();
        self.refresh_directory()?;
        if let Some(known) = self.officer_memo.clearances.get(address) {
            return Ok(known.clone());
        }
        let subject = OfficerEntry::person(address);
        let found = match self.officer_statement(&subject)? {
            None => None,
            Some((_, number, signed)) => match self.in_log(&subject, number, &signed, &ctx.key) {
                Ok(st) => st.clearance_state(),
                // Signed by an earlier officer: not in force under this one
                // (refused as no clearance: fails closed).
                Err(_) if signed.verify(&ctx.key).is_err() => None,
                Err(e) => return Err(e),
            },
        };
        self.officer_memo
            .clearances
            .insert(address.clone(), found.clone());
        self.gate
            .state()
            .clearances
            .insert(address.clone(), found.clone());
        Ok(found)
    }

    /// The label `parsed` is sent with to `recipients` (canonical XML), or
    /// `None` when no policy is in force; a refusal names the recipient and
    /// why, and nothing is sent.
    pub(crate) fn outgoing_label(
        &mut self,
        parsed: &Parsed,
        recipients: &[Address],
    ) -> Result<Option<String>> {
        let _metered = meter::start();
        let Some(ctx) = self.label_context()? else {
            return Ok(None);
        };
        let policy = &ctx.policy;
        let at = now();
        let label = mail_label(parsed, policy, at)?;
        let marking = policy.marking(&label);
        policy
            .within_ceiling(&label)
            .map_err(|r| ClientError::Label(r.to_string()))?;
        if let Some((answered, answered_marking)) = self.answered_label(parsed, policy)?
            && !label.dominates(&answered, policy)
        {
            match &parsed.label_downgrade {
                None => {
                    return Err(ClientError::Label(format!(
                        "this answers a {answered_marking} mail: label it at least so, or lower it with --downgrade \"REASON\""
                    )));
                }
                Some(reason) => {
                    self.downgraded = Some(format!(
                        "{}: {answered_marking} lowered to {marking} because \"{}\"",
                        parsed.message_id.as_deref().unwrap_or("a mail"),
                        reason
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(200)
                            .collect::<String>()
                    ))
                }
            }
        }
        let me = self.address.clone();
        let mut everyone: Vec<&Address> = recipients.iter().collect();
        if !everyone.contains(&&me) {
            everyone.push(&me);
        }
        for address in everyone {
            let clearance = self.clearance_of(address, &ctx)?;
            if let Err(why) = policy.check(&label, clearance.as_ref(), at) {
                return Err(ClientError::Label(refusal(address, &me, &marking, &why)));
            }
        }
        let xml = label.to_xml(policy);
        self.sending_label = Some(Sending {
            policy: ctx.policy.clone(),
            shown: ShownLabel::new(label, xml.clone(), policy),
        });
        Ok(Some(xml))
    }

    /// Checks the clearance of every member of `group` the mail did not
    /// name (`named`; the sender's own account was checked too) for the
    /// label being sent: a reply goes to the whole conversation.
    pub(crate) fn check_members_cleared(
        &mut self,
        group: &pouch_mls::MlsGroup,
        named: &[Address],
    ) -> Result<()> {
        let _metered = meter::start();
        let Some(Sending { policy, shown }) = &self.sending_label else {
            return Ok(());
        };
        let (policy, label) = (policy.clone(), shown.label.clone());
        let Some(ctx) = self.label_context()? else {
            return Ok(());
        };
        let me = self.address.clone();
        for address in pouch_mls::member_addresses(group) {
            if address == me || named.contains(&address) {
                continue;
            }
            let clearance = self.clearance_of(&address, &ctx)?;
            if let Err(why) = policy.check(&label, clearance.as_ref(), now()) {
                return Err(ClientError::Label(format!(
                    "{address}, a member of this conversation, may not receive {} mail: {why}",
                    policy.marking(&label)
                )));
            }
        }
        Ok(())
    }

    /// Turns `pouch send --label/--downgrade` into the header fields the
    /// mail carries them in (so a mail kept in the outbox keeps them).
    pub(crate) fn label_headers(&mut self, compose: &mut crate::Compose) -> Result<()> {
        if compose.label.is_none() && compose.downgrade.is_none() {
            return Ok(());
        }
        self.sign_in()?;
        let Some(ctx) = self.label_context()? else {
            return Err(ClientError::Label(
                "this domain has no label policy yet: send without --label".into(),
            ));
        };
        if let Some(text) = &compose.label {
            let label = ctx
                .policy
                .parse(text, now())
                .map_err(|e| ClientError::Label(e.to_string()))?;
            compose.headers.push((
                pouch_label::sio::HEADER.to_string(),
                pouch_label::sio::header_value(&label, &ctx.policy),
            ));
        }
        if let Some(reason) = &compose.downgrade {
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .chars()
                .take(200)
                .collect();
            if reason.is_empty() {
                return Err(ClientError::Label(
                    "--downgrade needs a reason, e.g. --downgrade \"declassified by the originator\"".into(),
                ));
            }
            compose.headers.push((
                "Pouch-Label-Downgrade".to_string(),
                crate::mail::encode_header_text(&reason),
            ));
        }
        Ok(())
    }

    /// The gate the bridge's SMTP sessions check submissions at.
    pub fn label_gate(&self) -> LabelGate {
        self.gate.clone()
    }

    /// Brings the gate up to the log: the policy, and every clearance it
    /// holds (each from this device's store unless the log moved).
    pub fn refresh_label_gate(&mut self) -> Result<()> {
        self.sign_in()?;
        let Some(ctx) = self.label_context()? else {
            return Ok(());
        };
        let known: Vec<Address> = self.gate.state().clearances.keys().cloned().collect();
        for address in known {
            self.clearance_of(&address, &ctx)?;
        }
        let me = self.address.clone();
        self.clearance_of(&me, &ctx)?;
        Ok(())
    }

    /// Whether a mail submitted through the bridge may go, label-wise, to
    /// `envelope` and the recipients its head names (checked before it is
    /// accepted into the outbox, so a refusal reaches the mail client as an
    /// SMTP error). `Ok(Err(why))`: it may not; `Err`: the check could not
    /// be made now.
    pub fn check_submission_label(
        &mut self,
        head: &[u8],
        envelope: &[Address],
    ) -> Result<std::result::Result<(), String>> {
        let _metered = meter::start();
        self.sign_in()?;
        let parsed = pouch_mail_proto::mime::parse(head)?;
        let everyone = submission_recipients(envelope, &parsed);
        let checked = self.outgoing_label(&parsed, &everyone);
        self.sending_label = None;
        self.downgraded = None;
        match checked {
            Ok(_) => Ok(Ok(())),
            Err(ClientError::Label(why)) => Ok(Err(why)),
            Err(e) => Err(e),
        }
    }

    /// The label of the stored mail `parsed` answers, if it has one.
    fn answered_label(
        &self,
        parsed: &Parsed,
        policy: &LabelPolicy,
    ) -> Result<Option<(Label, String)>> {
        let Some(parent) = &parsed.in_reply_to else {
            return Ok(None);
        };
        let xml: Option<String> = self
            .local
            .conn
            .query_row(
                "SELECT l.label FROM messages m JOIN message_labels l ON l.message = m.id WHERE m.message_id = ?1 LIMIT 1",
                [parent],
                |r| r.get(0),
            )
            .optional()?;
        Ok(xml.and_then(|x| policy.read_xml(&x).ok()).map(|l| {
            let m = policy.marking(&l);
            (l, m)
        }))
    }

    /// Before a page of queue items is applied: when any carries a label,
    /// this device's policy and own clearance are brought up to the log
    /// (network), so the receipt check reads them from the store.
    pub(crate) fn prepare_label_receipt(&mut self, items: &[api::QueueItem]) -> Result<()> {
        let _metered = meter::start();
        if items.iter().all(|i| i.label.is_none()) {
            return Ok(());
        }
        let me = self.address.clone();
        let looked = match self.label_context()? {
            Some(ctx) => self.clearance_of(&me, &ctx)?.is_some(),
            None => false,
        };
        if !looked {
            // Labelled mail, and no policy or clearance known here: the
            // officer may have published since this device last looked.
            // Look at the log again now rather than refuse the mail.
            self.local
                .conn
                .execute("DELETE FROM officer_statements WHERE body IS NULL", [])?;
            self.officer_store_changed();
            self.directory_checked = None;
            if let Some(ctx) = self.label_context()? {
                self.clearance_of(&me, &ctx)?;
            }
        }
        Ok(())
    }
}

/// Everyone a submission reaches: its envelope and the To, Cc and Bcc it
/// names (each once).
fn submission_recipients(envelope: &[Address], parsed: &Parsed) -> Vec<Address> {
    let mut everyone: Vec<Address> = envelope
        .iter()
        .chain(&parsed.to)
        .chain(&parsed.cc)
        .chain(&parsed.bcc)
        .cloned()
        .collect();
    everyone.sort();
    everyone.dedup();
    everyone
}

/// The one-line refusal for `address` (the sender's own account: `me`).
fn refusal(address: &Address, me: &Address, marking: &str, why: &pouch_label::Refusal) -> String {
    if address == me {
        format!("you may not send {marking} mail: {why}")
    } else {
        format!("{address} may not receive {marking} mail: {why}")
    }
}

/// The label a mail names: its `SIO-Label` header, or a subject marking
/// the policy knows (both, if given, must agree), else the policy's default.
pub(crate) fn mail_label(parsed: &Parsed, policy: &LabelPolicy, at: i64) -> Result<Label> {
    let from_subject = pouch_label::sio::subject_label(&parsed.subject, policy, at)
        .map_err(|e| ClientError::Label(format!("the subject's marking: {e}")))?;
    let from_header = match parsed.sio_labels.as_slice() {
        [] => None,
        [one] => Some(
            pouch_label::sio::read_header(one, policy)
                .map_err(|e| ClientError::Label(format!("{e}: give the label again")))?,
        ),
        _ => {
            return Err(ClientError::Label(
                "the mail has more than one SIO-Label header: give it one label".into(),
            ));
        }
    };
    match (from_header, from_subject) {
        (Some(h), Some(s))
            if h.classification != s.classification || h.categories != s.categories =>
        {
            Err(ClientError::Label(format!(
                "the SIO-Label header says {} but the subject's marking says {}: make them agree",
                policy.marking(&h),
                policy.marking(&s)
            )))
        }
        (Some(h), _) => Ok(h),
        (None, Some(s)) => Ok(s),
        (None, None) => Ok(policy.default_label(at)),
    }
}

/// What the receipt check needs, read from this device's store (the policy
/// and own clearance it verified; see [`Device::prepare_label_receipt`]).
pub(crate) struct ReceiptLabels {
    policy: LabelPolicy,
    own: Option<Clearance>,
    /// Whether mail clients are shown the subject marking.
    subject_marking: bool,
    /// Labels already read under this policy, by their XML: a busy receiver
    /// reads many mails under the same few labels.
    seen: std::cell::RefCell<HashMap<String, std::rc::Rc<ShownLabel>>>,
}

/// Which rows [`ReceiptLabels`] was read from: the pinned key, the log
/// positions of the policy and of this account's clearance (an entry's
/// content is fixed by its position in the log), and the bridge setting.
type ReceiptKey = (Option<String>, Option<i64>, Option<i64>, Option<String>);

/// [`ReceiptLabels`] as last read, by the rows it was read from (kept in the
/// store's handle: verifying two signatures and parsing the policy for
/// each mail would cost more than the check itself).
#[derive(Default)]
pub(crate) struct ReceiptCache {
    held: std::cell::RefCell<Option<(ReceiptKey, std::rc::Rc<ReceiptLabels>)>>,
    /// Whether what is held was compared with the store since the officer's
    /// statements last may have changed: a page of mail is checked against
    /// the store once, not once per mail.
    checked: std::cell::Cell<bool>,
    /// SQLite's `data_version` at that comparison: another process writing
    /// to this home (a `pouch sync` or `pouch security accept` beside a
    /// bridge) makes it compare again.
    data_version: std::cell::Cell<Option<i64>>,
}

impl ReceiptCache {
    /// The store's statements may have changed: compare again before use.
    pub(crate) fn recheck(&self) {
        let _metered = meter::start();
        self.checked.set(false);
    }
}

/// The label policy this device last verified, from its store (no network).
pub(crate) fn stored_policy(l: &LocalStore) -> Result<Option<LabelPolicy>> {
    l.receipt_cache.recheck();
    Ok(receipt_labels(l)?.map(|r| r.policy.clone()))
}

fn receipt_labels(l: &LocalStore) -> Result<Option<std::rc::Rc<ReceiptLabels>>> {
    let cache = &l.receipt_cache;
    let version = l.data_version()?;
    if cache.checked.get()
        && cache.data_version.get() == Some(version)
        && let Some((_, found)) = &*cache.held.borrow()
    {
        return Ok(Some(found.clone()));
    }
    cache.data_version.set(Some(version));
    // One query says whether what is held is still what the store holds.
    let key: ReceiptKey = l
        .conn
        .prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'officer_key'), \
                    (SELECT log_index FROM officer_statements WHERE subject = ?1 AND body IS NOT NULL), \
                    (SELECT log_index FROM officer_statements WHERE body IS NOT NULL \
                        AND subject = lower((SELECT value FROM meta WHERE key = 'address'))), \
                    (SELECT value FROM meta WHERE key = 'bridge_subject_marking')",
        )?
        .query_row([OfficerEntry::POLICY], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let (Some(key_hex), Some(_), _, _) = &key else {
        return Ok(None);
    };
    if let Some((held, found)) = &*cache.held.borrow()
        && *held == key
    {
        cache.checked.set(true);
        return Ok(Some(found.clone()));
    }
    let row = |subject: &str| -> Result<Option<(String, String)>> {
        Ok(l
            .conn
            .prepare_cached(
                "SELECT body, signature FROM officer_statements WHERE subject = ?1 AND body IS NOT NULL",
            )?
            .query_row([subject], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    let Some(policy_row) = row(OfficerEntry::POLICY)? else {
        return Ok(None);
    };
    let me = l.require_meta("address")?.to_ascii_lowercase();
    let own_row = row(&me)?;
    let officer = pouch_label::statement::parse_key(key_hex)
        .map_err(|e| ClientError::Local(format!("the pinned officer key: {e}")))?;
    let verify = |(body, signature): (String, String)| {
        SignedStatement { body, signature }.verify(&officer).ok()
    };
    let Some(Statement::Policy { policy, .. }) = verify(policy_row) else {
        return Ok(None);
    };
    let Ok(policy) = LabelPolicy::from_toml(&policy) else {
        return Ok(None);
    };
    let own = own_row
        .and_then(verify)
        .filter(|s| s.subject() == me)
        .and_then(|s| s.clearance_state());
    let found = std::rc::Rc::new(ReceiptLabels {
        policy,
        own,
        subject_marking: key.3.as_deref() != Some("off"),
        seen: Default::default(),
    });
    *cache.held.borrow_mut() = Some((key, found.clone()));
    cache.checked.set(true);
    Ok(Some(found))
}

/// A label as this device shows it, worked out once per label and policy.
pub(crate) struct ShownLabel {
    pub label: Label,
    /// Canonical STANAG 4774 XML.
    pub xml: String,
    pub marking: String,
    /// What the bridge's mail clients are shown of it.
    head: pouch_label::sio::HeadMarking,
}

impl ShownLabel {
    /// `label`, whose canonical XML under `policy` is `xml`.
    pub(crate) fn new(label: Label, xml: String, policy: &LabelPolicy) -> Self {
        ShownLabel {
            xml,
            marking: policy.marking(&label),
            head: pouch_label::sio::HeadMarking::new(&label, policy),
            label,
        }
    }
}

/// Whether mail clients are shown the subject marking (the bridge's setting).
pub(crate) fn subject_marking(l: &LocalStore) -> Result<bool> {
    Ok(l.meta("bridge_subject_marking")?.as_deref() != Some("off"))
}

/// A mail's label as it is stored with the mail.
pub(crate) struct StoredLabel<'a> {
    pub xml: &'a str,
    pub marking: &'a str,
    /// What the bridge shows in place of the first `.1` bytes (the header
    /// section), when the header section ends within the bytes at hand.
    pub bridge_head: Option<(Vec<u8>, usize)>,
}

impl<'a> StoredLabel<'a> {
    pub(crate) fn new(shown: &'a ShownLabel, subject_marking: bool, head: &[u8]) -> Self {
        StoredLabel {
            xml: &shown.xml,
            marking: &shown.marking,
            // A mail with no blank line is all header (when it was read whole).
            bridge_head: pouch_label::sio::head_end(head)
                .or((head.len() < pouch_mail_proto::mime::HEAD_LIMIT).then_some(head.len()))
                .map(|end| (shown.head.apply(&head[..end], subject_marking), end)),
        }
    }
}

/// A received mail's label, checked: what to store with the mail.
pub(crate) struct ReceivedLabel {
    pub shown: std::rc::Rc<ShownLabel>,
    pub subject_marking: bool,
}

/// The receipt check of an application message's labels (inner: in the
/// envelope; outer: the server's copy).
pub(crate) fn check_received(
    l: &LocalStore,
    inner: Option<&str>,
    outer: Option<&str>,
) -> Result<Option<ReceivedLabel>> {
    let _metered = meter::start();
    if inner != outer {
        return Err(ClientError::LabelMismatch(format!(
            "the label inside the message ({}) differs from the one the server delivered beside it ({}): a modified client or server",
            describe(inner),
            describe(outer)
        )));
    }
    let Some(xml) = inner else {
        return Ok(None);
    };
    let Some(ctx) = receipt_labels(l)? else {
        // Not a refusal: the mail stays in the queue, unacknowledged, and
        // is read once the policy can be (a `Local` error stops the sync).
        return Err(ClientError::Local(
            "a labelled mail arrived but this device cannot read the label policy yet; it stays on the server and is read at the next sync".into(),
        ));
    };
    let held = ctx.seen.borrow().get(xml).cloned();
    let shown = match held {
        Some(shown) => shown,
        None => {
            let label = ctx
                .policy
                .read_xml(xml)
                .map_err(|e| ClientError::Label(format!("the mail's label: {e}")))?;
            // read_xml takes only the canonical form: `xml` is it.
            let shown = std::rc::Rc::new(ShownLabel::new(label, xml.to_string(), &ctx.policy));
            let mut seen = ctx.seen.borrow_mut();
            if seen.len() >= 256 {
                seen.clear();
            }
            seen.insert(xml.to_string(), shown.clone());
            shown
        }
    };
    ctx.policy
        .check(&shown.label, ctx.own.as_ref(), now())
        .map_err(|why| {
            ClientError::Label(format!(
                "this account may not hold {} mail ({why}): it was refused, not stored",
                shown.marking
            ))
        })?;
    Ok(Some(ReceivedLabel {
        shown,
        subject_marking: ctx.subject_marking,
    }))
}

fn describe(label: Option<&str>) -> String {
    match label {
        None => "none".into(),
        Some(xml) => {
            let short: String = xml.chars().filter(|c| !c.is_control()).take(120).collect();
            format!("{} bytes: {short}…", xml.len())
        }
    }
}
