//! Zero-copy blob responses on plain HTTP/1.1 connections (`sendfile(2)`).
//!
//! hyper writes response bodies from memory, so a blob read the usual way
//! costs two copies: file to buffer, buffer to socket. Here the kernel sends
//! page-cache pages straight to the socket. The body ([`FileBody`]) yields
//! *placeholder* frames, slices of a static region that is never written or
//! read, and queues the file range each stands for; the connection's IO
//! ([`ZeroCopyStream`]), meeting a placeholder in hyper's vectored write,
//! sends that file range in its place.
//!
//! This relies on hyper's HTTP/1 writer handing body frames to
//! `poll_write_vectored` uncopied, which it does with its "queue" write
//! strategy: vectored writes on and pipeline flushing off, both pinned in
//! `serve/mod.rs`. Should a future hyper copy frames anyway, the client would
//! get the placeholder's zeros: the tests pull blobs through this path and
//! compare digests, and check that it was taken ([`bytes_sent`]). Guards:
//! - the extension that enables placeholders ([`SendFile`], which handlers
//!   see as a `FileSender`: they know nothing of placeholders) is given only
//!   to HTTP/1 requests on connections served through [`ZeroCopyStream`];
//! - every placeholder the IO meets must be exactly the next unsent part of
//!   the oldest queued range, and placeholder bytes are never written as
//!   bytes: anything else is an error that closes the connection;
//! - a body dropped before its end poisons its connection's queue, so no
//!   later response can be sent a range it left behind.
//!
//! Nothing between the handler and hyper may copy response frames (a
//! compression layer would send the placeholder's zeros).
//!
//! The file comes from the store's local-file capability
//! (`Storage::local_file`) and is read only through `sys`: this module knows
//! no storage backend.
//!
//! Ranges not in the page cache are read into memory on a blocking thread
//! instead: `sendfile` of a cold range would stall a runtime worker on the
//! disk, and every other request on it.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::linger::Reclaim;
use crate::http::{downloads_in_flight, Download, FileSender, SendFile};
use crate::registry::LocalFile;
use crate::sys;

/// The most one frame stands for. Larger frames mean fewer body polls; a
/// cold frame is read into memory, so this also bounds that buffer.
const FRAME: usize = 1024 * 1024;

/// Stands in for file content in body frames. Zero-initialised and never
/// written, so it costs address space only.
static PLACEHOLDER: [u8; FRAME] = [0; FRAME];

static BYTES_SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has sent with `sendfile`: how tests see that the
/// zero-copy path was taken.
pub fn bytes_sent() -> u64 {
    BYTES_SENT.load(Ordering::Relaxed)
}

fn is_placeholder(buf: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    !buf.is_empty() && at >= start && at < start + FRAME
}

/// A file range a placeholder frame stands for, and how much of it is sent.
struct Pending {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
}

/// The ranges one connection's bodies have yielded as placeholders and its
/// IO has not yet sent, in order.
#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// A body ended early: what it queued can no longer be told apart from
    /// what the next response queues, so the connection sends nothing more.
    poisoned: bool,
}

type SendQueue = Arc<Mutex<Queue>>;

/// What a connection's HTTP/1 requests get as their [`SendFile`]: their
/// responses may use placeholder frames, because the connection's IO will
/// send them.
#[derive(Clone)]
struct ZeroCopy {
    queue: SendQueue,
}

impl ZeroCopy {
    /// A body sending `range` of `file` through this connection.
    fn file_body(&self, file: File, range: Range<u64>, download: Download) -> FileBody {
        FileBody {
            _download: download,
            file: Arc::new(file),
            next: range.start,
            end: range.end,
            cold: None,
            queue: self.queue.clone(),
            placeholders: 0,
        }
    }
}

impl FileSender for ZeroCopy {
    /// Only beside other downloads. `sendfile` spares the CPU a copy, which
    /// pays when downloads share the cores (16 concurrent pulls were
    /// measured 3.6–4.3 GB/s against 2.6–2.9 copied); a download alone was
    /// faster copied on the development VM's kernel (loopback: 2.2–3.4 GB/s
    /// against 1.5–1.9 by `sendfile`), whose page-by-page splice into the
    /// socket costs more than one copy. See docs/design/zero-copy.md.
    fn pays(&self) -> bool {
        downloads_in_flight() > 1
    }

    fn body(&self, file: LocalFile, range: Range<u64>, download: Download) -> Body {
        Body::new(self.file_body(file.file, range, download))
    }
}

/// A response body of a file range: placeholder frames for the parts in the
/// page cache, read bytes for the rest.
pub struct FileBody {
    _download: Download,
    file: Arc<File>,
    next: u64,
    end: u64,
    cold: Option<(usize, tokio::task::JoinHandle<io::Result<Bytes>>)>,
    queue: SendQueue,
    /// Placeholder frames yielded so far.
    placeholders: usize,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Some((_, read)) = self.cold.as_mut() {
            let read = ready!(Pin::new(read).poll(cx));
            self.cold = None;
            let chunk = read.map_err(io::Error::other).and_then(|chunk| chunk);
            return Poll::Ready(Some(chunk.map(Frame::data)));
        }
        if self.next >= self.end {
            return Poll::Ready(None);
        }
        let (offset, len) = (self.next, (self.end - self.next).min(FRAME as u64) as usize);
        self.next += len as u64;
        if in_page_cache(&self.file, offset, len) {
            self.queue
                .lock()
                .expect("queue lock")
                .pending
                .push_back(Pending {
                    file: self.file.clone(),
                    offset,
                    len,
                    sent: 0,
                });
            self.placeholders += 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                &PLACEHOLDER[..len],
            )))));
        }
        let file = self.file.clone();
        let read = tokio::task::spawn_blocking(move || sys::read_exact_at(&file, len, offset));
        self.cold = Some((len, read));
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.end && self.cold.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let cold = self.cold.as_ref().map_or(0, |(len, _)| *len as u64);
        SizeHint::with_exact(self.end.saturating_sub(self.next) + cold)
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if self.placeholders > 0 && !self.is_end_stream() {
            self.queue.lock().expect("queue lock").poisoned = true;
        }
    }
}

/// Whether every page of the range is in the page cache, so that sending
/// it will not wait for the disk. `cachestat(2)` answers without touching
/// the file; where it is missing, `mincore(2)`.
fn in_page_cache(file: &File, offset: u64, len: usize) -> bool {
    let page = sys::page_size();
    let first = offset / page;
    let last = (offset + len as u64 - 1) / page;
    let pages = last - first + 1;
    let (start, bytes) = (first * page, pages * page);
    match sys::cached_pages(file, start, bytes) {
        Ok(cached) if cached >= pages => true,
        // A second opinion before paying for a copy: in the full test
        // suite, cachestat now and then reported a whole, clean range of a
        // just-committed blob short.
        Ok(_) => sys::all_pages_resident(file, start, bytes as usize),
        Err(_) => sys::all_pages_resident(file, start, bytes as usize),
    }
}

/// A plain TCP connection that sends placeholder frames' file ranges with
/// `sendfile`.
pub struct ZeroCopyStream {
    io: TokioIo<Reclaim<TcpStream>>,
    queue: SendQueue,
}

impl ZeroCopyStream {
    pub(crate) fn new(stream: Reclaim<TcpStream>) -> ZeroCopyStream {
        ZeroCopyStream {
            io: TokioIo::new(stream),
            queue: SendQueue::default(),
        }
    }

    /// The extension for this connection's HTTP/1 requests.
    pub fn send_file(&self) -> SendFile {
        SendFile(Arc::new(self.zero_copy()))
    }

    fn zero_copy(&self) -> ZeroCopy {
        ZeroCopy {
            queue: self.queue.clone(),
        }
    }

    fn poll_send_file(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.poisoned {
            return Poll::Ready(Err(out_of_order()));
        }
        let Some(head) = queue.pending.front_mut() else {
            return Poll::Ready(Err(out_of_order()));
        };
        let expected = PLACEHOLDER.as_ptr().wrapping_add(head.sent);
        if buf.as_ptr() != expected || buf.len() != head.len - head.sent {
            return Poll::Ready(Err(out_of_order()));
        }
        let stream = self.io.inner().get();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let (offset, count) = (head.offset + head.sent as u64, head.len - head.sent);
            let sent = stream.try_io(Interest::WRITABLE, || {
                sys::sendfile(stream, &head.file, offset, count)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file ended before its size",
                    )))
                }
                Ok(n) => {
                    BYTES_SENT.fetch_add(n as u64, Ordering::Relaxed);
                    head.sent += n;
                    if head.sent == head.len {
                        queue.pending.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn out_of_order() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "zero-copy placeholder out of order: closing the connection",
    )
}

impl hyper::rt::Read for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_send_file(cx, buf);
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Bytes before the first placeholder go out as they are (a short
        // write, as far as hyper knows); a placeholder at the front is sent
        // from its file.
        match bufs.iter().position(|b| is_placeholder(b)) {
            None => Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
            Some(0) => {
                let buf: &[u8] = &bufs[0];
                self.poll_send_file(cx, buf)
            }
            Some(first) => Pin::new(&mut self.io).poll_write_vectored(cx, &bufs[..first]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Write as _;
    use std::future::poll_fn;
    use std::io::Write as _;
    use tokio::io::AsyncReadExt;

    /// A connected pair on loopback: the server end wrapped for zero-copy.
    async fn connection() -> (ZeroCopyStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (
            ZeroCopyStream::new(Reclaim::new(accepted.unwrap().0).0),
            client.unwrap(),
        )
    }

    fn file_of(content: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        file
    }

    async fn next_frame(body: &mut FileBody) -> Bytes {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        frame.unwrap().unwrap().into_data().unwrap()
    }

    async fn write_vectored(stream: &mut ZeroCopyStream, bufs: &[&[u8]]) -> io::Result<usize> {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        poll_fn(|cx| Pin::new(&mut *stream).poll_write_vectored(cx, &slices)).await
    }

    #[tokio::test]
    async fn placeholders_are_sent_as_their_file_range() {
        let content: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (mut stream, mut client) = connection().await;
        let mut body =
            stream
                .zero_copy()
                .file_body(file_of(&content), 100..2100, Download::start());
        let frame = next_frame(&mut body).await;
        assert!(is_placeholder(&frame), "a cached range is a placeholder");
        assert_eq!(frame.len(), 2000);
        // Bytes before a placeholder go out alone, then the placeholder.
        assert_eq!(
            write_vectored(&mut stream, &[b"head", &frame])
                .await
                .unwrap(),
            4
        );
        let mut sent = 0;
        while sent < frame.len() {
            sent += write_vectored(&mut stream, &[&frame[sent..]])
                .await
                .unwrap();
        }
        let mut received = vec![0u8; 2004];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(&received[..4], b"head");
        assert_eq!(&received[4..], &content[100..2100]);
    }

    #[tokio::test]
    async fn a_placeholder_that_is_not_the_next_range_fails_the_connection() {
        let (mut stream, _client) = connection().await;
        let mut body =
            stream
                .zero_copy()
                .file_body(file_of(&[1u8; 5000]), 0..5000, Download::start());
        let frame = next_frame(&mut body).await;
        let wrong = write_vectored(&mut stream, &[&frame[1..]]).await;
        assert_eq!(wrong.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let short = write_vectored(&mut stream, &[&PLACEHOLDER[..10]]).await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_poisons_the_connection() {
        let content = vec![9u8; FRAME + 10];
        let (mut stream, _client) = connection().await;
        let zero_copy = stream.zero_copy();
        let mut first = zero_copy.file_body(
            file_of(&content),
            0..content.len() as u64,
            Download::start(),
        );
        let _left_behind = next_frame(&mut first).await;
        drop(first);
        // The next response's frame looks exactly like the range left behind.
        let mut second = zero_copy.file_body(file_of(&content), 0..FRAME as u64, Download::start());
        let frame = next_frame(&mut second).await;
        let sent = write_vectored(&mut stream, &[&frame]).await;
        assert_eq!(sent.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_body_that_queued_nothing_leaves_the_connection_usable() {
        let (mut stream, mut client) = connection().await;
        let zero_copy = stream.zero_copy();
        drop(zero_copy.file_body(file_of(b"never polled"), 0..12, Download::start()));
        let mut body = zero_copy.file_body(file_of(b"hello"), 0..5, Download::start());
        let frame = next_frame(&mut body).await;
        assert_eq!(write_vectored(&mut stream, &[&frame]).await.unwrap(), 5);
        let mut received = [0u8; 5];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"hello");
    }
}
