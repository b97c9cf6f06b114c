//! Nothing acknowledged is ever lost: sends under a steady load while the
//! server is killed (SIGKILL) and restarted several times, and a receiver
//! killed in the middle of a sync. Every mail the sender was told was
//! accepted arrives exactly once.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn every_acknowledged_mail_arrives_once_across_server_and_receiver_crashes() {
    let dir = Scratch::new("crash");
    let mut server = Server::start(&dir.path("server"), None);
    let listen = server.url.trim_start_matches("https://").to_string();
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    alice.ok(&[
        "send",
        "--to",
        "bob@pouch.local",
        "--subject",
        "warm-up",
        "--body",
        "0",
    ]);

    // The load: one sender, one mail after another, noting what was accepted.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (accepted, stop) = (accepted.clone(), stop.clone());
        let home = alice.home.clone();
        std::thread::spawn(move || {
            let alice = Client {
                home,
                address: "alice@pouch.local".into(),
            };
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let subject = format!("load {n}");
                let out = alice.run(&[
                    "send",
                    "--to",
                    "bob@pouch.local",
                    "--subject",
                    &subject,
                    "--body",
                    "x",
                ]);
                if out.status.success() {
                    accepted.lock().unwrap().push(subject);
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
    };

    // The server dies three times mid-load; the receiver once mid-sync.
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        server.stop(); // SIGKILL
        std::thread::sleep(Duration::from_millis(500));
        server = Server::start_on(&dir.path("server"), None, &listen);
        if round == 1 {
            let mut sync = bob
                .cmd()
                .args(["sync"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let _ = sync.kill(); // SIGKILL, wherever it is
            let _ = sync.wait();
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();

    // Bob catches up.
    for _ in 0..5 {
        let _ = bob.run(&["sync"]);
    }
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for m in bob
        .inbox()
        .iter()
        .filter(|m| m["from"] == "alice@pouch.local")
    {
        *received
            .entry(m["subject"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 5,
        "the load was too light to mean anything: {accepted:?}"
    );
    eprintln!(
        "{} mails accepted during 3 server kills and 1 receiver kill",
        accepted.len()
    );
    for s in &accepted {
        assert_eq!(
            received.get(s),
            Some(&1),
            "'{s}' accepted but received {:?} times",
            received.get(s)
        );
    }
    for (s, n) in &received {
        assert_eq!(*n, 1, "'{s}' arrived {n} times");
    }
}
