//! The tower-sessions adapter (feature `tower`) against the same behaviour
//! as the native API, on three in-memory replicas (W = R = 2), plus a round
//! trip through the real tower-sessions middleware in an axum router.
//!
//! Proves: create gives a canonical id (tower's `Id` is the same 128 bits)
//! and never overwrites; load/save round-trip; a save writes only the keys
//! that changed since *that request's* load (the base travels in the
//! request's `Record`), so a key another request wrote after the load
//! survives, and many concurrent requests on two app servers each adding
//! its own key all survive; the reserved key is refused and a cleared map is
//! a reset; a removed key is removed; expiry only grows; a deleted session is
//! never revived by a late save; foreign ids load as `None`; unreachable
//! replicas are an error, never `None`; oversized data is an encode error
//! with nothing stored; the middleware sets and reads a value across two
//! requests.
#![cfg(feature = "tower")]

mod session_support;

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use quorum_sessions::session::keys::session_key;
use quorum_sessions::session::tower::{session_id, tower_id, TowerSessionStore, TOWER_BASE_KEY};
use quorum_sessions::session::{ClientInfo, NewSession, SessionConfig};
use serde_json::{json, Value};
use session_support::Cluster;
use time::OffsetDateTime;
use tower::ServiceExt;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::{session_store, SessionStore as _};

async fn cluster() -> Cluster {
    cluster_with(SessionConfig::default()).await
}

async fn cluster_with(config: SessionConfig) -> Cluster {
    let c = Cluster::new(config).await;
    // tower-sessions reads the system clock: run the replicas' clock on it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.clock.store(now, std::sync::atomic::Ordering::SeqCst);
    c
}

fn record(data: &[(&str, Value)], minutes: i64) -> Record {
    Record {
        id: Id::default(),
        data: data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::minutes(minutes),
    }
}

/// The session of a tower id through the native API of the first server.
async fn native(c: &Cluster, id: &Id) -> quorum_sessions::session::Session {
    let id = session_id(id).unwrap();
    c.store
        .get(&id, &ClientInfo::default())
        .await
        .unwrap()
        .unwrap()
}

/// The user's keys of a record (without the adapter's reserved entry).
fn user_data(record: &Record) -> HashMap<String, Value> {
    let mut data = record.data.clone();
    assert!(
        data.remove(TOWER_BASE_KEY).is_some(),
        "the adapter's entry is there"
    );
    data
}

#[tokio::test(start_paused = true)]
async fn create_load_save_delete_round_trip() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let mut created = record(&[("theme", json!("dark"))], 30);
    let proposed = created.id;
    store.create(&mut created).await.unwrap();
    assert_ne!(created.id, proposed, "the store makes its own ids");
    let id = session_id(&created.id).expect("a canonical session id");
    assert_eq!(tower_id(&id), created.id);
    let native = c
        .store
        .get(&id, &ClientInfo::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        native.get("theme"),
        Some(&json!("dark")),
        "the same session natively"
    );

    let mut loaded = store.load(&created.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["theme"], json!("dark"));
    loaded.data.insert("lang".into(), json!("fr"));
    loaded.data.remove("theme");
    store.save(&loaded).await.unwrap();
    let again = store.load(&created.id).await.unwrap().unwrap();
    assert_eq!(
        user_data(&again),
        HashMap::from([("lang".to_owned(), json!("fr"))])
    );

    store.delete(&created.id).await.unwrap();
    assert!(store.load(&created.id).await.unwrap().is_none());
    store.save(&again).await.unwrap(); // a late save after the logout
    assert!(
        store.load(&created.id).await.unwrap().is_none(),
        "never revived"
    );
    let raw = c.store.coordinator().read(&session_key(&id)).await.unwrap();
    assert!(raw.is_none());
}

#[tokio::test(start_paused = true)]
async fn saves_from_two_servers_of_different_keys_both_survive() {
    let c = cluster().await;
    let one = TowerSessionStore::new(c.store.clone());
    let two = TowerSessionStore::new(c.server(2, 0).await);
    let mut created = record(&[("a", json!(0))], 30);
    one.create(&mut created).await.unwrap();
    for round in 1..=5 {
        let mut first = one.load(&created.id).await.unwrap().unwrap();
        let mut second = two.load(&created.id).await.unwrap().unwrap();
        first.data.insert("theme".into(), json!(round));
        second
            .data
            .insert(format!("cart:{round}"), json!({"qty": round}));
        let (r1, r2) = tokio::join!(one.save(&first), two.save(&second));
        r1.unwrap();
        r2.unwrap();
        let merged = one.load(&created.id).await.unwrap().unwrap();
        assert_eq!(merged.data["theme"], json!(round));
        assert_eq!(merged.data["a"], json!(0));
        assert_eq!(
            user_data(&merged).len(),
            2 + round as usize,
            "every cart key kept"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_save_on_another_server_writes_only_the_diff_against_what_was_loaded() {
    let c = cluster().await;
    let writer = TowerSessionStore::new(c.store.clone());
    let mut created = record(&[("a", json!(1)), ("b", json!(2))], 30);
    writer.create(&mut created).await.unwrap();
    // Another server changes `b` natively.
    let id = session_id(&created.id).unwrap();
    let other = c.server(2, 0).await;
    let mut native = other
        .get(&id, &ClientInfo::default())
        .await
        .unwrap()
        .unwrap();
    native.set("b", 20).unwrap();
    other.save(&mut native).await.unwrap();
    // Another adapter saves the created map, changing `a` (and `b` to the
    // value it already has).
    let fresh = TowerSessionStore::new(c.server(3, 0).await);
    let mut stale = created.clone();
    stale.data.insert("a".into(), json!(10));
    stale.data.insert("b".into(), json!(20));
    fresh.save(&stale).await.unwrap();
    let loaded = writer.load(&created.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["a"], json!(10));
    assert_eq!(loaded.data["b"], json!(20));
}

#[tokio::test(start_paused = true)]
async fn the_reserved_key_is_refused_and_a_cleared_map_is_a_reset() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let mut created = record(&[("a", json!(1)), ("b", json!(2))], 30);
    store.create(&mut created).await.unwrap();
    let loaded = store.load(&created.id).await.unwrap().unwrap();

    let mut forged = loaded.clone();
    forged.data.insert(TOWER_BASE_KEY.into(), json!("mine"));
    assert!(matches!(
        store.save(&forged).await,
        Err(session_store::Error::Encode(_))
    ));
    let mut clash = record(&[(TOWER_BASE_KEY, json!(1))], 30);
    assert!(matches!(
        store.create(&mut clash).await,
        Err(session_store::Error::Encode(_))
    ));
    let mut native = native(&c, &created.id).await;
    assert!(
        native.set(TOWER_BASE_KEY, 1).is_err(),
        "refused natively too"
    );
    native.set("c", 3).unwrap();
    c.store.save(&mut native).await.unwrap();

    // `Session::clear` drops the entry with the rest: the map replaces the data.
    let mut cleared = loaded.clone();
    cleared.data.clear();
    cleared.data.insert("z".into(), json!(26));
    store.save(&cleared).await.unwrap();
    let after = store.load(&created.id).await.unwrap().unwrap();
    assert_eq!(
        user_data(&after),
        HashMap::from([("z".to_owned(), json!(26))])
    );
}

#[tokio::test(start_paused = true)]
async fn expiry_only_grows_and_stays_under_the_cap() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let mut created = record(&[], 60);
    store.create(&mut created).await.unwrap();
    let first = store.load(&created.id).await.unwrap().unwrap().expiry_date;
    let mut earlier = created.clone();
    earlier.expiry_date = OffsetDateTime::now_utc() + time::Duration::minutes(5);
    earlier.data.insert("x".into(), json!(1));
    store.save(&earlier).await.unwrap();
    let after = store.load(&created.id).await.unwrap().unwrap().expiry_date;
    assert_eq!(
        after, first,
        "an earlier expiry does not shorten the session"
    );
    let mut far = created.clone();
    far.expiry_date = OffsetDateTime::now_utc() + time::Duration::days(30);
    store.save(&far).await.unwrap();
    let capped = store.load(&created.id).await.unwrap().unwrap().expiry_date;
    let cap = OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!(
        capped > after && capped <= cap,
        "grew, but only to the lifetime cap"
    );
}

#[tokio::test(start_paused = true)]
async fn foreign_ids_are_none_unavailable_is_an_error_oversized_is_refused() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    assert!(store.load(&Id(0)).await.unwrap().is_none());
    assert!(store.load(&Id(-42)).await.unwrap().is_none());
    store.delete(&Id(7)).await.unwrap();

    let mut big = record(&[("blob", json!("x".repeat(20_000)))], 30);
    assert!(matches!(
        store.create(&mut big).await,
        Err(session_store::Error::Encode(_))
    ));
    let mut created = record(&[("k", json!(1))], 30);
    store.create(&mut created).await.unwrap();
    let mut too_big = created.clone();
    too_big
        .data
        .insert("blob".into(), json!("x".repeat(20_000)));
    assert!(matches!(
        store.save(&too_big).await,
        Err(session_store::Error::Encode(_))
    ));
    assert_eq!(
        user_data(&store.load(&created.id).await.unwrap().unwrap()).len(),
        1
    );

    c.handles[0].down();
    c.handles[1].down();
    let load = store.load(&created.id).await;
    assert!(
        matches!(load, Err(session_store::Error::Backend(_))),
        "{load:?}"
    );
    let mut new = record(&[], 30);
    assert!(store.create(&mut new).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn native_sessions_and_tower_ids_agree() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let native = c
        .store
        .create(NewSession::anonymous().data("n", 1))
        .await
        .unwrap();
    let loaded = store.load(&tower_id(native.id())).await.unwrap().unwrap();
    assert_eq!(loaded.data["n"], json!(1));
}

#[tokio::test(start_paused = true)]
async fn the_tower_sessions_middleware_round_trips_through_the_store() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let app = Router::new()
        .route(
            "/set",
            get(|session: tower_sessions::Session| async move {
                session.insert("visits", 1u32).await.unwrap();
                "set"
            }),
        )
        .route(
            "/get",
            get(|session: tower_sessions::Session| async move {
                let visits: Option<u32> = session.get("visits").await.unwrap();
                format!("{visits:?}")
            }),
        )
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(true));
    let response = app
        .clone()
        .oneshot(Request::get("/set").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let response = app
        .oneshot(
            Request::get("/get")
                .header(header::COOKIE, pair)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], b"Some(1)");
}

/// B1's reproduction: the adapter's state is lost between the load and the
/// save (on the old code: a one-entry cache evicted by another session), and
/// a key another request wrote meanwhile must survive the save.
#[tokio::test(start_paused = true)]
async fn a_save_keeps_a_key_written_by_another_request_after_the_load() {
    let c = cluster().await;
    let store = TowerSessionStore::new(c.store.clone());
    let mut a = record(&[("theme", json!("dark"))], 30);
    store.create(&mut a).await.unwrap();
    let mut b = record(&[("theme", json!("light"))], 30);
    store.create(&mut b).await.unwrap();

    let mut loaded_a = store.load(&a.id).await.unwrap().unwrap();
    // Loading B evicted A from the old code's one-entry cache.
    store.load(&b.id).await.unwrap().unwrap();
    // Another request adds a cart key on A, natively, and is acknowledged.
    let mut native = native(&c, &a.id).await;
    native.set("cart", json!(["book"])).unwrap();
    c.store.save(&mut native).await.unwrap();

    loaded_a.data.insert("lang".into(), json!("fr"));
    store.save(&loaded_a).await.unwrap();
    let after = store.load(&a.id).await.unwrap().unwrap();
    assert_eq!(after.data.get("lang"), Some(&json!("fr")));
    assert_eq!(after.data.get("theme"), Some(&json!("dark")));
    assert_eq!(
        after.data.get("cart"),
        Some(&json!(["book"])),
        "the other request's acknowledged key survives the save"
    );
}

/// B1 at the HTTP level: two app servers (two adapters, each with its own
/// coordinator, over the same replicas), a one-entry cache on the old code,
/// several sessions, and many concurrent requests per session, each adding
/// its own key after a random pause between its load and its save. Every
/// acknowledged key is there at the end.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_on_two_servers_keep_every_acknowledged_key() {
    use rand::{Rng, SeedableRng};

    let config = SessionConfig::default();
    let c = cluster_with(config.clone()).await;
    let app = |store: TowerSessionStore| {
        Router::new()
            .route(
                "/start",
                get(|session: tower_sessions::Session| async move {
                    session.insert("start", true).await.unwrap();
                    "started"
                }),
            )
            .route(
                "/add/{key}/{pause}",
                get(
                    |session: tower_sessions::Session,
                     axum::extract::Path((key, pause)): axum::extract::Path<(String, u64)>| async move {
                        // Load first, then pause (the app's work), then change one key.
                        let _: Option<bool> = session.get("start").await.unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                        session.insert(&key, 1u32).await.unwrap();
                        "added"
                    },
                ),
            )
            .layer(tower_sessions::SessionManagerLayer::new(store))
    };
    let servers = [
        app(TowerSessionStore::new(c.store.clone())),
        app(TowerSessionStore::new(c.server_with(2, &config).await)),
    ];
    let mut cookies = Vec::new();
    for _ in 0..4 {
        let response = servers[0]
            .clone()
            .oneshot(Request::get("/start").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        cookies.push(cookie.split(';').next().unwrap().to_owned());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut requests = Vec::new();
    for n in 0..80 {
        let session = rng.random_range(0..cookies.len());
        let server = servers[rng.random_range(0..2)].clone();
        let pause = rng.random_range(0..20u64);
        let key = format!("k{n}");
        let request = Request::get(format!("/add/{key}/{pause}"))
            .header(header::COOKIE, cookies[session].clone())
            .body(Body::empty())
            .unwrap();
        requests.push(async move {
            let response = server.oneshot(request).await.unwrap();
            (session, key, response.status())
        });
    }
    let results = futures::future::join_all(requests).await;
    let check = TowerSessionStore::new(c.store.clone());
    let mut lost = Vec::new();
    let mut acknowledged = 0;
    for (session, key, status) in results {
        if status != StatusCode::OK {
            continue;
        }
        acknowledged += 1;
        let id = cookies[session].split_once('=').unwrap().1;
        let id: Id = id.parse().unwrap();
        let record = check.load(&id).await.unwrap().unwrap();
        if !record.data.contains_key(&key) {
            lost.push(key);
        }
    }
    assert_eq!(acknowledged, 80, "every request succeeds");
    assert!(lost.is_empty(), "acknowledged keys lost: {lost:?}");
}

/// The crate's landing page shows `examples/quickstart.rs` (which CI
/// builds): proves the two have not drifted apart.
#[test]
fn the_landing_page_example_is_the_quickstart_file() {
    let example = include_str!("../examples/quickstart.rs");
    let code = &example[example.find("use axum").expect("example code")..];
    let lib = include_str!("../src/lib.rs");
    let doc: String = lib
        .lines()
        .skip_while(|line| !line.starts_with("//! use axum"))
        .take_while(|line| *line != "//! ```")
        .map(|line| {
            format!(
                "{}\n",
                line.strip_prefix("//! ")
                    .unwrap_or(line.trim_start_matches("//!"))
            )
        })
        .collect();
    assert_eq!(doc.trim_end(), code.trim_end());
}
