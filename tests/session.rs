//! The session layer's behaviour, on three in-memory replicas (W = R = 2)
//! behind `FaultyReplica`, with an injected wall clock and tokio's paused
//! clock, often with two app servers (two coordinators) on the same replicas.
//!
//! Proves: creation records metadata and is conditional (a colliding id is
//! retried, never overwritten); malformed ids and names are refused before
//! any replica is contacted; the sliding expiry writes only when less than
//! the threshold remains and never passes the lifetime cap; saves write only
//! changed fields, so concurrent updates of different fields and concurrent
//! cart adds all survive; typed helpers; oversized data is refused with
//! nothing stored; delete wins over a late touch or save; rotation kills the
//! old id and carries the data, and a cart change acknowledged on the old id
//! during a slow login too; the per-user index, "log out everywhere"
//! (also racing logins, and from a server whose clock is behind), the
//! per-user limit (sequential and concurrent logins, and a reader that sees
//! more tombstones the rest); fingerprint mismatches destroy the session;
//! CSRF tokens; replicas unreachable or wiped give an error, never `None`.

mod session_support;

use std::collections::BTreeSet;
use std::time::Duration;

use quorum_sessions::replica::faulty::Fault;
use quorum_sessions::session::keys::session_key;
use quorum_sessions::session::{
    ClientInfo, Csrf, FingerprintConfig, NewSession, SessionConfig, SessionError, SessionId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use session_support::{Cluster, MINUTE, START_MS};

fn none() -> ClientInfo {
    ClientInfo::default()
}

async fn cluster() -> Cluster {
    Cluster::new(SessionConfig::default()).await
}

#[tokio::test(start_paused = true)]
async fn create_records_metadata_and_get_returns_it() {
    let c = cluster().await;
    let client = ClientInfo::default()
        .ip("203.0.113.9")
        .user_agent("Firefox/120");
    let new = NewSession::for_user("alice")
        .role("admin")
        .data("theme", "dark")
        .client(client.clone());
    let created = c.store.create(new).await.unwrap();
    let text = created.id().to_string();
    assert_eq!(text.len(), 32);
    assert!(text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    c.advance_ms(MINUTE);
    let loaded = c.store.get(created.id(), &client).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("alice"));
    assert_eq!(loaded.role(), Some("admin"));
    assert_eq!(loaded.created_ms(), START_MS);
    assert_eq!(loaded.last_activity_ms(), START_MS);
    assert_eq!(loaded.client_ip(), Some("203.0.113.9"));
    assert_eq!(loaded.user_agent(), Some("Firefox/120"));
    assert_eq!(loaded.get("theme"), Some(&json!("dark")));
    assert_eq!(loaded.cap_ms(), START_MS + 24 * 60 * MINUTE);
    assert_eq!(loaded.expiry_ms(), START_MS + 30 * MINUTE);
}

#[tokio::test(start_paused = true)]
async fn unknown_and_expired_ids_are_none_not_errors() {
    let c = cluster().await;
    assert!(c
        .store
        .get(&SessionId::generate(), &none())
        .await
        .unwrap()
        .is_none());
    let session = c.store.create(NewSession::anonymous()).await.unwrap();
    c.advance_ms(31 * MINUTE);
    assert!(c.store.get(session.id(), &none()).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_colliding_id_is_retried_never_overwritten() {
    let c = cluster().await;
    let first = SessionId::from_random_bytes([1; 16]);
    let second = SessionId::from_random_bytes([2; 16]);
    let sequence = std::sync::Mutex::new(vec![second, first, first]);
    let store = c
        .store
        .clone()
        .with_id_generator(move || sequence.lock().unwrap().pop().unwrap_or(second));
    let a = store
        .create(NewSession::for_user("a").data("k", "a"))
        .await
        .unwrap();
    assert_eq!(*a.id(), first);
    let b = store
        .create(NewSession::for_user("b").data("k", "b"))
        .await
        .unwrap();
    assert_eq!(*b.id(), second, "the collision made a new id");
    let a_again = store.get(&first, &none()).await.unwrap().unwrap();
    assert_eq!(a_again.get("k"), Some(&json!("a")), "never overwritten");
    assert_eq!(a_again.user(), Some("a"));

    let stuck = c.store.clone().with_id_generator(move || first);
    match stuck.create(NewSession::anonymous()).await {
        Err(SessionError::IdCollisions { attempts }) => assert_eq!(attempts, 4),
        other => panic!("expected IdCollisions, got {other:?}"),
    }
    let a_still = c.store.get(&first, &none()).await.unwrap().unwrap();
    assert_eq!(a_still.get("k"), Some(&json!("a")));
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_before_any_replica_is_contacted() {
    let c = cluster().await;
    for handle in &c.handles {
        handle.down(); // any replica call would now fail as Unavailable
    }
    let before = c.store.coordinator().stats();
    for cookie in [
        "",
        "../../etc/passwd",
        "s:*",
        "0123456789ABCDEF0123456789ABCDEF",
        "01234567-89ab-4def-8123-456789abcdef",
        &"a".repeat(10_000),
    ] {
        assert!(SessionId::parse(cookie).is_err(), "{cookie:?}");
    }
    let bad_user = c.store.create(NewSession::for_user("bob\n")).await;
    assert!(
        matches!(bad_user, Err(SessionError::InvalidName { .. })),
        "{bad_user:?}"
    );
    let long_user = c.store.create(NewSession::for_user("x".repeat(1000))).await;
    assert!(matches!(long_user, Err(SessionError::InvalidName { .. })));
    let bad_key = c
        .store
        .create(NewSession::anonymous().data("a\u{0}", 1))
        .await;
    assert!(matches!(bad_key, Err(SessionError::InvalidName { .. })));
    let oversized = c
        .store
        .create(NewSession::anonymous().data("blob", "x".repeat(20_000)))
        .await;
    assert!(matches!(
        oversized,
        Err(SessionError::TooLarge { what: "value", .. })
    ));
    assert!(c.store.logout_all("").await.is_err());
    let after = c.store.coordinator().stats();
    assert_eq!(before, after, "no replica was asked");
}

#[tokio::test(start_paused = true)]
async fn sliding_expiry_writes_only_when_less_than_the_threshold_remains() {
    let c = cluster().await;
    let session = c.store.create(NewSession::anonymous()).await.unwrap();
    let id = *session.id();
    let writes = c.writes();
    for _ in 0..10 {
        c.advance_ms(MINUTE); // up to 10 min: 20 min remain, more than 15
        let loaded = c.store.get(&id, &none()).await.unwrap().unwrap();
        assert_eq!(loaded.expiry_ms(), START_MS + 30 * MINUTE);
    }
    assert_eq!(c.writes(), writes, "reads with time left write nothing");
    c.advance_ms(6 * MINUTE); // 16 min: 14 remain
    let loaded = c.store.get(&id, &none()).await.unwrap().unwrap();
    assert_eq!(c.writes(), writes + 1, "one extension");
    assert_eq!(loaded.expiry_ms(), c.now_ms() + 30 * MINUTE);
    assert_eq!(
        loaded.last_activity_ms(),
        c.now_ms(),
        "last activity rides on the extension"
    );
    let again = c.store.get(&id, &none()).await.unwrap().unwrap();
    assert_eq!(c.writes(), writes + 1, "the next read writes nothing");
    assert_eq!(again.last_activity_ms(), c.now_ms());
}

#[tokio::test(start_paused = true)]
async fn the_lifetime_cap_ends_even_an_active_session() {
    let c = cluster().await;
    let session = c.store.create(NewSession::anonymous()).await.unwrap();
    let cap = session.cap_ms();
    let mut last_seen = None;
    while c.now_ms() < cap + 20 * MINUTE {
        c.advance_ms(20 * MINUTE);
        match c.store.get(session.id(), &none()).await.unwrap() {
            Some(loaded) => {
                assert!(loaded.expiry_ms() <= cap, "never extended past the cap");
                last_seen = Some(c.now_ms());
            }
            None => break,
        }
    }
    assert!(
        c.now_ms() >= cap,
        "alive until the cap: ended at {}",
        c.now_ms()
    );
    assert!(
        last_seen.unwrap() >= cap - 20 * MINUTE,
        "kept alive by activity"
    );
    assert!(c.store.get(session.id(), &none()).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn concurrent_updates_of_different_fields_from_two_servers_both_survive() {
    let c = cluster().await;
    let other = c.server(2, 0).await;
    let session = c
        .store
        .create(NewSession::for_user("u").data("a", 0))
        .await
        .unwrap();
    let id = *session.id();
    for round in 1..=5 {
        let mut one = c.store.get(&id, &none()).await.unwrap().unwrap();
        let mut two = other.get(&id, &none()).await.unwrap().unwrap();
        one.set("theme", format!("theme-{round}")).unwrap();
        two.set("lang", format!("lang-{round}")).unwrap();
        let (r1, r2) = tokio::join!(c.store.save(&mut one), other.save(&mut two));
        r1.unwrap();
        r2.unwrap();
        let merged = c.store.get(&id, &none()).await.unwrap().unwrap();
        assert_eq!(merged.get("theme"), Some(&json!(format!("theme-{round}"))));
        assert_eq!(merged.get("lang"), Some(&json!(format!("lang-{round}"))));
        assert_eq!(
            merged.get("a"),
            Some(&json!(0)),
            "untouched fields untouched"
        );
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct CartLine {
    name: String,
    quantity: u32,
}

#[tokio::test(start_paused = true)]
async fn concurrent_cart_adds_of_different_items_all_survive() {
    let c = cluster().await;
    for handle in &c.handles {
        handle.set(Fault::DelayBetween {
            min: Duration::from_millis(1),
            max: Duration::from_millis(20),
        });
    }
    let servers = [c.store.clone(), c.server(2, 0).await, c.server(3, 0).await];
    let session = c
        .store
        .create(NewSession::for_user("shopper"))
        .await
        .unwrap();
    let id = *session.id();
    let adds = (0..12).map(|i| {
        let store = servers[i % 3].clone();
        async move {
            let mut loaded = store.get(&id, &none()).await.unwrap().unwrap();
            let line = CartLine {
                name: format!("product {i}"),
                quantity: i as u32 + 1,
            };
            loaded
                .add_item_as("cart", &format!("sku-{i}"), &line)
                .unwrap();
            store.save(&mut loaded).await.unwrap();
        }
    });
    futures::future::join_all(adds).await;
    let loaded = c.store.get(&id, &none()).await.unwrap().unwrap();
    assert_eq!(
        loaded.items("cart").len(),
        12,
        "every concurrent add survived"
    );
    let line: CartLine = loaded.item_as("cart", "sku-7").unwrap().unwrap();
    assert_eq!(line.quantity, 8);
    let mut removing = loaded;
    assert!(removing.remove_item("cart", "sku-3"));
    assert!(!removing.remove_item("cart", "sku-3"));
    c.store.save(&mut removing).await.unwrap();
    let loaded = c.store.get(&id, &none()).await.unwrap().unwrap();
    assert_eq!(loaded.items("cart").len(), 11);
    assert!(!loaded.items("cart").contains_key("sku-3"));
    let mut clearing = loaded;
    assert_eq!(clearing.clear_items("cart"), 11);
    c.store.save(&mut clearing).await.unwrap();
    let cleared = c.store.get(&id, &none()).await.unwrap().unwrap();
    assert!(cleared.items("cart").is_empty());
}

#[tokio::test(start_paused = true)]
async fn typed_helpers_round_trip_and_report_type_errors() {
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Prefs {
        theme: String,
        font_size: u8,
    }
    let c = cluster().await;
    let mut session = c.store.create(NewSession::anonymous()).await.unwrap();
    let prefs = Prefs {
        theme: "dark".into(),
        font_size: 14,
    };
    session.set_as("prefs", &prefs).unwrap();
    c.store.save(&mut session).await.unwrap();
    let loaded = c.store.get(session.id(), &none()).await.unwrap().unwrap();
    assert_eq!(loaded.get_as::<Prefs>("prefs").unwrap(), Some(prefs));
    assert_eq!(loaded.get_as::<Prefs>("missing").unwrap(), None);
    assert!(matches!(
        loaded.get_as::<u32>("prefs"),
        Err(SessionError::Json(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn oversized_data_is_a_typed_error_and_nothing_is_stored() {
    let config = SessionConfig {
        max_value_bytes: 1024,
        max_session_bytes: 4096,
        max_fields: 10,
        ..SessionConfig::default()
    };
    let c = Cluster::new(config).await;
    let mut session = c
        .store
        .create(NewSession::anonymous().data("keep", 1))
        .await
        .unwrap();
    session.set("big", "x".repeat(2000)).unwrap();
    let error = c.store.save(&mut session).await.unwrap_err();
    assert!(
        matches!(error, SessionError::TooLarge { what: "value", size, limit: 1024 } if size > 1024)
    );
    session.remove("big");
    for i in 0..5 {
        session.set(&format!("chunk{i}"), "y".repeat(900)).unwrap();
    }
    let error = c.store.save(&mut session).await.unwrap_err();
    assert!(
        matches!(
            error,
            SessionError::TooLarge {
                what: "session",
                ..
            }
        ),
        "{error:?}"
    );
    let mut many = c.store.get(session.id(), &none()).await.unwrap().unwrap();
    for i in 0..10 {
        many.add_item("cart", &format!("i{i}"), i).unwrap();
    }
    assert!(matches!(
        c.store.save(&mut many).await,
        Err(SessionError::TooManyFields {
            count: 11,
            limit: 10
        })
    ));
    let stored = c.store.get(session.id(), &none()).await.unwrap().unwrap();
    assert_eq!(
        stored.data().len(),
        1,
        "nothing of the refused saves was stored"
    );
    assert!(stored.items("cart").is_empty());
}

#[tokio::test(start_paused = true)]
async fn delete_wins_over_a_late_touch_or_save_from_another_server() {
    let c = cluster().await;
    let other = c.server(2, 0).await;
    let session = c.store.create(NewSession::for_user("u")).await.unwrap();
    let id = *session.id();
    c.advance_ms(16 * MINUTE); // the next read extends
    let mut held_elsewhere = other.get(&id, &none()).await.unwrap().unwrap();
    held_elsewhere.set("late", true).unwrap();
    c.store.delete(&session).await.unwrap();
    assert!(matches!(
        other.save(&mut held_elsewhere).await,
        Err(SessionError::Gone)
    ));
    c.advance_ms(10 * MINUTE); // a touch is due again
    assert!(
        other.get(&id, &none()).await.unwrap().is_none(),
        "the touch did not revive it"
    );
    for node in &c.nodes {
        let record = node.inner().get(&session_key(&id)).unwrap();
        assert!(record.is_tombstone(), "tombstone on {}", node.inner().len());
        assert!(record.fields.is_empty(), "a tombstone holds no data");
        assert_eq!(
            record.effective_expiry_ms(),
            session.cap_ms(),
            "grace = lifetime cap"
        );
    }
    assert!(c.store.user_sessions("u").await.unwrap().is_empty());
}

/// An anonymous session with `theme: dark` and `items` in its cart, saved.
async fn anonymous_with_cart(
    c: &Cluster,
    items: &[(&str, serde_json::Value)],
) -> quorum_sessions::session::Session {
    let mut anonymous = c
        .store
        .create(NewSession::anonymous().data("theme", "dark"))
        .await
        .unwrap();
    for (item, value) in items {
        anonymous.add_item("cart", item, value.clone()).unwrap();
    }
    c.store.save(&mut anonymous).await.unwrap();
    anonymous
}

/// B6: a cart change acknowledged on the old id while the login request was
/// busy (after it loaded the session, before the rotation) is carried to the
/// new id: added items and keys, and removals too.
#[tokio::test(start_paused = true)]
async fn a_cart_change_acknowledged_during_a_slow_login_survives_the_rotation() {
    let c = cluster().await;
    let other = c.server(2, 0).await;
    let anonymous = anonymous_with_cart(&c, &[("sku-1", json!(1)), ("sku-2", json!(1))]).await;

    let login = async {
        let mut loaded = c.store.get(anonymous.id(), &none()).await.unwrap().unwrap();
        loaded.set("lang", "fr").unwrap(); // the login request's own change
        tokio::time::sleep(Duration::from_millis(300)).await; // argon2
        c.store
            .regenerate_as(&loaded, "dave", Some("user"))
            .await
            .unwrap()
    };
    let cart = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut old = other.get(anonymous.id(), &none()).await.unwrap().unwrap();
        old.add_item("cart", "sku-3", json!({"qty": 5})).unwrap();
        old.remove_item("cart", "sku-2");
        old.set("coupon", "SPRING").unwrap();
        other
            .save(&mut old)
            .await
            .expect("acknowledged on the old id");
    };
    let (logged_in, ()) = tokio::join!(login, cart);
    let loaded = other.get(logged_in.id(), &none()).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("dave"));
    assert_eq!(loaded.get("theme"), Some(&json!("dark")));
    assert_eq!(loaded.get("lang"), Some(&json!("fr")));
    assert_eq!(
        loaded.items("cart").get("sku-3"),
        Some(&json!({"qty": 5})),
        "the acknowledged cart add survives the rotation"
    );
    assert_eq!(loaded.get("coupon"), Some(&json!("SPRING")));
    assert_eq!(loaded.items("cart").get("sku-2"), None, "the removal too");
    assert_eq!(loaded.items("cart").get("sku-1"), Some(&json!(1)));
    assert_eq!(
        logged_in.items("cart"),
        loaded.items("cart"),
        "returned as stored"
    );
    assert!(c
        .store
        .get(anonymous.id(), &none())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn regenerate_kills_the_old_id_and_carries_the_data() {
    let c = cluster().await;
    let other = c.server(2, 0).await;
    let anonymous = anonymous_with_cart(&c, &[("sku-1", json!({"qty": 2}))]).await;
    let mut old_elsewhere = other.get(anonymous.id(), &none()).await.unwrap().unwrap();

    let logged_in = c
        .store
        .regenerate_as(&anonymous, "carol", Some("user"))
        .await
        .unwrap();
    assert_ne!(logged_in.id(), anonymous.id());
    assert!(
        c.store
            .get(anonymous.id(), &none())
            .await
            .unwrap()
            .is_none(),
        "old id dead"
    );
    old_elsewhere.set("x", 1).unwrap();
    assert!(matches!(
        other.save(&mut old_elsewhere).await,
        Err(SessionError::Gone)
    ));
    let loaded = other.get(logged_in.id(), &none()).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("carol"));
    assert_eq!(loaded.get("theme"), Some(&json!("dark")));
    assert_eq!(loaded.items("cart")["sku-1"], json!({"qty": 2}));

    c.advance_ms(MINUTE);
    let rotated = c.store.regenerate(&loaded).await.unwrap();
    assert_eq!(
        rotated.created_ms(),
        loaded.created_ms(),
        "creation time kept"
    );
    assert_eq!(
        rotated.cap_ms(),
        loaded.cap_ms(),
        "rotation never extends the cap"
    );
    assert!(c.store.get(loaded.id(), &none()).await.unwrap().is_none());
    let listed: Vec<SessionId> = c
        .store
        .user_sessions("carol")
        .await
        .unwrap()
        .iter()
        .map(|s| *s.id())
        .collect();
    assert_eq!(
        listed,
        vec![*rotated.id()],
        "the index lists the new id only"
    );
}

#[tokio::test(start_paused = true)]
async fn the_user_index_lists_sessions_newest_first() {
    let c = cluster().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(
            *c.store
                .create(NewSession::for_user("dave"))
                .await
                .unwrap()
                .id(),
        );
        c.advance_ms(1_000);
    }
    c.store.create(NewSession::for_user("erin")).await.unwrap();
    let listed: Vec<SessionId> = c
        .store
        .user_sessions("dave")
        .await
        .unwrap()
        .iter()
        .map(|s| *s.id())
        .collect();
    created.reverse();
    assert_eq!(listed, created);
    // An idle-expired session drops out of the listing.
    c.advance_ms(31 * MINUTE);
    assert!(c.store.user_sessions("dave").await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn logout_all_revokes_every_session_and_a_later_login_survives_even_with_a_slow_clock() {
    let c = cluster().await;
    let behind = c.server(2, -5_000).await; // its wall clock is 5 s behind
    let a = c.store.create(NewSession::for_user("frank")).await.unwrap();
    let b = behind.create(NewSession::for_user("frank")).await.unwrap();
    let bystander = c.store.create(NewSession::for_user("grace")).await.unwrap();
    assert_eq!(c.store.logout_all("frank").await.unwrap(), 2);
    for id in [a.id(), b.id()] {
        assert!(c.store.get(id, &none()).await.unwrap().is_none());
        assert!(c
            .store
            .coordinator()
            .read(&session_key(id))
            .await
            .unwrap()
            .is_none());
    }
    assert!(c
        .store
        .get(bystander.id(), &none())
        .await
        .unwrap()
        .is_some());
    // A login right after, on the server whose clock is behind: its stamp is
    // above the revocation because it read the index first.
    let again = behind.create(NewSession::for_user("frank")).await.unwrap();
    assert!(c.store.get(again.id(), &none()).await.unwrap().is_some());
    assert_eq!(c.store.user_sessions("frank").await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_login_racing_logout_all_never_survives_it() {
    let c = cluster().await;
    let other = c.server(2, 0).await;
    for handle in &c.handles {
        handle.set(Fault::DelayBetween {
            min: Duration::from_millis(0),
            max: Duration::from_millis(15),
        });
    }
    let (mut revoked_logins, mut tombstoned_logins, mut surviving_logins) = (0, 0, 0);
    for round in 0..40u64 {
        let user = format!("racer{round}");
        // The logout-all starts at every point of the login's progress.
        let pause = Duration::from_millis(round * 2);
        let login = other.create(NewSession::for_user(user.clone()));
        let logout = async {
            tokio::time::sleep(pause).await;
            c.store.logout_all(&user).await
        };
        let (login, logout) = tokio::join!(login, logout);
        logout.unwrap();
        let index = c
            .store
            .coordinator()
            .read(&quorum_sessions::session::keys::index_key(&user))
            .await
            .unwrap()
            .unwrap();
        let revoked_at = index.fields["revoked"].stamp;
        match login {
            Err(SessionError::Revoked) => revoked_logins += 1,
            Err(other) => panic!("round {round}: {other:?}"),
            Ok(session) => {
                let stored = c
                    .store
                    .coordinator()
                    .read(&session_key(session.id()))
                    .await
                    .unwrap();
                let served = c.store.get(session.id(), &none()).await.unwrap();
                if session.creation_stamp() < revoked_at {
                    assert!(stored.is_none(), "round {round}: revoked login left alive");
                    assert!(served.is_none());
                    tombstoned_logins += 1;
                } else {
                    assert!(served.is_some(), "round {round}: a later login was lost");
                    surviving_logins += 1;
                }
            }
        }
    }
    eprintln!("race: {revoked_logins} logins saw the revocation, {tombstoned_logins} were tombstoned by it, {surviving_logins} came after it");
    assert!(
        revoked_logins + tombstoned_logins > 0,
        "the race was exercised"
    );
    assert!(surviving_logins > 0, "later logins survive");
}

#[tokio::test(start_paused = true)]
async fn the_per_user_limit_keeps_the_newest_sessions() {
    let config = SessionConfig {
        max_sessions_per_user: Some(2),
        ..SessionConfig::default()
    };
    let c = Cluster::new(config.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            *c.store
                .create(NewSession::for_user("hank"))
                .await
                .unwrap()
                .id(),
        );
        c.advance_ms(1_000);
    }
    let alive: Vec<bool> = futures::future::join_all(
        ids.iter()
            .map(|id| async { c.store.get(id, &none()).await.unwrap().is_some() }),
    )
    .await;
    assert_eq!(alive, vec![false, false, true, true]);
    for id in &ids[..2] {
        assert!(
            c.store
                .coordinator()
                .read(&session_key(id))
                .await
                .unwrap()
                .is_none(),
            "tombstoned"
        );
    }
    // Idle-expired newer sessions do not count: the login prunes them.
    c.advance_ms(31 * MINUTE);
    let a = c.store.create(NewSession::for_user("hank")).await.unwrap();
    c.advance_ms(1_000);
    let b = c.store.create(NewSession::for_user("hank")).await.unwrap();
    assert!(c.store.get(a.id(), &none()).await.unwrap().is_some());
    assert!(c.store.get(b.id(), &none()).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn concurrent_logins_never_leave_more_than_the_limit() {
    let config = SessionConfig {
        max_sessions_per_user: Some(1),
        ..SessionConfig::default()
    };
    let c = Cluster::new(config).await;
    for handle in &c.handles {
        handle.set(Fault::DelayBetween {
            min: Duration::from_millis(0),
            max: Duration::from_millis(10),
        });
    }
    let servers = [c.store.clone(), c.server(2, 0).await, c.server(3, 0).await];
    for round in 0..10 {
        let user = format!("ivy{round}");
        let logins = servers
            .iter()
            .map(|s| s.create(NewSession::for_user(user.clone())));
        let created: Vec<_> = futures::future::join_all(logins).await;
        let mut alive = 0;
        for session in created {
            let session = session.unwrap();
            if c.store.get(session.id(), &none()).await.unwrap().is_some() {
                alive += 1;
            }
        }
        assert_eq!(alive, 1, "round {round}: exactly the newest survives");
    }
}

#[tokio::test(start_paused = true)]
async fn any_reader_that_sees_more_than_the_limit_tombstones_the_rest() {
    let unlimited = SessionConfig {
        max_sessions_per_user: None,
        ..SessionConfig::default()
    };
    let c = Cluster::new(unlimited).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            *c.store
                .create(NewSession::for_user("jo"))
                .await
                .unwrap()
                .id(),
        );
        c.advance_ms(1_000);
    }
    // Another app server configured with a limit of 2 reads the oldest.
    let mut limited = c.config.clone();
    limited.max_sessions_per_user = Some(2);
    let reader = c.server_with(2, &limited).await;
    assert!(reader.get(&ids[0], &none()).await.unwrap().is_none());
    assert!(
        c.store
            .coordinator()
            .read(&session_key(&ids[0]))
            .await
            .unwrap()
            .is_none(),
        "tombstoned"
    );
    assert!(reader.get(&ids[1], &none()).await.unwrap().is_some());
    assert!(reader.get(&ids[2], &none()).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_fingerprint_mismatch_destroys_the_session_and_is_reported() {
    let config = SessionConfig {
        fingerprint: Some(FingerprintConfig::default()),
        ..SessionConfig::default()
    };
    let c = Cluster::new(config).await;
    let owner = ClientInfo::default()
        .user_agent("Firefox/120")
        .accept_language("fr")
        .ip("198.51.100.1");
    let session = c
        .store
        .create(NewSession::for_user("kim").client(owner.clone()))
        .await
        .unwrap();
    let moved = owner.clone().ip("198.51.100.2"); // IP not bound by default
    assert!(c.store.get(session.id(), &moved).await.unwrap().is_some());
    let thief = owner.clone().user_agent("curl/8.5");
    assert!(matches!(
        c.store.get(session.id(), &thief).await,
        Err(SessionError::FingerprintMismatch)
    ));
    assert!(
        c.store.get(session.id(), &owner).await.unwrap().is_none(),
        "destroyed"
    );
    assert!(c.store.user_sessions("kim").await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn csrf_tokens_are_bound_to_the_session_and_die_with_rotation() {
    let c = cluster().await;
    let csrf = Csrf::new(b"0123456789abcdef0123456789abcdef").unwrap();
    let session = c.store.create(NewSession::for_user("lee")).await.unwrap();
    let token = csrf.token(session.id());
    assert!(csrf.verify(session.id(), &token));
    let rotated = c.store.regenerate(&session).await.unwrap();
    assert!(
        !csrf.verify(rotated.id(), &token),
        "a rotated id needs a new token"
    );
    assert!(csrf.verify(rotated.id(), &csrf.token(rotated.id())));
    let forged: String = token.chars().rev().collect();
    assert!(!csrf.verify(session.id(), &forged));
}

#[tokio::test(start_paused = true)]
async fn unreachable_or_wiped_replicas_are_an_error_never_none() {
    let c = cluster().await;
    let session = c.store.create(NewSession::for_user("max")).await.unwrap();
    let id = *session.id();
    c.handles[1].down();
    assert!(
        c.store.get(&id, &none()).await.unwrap().is_some(),
        "one of three down is fine"
    );
    c.handles[2].hang();
    let read = c.store.get(&id, &none()).await;
    assert!(matches!(&read, Err(e) if e.is_unavailable()), "{read:?}");
    let write = c.store.create(NewSession::anonymous()).await;
    assert!(matches!(&write, Err(e) if e.is_unavailable()), "{write:?}");
    let logout = c.store.logout_all("max").await;
    assert!(
        matches!(&logout, Err(e) if e.is_unavailable()),
        "{logout:?}"
    );
    for handle in &c.handles {
        handle.heal();
    }
    // Every replica restarts empty: nothing proves the session absent.
    for handle in &c.handles {
        handle.wipe().await.unwrap();
    }
    let read = c.store.get(&id, &none()).await;
    assert!(
        matches!(&read, Err(e) if e.is_unavailable()),
        "wiped replicas read as {read:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn admin_listing_and_stats_stream_one_healthy_replica() {
    let c = cluster().await;
    let mut expected = BTreeSet::new();
    for (user, role) in [
        ("u1", "user"),
        ("u1", "user"),
        ("u2", "admin"),
        ("u3", "user"),
    ] {
        let session = c
            .store
            .create(NewSession::for_user(user).role(role))
            .await
            .unwrap();
        expected.insert(*session.id());
        c.advance_ms(MINUTE);
    }
    let anonymous = c.store.create(NewSession::anonymous()).await.unwrap();
    expected.insert(*anonymous.id());
    let dead = c.store.create(NewSession::for_user("u4")).await.unwrap();
    c.store.delete(&dead).await.unwrap();
    c.handles[0].down(); // the listing moves to a healthy replica
    for _ in 0..3 {
        let _ = c.store.coordinator().read("s:{probe}").await; // mark r0 down
    }
    let (mut listed, mut cursor, mut pages) = (BTreeSet::new(), None, 0);
    loop {
        let page = c.store.admin_page(cursor.as_ref(), 2).await.unwrap();
        assert_ne!(page.replica, "r0");
        listed.extend(page.sessions.iter().map(|s| s.id));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(listed, expected, "live sessions only, tombstones skipped");
    assert!(pages > 3, "paged");
    let stats = c.store.admin_stats().await.unwrap();
    assert_eq!(stats.active_sessions, 5);
    assert_eq!(stats.unique_users, 3);
    assert!(!stats.unique_users_approximate);
    assert_eq!(stats.sessions_by_role["user"], 3);
    assert_eq!(stats.sessions_by_role["admin"], 1);
    assert_eq!(stats.sessions_by_role["(none)"], 1);
    assert_eq!(stats.oldest_age_ms, Some(4 * MINUTE));
    assert_eq!(stats.newest_age_ms, Some(0));
    for handle in &c.handles {
        handle.down();
    }
    for _ in 0..3 {
        let _ = c.store.coordinator().read("s:{probe}").await;
    }
    assert!(c.store.admin_stats().await.unwrap_err().is_unavailable());
}
