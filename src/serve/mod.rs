//! Accepting connections and serving the application on them, in plain HTTP
//! (HTTP/1.1 and h2c) and, through [`tls`], over TLS: TCP_NODELAY, the
//! peer address for handlers (`ConnectInfo`: the login limiter counts
//! failures per client address), zero-copy blob downloads on plain HTTP/1.1
//! ([`zero_copy`]), graceful shutdown bounded by `shutdown_grace`.
//!
//! Every stage a client paces is bounded ([`conn`]: TLS handshake, request
//! head, request body, stalled response, idle keep-alive, drain), and so is
//! the number of connections: at most [`connection_cap`] of the descriptor
//! limit (or `max_connections`); at the cap, the connection idle longest is
//! closed for the new one, else the one whose client has held up its
//! request longest (trickling a body, not reading a response), so idle or
//! slow clients cannot lock others out.
//!
//! This is the transport under the application: it takes any axum `Router`
//! and tells handlers about the connection only through the request
//! extensions `http::connection` defines (`ConnectInfo`, `OverTls`,
//! `SendFile`). `http` never imports from here.

pub(crate) mod conn;
mod linger;
pub mod tls;
pub mod zero_copy;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServerConfig;
use conn::{Activity, Ended, Monitored, TimedBody, TrackedBody, Watch};
use linger::Reclaim;
use zero_copy::ZeroCopyStream;

/// Descriptors kept back from connections for everything else: the
/// listener, the journal, logs, the blocking pool's files.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How long a request must have waited on its client alone before, at the
/// cap, its connection may be closed for a new one. A client that sends or
/// reads steadily waits milliseconds between pieces; one that paces itself
/// to hold a place waits most of `body_timeout`.
const STALLED_AT_THE_CAP: Duration = Duration::from_secs(1);

/// How often a full server says that it refuses connections.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Connections served at once under a descriptor limit of `limit`: each
/// connection may need a file beside its socket (a blob being sent, an
/// upload being written), so half of what is left after the reserve.
pub fn connection_cap(limit: u64) -> usize {
    let cap = limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(cap).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft limit on open descriptors to the hard one (`berth
/// serve` does this first) and logs the outcome; returns the limit in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let (before, hard) = crate::sys::open_files_limit()?;
    let now = crate::sys::raise_open_files_limit()?;
    tracing::info!(
        open_files_limit = now,
        was = before,
        hard,
        connection_cap = connection_cap(now),
        "open files limit"
    );
    Ok(now)
}

/// The connection cap `limits` asks for, else the one the descriptor limit
/// in force allows.
fn configured_cap(limits: &ServerConfig) -> usize {
    limits.max_connections.unwrap_or_else(|| {
        let limit = crate::sys::open_files_limit().map_or(1024, |(soft, _)| soft);
        connection_cap(limit)
    })
}

/// Serves `app` over TLS with `tls`, or in plain HTTP without, until
/// `shutdown` completes; then lets in-flight requests finish within
/// `limits.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        Some(tls) => tls::serve_tls(listener, app, tls, limits, shutdown).await,
        None => serve(listener, app, limits, shutdown).await,
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder both transports use.
fn builder(limits: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Hyper's head timer is off (with a timer set it would default to 30 s
    // from the end of each response, cutting idle keep-alive connections at
    // the head timeout): `conn` bounds heads and idle time for both
    // protocols and for the protocol sniff hyper's timer does not cover.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that vanished while a long request runs.
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout)
        // nginx's http2_max_concurrent_streams; each stream may hold a file.
        .max_concurrent_streams(128)
        // A request head (bearer tokens included) fits in 64 KiB.
        .max_header_list_size(64 * 1024);
    builder
}

/// The service for one connection's requests: each request is counted in
/// flight until its response body is dropped, its body is bounded by
/// `body_timeout`, and `extend` adds the connection's extensions.
fn service(
    app: Router,
    activity: Arc<Activity>,
    limits: &ServerConfig,
    extend: impl Fn(&mut hyper::http::Extensions, hyper::Version) + Clone + Send + 'static,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<TrackedBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<TrackedBody>, std::convert::Infallible>> + Send,
> + Clone {
    let body_timeout = limits.body_timeout;
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = activity.request_started(request.version());
        let (mut parts, body) = request.into_parts();
        extend(&mut parts.extensions, parts.version);
        let request =
            hyper::Request::from_parts(parts, TimedBody::new(body, body_timeout, activity.clone()));
        let response = app.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody::new(body, in_flight)))
        }
    })
}

/// Serves `app` in plain HTTP until `shutdown` completes, then lets
/// in-flight requests finish. HTTP/1 blob downloads are sent with
/// `sendfile` (see [`zero_copy`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = builder(limits);
    // What zero-copy relies on, pinned rather than inferred: body frames
    // reach the IO's vectored write uncopied.
    builder.http1().writev(true).pipeline_flush(false);
    let builder = Arc::new(builder);
    let service_limits = limits.clone();
    accept_loop(listener, limits, shutdown, move |stream, peer, watch| {
        let (stream, reclaimed) = Reclaim::new(stream);
        let stream = ZeroCopyStream::new(stream);
        let send_file = stream.send_file();
        let service = service(
            app.clone(),
            watch.activity.clone(),
            &service_limits,
            move |extensions, version| {
                extensions.insert(ConnectInfo::<SocketAddr>(peer));
                // HTTP/2 cuts data into frames of its own (and copies
                // small ones): placeholders would not reach the IO whole.
                if version < hyper::Version::HTTP_2 {
                    extensions.insert(send_file.clone());
                }
            },
        );
        let stream = Monitored::new(stream, watch.activity.clone());
        let builder = builder.clone();
        async move {
            let connection = builder
                .serve_connection_with_upgrades(stream, service)
                .into_owned();
            serve_then_close(connection, watch, peer, reclaimed).await;
        }
    })
    .await
}

/// Runs `connection` under its bounds ([`conn::drive`]); then, if it ended
/// by itself, closes its socket (`reclaimed`, handed back by its IO) the
/// way [`linger`] says, so that a client still sending gets the answer.
async fn serve_then_close<C>(
    connection: C,
    mut watch: Watch,
    peer: SocketAddr,
    mut reclaimed: tokio::sync::oneshot::Receiver<TcpStream>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    if conn::drive(connection, &mut watch, peer).await != Ended::ByItself {
        return;
    }
    // Absent when the IO lives on elsewhere (an upgraded connection).
    if let Ok(stream) = reclaimed.try_recv() {
        let body_left_unread = watch.activity.body_left_unread();
        linger::close(stream, body_left_unread, &mut watch).await;
    }
}

/// The connections being served, for the cap: each with what it is doing
/// and the token that closes it.
#[derive(Default)]
struct Connections {
    next: u64,
    open: HashMap<u64, (Arc<Activity>, CancellationToken)>,
}

impl Connections {
    /// Makes room for one more connection under `cap`: closes the one idle
    /// longest (no request in flight: kept alive, or still sending its
    /// head); else the one whose client has held up its request longest,
    /// for at least [`STALLED_AT_THE_CAP`] (a body trickled a byte per
    /// `body_timeout`, a response not read: without this, clients pacing
    /// just inside the timeouts could hold every place). False when every
    /// connection has a request in flight that moves.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.open.len() < cap {
            return true;
        }
        let oldest_idle = self
            .open
            .iter()
            .filter(|(_, (activity, _))| activity.is_idle())
            .min_by_key(|(_, (activity, _))| activity.idle_since())
            .map(|(id, _)| (*id, "the longest idle connection"));
        let longest_stalled = || {
            self.open
                .iter()
                .filter_map(|(id, (activity, _))| {
                    let since = activity.waiting_on_client_since()?;
                    (since.elapsed() >= STALLED_AT_THE_CAP).then_some((*id, since))
                })
                .min_by_key(|(_, since)| *since)
                .map(|(id, _)| (id, "the connection its client has held up longest"))
        };
        match oldest_idle.or_else(longest_stalled) {
            Some((id, which)) => {
                if let Some((_, close)) = self.open.remove(&id) {
                    tracing::debug!(cap, "connection cap reached: closing {which}");
                    close.cancel();
                }
                true
            }
            None => false,
        }
    }
}

/// Accepts connections until `shutdown` completes, handing each (with
/// TCP_NODELAY set) to `connection`, whose future runs on its own task,
/// at most the connection cap at once; then closes idle connections,
/// gives the others `shutdown_grace` to finish, and closes what is left.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut connection: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cap = configured_cap(limits);
    tracing::debug!(cap, "connection cap");
    let shared_limits = Arc::new(limits.clone());
    let connections = Arc::new(Mutex::new(Connections::default()));
    let (draining, draining_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_refusal_warning = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: keep serving the others,
                // after a pause so that a persistent error does not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next() => continue,
            () = &mut shutdown => break,
        };
        let activity = Activity::new();
        let close = CancellationToken::new();
        let id = {
            let mut open = connections.lock().expect("connections lock");
            if !open.make_room(cap) {
                // At most one warning a minute: a flood must not flood the log.
                if last_refusal_warning
                    .is_none_or(|at: Instant| at.elapsed() >= REFUSAL_WARNING_EVERY)
                {
                    last_refusal_warning = Some(Instant::now());
                    tracing::warn!(%peer, cap, "connection cap reached with a request in flight on every connection: refusing new connections");
                }
                continue;
            }
            let id = open.next;
            open.next += 1;
            open.open.insert(id, (activity.clone(), close.clone()));
            id
        };
        // Without TCP_NODELAY a small response written in two segments
        // waits for the peer's delayed ACK (~40 ms): small blob and manifest
        // GETs stall.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let watch = Watch {
            activity,
            close,
            draining: draining_rx.clone(),
            limits: shared_limits.clone(),
        };
        let served = connection(stream, peer, watch);
        let connections = connections.clone();
        tasks.spawn(async move {
            served.await;
            connections
                .lock()
                .expect("connections lock")
                .open
                .remove(&id);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = draining.send(true);
    let grace = tokio::time::sleep(limits.shutdown_grace);
    let mut grace = std::pin::pin!(grace);
    loop {
        tokio::select! {
            finished = tasks.join_next() => if finished.is_none() { return Ok(()) },
            () = &mut grace => break,
        }
    }
    let left = {
        let open = connections.lock().expect("connections lock");
        for (_, close) in open.open.values() {
            close.cancel();
        }
        open.open.len()
    };
    tracing::warn!(
        connections = left,
        grace = ?limits.shutdown_grace,
        "shutdown grace over: closing connections with requests in flight"
    );
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_a_file_per_connection_and_a_reserve() {
        assert_eq!(connection_cap(1024), 480);
        assert_eq!(connection_cap(524_288), 262_112);
        assert_eq!(connection_cap(10), 1, "never zero");
        let cap = connection_cap(1024) as u64;
        assert!(2 * cap + RESERVED_DESCRIPTORS <= 1024);
    }
}
