//! Lingering close: a connection that ends with request bytes still coming
//! reads and drops them for a while before it closes.
//!
//! A server may answer before it has read the request body (416 to a chunk
//! out of order, 401 to an upload without credentials, 413), and hyper then
//! closes the connection. Closing a TCP socket with unread bytes, or
//! receiving bytes on a closed one, makes the kernel reset the connection:
//! a client still sending its body gets `EPIPE`/`ECONNRESET` on its next
//! write and may never read the answer (many clients write the whole body
//! before reading), and a proxy relaying the answer drops it with the
//! connection. So, like nginx's `lingering_close`, the write side is shut
//! (the client sees the answer end) and what still arrives is read and
//! dropped until the client closes, goes quiet for [`QUIET`], or
//! [`LINGER_AT_MOST`] has passed.
//!
//! Hyper owns the connection's IO and drops it when the connection ends, so
//! the socket comes back through [`Reclaim`], the innermost IO layer, which
//! hands its stream over when dropped. Lingering runs on the connection's
//! own task: it still counts against the connection cap, as an idle
//! connection, the first kind shed for a new client, and a stop ends it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::conn::Watch;

/// The longest a lingering connection waits for the client's next bytes
/// (nginx's `lingering_timeout`); less if the body timeout is shorter.
const QUIET_AT_MOST: Duration = Duration::from_secs(5);

/// The longest a connection lingers, however steadily the client sends.
/// nginx's `lingering_time`.
const LINGER_AT_MOST: Duration = Duration::from_secs(30);

/// An IO that hands its stream back (through the receiver [`Reclaim::new`]
/// returns) when it is dropped.
pub(crate) struct Reclaim<T> {
    inner: Option<T>,
    back: Option<oneshot::Sender<T>>,
}

impl<T> Reclaim<T> {
    pub(crate) fn new(inner: T) -> (Reclaim<T>, oneshot::Receiver<T>) {
        let (back, reclaimed) = oneshot::channel();
        let io = Reclaim {
            inner: Some(inner),
            back: Some(back),
        };
        (io, reclaimed)
    }

    pub(crate) fn get(&self) -> &T {
        self.inner.as_ref().expect("present until dropped")
    }

    fn pinned(&mut self) -> Pin<&mut T>
    where
        T: Unpin,
    {
        Pin::new(self.inner.as_mut().expect("present until dropped"))
    }
}

impl<T> Drop for Reclaim<T> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            // Nobody waiting: the stream is dropped (closed) here instead.
            let _ = back.send(inner);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Reclaim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pinned().poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Reclaim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.get().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_shutdown(cx)
    }
}

/// Closes a connection whose HTTP session has ended by itself: at once if
/// nothing more is coming, else after reading and dropping what the client
/// still sends (see the module's comment). `body_left_unread`: the last
/// request's handler answered without reading its whole body, so more may
/// be on its way though none has arrived yet. Ends early when the server
/// sheds the connection or stops.
pub(crate) async fn close(mut stream: TcpStream, body_left_unread: bool, watch: &mut Watch) {
    let mut buffer = vec![0u8; 16 * 1024];
    match stream.try_read(&mut buffer) {
        // The client has closed, or the socket is gone: nothing to wait for.
        Ok(0) => return,
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
        Ok(_) => {}
        Err(_) if !body_left_unread => return,
        Err(_) => {}
    }
    // The end of the answer (hyper may have shut the write side already).
    let _ = stream.shutdown().await;
    let quiet = watch.limits.body_timeout.min(QUIET_AT_MOST);
    let drop_what_comes = async {
        loop {
            match tokio::time::timeout(quiet, stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        () = drop_what_comes => {}
        _ = tokio::time::sleep(LINGER_AT_MOST) => {}
        () = watch.close.cancelled() => {}
        _ = watch.draining.wait_for(|stopping| *stopping) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::ServerConfig;
    use crate::serve::conn::Activity;

    const QUIET: Duration = Duration::from_millis(500);

    fn watch() -> (Watch, tokio::sync::watch::Sender<bool>) {
        let (stopping, draining) = tokio::sync::watch::channel(false);
        let limits = ServerConfig {
            body_timeout: QUIET,
            ..ServerConfig::default()
        };
        let watch = Watch {
            activity: Activity::new(),
            close: CancellationToken::new(),
            draining,
            limits: Arc::new(limits),
        };
        (watch, stopping)
    }

    async fn connection() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// Runs `close` on the server's side; when it returned.
    fn closing(
        server: TcpStream,
        body_left_unread: bool,
        mut watch: Watch,
    ) -> tokio::task::JoinHandle<Instant> {
        tokio::spawn(async move {
            close(server, body_left_unread, &mut watch).await;
            Instant::now()
        })
    }

    #[tokio::test]
    async fn with_nothing_unread_the_socket_closes_at_once() {
        let (server, mut client) = connection().await;
        let (watch, _stopping) = watch();
        let started = Instant::now();
        let closed = closing(server, false, watch).await.unwrap();
        assert!(closed - started < QUIET, "{:?}", closed - started);
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_still_sending_is_read_until_it_closes() {
        let (server, mut client) = connection().await;
        let (watch, _stopping) = watch();
        let closed = closing(server, true, watch);
        // Three times the quiet time, a piece every fifth of it: all taken.
        let sending = Instant::now();
        while sending.elapsed() < 3 * QUIET {
            client.write_all(&[7u8; 64 * 1024]).await.unwrap();
            tokio::time::sleep(QUIET / 5).await;
        }
        assert!(
            !closed.is_finished(),
            "stopped reading while the client sent"
        );
        // The server's side was shut: the client sees the answer end.
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
        drop(client);
        let ended = tokio::time::timeout(QUIET, closed).await;
        assert!(ended.is_ok(), "still lingering after the client closed");
    }

    #[tokio::test]
    async fn a_client_that_goes_quiet_is_closed_after_the_quiet_time() {
        let (server, mut client) = connection().await;
        let (watch, _stopping) = watch();
        client.write_all(&[7u8; 4096]).await.unwrap();
        let quiet_since = Instant::now();
        let closed = closing(server, false, watch).await.unwrap();
        let waited = closed - quiet_since;
        assert!(waited >= QUIET, "closed before the quiet time: {waited:?}");
        assert!(waited < 10 * QUIET, "{waited:?}");
    }

    #[tokio::test]
    async fn shedding_or_stopping_ends_the_lingering() {
        for stop in [false, true] {
            let (server, mut client) = connection().await;
            let (watch, stopping) = watch();
            let shed = watch.close.clone();
            client.write_all(&[7u8; 4096]).await.unwrap();
            let closed = closing(server, true, watch);
            let sending = tokio::spawn(async move {
                while client.write_all(&[7u8; 1024]).await.is_ok() {
                    tokio::time::sleep(QUIET / 4).await;
                }
            });
            if stop {
                stopping.send(true).unwrap();
            } else {
                shed.cancel();
            }
            let ended = tokio::time::timeout(QUIET, closed).await;
            assert!(ended.is_ok(), "still lingering (stop: {stop})");
            sending.abort();
        }
    }
}
