//! A read-through cache of blob content on this machine's disk, so that a
//! pull storm (many nodes pulling one new layer at once) reads each blob
//! from the bucket once per replica, not once per client: the first reader
//! starts one download into a file, every reader meanwhile follows that file
//! as it grows, and later readers get the finished file (sent by the kernel:
//! [`LocalFiles`]). Content is keyed by digest, so a cached copy never goes
//! stale; what this process writes or removes under a key drops its copy.
//! The cache is bounded in bytes (least recently used files go first) and
//! disposable: it lives under `--data-dir`, and a restart forgets nothing
//! that the bucket does not hold.

use std::collections::HashMap;
use std::io;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use object_store::aws::AmazonS3;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::io_error;
use crate::oci::{Digest, Hasher};
use crate::storage::{layout, ByteStream, ContentRead};

/// How much a follower reads from the file at a time (one blocking-pool
/// hand-off each, straight into the buffer it sends).
const READ_CHUNK: usize = 1024 * 1024;

/// How much a download gathers, of what the store has already sent, before
/// it writes: large writes (one blocking-pool hand-off and one wake-up of
/// the followers each), while a slow stream still has its bytes written, and
/// followed, as they come.
const WRITE_CHUNK: usize = 1024 * 1024;

/// A download in flight: how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
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
    fn error(kind: io::ErrorKind, message: &str) -> io::Error {
        io::Error::new(kind, message.to_owned())
    }
}

struct Download {
    /// The file being written (renamed into place when complete: followers
    /// keep reading through their open handle).
    partial: PathBuf,
    /// Where the finished file goes.
    finished: PathBuf,
    progress: watch::Receiver<Progress>,
    /// Checks the content against the digest its key names (see `fill`).
    verifies: bool,
}

#[derive(Default)]
struct Index {
    /// Complete files: size, last use (a tick), and whether this process
    /// checked them against their digest (files kept from an earlier run
    /// are not trusted).
    files: HashMap<String, (u64, u64, bool)>,
    bytes: u64,
    tick: u64,
    downloads: HashMap<String, Arc<Download>>,
}

pub(super) struct BlobCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
}

/// A cache file's name: the key's path segments joined (a blob key is
/// `blobs/<alg>/<xx>/<hex>/data`: unique, and safe as one name).
fn file_name(key: &str) -> String {
    key.replace('/', "_")
}

impl BlobCache {
    /// Opens (creates) the cache in `dir`: finished files from an earlier run
    /// are kept, partial ones removed.
    pub(super) fn open(dir: &Path, capacity: u64) -> io::Result<BlobCache> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let size = entry.metadata()?.len();
            index.bytes += size;
            index.files.insert(name, (size, 0, false));
        }
        let cache = BlobCache {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(index),
        };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(file_name(key))
    }

    /// The finished copy of `key`, opened, if there is one.
    pub(super) fn open_file(&self, key: &str) -> Option<(std::fs::File, u64)> {
        self.open_checked_file(key)
            .map(|(file, size, _)| (file, size))
    }

    /// [`BlobCache::open_file`], and whether its content was checked against
    /// its digest.
    fn open_checked_file(&self, key: &str) -> Option<(std::fs::File, u64, bool)> {
        let name = file_name(key);
        let (size, verified) = {
            let mut index = self.index.lock().expect("lock");
            index.tick += 1;
            let tick = index.tick;
            let entry = index.files.get_mut(&name)?;
            entry.1 = tick;
            (entry.0, entry.2)
        };
        match std::fs::File::open(self.path(key)) {
            Ok(file) => Some((file, size, verified)),
            // Evicted meanwhile.
            Err(_) => None,
        }
    }

    /// Drops the copy of `key` (its object was written or removed).
    pub(super) fn forget(&self, key: &str) {
        let name = file_name(key);
        let mut index = self.index.lock().expect("lock");
        if let Some((size, _, _)) = index.files.remove(&name) {
            index.bytes -= size;
            let _ = std::fs::remove_file(self.path(key));
        }
    }

    /// Reads `key` (within `range`) through the cache: from the finished
    /// file, by following a download in flight, or by starting one. `None`
    /// when the object does not exist.
    pub(super) async fn read(
        self: &Arc<Self>,
        store: &Arc<AmazonS3>,
        location: object_store::path::Path,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> io::Result<Option<ContentRead>> {
        if let Some((file, size, verified)) = self.open_checked_file(key) {
            let mut read = read_file(tokio::fs::File::from_std(file), size, range).await?;
            read.verified = verified;
            return Ok(Some(read));
        }
        let download = {
            let mut index = self.index.lock().expect("lock");
            match index.downloads.get(key) {
                Some(download) => download.clone(),
                None => {
                    let download = self.start(store.clone(), location, key);
                    index.downloads.insert(key.to_owned(), download.clone());
                    download
                }
            }
        };
        follow(download, range).await
    }

    /// Starts downloading `key` into a partial file.
    fn start(
        self: &Arc<Self>,
        store: Arc<AmazonS3>,
        location: object_store::path::Path,
        key: &str,
    ) -> Arc<Download> {
        let partial = self.dir.join(format!(
            "{}.{}.partial",
            file_name(key),
            uuid::Uuid::new_v4()
        ));
        let (progress, receiver) = watch::channel(Progress::Running {
            written: 0,
            size: u64::MAX,
        });
        let digest = layout::blob_digest_of(key);
        let download = Arc::new(Download {
            partial: partial.clone(),
            finished: self.path(key),
            progress: receiver,
            verifies: digest.is_some(),
        });
        let verified = digest.is_some();
        let cache = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let outcome = fetch(&store, &location, digest, &partial, &progress).await;
            let mut index = cache.index.lock().expect("lock");
            index.downloads.remove(&key);
            match outcome {
                Ok(size) => {
                    let name = file_name(&key);
                    if std::fs::rename(&partial, cache.path(&key)).is_ok() {
                        index.tick += 1;
                        let tick = index.tick;
                        if let Some((old, _, _)) = index.files.insert(name, (size, tick, verified))
                        {
                            index.bytes -= old;
                        }
                        index.bytes += size;
                    }
                    drop(index);
                    let _ = progress.send(Progress::Done { size });
                    cache.evict();
                }
                Err(e) => {
                    drop(index);
                    if e.kind() == io::ErrorKind::InvalidData {
                        tracing::error!(key, error = %e, "blob content read from the store does not match its digest: not served");
                    }
                    let _ = std::fs::remove_file(&partial);
                    let _ = progress.send(Progress::Failed(e.kind(), e.to_string()));
                }
            }
        });
        download
    }

    /// Removes the least recently used files until the cache fits.
    fn evict(&self) {
        let mut index = self.index.lock().expect("lock");
        while index.bytes > self.capacity {
            let Some(oldest) = index
                .files
                .iter()
                .min_by_key(|(_, (_, tick, _))| *tick)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            let (size, _, _) = index.files.remove(&oldest).expect("present");
            index.bytes -= size;
            // A reader that has it open keeps reading it.
            let _ = std::fs::remove_file(self.dir.join(&oldest));
        }
    }
}

/// Downloads an object into `partial`, telling followers how far it got.
async fn fetch(
    store: &AmazonS3,
    location: &object_store::path::Path,
    digest: Option<Digest>,
    partial: &Path,
    progress: &watch::Sender<Progress>,
) -> io::Result<u64> {
    let result = store.get(location).await.map_err(io_error)?;
    let size = result.meta.size;
    let stream = result.into_stream().map(|chunk| chunk.map_err(io_error));
    fill(stream, size, digest, partial, progress).await
}

/// Writes `stream` (an object of `size` bytes) into a new file at
/// `partial`, telling followers through `progress` how much of it they can
/// read. With a `digest`, the content is hashed as it is written (on the
/// writing thread, off the readers' path: one hash however many follow),
/// and the last byte is kept from followers until it checks out; a
/// mismatch fails the download with `InvalidData`, so no reader gets the
/// whole of a wrong blob.
async fn fill(
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send,
    size: u64,
    digest: Option<Digest>,
    partial: &Path,
    progress: &watch::Sender<Progress>,
) -> io::Result<u64> {
    let mut stream = std::pin::pin!(stream);
    let mut file = Some(tokio::fs::File::create(partial).await?.into_std().await);
    let mut hasher = digest.as_ref().map(|d| Hasher::new(d.algorithm()));
    // What followers may read: all that is written, less the last byte
    // while the digest is unchecked.
    let readable = |written: u64| match digest {
        Some(_) => written.min(size.saturating_sub(1)),
        None => written,
    };
    let mut written = 0u64;
    progress.send_replace(Progress::Running { written, size });
    let mut ended = false;
    while !ended {
        // One chunk (waiting for it), then whatever else has arrived.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut gathered = 0usize;
        match stream.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                gathered += chunk.len();
                batch.push(chunk);
            }
            None => break,
        }
        while gathered < WRITE_CHUNK {
            match stream.next().now_or_never() {
                Some(Some(chunk)) => {
                    let chunk = chunk?;
                    gathered += chunk.len();
                    batch.push(chunk);
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        // Written (not only handed to a thread) before followers are told:
        // a follower reading up to `written` must find those bytes.
        let mut owned = file.take().expect("the file is back after each write");
        let mut hashing = hasher.take();
        (owned, hashing) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            for chunk in &batch {
                owned.write_all(chunk)?;
                if let Some(hasher) = &mut hashing {
                    hasher.update(chunk);
                }
            }
            Ok((owned, hashing))
        })
        .await
        .map_err(io::Error::other)??;
        file = Some(owned);
        hasher = hashing;
        written += gathered as u64;
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
    if let (Some(digest), Some(hasher)) = (&digest, hasher) {
        let found = hasher.finish();
        if &found != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the content's digest is {found}"),
            ));
        }
    }
    Ok(size)
}

/// Streams `range` of a finished file.
async fn read_file(
    mut file: tokio::fs::File,
    size: u64,
    range: Option<std::ops::Range<u64>>,
) -> io::Result<ContentRead> {
    let range = range.unwrap_or(0..size);
    file.seek(io::SeekFrom::Start(range.start)).await?;
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file.take(range.end - range.start), READ_CHUNK);
    Ok(ContentRead {
        size,
        stream: Box::pin(stream),
        verified: false,
    })
}

/// Streams `range` of a download as it arrives.
async fn follow(
    download: Arc<Download>,
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
        // Finished and renamed into place before we opened it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tokio::fs::File::open(&download.finished).await?
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
                        use std::os::unix::fs::FileExt;
                        let mut buffer = vec![0; want];
                        reading.read_exact_at(&mut buffer, at).map(|()| buffer)
                    })
                    .await
                    .map_err(io::Error::other)
                    .and_then(|read| read);
                    return match read {
                        Ok(buffer) => {
                            at += want as u64;
                            Some((Ok(Bytes::from(buffer)), (file, progress, at, end)))
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
            let (sender, receiver) = watch::channel(Progress::Running {
                written: 0,
                size: u64::MAX,
            });
            let download = Arc::new(Download {
                partial: partial.clone(),
                finished: dir.path().join(round.to_string()),
                progress: receiver,
                verifies: false,
            });
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
        let (sender, receiver) = watch::channel(Progress::Running {
            written: 0,
            size: u64::MAX,
        });
        let download = Arc::new(Download {
            partial: partial.clone(),
            finished: dir.path().join("blob"),
            progress: receiver,
            verifies: true,
        });
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
        let read = follow(download, None).await.unwrap().expect("found");
        let verified = read.verified;
        let body = read.stream.try_collect().await;
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
