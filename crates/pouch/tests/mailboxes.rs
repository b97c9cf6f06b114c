//! Folders as the bridge's IMAP will serve them, on a real device's
//! encrypted store: UIDs given once and never reused, UIDVALIDITY kept
//! across restarts, flags kept, new mail filed to INBOX and Sent, a client's
//! APPEND of what it just sent recognised rather than doubled.

mod common;

use common::*;
use pouch_client::Device;

fn open(c: &Client) -> Device {
    Device::open(&c.home, PASSPHRASE).unwrap()
}

fn uids(d: &Device, folder: &str) -> Vec<u32> {
    let mb = d.mailbox(folder).unwrap().unwrap();
    d.entries(mb.id).unwrap().iter().map(|e| e.uid).collect()
}

#[test]
fn folders_keep_their_uids_flags_and_validity() {
    let dir = Scratch::new("mailboxes");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    for subject in ["one", "two"] {
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            subject,
            "--body",
            "x",
        ]);
    }
    alice.sync();

    let mut d = open(&alice);
    assert_eq!(d.refresh_mailboxes().unwrap(), 2);
    let names: Vec<String> = d.mailboxes().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        ["INBOX", "Sent", "Drafts", "Archive", "Trash", "Junk"]
    );
    let sent = d.mailbox("Sent").unwrap().unwrap();
    assert_eq!(sent.special_use.as_deref(), Some("\\Sent"));
    let inbox = d.mailbox("inbox").unwrap().unwrap();
    assert_eq!(inbox.name, "INBOX", "INBOX in any case");
    assert_eq!(uids(&d, "INBOX"), [1, 2]);
    let entries = d.entries(inbox.id).unwrap();
    assert_eq!(
        entries[0].size as usize,
        d.raw(entries[0].message).unwrap().len(),
        "the size is the exact byte count"
    );
    d.set_flags(
        inbox.id,
        1,
        &["\\Seen".into(), "\\Flagged".into(), "\\Seen".into()],
    )
    .unwrap();

    // Copy to Archive, remove from INBOX: new UIDs there, none reused here.
    let archive = d.mailbox("Archive").unwrap().unwrap();
    assert_eq!(
        d.copy_messages(inbox.id, &[1, 2], archive.id).unwrap(),
        [(1, 1), (2, 2)]
    );
    d.remove_messages(inbox.id, &[2]).unwrap();
    drop(d);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "three",
        "--body",
        "x",
    ]);
    alice.sync();

    // After a restart: the same UIDVALIDITY, the flags, and the next UID is 3, not 2.
    let mut d = open(&alice);
    assert_eq!(d.refresh_mailboxes().unwrap(), 1);
    let again = d.mailbox("INBOX").unwrap().unwrap();
    assert_eq!(again.uidvalidity, inbox.uidvalidity);
    assert_eq!(uids(&d, "INBOX"), [1, 3]);
    assert_eq!(
        d.entries(inbox.id).unwrap()[0].flags,
        ["\\Flagged", "\\Seen"]
    );
    assert_eq!(
        d.entries(archive.id).unwrap()[0].flags,
        ["\\Flagged", "\\Seen"],
        "flags travel with a copy"
    );
    drop(d);

    // Sent mail is filed to Sent, seen; the client's APPEND of it is recognised.
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "reply",
        "--body",
        "y",
    ]);
    let mut d = open(&alice);
    d.refresh_mailboxes().unwrap();
    let sent_entries = d.entries(sent.id).unwrap();
    assert_eq!(sent_entries.len(), 1);
    assert_eq!(sent_entries[0].flags, ["\\Seen"]);
    let raw = d.raw(sent_entries[0].message).unwrap();
    assert_eq!(
        d.append_message(sent.id, raw.clone(), &["\\Seen".into()])
            .unwrap(),
        sent_entries[0].uid
    );
    assert_eq!(d.entries(sent.id).unwrap().len(), 1, "not doubled");
    // A draft is stored locally and filed.
    let drafts = d.mailbox("Drafts").unwrap().unwrap();
    let draft =
        b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: draft\r\n\r\nnot yet\r\n"
            .to_vec();
    let uid = d
        .append_message(drafts.id, draft.clone(), &["\\Draft".into()])
        .unwrap();
    let e = d.entries(drafts.id).unwrap();
    assert_eq!((e[0].uid, d.raw(e[0].message).unwrap()), (uid, draft));
    assert_eq!(
        d.refresh_mailboxes().unwrap(),
        0,
        "the draft is filed already"
    );
    assert_eq!(
        d.entries(d.mailbox("INBOX").unwrap().unwrap().id)
            .unwrap()
            .len(),
        2,
        "but is not filed twice"
    );

    // Folders the user makes: created, renamed (new UIDVALIDITY), deleted; the standard ones stay.
    d.create_mailbox("Cables/2026").unwrap();
    assert!(d.create_mailbox("Cables/2026").is_err());
    let made = d.mailbox("Cables/2026").unwrap().unwrap();
    d.rename_mailbox("Cables/2026", "Cables/Archive").unwrap();
    let renamed = d.mailbox("Cables/Archive").unwrap().unwrap();
    assert!(renamed.uidvalidity > made.uidvalidity);
    d.delete_mailbox("Cables/Archive").unwrap();
    assert!(d.mailbox("Cables/Archive").unwrap().is_none());
    assert!(d.delete_mailbox("INBOX").is_err());
    assert!(d.rename_mailbox("Sent", "Old").is_err());
}

#[test]
fn pouch_search_finds_mail_by_its_words_and_the_index_is_encrypted_at_rest() {
    let dir = Scratch::new("search");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Fisheries quota",
        "--body",
        "The Zanzibarian delegation accepts the compromise.",
    ]);
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Lunch",
        "--body",
        "Tuesday at noon?",
    ]);
    alice.sync();

    let found = alice.json(&["search", "zanzibarian COMPROMISE", "--json"]);
    let subjects: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Fisheries quota"]);
    // Prefixes, people, and words that are nowhere.
    assert_eq!(
        alice
            .json(&["search", "Tues", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        alice
            .json(&["search", "bob", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        alice
            .json(&["search", "nowhere-to-be-found", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // FTS syntax in a query is just words.
    assert!(
        alice
            .run(&["search", "\"unbalanced OR *", "--json"])
            .status
            .success()
    );

    // The index lives in the encrypted store: no indexed word in any file.
    let tree = read_tree(&alice.home);
    assert!(
        !contains(&tree, b"Zanzibarian"),
        "an indexed word in clear on disk"
    );
    assert!(
        !contains(&tree, b"zanzibarian"),
        "an indexed token in clear on disk"
    );
}

/// A mail client that keeps its own copy (Thunderbird's "place a copy in
/// Sent") APPENDs it right after SMTP, before the bridge's outbox has sent
/// the mail: when the send is filed, Sent still holds one copy, the
/// client's, under the UID the client was given.
#[test]
fn a_copy_appended_to_sent_before_the_mail_went_is_not_doubled() {
    let dir = Scratch::new("mailboxes-append-first");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let _bob = user(&dir, &server, "bob");
    let mut d = open(&alice);
    d.refresh_mailboxes().unwrap();
    let sent = d.mailbox("Sent").unwrap().unwrap();
    let raw = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: appended first\r\n\
Message-ID: <appended-first@pouch.local>\r\n\r\nz\r\n"
        .to_vec();
    let uid = d
        .append_message(sent.id, raw.clone(), &["\\Seen".into()])
        .unwrap();
    let bob = pouch_proto::Address::parse("bob@pouch.local").unwrap();
    d.submit_mail(raw, std::slice::from_ref(&bob)).unwrap();
    d.refresh_mailboxes().unwrap();
    let entries = d.entries(sent.id).unwrap();
    assert_eq!(entries.len(), 1, "one copy in Sent");
    assert_eq!(entries[0].uid, uid);
    // The mail itself went, and is this device's sent mail.
    drop(d);
    let sent_list = alice.sent();
    assert!(
        sent_list.iter().any(|m| m["subject"] == "appended first"),
        "{sent_list:?}"
    );
}
