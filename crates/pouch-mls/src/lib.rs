//! Pouch's MLS layer (RFC 9420, through OpenMLS): device identities, key
//! packages, one group per conversation, and sealing/opening envelopes.
//!
//! Like OpenMLS itself this crate does no I/O: every function takes an
//! [`OpenMlsProvider`], whose storage the caller chooses (the client keeps it
//! in its encrypted database; tests use memory). It also owns the checks
//! that bind MLS to mail: a key package must carry the address and signature
//! key the directory announced, and a message's sender is the address in its
//! MLS credential — the client compares that against the From header.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod public;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use pouch_proto::Address;

pub use openmls::prelude::{Ciphersuite, GroupId as MlsGroupId, KeyPackage, MlsGroup};
pub use openmls_basic_credential::SignatureKeyPair as DeviceSigner;

/// How many past epochs a member keeps secrets for, so that a message sent
/// just before a commit it has already processed still opens.
const MAX_PAST_EPOCHS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    #[error("ciphersuite 0x{0:04x} is not supported by this Pouch")]
    UnsupportedCiphersuite(u16),
    #[error("malformed MLS data: {0}")]
    Malformed(String),
    #[error("key package rejected: {0}")]
    BadKeyPackage(String),
    #[error("the message could not be opened: {0}")]
    Rejected(String),
    #[error("the sender's credential is not a valid address")]
    BadCredential,
    #[error("no such conversation in local state")]
    UnknownGroup,
    #[error("MLS operation failed: {0}")]
    Operation(String),
    #[error("local MLS storage failed: {0}")]
    Storage(String),
}

fn op<E: std::fmt::Display>(e: E) -> MlsError {
    MlsError::Operation(e.to_string())
}

/// The ciphersuites Pouch accepts, by their IANA code points.
pub fn ciphersuite(code: u16) -> Result<Ciphersuite, MlsError> {
    match code {
        0x004D => Ok(Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519),
        0x004F => Ok(Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519),
        // Classical suite, for interoperability tests only.
        0x0001 => Ok(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519),
        other => Err(MlsError::UnsupportedCiphersuite(other)),
    }
}

/// Creates a device's Ed25519 signature key and keeps it in `provider`'s storage.
pub fn new_device_signer<P: OpenMlsProvider>(provider: &P) -> Result<SignatureKeyPair, MlsError> {
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(op)?;
    signer
        .store(provider.storage())
        .map_err(|e| MlsError::Storage(format!("{e:?}")))?;
    Ok(signer)
}

/// Loads the device's signature key from storage.
pub fn load_device_signer<P: OpenMlsProvider>(
    provider: &P,
    public_key: &[u8],
) -> Result<SignatureKeyPair, MlsError> {
    SignatureKeyPair::read(provider.storage(), public_key, SignatureScheme::ED25519)
        .ok_or_else(|| MlsError::Storage("the device signature key is missing".into()))
}

/// Signs a non-MLS payload (the login challenge) with the device key.
pub fn sign_raw(signer: &SignatureKeyPair, payload: &[u8]) -> Result<Vec<u8>, MlsError> {
    openmls_traits::signatures::Signer::sign(signer, payload)
        .map_err(|e| MlsError::Operation(format!("{e:?}")))
}

fn credential(address: &Address, signer: &SignatureKeyPair) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(address.as_str().as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    }
}

/// The address an MLS credential names.
pub fn credential_address(credential: &Credential) -> Result<Address, MlsError> {
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| MlsError::BadCredential)?;
    let text = std::str::from_utf8(basic.identity()).map_err(|_| MlsError::BadCredential)?;
    Address::parse(text).map_err(|_| MlsError::BadCredential)
}

/// Creates `count` fresh key packages (private parts go into storage), serialised for upload.
pub fn key_packages<P: OpenMlsProvider>(
    provider: &P,
    suite: Ciphersuite,
    signer: &SignatureKeyPair,
    address: &Address,
    count: usize,
    last_resort: bool,
) -> Result<Vec<Vec<u8>>, MlsError> {
    let cred = credential(address, signer);
    (0..count)
        .map(|_| {
            let mut builder = KeyPackage::builder();
            if last_resort {
                // A package's extensions must be among its leaf's
                // capabilities (RFC 9420, 10.1), or every sender refuses it.
                builder = builder.mark_as_last_resort().leaf_node_capabilities(
                    Capabilities::builder()
                        .extensions(vec![ExtensionType::LastResort])
                        .build(),
                );
            }
            let bundle = builder
                .build(suite, provider, signer, cred.clone())
                .map_err(op)?;
            MlsMessageOut::from(bundle.key_package().clone())
                .to_bytes()
                .map_err(op)
        })
        .collect()
}

/// A key package handed out by the directory, with what the directory claims about it.
pub struct ClaimedPackage<'a> {
    pub bytes: &'a [u8],
    pub address: &'a Address,
    pub signature_key: &'a [u8],
}

/// Parses and verifies a key package, and checks it belongs to the address
/// and signature key the directory announced — a server that swaps in its
/// own key package for someone else's is caught here.
pub fn validate_key_package<P: OpenMlsProvider>(
    provider: &P,
    suite: Ciphersuite,
    claimed: &ClaimedPackage<'_>,
) -> Result<KeyPackage, MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(claimed.bytes)
        .map_err(|e| MlsError::BadKeyPackage(e.to_string()))?;
    let kp_in = match msg.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(MlsError::BadKeyPackage("not a key package".into())),
    };
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| MlsError::BadKeyPackage(e.to_string()))?;
    if kp.ciphersuite() != suite {
        return Err(MlsError::BadKeyPackage(format!(
            "wrong ciphersuite {:?}",
            kp.ciphersuite()
        )));
    }
    let leaf = kp.leaf_node();
    if credential_address(leaf.credential())? != *claimed.address {
        return Err(MlsError::BadKeyPackage(format!(
            "credential is not {}",
            claimed.address
        )));
    }
    if leaf.signature_key().as_slice() != claimed.signature_key {
        return Err(MlsError::BadKeyPackage(
            "signature key differs from the directory's".into(),
        ));
    }
    Ok(kp)
}

fn create_config(suite: Ciphersuite) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        // Hide the exact length of short messages from the delivery service.
        .padding_size(256)
        // Commits in the clear (signed; their path secrets stay encrypted to
        // the members) so that the server can check them: see `public`.
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .padding_size(256)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

/// The result of a commit this device made: bytes for the delivery service.
pub struct CommitOut {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    /// For a new conversation: the GroupInfo (with ratchet tree) before the
    /// first commit, from which the server starts checking commits.
    pub group_info: Option<Vec<u8>>,
}

/// Creates a conversation with the given members, under `group_id` (see
/// `pouch_proto::hub_group_id`). Returns the group (at epoch 1 after
/// merging) and the Welcome for the added devices.
pub fn create_conversation<P: OpenMlsProvider>(
    provider: &P,
    suite: Ciphersuite,
    signer: &SignatureKeyPair,
    address: &Address,
    group_id: &[u8],
    members: &[KeyPackage],
) -> Result<(MlsGroup, CommitOut), MlsError> {
    let mut group = MlsGroup::new_with_group_id(
        provider,
        signer,
        &create_config(suite),
        GroupId::from_slice(group_id),
        credential(address, signer),
    )
    .map_err(op)?;
    let group_info = group
        .export_group_info(provider.crypto(), signer, true)
        .map_err(op)?
        .to_bytes()
        .map_err(op)?;
    // The first commit adds everyone without an update path. The epoch it
    // opens is keyed from the creator's fresh random init secret, which the
    // Welcome carries to each member, so a path would add no secrecy here —
    // only a key pair per tree level for the creator to derive and every
    // joiner to derive again and check, and one encryption per member. The
    // parent nodes stay blank until a member's first commit with a path
    // (removals and key renewals always carry one) fills them.
    let (commit, welcome, _group_info) = group
        .add_members_without_update(provider, signer, members)
        .map_err(op)?;
    let out = CommitOut {
        commit: commit.to_bytes().map_err(op)?,
        welcome: Some(welcome.to_bytes().map_err(op)?),
        group_info: Some(group_info),
    };
    Ok((group, out))
}

/// Adds devices to a conversation. The commit is left pending: merge it with
/// [`merge_pending`] once the delivery service accepted it, or discard it
/// with [`discard_pending`].
pub fn add_members<P: OpenMlsProvider>(
    provider: &P,
    signer: &SignatureKeyPair,
    group: &mut MlsGroup,
    members: &[KeyPackage],
) -> Result<CommitOut, MlsError> {
    let (commit, welcome, _group_info) =
        group.add_members(provider, signer, members).map_err(op)?;
    Ok(CommitOut {
        commit: commit.to_bytes().map_err(op)?,
        welcome: Some(welcome.to_bytes().map_err(op)?),
        group_info: None,
    })
}

/// Removes the member devices with these signature keys. Left pending, as [`add_members`].
pub fn remove_members<P: OpenMlsProvider>(
    provider: &P,
    signer: &SignatureKeyPair,
    group: &mut MlsGroup,
    signature_keys: &[Vec<u8>],
) -> Result<CommitOut, MlsError> {
    let leaves: Vec<LeafNodeIndex> = group
        .members()
        .filter(|m| signature_keys.contains(&m.signature_key))
        .map(|m| m.index)
        .collect();
    let (commit, _welcome, _gi) = group
        .remove_members(provider, signer, &leaves)
        .map_err(op)?;
    Ok(CommitOut {
        commit: commit.to_bytes().map_err(op)?,
        welcome: None,
        group_info: None,
    })
}

/// Every member device: its address and signature key.
pub fn members(group: &MlsGroup) -> Vec<(Address, Vec<u8>)> {
    group
        .members()
        .filter_map(|m| {
            credential_address(&m.credential)
                .ok()
                .map(|a| (a, m.signature_key))
        })
        .collect()
}

/// A fresh leaf key for this device (post-compromise security), left pending.
pub fn self_update<P: OpenMlsProvider>(
    provider: &P,
    signer: &SignatureKeyPair,
    group: &mut MlsGroup,
) -> Result<CommitOut, MlsError> {
    let bundle = group
        .self_update(provider, signer, LeafNodeParameters::default())
        .map_err(op)?;
    let (commit, _welcome, _gi) = bundle.into_contents();
    Ok(CommitOut {
        commit: commit.to_bytes().map_err(op)?,
        welcome: None,
        group_info: None,
    })
}

pub fn merge_pending<P: OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<(), MlsError> {
    group.merge_pending_commit(provider).map_err(op)
}

pub fn discard_pending<P: OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<(), MlsError> {
    group
        .clear_pending_commit(provider.storage())
        .map_err(|e| MlsError::Storage(format!("{e:?}")))
}

/// Encrypts an application payload for the group's current epoch.
pub fn seal<P: OpenMlsProvider>(
    provider: &P,
    signer: &SignatureKeyPair,
    group: &mut MlsGroup,
    payload: &[u8],
) -> Result<Vec<u8>, MlsError> {
    group
        .create_message(provider, signer, payload)
        .map_err(op)?
        .to_bytes()
        .map_err(op)
}

/// A member device as its leaf presents it: the address its credential
/// names (None when the credential is not an address) and its signature key.
pub type Leaf = (Option<Address>, Vec<u8>);

fn leaf_of(credential: &Credential, signature_key: Vec<u8>) -> Leaf {
    (credential_address(credential).ok(), signature_key)
}

/// Joins a conversation from a Welcome. Returns the group and the leaf of
/// the member who added this device (the Welcome's sender).
pub fn join<P: OpenMlsProvider>(
    provider: &P,
    welcome: &[u8],
) -> Result<(MlsGroup, Leaf), MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(|e| MlsError::Malformed(e.to_string()))?;
    let welcome = match msg.extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => return Err(MlsError::Malformed("not a Welcome".into())),
    };
    let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
        .map_err(|e| MlsError::Rejected(e.to_string()))?;
    let adder = staged
        .welcome_sender()
        .map(|l| leaf_of(l.credential(), l.signature_key().as_slice().to_vec()))
        .map_err(|e| MlsError::Rejected(e.to_string()))?;
    let group = staged
        .into_group(provider)
        .map_err(|e| MlsError::Rejected(e.to_string()))?;
    Ok((group, adder))
}

/// Forgets a conversation this device created but the server refused.
pub fn delete_group<P: OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<(), MlsError> {
    group
        .delete(provider.storage())
        .map_err(|e| MlsError::Storage(format!("{e:?}")))
}

pub fn load_group<P: OpenMlsProvider>(provider: &P, group_id: &[u8]) -> Result<MlsGroup, MlsError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .map_err(|e| MlsError::Storage(format!("{e:?}")))?
        .ok_or(MlsError::UnknownGroup)
}

/// What an incoming group message turned out to be.
pub enum Opened {
    /// An application message and the address in its sender's credential.
    Application {
        sender: Address,
        sender_key: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A commit, verified and merged: the group moved to a new epoch.
    /// `committer` is the leaf that signed it (before the commit).
    Commit { committer: Leaf },
    /// A proposal, stored for the next commit.
    Proposal { proposer: Leaf },
}

/// What a Pouch commit may do, checked by the server and by every receiver
/// before it is applied: add and remove members, and renew the committer's
/// own leaf keys — never change who that leaf is (another address or
/// signature key would make a member the account never listed, and one its
/// account could no longer name to remove), and no other proposal kinds
/// (a pre-shared key or re-initialisation nobody can follow would leave the
/// conversation stuck).
pub(crate) fn check_commit_shape(staged: &StagedCommit, committer: &Leaf) -> Result<(), MlsError> {
    for queued in staged.queued_proposals() {
        if !matches!(queued.proposal(), Proposal::Add(_) | Proposal::Remove(_)) {
            return Err(MlsError::Rejected(
                "a commit may only add and remove members".into(),
            ));
        }
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        let renewed = leaf_of(leaf.credential(), leaf.signature_key().as_slice().to_vec());
        if &renewed != committer {
            return Err(MlsError::Rejected(
                "a commit may not change its committer's address or signature key".into(),
            ));
        }
    }
    Ok(())
}

/// Verifies, decrypts and applies one message of the group.
pub fn open<P: OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
    message: &[u8],
) -> Result<Opened, MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(message)
        .map_err(|e| MlsError::Malformed(e.to_string()))?;
    let protocol = msg
        .try_into_protocol_message()
        .map_err(|e| MlsError::Malformed(e.to_string()))?;
    let processed = group
        .process_message(provider, protocol)
        .map_err(|e| MlsError::Rejected(e.to_string()))?;
    // Only members speak in a Pouch conversation (no external commits or
    // proposals): the sender's key is the one its leaf had before this message.
    let sender_key = match processed.sender() {
        Sender::Member(index) => group.member_at(*index).map(|m| m.signature_key),
        _ => None,
    }
    .ok_or_else(|| MlsError::Rejected("a message from outside the conversation".into()))?;
    let sender = leaf_of(processed.credential(), sender_key);
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => Ok(Opened::Application {
            sender: sender.0.ok_or(MlsError::BadCredential)?,
            sender_key: sender.1,
            payload: app.into_bytes(),
        }),
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            check_commit_shape(&staged, &sender)?;
            group.merge_staged_commit(provider, *staged).map_err(op)?;
            Ok(Opened::Commit { committer: sender })
        }
        ProcessedMessageContent::ProposalMessage(proposal) => {
            group
                .store_pending_proposal(provider.storage(), *proposal)
                .map_err(|e| MlsError::Storage(format!("{e:?}")))?;
            Ok(Opened::Proposal { proposer: sender })
        }
        _ => Err(MlsError::Rejected("unsupported message type".into())),
    }
}

/// Every member device as its leaf presents it: the address its credential
/// names (None when the credential is not an address at all) and its
/// signature key. Receivers check each against the signed device lists.
pub fn roster(group: &MlsGroup) -> Vec<Leaf> {
    group
        .members()
        .map(|m| leaf_of(&m.credential, m.signature_key))
        .collect()
}

/// The addresses of everyone in the group (each once).
pub fn member_addresses(group: &MlsGroup) -> Vec<Address> {
    let mut out: Vec<Address> = group
        .members()
        .filter_map(|m| credential_address(&m.credential).ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The signature keys of every member device.
pub fn member_keys(group: &MlsGroup) -> Vec<Vec<u8>> {
    group.members().map(|m| m.signature_key).collect()
}

pub fn epoch(group: &MlsGroup) -> u64 {
    group.epoch().as_u64()
}

pub fn group_id_bytes(group: &MlsGroup) -> Vec<u8> {
    group.group_id().as_slice().to_vec()
}

/// A conversation id for tests (each test's providers are its own).
#[cfg(test)]
pub(crate) const TEST_GROUP: &[u8] = b"a test conversation's 32-byte id";

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_libcrux_crypto::Provider;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn conversation_round_trip_on_xwing_and_sender_is_bound_to_credential() {
        let suite = ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE).unwrap();
        // Alice on Pouch's crypto (dalek signatures, sha2), Bob on plain
        // libcrux: each verifies what the other signed and hashed.
        let (alice_p, bob_p) = (
            crate::crypto::MemoryProvider::default(),
            Provider::default(),
        );
        let alice = new_device_signer(&alice_p).unwrap();
        let bob = new_device_signer(&bob_p).unwrap();
        let (a, b) = (addr("alice@pouch.local"), addr("bob@pouch.local"));
        let kp = key_packages(&bob_p, suite, &bob, &b, 1, false)
            .unwrap()
            .remove(0);

        // The directory lying about whose package this is gets caught.
        let lie = ClaimedPackage {
            bytes: &kp,
            address: &a,
            signature_key: bob.public(),
        };
        assert!(matches!(
            validate_key_package(&alice_p, suite, &lie),
            Err(MlsError::BadKeyPackage(_))
        ));
        let wrong_key = ClaimedPackage {
            bytes: &kp,
            address: &b,
            signature_key: alice.public(),
        };
        assert!(validate_key_package(&alice_p, suite, &wrong_key).is_err());

        let claimed = ClaimedPackage {
            bytes: &kp,
            address: &b,
            signature_key: bob.public(),
        };
        let bob_kp = validate_key_package(&alice_p, suite, &claimed).unwrap();
        let (mut group, out) =
            create_conversation(&alice_p, suite, &alice, &a, TEST_GROUP, &[bob_kp]).unwrap();
        merge_pending(&alice_p, &mut group).unwrap();
        assert_eq!(epoch(&group), 1);
        let (mut bob_group, adder) = join(&bob_p, out.welcome.as_ref().unwrap()).unwrap();
        assert_eq!(adder, (Some(a.clone()), alice.public().to_vec()));
        assert_eq!(member_addresses(&bob_group), vec![a.clone(), b.clone()]);

        let sealed = seal(&alice_p, &alice, &mut group, b"Subject: secret\r\n\r\nbody").unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plaintext visible in ciphertext"
        );
        match open(&bob_p, &mut bob_group, &sealed).unwrap() {
            Opened::Application {
                sender,
                sender_key,
                payload,
            } => {
                assert_eq!(sender, a);
                assert_eq!(sender_key, alice.public());
                assert_eq!(payload, b"Subject: secret\r\n\r\nbody");
            }
            _ => panic!("expected an application message"),
        }
        // Tampering is rejected, not mis-decrypted.
        let mut bad = seal(&alice_p, &alice, &mut group, b"more").unwrap();
        let last = bad.len() - 3;
        bad[last] ^= 0x55;
        assert!(open(&bob_p, &mut bob_group, &bad).is_err());

        // A self-update moves both to a new epoch.
        let upd = self_update(&bob_p, &bob, &mut bob_group).unwrap();
        merge_pending(&bob_p, &mut bob_group).unwrap();
        assert!(matches!(
            open(&alice_p, &mut group, &upd.commit).unwrap(),
            Opened::Commit { committer } if committer == (Some(b.clone()), bob.public().to_vec())
        ));
        assert_eq!(epoch(&group), 2);
        assert_eq!(epoch(&bob_group), 2);
    }

    /// The creating commit has no update path (the parent nodes start
    /// blank): the first commit that needs one — a removal — still reaches
    /// every remaining member and shuts the removed one out.
    #[test]
    fn a_conversation_created_without_a_path_keeps_a_removed_member_out() {
        let suite = ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE).unwrap();
        let names = ["alice", "bob", "carol", "dave"];
        let providers: Vec<Provider> = names.iter().map(|_| Provider::default()).collect();
        let signers: Vec<_> = providers
            .iter()
            .map(|p| new_device_signer(p).unwrap())
            .collect();
        let addrs: Vec<Address> = names
            .iter()
            .map(|n| addr(&format!("{n}@pouch.local")))
            .collect();
        let packages: Vec<KeyPackage> = (1..4)
            .map(|i| {
                let kp = key_packages(&providers[i], suite, &signers[i], &addrs[i], 1, false)
                    .unwrap()
                    .remove(0);
                let claimed = ClaimedPackage {
                    bytes: &kp,
                    address: &addrs[i],
                    signature_key: signers[i].public(),
                };
                validate_key_package(&providers[0], suite, &claimed).unwrap()
            })
            .collect();
        let (mut alice, out) = create_conversation(
            &providers[0],
            suite,
            &signers[0],
            &addrs[0],
            TEST_GROUP,
            &packages,
        )
        .unwrap();
        merge_pending(&providers[0], &mut alice).unwrap();
        let mut joined: Vec<MlsGroup> = (1..4)
            .map(|i| {
                join(&providers[i], out.welcome.as_ref().unwrap())
                    .unwrap()
                    .0
            })
            .collect();

        // Carol removes Dave: her commit's path secrets go to the blank
        // parents' members one by one.
        let dave_key = signers[3].public().to_vec();
        let removal =
            remove_members(&providers[2], &signers[2], &mut joined[1], &[dave_key]).unwrap();
        merge_pending(&providers[2], &mut joined[1]).unwrap();
        open(&providers[0], &mut alice, &removal.commit).unwrap();
        open(&providers[1], &mut joined[0], &removal.commit).unwrap();
        open(&providers[3], &mut joined[2], &removal.commit).unwrap();
        assert_eq!(epoch(&alice), 2);

        let sealed = seal(&providers[0], &signers[0], &mut alice, b"after dave").unwrap();
        for i in 1..3 {
            match open(&providers[i], &mut joined[i - 1], &sealed).unwrap() {
                Opened::Application { payload, .. } => assert_eq!(payload, b"after dave"),
                _ => panic!("expected an application message"),
            }
        }
        assert!(
            open(&providers[3], &mut joined[2], &sealed).is_err(),
            "a removed member reads nothing sent afterwards"
        );
    }

    #[test]
    fn a_last_resort_package_can_be_added_to_a_conversation_and_used_again() {
        let suite = ciphersuite(pouch_proto::DEFAULT_CIPHERSUITE).unwrap();
        let (alice_p, bob_p) = (Provider::default(), Provider::default());
        let alice = new_device_signer(&alice_p).unwrap();
        let bob = new_device_signer(&bob_p).unwrap();
        let (a, b) = (addr("alice@pouch.local"), addr("bob@pouch.local"));
        let kp = key_packages(&bob_p, suite, &bob, &b, 1, true)
            .unwrap()
            .remove(0);
        let claimed = ClaimedPackage {
            bytes: &kp,
            address: &b,
            signature_key: bob.public(),
        };
        // Offline Bob's pool ran dry: every new conversation gets this one.
        for n in 0..2u8 {
            let bob_kp = validate_key_package(&alice_p, suite, &claimed).unwrap();
            let (mut group, out) =
                create_conversation(&alice_p, suite, &alice, &a, &[n; 32], &[bob_kp]).unwrap();
            merge_pending(&alice_p, &mut group).unwrap();
            let (mut bob_group, _) = join(&bob_p, out.welcome.as_ref().unwrap()).unwrap();
            let sealed = seal(&alice_p, &alice, &mut group, b"reachable").unwrap();
            assert!(matches!(
                open(&bob_p, &mut bob_group, &sealed).unwrap(),
                Opened::Application { payload, .. } if payload == b"reachable"
            ));
        }
    }

    #[test]
    fn unsupported_suites_are_refused() {
        assert!(matches!(
            ciphersuite(0x0002),
            Err(MlsError::UnsupportedCiphersuite(2))
        ));
    }
}
