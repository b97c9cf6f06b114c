//! The server's check of a conversation's commits (see `pouch_mls::public`).
//!
//! Before the fan-out list of a conversation changes, the commit that changes
//! it is verified against the conversation's public MLS state: signed by the
//! submitting device's leaf, valid for the current epoch, and adding and
//! removing exactly the devices the request names, with no other proposal
//! kinds and the committer's leaf keeping its address and key. A member's
//! modified client therefore cannot drop someone from delivery, slip in a
//! device, or advance the epoch with bytes that are not a valid commit (it can
//! still encrypt garbage path secrets to some members, which the server cannot
//! see; those members report it).

use crate::AppState;
use crate::service::ServiceError;
use crate::service::audit::{Ev, record};
use pouch_mls::Leaf;
use pouch_mls::public::PublicView;
use pouch_proto::api::CommitRequest;
use pouch_proto::security::{Action, Reason};
use pouch_proto::{DeviceId, GroupId};
use pouch_store::{GroupError, GroupRejection};

fn crypto() -> pouch_mls::crypto::Crypto {
    pouch_mls::crypto::Crypto::default()
}

/// Checks a submitted commit; returns the conversation's public state after
/// it, to be stored with the new epoch (`None` for a conversation begun
/// before the server kept public state, whose commits it cannot check).
pub(crate) async fn check_commit(
    s: &AppState,
    group_id: &GroupId,
    sender: &DeviceId,
    req: &CommitRequest,
) -> Result<Option<Vec<u8>>, ServiceError> {
    match verify(s, group_id, sender, req).await {
        Ok(state) => Ok(state),
        Err(Refusal::Service(e)) => Err(e),
        Err(Refusal::Invalid(why)) => {
            let mut ev = Ev::new(Action::Commit).device(sender).failed(
                Reason::CommitRejected,
                format!("conversation {}: {why}", group_id.0),
            );
            if let Ok(Some(d)) = s.store.device(sender).await {
                ev = ev.account(&d.address);
            }
            record(s, ev).await;
            Err(ServiceError::bad_request(format!(
                "the commit was refused: {why}; sync the conversation and try again"
            )))
        }
    }
}

enum Refusal {
    /// Not the request's fault (stale epoch, storage): passed on as is.
    Service(ServiceError),
    /// The commit does not do what the request says, or is not valid.
    Invalid(String),
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        Refusal::Service(e)
    }
}

impl From<pouch_store::StoreError> for Refusal {
    fn from(e: pouch_store::StoreError) -> Self {
        Refusal::Service(e.into())
    }
}

async fn verify(
    s: &AppState,
    group_id: &GroupId,
    sender: &DeviceId,
    req: &CommitRequest,
) -> Result<Option<Vec<u8>>, Refusal> {
    let invalid = |why: &str| Refusal::Invalid(why.to_string());
    // Who is not in the conversation learns nothing about it, not even
    // whether its commit would verify.
    if req.base_epoch > 0 {
        match s.store.group_members(group_id).await? {
            None => {
                return Err(Refusal::Service(
                    GroupError::from(GroupRejection::UnknownGroup).into(),
                ));
            }
            Some((_, members)) if !members.contains(sender) => {
                return Err(Refusal::Service(
                    GroupError::from(GroupRejection::NotMember).into(),
                ));
            }
            Some(_) => {}
        }
    }
    let commit = req
        .commit
        .clone()
        .ok_or_else(|| invalid("a change to a conversation must carry its MLS commit"))?;
    // What the commit must show, from the database (cheap), before any
    // MLS work: the sender's leaf, and the leaves of the devices named.
    let sender_leaf = leaves_of(s, std::slice::from_ref(sender)).await?.remove(0);
    let added = sorted(leaves_of(s, &req.added).await?);
    let removed = sorted(leaves_of(s, &req.removed).await?);
    let start = if req.base_epoch == 0 {
        let info = req
            .group_info
            .clone()
            .ok_or_else(|| invalid("a new conversation must carry its creator's GroupInfo"))?;
        Start::New(info)
    } else {
        let Some((epoch, state)) = s.store.group_public_state(group_id).await? else {
            return Err(Refusal::Service(
                GroupError::from(GroupRejection::UnknownGroup).into(),
            ));
        };
        let Some(state) = state else {
            // Begun before the server kept public state: nothing to check against.
            return Ok(None);
        };
        if epoch != req.base_epoch {
            return Err(stale(epoch));
        }
        Start::Stored(state)
    };
    let base_epoch = req.base_epoch;
    let group_id = group_id.clone();
    // Verifying a commit of a large conversation is real work (its tree,
    // post-quantum keys): off the async workers.
    tokio::task::spawn_blocking(move || {
        let crypto = crypto();
        let mut view = match start {
            Start::New(info) => {
                let view = PublicView::start(&crypto, &info)
                    .map_err(|e| Refusal::Invalid(format!("its GroupInfo is not valid ({e})")))?;
                if view.epoch() != 0
                    || view.members() != vec![sender_leaf.clone()]
                    || GroupId::from_bytes(view.group_id()) != group_id
                {
                    return Err(Refusal::Invalid(
                        "a new conversation must start with its creator alone, at epoch 0".into(),
                    ));
                }
                view
            }
            Start::Stored(state) => PublicView::from_bytes(&state)
                .map_err(|e| Refusal::Service(e_internal(&e.to_string())))?,
        };
        if view.epoch() != base_epoch {
            // The stored state and the epoch are written together; apart, the
            // state is damaged (a node that does not keep it wrote a commit).
            return Err(Refusal::Service(e_internal(&format!(
                "public state at epoch {} for a group at epoch {base_epoch}",
                view.epoch()
            ))));
        }
        let effect = view
            .apply_commit(&crypto, &commit)
            .map_err(|e| Refusal::Invalid(format!("it does not verify ({e})")))?;
        if effect.committer != sender_leaf {
            return Err(Refusal::Invalid(
                "it is signed by another member than the sending device".into(),
            ));
        }
        // Each leaf's credential names its device's account and carries its key.
        if sorted(effect.added) != added {
            return Err(Refusal::Invalid(
                "the devices it adds are not the ones the request names".into(),
            ));
        }
        if sorted(effect.removed) != removed {
            return Err(Refusal::Invalid(
                "the devices it removes are not the ones the request names".into(),
            ));
        }
        Ok(Some(view.to_bytes()))
    })
    .await
    .map_err(|e| Refusal::Service(e_internal(&e.to_string())))?
}

/// Where a commit's check starts from.
enum Start {
    /// The creator's GroupInfo of a new conversation.
    New(Vec<u8>),
    /// The stored public state of an existing one.
    Stored(Vec<u8>),
}

fn stale(current: u64) -> Refusal {
    Refusal::Service(GroupError::from(GroupRejection::StaleEpoch { current }).into())
}

/// The MLS leaves these devices must have: their account's address in the
/// credential, their registered signature key (unknown devices refuse the commit).
async fn leaves_of(s: &AppState, devices: &[DeviceId]) -> Result<Vec<Leaf>, Refusal> {
    let mut leaves = Vec::with_capacity(devices.len());
    for d in devices {
        let device = s
            .store
            .device(d)
            .await?
            .ok_or_else(|| Refusal::Invalid(format!("it names an unknown device {d}")))?;
        leaves.push((Some(device.address), device.signature_key));
    }
    Ok(leaves)
}

fn sorted(mut keys: Vec<Leaf>) -> Vec<Leaf> {
    keys.sort();
    keys
}

fn e_internal(e: &str) -> ServiceError {
    tracing::error!(error = %e, "cannot check a commit against the stored public group state");
    ServiceError::new(
        pouch_proto::api::ErrorCode::Internal,
        "the conversation's state on the server is damaged; report this to your administrator",
    )
}
