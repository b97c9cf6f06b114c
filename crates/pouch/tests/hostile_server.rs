//! The intruder who owns the server, or a member with a modified client,
//! against a receiving device. Each attack is played against a real server
//! (its database edited between steps, or driven by a client the test wrote
//! itself), and each must be caught by the receiver: a non-zero `pouch sync`,
//! an inbox notice, an alert to the security team — and nothing shown as
//! genuine mail.

mod common;
use common::*;
use pouch_proto::api;
use pouch_proto::envelope::{ChainLink, Content, Envelope};
use pouch_proto::{Address, DeviceId, GroupId};

fn subjects(c: &Client) -> Vec<String> {
    c.inbox()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect()
}

/// Alerts the security team received, as (rule, summary).
fn alerts(server: &Server) -> Vec<(String, String)> {
    server
        .alerts()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits (briefly) for an alert of `rule` whose summary contains `needle`.
fn wait_for_alert(server: &Server, rule: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some((_, s)) = alerts(server)
            .into_iter()
            .find(|(r, s)| r == rule && s.contains(needle))
        {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {rule} alert mentioning {needle:?}; alerts: {:?}",
            alerts(server)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `pouch sync` that must fail with exit 3 (a security finding); returns stderr.
fn sync_finds(c: &Client) -> String {
    let out = c.run(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "sync should report a finding: {err}"
    );
    err
}

fn mail(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@forged>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nTransfer the funds.\r\n",
        rand::random::<u64>()
    )
    .into_bytes()
}

/// A client the attacker wrote: an honestly enrolled account whose device
/// then builds MLS messages the real client never would.
struct ModifiedClient(RawDevice);

impl std::ops::Deref for ModifiedClient {
    type Target = RawDevice;
    fn deref(&self) -> &RawDevice {
        &self.0
    }
}

impl ModifiedClient {
    fn enroll(server: &Server, address: &str) -> Self {
        ModifiedClient(RawDevice::enroll(server, address))
    }

    /// Starts a conversation with `to`, its creator's leaf naming
    /// `claimed` and carrying the key of `signer`, and sends one mail from
    /// `claimed` in it, through the server's API.
    fn forge(
        &self,
        signer: &pouch_mls::DeviceSigner,
        claimed: &str,
        to: &str,
        subject: &str,
    ) -> (GroupId, DeviceId) {
        let forged = self.build(signer, claimed, to, subject);
        let _: api::CommitResponse = self
            .api
            .post(&forged.commit_path(), &forged.request)
            .unwrap();
        let _: api::SendResponse = self
            .api
            .post(&forged.message_path(), &forged.message)
            .unwrap();
        (forged.group, forged.to_device)
    }

    /// The same, but the honest server checks the creator's leaf and refuses
    /// (shown), so the intruder who owns the server writes the Welcome and
    /// the mail straight into the recipient's queue.
    fn forge_past_the_server(
        &self,
        server: &Server,
        signer: &pouch_mls::DeviceSigner,
        claimed: &str,
        to: &str,
        subject: &str,
    ) {
        let forged = self.build(signer, claimed, to, subject);
        let refused: Result<api::CommitResponse, _> =
            self.api.post(&forged.commit_path(), &forged.request);
        let err = refused.unwrap_err().to_string();
        assert!(err.contains("the commit was refused"), "{err}");
        inject(
            server,
            &forged.to_device,
            "welcome",
            &forged.group,
            &self.device_id,
            0,
            forged.request.welcome.as_deref().unwrap(),
        );
        inject(
            server,
            &forged.to_device,
            "application",
            &forged.group,
            &self.device_id,
            forged.message.epoch,
            &forged.message.message,
        );
    }

    fn build(
        &self,
        signer: &pouch_mls::DeviceSigner,
        claimed: &str,
        to: &str,
        subject: &str,
    ) -> Forged {
        let to_address = Address::parse(to).unwrap();
        let claim = self.claim(std::slice::from_ref(&to_address)).unwrap();
        let d = &claim.devices[0];
        let kp = pouch_mls::validate_key_package(
            &self.provider,
            self.suite,
            &pouch_mls::ClaimedPackage {
                bytes: &d.key_package,
                address: &d.address,
                signature_key: &d.signature_key,
            },
        )
        .unwrap();
        let (mut group, out) = pouch_mls::create_conversation(
            &self.provider,
            self.suite,
            signer,
            &Address::parse(claimed).unwrap(),
            &rand::random::<[u8; 32]>(),
            &[kp],
        )
        .unwrap();
        let gid = GroupId::from_bytes(&pouch_mls::group_id_bytes(&group));
        let request = api::CommitRequest {
            base_epoch: 0,
            commit: Some(out.commit),
            welcome: out.welcome,
            added: vec![d.device_id.clone()],
            removed: vec![],
            group_info: out.group_info,
            hub_nonce: None,
        };
        pouch_mls::merge_pending(&self.provider, &mut group).unwrap();
        let mut envelope = Envelope::new(Content::Inline {
            rfc5322: mail(claimed, to, subject),
        });
        envelope.chain = Some(ChainLink {
            n: 1,
            prev: String::new(),
        });
        let sealed =
            pouch_mls::seal(&self.provider, signer, &mut group, &envelope.to_bytes()).unwrap();
        Forged {
            group: gid,
            to_device: d.device_id.clone(),
            request,
            message: api::SendRequest {
                epoch: pouch_mls::epoch(&group),
                message: sealed,
                blob: None,
                submission: None,
                label: None,
            },
        }
    }
}

/// A conversation a modified client built, and its first mail, not yet sent.
struct Forged {
    group: GroupId,
    to_device: DeviceId,
    request: api::CommitRequest,
    message: api::SendRequest,
}

impl Forged {
    fn commit_path(&self) -> String {
        format!("/v1/groups/{}/commits", self.group)
    }
    fn message_path(&self) -> String {
        format!("/v1/groups/{}/messages", self.group)
    }
}

/// Writes an item into a device's queue as the server would, numbered next.
fn inject(
    server: &Server,
    device: &DeviceId,
    kind: &str,
    group: &GroupId,
    sender: &DeviceId,
    epoch: u64,
    payload: &[u8],
) {
    let db = server.db();
    let seq: i64 = db
        .query_row(
            "UPDATE devices SET next_seq = next_seq + 1, queued_bytes = queued_bytes + ?2 WHERE device_id = ?1 RETURNING next_seq",
            rusqlite::params![device.0, payload.len() as i64],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload_id, size, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
        rusqlite::params![
            device.0,
            seq,
            kind,
            group.0,
            sender.0,
            epoch as i64,
            store_payload(&db, payload),
            payload.len() as i64
        ],
    )
    .unwrap();
}

/// Stores a queue payload as the server would; returns its id.
fn store_payload(db: &rusqlite::Connection, payload: &[u8]) -> i64 {
    db.query_row(
        "INSERT INTO queue_payloads (data) VALUES (?1) RETURNING payload_id",
        [payload],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn mail_from_an_account_reset_behind_the_receivers_back_is_held_until_accepted() {
    let dir = Scratch::new("hostile-reset");
    let server = Server::start(&dir.path("server"), None);
    let ceo = user(&dir, &server, "ceo");
    let bob = user(&dir, &server, "bob");
    ceo.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Genuine",
        "--body",
        "1",
    ]);
    bob.ok(&["sync"]); // Bob pins the CEO's account key.

    // Whoever holds the administrator token resets the CEO and enrolls a device of their own.
    let out = server.admin_approved(&["user", "reset", "ceo@pouch.local"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let impostor = Client::enroll(dir.path("impostor"), &invite, "ceo@pouch.local");
    impostor.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Wire the money",
        "--body",
        "now",
    ]);

    // Bob's device holds it back: not shown as the CEO's mail, exit 3, the reason said.
    let err = sync_finds(&bob);
    assert!(
        err.contains("the account key of ceo@pouch.local has changed"),
        "{err}"
    );
    assert!(!subjects(&bob).contains(&"Wire the money".to_string()));
    assert!(
        subjects(&bob).iter().any(|s| s.contains("held back")),
        "{:?}",
        subjects(&bob)
    );
    // Still held on the next sync: nothing is decided for the user.
    let err = sync_finds(&bob);
    assert!(err.contains("held back"), "{err}");
    assert!(!subjects(&bob).contains(&"Wire the money".to_string()));

    // Having compared the key with the CEO in person, Bob accepts it: the mail is released.
    bob.ok(&["verify", "ceo@pouch.local", "--accept"]);
    let report = bob.sync();
    assert_eq!(
        report["new_messages"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(subjects(&bob).contains(&"Wire the money".to_string()));
    // Released once, and nothing is held any more.
    let out = bob.run(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        subjects(&bob)
            .iter()
            .filter(|s| *s == "Wire the money")
            .count(),
        1
    );
}

#[test]
fn a_credential_naming_another_address_is_refused_and_reported() {
    let dir = Scratch::new("hostile-credential");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Genuine",
        "--body",
        "1",
    ]);
    bob.ok(&["sync"]);

    // Mallory, an ordinary user with a modified client, signs with her own
    // listed device key but writes Alice's address into the credential.
    let mallory = ModifiedClient::enroll(&server, "mallory@pouch.local");
    mallory.forge_past_the_server(
        &server,
        &mallory.signer,
        "alice@pouch.local",
        "bob@pouch.local",
        "From Alice, honest",
    );

    let err = sync_finds(&bob);
    assert!(err.contains("forged sender"), "{err}");
    assert!(err.contains("alice@pouch.local"), "{err}");
    let shown = subjects(&bob);
    assert!(
        !shown.contains(&"From Alice, honest".to_string()),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|s| s.contains("forged sender")),
        "no inbox notice: {shown:?}"
    );
    wait_for_alert(&server, "forged_sender", "alice@pouch.local");
}

#[test]
fn a_credential_for_a_device_on_no_signed_list_is_refused_and_reported() {
    let dir = Scratch::new("hostile-unlisted");
    let server = Server::start(&dir.path("server"), None);
    let bob = user(&dir, &server, "bob");
    let mallory = ModifiedClient::enroll(&server, "mallory@pouch.local");

    // A key of Mallory's making that no list of hers (or anyone's) names,
    // under her own address: a device the account never signed for.
    let unlisted = pouch_mls::new_device_signer(&mallory.provider).unwrap();
    mallory.forge_past_the_server(
        &server,
        &unlisted,
        "mallory@pouch.local",
        "bob@pouch.local",
        "Unlisted",
    );

    let err = sync_finds(&bob);
    assert!(err.contains("forged sender"), "{err}");
    assert!(!subjects(&bob).contains(&"Unlisted".to_string()));
    wait_for_alert(&server, "forged_sender", "mallory@pouch.local");

    // The honest path still works for Mallory's real device afterwards.
    let (group, bob_device) = mallory.forge(
        &mallory.signer,
        "mallory@pouch.local",
        "bob@pouch.local",
        "Honest",
    );
    let out = bob.run(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(subjects(&bob).contains(&"Honest".to_string()));

    // But she cannot drop Bob from the server's fan-out without an MLS
    // commit that Bob would apply (and see).
    let refused: Result<api::CommitResponse, _> = mallory.api.post(
        &format!("/v1/groups/{group}/commits"),
        &api::CommitRequest {
            base_epoch: 1,
            commit: None,
            welcome: None,
            added: vec![],
            removed: vec![bob_device.clone()],
            group_info: None,
            hub_nonce: None,
        },
    );
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("must carry its MLS commit"), "{err}");

    // Nor with a commit that does not do what the request says (a
    // self-update presented as Bob's removal), nor with bytes that are no
    // commit: the server verifies every commit against the conversation's
    // public state before it changes the fan-out.
    let path = format!("/v1/groups/{group}/commits");
    let mut mls = pouch_mls::load_group(&mallory.provider, &group.to_bytes().unwrap()).unwrap();
    let update = pouch_mls::self_update(&mallory.provider, &mallory.signer, &mut mls).unwrap();
    for (commit, expected) in [
        (update.commit.clone(), "the devices it removes are not"),
        (vec![0u8; 64], "does not verify"),
    ] {
        let refused: Result<api::CommitResponse, _> = mallory.api.post(
            &path,
            &api::CommitRequest {
                base_epoch: 1,
                commit: Some(commit),
                welcome: None,
                added: vec![],
                removed: vec![bob_device.clone()],
                group_info: None,
                hub_nonce: None,
            },
        );
        let err = refused.unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    // The same self-update, presented as what it is, passes; Bob applies it.
    let accepted: api::CommitResponse = mallory
        .api
        .post(
            &path,
            &api::CommitRequest {
                base_epoch: 1,
                commit: Some(update.commit),
                welcome: None,
                added: vec![],
                removed: vec![],
                group_info: None,
                hub_nonce: None,
            },
        )
        .unwrap();
    assert_eq!(accepted.epoch, 2);
    let out = bob.run(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bob's device id and the queue rows waiting for it, as (seq, kind).
fn queue_of(server: &Server, c: &Client) -> (String, Vec<(i64, String)>) {
    let device = device_id_of(c);
    let db = server.db();
    let mut stmt = db
        .prepare("SELECT seq, kind FROM queue WHERE device_id = ?1 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([&device], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (device, rows)
}

/// The queue positions of application messages among `rows`.
fn applications(rows: &[(i64, String)]) -> Vec<i64> {
    rows.iter()
        .filter(|(_, k)| k == "application")
        .map(|(s, _)| *s)
        .collect()
}

/// Alice writes three mails to Bob in one conversation; Bob has not synced yet.
fn three_mails(dir: &Scratch, server: &Server) -> (Client, Client) {
    let alice = user(dir, server, "alice");
    let bob = user(dir, server, "bob");
    let first = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "One",
        "--body",
        "1",
        "--json",
    ]);
    let id = first["id"].to_string();
    for (subject, body) in [("Two", "2"), ("Three", "3")] {
        alice.ok(&[
            "send",
            "--reply-to",
            &id,
            "--to",
            "bob@pouch.local",
            "--subject",
            subject,
            "--body",
            body,
        ]);
    }
    (alice, bob)
}

#[test]
fn a_message_dropped_and_the_queue_renumbered_is_reported_as_withheld() {
    let dir = Scratch::new("hostile-drop");
    let server = Server::start(&dir.path("server"), None);
    let (_alice, bob) = three_mails(&dir, &server);
    let (device, rows) = queue_of(&server, &bob);
    let apps = applications(&rows);
    assert_eq!(apps.len(), 3, "{rows:?}");
    // The intruder deletes the second mail and closes the gap, leaving no trace in the numbering.
    let db = server.db();
    db.execute(
        "DELETE FROM queue WHERE device_id = ?1 AND seq = ?2",
        rusqlite::params![device, apps[1]],
    )
    .unwrap();
    db.execute(
        "UPDATE queue SET seq = seq - 1 WHERE device_id = ?1 AND seq > ?2",
        rusqlite::params![device, apps[1]],
    )
    .unwrap();
    db.execute(
        "UPDATE devices SET next_seq = next_seq - 1 WHERE device_id = ?1",
        [&device],
    )
    .unwrap();
    drop(db);

    let err = sync_finds(&bob);
    assert!(err.contains("message 2 from alice@pouch.local"), "{err}");
    assert!(err.contains("withheld"), "{err}");
    // No queue gap: the numbering was closed, so it is not blamed on a copy of the device.
    assert!(!err.contains("a copy of this device fetched them"), "{err}");
    let shown = subjects(&bob);
    assert!(shown.contains(&"One".to_string()) && shown.contains(&"Three".to_string()));
    assert!(!shown.contains(&"Two".to_string()));
    assert!(
        shown.iter().any(|s| s.contains("withheld")),
        "no inbox notice: {shown:?}"
    );
    wait_for_alert(&server, "mail_withheld", "message 2 from alice@pouch.local");
}

#[test]
fn a_reordered_pair_is_reported_and_both_mails_are_kept() {
    let dir = Scratch::new("hostile-reorder");
    let server = Server::start(&dir.path("server"), None);
    let (_alice, bob) = three_mails(&dir, &server);
    let (device, rows) = queue_of(&server, &bob);
    let apps = applications(&rows);
    // The intruder swaps the second and third mails.
    let db = server.db();
    for (from, to) in [(apps[1], -1), (apps[2], apps[1]), (-1, apps[2])] {
        db.execute(
            "UPDATE queue SET seq = ?3 WHERE device_id = ?1 AND seq = ?2",
            rusqlite::params![device, from, to],
        )
        .unwrap();
    }
    drop(db);

    let err = sync_finds(&bob);
    assert!(err.contains("message 2 from alice@pouch.local"), "{err}");
    assert!(err.contains("arrived after message 3"), "{err}");
    let shown = subjects(&bob);
    for s in ["One", "Two", "Three"] {
        assert!(shown.contains(&s.to_string()), "{s} missing: {shown:?}");
    }
    wait_for_alert(&server, "mail_withheld", "arrived after message 3");
}

#[test]
fn a_junk_welcome_is_refused_and_reported() {
    let dir = Scratch::new("hostile-welcome");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let alice_device = device_id_of(&alice);
    let (device, _) = queue_of(&server, &bob);
    let db = server.db();
    let next: i64 = db
        .query_row(
            "SELECT next_seq FROM devices WHERE device_id = ?1",
            [&device],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload_id, size, received_at) \
         VALUES (?1, ?2, 'welcome', 'deadbeef', ?3, 1, ?4, 300, 0)",
        rusqlite::params![device, next + 1, alice_device, store_payload(&db, &[7u8; 300])],
    )
    .unwrap();
    db.execute(
        "UPDATE devices SET next_seq = ?2 WHERE device_id = ?1",
        rusqlite::params![device, next + 1],
    )
    .unwrap();
    drop(db);

    let err = sync_finds(&bob);
    assert!(err.contains("rejected queue item"), "{err}");
    let shown = subjects(&bob);
    assert!(
        shown.iter().any(|s| s.contains("could not be opened")),
        "no inbox notice: {shown:?}"
    );
    assert_eq!(
        bob.inbox()
            .iter()
            .filter(|m| m["from"] != "pouch-system")
            .count(),
        0,
        "nothing shown as mail"
    );
    wait_for_alert(&server, "rejected_item", "welcome in conversation deadbeef");
}

#[test]
fn the_servers_state_is_private_and_its_log_key_sealed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("hostile-state");
    let server = Server::start(&dir.path("server"), None);
    let _alice = user(&dir, &server, "alice");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.data_dir), 0o700);
    for f in [
        "pouch.db",
        "log-wrap.key",
        "tls-key.pem",
        "tls-anchor-key.pem",
    ] {
        assert_eq!(mode(&server.data_dir.join(f)), 0o600, "{f}");
    }
    // The administrator's sealed key, in their own home.
    let admin_home = admin_home_of(&server.data_dir);
    assert_eq!(mode(&admin_home), 0o700);
    assert_eq!(mode(&admin_home.join("admin.json")), 0o600);
    // The setup secret made "ops" and is gone.
    assert!(!server.data_dir.join("admin-setup.token").exists());
    // Whoever copies the database alone cannot sign a checkpoint.
    let db = server.db();
    let clear: Option<String> = db
        .query_row(
            "SELECT value FROM settings WHERE key = 'log_private_key'",
            [],
            |r| r.get(0),
        )
        .ok();
    assert_eq!(
        clear, None,
        "the log's private key in clear in the database"
    );
    let sealed: String = db
        .query_row(
            "SELECT value FROM settings WHERE key = 'log_private_key_sealed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sealed.contains("PRIVATE+KEY"), "{sealed}");
    // The server restarts from the sealed key: the log is signed by the same key as before.
    let before = log_key_of(&server);
    drop(server);
    let server = Server::start(&dir.path("server"), None);
    assert_eq!(log_key_of(&server), before);
}

#[test]
fn a_member_dropped_from_the_fan_out_without_a_commit_is_reported() {
    let dir = Scratch::new("hostile-members");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");
    let first = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--cc",
        "carol@pouch.local",
        "--subject",
        "Plan",
        "--body",
        "1",
        "--json",
    ]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    // The intruder silently stops delivering the conversation to Carol.
    let carol_device = device_id_of(&carol);
    server
        .db()
        .execute(
            "DELETE FROM group_members WHERE device_id = ?1",
            [&carol_device],
        )
        .unwrap();
    alice.ok(&[
        "send",
        "--reply-to",
        &first["id"].to_string(),
        "--to",
        "bob@pouch.local",
        "--cc",
        "carol@pouch.local",
        "--subject",
        "Plan, revised",
        "--body",
        "2",
    ]);
    let err = sync_finds(&bob);
    assert!(err.contains("no longer delivers to member device"), "{err}");
    assert!(err.contains(&carol_device), "{err}");
    assert!(
        subjects(&bob)
            .iter()
            .any(|s| s.contains("changed who receives")),
        "{:?}",
        subjects(&bob)
    );
    wait_for_alert(&server, "membership_mismatch", &carol_device);
}

/// A server that answers "accepted before" for a mail it never had (here:
/// its database made to ignore every submission id, so it says so for all)
/// does not make the mail vanish: the sender's device refuses the answer for
/// a mail no earlier attempt can have delivered, tells its user the mail
/// was not sent and why, and keeps the chain link used, so the receiver
/// reports the withheld mail when the next one arrives.
#[test]
fn a_false_accepted_before_is_refused_and_the_mail_is_not_lost_silently() {
    let dir = Scratch::new("hostile-duplicate");
    let mut server = Server::start(&dir.path("server"), None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    // One conversation, so that each mail follows the one before in
    // Alice's chain.
    let one = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "One",
        "--body",
        "1",
        "--json",
    ]);
    let one = one["id"].to_string();
    bob.sync();
    // Kept while the server is down: its first attempt will be from the outbox.
    server.stop();
    let kept = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--reply-to",
        &one,
        "--body",
        "2",
        "--json",
    ]);
    assert_eq!(kept["kept"], true, "{kept}");
    let server = Server::start_on(&dir.path("server"), None, &listen);
    server
        .db()
        .execute_batch(
            "CREATE TRIGGER lie BEFORE INSERT ON submissions BEGIN SELECT RAISE(IGNORE); END;",
        )
        .unwrap();

    let out = alice.run(&["sync", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("withholding mail"), "{err}");
    assert_eq!(alice.json(&["outbox", "--json"]), serde_json::json!([]));
    let notice = alice
        .inbox()
        .into_iter()
        .find(|m| m["subject"] == "Not sent: Re: One")
        .expect("a notice in Alice's inbox");
    let text = String::from_utf8(alice.ok(&["read", &notice["id"].to_string()])).unwrap();
    assert!(text.contains("withholding mail"), "{text}");
    assert_eq!(
        alice
            .sent()
            .iter()
            .filter(|m| m["subject"] == "Re: One")
            .count(),
        0,
        "not in Sent: it was not sent"
    );

    // Alice's next mail in the conversation shows Bob the gap.
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--reply-to",
        &one,
        "--body",
        "3",
    ]);
    let err = sync_finds(&bob);
    assert!(err.contains("withheld"), "{err}");
    assert_eq!(
        subjects(&bob).iter().filter(|s| *s == "Re: One").count(),
        1,
        "the third mail, not the second"
    );
}
