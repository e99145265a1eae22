//! The example app's routes (the seed tutorial's Flask app, on axum 0.8 and
//! the replicated session store). Shared by `examples/app.rs` and the
//! end-to-end test `tests/session_app.rs`.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /login` | `{username, password}` checked against an argon2 hash; rotates the id of a session already held |
//! | `GET /profile` | the user, session times and the CSRF token |
//! | `POST /update-profile` | `{email}` |
//! | `POST /logout` | this session |
//! | `POST /logout-all` | every session of the user |
//! | `GET /cart` | items, total, item count |
//! | `POST /cart/add` | `{product_id, name, price_cents, quantity}` (one field per item) |
//! | `DELETE /cart/clear` | |
//! | `GET /admin/sessions` | `?cursor=&limit=`, role `admin` |
//! | `GET /admin/analytics` | role `admin` |
//! | `GET /health/live` | 200 while the process serves (restart it if not) |
//! | `GET /health/ready` | 200, or 503 with the reason as JSON: too few replicas reachable or refilled (send traffic elsewhere) |
//! | `GET /metrics` | the library's metrics in Prometheus text (docs/metrics.md; feature `metrics`) |
//!
//! Security: the cookie is `HttpOnly; SameSite=Lax; Secure` (Secure can be
//! switched off for plain-HTTP localhost only); every mutating route but
//! `/login` needs the `X-CSRF-Token` header (HMAC of the session id), and
//! `/login` refuses a cross-origin `Origin`; passwords are verified against
//! argon2 hashes and never stored in a session; a store that cannot answer
//! is a 503, never "not logged in".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use quorum_sessions::coordinator::Readiness;
use quorum_sessions::session::{
    AdminCursor, ClientInfo, Csrf, NewSession, Session, SessionError, SessionId, SessionStore,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "sid";
/// The CSRF header.
pub const CSRF_HEADER: &str = "x-csrf-token";
const CART: &str = "cart";
const EMAIL_MAX_BYTES: usize = 254;

/// A user of the demo "database": an argon2 hash, never a password.
#[derive(Clone, Debug)]
pub struct DemoUser {
    /// PHC string (argon2id).
    pub password_hash: &'static str,
    /// Role.
    pub role: &'static str,
    /// Email shown on the profile.
    pub email: &'static str,
}

/// The demo users: `alice` / `demo123` (role `user`), `admin` / `admin123`
/// (role `admin`).
pub fn demo_users() -> BTreeMap<String, DemoUser> {
    let user = "$argon2id$v=19$m=19456,t=2,p=1$8cpeKdsaz/UsROq+zmcW6w$hLhcon5ohhreqNO72M83y2D8N2VUOvjp2BXTx4/PUaU";
    let admin = "$argon2id$v=19$m=19456,t=2,p=1$3h1vNniJbtW60Lm9oNbhbw$t9HHD+HzOUwGFsRj9LKMtbEE4WvyIGVUT3X+9TRJJ2k";
    BTreeMap::from([
        (
            "alice".to_owned(),
            DemoUser {
                password_hash: user,
                role: "user",
                email: "alice@example.com",
            },
        ),
        (
            "admin".to_owned(),
            DemoUser {
                password_hash: admin,
                role: "admin",
                email: "admin@example.com",
            },
        ),
    ])
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The replicated session store.
    pub store: SessionStore,
    /// CSRF tokens (the secret is shared by every app server).
    pub csrf: Csrf,
    /// Users and their password hashes.
    pub users: Arc<BTreeMap<String, DemoUser>>,
    /// Mark the cookie `Secure` (only plain-HTTP localhost turns it off).
    pub secure_cookies: bool,
    /// The Prometheus exporter behind `GET /metrics` ([`prometheus`]);
    /// `None`: no such route.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The app.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let router = Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/update-profile", post(update_profile))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/cart", get(cart))
        .route("/cart/add", post(cart_add))
        .route("/cart/clear", delete(cart_clear))
        .route("/admin/sessions", get(admin_sessions))
        .route("/admin/analytics", get(admin_analytics))
        .route("/health/live", get(|| async { StatusCode::OK }))
        .route("/health/ready", get(ready))
        .with_state(state);
    match metrics {
        Some(handle) => router.route("/metrics", get(move || async move { handle.render() })),
        None => router,
    }
}

/// Installs the Prometheus exporter as the process's metrics recorder (the
/// library's metrics, docs/metrics.md, need its feature `metrics`; without
/// it the page is empty) and returns the handle `GET /metrics` renders.
///
/// # Panics
///
/// When the process already has a metrics recorder.
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only metrics recorder of the process");
    // Without its HTTP listener the exporter leaves upkeep (draining the
    // histograms' buckets) to the application.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

/// Errors as HTTP answers.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(&'static str),
    /// 401, and the cookie is cleared.
    NotLoggedIn,
    /// 403.
    Forbidden(&'static str),
    /// 413.
    TooLarge,
    /// 503: the store cannot answer now. Never "not logged in".
    Unavailable,
    /// 500.
    Internal,
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> ApiError {
        if error.is_unavailable() {
            tracing::warn!(%error, "session store unavailable");
            return ApiError::Unavailable;
        }
        match error {
            SessionError::FingerprintMismatch
            | SessionError::Gone
            | SessionError::Revoked
            | SessionError::Expired => ApiError::NotLoggedIn,
            SessionError::TooLarge { .. } | SessionError::TooManyFields { .. } => {
                ApiError::TooLarge
            }
            SessionError::InvalidName { .. } | SessionError::Json(_) => {
                ApiError::BadRequest("invalid input")
            }
            SessionError::InvalidId(_) | SessionError::InvalidCursor => {
                ApiError::BadRequest("invalid id or cursor")
            }
            other => {
                tracing::error!(error = %other, "session store error");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::NotLoggedIn => (StatusCode::UNAUTHORIZED, "not logged in"),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "session data too large"),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "session store unavailable, retry shortly",
            ),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The client's attributes, for the session metadata and fingerprint.
fn client_info(parts: &Parts) -> ClientInfo {
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    ClientInfo {
        ip: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip().to_string()),
        user_agent: header(header::USER_AGENT),
        accept_language: header(header::ACCEPT_LANGUAGE),
    }
}

/// The session id from the cookie, if one parses (a malformed cookie is
/// treated as no cookie: it never reaches the store).
fn cookie_session_id(headers: &HeaderMap) -> Option<SessionId> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| SessionId::parse(value).ok())
}

fn session_cookie(state: &AppState, session: &Session) -> HeaderValue {
    let now = state.store.coordinator().now_ms();
    let max_age = session.cap_ms().saturating_sub(now) / 1000;
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        session.id()
    );
    HeaderValue::from_str(&cookie).expect("ids and numbers are valid header text")
}

fn clear_cookie(state: &AppState) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}");
    HeaderValue::from_str(&cookie).expect("valid header text")
}

/// A request with a live session; on a mutating method, also a valid CSRF
/// token.
pub struct Authenticated {
    /// The session.
    pub session: Session,
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let not_logged_in = || {
            let mut response = ApiError::NotLoggedIn.into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, clear_cookie(state));
            response
        };
        let Some(id) = cookie_session_id(&parts.headers) else {
            return Err(not_logged_in());
        };
        let client = client_info(parts);
        let session = match state.store.get(&id, &client).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(not_logged_in()),
            Err(error) => {
                return Err(match ApiError::from(error) {
                    ApiError::NotLoggedIn => not_logged_in(),
                    other => other.into_response(),
                })
            }
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let token = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("");
            if !state.csrf.verify(session.id(), token) {
                return Err(ApiError::Forbidden("invalid CSRF token").into_response());
            }
        }
        Ok(Authenticated { session })
    }
}

/// The request's client attributes, as an extractor.
pub struct Client(pub ClientInfo);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(client_info(parts)))
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

/// A cross-site login attempt (login CSRF): the `Origin` header, when the
/// browser sends one, must name this host.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host.is_none() || origin_host != host
}

async fn verify_password(
    users: &BTreeMap<String, DemoUser>,
    name: &str,
    password: String,
) -> Option<DemoUser> {
    // Unknown users are checked against a real hash too: same cost, so the
    // timing does not tell which names exist.
    let user = users.get(name).cloned();
    let hash = user
        .as_ref()
        .map_or(demo_users()["alice"].password_hash, |u| u.password_hash);
    let matches = tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    user.filter(|_| matches)
}

async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    Json(request): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    if cross_origin(&headers) {
        return Err(ApiError::Forbidden("cross-origin login"));
    }
    if request.username.is_empty() || request.password.is_empty() {
        return Err(ApiError::BadRequest("missing credentials"));
    }
    let Some(user) = verify_password(&state.users, &request.username, request.password).await
    else {
        return Ok((
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid credentials" })),
        )
            .into_response());
    };
    let previous = match cookie_session_id(&headers) {
        Some(id) => state.store.get(&id, &client).await.unwrap_or(None),
        None => None,
    };
    let session = match previous {
        // Rotation after login: a new id, the data (cart) carried over.
        Some(old) if old.user() == Some(request.username.as_str()) => {
            state
                .store
                .regenerate_as(&old, &request.username, Some(user.role))
                .await?
        }
        previous => {
            if let Some(old) = previous {
                let _ = state.store.delete(&old).await; // another user's session
            }
            let new = NewSession::for_user(&request.username)
                .role(user.role)
                .data("username", request.username.clone())
                .data("email", user.email)
                .client(client);
            state.store.create(new).await?
        }
    };
    let body = json!({
        "success": true,
        "user": { "username": request.username, "email": session.get("email"), "role": user.role },
        "csrf_token": state.csrf.token(session.id()),
    });
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &session));
    Ok(response)
}

async fn profile(State(state): State<AppState>, auth: Authenticated) -> Json<Value> {
    let session = &auth.session;
    Json(json!({
        "user": {
            "username": session.user(),
            "email": session.get("email"),
            "role": session.role(),
        },
        "session_info": {
            "created_at": session.created_ms(),
            "last_activity": session.last_activity_ms(),
            "expires_at": session.expiry_ms(),
        },
        "csrf_token": state.csrf.token(session.id()),
    }))
}

#[derive(Deserialize)]
struct ProfileUpdate {
    email: String,
}

async fn update_profile(
    State(state): State<AppState>,
    mut auth: Authenticated,
    Json(update): Json<ProfileUpdate>,
) -> Result<Json<Value>, ApiError> {
    if update.email.is_empty()
        || update.email.len() > EMAIL_MAX_BYTES
        || !update.email.contains('@')
    {
        return Err(ApiError::BadRequest("invalid email"));
    }
    auth.session.set("email", update.email)?;
    state.store.save(&mut auth.session).await?;
    Ok(Json(
        json!({ "success": true, "message": "Profile updated" }),
    ))
}

async fn logout(State(state): State<AppState>, auth: Authenticated) -> Result<Response, ApiError> {
    state.store.delete(&auth.session).await?;
    let mut response = Json(json!({ "success": true })).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&state));
    Ok(response)
}

async fn logout_all(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let user = auth.session.user().ok_or(ApiError::NotLoggedIn)?;
    let count = state.store.logout_all(user).await?;
    let mut response =
        Json(json!({ "success": true, "message": format!("Logged out from {count} devices") }))
            .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&state));
    Ok(response)
}

/// One cart line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CartItem {
    /// Product id (the item's field name).
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Unit price, in cents.
    pub price_cents: u64,
    /// Quantity.
    pub quantity: u32,
}

async fn cart(auth: Authenticated) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for value in auth.session.items(CART).values() {
        let item: CartItem =
            serde_json::from_value(value.clone()).map_err(|_| ApiError::Internal)?;
        items.push(item);
    }
    let total: u64 = items
        .iter()
        .map(|i| i.price_cents * u64::from(i.quantity))
        .sum();
    let count: u32 = items.iter().map(|i| i.quantity).sum();
    Ok(Json(
        json!({ "cart": items, "total_cents": total, "item_count": count }),
    ))
}

async fn cart_add(
    State(state): State<AppState>,
    mut auth: Authenticated,
    Json(mut item): Json<CartItem>,
) -> Result<Json<Value>, ApiError> {
    if item.quantity == 0 {
        return Err(ApiError::BadRequest("quantity must be positive"));
    }
    // One field per product: adds of different products from concurrent
    // requests all survive; two adds of the same product are last writer
    // wins on its quantity.
    if let Some(existing) = auth.session.item_as::<CartItem>(CART, &item.product_id)? {
        item.quantity = item.quantity.saturating_add(existing.quantity);
    }
    auth.session
        .add_item_as(CART, &item.product_id.clone(), &item)?;
    state.store.save(&mut auth.session).await?;
    Ok(Json(
        json!({ "success": true, "message": "Item added to cart" }),
    ))
}

async fn cart_clear(
    State(state): State<AppState>,
    mut auth: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let removed = auth.session.clear_items(CART);
    state.store.save(&mut auth.session).await?;
    Ok(Json(json!({ "success": true, "removed": removed })))
}

fn require_admin(auth: &Authenticated) -> Result<(), ApiError> {
    if auth.session.role() == Some("admin") {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin only"))
    }
}

#[derive(Deserialize)]
struct AdminQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn admin_sessions(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<AdminQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&auth)?;
    let cursor: Option<AdminCursor> = match query.cursor.as_deref() {
        Some(text) => Some(text.parse()?),
        None => None,
    };
    let page = state
        .store
        .admin_page(cursor.as_ref(), query.limit.unwrap_or(100))
        .await?;
    let sessions: Vec<Value> = page
        .sessions
        .iter()
        .map(|s| {
            json!({
                "session": s.id.redacted(), // never a usable id
                "username": s.user,
                "role": s.role,
                "created_at": s.created_ms,
                "last_activity": s.last_activity_ms,
                "expires_at": s.expiry_ms,
                "ip_address": s.client_ip,
            })
        })
        .collect();
    Ok(Json(json!({
        "replica": page.replica,
        "sessions": sessions,
        "next_cursor": page.next.map(|c| c.to_string()),
    })))
}

async fn admin_analytics(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Value>, ApiError> {
    require_admin(&auth)?;
    let stats = state.store.admin_stats().await?;
    Ok(Json(json!({
        "replica": stats.replica,
        "total_sessions": stats.active_sessions,
        "unique_users": stats.unique_users,
        "unique_users_approximate": stats.unique_users_approximate,
        "sessions_by_role": stats.sessions_by_role,
        "oldest_session_age_ms": stats.oldest_age_ms,
        "newest_session_age_ms": stats.newest_age_ms,
        "keys_scanned": stats.keys_scanned,
    })))
}

/// 503 when the store cannot reach or read its quorums: a load balancer
/// sends traffic elsewhere, but the process is not restarted (a Redis down
/// is not cured by that).
async fn ready(State(state): State<AppState>) -> Response {
    match state.store.readiness() {
        Readiness::Ready => Json(json!({"status": "ready"})).into_response(),
        not_ready => (StatusCode::SERVICE_UNAVAILABLE, Json(not_ready)).into_response(),
    }
}
