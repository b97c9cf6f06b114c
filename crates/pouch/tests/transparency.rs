//! Key transparency: the log's checkpoints and tiles verified by code that
//! shares nothing with the server's (an independent RFC 6962 and signed-note
//! implementation written here from the specifications), proofs at 100,000
//! entries, and the attacks a server could try: rolling the log back, hiding
//! a revocation, slipping a list past the log.

mod common;

use base64::Engine;
use common::*;
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ---------- an independent RFC 6962 / RFC 9162 implementation ----------

fn leaf(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// MTH(D[n]) from RFC 6962 §2.1, over leaf hashes.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = (n as u64).next_power_of_two() as usize / 2;
            let k = if k == n { k / 2 } else { k };
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2: verify an inclusion proof.
fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: [u8; 32],
    proof: &[[u8; 32]],
    root: [u8; 32],
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf_hash;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == root
}

/// RFC 9162 §2.1.4.2: verify a consistency proof.
fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: [u8; 32],
    root2: [u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 || size1 > size2 || proof.is_empty() {
        return false;
    }
    let mut path = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, root1);
    }
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == root1 && sr == root2
}

/// C2SP signed-note + tlog-checkpoint, parsed and verified by hand.
fn open_note(note: &str, vkey: &str) -> (String, u64, [u8; 32]) {
    let (text, sigs) = note.split_once("\n\n").expect("note has a blank line");
    let text = format!("{text}\n");
    let mut vparts = vkey.splitn(3, '+');
    let name = vparts.next().unwrap();
    let _id_hex = vparts.next().unwrap();
    let key = B64.decode(vparts.next().unwrap()).unwrap();
    assert_eq!(key[0], 0x01, "an Ed25519 key");
    let mut idh = Sha256::new();
    idh.update(name.as_bytes());
    idh.update(b"\n");
    idh.update(&key);
    let key_id: [u8; 4] = idh.finalize()[..4].try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key[1..].try_into().unwrap()).unwrap();
    let mut verified = false;
    for line in sigs.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .expect("signature lines start with an em dash");
        let (sig_name, b) = rest.split_once(' ').unwrap();
        let raw = B64.decode(b).unwrap();
        if sig_name == name && raw[..4] == key_id {
            let sig = ed25519_dalek::Signature::from_slice(&raw[4..]).unwrap();
            vk.verify_strict(text.as_bytes(), &sig)
                .expect("the log's signature verifies");
            verified = true;
        }
    }
    assert!(verified, "no signature by the log's key");
    let mut lines = text.lines();
    let origin = lines.next().unwrap().to_string();
    let size: u64 = lines.next().unwrap().parse().unwrap();
    let root: [u8; 32] = B64
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (origin, size, root)
}

fn get(url: &str) -> Vec<u8> {
    // curl is an independent HTTP client; TLS is checked by fingerprint in the tests that matter.
    let out = std::process::Command::new("curl")
        .args(["-sSfk", url])
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn checkpoints_and_tiles_verify_with_an_independent_implementation() {
    let dir = Scratch::new("log-interop");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let _bob = user(&dir, &server, "bob");
    let _alice2 = link(dir.path("alice2"), &server, &alice);

    let info: serde_json::Value =
        serde_json::from_slice(&get(&format!("{}/v1/info", server.url))).unwrap();
    let vkey = info["log_key"].as_str().unwrap();
    let note = String::from_utf8(get(&format!("{}/checkpoint", server.url))).unwrap();
    let (origin, size, root) = open_note(&note, vkey);
    assert_eq!(origin, "pouch.local/log");
    assert_eq!(size, 4, "the commitment key, alice v1, bob v1, alice v2");

    // The entry bundle (tlog-tiles: u16 length + entry) rebuilds the same root.
    let bundle = get(&format!("{}/tile/entries/000.p/{size}", server.url));
    let mut entries = Vec::new();
    let mut rest = bundle.as_slice();
    while !rest.is_empty() {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        entries.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    assert_eq!(entries.len() as u64, size);
    let leaves: Vec<[u8; 32]> = entries.iter().map(|e| leaf(e)).collect();
    assert_eq!(
        mth(&leaves),
        root,
        "the entries hash to the checkpoint's root"
    );
    // The level-0 hash tile holds exactly those leaf hashes.
    let tile = get(&format!("{}/tile/0/000.p/{size}", server.url));
    assert_eq!(tile, leaves.concat());
    // The public leaves name no one: the first records the commitment key's
    // hash, the others a keyed hash of the account, the version and the hash
    // of the full entry. No address, device name or link address is public.
    let first: serde_json::Value = serde_json::from_slice(&entries[0]).unwrap();
    assert_eq!(first["kind"], "commitment_key");
    let last: serde_json::Value = serde_json::from_slice(&entries[3]).unwrap();
    assert_eq!(last["kind"], "device_list");
    assert_eq!(last["version"], 2);
    assert!(last.get("address").is_none() && last.get("list").is_none());
    let alice_v1: serde_json::Value = serde_json::from_slice(&entries[1]).unwrap();
    assert_eq!(
        alice_v1["account"], last["account"],
        "one account, one commitment"
    );
    let bob_v1: serde_json::Value = serde_json::from_slice(&entries[2]).unwrap();
    assert_ne!(bob_v1["account"], last["account"]);
    let public = String::from_utf8_lossy(&bundle);
    for secret in ["alice", "bob", "pouch.local", "laptop", "127.0.0.1"] {
        assert!(
            !public.contains(secret),
            "the public tiles mention {secret}"
        );
    }

    // The server's inclusion proof (for signed-in devices: an index by
    // address would tell strangers who exists) checks with the independent
    // verifier.
    let reader = RawDevice::enroll(&server, "auditor@pouch.local");
    let inc: serde_json::Value = reader
        .api
        .get("/v1/log/inclusion?address=bob@pouch.local&version=1")
        .unwrap();
    let refused = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!(
                "{}/v1/log/inclusion?address=bob@pouch.local&version=1",
                server.url
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout),
        "401",
        "without a token"
    );
    // The reader's own enrollment grew the log: check against the checkpoint now.
    let note = String::from_utf8(get(&format!("{}/checkpoint", server.url))).unwrap();
    let (_, size, root) = open_note(&note, vkey);
    assert_eq!(size, 5);
    let proof: Vec<[u8; 32]> = inc["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let entry = B64.decode(inc["entry"].as_str().unwrap()).unwrap();
    // A signed-in device gets the full entry the leaf commits to.
    let full = B64.decode(inc["full"].as_str().unwrap()).unwrap();
    let full_json: serde_json::Value = serde_json::from_slice(&full).unwrap();
    assert_eq!(full_json["address"], "bob@pouch.local");
    let leaf_json: serde_json::Value = serde_json::from_slice(&entry).unwrap();
    assert_eq!(
        leaf_json["entry_hash"].as_str().unwrap(),
        <sha2::Sha256 as sha2::Digest>::digest(&full)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "the leaf commits to the served entry"
    );
    assert!(verify_inclusion(
        inc["index"].as_u64().unwrap(),
        size,
        leaf(&entry),
        &proof,
        root
    ));
    assert!(!verify_inclusion(
        inc["index"].as_u64().unwrap(),
        size,
        leaf(b"forged"),
        &proof,
        root
    ));
}

#[test]
fn proofs_verify_independently_for_a_log_of_100000_entries() {
    use pouch_log::{FetchedHashes, stored_hash_index, stored_hashes};
    let n: u64 = 100_000;
    let mut store = FetchedHashes(Default::default());
    let mut leaves = Vec::with_capacity(n as usize);
    for i in 0..n {
        let data = format!("entry {i}");
        leaves.push(leaf(data.as_bytes()));
        let new = stored_hashes(i, data.as_bytes(), &store).unwrap();
        let base = stored_hash_index(0, i);
        for (k, h) in new.into_iter().enumerate() {
            store.0.insert(base + k as u64, h);
        }
    }
    let root = pouch_log::tree_hash(n, &store).unwrap();
    assert_eq!(root.0, mth(&leaves), "the log's root equals RFC 6962 MTH");
    for index in [0u64, 1, 255, 256, 65_535, 65_536, 99_998, 99_999] {
        let proof: Vec<[u8; 32]> = pouch_log::prove_record(n, index, &store)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert!(proof.len() <= 17, "proof of {} hashes", proof.len());
        assert!(
            verify_inclusion(index, n, leaves[index as usize], &proof, root.0),
            "inclusion of {index}"
        );
    }
    for old in [1u64, 2, 3, 1000, 65_536, 77_777, 99_999] {
        let old_root = mth(&leaves[..old as usize]);
        let proof: Vec<[u8; 32]> = pouch_log::prove_tree(n, old, &store)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert!(
            verify_consistency(old, n, old_root, root.0, &proof),
            "consistency from {old}"
        );
        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        assert!(
            !verify_consistency(old, n, old_root, root.0, &bad),
            "a damaged proof from {old} passed"
        );
    }
}

#[test]
fn a_rolled_back_log_and_a_hidden_revocation_are_caught() {
    let dir = Scratch::new("log-rollback");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let old_note: Vec<u8> = server
        .db()
        .query_row("SELECT checkpoint FROM log_state", [], |r| r.get(0))
        .unwrap();
    let alice2 = link(dir.path("alice2"), &server, &alice);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "hello",
        "--body",
        "x",
    ]);
    alice.sync();
    bob.sync();

    // The server republishes an older checkpoint: every device that saw the newer one objects.
    let db = server.db();
    let (size, newest): (i64, Vec<u8>) = db
        .query_row(
            "SELECT checkpoint_size, checkpoint FROM log_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    db.execute("UPDATE log_state SET checkpoint = ?1", [&old_note])
        .unwrap();
    drop(db);
    assert_one_line_error(&bob.run(&["sync"]), "rollback");
    server
        .db()
        .execute(
            "UPDATE log_state SET checkpoint = ?1, checkpoint_size = ?2",
            rusqlite::params![newest, size],
        )
        .unwrap();
    bob.sync();

    // Alice revokes her second device; the server then drops the revocation from what it serves.
    let alice2_id = device_id_of(&alice2);
    alice.ok(&["device", "revoke", &alice2_id]);
    let db = server.db();
    db.execute(
        "DELETE FROM device_lists WHERE address = 'alice@pouch.local' AND version = 3",
        [],
    )
    .unwrap();
    db.execute(
        "UPDATE devices SET revoked_at = NULL, revoked_by = NULL WHERE device_id = ?1",
        [&alice2_id],
    )
    .unwrap();
    drop(db);
    // Alice's own device sees in the log a newer list than the server serves.
    let out = alice.run(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("being hidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_list_slipped_past_the_log_is_caught() {
    let dir = Scratch::new("log-behind");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "hello",
        "--body",
        "x",
    ]);

    // An intruder writes straight into the database a new version of Alice's
    // list, a "reset" to a key of their own naming their own device — without
    // going through the log.
    let db = server.db();
    let (version, body): (i64, Vec<u8>) = db
        .query_row("SELECT version, body FROM device_lists WHERE address = 'alice@pouch.local' ORDER BY version DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let prev_hash = hex_sha256(&body);
    let (bytes, sig) = forged_reset(
        &prev_hash,
        version as u64 + 1,
        42,
        "ffeeddccbbaa99887766554433221100",
    );
    db.execute(
        "INSERT INTO device_lists (address, version, body, signature, created_at) VALUES ('alice@pouch.local', ?1, ?2, ?3, 0)",
        rusqlite::params![version + 1, bytes, sig],
    )
    .unwrap();
    drop(db);

    // Alice's device refuses it: not signed by her account, and not in the log.
    assert_one_line_error(&alice.run(&["sync"]), "SECURITY");
    // Bob verified Alice's list and the log shows no change since: he keeps
    // to the device he verified, and the intruder's device gets nothing.
    let sent = bob.json(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "again",
        "--body",
        "y",
        "--json",
    ]);
    assert_eq!(sent["recipient_devices"], 1, "{sent}");
    // Even a contact who never wrote to Alice before refuses a list that is not in the log.
    let carol = user(&dir, &server, "carol");
    let out = carol.run(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "first",
        "--body",
        "z",
    ]);
    assert_one_line_error(&out, "not in the transparency log");
}

/// The server shows a forged list of Alice's with a leaf that is really in
/// the log — another account's (Mallory's second version). The leaf commits
/// to Mallory's account and entry, so it does not open for Alice: refused.
#[test]
fn a_list_shown_with_another_accounts_leaf_is_refused() {
    use pouch_proto::devices::SignedDeviceList;
    let dir = Scratch::new("log-borrowed-leaf");
    let server = Server::start(&dir.path("server"), None);
    let _alice = user(&dir, &server, "alice");
    let mallory = user(&dir, &server, "mallory");
    let _mallory2 = link(dir.path("mallory2"), &server, &mallory);
    let carol = user(&dir, &server, "carol");

    let db = server.db();
    let body: Vec<u8> = db
        .query_row(
            "SELECT body FROM device_lists WHERE address = 'alice@pouch.local' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (bytes, signature) =
        forged_reset(&hex_sha256(&body), 2, 7, "00112233445566778899aabbccddeeff");
    let list = SignedDeviceList {
        body: bytes.clone(),
        signature: signature.clone(),
    };
    db.execute(
        "INSERT INTO device_lists (address, version, body, signature, created_at) VALUES ('alice@pouch.local', 2, ?1, ?2, 0)",
        rusqlite::params![bytes, signature],
    )
    .unwrap();
    let entry = pouch_log::LogEntry::for_list(&list).unwrap().to_bytes();
    let moved = db
        .execute(
            "UPDATE log_entries SET address = 'alice@pouch.local', entry = ?1 WHERE address = 'mallory@pouch.local' AND version = 2",
            rusqlite::params![entry],
        )
        .unwrap();
    assert_eq!(moved, 1);
    drop(db);

    // Carol has never written to Alice, so nothing is pinned: only the log stands.
    let out = carol.run(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "first",
        "--body",
        "z",
    ]);
    assert_one_line_error(&out, "differs from the list the server served");
}

/// The server lists an account's log entries for its devices, but could
/// leave one out (a version it showed others). Each device also searches the
/// public leaves since its last look, checked against the checkpoint, for its
/// account's commitment: an entry there but not in the listing is reported.
#[test]
fn an_entry_left_out_of_the_accounts_listing_is_found_in_the_public_tiles() {
    let dir = Scratch::new("log-hidden-entry");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let alice2 = link(dir.path("alice2"), &server, &alice);
    alice2.sync(); // its first look at the log
    let _alice3 = link(dir.path("alice3"), &server, &alice); // version 3
    let _alice4 = link(dir.path("alice4"), &server, &alice); // version 4
    let hidden = server
        .db()
        .execute(
            "UPDATE log_entries SET address = 'someone-else@pouch.local' WHERE address = 'alice@pouch.local' AND version = 3",
            [],
        )
        .unwrap();
    assert_eq!(hidden, 1);
    let out = alice2.run(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("that the server does not list"), "{err}");
}

/// An intruder's "reset" of Alice's list to a key of its own (from `seed`),
/// naming one device of its own: the signed body and its signature.
fn forged_reset(previous: &str, version: u64, seed: u8, device: &str) -> (Vec<u8>, Vec<u8>) {
    use ed25519_dalek::Signer;
    use pouch_proto::devices::{DeviceListBody, ListedDevice, SignedDeviceList};
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let forged = DeviceListBody {
        address: pouch_proto::Address::parse("alice@pouch.local").unwrap(),
        version,
        previous: Some(previous.to_string()),
        account_key: key.verifying_key().to_bytes().to_vec(),
        devices: vec![ListedDevice {
            device_id: pouch_proto::DeviceId(device.into()),
            signature_key: vec![9u8; 32],
            name: "intruder".into(),
            added_at: 0,
            added_from: None,
            sealed: None,
        }],
        issued_at: 0,
        reason: "reset".into(),
    };
    let bytes = serde_json::to_vec(&forged).unwrap();
    let signature = key
        .sign(&SignedDeviceList::signing_payload(&bytes))
        .to_bytes()
        .to_vec();
    (bytes, signature)
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A sender starting a conversation, and each receiver joining it, verify
/// every member's device list and its place in the log in one request
/// (`POST /v1/directory/lists`), not two per member: the requests they make
/// are the same for 2 recipients as for 8 (a circular to a thousand posts
/// would otherwise be two thousand round trips per post).
#[test]
fn every_members_list_is_verified_in_one_request_whatever_their_number() {
    let dir = Scratch::new("log-directory-batch");
    let server = Server::start(&dir.path("server"), None);
    let sender = user(&dir, &server, "sender");
    let names: Vec<String> = (0..8).map(|i| format!("post{i}")).collect();
    let posts: Vec<Client> = names.iter().map(|n| user(&dir, &server, n)).collect();
    let mut device = pouch_client::Device::open(&sender.home, PASSPHRASE).unwrap();
    let mut requests_to = |count: usize| {
        let to = names[..count]
            .iter()
            .map(|n| pouch_proto::Address::parse(&format!("{n}@pouch.local")).unwrap())
            .collect();
        let before = device.requests_made();
        let sent = device
            .send(pouch_client::Compose {
                to,
                subject: format!("to {count}"),
                body: "circular".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(sent.recipient_devices as usize, count);
        device.requests_made() - before
    };
    // The first send signs in and pins the log; the measured ones do not.
    requests_to(1);
    // (At most one more: the directory's look at the log, every 2 s.)
    let (two, eight) = (requests_to(2), requests_to(8));
    assert!(
        eight <= two + 1,
        "a new conversation to 2 took {two} requests, to 8 {eight}: they grow with the recipients"
    );
    // Post 0 and post 1 are in the conversation of 2 and the one of 8.
    // Each joins both in one sync; post 2 joins only the conversation of 8:
    // the extra six strangers cost it nothing more than a stranger-free join.
    let mut joins = Vec::new();
    for post in &posts[..3] {
        let mut d = pouch_client::Device::open(&post.home, PASSPHRASE).unwrap();
        let report = d.sync_mail().unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        joins.push((report.joined_conversations, d.requests_made()));
    }
    assert_eq!(joins[0].0, 3, "post 0 is in all three conversations");
    assert_eq!(joins[2].0, 1);
    // Per joined conversation a post asks for the members' lists once, and
    // the sign-in, queue and membership requests do not depend on members.
    let (all_three, only_eight) = (joins[0].1, joins[2].1);
    assert!(
        all_three <= only_eight + 2 * 3,
        "joining three conversations took {all_three} requests, one took {only_eight}"
    );
    assert!(
        only_eight <= 12,
        "joining a conversation of 9 members took {only_eight} requests"
    );
}

/// A device asks for its queue once per page: the server says whether more
/// is queued after the page, so a sync that finds three replies makes two
/// requests — the page and its acknowledgement — not a third that comes
/// back empty (a receiver under load syncs once per arriving mail).
#[test]
fn a_sync_stops_asking_for_the_queue_when_the_server_says_it_is_drained() {
    let dir = Scratch::new("queue-drained");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let to = vec![pouch_proto::Address::parse(&bob.address).unwrap()];
    let mut sender = pouch_client::Device::open(&alice.home, PASSPHRASE).unwrap();
    let mut receiver = pouch_client::Device::open(&bob.home, PASSPHRASE).unwrap();
    let first = sender
        .send(pouch_client::Compose {
            to: to.clone(),
            subject: "Visit".into(),
            body: "first".into(),
            ..Default::default()
        })
        .unwrap();
    // Joining verifies the members and checks the membership: not measured.
    receiver.sync_mail().unwrap();
    for i in 0..3 {
        sender
            .send(pouch_client::Compose {
                to: to.clone(),
                subject: "Re: Visit".into(),
                body: format!("reply {i}"),
                reply_to: Some(first.id),
                ..Default::default()
            })
            .unwrap();
    }
    let before = receiver.requests_made();
    let report = receiver.sync_mail().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(receiver.inbox().unwrap().len(), 4);
    assert_eq!(
        receiver.requests_made() - before,
        2,
        "a sync of one page should take the page and its acknowledgement"
    );
}
