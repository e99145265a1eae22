//! The README's quick start: an axum app counting visits in a session
//! replicated over the three docker-compose Redis nodes.
//!
//! `docker compose up -d`, then `cargo run --example quickstart --features tower`
//! and `curl -c jar -b jar http://127.0.0.1:3000/` a few times.

use axum::{routing::get, Router};
use quorum_sessions::session::tower::TowerSessionStore;
use tower_sessions::{Session, SessionManagerLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls = [
        "redis://127.0.0.1:6381",
        "redis://127.0.0.1:6382",
        "redis://127.0.0.1:6383",
    ];
    let store = TowerSessionStore::connect(urls).await?;
    let app = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                let visits: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
                session.insert("visits", visits).await.ok();
                format!("visit number {visits}")
            }),
        )
        .layer(SessionManagerLayer::new(store));
    axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
    Ok(())
}
