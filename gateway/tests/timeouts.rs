//! Header-read, body-read and whole-request timeouts really fire on the real server
//! (`shardgate::server::serve`, hyper with a timer), proven over raw TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{StoreKind, Tokens};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Server {
    addr: std::net::SocketAddr,
    tokens: Tokens,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start(kind: StoreKind) -> Option<Server> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.timeouts.header_read_ms = 500;
    cfg.timeouts.body_read_ms = 500;
    cfg.timeouts.request_ms = 1000;
    cfg.timeouts.keepalive_idle_ms = 1500;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let timeouts = cfg.timeouts.clone();
    tokio::spawn(async move {
        shardgate::server::serve(listener, shardgate::app(state), &timeouts, async {
            let _ = rx.await;
        })
        .await;
    });
    Some(Server {
        addr,
        tokens,
        url,
        _stop: tx,
        _dir: dir,
    })
}

/// Read until EOF or `limit`; returns what arrived and when the connection ended.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut chunk)).await
        {
            Err(_) => return (String::from_utf8_lossy(&buf).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&buf).into(), Some(start.elapsed()))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // A slowloris: part of a request head, then nothing.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("server kept a half-sent request head open past 5 s");
    assert!(
        closed >= Duration::from_millis(400),
        "closed too early: {closed:?}"
    );
    // Well before the 1.5 s keep-alive idle timeout: the header timer runs from the first byte.
    assert!(
        closed < Duration::from_millis(1400),
        "closed too late: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_is_cut_off_by_the_body_read_timeout() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "PUT /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        srv.tokens.admin
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"{\"tier\":").await.unwrap();
    let start = Instant::now();
    // Trickle a byte every 200 ms: never enough to finish in time.
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), trickle).await;
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "got: {resp:?}");
    assert!(resp.contains("invalid_request"), "got: {resp:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_blocked_on_the_database_answers_deadline_exceeded() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{}", srv.addr);
    let r = client
        .put(format!("{base}/v1/accounts/acct-1"))
        .bearer_auth(&srv.tokens.admin)
        .json(&serde_json::json!({"tier":"retail"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Hold SQLite's write lock from another connection so the gateway's write waits.
    use sqlx::Connection;
    let mut blocker = sqlx::SqliteConnection::connect(&srv.url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let start = Instant::now();
    let r = client
        .put(format!("{base}/v1/accounts/acct-1/shards/s"))
        .bearer_auth(&srv.tokens.admin)
        .json(&serde_json::json!({"shard":"aGk="}))
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), reqwest::StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // A caller may ask for a shorter deadline, never a longer one.
    for (asked, min_ms, max_ms) in [("200", 150, 900), ("60000", 900, 4000)] {
        let start = Instant::now();
        let r = client
            .put(format!("{base}/v1/accounts/acct-1/shards/s"))
            .bearer_auth(&srv.tokens.admin)
            .header("x-shardgate-deadline-ms", asked)
            .json(&serde_json::json!({"shard":"aGk="}))
            .send()
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(
            r.status(),
            reqwest::StatusCode::GATEWAY_TIMEOUT,
            "asked {asked}"
        );
        assert!(
            took >= Duration::from_millis(min_ms) && took < Duration::from_millis(max_ms),
            "asked {asked}: {took:?}"
        );
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    drop(blocker);
    // The cancelled write left nothing half-done, and the gateway recovers.
    let r = client
        .put(format!("{base}/v1/accounts/acct-1/shards/s"))
        .bearer_auth(&srv.tokens.admin)
        .json(&serde_json::json!({"shard":"aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A plain HTTP/1.1 request on a raw connection is served (idling on it is the next test).
async fn a_raw_http1_request_is_served() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Idle keep-alive connections live for `keepalive_idle_ms` (1.5 s here), not for the 500 ms
/// header-read timeout, and are closed after it without a byte more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timer() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = [0u8; 1024];
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle for twice the header-read timeout: still open, still serving.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let closed = closed.expect("the idle connection was not closed within 10 s");
    assert!(rest.is_empty(), "{rest}");
    assert!(
        closed >= Duration::from_millis(1400),
        "closed after {closed:?}: before the idle timeout"
    );
}
