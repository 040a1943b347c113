//! Bounds on one connection, for every stage its client paces. Each timer
//! sits where the wait it bounds can be seen:
//!
//! - **head and idle** ([`Activity::deadline`], run by [`drive`]): with no
//!   request in flight, a connection is reading a head or idle. Hyper's own
//!   HTTP/1 `header_read_timeout` is not used: it starts only after the
//!   auto-builder has sniffed the protocol (a client that sends nothing, or
//!   half of the HTTP/2 preface, is not covered), it runs from the end of the
//!   previous response (so it cannot tell an idle keep-alive connection from
//!   a slow head), and HTTP/2 has none. Here: a new connection has
//!   `header_timeout` to complete its first request head; a kept-alive
//!   HTTP/1.1 one `idle_timeout` until the next request's first byte and
//!   then `header_timeout` for its head; an HTTP/2 one `idle_timeout` from
//!   its last stream's end, whatever frames (pings, half a HEADERS block) it
//!   sends meanwhile.
//! - **request body** ([`TimedBody`]): only while the handler waits for the
//!   next piece of the body, and only between pieces: an upload that keeps
//!   arriving is never cut, however long, and a handler that works (hashes,
//!   syncs) without reading is not waiting on the client, so no timer runs.
//! - **response** ([`Monitored`], [`TrackedBody`]): `send_timeout` runs
//!   while a response has data for the client and nothing is sent: a write
//!   the socket refuses (HTTP/1.1: the client's receive window is full), or
//!   a frame a response body handed hyper that waits (HTTP/2: the client's
//!   flow-control window is closed, so the socket never refuses anything).
//!   Any write that goes through restarts it. A slow client that keeps
//!   reading is never cut; the zero-copy path writes through the same IO,
//!   so it is bounded the same way.
//! - **TLS handshake**: `tls.rs`, `handshake_timeout` around the accept.
//! - **graceful stop** ([`drive`]): connections with no request in flight
//!   close at once (a half-sent head has no request yet); the others finish
//!   or are closed by the accept loop after `shutdown_grace`.
//!
//! A handler's own time is not bounded here: a request whose handler works
//! without I/O (committing a large blob) is the server's time, not the
//! client's.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// What one connection is doing, as far as its bounds need to know: updated
/// by its IO ([`Monitored`]) and its requests ([`InFlight`]), read by its
/// watch ([`drive`]) and by the accept loop (which idle connection to shed).
/// Times are milliseconds since `start`; 0 means "not set", so set times are
/// stored plus one.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    http2: AtomicBool,
    idle_since: AtomicU64,
    read_since_idle: AtomicU64,
    write_blocked_since: AtomicU64,
    /// When a write last went through.
    last_write: AtomicU64,
    /// When a response body was last asked for its next frame: the client
    /// took the one before. On HTTP/2 this, not a write, is progress: the
    /// server's keep-alive pings are writes that go through while the
    /// client reads nothing.
    last_response_progress: AtomicU64,
    /// Response bodies that have handed hyper a frame and not been asked
    /// for the next (the frame waits for the client's window), and since
    /// when one has.
    responses_waiting: AtomicUsize,
    waiting_since: AtomicU64,
    /// Request bodies whose handler waits for the client's next piece, and
    /// since when one has.
    bodies_waiting: AtomicUsize,
    body_waiting_since: AtomicU64,
    /// The last request's handler answered without reading its whole body:
    /// the rest may still be on its way (see `linger`).
    body_left_unread: AtomicBool,
    /// Wakes the watch when a deadline may have moved earlier.
    wake: Notify,
}

/// The stage a deadline bounds, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Head,
    Idle,
    Send,
    Drain,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            read_since_idle: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            last_response_progress: AtomicU64::new(0),
            responses_waiting: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(0),
            bodies_waiting: AtomicUsize::new(0),
            body_waiting_since: AtomicU64::new(0),
            body_left_unread: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, stamp: u64) -> Instant {
        self.start + Duration::from_millis(stamp.saturating_sub(1))
    }

    /// A request's head has been read; it is in flight until the returned
    /// guard (kept by its response body) is dropped.
    pub(crate) fn request_started(self: &Arc<Self>, version: hyper::Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.body_left_unread.store(false, Ordering::Relaxed);
        if version == hyper::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// Whether the last request's handler answered without reading its
    /// whole body.
    pub(crate) fn body_left_unread(&self) -> bool {
        self.body_left_unread.load(Ordering::Relaxed)
    }

    /// No request in flight: reading a head, or idle.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Since when the connection has had no request in flight.
    pub(crate) fn idle_since(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::SeqCst).max(1))
    }

    fn on_read(&self) {
        if self.is_idle() && self.read_since_idle.load(Ordering::Relaxed) == 0 {
            self.read_since_idle.store(self.now(), Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    fn on_write(&self, progress: bool) {
        if progress {
            self.last_write.store(self.now(), Ordering::Relaxed);
        }
        let blocked = self.write_blocked_since.load(Ordering::Relaxed) != 0;
        if progress && blocked {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        } else if !progress && !blocked {
            self.write_blocked_since
                .store(self.now(), Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// A response body handed hyper a frame (`true`) or was asked for the
    /// next one (`false`).
    fn response_waiting(&self, waiting: bool) {
        if waiting {
            if self.responses_waiting.fetch_add(1, Ordering::SeqCst) == 0 {
                self.waiting_since.store(self.now(), Ordering::SeqCst);
                self.wake.notify_one();
            }
        } else {
            self.last_response_progress
                .store(self.now(), Ordering::SeqCst);
            self.responses_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A request body's handler started (`true`) or stopped (`false`)
    /// waiting for the client's next piece. Its timer is the body's own
    /// ([`TimedBody`]); this is for the cap, which may shed a connection
    /// whose client keeps it busy by trickling.
    fn body_waiting(&self, waiting: bool) {
        if waiting {
            if self.bodies_waiting.fetch_add(1, Ordering::SeqCst) == 0 {
                self.body_waiting_since.store(self.now(), Ordering::SeqCst);
            }
        } else {
            self.bodies_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Since when a request in flight has been held up by its client alone:
    /// a body the handler waits for, or a response the client does not
    /// take. `None` while every request moves or works on the server's side.
    pub(crate) fn waiting_on_client_since(&self) -> Option<Instant> {
        let body = (self.bodies_waiting.load(Ordering::SeqCst) > 0)
            .then(|| self.body_waiting_since.load(Ordering::SeqCst));
        let send = self.send_stalled_since();
        let since = match (body, send) {
            (Some(body), Some(send)) => body.min(send),
            (since, None) | (None, since) => since?,
        };
        Some(self.at(since))
    }

    /// Since when the connection has had a response frame to send and has
    /// sent nothing: on HTTP/2 a client that stops reading closes its
    /// window, so the socket never refuses a write, and only this shows it.
    fn send_stalled_since(&self) -> Option<u64> {
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        let waiting = (self.responses_waiting.load(Ordering::SeqCst) > 0).then(|| {
            let since = self.waiting_since.load(Ordering::SeqCst);
            // HTTP/1.1 writes only what responses send (a large frame goes
            // out in many writes before the body is asked again); HTTP/2
            // also writes pings, which would hide a client that reads
            // nothing.
            let progress = if self.http2.load(Ordering::Relaxed) {
                &self.last_response_progress
            } else {
                &self.last_write
            };
            since.max(progress.load(Ordering::SeqCst))
        });
        match (blocked, waiting) {
            (0, waiting) => waiting,
            (blocked, Some(waiting)) => Some(blocked.min(waiting)),
            (blocked, None) => Some(blocked),
        }
    }

    /// When the connection is to be closed, and why; `None`: not while
    /// nothing changes (a request is in flight and its writes go through).
    pub(crate) fn deadline(
        &self,
        limits: &ServerConfig,
        draining: bool,
    ) -> Option<(Instant, Stage)> {
        let send = self
            .send_stalled_since()
            .map(|since| (self.at(since) + limits.send_timeout, Stage::Send));
        if !self.is_idle() {
            return send;
        }
        let idle = if draining {
            (Instant::now(), Stage::Drain)
        } else if self.requests.load(Ordering::SeqCst) == 0 {
            (self.start + limits.header_timeout, Stage::Head)
        } else {
            let idle_since = self.idle_since();
            let first_byte = self.read_since_idle.load(Ordering::Relaxed);
            if first_byte != 0 && !self.http2.load(Ordering::Relaxed) {
                (self.at(first_byte) + limits.header_timeout, Stage::Head)
            } else {
                (idle_since + limits.idle_timeout, Stage::Idle)
            }
        };
        Some(match send {
            Some(send) if send.0 < idle.0 => send,
            _ => idle,
        })
    }
}

/// A request in flight; dropped with its response body.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Idle from now: the next head's clock starts at its first byte.
        activity.read_since_idle.store(0, Ordering::Relaxed);
        activity.idle_since.store(activity.now(), Ordering::SeqCst);
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            activity.wake.notify_one();
        }
    }
}

/// What a connection's task gets from the accept loop.
pub(crate) struct Watch {
    pub activity: Arc<Activity>,
    /// Cancelled to close the connection now: shed at the cap, or the drain
    /// is over.
    pub close: CancellationToken,
    /// Turns true when the server stops.
    pub draining: watch::Receiver<bool>,
    pub limits: Arc<ServerConfig>,
}

/// How a connection's HTTP session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Hyper ended it: the client closed, an answer said `Connection:
    /// close`, or the client broke the protocol. The client may still be
    /// sending.
    ByItself,
    /// The server closed it: its time was up, it was shed, or the drain.
    ByTheServer,
}

/// Runs a hyper connection under its bounds until it ends, times out, is
/// shed, or the drain closes it. The connection (and its IO) is dropped
/// before this returns.
pub(crate) async fn drive<C>(connection: C, watch: &mut Watch, peer: std::net::SocketAddr) -> Ended
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut draining = *watch.draining.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = watch.activity.deadline(&watch.limits, draining);
        let expiry = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return Ended::ByItself;
            }
            () = watch.close.cancelled() => {
                tracing::debug!(%peer, "connection closed by the server (cap or drain)");
                return Ended::ByTheServer;
            }
            _ = watch.draining.changed(), if !draining => {
                draining = true;
                // HTTP/1.1: no keep-alive after the response in flight;
                // HTTP/2: GOAWAY. Idle connections close below.
                connection.as_mut().graceful_shutdown();
            }
            () = watch.activity.wake.notified() => {}
            () = expiry => {
                if let Some((at, stage)) = watch.activity.deadline(&watch.limits, draining) {
                    if at <= Instant::now() {
                        tracing::debug!(%peer, ?stage, "closing the connection: its time is up");
                        return Ended::ByTheServer;
                    }
                }
            }
        }
    }
}

/// The connection's IO, telling its [`Activity`] when bytes arrive and
/// when writes stall or go through. Passes every call through unchanged
/// (vectored writes included, which the zero-copy path relies on).
pub(crate) struct Monitored<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Monitored<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Monitored<T> {
        Monitored { inner, activity }
    }

    fn wrote<R>(&self, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match &poll {
            Poll::Ready(Ok(_)) => self.activity.on_write(true),
            Poll::Pending => self.activity.on_write(false),
            Poll::Ready(Err(_)) => {}
        }
        poll
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Monitored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Ready is bytes or the end of the stream: either way, the client
        // has acted (an end closes the connection anyway).
        if poll.is_ready() {
            self.activity.on_read();
        }
        poll
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Monitored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body whose client must send its next piece within `timeout`
/// of the handler asking for it.
pub(crate) struct TimedBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    /// Runs while the handler waits for a piece.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Told while the handler waits (for the cap: see
    /// [`Activity::waiting_on_client_since`]).
    activity: Arc<Activity>,
}

impl TimedBody {
    pub(crate) fn new(
        inner: hyper::body::Incoming,
        timeout: Duration,
        activity: Arc<Activity>,
    ) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            waiting: None,
            activity,
        }
    }

    fn stop_waiting(&mut self) {
        if self.waiting.take().is_some() {
            self.activity.body_waiting(false);
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.stop_waiting();
        if !self.inner.is_end_stream() {
            self.activity
                .body_left_unread
                .store(true, Ordering::Relaxed);
        }
    }
}

/// The client sent no piece of its request body for `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no request body received for {0:?}")]
pub(crate) struct BodyTimeout(Duration);

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stop_waiting();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                if this.waiting.is_none() {
                    this.activity.body_waiting(true);
                }
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stop_waiting();
                        Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request [`InFlight`] until hyper drops
/// it (sent whole, or the connection gone). Frames pass through untouched.
/// While a frame it yielded waits for the client, it counts as waiting in
/// its connection's [`Activity`].
pub(crate) struct TrackedBody {
    inner: axum::body::Body,
    in_flight: InFlight,
    waiting: bool,
}

impl TrackedBody {
    pub(crate) fn new(inner: axum::body::Body, in_flight: InFlight) -> TrackedBody {
        TrackedBody {
            inner,
            in_flight,
            waiting: false,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.in_flight.0.response_waiting(waiting);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.set_waiting(false);
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &poll {
            self.set_waiting(true);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerConfig {
        ServerConfig {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(50),
            send_timeout: Duration::from_secs(7),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn a_new_connection_has_the_head_timeout_and_a_request_in_flight_has_none() {
        let activity = Activity::new();
        let (at, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Head);
        assert_eq!(at, activity.start + Duration::from_secs(5));
        let request = activity.request_started(hyper::Version::HTTP_11);
        assert!(!activity.is_idle());
        assert_eq!(activity.deadline(&limits(), false), None);
        // Reading the body while in flight starts no head clock.
        activity.on_read();
        drop(request);
        let (at, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Idle);
        assert!(at > Instant::now() + Duration::from_secs(45));
    }

    #[test]
    fn on_http1_the_next_heads_first_byte_starts_the_head_clock() {
        let activity = Activity::new();
        drop(activity.request_started(hyper::Version::HTTP_11));
        activity.on_read();
        let (at, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Head);
        assert!(at <= Instant::now() + Duration::from_secs(5));
    }

    #[test]
    fn on_http2_frames_while_idle_do_not_extend_the_idle_time() {
        let activity = Activity::new();
        drop(activity.request_started(hyper::Version::HTTP_2));
        activity.on_read();
        let (_, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Idle);
    }

    #[test]
    fn a_stalled_write_is_bounded_even_with_a_request_in_flight() {
        let activity = Activity::new();
        let _request = activity.request_started(hyper::Version::HTTP_11);
        activity.on_write(false);
        let (_, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Send);
        activity.on_write(true);
        assert_eq!(activity.deadline(&limits(), false), None);
        // A frame that waits (an HTTP/2 window closed: no write refused) is
        // bounded from the later of its hand-over and the last write.
        activity.response_waiting(true);
        let (at, stage) = activity.deadline(&limits(), false).unwrap();
        assert_eq!(stage, Stage::Send);
        assert!(at > Instant::now() + Duration::from_secs(6));
        activity.response_waiting(false);
        assert_eq!(activity.deadline(&limits(), false), None);
    }

    #[test]
    fn draining_closes_idle_connections_at_once_and_waits_for_requests() {
        let activity = Activity::new();
        let (at, stage) = activity.deadline(&limits(), true).unwrap();
        assert_eq!(stage, Stage::Drain);
        assert!(at <= Instant::now());
        let _request = activity.request_started(hyper::Version::HTTP_11);
        assert_eq!(activity.deadline(&limits(), true), None);
    }
}
