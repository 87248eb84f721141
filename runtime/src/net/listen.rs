//! listen: the serving port's connections, from accept to close, before any request reaches
//! [`crate::front::rest`]: HTTP/1.1 and HTTP/2 on one port (h2c, or TLS with both by ALPN, see
//! [`crate::net::tls`]), the limits that keep careless and hostile clients from holding the
//! server's connections, and the drain at shutdown.
//!
//! | limit | default | past it |
//! |---|---|---|
//! | headers of a request (HTTP/1), first request of a connection (both), TLS handshake included | 10 s | the connection is closed |
//! | idle keep-alive connection (no request in flight) | 75 s | closed gracefully (HTTP/2: GOAWAY) |
//! | pause while a request body arrives | 60 s | 408, the connection closed |
//! | open connections | 4096, kept under the process's file limit | new connections closed at once, counted |
//! | HTTP/2 streams at once per connection | 100 | the client waits (SETTINGS) |
//! | request bodies in flight, 3 times their size ([`crate::net::budget`]) | 1 GiB | 503 with `Retry-After`, the body unread |
//!
//! The defaults are Envoy's edge guidance for the header deadline (10 s, where nginx waits
//! 60 s), nginx's for the idle keep-alive (75 s: longer than the 60 s after which the usual
//! proxies in front close theirs, so a proxy never sends on a connection being closed) and
//! the body (`client_body_timeout` 60 s), and Envoy's and nginx's for HTTP/2 streams (100,
//! 128). HTTP/2 also keeps hyper's protections against reset floods, set here explicitly:
//! at most 20 streams reset by the client before the server accepts them (CVE-2023-44487)
//! and 1024 reset by the server for protocol errors, a 16 KiB header list, and a ping every
//! 20 s that closes a connection whose peer stopped answering.

use crate::error::Error;
use crate::net::budget::{Budget, Charged, Refused};
use crate::observe::metrics::ConnectionMetrics;
use axum::Router;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// What a connection may take: the serve command's `--header-timeout-secs`,
/// `--idle-timeout-secs`, `--body-timeout-secs`, `--max-connections` and
/// `--http2-max-streams`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The first request of a connection (after its TLS handshake, if any) must have arrived,
    /// and on HTTP/1 every later request's headers must have, within this of its first byte.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Longest pause between two parts of a request body (408 past it).
    pub body_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams (requests) at once on one connection.
    pub http2_max_streams: u32,
    /// What request bodies in flight may hold, all together (see [`crate::net::budget`]).
    pub request_memory: usize,
    /// The paths of gRPC calls that last as long as their client, their body a message per
    /// request (the front ends name them): each charged per message against
    /// `request_memory`, with no deadline between messages.
    pub streams: &'static [&'static str],
}

/// File descriptors kept for everything but connections (model files, the cache, logs).
const RESERVED_FILES: u64 = 256;

impl Limits {
    /// The connection cap, lowered to what the process may open (its `nofile` limit less
    /// what models and caches need), with a warning when that lowers it.
    fn connection_cap(&self) -> usize {
        #[cfg(unix)]
        if let Some(files) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            let fit = files.saturating_sub(RESERVED_FILES).max(1) as usize;
            if fit < self.max_connections {
                tracing::warn!(
                    "--max-connections {} is more than the process may open (nofile {files}): at most {fit} \
                     connections (raise `ulimit -n` for more)",
                    self.max_connections
                );
                return fit;
            }
        }
        self.max_connections
    }
}

/// Serve `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then stop
/// accepting, let each connection finish what it has in flight (HTTP/2: GOAWAY) and return
/// once all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(16 << 10)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let permits = Arc::new(Semaphore::new(limits.connection_cap()));
    let budget = Budget::new(limits.request_memory, metrics.request_memory.clone());
    // Each connection holds a receiver; `closed()` tells when the last one has gone.
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum::serve does.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tracing::debug!(%peer, "connection refused: --max-connections are open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            budget: budget.clone(),
            limits,
            metrics: metrics.clone(),
            stop: stopped.clone(),
            activity: Arc::new(Activity::new()),
        };
        let (acceptor, metrics) = (acceptor.clone(), metrics.clone());
        tokio::spawn(async move {
            metrics.open.inc();
            match acceptor {
                Some(acceptor) => {
                    let deadline = connection.activity.started + limits.header_timeout;
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection.run(tls).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => {
                            metrics.timed_out(HEADERS);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
                None => connection.run(tcp).await,
            }
            metrics.open.dec();
            drop(permit);
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(stopped);
    stop.closed().await;
    Ok(())
}

/// The phase a connection timed out in, as the metric labels it.
const HEADERS: &str = "headers";
const IDLE: &str = "idle";

/// One accepted connection and what it needs to serve.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    budget: Budget,
    limits: Limits,
    metrics: ConnectionMetrics,
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
}

impl Connection {
    /// Serve requests on `io` until the client closes, a deadline passes, or the server
    /// stops.
    async fn run<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut self, io: I) {
        let (app, activity, body_timeout, streams) =
            (self.app.clone(), self.activity.clone(), self.limits.body_timeout, self.limits.streams);
        let (budget, metrics) = (self.budget.clone(), self.metrics.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = activity.request_started(request.version());
            let declared = request
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let stream = streams.contains(&request.uri().path());
            let charged = budget.charge(declared).map(|charge| {
                request.map(|body| match stream {
                    // Its client sends when it has something to send: no deadline between.
                    true => {
                        tower_http::timeout::TimeoutBody::new(Duration::MAX, Charged::messages(body, charge))
                    }
                    false => {
                        let body = Charged::new(body, charge, declared.is_some());
                        tower_http::timeout::TimeoutBody::new(body_timeout, body)
                    }
                })
            });
            let (app, metrics) = (app.clone(), metrics.clone());
            async move {
                let answer = match charged {
                    Ok(request) => app.oneshot(request).await,
                    // Refused before its body is read.
                    Err(refused) => {
                        metrics.memory_refused.inc();
                        crate::allocator::trim_soon();
                        Ok(match refused {
                            Refused::Busy(m) => Error::OverBudget(m),
                            Refused::TooLarge(m) => Error::TooLarge(m),
                        }
                        .into_response())
                    }
                };
                drop(in_flight);
                answer
            }
        });
        let io = TokioIo::new(Watched { io, activity: self.activity.clone() });
        let connection = self.builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut closing = false;
        // Closed for idleness: an HTTP/2 client that does not answer the GOAWAY's ping within
        // the header deadline is cut off.
        let mut cut_off: Option<Instant> = None;
        loop {
            let deadline = match (closing, cut_off) {
                (false, _) => self.activity.deadline(&self.limits).map(|(at, _)| at),
                (true, at) => at,
            };
            let changed = self.activity.changed.notified();
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!("connection ended: {e}");
                    }
                    return;
                }
                _ = self.stop.changed(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = changed => {}
                _ = sleep_until(deadline) => {
                    if closing {
                        return;
                    }
                    match self.activity.deadline(&self.limits) {
                        Some((at, phase)) if at <= Instant::now() => {
                            self.metrics.timed_out(phase);
                            if phase == HEADERS {
                                // Nothing was asked yet: nothing to finish.
                                return;
                            }
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                            cut_off = Some(Instant::now() + self.limits.header_timeout);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, as the deadlines need it.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    http2: AtomicBool,
    /// HTTP/1: bytes of a new request arrived while no request was in flight.
    reading_headers: AtomicBool,
    /// Milliseconds after `started` of the last change the deadlines count from: the last
    /// request finished, or the first byte of the next arrived.
    since_ms: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            reading_headers: AtomicBool::new(false),
            since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn mark(&self) {
        self.since_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// The next deadline and the phase it ends, if any (none while a request is in flight:
    /// the request's own time limits apply then).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return Some((self.started + limits.header_timeout, HEADERS));
        }
        let since = self.started + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        if self.reading_headers.load(Ordering::Acquire) && !self.http2.load(Ordering::Relaxed) {
            return Some((since + limits.header_timeout, HEADERS));
        }
        Some((since + limits.idle_timeout, IDLE))
    }

    /// A request's headers have arrived; it is in flight until the guard drops.
    fn request_started(self: &Arc<Self>, version: hyper::Version) -> InFlight {
        if version == hyper::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.reading_headers.store(false, Ordering::Release);
        InFlight(self.clone())
    }

    /// Bytes arrived.
    fn read(&self) {
        if self.http2.load(Ordering::Relaxed) {
            // Pings and window updates: only requests count on HTTP/2.
            return;
        }
        let idle = self.in_flight.load(Ordering::Acquire) == 0 && self.requests.load(Ordering::Acquire) > 0;
        if idle && !self.reading_headers.swap(true, Ordering::AcqRel) {
            self.mark();
        }
    }
}

/// A request in flight on its connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.mark();
    }
}

/// A connection's socket (or TLS stream) that tells its [`Activity`] when bytes arrive.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
