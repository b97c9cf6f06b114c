//! The delivery service's view of a conversation: MLS's public group state.
//!
//! The server fans a conversation out to its members, so whoever controls
//! the fan-out list controls who receives mail. Members therefore send their
//! commits as MLS PublicMessages (signed, not encrypted; the path secrets
//! inside stay HPKE-encrypted to the members), and the server keeps, per
//! conversation, the public part of the group — ratchet tree, group context,
//! transcript hash, nothing secret — with which it verifies every commit
//! exactly as a member would: the signature of the committing leaf, the
//! proposals, the new tree. Only then does it change the fan-out, and only to
//! what the commit does. Garbage commit bytes, a commit signed by someone
//! else, or a fan-out change the commit does not make are refused at the door
//! instead of being left to the receivers to report.
//!
//! Application messages stay PrivateMessages: OpenMLS encrypts them whatever
//! the wire-format policy says.

use crate::{Leaf, MlsError, leaf_of, op};

/// The most a new conversation's GroupInfo may take: the creator alone, with
/// post-quantum keys, is a few KiB.
pub const MAX_GROUP_INFO: usize = 64 * 1024;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::crypto::OpenMlsCrypto;

/// One conversation's public MLS state, as the server stores it.
pub struct PublicView {
    storage: MemoryStorage,
    group: PublicGroup,
}

/// What a verified commit does to the conversation: the leaves (credential
/// address, signature key) it was signed by, adds and removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommitEffect {
    pub committer: Leaf,
    pub added: Vec<Leaf>,
    pub removed: Vec<Leaf>,
}

impl PublicView {
    /// Starts the view from the creator's GroupInfo (with the ratchet tree
    /// extension), as the creator exports it before its first commit.
    pub fn start(crypto: &impl OpenMlsCrypto, group_info: &[u8]) -> Result<Self, MlsError> {
        if group_info.len() > MAX_GROUP_INFO {
            return Err(MlsError::Malformed(format!(
                "a GroupInfo of {} bytes (at most {MAX_GROUP_INFO})",
                group_info.len()
            )));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let info = match msg.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(MlsError::Malformed("not a GroupInfo".into())),
        };
        let tree = info
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| MlsError::Malformed("the GroupInfo carries no ratchet tree".into()))?
            .ratchet_tree()
            .clone();
        let storage = MemoryStorage::default();
        let (group, _) =
            PublicGroup::from_external(crypto, &storage, tree, info, ProposalStore::new())
                .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(PublicView { storage, group })
    }

    /// Restores a view from [`PublicView::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MlsError> {
        let damaged = || MlsError::Storage("a damaged public group state".into());
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], MlsError> {
            if rest.len() < n {
                return Err(damaged());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let group_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| damaged())?) as usize;
        let group_id = GroupId::from_slice(take(group_len)?);
        let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| damaged())?) as usize;
        let mut values = std::collections::HashMap::with_capacity(count.min(64));
        for _ in 0..count {
            let k_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| damaged())?) as usize;
            let key = take(k_len)?.to_vec();
            let v_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| damaged())?) as usize;
            let value = take(v_len)?.to_vec();
            values.insert(key, value);
        }
        let storage = MemoryStorage {
            values: std::sync::RwLock::new(values),
        };
        let group = PublicGroup::load(&storage, &group_id)
            .map_err(|e| MlsError::Storage(format!("{e:?}")))?
            .ok_or_else(damaged)?;
        Ok(PublicView { storage, group })
    }

    /// The state to store: the group id, then every storage value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let values = self
            .storage
            .values
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let group_id = self.group.group_id().as_slice();
        let mut out = Vec::new();
        out.extend_from_slice(&(group_id.len() as u32).to_be_bytes());
        out.extend_from_slice(group_id);
        out.extend_from_slice(&(values.len() as u32).to_be_bytes());
        let mut sorted: Vec<_> = values.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// Every member's leaf: credential address and signature key.
    pub fn members(&self) -> Vec<Leaf> {
        self.group
            .members()
            .map(|m| leaf_of(&m.credential, m.signature_key))
            .collect()
    }

    fn leaf(&self, index: LeafNodeIndex) -> Option<Leaf> {
        self.group
            .leaf(index)
            .map(|l| leaf_of(l.credential(), l.signature_key().as_slice().to_vec()))
    }

    /// Verifies `commit` (a PublicMessage) against the current state and
    /// applies it. On error the view is unchanged.
    pub fn apply_commit(
        &mut self,
        crypto: &impl OpenMlsCrypto,
        commit: &[u8],
    ) -> Result<CommitEffect, MlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(commit)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        if !matches!(protocol, ProtocolMessage::PublicMessage(_)) {
            return Err(MlsError::Rejected(
                "a commit must be an MLS PublicMessage, for the server to check it".into(),
            ));
        }
        let processed = self
            .group
            .process_message(crypto, protocol)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        let committer = match processed.sender() {
            Sender::Member(index) => self.leaf(*index),
            _ => None,
        }
        .ok_or_else(|| MlsError::Rejected("a commit from outside the conversation".into()))?;
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => staged,
            _ => return Err(MlsError::Rejected("not a commit".into())),
        };
        crate::check_commit_shape(&staged, &committer)?;
        let added = staged
            .add_proposals()
            .map(|p| {
                let leaf = p.add_proposal().key_package().leaf_node();
                leaf_of(leaf.credential(), leaf.signature_key().as_slice().to_vec())
            })
            .collect();
        let removed = staged
            .remove_proposals()
            .filter_map(|p| self.leaf(p.remove_proposal().removed()))
            .collect();
        self.group
            .merge_commit(&self.storage, *staged)
            .map_err(op)?;
        Ok(CommitEffect {
            committer,
            added,
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use openmls_libcrux_crypto::Provider;

    #[test]
    fn the_server_follows_commits_and_refuses_what_is_not_one() {
        let suite = ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE).unwrap();
        let (alice_p, bob_p, server) = (
            Provider::default(),
            Provider::default(),
            Provider::default(),
        );
        let alice = new_device_signer(&alice_p).unwrap();
        let bob = new_device_signer(&bob_p).unwrap();
        let a = Address::parse("alice@pouch.local").unwrap();
        let b = Address::parse("bob@pouch.local").unwrap();
        let kp = key_packages(&bob_p, suite, &bob, &b, 1, false)
            .unwrap()
            .remove(0);
        let bob_kp = validate_key_package(
            &alice_p,
            suite,
            &ClaimedPackage {
                bytes: &kp,
                address: &b,
                signature_key: bob.public(),
            },
        )
        .unwrap();
        let (mut group, out) =
            create_conversation(&alice_p, suite, &alice, &a, crate::TEST_GROUP, &[bob_kp]).unwrap();
        merge_pending(&alice_p, &mut group).unwrap();

        // The view starts from the creator's GroupInfo: Alice alone at epoch 0.
        let mut view = PublicView::start(server.crypto(), &out.group_info.unwrap()).unwrap();
        assert_eq!(view.epoch(), 0);
        assert_eq!(
            view.members(),
            vec![(Some(a.clone()), alice.public().to_vec())]
        );
        let effect = view.apply_commit(server.crypto(), &out.commit).unwrap();
        assert_eq!(effect.committer, (Some(a.clone()), alice.public().to_vec()));
        assert_eq!(effect.added, vec![(Some(b.clone()), bob.public().to_vec())]);
        assert!(effect.removed.is_empty());
        assert_eq!(view.epoch(), 1);

        // Stored and restored, it goes on: Bob's self-update, then Alice removing Bob.
        let mut view = PublicView::from_bytes(&view.to_bytes()).unwrap();
        let (mut bob_group, _) = join(&bob_p, out.welcome.as_ref().unwrap()).unwrap();
        let update = self_update(&bob_p, &bob, &mut bob_group).unwrap();
        let effect = view.apply_commit(server.crypto(), &update.commit).unwrap();
        assert_eq!(effect.committer, (Some(b.clone()), bob.public().to_vec()));
        assert!(effect.added.is_empty() && effect.removed.is_empty());
        open(&alice_p, &mut group, &update.commit).unwrap();
        // The same commit again is for an epoch gone by: refused.
        assert!(view.apply_commit(server.crypto(), &update.commit).is_err());
        let removal =
            remove_members(&alice_p, &alice, &mut group, &[bob.public().to_vec()]).unwrap();
        let effect = view.apply_commit(server.crypto(), &removal.commit).unwrap();
        assert_eq!(
            effect.removed,
            vec![(Some(b.clone()), bob.public().to_vec())]
        );
        assert_eq!(view.members().len(), 1);
        assert_eq!(view.epoch(), 3);

        // Garbage, a tampered commit, and an application message are refused.
        merge_pending(&alice_p, &mut group).unwrap();
        let mut tampered = self_update(&alice_p, &alice, &mut group).unwrap().commit;
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        assert!(view.apply_commit(server.crypto(), &tampered).is_err());
        assert!(view.apply_commit(server.crypto(), &[0u8; 40]).is_err());
        discard_pending(&alice_p, &mut group).unwrap();
        let sealed = seal(&alice_p, &alice, &mut group, b"hello").unwrap();
        assert!(matches!(
            view.apply_commit(server.crypto(), &sealed),
            Err(MlsError::Rejected(_))
        ));
        assert_eq!(view.epoch(), 3, "nothing refused changed the view");

        // A self-update that swaps the committer's signature key (a member
        // its account never listed, and could no longer name to remove): refused.
        let other = new_device_signer(&alice_p).unwrap();
        let swapped = group
            .self_update_with_new_signer(
                &alice_p,
                &alice,
                NewSignerBundle {
                    signer: &other,
                    credential_with_key: crate::credential(&a, &other),
                },
                LeafNodeParameters::default(),
            )
            .unwrap();
        let swapped = swapped.into_contents().0.to_bytes().unwrap();
        let err = view.apply_commit(server.crypto(), &swapped).unwrap_err();
        assert!(err.to_string().contains("may not change"), "{err}");
        assert_eq!(view.epoch(), 3);
        assert!(PublicView::from_bytes(&[1, 2, 3]).is_err());
    }
}
