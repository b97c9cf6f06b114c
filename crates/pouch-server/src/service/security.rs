//! The security officer's statements, and the server's check of labels.
//!
//! The officer (a person, not the server's administrator) signs the label
//! policy, people's clearances and their revocations with a key of their own
//! (`pouch security init`). Each statement becomes an entry of the
//! transparency log (`pouch_log::OfficerEntry`), so every device relies on
//! the same policy and clearances and none changes quietly. Devices verify
//! every statement against the officer key they pinned: what the server
//! checks here is a first filter, not the authority. A security
//! administrator registers the officer's key from the officer's signed card;
//! an administrator token alone can sign nothing the devices accept.
//!
//! The server's second line: a delivery carries an outer copy of the label
//! (the server sees the label, never the content), checked against every
//! recipient's clearance before anything is queued.

use super::administrators::AdminCaller;
use super::audit::{Ev, record};
use super::{Caller, Result, ServiceError};
use crate::{AppState, now};
use pouch_label::statement::{
    SignedStatement, Statement, StatementError, officer_fingerprint, open_officer_card,
};
use pouch_label::{Clearance, Label, LabelPolicy};
use pouch_log::OfficerEntry;
use pouch_proto::api::{
    AdminRole, ApprovalAction, ErrorCode, LogInclusion, OfficerRegistered, OfficerStatement,
    RegisterOfficerResponse, StatementPublished,
};
use pouch_proto::security::{Action, Reason};
use pouch_proto::{Address, GroupId};
use pouch_store::{LogRecord, StoreError};

/// How far ahead of the server's clock a statement may be dated (clocks
/// differ; a statement dated years ahead would block every later one).
const FUTURE_SLACK_SECS: i64 = 86_400;

fn signed(s: &OfficerStatement) -> SignedStatement {
    SignedStatement {
        body: s.body.clone(),
        signature: s.signature.clone(),
    }
}

fn refused(e: StatementError) -> ServiceError {
    ServiceError::bad_request(e.to_string())
}

/// The newest statement about `subject`: its log entry and what it says.
async fn newest(s: &AppState, subject: &str) -> Result<Option<(u64, OfficerEntry)>> {
    let Some(found) = s.store.officer_statements(subject).await?.pop() else {
        return Ok(None);
    };
    let entry = OfficerEntry::from_bytes(found.entry.as_deref().unwrap_or_default())
        .map_err(|e| ServiceError::internal(&e.to_string(), "a stored statement is damaged"))?;
    Ok(Some((found.index, entry)))
}

/// The officer key in force (the newest registered), if any.
async fn officer_key(s: &AppState) -> Result<Option<ed25519_dalek::VerifyingKey>> {
    let Some((_, entry)) = newest(s, OfficerEntry::KEY).await? else {
        return Ok(None);
    };
    let card = SignedStatement {
        body: entry.body,
        signature: entry.signature,
    };
    let (key, _, _) = open_officer_card(&card)
        .map_err(|e| ServiceError::internal(&e.to_string(), "the stored officer key is damaged"))?;
    Ok(Some(key))
}

/// What the newest statement about `subject` says (verified with `key`).
async fn newest_statement(
    s: &AppState,
    subject: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Option<(u64, Statement)>> {
    let Some((_, entry)) = newest(s, subject).await? else {
        return Ok(None);
    };
    let statement = SignedStatement {
        body: entry.body,
        signature: entry.signature,
    }
    .verify(key);
    match statement {
        Ok(st) => Ok(Some((entry.version, st))),
        // Signed by an earlier officer key: not in force under this one.
        Err(StatementError::WrongSigner(_)) => Ok(None),
        Err(e) => Err(ServiceError::internal(
            &e.to_string(),
            "a stored statement is damaged",
        )),
    }
}

/// The number the next statement about `subject` takes.
async fn next_number(s: &AppState, subject: &str) -> Result<u64> {
    Ok(newest(s, subject)
        .await?
        .map(|(_, e)| e.version)
        .unwrap_or(0)
        + 1)
}

/// Appends a statement about `subject` to the log as its `version`.
async fn append(
    s: &AppState,
    subject: &str,
    version: u64,
    statement: &OfficerStatement,
) -> Result<StatementPublished> {
    let entry = OfficerEntry::new(
        subject,
        version,
        statement.body.clone(),
        statement.signature.clone(),
    );
    let record = LogRecord {
        leaf: s.log.key.commitment.commit_officer_entry(&entry),
        entry: entry.to_bytes(),
    };
    let index = s
        .store
        .append_officer_statement(subject, version, &record)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ServiceError::new(
                ErrorCode::Conflict,
                "another statement about the same subject was published at the same moment; try again",
            ),
            other => other.into(),
        })?;
    super::log::refresh_checkpoint(s).await?;
    Ok(StatementPublished {
        subject: subject.to_string(),
        version,
        index,
    })
}

/// A security administrator registers the officer's key from the card the
/// officer's `pouch security init` wrote (signed by that key: the registrant
/// cannot name a key nobody holds). Once there are two security
/// administrators it waits for the second (the key signs every clearance
/// and the policy: one administrator's token alone must not choose it).
pub async fn register_officer(
    s: &AppState,
    by: &AdminCaller,
    card: OfficerStatement,
) -> Result<RegisterOfficerResponse> {
    let (key, name, _) = open_officer_card(&signed(&card)).map_err(refused)?;
    if officer_key(s).await? == Some(key) {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "officer key {} is already the one in force",
                officer_fingerprint(&key)
            ),
        ));
    }
    let security_admins = note_security_administrators(s).await?;
    let two_person = s
        .store
        .get_setting(TWO_SECURITY_ADMINISTRATORS)
        .await?
        .is_some();
    if two_person && security_admins < 2 {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            "registering the security officer's key needs a second security administrator, and this server has fewer than two now: an operator adds one ('pouch admin add NAME --role security KEY'), then ask again",
        ));
    }
    if two_person {
        let card = serde_json::to_vec(&card)
            .map_err(|e| ServiceError::internal(&e.to_string(), "the card could not be kept"))?;
        let pending = super::administrators::request_for_operator(
            s,
            by,
            ApprovalAction::RegisterOfficer,
            &name,
            Some(card),
        )
        .await?;
        return Ok(RegisterOfficerResponse {
            registered: None,
            pending: Some(pending),
        });
    }
    Ok(RegisterOfficerResponse {
        registered: Some(register_now(s, by, card, None).await?),
        pending: None,
    })
}

/// Set (never unset) once the server has had two security administrators:
/// from then on the officer's key takes two of them, however many remain
/// (removing administrators must not switch the rule off).
const TWO_SECURITY_ADMINISTRATORS: &str = "officer_key_two_person";

/// Counts the security administrators, and switches the two-person rule for
/// the officer's key on for good once there are two.
pub(crate) async fn note_security_administrators(s: &AppState) -> Result<usize> {
    let count = s
        .store
        .list_admins()
        .await?
        .iter()
        .filter(|a| a.role == AdminRole::Security)
        .count();
    if count >= 2 {
        s.store
            .init_setting(TWO_SECURITY_ADMINISTRATORS, "on")
            .await?;
    }
    Ok(count)
}

/// The fingerprint of the officer's key a card (as JSON) holds.
pub(crate) fn card_fingerprint(card: &[u8]) -> std::result::Result<String, String> {
    let card: OfficerStatement = serde_json::from_slice(card).map_err(|e| e.to_string())?;
    let (key, _, _) = open_officer_card(&signed(&card)).map_err(|e| e.to_string())?;
    Ok(officer_fingerprint(&key))
}

/// Files the officer's key card in the log (`approved`: who asked and who
/// approved, when a second administrator did).
pub(crate) async fn register_now(
    s: &AppState,
    by: &AdminCaller,
    card: OfficerStatement,
    approved: Option<&str>,
) -> Result<OfficerRegistered> {
    let (key, name, _) = open_officer_card(&signed(&card)).map_err(refused)?;
    let fingerprint = officer_fingerprint(&key);
    let previous = officer_key(s).await?;
    if previous == Some(key) {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!("officer key {fingerprint} is already the one in force"),
        ));
    }
    append(
        s,
        OfficerEntry::KEY,
        next_number(s, OfficerEntry::KEY).await?,
        &card,
    )
    .await?;
    let replaced = previous.map(|k| officer_fingerprint(&k));
    tracing::warn!(admin = %by.name, %fingerprint, "security officer key registered");
    let mut detail = match &replaced {
        Some(old) => format!("officer {name}, key {fingerprint}, replacing key {old}"),
        None => format!("officer {name}, key {fingerprint}"),
    };
    if let Some(approved) = approved {
        detail.push_str(&format!(" ({approved})"));
    }
    record(
        s,
        by.event(Action::SecurityOfficerRegistered).detail(detail),
    )
    .await;
    Ok(OfficerRegistered {
        name,
        fingerprint,
        replaced,
    })
}

/// Publishes a statement the officer signed (a policy, a clearance, a
/// revocation), handed in by any signed-in device.
pub async fn publish(
    s: &AppState,
    caller: &Caller,
    statement: OfficerStatement,
) -> Result<StatementPublished> {
    let by = super::audit::account_of(s, &caller.device).await;
    let fail = |why: String| {
        let mut ev = Ev::new(Action::SecurityStatement)
            .device(&caller.device)
            .source_opt(caller.source)
            .failed(Reason::BadSignature, &why);
        if let Some(a) = &by {
            ev = ev.account(a);
        }
        ev
    };
    let key = officer_key(s).await?.ok_or_else(|| {
        ServiceError::new(
            ErrorCode::Conflict,
            "no security officer is registered on this server: a security administrator runs 'pouch admin security-officer CARD' first",
        )
    })?;
    let said = match signed(&statement).verify(&key) {
        Ok(said) => said,
        Err(e) => {
            record(s, fail(e.to_string())).await;
            return Err(refused(e));
        }
    };
    if said.issued_at() > now() + FUTURE_SLACK_SECS {
        return Err(ServiceError::bad_request(
            "the statement is dated more than a day ahead: check the officer machine's clock",
        ));
    }
    let subject = said.subject();
    let in_force = newest_statement(s, &subject, &key).await?;
    // Each statement is signed with its place among those about its
    // subject; devices check it against the log entry's number.
    let next = next_number(s, &subject).await?;
    if let Some(n) = said.sequence()
        && n != next
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "the statement is signed as number {n} about {subject}, but the next is number {next}: sign it again"
            ),
        ));
    }
    let detail = match &said {
        Statement::OfficerKey { .. } => {
            return Err(ServiceError::bad_request(
                "a new officer key is registered by a security administrator ('pouch admin security-officer CARD')",
            ));
        }
        Statement::Policy {
            version, policy, ..
        } => {
            let parsed = LabelPolicy::from_toml(policy)
                .map_err(|e| ServiceError::bad_request(format!("the policy is not valid: {e}")))?;
            if let Some((
                _,
                Statement::Policy {
                    version: v,
                    policy: text,
                    ..
                },
            )) = &in_force
            {
                if version <= v {
                    return Err(ServiceError::new(
                        ErrorCode::Conflict,
                        format!("policy version {version} is not newer than version {v} in force"),
                    ));
                }
                if let Ok(current) = LabelPolicy::from_toml(text)
                    && let Err(why) = parsed.keeps(&current)
                {
                    return Err(ServiceError::bad_request(format!(
                        "the new policy cannot replace version {v}: {why}"
                    )));
                }
            }
            format!("label policy {} version {version}", parsed.id)
        }
        Statement::Clearance {
            address,
            policy,
            max,
            ..
        } => {
            let address = Address::parse(address)
                .map_err(|e| ServiceError::bad_request(format!("the clearance's address: {e}")))?;
            let current = current_policy(s, &key).await?.ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::Conflict,
                    "publish a label policy before clearing anyone",
                )
            })?;
            if &current.id != policy || current.classification(max).is_none() {
                return Err(ServiceError::bad_request(format!(
                    "the clearance is for policy {policy} up to {max}, which the policy in force ({}) does not have",
                    current.id
                )));
            }
            format!("a clearance for {address} up to {max}")
        }
        Statement::Revocation { address, .. } => {
            let address = Address::parse(address)
                .map_err(|e| ServiceError::bad_request(format!("the revocation's address: {e}")))?;
            format!("the revocation of {address}'s clearance")
        }
    };
    let done = append(s, &subject, next, &statement).await?;
    let mut ev = Ev::new(Action::SecurityStatement)
        .device(&caller.device)
        .source_opt(caller.source)
        .detail(&detail);
    if let Some(a) = &by {
        ev = ev.account(a);
    }
    record(s, ev).await;
    Ok(done)
}

/// The policy in force (verified with the officer's key), if one is published.
async fn current_policy(
    s: &AppState,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Option<LabelPolicy>> {
    match newest_statement(s, OfficerEntry::POLICY, key).await? {
        Some((_, Statement::Policy { policy, .. })) => Ok(LabelPolicy::from_toml(&policy).ok()),
        _ => Ok(None),
    }
}

/// The newest statement about `subject`, with its inclusion proof against
/// the current checkpoint (devices verify both, and the signature).
pub async fn statement(s: &AppState, subject: &str) -> Result<LogInclusion> {
    let (size, note) = super::log::current_checkpoint(s).await?;
    let found = s
        .store
        .officer_statements(subject)
        .await?
        .into_iter()
        .rev()
        .find(|e| e.index < size)
        .ok_or_else(|| ServiceError::not_found(format!("no statement about {subject}")))?;
    super::log::prove(s, size, &note, found.index, found.leaf, found.entry).await
}

/// What the delivery check needs, kept between deliveries and built again
/// when the log has grown (every statement is a log entry, so a log of the
/// same size holds the same statements — on every node of a cluster).
#[derive(Default)]
pub struct LabelState(
    std::sync::Mutex<Option<std::sync::Arc<InForce>>>,
    MemberCache,
);

/// The accounts in a conversation at an epoch. A message is queued only in
/// the epoch it names, for the members of that epoch, and membership
/// changes only by a commit, which starts a new epoch: what is read for an
/// epoch — with that epoch current before and after the read — stays true
/// for it (a device removed without a commit — a revocation — can only
/// make the cached list longer, so the check stricter). A message naming
/// an epoch other than the current one is refused as stale. Bounded:
/// emptied when full.
#[derive(Default)]
struct MemberCache(std::sync::Mutex<std::collections::HashMap<(GroupId, u64), Members>>);

type Members = std::sync::Arc<Vec<Address>>;

const MEMBER_CACHE_MAX: usize = 4096;

impl MemberCache {
    async fn members(
        &self,
        s: &AppState,
        group_id: &GroupId,
        epoch: u64,
    ) -> Result<Option<Members>> {
        let key = (group_id.clone(), epoch);
        if let Some(found) = self.0.lock().expect("not poisoned").get(&key) {
            return Ok(Some(found.clone()));
        }
        let epoch_now = || async {
            Ok::<_, ServiceError>(s.store.group_members(group_id).await?.map(|(e, _)| e))
        };
        let Some(before) = epoch_now().await? else {
            return Ok(None); // the store refuses an unknown conversation itself
        };
        // A message names the epoch it is sent in; one not yet reached is
        // refused here (the store would refuse it too, unless the commit
        // that reaches it landed between this check and the queueing — and
        // then the members checked would not be those it reaches).
        if before != epoch {
            return Err(
                pouch_store::GroupError::from(pouch_store::GroupRejection::StaleEpoch {
                    current: before,
                })
                .into(),
            );
        }
        let Some(addresses) = s.store.group_member_addresses(group_id).await? else {
            return Ok(None);
        };
        let addresses = std::sync::Arc::new(addresses);
        // The same epoch before and after the read: the addresses are that
        // epoch's (epochs only go up), and stay so.
        if epoch_now().await? == Some(epoch) {
            let mut cache = self.0.lock().expect("not poisoned");
            if cache.len() >= MEMBER_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, addresses.clone());
        }
        Ok(Some(addresses))
    }
}

struct InForce {
    log_size: u64,
    key: Option<ed25519_dalek::VerifyingKey>,
    policy: Option<LabelPolicy>,
    /// Each account's clearance as last read (None: none on record).
    clearances: std::sync::Mutex<std::collections::HashMap<Address, Option<Clearance>>>,
}

impl InForce {
    async fn build(s: &AppState, log_size: u64) -> Result<InForce> {
        let key = officer_key(s).await?;
        let policy = match &key {
            Some(k) => current_policy(s, k).await?,
            None => None,
        };
        Ok(InForce {
            log_size,
            key,
            policy,
            clearances: Default::default(),
        })
    }

    async fn clearance(&self, s: &AppState, address: &Address) -> Result<Option<Clearance>> {
        if let Some(known) = self.clearances.lock().expect("not poisoned").get(address) {
            return Ok(known.clone());
        }
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let found = newest_statement(s, &OfficerEntry::person(address), key)
            .await?
            .and_then(|(_, st)| st.clearance_state());
        self.clearances
            .lock()
            .expect("not poisoned")
            .insert(address.clone(), found.clone());
        Ok(found)
    }
}

/// The statements in force now (cached until the log grows).
async fn in_force(s: &AppState) -> Result<std::sync::Arc<InForce>> {
    let size = s.store.log_size().await?;
    if let Some(c) = s.labels.0.lock().expect("not poisoned").as_ref()
        && c.log_size == size
    {
        return Ok(c.clone());
    }
    let built = std::sync::Arc::new(InForce::build(s, size).await?);
    *s.labels.0.lock().expect("not poisoned") = Some(built.clone());
    Ok(built)
}

/// The server's check of a delivery: with a label policy in force, the
/// label (the outer copy, else the policy's default) must be valid, within
/// the accreditation ceiling, and every member of the conversation —
/// the sender's own other devices too — cleared for it. Refused: nothing
/// is queued, and the attempt is an event (repeated ones an alert).
pub async fn check_delivery(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    epoch: u64,
    label: Option<&str>,
) -> Result<()> {
    crate::cpu_meter::Metered::new(
        check_delivery_label(s, caller, group_id, epoch, label),
        &DELIVERY_CHECKS_NS,
    )
    .await
}

/// The CPU time this process's servers spent in [`check_delivery`], for
/// `pouch bench --workload --labels` (the store's own work for a
/// conversation's first delivery in an epoch is not in it: SQLite runs it
/// on its own thread).
pub fn delivery_check_time() -> std::time::Duration {
    std::time::Duration::from_nanos(DELIVERY_CHECKS_NS.load(std::sync::atomic::Ordering::Relaxed))
}

static DELIVERY_CHECKS_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn check_delivery_label(
    s: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    epoch: u64,
    label: Option<&str>,
) -> Result<()> {
    let state = in_force(s).await?;
    let Some(policy) = &state.policy else {
        return match label {
            None => Ok(()),
            Some(_) => Err(ServiceError::bad_request(
                "no label policy is published on this server: send without a label",
            )),
        };
    };
    let at = now();
    let label: Label = match label {
        Some(xml) => policy
            .read_xml(xml)
            .map_err(|e| ServiceError::bad_request(format!("the label: {e}")))?,
        None => policy.default_label(at),
    };
    let Some(addresses) = s.labels.1.members(s, group_id, epoch).await? else {
        return Ok(()); // the store refuses an unknown conversation itself
    };
    for address in addresses.iter() {
        let clearance = state.clearance(s, address).await?;
        if let Err(why) = policy.check(&label, clearance.as_ref(), at) {
            let sender = super::audit::account_of(s, &caller.device).await;
            let message = format!(
                "{address} may not receive {} mail: {why}",
                policy.marking(&label)
            );
            let mut ev = Ev::new(Action::LabelRefused)
                .device(&caller.device)
                .source_opt(caller.source)
                .targets([address.clone()])
                .detail(&message);
            if let Some(a) = &sender {
                ev = ev.account(a);
            }
            record(s, ev).await;
            return Err(ServiceError::new(ErrorCode::Forbidden, message));
        }
    }
    Ok(())
}

/// The officer key's fingerprint in force, for `pouch admin` and invites.
pub async fn officer_fingerprint_in_force(s: &AppState) -> Result<Option<String>> {
    Ok(officer_key(s).await?.map(|k| officer_fingerprint(&k)))
}
