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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::io_error;
use crate::oci::{Digest, Hasher};
use crate::storage::spool::{fill, follow, gather, Batch, Progress, Spool, READ_CHUNK};
use crate::storage::{layout, ByteStream, ContentRead};

/// An object larger than this is downloaded as ranges of this size, several
/// side by side ([`SEGMENTS_IN_FLIGHT`]): one GET stream from an object store
/// is slower than the store and the network (Garage streams a GET from one
/// task; AWS documents per-connection limits and recommends ranged GETs side
/// by side), and a layer's first pull is what a node waits for.
const SEGMENT: u64 = 8 * 1024 * 1024;

/// Ranges of one download in flight at once. Memory stays bounded: each
/// writes its bytes as they come, in batches of at most [`WRITE_CHUNK`].
const SEGMENTS_IN_FLIGHT: usize = 4;

#[derive(Default)]
struct Index {
    /// Complete files: size, last use (a tick), and whether this process
    /// checked them against their digest (files kept from an earlier run
    /// are not trusted).
    files: HashMap<String, (u64, u64, bool)>,
    bytes: u64,
    tick: u64,
    downloads: HashMap<String, Arc<Spool>>,
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
    pub(super) async fn read<S: ObjectStore + ?Sized>(
        self: &Arc<Self>,
        store: &Arc<S>,
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
    fn start<S: ObjectStore + ?Sized>(
        self: &Arc<Self>,
        store: Arc<S>,
        location: object_store::path::Path,
        key: &str,
    ) -> Arc<Spool> {
        let partial = self.dir.join(format!(
            "{}.{}.partial",
            file_name(key),
            uuid::Uuid::new_v4()
        ));
        let digest = layout::blob_digest_of(key);
        let (progress, download) =
            Spool::starting(partial.clone(), self.path(key), digest.is_some());
        let verified = digest.is_some();
        let cache = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let outcome = fetch(store, &location, digest, &partial, &progress, SEGMENT).await;
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
                    // Told before the file goes: a follower that finds no
                    // file then finds the failure (see `follow`).
                    let _ = progress.send(Progress::Failed(e.kind(), e.to_string()));
                    let _ = std::fs::remove_file(&partial);
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

/// Downloads an object into `partial`, telling followers how far it got:
/// its first `segment` bytes by a ranged GET that also says the object's
/// size, and the rest, if any, as ranges side by side
/// ([`fetch_ranges`]).
async fn fetch<S: ObjectStore + ?Sized>(
    store: Arc<S>,
    location: &object_store::path::Path,
    digest: Option<Digest>,
    partial: &Path,
    progress: &watch::Sender<Progress>,
    segment: u64,
) -> io::Result<u64> {
    let first = GetOptions {
        range: Some(GetRange::Bounded(0..segment)),
        ..GetOptions::default()
    };
    let (result, ranged) = match store.get_opts(location, first).await {
        Ok(result) => (result, true),
        Err(e @ object_store::Error::NotFound { .. }) => return Err(io_error(e)),
        // An empty object has no first byte to range over (S3 answers 416):
        // the whole object, in one GET.
        Err(_) => {
            let whole = store.get_opts(location, GetOptions::default()).await;
            (whole.map_err(io_error)?, false)
        }
    };
    let size = result.meta.size;
    let first = result.into_stream().map(|chunk| chunk.map_err(io_error));
    if size <= segment || !ranged {
        return fill(first, size, digest, partial, progress).await;
    }
    fetch_ranges(
        store,
        location,
        Box::pin(first),
        size,
        digest,
        partial,
        progress,
        segment,
    )
    .await
}

/// [`fetch`] for an object larger than one segment: `first` streams its
/// first `segment` bytes; the other segments are GETs of their own, up to
/// [`SEGMENTS_IN_FLIGHT`] at a time, each written at its place in the file
/// as its bytes come. Followers are told of the part written from the
/// start without a gap. The content is hashed from the file in order as
/// that part grows (a read from the page cache, by a task of its own, so
/// that followers hear of new bytes and new ranges start while it hashes),
/// and, as in [`fill`], the last byte is kept from followers until the
/// digest checks out.
#[allow(clippy::too_many_arguments)]
async fn fetch_ranges<S: ObjectStore + ?Sized>(
    store: Arc<S>,
    location: &object_store::path::Path,
    first: ByteStream,
    size: u64,
    digest: Option<Digest>,
    partial: &Path,
    progress: &watch::Sender<Progress>,
    segment: u64,
) -> io::Result<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let file = Arc::new(
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(partial)
            .await?
            .into_std()
            .await,
    );
    let ranges: Vec<std::ops::Range<u64>> = (0..size)
        .step_by(segment as usize)
        .map(|start| start..(start + segment).min(size))
        .collect();
    // Bytes written of each range, from its start.
    let written: Arc<Vec<AtomicU64>> = Arc::new(ranges.iter().map(|_| AtomicU64::new(0)).collect());
    let wrote = Arc::new(tokio::sync::Notify::new());
    // The written prefix, for the hash; dropped on an early return, which
    // ends the hashing task.
    let (hash_to, hash_from) = watch::channel(0u64);
    let hashing = digest.as_ref().map(|d| {
        let hashing = FileHash {
            hasher: Hasher::new(d.algorithm()),
            buffer: Vec::new(),
        };
        tokio::spawn(hash_in_order(file.clone(), hashing, hash_from, size))
    });
    let readable = |prefix: u64| match digest {
        Some(_) => prefix.min(size - 1),
        None => prefix,
    };
    progress.send_replace(Progress::Running { written: 0, size });
    // Dropped on an early return: the ranges still running are aborted.
    let mut running = tokio::task::JoinSet::new();
    let mut first = Some(first);
    let (mut started, mut told) = (0, 0u64);
    loop {
        while running.len() < SEGMENTS_IN_FLIGHT && started < ranges.len() {
            let source = match first.take() {
                Some(stream) => RangeSource::Stream(stream),
                None => RangeSource::Get(store.clone(), location.clone()),
            };
            running.spawn(write_range(
                source,
                file.clone(),
                ranges[started].clone(),
                written.clone(),
                started,
                wrote.clone(),
            ));
            started += 1;
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            ended = running.join_next() => match ended {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(io::Error::other(e)),
            },
            () = wrote.notified() => {}
        }
        // The part written from the start without a gap.
        let mut prefix = 0;
        for (range, done) in ranges.iter().zip(written.iter()) {
            let done = done.load(Ordering::Acquire);
            prefix = range.start + done;
            if done < range.end - range.start {
                break;
            }
        }
        if prefix > told {
            told = prefix;
            progress.send_replace(Progress::Running {
                written: readable(told),
                size,
            });
            hash_to.send_replace(told);
        }
    }
    if told != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {told} of {size} bytes"),
        ));
    }
    if let Some(hashing) = hashing {
        let found = hashing.await.map_err(io::Error::other)??;
        if Some(&found) != digest.as_ref() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the content's digest is {found}"),
            ));
        }
    }
    Ok(size)
}

/// Where a range's bytes come from: the stream a GET already opened, or a
/// GET of its own.
enum RangeSource<S: ?Sized> {
    Stream(ByteStream),
    Get(Arc<S>, object_store::path::Path),
}

/// Writes `range` of the object at its place in `file`, adding what it
/// wrote to `written[index]` and waking the download after each batch.
async fn write_range<S: ObjectStore + ?Sized>(
    source: RangeSource<S>,
    file: Arc<std::fs::File>,
    range: std::ops::Range<u64>,
    written: Arc<Vec<std::sync::atomic::AtomicU64>>,
    index: usize,
    wrote: Arc<tokio::sync::Notify>,
) -> io::Result<()> {
    let mut stream: ByteStream = match source {
        RangeSource::Stream(stream) => stream,
        RangeSource::Get(store, location) => {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            let result = store.get_opts(&location, options).await.map_err(io_error)?;
            Box::pin(result.into_stream().map(|chunk| chunk.map_err(io_error)))
        }
    };
    let mut at = range.start;
    loop {
        let Batch { chunks, len, ended } = gather(&mut stream).await?;
        if at + len as u64 > range.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the store sent more than the {} bytes asked for",
                    range.end - range.start
                ),
            ));
        }
        if len > 0 {
            let writing = file.clone();
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                use std::os::unix::fs::FileExt;
                let mut offset = at;
                for chunk in &chunks {
                    writing.write_all_at(chunk, offset)?;
                    offset += chunk.len() as u64;
                }
                Ok(())
            })
            .await
            .map_err(io::Error::other)??;
            at += len as u64;
            // Written before it is counted: a follower told of these bytes
            // finds them in the file.
            written[index].fetch_add(len as u64, std::sync::atomic::Ordering::Release);
            wrote.notify_one();
        }
        if ended {
            break;
        }
    }
    if at != range.end {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "read {} of {} bytes of a range",
                at - range.start,
                range.end - range.start
            ),
        ));
    }
    Ok(())
}

/// A hash of a file's content in progress, and the buffer it reads the file
/// through (one for the whole download: a new one per read would be zeroed
/// or faulted in each time, another pass over every byte).
struct FileHash {
    hasher: Hasher,
    buffer: Vec<u8>,
}

/// Hashes the first `size` bytes of `file` in order, as `written` (the
/// prefix written so far) grows. Fails if `written` is dropped before.
async fn hash_in_order(
    file: Arc<std::fs::File>,
    mut hashing: FileHash,
    mut written: watch::Receiver<u64>,
    size: u64,
) -> io::Result<Digest> {
    let mut hashed = 0;
    while hashed < size {
        let prefix = *written.borrow_and_update();
        if prefix > hashed {
            hashing = hash_file(file.clone(), hashing, hashed..prefix).await?;
            hashed = prefix;
        } else if written.changed().await.is_err() {
            return Err(io::Error::other("the download stopped"));
        }
    }
    Ok(hashing.hasher.finish())
}

/// Hashes `range` of `file` into `hashing`, a block at a time.
async fn hash_file(
    file: Arc<std::fs::File>,
    mut hashing: FileHash,
    range: std::ops::Range<u64>,
) -> io::Result<FileHash> {
    if range.is_empty() {
        return Ok(hashing);
    }
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let FileHash { hasher, buffer } = &mut hashing;
        buffer.resize(READ_CHUNK, 0);
        let mut at = range.start;
        while at < range.end {
            let want = (range.end - at).min(READ_CHUNK as u64) as usize;
            file.read_exact_at(&mut buffer[..want], at)?;
            hasher.update(&buffer[..want]);
            at += want as u64;
        }
        Ok(hashing)
    })
    .await
    .map_err(io::Error::other)?
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::TryStreamExt;

    use super::*;

    /// Runs [`fetch`] of `content` (stored in memory) in ranges of
    /// `segment` bytes, with one follower reading as it goes; what the
    /// follower read, and how the download ended.
    async fn fetched(
        content: Option<Bytes>,
        digest: Option<Digest>,
        segment: u64,
    ) -> (io::Result<Option<Vec<Bytes>>>, io::Result<u64>) {
        use object_store::ObjectStoreExt;
        let store = Arc::new(object_store::memory::InMemory::new());
        let location = object_store::path::Path::from("blobs/data");
        if let Some(content) = content {
            store.put(&location, content.into()).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("blob.partial");
        let (sender, download) =
            Spool::starting(partial.clone(), dir.path().join("blob"), digest.is_some());
        let writer = tokio::spawn(async move {
            let outcome = fetch(store, &location, digest, &partial, &sender, segment).await;
            let _ = match &outcome {
                Ok(size) => sender.send(Progress::Done { size: *size }),
                Err(e) => sender.send(Progress::Failed(e.kind(), e.to_string())),
            };
            outcome
        });
        let body = match follow(download, None).await {
            Ok(Some(read)) => read.stream.try_collect().await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        (body, writer.await.unwrap())
    }

    /// Content that differs at every offset within a range's length.
    fn patterned(len: usize) -> Bytes {
        (0..len as u64).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The hash of a download in ranges follows the written prefix as it
    /// grows, in steps that do not fall on its reads' boundaries, and ends
    /// with the digest of the whole; it fails, rather than waits forever,
    /// when the download stops before the end.
    #[tokio::test]
    async fn the_hash_follows_the_written_prefix_and_fails_when_the_download_stops() {
        let content = patterned(3 * READ_CHUNK + 12_345);
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, &content).unwrap();
        let file = Arc::new(file);
        let fresh = || FileHash {
            hasher: Hasher::new(crate::oci::Algorithm::Sha256),
            buffer: Vec::new(),
        };
        let size = content.len() as u64;
        let (written, prefix) = watch::channel(0u64);
        let hashing = tokio::spawn(hash_in_order(file.clone(), fresh(), prefix, size));
        for step in [1, READ_CHUNK as u64 + 7, 2 * READ_CHUNK as u64, size] {
            written.send_replace(step);
            tokio::task::yield_now().await;
        }
        let found = hashing.await.unwrap().unwrap();
        assert_eq!(found, Digest::of(crate::oci::Algorithm::Sha256, &content));

        let (written, prefix) = watch::channel(0u64);
        let hashing = tokio::spawn(hash_in_order(file, fresh(), prefix, size));
        written.send_replace(size / 2);
        drop(written);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), hashing).await;
        assert!(
            stopped.expect("ends").unwrap().is_err(),
            "a stopped download"
        );
    }

    /// Many ranges, four in flight, written out of order at their places:
    /// the follower gets every byte in order and the digest is checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_in_ranges_reaches_its_follower_whole_and_checked() {
        let content = patterned(5 * 1024 * 1024 + 123);
        let digest = Digest::of(crate::oci::Algorithm::Sha256, &content);
        for segment in [64 * 1024, 1024 * 1024, 5 * 1024 * 1024 + 122] {
            let (body, outcome) =
                fetched(Some(content.clone()), Some(digest.clone()), segment).await;
            let body = body.unwrap().expect("found");
            assert_eq!(body.concat(), content, "segment {segment}");
            assert_eq!(outcome.unwrap(), content.len() as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_in_ranges_that_does_not_match_its_digest_fails() {
        let content = patterned(3 * 1024 * 1024);
        let other = Digest::of(crate::oci::Algorithm::Sha256, b"something else");
        let (body, outcome) = fetched(Some(content), Some(other), 256 * 1024).await;
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// An object of one range or less is one GET; an empty one (no first
    /// byte to range over) and a missing one are answered too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_empty_and_missing_objects_download_as_they_are() {
        for len in [1, 1000, 64 * 1024] {
            let content = patterned(len);
            let digest = Digest::of(crate::oci::Algorithm::Sha256, &content);
            let (body, outcome) = fetched(Some(content.clone()), Some(digest), 64 * 1024).await;
            assert_eq!(
                body.unwrap().expect("found").concat(),
                content,
                "{len} bytes"
            );
            assert_eq!(outcome.unwrap(), len as u64);
        }
        let empty = Digest::of(crate::oci::Algorithm::Sha256, b"");
        let (body, outcome) = fetched(Some(Bytes::new()), Some(empty), 64 * 1024).await;
        assert!(body.unwrap().expect("found").concat().is_empty());
        assert_eq!(outcome.unwrap(), 0);
        let (body, outcome) = fetched(None, None, 64 * 1024).await;
        assert!(body.unwrap().is_none(), "a missing object is not found");
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
