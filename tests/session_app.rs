//! End-to-end test of the example app (`examples/app/routes.rs`) over real
//! HTTP on 127.0.0.1, on three in-memory replicas behind `FaultyReplica`.
//!
//! Proves, through the HTTP interface only: login checks an argon2 hash and
//! refuses a cross-origin login; the cookie is HttpOnly, SameSite=Lax and
//! Secure; every mutating route needs the CSRF token; the profile update and
//! the cart (concurrent adds of different products all survive) work; login
//! with a live session rotates the id and carries the cart; a stolen cookie
//! presented by another user agent destroys the session; admin routes need
//! the admin role and never show a usable session id; replicas unreachable
//! below quorum give 503, never "not logged in", and turn `/health/ready`
//! to 503 naming them (200 again once they are back); logout and logout-all end
//! the sessions.

mod session_support;

#[path = "../examples/app/routes.rs"]
#[allow(dead_code)]
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use quorum_sessions::session::{Csrf, FingerprintConfig, SessionConfig};
use serde_json::{json, Value};
use session_support::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    raw_body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `sid=<id>` from Set-Cookie.
    fn cookie(&self) -> String {
        let set = self.header("set-cookie").expect("a Set-Cookie header");
        set.split(';').next().unwrap().to_owned()
    }
}

struct Client {
    addr: SocketAddr,
    user_agent: String,
}

impl Client {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
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
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(": "))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            raw_body: body.to_owned(),
        }
    }

    async fn login(&self, user: &str, password: &str, cookie: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        self.send(
            "POST",
            "/login",
            &headers,
            Some(json!({"username": user, "password": password})),
        )
        .await
    }
}

/// A logged-in browser: its cookie and CSRF token.
struct Browser<'a> {
    client: &'a Client,
    cookie: String,
    csrf: String,
}

impl Browser<'_> {
    async fn get(&self, path: &str) -> Reply {
        self.client
            .send("GET", path, &[("Cookie", &self.cookie)], None)
            .await
    }

    async fn mutate(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
        ];
        self.client.send(method, path, &headers, body).await
    }
}

async fn browser<'a>(
    client: &'a Client,
    user: &str,
    password: &str,
    cookie: Option<&str>,
) -> Browser<'a> {
    let reply = client.login(user, password, cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.raw_body);
    Browser {
        client,
        cookie: reply.cookie(),
        csrf: reply.body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

async fn start() -> (Cluster, SocketAddr) {
    let config = SessionConfig {
        fingerprint: Some(FingerprintConfig::default()),
        ..SessionConfig::default()
    };
    let cluster = Cluster::new(config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    cluster
        .clock
        .store(now, std::sync::atomic::Ordering::SeqCst);
    let state = routes::AppState {
        store: cluster.store.clone(),
        csrf: Csrf::new(&[42; 32]).unwrap(),
        users: Arc::new(routes::demo_users()),
        secure_cookies: true,
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (cluster, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_end_to_end_over_http() {
    let (cluster, addr) = start().await;
    let client = Client {
        addr,
        user_agent: "e2e-browser/1.0".into(),
    };

    // Login: wrong password, cross-origin, then success with a secure cookie.
    assert_eq!(client.login("alice", "wrong", None).await.status, 401);
    assert_eq!(client.login("nobody", "demo123", None).await.status, 401);
    let evil = client
        .send(
            "POST",
            "/login",
            &[("Origin", "https://evil.example")],
            Some(json!({"username": "alice", "password": "demo123"})),
        )
        .await;
    assert_eq!(evil.status, 403);
    let reply = client.login("alice", "demo123", None).await;
    assert_eq!(reply.status, 200);
    let set_cookie = reply.header("set-cookie").unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag} missing in {set_cookie}");
    }
    assert!(!reply.raw_body.contains("demo123") && !reply.raw_body.contains("argon2"));
    let alice = Browser {
        client: &client,
        cookie: reply.cookie(),
        csrf: reply.body["csrf_token"].as_str().unwrap().to_owned(),
    };

    // Profile, and what an unauthenticated request gets.
    let profile = alice.get("/profile").await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.body["user"]["username"], "alice");
    assert_eq!(profile.body["user"]["role"], "user");
    assert_eq!(client.send("GET", "/profile", &[], None).await.status, 401);
    let forged = client
        .send("GET", "/profile", &[("Cookie", "sid=../../x")], None)
        .await;
    assert_eq!(forged.status, 401);

    // CSRF on mutating routes.
    let no_token = client
        .send(
            "POST",
            "/update-profile",
            &[("Cookie", &alice.cookie)],
            Some(json!({"email": "a@b.c"})),
        )
        .await;
    assert_eq!(no_token.status, 403);
    let wrong_token = client
        .send(
            "POST",
            "/update-profile",
            &[("Cookie", &alice.cookie), ("X-CSRF-Token", &"0".repeat(64))],
            Some(json!({"email": "a@b.c"})),
        )
        .await;
    assert_eq!(wrong_token.status, 403);
    let updated = alice
        .mutate(
            "POST",
            "/update-profile",
            Some(json!({"email": "alice@new.example"})),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.raw_body);
    assert_eq!(
        alice.get("/profile").await.body["user"]["email"],
        "alice@new.example"
    );
    let no_csrf_cart = client
        .send("DELETE", "/cart/clear", &[("Cookie", &alice.cookie)], None)
        .await;
    assert_eq!(no_csrf_cart.status, 403);

    // The cart: concurrent adds of different products all survive.
    let adds = (0..8).map(|i| {
        alice.mutate(
            "POST",
            "/cart/add",
            Some(json!({"product_id": format!("sku-{i}"), "name": format!("P{i}"), "price_cents": 100 * (i + 1), "quantity": 1})),
        )
    });
    for reply in futures::future::join_all(adds).await {
        assert_eq!(reply.status, 200, "{}", reply.raw_body);
    }
    let again = alice
        .mutate(
            "POST",
            "/cart/add",
            Some(json!({"product_id": "sku-0", "name": "P0", "price_cents": 100, "quantity": 2})),
        )
        .await;
    assert_eq!(again.status, 200);
    let cart = alice.get("/cart").await;
    assert_eq!(
        cart.body["cart"].as_array().unwrap().len(),
        8,
        "{}",
        cart.raw_body
    );
    assert_eq!(cart.body["item_count"], 10);
    assert_eq!(cart.body["total_cents"], 100 * 36 + 200);

    // Login again with the live cookie: the id rotates, the cart follows.
    let rotated = browser(&client, "alice", "demo123", Some(&alice.cookie)).await;
    assert_ne!(rotated.cookie, alice.cookie);
    assert_eq!(
        alice.get("/profile").await.status,
        401,
        "the old id is dead"
    );
    assert_eq!(rotated.get("/cart").await.body["item_count"], 10);
    let cleared = rotated.mutate("DELETE", "/cart/clear", None).await;
    assert_eq!(cleared.status, 200);
    assert_eq!(rotated.get("/cart").await.body["item_count"], 0);

    // A stolen cookie, presented by another user agent, destroys the session.
    let laptop = Client {
        addr,
        user_agent: "laptop/2.0".into(),
    };
    let device = browser(&laptop, "alice", "demo123", None).await;
    let thief = Client {
        addr,
        user_agent: "curl/8.5".into(),
    };
    let stolen = thief
        .send("GET", "/profile", &[("Cookie", &device.cookie)], None)
        .await;
    assert_eq!(stolen.status, 401);
    assert_eq!(
        device.get("/profile").await.status,
        401,
        "destroyed for its owner too"
    );

    // Admin routes: role admin only; ids never shown in full.
    assert_eq!(rotated.get("/admin/sessions").await.status, 403);
    let admin = browser(&client, "admin", "admin123", None).await;
    let listing = admin.get("/admin/sessions?limit=1000").await;
    assert_eq!(listing.status, 200, "{}", listing.raw_body);
    let sessions = listing.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{}", listing.raw_body);
    for cookie in [&rotated.cookie, &admin.cookie] {
        let id = cookie.trim_start_matches("sid=");
        assert!(
            !listing.raw_body.contains(id),
            "a full session id in the admin listing"
        );
        assert!(listing.raw_body.contains(&id[..8]));
    }
    let bad_cursor = admin.get("/admin/sessions?cursor=9.x").await;
    assert_eq!(bad_cursor.status, 400);
    let analytics = admin.get("/admin/analytics").await;
    assert_eq!(analytics.status, 200);
    assert_eq!(analytics.body["total_sessions"], 2);
    assert_eq!(analytics.body["unique_users"], 2);
    assert_eq!(analytics.body["sessions_by_role"]["admin"], 1);

    // Two replicas of three unreachable: 503 with Retry-After, never 401.
    cluster.handles[0].down();
    cluster.handles[1].down();
    let unavailable = rotated.get("/profile").await;
    assert_eq!(unavailable.status, 503, "{}", unavailable.raw_body);
    assert_eq!(unavailable.header("retry-after"), Some("1"));
    assert_eq!(client.login("alice", "demo123", None).await.status, 503);
    // Readiness follows once the failures marked them Down (3 each).
    assert_eq!(
        client.send("GET", "/health/live", &[], None).await.status,
        200
    );
    rotated.get("/profile").await;
    let ready = client.send("GET", "/health/ready", &[], None).await;
    assert_eq!(ready.status, 503, "{}", ready.raw_body);
    assert_eq!(ready.body["status"], "not_ready");
    assert_eq!(ready.body["reason"], "write_quorum_unreachable");
    assert_eq!(ready.body["down"], json!(["r0", "r1"]));
    cluster.handles[0].heal();
    cluster.handles[1].heal();
    cluster.store.coordinator().probe_due_replicas().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.store.coordinator().probe_due_replicas().await;
    assert_eq!(rotated.get("/profile").await.status, 200);
    let ready = client.send("GET", "/health/ready", &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.raw_body);

    // Logout everywhere, then logout.
    let second = browser(&client, "alice", "demo123", None).await;
    let all = rotated.mutate("POST", "/logout-all", None).await;
    assert_eq!(all.status, 200, "{}", all.raw_body);
    assert!(all.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(rotated.get("/profile").await.status, 401);
    assert_eq!(second.get("/profile").await.status, 401);
    assert_eq!(
        admin.get("/profile").await.status,
        200,
        "another user is untouched"
    );
    let out = admin.mutate("POST", "/logout", None).await;
    assert_eq!(out.status, 200);
    assert_eq!(admin.get("/profile").await.status, 401);
}
