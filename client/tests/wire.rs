//! What the client puts on the wire and how it retries, against a scripted HTTP peer (the
//! gateway itself is exercised in gateway/tests/client.rs): the headers of every attempt
//! (deadline left, one request id, one idempotency key, the bearer token), retries of safe
//! calls on 503 that wait at least `Retry-After`, no retry of unsafe calls or of final
//! answers, and a batch read cut into `batch_max_items` chunks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use secrecy::SecretString;
use shardgate_client::{BatchItem, Client, Error, ErrorCode, PutOptions, RetryPolicy, ShardBytes};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as the peer saw it: request line, lower-cased headers, body.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer: status, JSON body, extra headers.
type Answer = (u16, &'static str, Vec<(&'static str, &'static str)>);

/// A peer answering each connection's requests from `script` in order (the last answer
/// repeats); what it saw.
async fn peer(script: Vec<Answer>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let (log, script) = (log.clone(), script.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.push(Seen {
                            line: line.trim_end().to_string(),
                            headers,
                            body: String::from_utf8(body).unwrap(),
                        });
                        l.len()
                    };
                    let (status, body, extra) = &script[(n - 1).min(script.len() - 1)];
                    let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: peer\r\n", body.len());
                    for (k, v) in extra {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    resp.push_str(body);
                    w.write_all(resp.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (base, seen)
}

const UNAVAILABLE: &str = r#"{"error":{"code":"store_unavailable","message":"try later"}}"#;
const SHARD: &str = r#"{"shard":"AQID","version":3,"backend":"local"}"#;
const PUT: &str = r#"{"version":1,"backend":"local"}"#;

fn client(base: &str) -> shardgate_client::ClientBuilder {
    Client::builder(base).bearer_token(SecretString::from("tok-123".to_string()))
}

#[tokio::test]
async fn a_read_is_retried_on_503_after_retry_after_with_one_request_id() {
    let (base, seen) = peer(vec![
        (503, UNAVAILABLE, vec![("retry-after", "1")]),
        (200, SHARD, vec![]),
    ])
    .await;
    let c = client(&base)
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let shard = c.get_shard("a", "s", None).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After"
    );
    assert_eq!((shard.bytes.expose(), shard.version), (&[1u8, 2, 3][..], 3));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer tok-123"));
    // The deadline sent is what is left: at most the call's, less on the retry.
    let left: Vec<u64> = seen
        .iter()
        .map(|s| {
            s.header("x-shardgate-deadline-ms")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(left[0] <= 5000 && left[1] <= left[0] - 900, "{left:?}");
}

#[tokio::test]
async fn a_shard_write_carries_one_idempotency_key_across_retries() {
    let (base, seen) = peer(vec![(503, UNAVAILABLE, vec![]), (201, PUT, vec![])]).await;
    let c = client(&base).build().unwrap();
    let put = c
        .put_shard(
            "a",
            "s",
            &ShardBytes::new(vec![9; 4]),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(put.version, 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let key = seen[0].header("idempotency-key").unwrap();
    assert!(!key.is_empty());
    assert_eq!(seen[1].header("idempotency-key"), Some(key));
    assert!(
        seen[0].body.contains(r#""shard":"CQkJCQ==""#),
        "{}",
        seen[0].body
    );
}

#[tokio::test]
async fn an_account_put_is_never_repeated() {
    let (base, seen) = peer(vec![(503, UNAVAILABLE, vec![])]).await;
    let c = client(&base).build().unwrap();
    let err = c.put_account("a", "retail").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::StoreUnavailable));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn final_answers_are_not_retried_and_keep_their_details() {
    let (base, seen) = peer(vec![(
        404,
        r#"{"error":{"code":"shard_not_found","message":"no such shard"}}"#,
        vec![],
    )])
    .await;
    let c = client(&base).build().unwrap();
    let err = c.get_shard("a", "s", None).await.unwrap_err();
    let Error::Api(api) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (api.status, api.code, api.message.as_str()),
        (404, ErrorCode::ShardNotFound, "no such shard")
    );
    assert_eq!(api.request_id.as_deref(), Some("peer"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn retries_stop_at_the_policy_s_attempts() {
    let (base, seen) = peer(vec![(503, UNAVAILABLE, vec![])]).await;
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    };
    let c = client(&base).retry(policy).build().unwrap();
    let err = c.get_account("a").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::StoreUnavailable));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_batch_read_is_cut_into_the_gateway_s_chunks() {
    let two = r#"{"results":[{"shard":"AQ==","version":1,"backend":"local"},{"error":{"code":"shard_not_found","message":"x"}}]}"#;
    let (base, seen) = peer(vec![(200, two, vec![])]).await;
    let c = client(&base).batch_max_items(2).build().unwrap();
    let items: Vec<BatchItem> = (0..4)
        .map(|i| BatchItem::latest("a", format!("s{i}")))
        .collect();
    let results = c.batch_get(&items).await.unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results[3].as_ref().unwrap_err().code,
        ErrorCode::ShardNotFound
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].body.contains(r#""shard":"s2""#) && seen[1].body.contains(r#""shard":"s3""#),
        "{}",
        seen[1].body
    );
    assert!(seen
        .iter()
        .all(|s| s.line.starts_with("POST /v1/shards:batchGet ")));
}

#[tokio::test]
async fn an_unreachable_gateway_is_a_transport_error_within_the_deadline() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(&format!("http://127.0.0.1:{port}"))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = c.get_shard("a", "s", None).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(!format!("{c:?}").contains("tok-123"), "token in Debug");
}
