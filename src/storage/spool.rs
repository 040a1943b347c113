//! A spool: a file written once, from a stream whose size is known when it
//! starts, that any number of readers follow as it grows. The writer hashes
//! what it writes and, when it knows the digest the content must have,
//! keeps the last byte from every follower until the digest checks out: a
//! follower either gets every byte of the right content or an error, never
//! the whole of a wrong one. The S3 blob cache downloads into spools (a pull
//! storm reads the bucket once); the mirror fetches an upstream's blob into
//! one that its clients and the store's writer follow.

use std::io;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::oci::{Digest, Hasher};
use crate::storage::{ByteStream, ContentRead};

/// How much a follower reads from the file at a time (one blocking-pool
/// hand-off each, straight into the buffer it sends).
pub const READ_CHUNK: usize = 1024 * 1024;

/// How much a download gathers, of what the store has already sent, before
/// it writes: large writes (one blocking-pool hand-off and one wake-up of
/// the followers each), while a slow stream still has its bytes written, and
/// followed, as they come.
pub const WRITE_CHUNK: usize = 1024 * 1024;

/// How far a spool's writer got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes written so far, of `size`.
    Running {
        written: u64,
        size: u64,
    },
    Done {
        size: u64,
    },
    Failed(io::ErrorKind, String),
}

impl Progress {
    pub fn error(kind: io::ErrorKind, message: &str) -> io::Error {
        io::Error::new(kind, message.to_owned())
    }
}

pub struct Spool {
    /// The file being written (renamed into place when complete: followers
    /// keep reading through their open handle).
    partial: PathBuf,
    /// Where the finished file goes.
    finished: PathBuf,
    progress: watch::Receiver<Progress>,
    /// Checks the content against the digest its key names (see `fill`).
    verifies: bool,
}

impl Spool {
    /// A download not started yet (its size unknown), and the sender that
    /// tells its followers how far it got.
    pub fn starting(
        partial: PathBuf,
        finished: PathBuf,
        verifies: bool,
    ) -> (watch::Sender<Progress>, Arc<Spool>) {
        let (progress, receiver) = watch::channel(Progress::Running {
            written: 0,
            size: u64::MAX,
        });
        let download = Spool {
            partial,
            finished,
            progress: receiver,
            verifies,
        };
        (progress, Arc::new(download))
    }
}

/// What [`gather`] took from a stream: chunks, their length, and whether
/// the stream ended (it is not polled again).
pub struct Batch {
    pub chunks: Vec<Bytes>,
    pub len: usize,
    pub ended: bool,
}

/// One chunk of `stream` (waiting for it), then whatever else has arrived,
/// up to [`WRITE_CHUNK`]: large writes while a slow stream still has its
/// bytes written as they come.
pub async fn gather(
    stream: &mut (impl futures::Stream<Item = io::Result<Bytes>> + Unpin),
) -> io::Result<Batch> {
    let mut batch = Batch {
        chunks: Vec::new(),
        len: 0,
        ended: false,
    };
    match stream.next().await {
        Some(chunk) => {
            let chunk = chunk?;
            batch.len += chunk.len();
            batch.chunks.push(chunk);
        }
        None => {
            batch.ended = true;
            return Ok(batch);
        }
    }
    while batch.len < WRITE_CHUNK {
        match stream.next().now_or_never() {
            Some(Some(chunk)) => {
                let chunk = chunk?;
                batch.len += chunk.len();
                batch.chunks.push(chunk);
            }
            Some(None) => {
                batch.ended = true;
                break;
            }
            None => break,
        }
    }
    Ok(batch)
}

/// Batches of a spool's content the hash may lag behind its writes by.
/// Memory stays bounded: at most this many batches of [`WRITE_CHUNK`].
const HASH_BACKLOG: usize = 8;

/// Writes `stream` (an object of `size` bytes) into a new file at
/// `partial`, telling followers through `progress` how much of it they can
/// read. Receiving, writing and hashing overlap: the next batch is gathered
/// while the last one is written, and, with a `digest`, a thread of its own
/// hashes the batches as they come (off the readers' path: one hash however
/// many follow). The last byte is kept from followers until the content
/// checks out; a mismatch fails the download with `InvalidData`, so no
/// reader gets the whole of a wrong blob.
pub async fn fill(
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send,
    size: u64,
    digest: Option<Digest>,
    partial: &Path,
    progress: &watch::Sender<Progress>,
) -> io::Result<u64> {
    let mut stream = std::pin::pin!(stream);
    let mut file = Some(tokio::fs::File::create(partial).await?.into_std().await);
    // Dropping the sender (an early return included) ends the hashing.
    let (mut to_hash, hashing) = match &digest {
        Some(digest) => {
            let (send, mut receive) = tokio::sync::mpsc::channel::<Vec<Bytes>>(HASH_BACKLOG);
            let mut hasher = Hasher::new(digest.algorithm());
            let hashing = tokio::task::spawn_blocking(move || {
                while let Some(batch) = receive.blocking_recv() {
                    for chunk in &batch {
                        hasher.update(chunk);
                    }
                }
                hasher.finish()
            });
            (Some(send), Some(hashing))
        }
        None => (None, None),
    };
    // What followers may read: all that is written, less the last byte
    // while the digest is unchecked.
    let readable = |written: u64| match digest {
        Some(_) => written.min(size.saturating_sub(1)),
        None => written,
    };
    let mut written = 0u64;
    progress.send_replace(Progress::Running { written, size });
    // The batch being written: the file comes back with its length.
    let mut writing: Option<tokio::task::JoinHandle<io::Result<(std::fs::File, usize)>>> = None;
    loop {
        let Batch { chunks, len, ended } = gather(&mut stream).await?;
        // Written (not only handed to a thread) before followers are told:
        // a follower reading up to `written` must find those bytes.
        if let Some(batch) = writing.take() {
            let (owned, wrote) = batch.await.map_err(io::Error::other)??;
            file = Some(owned);
            written += wrote as u64;
            progress.send_replace(Progress::Running {
                written: readable(written),
                size,
            });
        }
        if len > 0 {
            if let Some(hash) = &to_hash {
                hash.send(chunks.clone())
                    .await
                    .map_err(|_| io::Error::other("the hashing stopped"))?;
            }
            let mut owned = file.take().expect("the file is back after each write");
            writing = Some(tokio::task::spawn_blocking(move || {
                for chunk in &chunks {
                    owned.write_all(chunk)?;
                }
                Ok((owned, len))
            }));
        }
        if ended {
            break;
        }
    }
    if let Some(batch) = writing.take() {
        let (_, wrote) = batch.await.map_err(io::Error::other)??;
        written += wrote as u64;
        progress.send_replace(Progress::Running {
            written: readable(written),
            size,
        });
    }
    if written != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {written} of {size} bytes"),
        ));
    }
    to_hash.take();
    if let (Some(digest), Some(hashing)) = (&digest, hashing) {
        let found = hashing.await.map_err(io::Error::other)?;
        if &found != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the content's digest is {found}"),
            ));
        }
    }
    Ok(size)
}

/// Streams `range` of a download as it arrives.
pub async fn follow(
    download: Arc<Spool>,
    range: Option<std::ops::Range<u64>>,
) -> io::Result<Option<ContentRead>> {
    let mut progress = download.progress.clone();
    // The size is known once the download's GET answered.
    let size = loop {
        let state = progress.borrow_and_update().clone();
        match state {
            Progress::Running { size, .. } if size != u64::MAX => break size,
            Progress::Done { size } => break size,
            Progress::Failed(io::ErrorKind::NotFound, _) => return Ok(None),
            Progress::Failed(kind, e) => return Err(Progress::error(kind, &e)),
            Progress::Running { .. } => {}
        }
        if progress.changed().await.is_err() {
            return Err(io::Error::other("the download stopped"));
        }
    };
    let file = match tokio::fs::File::open(&download.partial).await {
        Ok(file) => file,
        // Finished and renamed into place before we opened it, or failed
        // and removed (after saying so) since it told the size.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match tokio::fs::File::open(&download.finished).await {
                Ok(file) => file,
                Err(e) => {
                    return match &*progress.borrow() {
                        Progress::Failed(io::ErrorKind::NotFound, _) => Ok(None),
                        Progress::Failed(kind, failure) => Err(Progress::error(*kind, failure)),
                        _ => Err(e),
                    }
                }
            }
        }
        Err(e) => return Err(e),
    };
    let file = Arc::new(file.into_std().await);
    let range = range.unwrap_or(0..size);
    let stream = futures::stream::unfold(
        (file, progress, range.start, range.end),
        |(file, mut progress, mut at, end)| async move {
            if at >= end {
                return None;
            }
            loop {
                let state = progress.borrow_and_update().clone();
                let available = match state {
                    Progress::Running { written, .. } => written,
                    Progress::Done { size } => size,
                    Progress::Failed(kind, e) => {
                        let error = Progress::error(kind, &e);
                        return Some((Err(error), (file, progress, end, end)));
                    }
                };
                if available > at {
                    let want = (available.min(end) - at).min(READ_CHUNK as u64) as usize;
                    let reading = file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        crate::sys::read_exact_at(&reading, want, at)
                    })
                    .await
                    .map_err(io::Error::other)
                    .and_then(|read| read);
                    return match read {
                        Ok(bytes) => {
                            at += want as u64;
                            Some((Ok(bytes), (file, progress, at, end)))
                        }
                        Err(e) => Some((Err(e), (file, progress, end, end))),
                    };
                }
                if progress.changed().await.is_err() {
                    // The sender is gone: its last state is final.
                    if matches!(&*progress.borrow(), Progress::Running { .. }) {
                        return Some((
                            Err(io::Error::other("the download stopped")),
                            (file, progress, end, end),
                        ));
                    }
                }
            }
        },
    );
    let stream: ByteStream = Box::pin(stream);
    Ok(Some(ContentRead {
        size,
        stream,
        verified: download.verifies,
    }))
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    /// A follower reads a download while it is written, many times over: it
    /// must get every byte. (Progress once counted bytes a tokio file had
    /// accepted but not yet written, and a follower then hit the end of the
    /// file early: a truncated blob for its client.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_reads_every_byte_of_a_download_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let content: Bytes = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        for round in 0..20 {
            let partial = dir.path().join(format!("{round}.partial"));
            let (sender, download) =
                Spool::starting(partial.clone(), dir.path().join(round.to_string()), false);
            let chunks: Vec<io::Result<Bytes>> = (0..content.len())
                .step_by(16 * 1024)
                .map(|at| Ok(content.slice(at..(at + 16 * 1024).min(content.len()))))
                .collect();
            let size = content.len() as u64;
            let writer = tokio::spawn(async move {
                let written =
                    fill(futures::stream::iter(chunks), size, None, &partial, &sender).await;
                let _ = sender.send(Progress::Done { size });
                written
            });
            let read = follow(download, None).await.unwrap().expect("found");
            assert_eq!(read.size, size);
            let body: Vec<Bytes> = read.stream.try_collect().await.unwrap_or_else(|e| {
                panic!("round {round}: the follower's read failed: {e}");
            });
            assert_eq!(writer.await.unwrap().unwrap(), size);
            assert_eq!(body.concat(), content, "round {round}");
        }
    }

    /// Runs a download of `content`, checked against `digest`, with one
    /// follower; what the follower read, and how the download ended.
    async fn download_checked(
        content: Bytes,
        digest: Digest,
    ) -> (io::Result<Vec<Bytes>>, bool, io::Result<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("blob.partial");
        let (sender, download) = Spool::starting(partial.clone(), dir.path().join("blob"), true);
        let size = content.len() as u64;
        let chunks: Vec<io::Result<Bytes>> = (0..content.len())
            .step_by(64 * 1024)
            .map(|at| Ok(content.slice(at..(at + 64 * 1024).min(content.len()))))
            .collect();
        let writer = tokio::spawn(async move {
            let outcome = fill(
                futures::stream::iter(chunks),
                size,
                Some(digest),
                &partial,
                &sender,
            )
            .await;
            // Until the download ends, followers may read all but the last
            // byte: the one the digest's verdict releases.
            let before_the_verdict = sender.borrow().clone();
            assert_eq!(
                before_the_verdict,
                Progress::Running {
                    written: size - 1,
                    size
                }
            );
            let _ = match &outcome {
                Ok(size) => sender.send(Progress::Done { size: *size }),
                Err(e) => sender.send(Progress::Failed(e.kind(), e.to_string())),
            };
            outcome
        });
        let (body, verified) = match follow(download, None).await {
            Ok(read) => {
                let read = read.expect("found");
                (read.stream.try_collect().await, read.verified)
            }
            // A follower that comes after the verdict (a loaded machine can
            // let the writer finish first) is told it at once.
            Err(e) => (Err(e), false),
        };
        (body, verified, writer.await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_is_checked_against_its_digest_once_for_its_followers() {
        let content: Bytes = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(crate::oci::Algorithm::Sha256, &content);
        let (body, verified, outcome) = download_checked(content.clone(), digest).await;
        assert!(
            verified,
            "the follower is told the store checks the content"
        );
        assert_eq!(body.unwrap().concat(), content);
        assert_eq!(outcome.unwrap(), content.len() as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_that_does_not_match_its_digest_never_reaches_a_follower_whole() {
        let content: Bytes = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
        let other = Digest::of(crate::oci::Algorithm::Sha256, b"something else");
        let (body, _, outcome) = download_checked(content.clone(), other).await;
        let error = body.expect_err("the follower's read fails");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
