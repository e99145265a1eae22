//! End-to-end: the example app (`examples/app/routes.rs`, the router of
//! `cargo run --example app`) served over real HTTP on 127.0.0.1, on three
//! real Redis servers (testcontainers), one `RedisReplica` per node, a
//! `Coordinator` with N = 3, W = 2, R = 2 — while Redis nodes die.
//!
//! What it proves, through the HTTP interface only (each point asserted):
//!
//! 1. A user logged in on two devices (two cookie jars, two user agents,
//!    each sending its CSRF token on every mutating request) **stays logged
//!    in through a SIGKILL of one Redis node and, once it is back, an empty
//!    restart of another**: every request of the whole run — before, during
//!    and after each fault — answers 200. No "not logged in" (401), and no
//!    503 either: at any instant at most one of the three nodes is missing,
//!    so W = 2 acknowledgements and R = 2 answers are always reachable (a
//!    dead node fails fast or times out after 300 ms and the read falls
//!    through, or hedges after 50 ms, to the third node), and an emptied node
//!    can never prove a session absent (its new epoch makes its misses not
//!    count until anti-entropy has refilled it).
//! 2. **No cart item is lost**: 30 concurrent `POST /cart/add` of different
//!    products, a concurrent burst while node 0 is dead, and a steady stream
//!    of adds from both devices throughout: `GET /cart` on each device lists
//!    exactly the items whose add was acknowledged (200), none missing.
//! 3. The faults really happened and were recovered from: the coordinator
//!    saw node 0 Down, saw both returning nodes in a new (empty) epoch, and
//!    after recovery every Redis node — including the two that came back
//!    empty — holds every cart item of both sessions again.
//! 4. `POST /logout-all` from one device ends **every** device's session:
//!    both devices then get "not logged in", also when the old cookie of the
//!    device that logged out is replayed.
//!
//! Runtime: about 10 s (three containers, two faults). Needs Docker (see
//! `tests/support`: the harness finds or builds a Redis image).
#![cfg(feature = "redis")]

mod support;

#[path = "../examples/app/routes.rs"]
#[allow(dead_code)]
mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorum_sessions::replica::redis::RedisReplica;
use quorum_sessions::replica::Replica;
use quorum_sessions::session::{keys, Csrf, FingerprintConfig, SessionConfig, SessionId};
use quorum_sessions::Health;
use quorum_sessions::{Coordinator, SessionStore};
use serde_json::{json, Value};
use support::RedisNodes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Products added by the first concurrent burst.
const CONCURRENT_ADDS: usize = 30;
/// Products added concurrently while node 0 is dead.
const ADDS_WHILE_DOWN: usize = 10;
/// Distinct products each device's steady stream cycles through (adding one
/// again raises its quantity): a session holds at most 100 items and data
/// keys (`SessionConfig::max_fields`).
const LIVE_PRODUCTS: usize = 10;
/// Deadline of one HTTP exchange (a hung request fails the test).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to mark a node Down or to refill one.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// The stored field of a cart item (`i:<collection>:<item>`, see the
/// session module's record table).
const CART_FIELD_PREFIX: &str = "i:cart:";

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    set_cookies: Vec<String>,
    body: Value,
    raw_body: String,
}

/// Every request the devices made: (phase, request line, status, body).
#[derive(Default)]
struct Log {
    phase: Mutex<&'static str>,
    requests: Mutex<Vec<(&'static str, String, u16, String)>>,
}

impl Log {
    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = phase;
    }

    fn record(&self, request: String, reply: &Reply) {
        let phase = *self.phase.lock().unwrap();
        self.requests
            .lock()
            .unwrap()
            .push((phase, request, reply.status, reply.raw_body.clone()));
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Requests per phase.
    fn per_phase(&self) -> BTreeMap<&'static str, usize> {
        let mut phases = BTreeMap::new();
        for (phase, ..) in self.requests.lock().unwrap().iter() {
            *phases.entry(*phase).or_insert(0) += 1;
        }
        phases
    }

    /// Requests that did not answer 200.
    fn failures(&self) -> Vec<(&'static str, String, u16, String)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, status, _)| *status != 200)
            .cloned()
            .collect()
    }
}

/// A browser: its own cookie jar, user agent and CSRF token.
struct Device {
    addr: SocketAddr,
    user_agent: &'static str,
    jar: Mutex<BTreeMap<String, String>>,
    csrf: Mutex<String>,
    log: Arc<Log>,
}

impl Device {
    fn new(addr: SocketAddr, user_agent: &'static str, log: Arc<Log>) -> Device {
        Device {
            addr,
            user_agent,
            jar: Mutex::new(BTreeMap::new()),
            csrf: Mutex::new(String::new()),
            log,
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .lock()
            .unwrap()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The jar follows Set-Cookie: `Max-Age=0` or an empty value removes.
    fn store_cookies(&self, reply: &Reply) {
        let mut jar = self.jar.lock().unwrap();
        for set in &reply.set_cookies {
            let mut parts = set.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
                continue;
            };
            let expired = parts.any(|attribute| attribute.eq_ignore_ascii_case("Max-Age=0"));
            if expired || value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// Sends one request with the jar's cookies and, on a mutating method,
    /// the CSRF token; records the answer in the log.
    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut headers = Vec::new();
        let cookie = self.cookie_header();
        if !cookie.is_empty() {
            headers.push(("Cookie".to_owned(), cookie));
        }
        let csrf = self.csrf.lock().unwrap().clone();
        if method != "GET" && !csrf.is_empty() {
            headers.push(("X-CSRF-Token".to_owned(), csrf));
        }
        let reply = self.send(method, path, &headers, body).await;
        self.store_cookies(&reply);
        self.log
            .record(format!("{} {method} {path}", self.user_agent), &reply);
        reply
    }

    /// Sends with exactly these headers (no jar), unlogged.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Value>,
    ) -> Reply {
        tokio::time::timeout(HTTP_TIMEOUT, self.exchange(method, path, headers, body))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Value>,
    ) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: {}\r\nContent-Length: {}\r\n",
            self.addr,
            self.user_agent,
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        let set_cookies = lines
            .filter_map(|line| line.split_once(": "))
            .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.to_owned())
            .collect();
        Reply {
            status,
            set_cookies,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            raw_body: body.to_owned(),
        }
    }

    async fn login(&self) {
        let reply = self
            .request(
                "POST",
                "/login",
                Some(json!({"username": "alice", "password": "demo123"})),
            )
            .await;
        assert_eq!(reply.status, 200, "login: {}", reply.raw_body);
        let token = reply.body["csrf_token"].as_str().expect("a CSRF token");
        *self.csrf.lock().unwrap() = token.to_owned();
        assert!(self.jar.lock().unwrap().contains_key(routes::COOKIE_NAME));
    }

    async fn add(&self, product: &str, price_cents: u64) -> Reply {
        let item = json!({"product_id": product, "name": format!("Product {product}"), "price_cents": price_cents, "quantity": 1});
        self.request("POST", "/cart/add", Some(item)).await
    }

    /// What `GET /cart` lists: product id → quantity.
    async fn cart(&self) -> BTreeMap<String, u64> {
        let reply = self.request("GET", "/cart", None).await;
        assert_eq!(reply.status, 200, "GET /cart: {}", reply.raw_body);
        let items: BTreeMap<String, u64> = reply.body["cart"]
            .as_array()
            .expect("a cart array")
            .iter()
            .map(|item| {
                let product = item["product_id"].as_str().unwrap().to_owned();
                (product, item["quantity"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(
            reply.body["item_count"].as_u64(),
            Some(items.values().sum::<u64>())
        );
        items
    }

    fn session_id(&self) -> SessionId {
        let jar = self.jar.lock().unwrap();
        SessionId::parse(&jar[routes::COOKIE_NAME]).expect("a session id in the cookie")
    }
}

/// Sends `count` adds of products `{prefix}-{i}` at once; returns the
/// products whose add answered 200.
async fn concurrent_adds(device: &Device, prefix: &str, count: usize) -> Vec<String> {
    let products: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let replies =
        futures::future::join_all(products.iter().map(|p| device.add(p, 100 + p.len() as u64)))
            .await;
    products
        .into_iter()
        .zip(replies)
        .filter(|(_, reply)| reply.status == 200)
        .map(|(product, _)| product)
        .collect()
}

/// Both devices keep browsing (profile, cart) and adding products until
/// stopped; each returns the adds that answered 200, one entry per add (a
/// product added twice has quantity 2).
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
    /// Rounds (profile, cart, add) made by each device.
    rounds: Vec<Arc<AtomicUsize>>,
}

fn start_traffic(devices: &[Arc<Device>]) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicUsize>> = devices.iter().map(|_| Arc::default()).collect();
    let tasks = devices
        .iter()
        .zip(&rounds)
        .map(|(device, rounds)| {
            let (device, stop, rounds) = (device.clone(), stop.clone(), rounds.clone());
            tokio::spawn(async move {
                let mut added = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    device.request("GET", "/profile", None).await;
                    device.request("GET", "/cart", None).await;
                    let product = format!("{}-live-{}", device.user_agent, n % LIVE_PRODUCTS);
                    if device.add(&product, 250).await.status == 200 {
                        added.push(product);
                    }
                    n += 1;
                    rounds.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                added
            })
        })
        .collect();
    Traffic {
        stop,
        tasks,
        rounds,
    }
}

impl Traffic {
    /// Waits until every device made `more` further rounds (requests keep
    /// flowing through the current phase).
    async fn keep_going(&self, more: usize) {
        let targets: Vec<usize> = self
            .rounds
            .iter()
            .map(|r| r.load(Ordering::Relaxed) + more)
            .collect();
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        while self
            .rounds
            .iter()
            .zip(&targets)
            .any(|(rounds, &target)| rounds.load(Ordering::Relaxed) < target)
        {
            assert!(Instant::now() < deadline, "the traffic stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut added = Vec::new();
        for task in self.tasks {
            added.push(task.await.expect("traffic task"));
        }
        added
    }
}

/// Waits until `done` holds for the replica states, or fails with them.
async fn wait_for(coordinator: &Coordinator, what: &str, done: impl Fn(&Coordinator) -> bool) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while !done(coordinator) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RECOVERY_TIMEOUT:?}: {:?}",
            coordinator.replica_states()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_recovered(coordinator: &Coordinator) -> bool {
    coordinator
        .replica_states()
        .iter()
        .all(|s| s.health == Health::Up && s.readable && s.epoch.is_some_and(|e| e.complete))
}

/// Product id → number of acknowledged adds.
fn quantities(adds: &[String]) -> BTreeMap<String, u64> {
    let mut cart = BTreeMap::new();
    for product in adds {
        *cart.entry(product.clone()).or_insert(0) += 1;
    }
    cart
}

/// The cart (product id → quantity) stored in `replica`'s copy of a
/// session, read directly from that Redis node.
async fn cart_on_replica(replica: &RedisReplica, id: &SessionId) -> BTreeMap<String, u64> {
    let reply = replica
        .read(&keys::session_key(id))
        .await
        .unwrap_or_else(|e| panic!("direct read on {}: {e}", replica.name()));
    let record = reply
        .record
        .unwrap_or_else(|| panic!("{} holds no copy of the session", replica.name()));
    record
        .values()
        .filter_map(|(name, value)| {
            let product = name.strip_prefix(CART_FIELD_PREFIX)?;
            let item: Value = serde_json::from_slice(value).expect("a JSON cart item");
            Some((product.to_owned(), item["quantity"].as_u64()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stays_logged_in_and_keeps_the_cart_while_redis_nodes_die() {
    let started = Instant::now();
    let nodes = RedisNodes::start(3).await;
    let redis: Vec<Arc<RedisReplica>> = nodes.replicas().await.into_iter().map(Arc::new).collect();
    let config = support::fault_test_config();
    let replicas: Vec<Arc<dyn Replica>> = redis
        .iter()
        .map(|r| r.clone() as Arc<dyn Replica>)
        .collect();
    let coordinator = Coordinator::connect(config, replicas)
        .await
        .expect("coordinator");
    assert!(all_recovered(&coordinator), "a fresh cluster is complete");

    // The example app, as `cargo run --example app` builds it (fingerprint
    // binding on), over plain HTTP on loopback (its `--insecure-cookies`).
    let session_config = SessionConfig {
        fingerprint: Some(FingerprintConfig::default()),
        ..SessionConfig::default()
    };
    let store = SessionStore::new(coordinator.clone(), session_config).expect("session store");
    let state = routes::AppState {
        store,
        csrf: Csrf::new(&rand::random::<[u8; 32]>()).unwrap(),
        users: Arc::new(routes::demo_users()),
        secure_cookies: false,
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Two devices of one user, both logged in.
    let log = Arc::new(Log::default());
    log.set_phase("login");
    let laptop = Arc::new(Device::new(addr, "laptop", log.clone()));
    let phone = Arc::new(Device::new(addr, "phone", log.clone()));
    laptop.login().await;
    phone.login().await;
    assert_ne!(laptop.session_id(), phone.session_id());
    for device in [&laptop, &phone] {
        let profile = device.request("GET", "/profile", None).await;
        assert_eq!(profile.status, 200, "{}", profile.raw_body);
        assert_eq!(profile.body["user"]["username"], "alice");
    }
    // The CSRF token is required: without it an add is refused (and not
    // logged: it is the one non-200 answer this test expects).
    let no_token = laptop
        .send(
            "POST",
            "/cart/add",
            &[("Cookie".to_owned(), laptop.cookie_header())],
            Some(json!({"product_id": "x", "name": "x", "price_cents": 1, "quantity": 1})),
        )
        .await;
    assert_eq!(no_token.status, 403, "{}", no_token.raw_body);

    // A cart filled by 30 concurrent requests.
    log.set_phase("concurrent adds");
    let mut laptop_added = concurrent_adds(&laptop, "sku", CONCURRENT_ADDS).await;
    assert_eq!(laptop_added.len(), CONCURRENT_ADDS, "{:?}", log.failures());
    assert_eq!(laptop.cart().await.len(), CONCURRENT_ADDS);

    let traffic = start_traffic(&[laptop.clone(), phone.clone()]);
    traffic.keep_going(3).await;

    // Fault 1: SIGKILL node 0; keep going (and add a concurrent burst) while
    // it is dead; bring it back (empty: no persistence) and let it refill.
    log.set_phase("node 0 killed");
    nodes.node(0).kill().await;
    wait_for(&coordinator, "node 0 marked Down", |c| {
        c.replica_states()[0].health == Health::Down
    })
    .await;
    laptop_added.extend(concurrent_adds(&laptop, "while-down", ADDS_WHILE_DOWN).await);
    traffic.keep_going(5).await;
    log.set_phase("node 0 back, empty");
    nodes.node(0).start().await;
    wait_for(&coordinator, "node 0 refilled", all_recovered).await;
    traffic.keep_going(3).await;

    // Fault 2: node 1 restarts empty (stop + start, no persistence).
    log.set_phase("node 1 restart-empty");
    nodes.node(1).restart_empty().await;
    traffic.keep_going(3).await;
    log.set_phase("node 1 back, empty");
    wait_for(&coordinator, "node 1 refilled", all_recovered).await;
    traffic.keep_going(3).await;

    log.set_phase("after the faults");
    let live = traffic.stop().await;
    laptop_added.extend(live[0].iter().cloned());
    let laptop_expected = quantities(&laptop_added);
    let phone_expected = quantities(&live[1]);

    // (1) Every request of the run answered 200: never "not logged in",
    // never 503.
    let failures = log.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}",
        failures.len(),
        log.count()
    );
    let phases = log.per_phase();
    for phase in [
        "node 0 killed",
        "node 0 back, empty",
        "node 1 restart-empty",
        "node 1 back, empty",
    ] {
        assert!(phases.get(phase).copied().unwrap_or(0) >= 6, "{phases:?}");
    }

    // (2) No acknowledged cart item is lost, on either device: every
    // product whose add answered 200 is listed, with one unit per add (a
    // product added again by a later request has its quantity raised, so a
    // request that read a stale cart would show as a missing unit).
    assert_eq!(
        laptop_added.len(),
        CONCURRENT_ADDS + ADDS_WHILE_DOWN + live[0].len()
    );
    assert!(live[0].len() > LIVE_PRODUCTS && live[1].len() > LIVE_PRODUCTS);
    assert_eq!(laptop.cart().await, laptop_expected, "the laptop's cart");
    assert_eq!(phone.cart().await, phone_expected, "the phone's cart");

    // (3) The faults were seen and repaired: both returning nodes came back
    // in a new epoch, and after one more anti-entropy pass every node —
    // the two emptied ones included — holds every item of both carts.
    let stats = coordinator.stats();
    assert!(
        stats.epochs_changed >= 2,
        "both emptied nodes seen: {stats:?}"
    );
    coordinator.anti_entropy().await.expect("no pass running");
    for replica in &redis {
        assert_eq!(
            cart_on_replica(replica, &laptop.session_id()).await,
            laptop_expected,
            "laptop cart on {}",
            replica.name()
        );
        assert_eq!(
            cart_on_replica(replica, &phone.session_id()).await,
            phone_expected,
            "phone cart on {}",
            replica.name()
        );
    }

    // (4) Log out everywhere from the laptop: both devices are logged out,
    // and the laptop's old cookie, replayed, is dead too.
    log.set_phase("logout-all");
    let old_laptop_cookie = laptop.cookie_header();
    let out = laptop.request("POST", "/logout-all", None).await;
    assert_eq!(out.status, 200, "{}", out.raw_body);
    assert_eq!(out.body["message"], "Logged out from 2 devices");
    for device in [&laptop, &phone] {
        for path in ["/profile", "/cart"] {
            let reply = device.request("GET", path, None).await;
            assert_eq!(
                reply.status, 401,
                "{} {path}: {}",
                device.user_agent, reply.raw_body
            );
            assert_eq!(reply.body["error"], "not logged in");
        }
    }
    let replayed = laptop
        .send(
            "GET",
            "/profile",
            &[("Cookie".to_owned(), old_laptop_cookie)],
            None,
        )
        .await;
    assert_eq!(replayed.status, 401, "{}", replayed.raw_body);
    assert_eq!(replayed.body["error"], "not logged in");

    eprintln!(
        "session e2e: requests per phase {phases:?}, all 200 through the faults; laptop cart {} adds, phone cart {} adds; {stats:?}; {:?}",
        laptop_added.len(),
        live[1].len(),
        started.elapsed()
    );
}
