//! Where bytes live, behind one small async trait.
//!
//! The trait is shaped by intent so that both a filesystem and an object store
//! (no rename, no append, multipart uploads) can implement it: whole small
//! documents with a write mode, streamed reads with a byte range, listing of a
//! prefix's children, and upload data that is appended in order and then
//! committed under its final key in one operation. Registry rules (what a key
//! means, what must exist) live above it; [`layout`] is the one place that
//! maps registry objects to keys.

pub mod fs;
pub mod journal;
pub mod layout;

use std::io;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A stream of body bytes, as received from a client or read from storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A borrowed byte source: the caller keeps ownership so it can read what a
/// wrapper (such as a hasher) learned once the storage has consumed it.
pub type ByteSource<'a> = dyn Stream<Item = io::Result<Bytes>> + Send + Unpin + 'a;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace whatever is there, atomically (nothing is written when the
    /// same bytes are there already).
    Overwrite,
    /// Write only if nothing is there; an existing document is left as it is.
    CreateIfAbsent,
    /// Replace atomically, without waiting for durability: for records whose
    /// loss in a crash is harmless (an upload session: its client restarts).
    Scratch,
    /// Write only if nothing is there, visible at once but durable only
    /// eventually (no sync is awaited): for records whose loss in a machine
    /// crash is accepted (tag history entries, see `registry/history.rs`).
    Record,
}

impl WriteMode {
    /// Whether a write in this mode is durable before it returns.
    pub fn is_durable(self) -> bool {
        matches!(self, WriteMode::Overwrite | WriteMode::CreateIfAbsent)
    }
}

/// What is known of a stored object without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// When it was last written or [`Storage::touch`]ed.
    pub modified: std::time::SystemTime,
}

/// An object an interrupted write left under a temporary name: never a
/// key, never listed, harmless, but it takes space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Where it is, relative to the store's root (for reports and removal).
    pub name: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Content being read: its full size and a stream of the requested range.
pub struct ContentRead {
    pub size: u64,
    pub stream: ByteStream,
}

/// An object that is a file on this machine's disk, opened: it can be sent
/// to a socket by the kernel without passing through memory.
pub struct LocalFile {
    pub file: std::fs::File,
    pub size: u64,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Reads a whole small document (links, session records, manifests).
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>>;

    /// Writes a whole small document so that readers see the old or the new
    /// version, never a mix. Returns false when nothing needed writing:
    /// `CreateIfAbsent` found a document, or `Overwrite` found the same bytes;
    /// the document found is then touched (see [`Storage::touch`]), so that
    /// writing something is always a use of it.
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> io::Result<bool>;

    /// [`Storage::put`] for several independent documents at once (each is
    /// whole or absent, the batch as a whole is not atomic), for a backend
    /// to share the cost of durability between them. Returns, per document,
    /// whether it was written.
    async fn put_all(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        let mut written = Vec::with_capacity(docs.len());
        for (key, data, mode) in docs {
            written.push(self.put(&key, data, mode).await?);
        }
        Ok(written)
    }

    /// Returns once every write this store has made visible so far is
    /// durable: for a caller that acknowledges what it found, not what it
    /// wrote (a write waits for its own durability).
    async fn barrier(&self) -> io::Result<()> {
        Ok(())
    }

    /// The size of a stored object, or `None` when it does not exist.
    async fn size(&self, key: &str) -> io::Result<Option<u64>>;

    /// Size and modification time of an object, or `None` when it does not
    /// exist.
    async fn stat(&self, key: &str) -> io::Result<Option<ObjectInfo>>;

    /// Marks an object as in use now (sets its modification time), so that a
    /// garbage collector that decided to collect it before then spares it.
    /// Returns false when it does not exist. Whoever makes an existing object
    /// reachable (a manifest naming a blob, a mount) touches it first and
    /// then relies on it only if this returned true.
    async fn touch(&self, key: &str) -> io::Result<bool>;

    /// [`Storage::touch`] for several objects at once (one round trip where
    /// the store allows): whether each existed, in order.
    async fn touch_all(&self, keys: Vec<String>) -> io::Result<Vec<bool>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in &keys {
            found.push(self.touch(key).await?);
        }
        Ok(found)
    }

    /// Deletes an object only if it was not modified or touched at or after
    /// `cutoff`, atomically with respect to [`Storage::touch`]: once a touch
    /// has returned true, this will not delete the object. Returns whether it
    /// deleted it.
    async fn delete_if_untouched_since(
        &self,
        key: &str,
        cutoff: std::time::SystemTime,
    ) -> io::Result<bool>;

    /// Moves an object to another key (replacing what is there). Returns
    /// false when `from` does not exist.
    async fn rename(&self, from: &str, to: &str) -> io::Result<bool>;

    /// Streams an object, or the `range` of it (which must lie within it).
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<Option<ContentRead>>;

    /// The object as an open local file, or None where it does not exist or
    /// the store keeps no local files (the default).
    async fn local_file(&self, _key: &str) -> io::Result<Option<LocalFile>> {
        Ok(None)
    }

    /// Deletes one object. Returns false when it did not exist.
    async fn delete(&self, key: &str) -> io::Result<bool>;

    /// Deletes every object under `prefix`.
    async fn delete_all(&self, prefix: &str) -> io::Result<()>;

    /// The names of the immediate children of `prefix` (objects and
    /// sub-prefixes), in no promised order.
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// Appends `data` to an upload's content at `offset`. Anything stored past
    /// `offset` by an earlier, failed attempt is discarded first, so the
    /// session record (which holds the offset) is the truth. Appended bytes
    /// survive a crash of this process, but a machine crash only while
    /// [`Storage::upload_generation`] stays the same. Returns the number of
    /// bytes appended.
    async fn append_upload(
        &self,
        key: &str,
        offset: u64,
        data: &mut ByteSource<'_>,
    ) -> io::Result<u64>;

    /// Makes an upload's content (exactly `size` bytes) the object at `dest`
    /// in one atomic step, durably, and removes the upload's content. If
    /// `dest` already exists it is replaced: afterwards `dest` holds exactly
    /// the bytes the registry hashed, which is what lets it count the blob as
    /// verified (and a re-push heals a damaged copy).
    async fn commit_upload(&self, key: &str, size: u64, dest: &str) -> io::Result<()>;

    /// Names the period during which appended upload content stays readable
    /// (for a filesystem: this boot of the machine, since appends are not
    /// fsynced). An upload session recorded under another generation may have
    /// lost bytes it counts and must not be continued.
    fn upload_generation(&self) -> &str;

    /// Every object left under a temporary name by a write that did not
    /// finish (a crash, a full disk). A write in progress has one too, for
    /// a moment: look at `modified` before removing one.
    async fn list_leftovers(&self) -> io::Result<Vec<Leftover>>;

    /// Removes a leftover named by [`Storage::list_leftovers`]. Returns false
    /// when it was gone already; refuses any name that is not a leftover's.
    async fn remove_leftover(&self, name: &str) -> io::Result<bool>;

    /// Checks that the store can be written (readiness).
    async fn check_writable(&self) -> io::Result<()>;
}
