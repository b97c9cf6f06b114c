//! Conversations: a recipient added to a thread gets their own devices added;
//! the sender's other devices follow the conversation; and two members who
//! change the group at once are ordered by the server (one commit per epoch),
//! the loser catching up and retrying on its own.

mod common;

use common::*;

#[test]
fn adding_recipients_and_racing_commits_keep_one_conversation() {
    let dir = Scratch::new("threads");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    // Alice's second device, linked with the first one's approval.
    let alice2 = link(dir.path("alice2"), &server, &alice);
    let bob = user(&dir, &server, "bob");
    let dave = user(&dir, &server, "dave");
    let erin = user(&dir, &server, "erin");

    let first = alice.json(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "Thread",
        "--body",
        "one",
        "--json",
    ]);
    assert_eq!(
        first["recipient_devices"], 2,
        "Bob's device and Alice's other device"
    );
    let conversation = first["conversation"].clone();

    // Alice's other device shows the mail as sent, byte-exact.
    alice2.sync();
    let sent2 = alice2.sent();
    assert_eq!(sent2.len(), 1);
    assert!(
        alice2.raw(sent2[0]["id"].as_i64().unwrap()) == alice.raw(first["id"].as_i64().unwrap())
    );
    assert!(
        alice2.inbox().is_empty(),
        "one's own mail is not in one's inbox"
    );

    // Bob replies and adds Dave; Alice, not yet synced, replies and adds Erin
    // on the same epoch. The server takes Bob's commit and refuses Alice's;
    // her client catches up and retries.
    bob.sync();
    let bob_first = bob.inbox()[0]["id"].to_string();
    let r1 = bob.json(&[
        "send",
        "--reply-to",
        &bob_first,
        "--to",
        "alice@pouch.local",
        "--cc",
        "dave@pouch.local",
        "--body",
        "adding Dave",
        "--json",
    ]);
    assert_eq!(r1["conversation"], conversation);
    let alice_first = first["id"].to_string();
    let r2 = alice.json(&[
        "send",
        "--reply-to",
        &alice_first,
        "--to",
        "bob@pouch.local",
        "--cc",
        "dave@pouch.local,erin@pouch.local",
        "--body",
        "adding Erin",
        "--json",
    ]);
    assert_eq!(
        r2["conversation"], conversation,
        "the retry stayed in the conversation"
    );

    // Dave joined with Bob's commit: he sees Bob's and Alice's replies, not the first mail.
    dave.sync();
    let dave_subjects: Vec<String> = dave
        .inbox()
        .iter()
        .map(|m| m["from"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dave_subjects, vec!["bob@pouch.local", "alice@pouch.local"]);
    // Erin joined last and sees only Alice's reply.
    erin.sync();
    let erin_inbox = erin.inbox();
    assert_eq!(erin_inbox.len(), 1);
    assert_eq!(erin_inbox[0]["from"], "alice@pouch.local");
    assert_eq!(erin_inbox[0]["conversation"], conversation);
    // Bob got Alice's reply; Alice got Bob's.
    bob.sync();
    assert_eq!(bob.inbox().len(), 2);
    assert!(alice.inbox().iter().any(|m| m["from"] == "bob@pouch.local"));
    // Everyone's state agrees: another round goes through without errors.
    let last = erin.json(&[
        "send",
        "--reply-to",
        &erin_inbox[0]["id"].to_string(),
        "--to",
        "alice@pouch.local,bob@pouch.local,dave@pouch.local",
        "--body",
        "thanks",
        "--json",
    ]);
    assert_eq!(last["conversation"], conversation);
    for c in [&alice, &alice2, &bob, &dave] {
        let r = c.sync();
        assert!(
            r["rejected"].as_array().unwrap().is_empty(),
            "{}: {r}",
            c.address
        );
        assert!(
            c.inbox().iter().any(|m| m["from"] == "erin@pouch.local"),
            "{} missed Erin's mail",
            c.address
        );
    }
}

/// Two processes sending from one device home at once (a bridge and a
/// `pouch send`) take turns at the store's write lock for each seal, and
/// read the conversation's ratchet and chain inside it: no key, nonce or
/// chain number is used twice, so the receiver opens every message and
/// reports nothing withheld or forged.
#[test]
fn two_processes_sending_from_one_home_never_reuse_a_key() {
    let dir = Scratch::new("threads-one-home");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let to = vec![pouch_proto::Address::parse(&bob.address).unwrap()];
    let first = {
        let mut device = pouch_client::Device::open(&alice.home, PASSPHRASE).unwrap();
        device
            .send(pouch_client::Compose {
                to: to.clone(),
                subject: "Talks".into(),
                body: "opening".into(),
                ..Default::default()
            })
            .unwrap()
            .id
    };
    const EACH: usize = 12;
    let senders: Vec<_> = (0..2)
        .map(|process| {
            let (home, to) = (alice.home.clone(), to.clone());
            std::thread::spawn(move || {
                let mut device = pouch_client::Device::open(&home, PASSPHRASE).unwrap();
                for i in 0..EACH {
                    device
                        .send(pouch_client::Compose {
                            to: to.clone(),
                            subject: "Re: Talks".into(),
                            body: format!("from sender {process}, reply {i}"),
                            reply_to: Some(first),
                            ..Default::default()
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("a sender failed");
    }
    let mut receiver = pouch_client::Device::open(&bob.home, PASSPHRASE).unwrap();
    let report = receiver.sync().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert!(report.alerts.is_empty(), "{:?}", report.alerts);
    assert_eq!(receiver.inbox().unwrap().len(), 1 + 2 * EACH);
}
