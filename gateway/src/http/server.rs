//! Serving with real timeouts: `axum::serve` sets no hyper timer, so header-read timeouts
//! never fire with it (DESIGN.md). Each connection is served by hyper's HTTP/1 builder and
//! watched by [`ConnClock`]: a request head must arrive within `header_read_ms` of its first
//! byte, and a connection idle between requests is closed after `keepalive_idle_ms`. (Hyper's
//! own header timer cannot do both: it starts as soon as a connection waits for its next
//! request, so it would close every idle keep-alive connection after `header_read_ms`.)
//! Body-read and whole-request deadlines are enforced in the router (`api::ApiJson`,
//! `api::deadline`). With TLS ([`serve_with_tls`], `crate::http::tls`) the handshake has its own
//! deadline, `header_read_ms`, and the clock then watches the decrypted bytes.
//!
//! At most `[limits] max_connections` connections are open at once: past it the accept loop
//! stops accepting, so new connections wait in the kernel's listen backlog (and the client's
//! connect timeout) until one closes, instead of being accepted and closed at once, which
//! would turn a burst into errors. Every request carries its connection's peer address as
//! an `axum::extract::ConnectInfo<SocketAddr>` extension (the refusal budget's key,
//! `crate::http::refusals`).

use crate::http::settings::Timeouts;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

/// Serve `app` on `listener` (plain HTTP, the default `[limits] max_connections`) until
/// `shutdown` resolves, then let requests in flight finish (up to
/// `timeouts.shutdown_grace_ms`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: &Timeouts,
    shutdown: impl Future<Output = ()>,
) {
    let max = crate::http::settings::Limits::default().max_connections;
    serve_with_tls(listener, app, timeouts, max, None, shutdown).await;
}

/// How often at most the accept loop warns that it is at `max_connections`.
const CAP_WARN_EVERY: Duration = Duration::from_secs(60);

/// [`serve`] with at most `max_connections` connections open at once, over TLS when `tls`
/// is given: each connection's handshake (with the settings in force when it was accepted)
/// must finish within `timeouts.header_read_ms`, and a verified client certificate rides
/// along with each of its requests as a [`crate::http::tls::PeerCertificate`] extension.
pub async fn serve_with_tls(
    listener: TcpListener,
    app: Router,
    timeouts: &Timeouts,
    max_connections: usize,
    tls: Option<crate::http::tls::Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(timeouts.header_read_ms);
    let idle_timeout = Duration::from_millis(timeouts.keepalive_idle_ms);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A free slot first: at the cap, nothing is accepted until a connection closes.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
                    tracing::warn!(
                        max_connections,
                        "connection cap reached; new connections wait until one closes"
                    );
                    warned = Some(Instant::now());
                }
                metrics::counter!("shardgate_connections_at_cap_total").increment(1);
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    app: app.clone(),
                    addr,
                    _slot: slot,
                    // Held from accept on: a shutdown waits for this connection, handshake
                    // included (bounded by the handshake timeout and the grace period).
                    watcher: graceful.watcher(),
                    header_timeout,
                    idle_timeout,
                };
                match &tls {
                    None => {
                        tokio::spawn(conn.serve(stream, None));
                    }
                    Some(tls) => {
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let handshake = tls.acceptor().accept(stream);
                            match tokio::time::timeout(header_timeout, handshake).await {
                                Ok(Ok(stream)) => {
                                    let peer = tls.peer(stream.get_ref().1);
                                    conn.serve(stream, peer).await;
                                }
                                Ok(Err(e)) => {
                                    // Scanners and misconfigured clients: debug, and counted.
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    metrics::counter!("shardgate_tls_handshake_failures_total", "reason" => "refused").increment(1);
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    metrics::counter!("shardgate_tls_handshake_failures_total", "reason" => "timeout").increment(1);
                                }
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    let grace = Duration::from_millis(timeouts.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period passed with connections still open");
    }
}

/// One accepted connection, before it is served.
struct Conn {
    app: Router,
    /// The client's address.
    addr: SocketAddr,
    /// Its place under `max_connections`, given back when the connection ends.
    _slot: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Conn {
    /// Serve HTTP/1.1 on `io` until the client closes, a timer closes it, or shutdown.
    async fn serve<S>(self, io: S, peer: Option<crate::http::tls::PeerCertificate>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            addr,
            _slot,
            watcher,
            header_timeout,
            idle_timeout,
        } = self;
        let clock = Arc::new(ConnClock::new());
        let svc = {
            let clock = clock.clone();
            tower::service_fn(
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    let busy = clock.request_started();
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    if let Some(peer) = &peer {
                        req.extensions_mut().insert(peer.clone());
                    }
                    let app = app.clone();
                    async move {
                        let r = app.oneshot(req).await;
                        drop(busy);
                        r
                    }
                },
            )
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        let io = TokioIo::new(Watched {
            inner: io,
            clock: clock.clone(),
        });
        let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
        let conn = watcher.watch(conn);
        tokio::pin!(conn);
        loop {
            let wake = clock.next_check(header_timeout, idle_timeout);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                    break;
                }
                () = clock.changed.notified() => {}
                () = tokio::time::sleep_until(wake.into()) => {
                    if let Some(why) = clock.expired(header_timeout, idle_timeout) {
                        // Dropping the connection closes it; no request is in flight.
                        tracing::debug!(reason = why, "connection closed by its timer");
                        break;
                    }
                }
            }
        }
    }
}

/// No request head has started arriving.
const NO_HEAD: u64 = u64::MAX;

/// What a connection's timer needs to know: when bytes last arrived, when the current request
/// head began (its first byte while no request was in flight), how many requests are in
/// flight. Times are milliseconds since the connection was accepted.
struct ConnClock {
    start: Instant,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    in_flight: AtomicUsize,
    /// A head began or a request ended: the timer's next check moves.
    changed: tokio::sync::Notify,
}

/// Marks a request in flight until dropped (also when the request is cancelled).
struct Busy(Arc<ConnClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

impl ConnClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            in_flight: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived: the first ones while nothing is in flight start a request head.
    fn read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let began = self
                .head_since
                .compare_exchange(NO_HEAD, self.now(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if began {
                self.changed.notify_one();
            }
        }
    }

    /// Hyper parsed a head and called the service.
    fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NO_HEAD, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When to look again.
    fn next_check(&self, header: Duration, idle: Duration) -> Instant {
        let now = Instant::now();
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            // The request's own deadline bounds it; look again later.
            return now + header.max(Duration::from_millis(100));
        }
        match self.head_since.load(Ordering::SeqCst) {
            NO_HEAD => self.at(self.idle_since.load(Ordering::SeqCst)) + idle,
            since => self.at(since) + header,
        }
        .max(now + Duration::from_millis(1))
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, header: Duration, idle: Duration) -> Option<&'static str> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = Instant::now();
        match self.head_since.load(Ordering::SeqCst) {
            NO_HEAD => (now >= self.at(self.idle_since.load(Ordering::SeqCst)) + idle)
                .then_some("keep-alive idle timeout"),
            since => (now >= self.at(since) + header).then_some("header read timeout"),
        }
    }
}

/// The connection's stream (the socket, or the TLS stream over it: bytes counted are
/// plaintext), telling its [`ConnClock`] when bytes arrive.
struct Watched<S> {
    inner: S,
    clock: Arc<ConnClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
