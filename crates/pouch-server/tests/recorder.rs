//! The audit recorder (crates/pouch-server/src/recorder.rs) on a real
//! SQLite store, through the server's own `events::record`: requests that
//! record at the same moment share transactions, each returns only once its
//! event is in the chain, and the rules still judge every event against its
//! own past, not against events recorded after it.

use pouch_proto::Address;
use pouch_proto::api::verify_event_chain;
use pouch_proto::security::{Action, Reason, Rule};
use pouch_server::events::{Ev, record, settled};
use std::sync::Arc;

async fn server_state(name: &str) -> (Arc<pouch_server::AppState>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pouch-recorder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn pouch_store::Store> = Arc::new(
        pouch_store_sql::SqlStore::open_sqlite(&dir.join("pouch.db"))
            .await
            .unwrap(),
    );
    let config = pouch_server::ServerConfig {
        data_dir: dir.clone(),
        domain: "mfa.example".into(),
        tls: Default::default(),
        ciphersuite: pouch_proto::DEFAULT_CIPHERSUITE,
        rotation_secs: 24 * 3600,
        link_ttl_secs: 600,
        token_ttl_secs: pouch_server::TOKEN_TTL_SECS,
        connections: Default::default(),
        limits: Default::default(),
        witnesses: Vec::new(),
        policy: Default::default(),
        federation: Default::default(),
    };
    let prepared = pouch_server::prepare(&config, store).await.unwrap();
    (prepared.state.clone(), dir)
}

/// Twenty failed enrollments from one address at the same moment: each
/// request returns with its event committed, the chain is whole, and the
/// guessing rule (which fires when the count *reaches* its threshold) fires
/// exactly once — judged on a batch's events one by one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_are_committed_before_their_requests_return_and_judged_in_order() {
    let (s, dir) = server_state("burst").await;
    let before = s.store.event_head().await.unwrap().0;
    let newcomer = Address::parse("newcomer@mfa.example").unwrap();
    let requests = (0..20).map(|i| {
        let s = s.clone();
        let newcomer = newcomer.clone();
        tokio::spawn(async move {
            record(
                &s,
                Ev::new(Action::Enroll)
                    .account(&newcomer)
                    .source("198.51.100.7")
                    .failed(Reason::InviteUnknown, format!("guess {i}")),
            )
            .await;
            // Back from `record`: the event is in the database.
            let mine = s.store.events(before, Some(&newcomer), 100).await.unwrap();
            assert!(
                mine.iter()
                    .any(|e| e.parsed().unwrap().detail == format!("guess {i}")),
                "request {i} returned before its event was committed"
            );
        })
    });
    for r in requests.collect::<Vec<_>>() {
        r.await.unwrap();
    }
    let events = s.store.events(before, None, 1000).await.unwrap();
    assert_eq!(events.len(), 20);
    let (anchor_seq, anchor_hash) = s.store.event_anchor().await.unwrap();
    let all = s.store.events(anchor_seq, None, 1000).await.unwrap();
    verify_event_chain(&all, anchor_seq + 1, anchor_hash).unwrap();

    settled(&s).await;
    let guessing: Vec<_> = s
        .store
        .alerts(0, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.rule == Rule::InviteBruteForce)
        .collect();
    assert_eq!(guessing.len(), 1, "{guessing:?}");
    assert!(
        guessing[0]
            .summary
            .contains("5 failed enroll attempts from 198.51.100.7")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The rules read what an event says, not how its text is worded: an
/// enrollment with a used invite is `invite_reuse` whatever its detail says,
/// and one whose detail merely mentions "already used" is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_read_the_typed_reason_not_the_wording() {
    let (s, dir) = server_state("reason").await;
    let someone = Address::parse("someone@mfa.example").unwrap();
    record(
        &s,
        Ev::new(Action::Enroll)
            .account(&someone)
            .source("198.51.100.8")
            .failed(Reason::InviteUsed, "refused"),
    )
    .await;
    record(
        &s,
        Ev::new(Action::Enroll)
            .account(&someone)
            .source("198.51.100.9")
            .failed(
                Reason::InviteExpired,
                "the invite was already used or expired",
            ),
    )
    .await;
    settled(&s).await;
    let reuse: Vec<_> = s
        .store
        .alerts(0, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.rule == Rule::InviteReuse)
        .collect();
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    assert!(reuse[0].summary.contains("198.51.100.8"));
    std::fs::remove_dir_all(&dir).unwrap();
}
