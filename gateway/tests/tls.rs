//! TLS and mutual TLS on the real binary (`shardgate serve` as a child process), with a CA,
//! server and client certificates made here with `rcgen`, and a real TLS client (rustls via
//! tokio-rustls, HTTP/1.1 via hyper's client, one connection per [`Conn`]).
//!
//! Pinned: plain HTTP to the TLS port gets no HTTP answer; without a client certificate, or
//! with one from another CA, no request gets through when certificates are required; a
//! mapped certificate is its identity with exactly its scopes (403 beyond them); an unmapped
//! one is 401 unless a bearer token comes with it; a mapped one with a token as well is 401;
//! a connection that never finishes its handshake is closed; and SIGHUP swaps in new
//! certificates for new connections while an open keep-alive connection keeps working, keeps
//! the old settings when the new files are bad, and applies a removed `[[tls.clients]]`
//! entry to open connections from their next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Bytes;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::Tokens;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use shardgate::app::config::{ClientAuth, Config, TlsClientConfig, TlsConfig};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------------------------------
// Certificates
// ------------------------------------------------------------------------------------------

/// A certificate authority made for the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(&self, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `localhost` (what the client dials).
    fn server(&self, cn: &str) -> Leaf {
        let sans = vec![SanType::DnsName("localhost".try_into().unwrap())];
        let leaf = self.leaf(cn, sans, ExtendedKeyUsagePurpose::ServerAuth);
        // The secret scan proves no log line ever holds the server's key.
        let longest = leaf.key_pem.lines().max_by_key(|l| l.len()).unwrap();
        common::plant(longest);
        leaf
    }

    fn client(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
        self.leaf(cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(name: &str) -> SanType {
    SanType::URI(name.try_into().unwrap())
}

/// Write a certificate and key where the gateway reads them (the key 0600), each by rename
/// so a reload never sees half a file.
fn install(leaf: &Leaf, cert_file: &Path, key_file: &Path) {
    let tmp = cert_file.with_extension("tmp");
    std::fs::write(&tmp, &leaf.cert_pem).unwrap();
    std::fs::rename(&tmp, cert_file).unwrap();
    let tmp = key_file.with_extension("tmp");
    shardgate::domain::files::write_private(&tmp, leaf.key_pem.as_bytes()).unwrap();
    std::fs::rename(&tmp, key_file).unwrap();
}

// ------------------------------------------------------------------------------------------
// The client
// ------------------------------------------------------------------------------------------

/// A rustls client trusting `ca`, presenting `cert` when given.
fn client_config(ca: &Ca, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One TLS connection carrying HTTP/1.1 requests one after another (keep-alive).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The task driving the connection: how it ended says why a request failed (e.g. the
    /// server's TLS alert).
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    /// The certificate the server presented.
    server_cert: CertificateDer<'static>,
}

async fn connect(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    Ok(Conn {
        sender,
        driver,
        server_cert,
    })
}

/// An error with its sources, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

impl Conn {
    /// A request on this connection: the status and the JSON body (`Null` when not JSON).
    /// On failure, why: the request's error and how the connection ended.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        match self.request(method, path, token, body).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let ended =
                    match tokio::time::timeout(Duration::from_secs(5), &mut self.driver).await {
                        Ok(Ok(Err(conn))) => chain(&conn),
                        Ok(Ok(Ok(()))) => "closed".into(),
                        Ok(Err(join)) => join.to_string(),
                        Err(_) => "still open".into(),
                    };
                Err(format!("{e} (connection: {ended})"))
            }
        }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        self.sender.ready().await.map_err(|e| chain(&e))?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), self.sender.send_request(req))
            .await
            .map_err(|_| "no answer in 20 s".to_string())?
            .map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// One request on a new connection; `Err` when the handshake or the request fails.
async fn once(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut conn = tokio::time::timeout(Duration::from_secs(20), connect(addr, cfg))
        .await
        .map_err(|_| "no handshake in 20 s".to_string())??;
    conn.send(method, path, token, None).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// The gateway
// ------------------------------------------------------------------------------------------

/// A `shardgate serve` child with TLS, killed on drop.
struct Gateway {
    child: Child,
    /// host:port.
    addr: String,
    config_file: PathBuf,
    stderr_log: PathBuf,
}

impl Gateway {
    fn start(cfg: &Config, dir: &Path, name: &str) -> Self {
        let logs = common::log_dir("tls");
        let config_file = dir.join("shardgate.toml");
        common::write_config(cfg, &config_file);
        let stderr_log = logs.join(format!("{name}.stderr.log"));
        let mut child = Command::new(common::shardgate_bin())
            .args(["serve", "--config", config_file.to_str().unwrap()])
            .env_remove("SHARDGATE_TEST_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("gateway did not start");
        let addr = url
            .strip_prefix("https://")
            .unwrap_or_else(|| panic!("a TLS gateway announces https://, not {url}"))
            .to_string();
        Self {
            child,
            addr,
            config_file,
            stderr_log,
        }
    }

    fn rewrite_config(&self, cfg: &Config) {
        let tmp = self.config_file.with_extension("tmp");
        common::write_config(cfg, &tmp);
        std::fs::rename(&tmp, &self.config_file).unwrap();
    }

    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.stderr_log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's files and a config with `[tls]` over them.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    tokens: Tokens,
    ca: Ca,
    cert_file: PathBuf,
    key_file: PathBuf,
    cfg: Config,
}

fn client_entry(name: &str, scopes: &[&str], prefix: Option<&str>) -> TlsClientConfig {
    TlsClientConfig {
        name: name.into(),
        subject_cn: None,
        dns: None,
        uri: None,
        email: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        account_prefix: prefix.map(String::from),
    }
}

/// The identities of the tests: `signer` by CN (accounts and shards, no admin or metrics,
/// accounts `acct-s*` only), `reader` by DNS SAN (shards:read), `ops` by URI SAN (all).
fn clients() -> Vec<TlsClientConfig> {
    vec![
        TlsClientConfig {
            subject_cn: Some("signer".into()),
            ..client_entry(
                "signer",
                &[
                    "accounts:read",
                    "accounts:write",
                    "shards:read",
                    "shards:write",
                ],
                Some("acct-s"),
            )
        },
        TlsClientConfig {
            dns: Some("reader.svc.internal".into()),
            ..client_entry("reader", &["shards:read"], None)
        },
        TlsClientConfig {
            uri: Some("spiffe://shardgate.test/ops".into()),
            ..client_entry("ops", &["*"], None)
        },
    ]
}

fn setup(client_ca: bool, client_auth: Option<ClientAuth>) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tokens = Tokens::new();
    let mut cfg = common::config(
        &dir,
        &shardgate::app::config::sqlite_url(&dir.join("test.db")),
        &tokens,
    );
    cfg.timeouts.header_read_ms = 1500;
    let ca = Ca::new("shardgate test CA");
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    install(&ca.server("gateway-1"), &cert_file, &key_file);
    let ca_file = dir.join("clients-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    cfg.tls = Some(TlsConfig {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: client_ca.then_some(ca_file),
        client_auth,
        clients: if client_ca { clients() } else { Vec::new() },
    });
    Setup {
        _dir: tmp,
        dir,
        tokens,
        ca,
        cert_file,
        key_file,
        cfg,
    }
}

/// Wait for `done` (polled every 50 ms) for at most 30 s: a wait that must end.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_map_to_identities_with_their_scopes() {
    let s = setup(true, None);
    let gw = Gateway::start(&s.cfg, &s.dir, "required");
    let addr = gw.addr.as_str();

    // Plain HTTP to the TLS port: no HTTP answer, the connection ends.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("the TLS port kept a plain-HTTP connection open");
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP got an HTTP answer");

    // No client certificate, or one from another CA (with a mapped CN): nothing gets through.
    let err = once(addr, client_config(&s.ca, None), "GET", "/healthz", None)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    let other_ca = Ca::new("another CA");
    let forged = other_ca.client("signer", vec![]);
    let err = once(
        addr,
        client_config(&s.ca, Some(&forged)),
        "GET",
        "/healthz",
        None,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );

    // `signer` (by CN): its scopes, its accounts, and nothing more, on one connection.
    let signer = s.ca.client("signer", vec![]);
    let mut conn = connect(addr, client_config(&s.ca, Some(&signer)))
        .await
        .unwrap();
    let (st, _) = conn
        .send(
            "PUT",
            "/v1/accounts/acct-s1",
            None,
            Some(json!({"tier": "retail"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);
    let shard = B64.encode(b"shard bytes over mutual TLS");
    let (st, body) = conn
        .send(
            "PUT",
            "/v1/accounts/acct-s1/shards/s0",
            None,
            Some(json!({"shard": shard})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{body}");
    let (st, body) = conn
        .send("GET", "/v1/accounts/acct-s1/shards/s0", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(body["shard"], shard);
    let job = uuid::Uuid::new_v4();
    let (st, body) = conn
        .send("GET", &format!("/v1/admin/migrations/{job}"), None, None)
        .await
        .unwrap();
    assert_eq!((st, code(&body)), (403, "forbidden"), "{body}");
    let (st, body) = conn.send("GET", "/metrics", None, None).await.unwrap();
    assert_eq!((st, code(&body)), (403, "forbidden"));
    let (st, body) = conn
        .send(
            "PUT",
            "/v1/accounts/other-1",
            None,
            Some(json!({"tier": "retail"})),
        )
        .await
        .unwrap();
    assert_eq!((st, code(&body)), (403, "forbidden"), "{body}");
    // A token as well as a mapped certificate: two credentials, refused whatever the token.
    let (st, body) = conn
        .send("GET", "/v1/accounts/acct-s1", Some(&s.tokens.admin), None)
        .await
        .unwrap();
    assert_eq!((st, code(&body)), (401, "unauthenticated"), "{body}");
    let (st, _) = conn
        .send("GET", "/v1/accounts/acct-s1", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);

    // `reader` (by DNS SAN, whatever its CN): reads, never writes.
    let reader =
        s.ca.client("reader-cn-is-not-mapped", vec![dns("Reader.svc.internal")]);
    let reader = client_config(&s.ca, Some(&reader));
    let (st, body) = once(
        addr,
        reader.clone(),
        "GET",
        "/v1/accounts/acct-s1/shards/s0",
        None,
    )
    .await
    .unwrap();
    assert_eq!((st, body["shard"].as_str()), (200, Some(shard.as_str())));
    let (st, body) = once(
        addr,
        reader,
        "DELETE",
        "/v1/accounts/acct-s1/shards/s0",
        None,
    )
    .await
    .unwrap();
    assert_eq!((st, code(&body)), (403, "forbidden"));

    // `ops` (by URI SAN): every scope.
    let ops = s.ca.client("ops", vec![uri("spiffe://shardgate.test/ops")]);
    let (st, _) = once(
        addr,
        client_config(&s.ca, Some(&ops)),
        "GET",
        "/metrics",
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200);

    // A verified certificate no entry maps: 401 alone, the token's identity with a token.
    let stranger = client_config(&s.ca, Some(&s.ca.client("stranger", vec![])));
    let (st, body) = once(addr, stranger.clone(), "GET", "/v1/accounts/acct-s1", None)
        .await
        .unwrap();
    assert_eq!((st, code(&body)), (401, "unauthenticated"), "{body}");
    let (st, _) = once(
        addr,
        stranger.clone(),
        "GET",
        "/v1/accounts/acct-s1",
        Some(&s.tokens.reader),
    )
    .await
    .unwrap();
    // `reader` the token holds shards:read only.
    assert_eq!(st, 403);
    let (st, _) = once(
        addr,
        stranger,
        "GET",
        "/v1/accounts/acct-s1",
        Some(&s.tokens.admin),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);

    // A connection that never finishes a handshake is closed (timeouts.header_read_ms).
    let start = Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("a silent connection was kept open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_token_clients_in() {
    let s = setup(true, Some(ClientAuth::Optional));
    let gw = Gateway::start(&s.cfg, &s.dir, "optional");
    let addr = gw.addr.as_str();
    let anonymous = client_config(&s.ca, None);
    let (st, body) = once(addr, anonymous.clone(), "GET", "/v1/accounts/acct-x", None)
        .await
        .unwrap();
    assert_eq!((st, code(&body)), (401, "unauthenticated"));
    let (st, body) = once(
        addr,
        anonymous,
        "GET",
        "/v1/accounts/acct-x",
        Some(&s.tokens.admin),
    )
    .await
    .unwrap();
    assert_eq!((st, code(&body)), (404, "account_not_found"));
    let signer = s.ca.client("signer", vec![]);
    let (st, _) = once(
        addr,
        client_config(&s.ca, Some(&signer)),
        "GET",
        "/v1/accounts/acct-sx",
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 404);
    // Optional is not "unverified": a certificate from another CA still fails.
    let forged = Ca::new("another CA").client("signer", vec![]);
    assert!(once(
        addr,
        client_config(&s.ca, Some(&forged)),
        "GET",
        "/healthz",
        None
    )
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates_authenticates_by_token() {
    let s = setup(false, None);
    let gw = Gateway::start(&s.cfg, &s.dir, "server-only");
    let addr = gw.addr.as_str();
    // A client certificate is not asked for, so it counts for nothing.
    let signer = client_config(&s.ca, Some(&s.ca.client("signer", vec![])));
    let (st, _) = once(addr, signer.clone(), "GET", "/v1/accounts/acct-s1", None)
        .await
        .unwrap();
    assert_eq!(st, 401);
    let (st, _) = once(
        addr,
        signer,
        "GET",
        "/v1/accounts/acct-s1",
        Some(&s.tokens.admin),
    )
    .await
    .unwrap();
    assert_eq!(st, 404);
    // A client that does not trust the server's CA refuses the server.
    let other = Ca::new("another CA");
    let err = once(addr, client_config(&other, None), "GET", "/healthz", None)
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_open_connections() {
    let s = setup(true, None);
    let mut gw = Gateway::start(&s.cfg, &s.dir, "reload");
    let addr = gw.addr.clone();
    let signer = client_config(&s.ca, Some(&s.ca.client("signer", vec![])));

    let mut open = connect(&addr, signer.clone()).await.unwrap();
    let first_cert = open.server_cert.clone();
    let (st, _) = open
        .send(
            "PUT",
            "/v1/accounts/acct-s1",
            None,
            Some(json!({"tier": "retail"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201);

    // New certificate and key; SIGHUP; new connections get the new certificate.
    let second = s.ca.server("gateway-2");
    install(&second, &s.cert_file, &s.key_file);
    gw.hangup();
    eventually("the new server certificate", || {
        let (addr, signer, want) = (addr.clone(), signer.clone(), second.der.clone());
        async move {
            match connect(&addr, signer).await {
                Ok(c) => c.server_cert == want,
                Err(_) => false,
            }
        }
    })
    .await;
    // The connection opened before the reload still serves requests (keep-alive).
    assert_eq!(open.server_cert, first_cert);
    let (st, _) = open
        .send("GET", "/v1/accounts/acct-s1", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    let mut fresh = connect(&addr, signer.clone()).await.unwrap();
    assert_eq!(fresh.server_cert, second.der);
    let (st, _) = fresh
        .send("GET", "/v1/accounts/acct-s1", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);

    // A bad file: the reload fails, is logged, and the settings in force stay.
    std::fs::write(&s.cert_file, "not a certificate\n").unwrap();
    let failed_before = gw.log_count("TLS reload failed");
    gw.hangup();
    eventually("the failed reload in the log", || {
        let n = gw.log_count("TLS reload failed");
        async move { n > failed_before }
    })
    .await;
    assert!(gw.alive(), "a bad certificate file stopped the gateway");
    let c = connect(&addr, signer.clone()).await.unwrap();
    assert_eq!(c.server_cert, second.der);
    // A key file others may read is refused the same way.
    install(&second, &s.cert_file, &s.key_file);
    std::fs::set_permissions(
        &s.key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let failed_before = gw.log_count("TLS reload failed");
    gw.hangup();
    eventually("the refused key file in the log", || {
        let n = gw.log_count("TLS reload failed");
        async move { n > failed_before }
    })
    .await;
    assert!(gw.log_count("chmod 600") > 0);
    let (st, _) = open
        .send("GET", "/v1/accounts/acct-s1", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);

    // Removing `signer` from [[tls.clients]] and reloading shuts it out, on the connection
    // it already has open too (from its next request), while `ops` comes in.
    install(&second, &s.cert_file, &s.key_file);
    let mut cfg = s.cfg.clone();
    cfg.tls
        .as_mut()
        .unwrap()
        .clients
        .retain(|c| c.name != "signer");
    gw.rewrite_config(&cfg);
    gw.hangup();
    let mut last = (0, Value::Null);
    for _ in 0..300 {
        last = open
            .send("GET", "/v1/accounts/acct-s1", None, None)
            .await
            .unwrap();
        if last.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (last.0, code(&last.1)),
        (401, "unauthenticated"),
        "{}",
        last.1
    );
    let ops = client_config(
        &s.ca,
        Some(&s.ca.client("ops", vec![uri("spiffe://shardgate.test/ops")])),
    );
    let (st, _) = once(&addr, ops, "GET", "/v1/accounts/acct-s1", None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert!(gw.alive());
}

#[test]
fn serve_refuses_to_start_with_a_key_file_others_may_read() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(true, None);
    std::fs::set_permissions(&s.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config_file = s.dir.join("shardgate.toml");
    common::write_config(&s.cfg, &config_file);
    let out = Command::new(common::shardgate_bin())
        .args(["serve", "--config", config_file.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    common::keep_output(&common::log_dir("tls"), "bad-key-mode", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("server.key") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // A certificate file without a certificate stops start-up the same way.
    std::fs::set_permissions(&s.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&s.cert_file, "").unwrap();
    let out = Command::new(common::shardgate_bin())
        .args(["serve", "--config", config_file.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no PEM CERTIFICATE"), "{stderr}");
}

/// The Rust client over mutual TLS: it trusts the test CA, presents `signer`'s certificate
/// and gets that identity's scopes; without a certificate it gets no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_speaks_mutual_tls_as_its_certificate_s_identity() {
    use shardgate_client::{Client, Error, ErrorCode, PutOptions, RetryPolicy, ShardBytes};
    let s = setup(true, None);
    let gw = Gateway::start(&s.cfg, &s.dir, "rust-client");
    let port = gw.addr.rsplit(':').next().unwrap();
    let base = format!("https://localhost:{port}");
    let signer = s.ca.client("signer", vec![]);
    let key = zeroize::Zeroizing::new(signer.key_pem.clone().into_bytes());
    let c = Client::builder(&base)
        .ca_pem(s.ca.pem.clone())
        .client_identity_pem(signer.cert_pem.clone(), key)
        .build()
        .unwrap();
    c.put_account("acct-s-client", "retail").await.unwrap();
    let bytes = ShardBytes::new(b"over mutual TLS, by the client".to_vec());
    let put = c
        .put_shard("acct-s-client", "s0", &bytes, PutOptions::default())
        .await
        .unwrap();
    let got = c.get_shard("acct-s-client", "s0", None).await.unwrap();
    assert_eq!((got.bytes, got.version), (bytes, put.version));
    // Beyond the certificate's scopes and accounts: refused as that identity.
    let err = c.list_keys().await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Forbidden), "{err}");
    let err = c.put_account("acct-other", "retail").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Forbidden), "{err}");

    let anonymous = Client::builder(&base)
        .ca_pem(s.ca.pem.clone())
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let err = anonymous
        .get_shard("acct-s-client", "s0", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
}
