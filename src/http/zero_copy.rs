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
//! `poll_write_vectored` uncopied, which it does for IO that reports
//! vectored writes (its "queue" write strategy; the server never turns on
//! pipeline flushing, which would switch it off). Guards:
//! - the extension that enables placeholders ([`ZeroCopy`]) is given only
//!   to HTTP/1 requests on connections served through [`ZeroCopyStream`];
//! - every placeholder the IO meets must be exactly the next unsent part of
//!   the oldest queued range, and placeholder bytes are never written as
//!   bytes: anything else is an error that closes the connection;
//! - the tests pull blobs through this path and compare digests, and check
//!   that it was taken ([`bytes_sent`]).
//!
//! Nothing between the handler and hyper may copy response frames (a
//! compression layer would send the placeholder's zeros).
//!
//! Ranges not in the page cache are read into memory on a blocking thread
//! instead: `sendfile` of a cold range would stall a runtime worker on the
//! disk, and every other request on it.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::Interest;
use tokio::net::TcpStream;

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
type SendQueue = Arc<Mutex<VecDeque<Pending>>>;

/// Request extension: this request's response may use placeholder frames,
/// because its connection's IO will send them.
#[derive(Clone)]
pub struct ZeroCopy {
    queue: SendQueue,
}

impl ZeroCopy {
    /// A body sending `range` of `file` through this connection.
    pub fn body(&self, file: File, range: Range<u64>) -> FileBody {
        FileBody {
            file: Arc::new(file),
            next: range.start,
            end: range.end,
            cold: None,
            queue: self.queue.clone(),
        }
    }
}

/// A response body of a file range: placeholder frames for the parts in the
/// page cache, read bytes for the rest.
pub struct FileBody {
    file: Arc<File>,
    next: u64,
    end: u64,
    cold: Option<(usize, tokio::task::JoinHandle<io::Result<Bytes>>)>,
    queue: SendQueue,
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
        let (offset, len) = (self.next, FRAME.min((self.end - self.next) as usize));
        self.next += len as u64;
        if in_page_cache(&self.file, offset, len) {
            self.queue.lock().expect("queue lock").push_back(Pending {
                file: self.file.clone(),
                offset,
                len,
                sent: 0,
            });
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                &PLACEHOLDER[..len],
            )))));
        }
        let file = self.file.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buffer = bytes::BytesMut::zeroed(len);
            file.read_exact_at(&mut buffer, offset)?;
            Ok(buffer.freeze())
        });
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

/// Whether every page of the range is in the page cache, so that sending
/// it will not wait for the disk. `cachestat(2)` (Linux 6.5) answers
/// without touching the file; where it is missing, `mincore(2)` on a
/// mapping that is never read.
fn in_page_cache(file: &File, offset: u64, len: usize) -> bool {
    let page = page_size();
    let first = offset / page;
    let last = (offset + len as u64 - 1) / page;
    let pages = last - first + 1;
    match cachestat_pages(file, first * page, pages * page) {
        Ok(cached) => cached >= pages,
        Err(_) => mincore_all(file, first * page, (pages * page) as usize),
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `cachestat`'s number in the generic syscall table, which x86-64 and
/// aarch64 share for it; libc does not name it yet.
const SYS_CACHESTAT: libc::c_long = 451;

fn cachestat_pages(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: both pointers are to live, correctly laid out structs.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    if result == 0 {
        Ok(stat.nr_cache)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mincore_all(file: &File, offset: u64, len: usize) -> bool {
    // SAFETY: a fresh read-only shared mapping that is only passed to
    // mincore and unmapped; its memory is never read, so an I/O error or a
    // shrunken file cannot fault.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        );
        if map == libc::MAP_FAILED {
            return false;
        }
        let mut pages = vec![0u8; len.div_ceil(page_size() as usize)];
        let ok = libc::mincore(map, len, pages.as_mut_ptr()) == 0;
        libc::munmap(map, len);
        ok && pages.iter().all(|p| p & 1 == 1)
    }
}

/// A plain TCP connection that sends placeholder frames' file ranges with
/// `sendfile`.
pub struct ZeroCopyStream {
    io: TokioIo<TcpStream>,
    queue: SendQueue,
}

impl ZeroCopyStream {
    pub fn new(stream: TcpStream) -> ZeroCopyStream {
        ZeroCopyStream {
            io: TokioIo::new(stream),
            queue: SendQueue::default(),
        }
    }

    /// The extension for this connection's HTTP/1 requests.
    pub fn zero_copy(&self) -> ZeroCopy {
        ZeroCopy {
            queue: self.queue.clone(),
        }
    }

    fn poll_send_file(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut queue = self.queue.lock().expect("queue lock");
        let Some(head) = queue.front_mut() else {
            return Poll::Ready(Err(out_of_order()));
        };
        let expected = PLACEHOLDER.as_ptr().wrapping_add(head.sent);
        if buf.as_ptr() != expected || buf.len() != head.len - head.sent {
            return Poll::Ready(Err(out_of_order()));
        }
        let stream = self.io.inner();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let mut offset = (head.offset + head.sent as u64) as libc::off_t;
            let count = head.len - head.sent;
            let sent = stream.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the call's duration
                // and `offset` is a live local.
                let n = unsafe {
                    libc::sendfile(
                        stream.as_raw_fd(),
                        head.file.as_raw_fd(),
                        &mut offset,
                        count,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
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
                        queue.pop_front();
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
