//! Header-read, body-read and whole-request timeouts really fire on the real server
//! (`shardgate::http::server::serve`, hyper with a timer), proven over raw TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{StoreKind, Tokens};
use shardgate::app::config::Config;
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
    start_with(kind, |_| {}).await
}

async fn start_with(kind: StoreKind, tweak: impl FnOnce(&mut Config)) -> Option<Server> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.timeouts.header_read_ms = 500;
    cfg.timeouts.body_read_ms = 500;
    cfg.timeouts.request_ms = 1000;
    cfg.timeouts.keepalive_idle_ms = 1500;
    tweak(&mut cfg);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let timeouts = cfg.timeouts.clone();
    tokio::spawn(async move {
        shardgate::http::server::serve(listener, shardgate::router(state), &timeouts, async {
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
async fn read_until_closed(
    s: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, Option<Duration>) {
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

/// A half-sent request head is closed by the header-read timer (500 ms), which runs from
/// its first byte: not at once, and not by the keep-alive idle timer, set here to two
/// minutes, far past the 30 s this test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let srv = start_with(StoreKind::Sqlite, |c| {
        c.timeouts.keepalive_idle_ms = 120_000
    })
    .await
    .unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // A slowloris: part of a request head, then nothing.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(30)).await;
    let closed = closed.expect("server kept a half-sent request head open past 30 s");
    // A lower bound only (a timer never fires early): it was the timer, not an instant close.
    assert!(
        closed >= Duration::from_millis(400),
        "closed too early: {closed:?}"
    );
}

/// A body that keeps coming, a byte every 200 ms (so no idle timer could end it), and would
/// complete only minutes later, is answered 400 `invalid_request` while it still trickles:
/// the body-read timer ended it (the whole-request deadline would answer 504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_is_cut_off_by_the_body_read_timeout() {
    let srv = start(StoreKind::Sqlite).await.unwrap();
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "PUT /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        srv.tokens.admin
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.write_all(b"{\"tier\":").await.unwrap();
    // 900 bytes, one every 200 ms: still short of the body after 3 minutes.
    let trickle = tokio::spawn(async move {
        for _ in 0..900 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
        panic!("the whole trickle was sent without an answer");
    });
    let (resp, _) = read_until_closed(&mut rd, Duration::from_secs(30)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "got: {resp:?}");
    assert!(resp.contains("invalid_request"), "got: {resp:?}");
    trickle.abort();
}

/// A write blocked on SQLite's write lock (held by another connection for as long as the
/// test likes) answers 504 `deadline_exceeded`, with nothing half-done. The answers come
/// from the deadline, not from the store: SQLite would give up on the lock only after its
/// 5 s busy timeout (an error, not 504), and the configured deadline here is 4 s. A caller's
/// shorter deadline (200 ms) answers while writes under the configured one, sent before
/// it, still wait; a longer one (60 s) is cut to the configured deadline, so it answers 504
/// too instead of meeting the busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_blocked_on_the_database_answers_deadline_exceeded() {
    assert!(shardgate_store::sqlite::BUSY_TIMEOUT > Duration::from_millis(4000));
    let srv = start_with(StoreKind::Sqlite, |c| c.timeouts.request_ms = 4000)
        .await
        .unwrap();
    // A generous client-side deadline: a wait that must end.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
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
    let put = |asked: Option<&'static str>| {
        let mut req = client
            .put(format!("{base}/v1/accounts/acct-1/shards/s"))
            .bearer_auth(&srv.tokens.admin)
            .json(&serde_json::json!({"shard":"aGk="}));
        if let Some(ms) = asked {
            req = req.header("x-shardgate-deadline-ms", ms);
        }
        tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body["error"]["code"].as_str().map(String::from))
        })
    };
    let deadline_exceeded = (
        reqwest::StatusCode::GATEWAY_TIMEOUT,
        Some("deadline_exceeded".to_string()),
    );
    // Under the configured deadline, then asking for a longer one.
    let configured = put(None);
    let longer = put(Some("60000"));
    // A shorter one, asked for after them: answered while they still wait.
    let shorter = put(Some("200")).await.unwrap();
    assert_eq!(shorter, deadline_exceeded, "asked 200 ms");
    assert!(
        !configured.is_finished() && !longer.is_finished(),
        "a write under the configured deadline ended before one asking for 200 ms"
    );
    assert_eq!(configured.await.unwrap(), deadline_exceeded, "configured");
    assert_eq!(longer.await.unwrap(), deadline_exceeded, "asked 60 s");
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
