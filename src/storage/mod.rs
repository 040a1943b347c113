//! Where bytes live, behind one small async trait.
//!
//! The trait is shaped by intent so that both a filesystem and an object store
//! (no rename, no append, multipart uploads, listings a page at a time) can
//! implement it: whole small documents with a write mode, streamed reads with
//! a byte range, listing one sorted page of a prefix's children, and upload
//! data that is appended in order and then committed under its final key in
//! one operation. Registry rules (what a key means, what must exist) live
//! above it; [`layout`] is the one place that maps registry objects to keys.
//!
//! **The core** ([`Storage`]'s required methods) is what every backend
//! implements. **Capabilities** are what only some backends can do; each is
//! asked for through a method that returns `None` by default, and the
//! registry goes without when it gets `None`:
//! - [`Storage::local_files`]: objects are files on this machine, which can
//!   be sent to a socket by the kernel (`sendfile`);
//! - [`Storage::leftovers`]: interrupted writes leave debris under temporary
//!   names that a check (`berth fsck`) lists and removes;
//! - [`Storage::deferred_durability`]: small documents become visible before
//!   they are durable (a write-ahead journal), with a barrier to wait for them;
//! - [`Storage::upload_generation`]: appended upload bytes are not durable
//!   until committed, so an upload may have lost bytes across a machine crash.
//!
//! An object store (S3) can implement the core only: its writes are durable
//! when they return and its objects are not local files. (Its incomplete
//! multipart uploads are debris it may report through `leftovers` later.)
//! `storage::memory` (tests) is such a core-only store: the registry and the
//! whole lifecycle run on it.

pub mod fs;
pub mod journal;
pub mod layout;
#[cfg(test)]
pub mod memory;
pub mod s3;
pub mod spool;

use std::io;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A stream of body bytes, as received from a client or read from storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A client's request body on its way to storage: its bytes and, when the
/// client declared it (`Content-Length`), how many there are. A backend that
/// knows the length up front can lay out what it writes before the bytes
/// arrive (an object store streams each part of a multipart upload as its
/// bytes come in: `storage/s3/parts.rs`).
pub struct RequestBody {
    pub stream: ByteStream,
    pub length: Option<u64>,
}

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
    /// The store checks this content against the digest its key names (a
    /// blob's data, [`layout::blob_digest_of`]) once for all its readers, so
    /// the reader need not hash it: it has been checked, or will be before
    /// the stream's last byte, which a mismatch replaces with an error of
    /// kind `InvalidData` (the S3 blob cache checks as it downloads).
    pub verified: bool,
}

/// An object that is a file on this machine's disk, opened: it can be sent
/// to a socket by the kernel without passing through memory.
pub struct LocalFile {
    pub file: std::fs::File,
    pub size: u64,
}

/// How many names one [`Storage::list`] call returns at most when a caller
/// walks a whole prefix: S3's page, so a walk costs an object store one
/// request a page and holds one page in memory.
pub const LIST_PAGE: usize = 1000;

/// One page of a listing: names in ascending byte order, and whether more
/// follow the last of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub names: Vec<String>,
    pub more: bool,
}

/// One page of a tree listing ([`Storage::list_tree`]): objects in
/// ascending order of name, and whether more follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreePage {
    pub objects: Vec<TreeObject>,
    pub more: bool,
}

/// An object of a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeObject {
    /// Below the listed prefix (`a/b/link`).
    pub name: String,
    pub size: u64,
    /// When it was last written or touched, as the listing tells it (an
    /// object store's `LastModified`).
    pub modified: std::time::SystemTime,
}

/// The core every backend implements. Keys are `/`-separated paths made by
/// [`layout`] (checked by [`layout::is_safe_key`]); an object is a whole
/// value under a key, and a prefix is a key's leading segments.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Reads a whole small document (links, session records, manifests).
    /// `None` when it does not exist.
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>>;

    /// Writes a whole small document so that readers see the old or the new
    /// version, never a mix, and durably before it returns for the durable
    /// modes ([`WriteMode::is_durable`]). Returns false when nothing needed
    /// writing: `CreateIfAbsent`/`Record` found a document, or `Overwrite`
    /// found the same bytes; the document found is then touched (see
    /// [`Storage::touch`]), so that writing something is always a use of it.
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> io::Result<bool>;

    /// Creates a document only if none is there, such that of several
    /// processes creating it at once exactly one is told it did (true), and
    /// the others find the winner's document (false). For decisions that
    /// must hold across replicas (an immutable tag's first push). Default:
    /// [`Storage::put`] with [`WriteMode::CreateIfAbsent`], exclusive on a
    /// backend whose create-if-absent is.
    async fn create_exclusive(&self, key: &str, data: Bytes) -> io::Result<bool> {
        self.put(key, data, WriteMode::CreateIfAbsent).await
    }

    /// [`Storage::put`] for several independent documents at once (each is
    /// whole or absent, the batch as a whole is not atomic), for a backend
    /// to share the cost of durability between them. Returns, per document,
    /// whether it was written. Default: one `put` after another.
    async fn put_all(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        put_each(self, docs).await
    }

    /// [`Storage::put`] for documents that must land in order (blob content,
    /// then the link naming it: a reader that finds a later one finds the
    /// earlier ones), for a backend to share the work that follows each
    /// write (an object store's one look at the collections for all of them).
    /// Returns, per document, whether it was written. Default: one `put`
    /// after another.
    async fn put_chain(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        put_each(self, docs).await
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
    /// then relies on it only if this returned true (see `docs/design/gc.md`).
    async fn touch(&self, key: &str) -> io::Result<bool>;

    /// [`Storage::touch`] for several objects at once (one round trip where
    /// the store allows): the size of each object touched, `None` where it
    /// does not exist, in order. A manifest push compares these sizes with
    /// its descriptors', so a backend that learns them with the touch (a
    /// file's fstat, an object store's answer) saves a stat per object.
    /// Default: a touch, then a size, per object.
    async fn touch_all(&self, keys: Vec<String>) -> io::Result<Vec<Option<u64>>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in &keys {
            found.push(match self.touch(key).await? {
                true => self.size(key).await?,
                false => None,
            });
        }
        Ok(found)
    }

    /// The sizes [`Storage::touch_all`] would answer for `keys`, without a
    /// touch, when this process touched every one of them less than `within`
    /// ago (the caller's staleness bound for what it knows of other
    /// processes' changes), found each there, and that touch still protects
    /// relying on them from any collection: for a store whose touch is dear
    /// (S3: a marker PUT, a flag GET and a HEAD each, docs/design/s3.md §5),
    /// so that a CI job tagging one image three times in a row pays for one
    /// touch. `None` when they need a touch. Default: always `None` (a local
    /// touch is cheaper than the bookkeeping).
    fn touched_within(&self, _keys: &[String], _within: std::time::Duration) -> Option<Vec<u64>> {
        None
    }

    /// How long a touch is answered from memory at most, by this process or
    /// any other over the same store ([`Storage::touched_within`]'s bound on
    /// this backend, whatever the caller's): a removal no collection decided
    /// (a manifest or blob DELETE through the API) waits this long before it
    /// is acknowledged, so that an answer from memory never predates a
    /// removal its client has seen acknowledged (docs/design/s3.md §5).
    /// Default: zero (nothing is answered from memory).
    fn touch_memory(&self) -> std::time::Duration {
        std::time::Duration::ZERO
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

    /// [`Storage::delete_if_untouched_since`] for several objects (a
    /// collection's batch, up to a listing page): whether each was deleted,
    /// in order. For a backend whose protocol costs a few round trips per
    /// batch rather than per object. Default: one after another.
    async fn delete_all_if_untouched_since(
        &self,
        keys: Vec<String>,
        cutoff: std::time::SystemTime,
    ) -> io::Result<Vec<bool>> {
        let mut deleted = Vec::with_capacity(keys.len());
        for key in &keys {
            deleted.push(self.delete_if_untouched_since(key, cutoff).await?);
        }
        Ok(deleted)
    }

    /// Moves an object to another key (replacing what is there), durably.
    /// Returns false when `from` does not exist. Rare (quarantine of damaged
    /// content): an object store may copy then delete, so a reader may see
    /// both keys for a moment, never neither.
    async fn rename(&self, from: &str, to: &str) -> io::Result<bool>;

    /// Streams an object, or the `range` of it (which must lie within it).
    /// `None` when it does not exist.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<Option<ContentRead>>;

    /// Deletes one object. Returns false when it did not exist.
    async fn delete(&self, key: &str) -> io::Result<bool>;

    /// Deletes every object under `prefix` (an upload's objects).
    async fn delete_all(&self, prefix: &str) -> io::Result<()>;

    /// [`Storage::delete_all`] when the caller knows every object under
    /// `prefix`: `keys` (an upload that stored nothing but its record), so a
    /// backend whose listing is a request of its own can skip it. An object
    /// the caller did not know of may stay behind (expiry removes what is
    /// left of an upload). Default: [`Storage::delete_all`].
    async fn delete_all_of(&self, prefix: &str, keys: &[String]) -> io::Result<()> {
        let _ = keys;
        self.delete_all(prefix).await
    }

    /// One page of the names of `prefix`'s immediate children (objects and
    /// sub-prefixes, the last segment only): at most `limit` of them, those
    /// after `start_after` in ascending byte order (all when `None`), sorted,
    /// and whether more follow. A missing prefix has no children. Callers
    /// walk a prefix page by page ([`Listing`]) and never assume one page
    /// holds it all. A walk lists every name present throughout it exactly
    /// once (garbage collection relies on it, see `docs/design/gc.md`);
    /// names added or removed meanwhile may or may not show.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> io::Result<ListPage>;

    /// Appends `data` to an upload's content at `offset`. Anything stored past
    /// `offset` by an earlier, failed attempt is discarded first, so the
    /// session record (which holds the offset) is the truth. Appended bytes
    /// survive a crash of this process; across a machine crash only while
    /// [`Storage::upload_generation`] stays the same. Returns the number of
    /// bytes appended. `length`, when known, is how many bytes `data` will
    /// yield (the client's `Content-Length`, which HTTP holds it to); a
    /// backend may plan by it, and fails the append if `data` disagrees.
    ///
    /// `state` is the backend's own account of the upload (an object store's
    /// multipart upload id and parts; empty at the start, and for a backend
    /// that keeps none). The caller saves it in the session record together
    /// with the offset, and passes the saved one back with the next append,
    /// the commit or the abort, so that any process can continue the upload
    /// and the offset and the parts never disagree. It is changed only when
    /// the append succeeds.
    async fn append_upload(
        &self,
        key: &str,
        offset: u64,
        data: &mut ByteSource<'_>,
        length: Option<u64>,
        state: &mut String,
    ) -> io::Result<u64>;

    /// Makes an upload's content (exactly `size` bytes) the object at `dest`
    /// in one atomic step, durably, and removes the upload's content. If
    /// `dest` already exists it is replaced: afterwards `dest` holds exactly
    /// the bytes the registry hashed, which is what lets it count the blob as
    /// verified (and a re-push heals a damaged copy). `state` is the one the
    /// last successful append returned.
    async fn commit_upload(&self, key: &str, size: u64, dest: &str, state: &str) -> io::Result<()>;

    /// Streams the first `size` bytes of an upload's content, for the rare
    /// commit whose digest uses another algorithm than the one hashed while
    /// the bytes arrived. A backend that cannot read an unfinished upload
    /// (an object store's multipart upload) may finish it first and say so
    /// in `state`, after which the upload can only be committed or
    /// aborted. Default: [`Storage::read`] of the upload's key.
    async fn read_upload(
        &self,
        key: &str,
        size: u64,
        _state: &mut String,
    ) -> io::Result<Option<ContentRead>> {
        self.read(key, Some(0..size)).await
    }

    /// Releases what an upload holds outside its objects (an object store's
    /// incomplete multipart upload, whose parts no listing shows), before the
    /// upload's prefix is deleted. Default: nothing to release.
    async fn abort_upload(&self, _key: &str, _state: &str) -> io::Result<()> {
        Ok(())
    }

    /// One page of every object below `prefix`, at any depth: names relative
    /// to `prefix/` (`a/b/link`), with their sizes, those after `start_after`
    /// in ascending byte order, at most `limit`, and whether more follow.
    /// `None` from a backend that has no such listing (the caller walks
    /// the tree a level at a time with [`Storage::list`]). An object store
    /// answers it in one request a page where a level-by-level walk costs one
    /// per directory: garbage collection over thousands of repositories
    /// spends its time in those requests. The same promise as `list`: every
    /// object present throughout a walk is listed exactly once.
    async fn list_tree(
        &self,
        _prefix: &str,
        _start_after: Option<&str>,
        _limit: usize,
    ) -> io::Result<Option<TreePage>> {
        Ok(None)
    }

    /// Checks that the store can be written (readiness).
    async fn check_writable(&self) -> io::Result<()>;

    /// How many names a walk ([`Listing`]) asks [`Storage::list`] for at a
    /// time. Default [`LIST_PAGE`], an object store's page; a backend that
    /// reads a whole directory per call asks for more, trading one page of
    /// memory for fewer reads.
    fn walk_page(&self) -> usize {
        LIST_PAGE
    }

    /// A URL from which a client may read the object for a while without
    /// credentials (an object store's signed URL), when the store is
    /// configured to redirect reads. Default: none (reads go through Berth).
    async fn redirect_url(&self, _key: &str) -> io::Result<Option<String>> {
        Ok(None)
    }

    /// The smallest chunk a chunked upload should send (an object store's
    /// smallest multipart part), advertised to clients as
    /// `OCI-Chunk-Min-Length`. Shorter chunks still work. Default: none.
    fn upload_chunk_min_length(&self) -> Option<u64> {
        None
    }

    // Optional capabilities: `None` unless the backend has them.

    /// Objects as open local files, for `sendfile`. Default: none.
    fn local_files(&self) -> Option<&dyn LocalFiles> {
        None
    }

    /// Debris of interrupted writes, for `berth fsck`. Default: a backend
    /// whose writes leave no debris under other names.
    fn leftovers(&self) -> Option<&dyn Leftovers> {
        None
    }

    /// The requests this store sends over the network, counted, for a
    /// registry serving over it to export. Default: none (the filesystem).
    fn store_requests(&self) -> Option<&crate::metrics::StoreRequests> {
        None
    }

    /// Writes that are visible before they are durable. Default: every
    /// write is durable when it returns, and there is nothing to wait for.
    fn deferred_durability(&self) -> Option<&dyn DeferredDurability> {
        None
    }

    /// Names the period during which appended upload content stays readable
    /// (for a filesystem: this boot of the machine, since appends are not
    /// fsynced). An upload session recorded under another generation may have
    /// lost bytes it counts and must not be continued. Default `None`:
    /// appended content is durable once [`Storage::append_upload`] returns
    /// (an object store's uploaded parts), so every session may continue.
    fn upload_generation(&self) -> Option<&str> {
        None
    }
}

/// [`Storage::put`] of each document, one after another: what
/// [`Storage::put_all`] and [`Storage::put_chain`] do by default.
pub(crate) async fn put_each<S: Storage + ?Sized>(
    storage: &S,
    docs: Vec<(String, Bytes, WriteMode)>,
) -> io::Result<Vec<bool>> {
    let mut written = Vec::with_capacity(docs.len());
    for (key, data, mode) in docs {
        written.push(storage.put(&key, data, mode).await?);
    }
    Ok(written)
}

/// Capability: objects are files on this machine's disk.
#[async_trait]
pub trait LocalFiles: Send + Sync {
    /// The object as an open local file, or `None` where it does not exist.
    async fn local_file(&self, key: &str) -> io::Result<Option<LocalFile>>;

    /// The file that is, or would be, the object `key` (its directory may
    /// not exist), where every object is a local file: for a writer on this
    /// machine that fills an upload's content itself before
    /// [`Storage::commit_upload`] (the mirror's spool), and for readers of
    /// what that commit moved. Default: `None` (a store that only caches
    /// some objects locally).
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}

/// Capability: interrupted writes leave debris under temporary names.
#[async_trait]
pub trait Leftovers: Send + Sync {
    /// Every object left under a temporary name by a write that did not
    /// finish (a crash, a full disk). A write in progress has one too, for
    /// a moment: look at `modified` before removing one.
    async fn list_leftovers(&self) -> io::Result<Vec<Leftover>>;

    /// Removes a leftover named by [`Leftovers::list_leftovers`]. Returns
    /// false when it was gone already; refuses any name that is not a
    /// leftover's.
    async fn remove_leftover(&self, name: &str) -> io::Result<bool>;
}

/// Capability: small documents are visible before they are durable.
#[async_trait]
pub trait DeferredDurability: Send + Sync {
    /// Returns once every write this store has made visible so far is
    /// durable: for a caller that acknowledges what it found, not what it
    /// wrote (a write waits for its own durability).
    async fn barrier(&self) -> io::Result<()>;

    /// The journal's data syncs so far, and the records they made durable
    /// (one sync covers every record waiting when it starts).
    fn synced(&self) -> (u64, u64);
}

/// Walks a prefix's children a page at a time, in ascending byte order: the
/// way every caller reads a listing, so memory holds one page whatever the
/// prefix holds.
pub struct Listing<'a> {
    storage: &'a dyn Storage,
    prefix: String,
    page: std::vec::IntoIter<String>,
    /// The last name handed out, where the next page starts after.
    after: Option<String>,
    more: bool,
}

impl<'a> Listing<'a> {
    pub fn new(storage: &'a dyn Storage, prefix: impl Into<String>) -> Listing<'a> {
        Listing {
            storage,
            prefix: prefix.into(),
            page: Vec::new().into_iter(),
            after: None,
            more: true,
        }
    }

    /// The listing of the names after `start_after` only.
    pub fn starting_after(mut self, start_after: Option<&str>) -> Listing<'a> {
        self.after = start_after.map(str::to_owned);
        self
    }

    /// The next name, or `None` at the end.
    pub async fn next(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(name) = self.page.next() {
                self.after = Some(name.clone());
                return Ok(Some(name));
            }
            if !self.more {
                return Ok(None);
            }
            let page = self
                .storage
                .list(
                    &self.prefix,
                    self.after.as_deref(),
                    self.storage.walk_page(),
                )
                .await?;
            // A page that is empty yet says more follow would loop forever.
            self.more = page.more && !page.names.is_empty();
            self.page = page.names.into_iter();
        }
    }

    /// Every remaining name, for a caller whose result holds them all anyway
    /// (a sorted set it returns whole).
    pub async fn collect(mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        while let Some(name) = self.next().await? {
            names.push(name);
        }
        Ok(names)
    }
}

/// Every object below a prefix with its size, a page at a time, from
/// [`Storage::list_tree`]: like [`Listing`], for a backend that lists a
/// whole tree.
pub struct TreeListing<'a> {
    storage: &'a dyn Storage,
    prefix: String,
    page: std::vec::IntoIter<TreeObject>,
    after: Option<String>,
    more: bool,
}

impl<'a> TreeListing<'a> {
    /// The listing's first page, or `None` when the backend has no tree
    /// listing.
    pub async fn start(
        storage: &'a dyn Storage,
        prefix: String,
        start_after: Option<&str>,
    ) -> io::Result<Option<TreeListing<'a>>> {
        let Some(page) = storage
            .list_tree(&prefix, start_after, storage.walk_page())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(TreeListing {
            storage,
            prefix,
            more: page.more && !page.objects.is_empty(),
            page: page.objects.into_iter(),
            after: start_after.map(str::to_owned),
        }))
    }

    /// The next object's name (below the prefix) and size, or `None` at
    /// the end.
    pub async fn next(&mut self) -> io::Result<Option<(String, u64)>> {
        Ok(self.next_object().await?.map(|o| (o.name, o.size)))
    }

    /// The next object, or `None` at the end.
    pub async fn next_object(&mut self) -> io::Result<Option<TreeObject>> {
        loop {
            if let Some(object) = self.page.next() {
                self.after = Some(object.name.clone());
                return Ok(Some(object));
            }
            if !self.more {
                return Ok(None);
            }
            let page = self
                .storage
                .list_tree(
                    &self.prefix,
                    self.after.as_deref(),
                    self.storage.walk_page(),
                )
                .await?
                .unwrap_or_default();
            // A page that is empty yet says more follow would loop forever.
            self.more = page.more && !page.objects.is_empty();
            self.page = page.objects.into_iter();
        }
    }
}

/// The page of `names` (unsorted, as a directory read gives them) after
/// `start_after`, at most `limit`, sorted: for a backend whose native listing
/// is a whole unsorted directory. Selects before sorting, so a small page of
/// a large directory costs a linear pass, not a full sort.
pub fn page_of(mut names: Vec<String>, start_after: Option<&str>, limit: usize) -> ListPage {
    if let Some(after) = start_after {
        names.retain(|name| name.as_str() > after);
    }
    let more = names.len() > limit;
    if more {
        names.select_nth_unstable(limit);
        names.truncate(limit);
    }
    names.sort_unstable();
    ListPage { names, more }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_page_is_the_smallest_names_after_the_start_sorted() {
        let all = names(&["d", "b", "e", "a", "c"]);
        let page = page_of(all.clone(), None, 2);
        assert_eq!(page.names, ["a", "b"]);
        assert!(page.more);
        let page = page_of(all.clone(), Some("b"), 2);
        assert_eq!(page.names, ["c", "d"]);
        assert!(page.more);
        let page = page_of(all.clone(), Some("bb"), 3);
        assert_eq!(page.names, ["c", "d", "e"]);
        assert!(!page.more);
        let page = page_of(all, Some("e"), 3);
        assert!(page.names.is_empty());
        assert!(!page.more);
    }
}
