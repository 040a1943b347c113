//! In-memory caches for the hot read paths: what links say (tag → digest,
//! "this repository holds that blob or manifest"), blob sizes, manifest bytes
//! and small blobs.
//!
//! Content keyed by digest never changes, so manifest bytes and small blobs
//! are cached without expiry (bounded by weight). What links and sizes say is
//! mutable: this process's own writes update the cache as they happen, and an
//! entry is trusted for at most `ttl`, which bounds how stale a change made by
//! another process (another replica, an offline tool) can look.
//!
//! A reader that fills the cache from storage must not overwrite a newer
//! value a concurrent writer has just put there. Writers bump `epoch` under
//! `fill_lock`; a reader only inserts, under the same lock, if the epoch has
//! not moved since it started reading. Hits take no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName};

/// Blobs up to this size are kept in memory once read.
pub const SMALL_BLOB_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Weight budget for manifest bytes, small blobs and tag lists, each.
    pub content_bytes: u64,
    /// How long a cached link or size is trusted without re-reading storage.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            content_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(2),
        }
    }
}

/// A manifest as served: bytes and the media type derived from them.
#[derive(Debug)]
pub struct CachedManifest {
    pub body: Bytes,
    pub media_type: String,
}

#[derive(Clone)]
struct Fresh<T> {
    value: T,
    read_at: Instant,
}

#[derive(Clone)]
struct ByteWeight;

impl Weighter<Digest, Arc<CachedManifest>> for ByteWeight {
    fn weight(&self, _: &Digest, value: &Arc<CachedManifest>) -> u64 {
        value.body.len() as u64 + 64
    }
}

impl Weighter<Digest, Bytes> for ByteWeight {
    fn weight(&self, _: &Digest, value: &Bytes) -> u64 {
        value.len() as u64 + 64
    }
}

/// A tag list weighs what its strings take on the heap: one repository with
/// 100,000 tags holds megabytes, so a count of lists alone bounds nothing.
impl Weighter<RepositoryName, Fresh<Arc<Vec<String>>>> for ByteWeight {
    fn weight(&self, name: &RepositoryName, list: &Fresh<Arc<Vec<String>>>) -> u64 {
        let strings: usize = list
            .value
            .iter()
            .map(|tag| tag.len() + STRING_OVERHEAD)
            .sum();
        (name.as_str().len() + 64 + strings) as u64
    }
}

/// A `String`'s header and its allocation's rounding, about.
const STRING_OVERHEAD: usize = 32;

// What the caches may hold, all told: `cache_bytes` each for manifest
// bytes, small blobs and tag lists (weighed by their bytes), and a count of
// entries for links, sizes and verified digests, whose entries are small and
// of bounded size. Measured with `Caches::new` full: a link entry takes about
// 250 bytes with typical names (at most ~700 with 255-character names and
// 128-character tags), a size or verified entry about 200, so the three
// counted caches hold at most about 40 MiB together with typical names. The
// repository index (catalog.rs) holds every repository's name (its length +
// about 50 bytes each), which is as many as the store has.

/// Links and sizes remembered, each.
const STATE_ENTRIES: usize = 64 * 1024;

/// Digests remembered as verified.
const VERIFIED_ENTRIES: usize = 64 * 1024;

/// Repositories whose tag lists are kept, at most (their bytes bound them first).
const TAG_LISTS: usize = 1024;

pub struct Caches {
    ttl: Duration,
    /// Storage key of a link → the digest it names, or `None` when absent.
    links: Cache<String, Fresh<Option<Digest>>>,
    /// Blob digest → size of its content, or `None` when absent.
    sizes: Cache<Digest, Fresh<Option<u64>>>,
    /// Repository → its tags, sorted.
    tag_lists: Cache<RepositoryName, Fresh<Arc<Vec<String>>>, ByteWeight>,
    manifests: Cache<Digest, Arc<CachedManifest>, ByteWeight>,
    small_blobs: Cache<Digest, Bytes, ByteWeight>,
    /// Content this process has seen hash to its digest (it hashed it while
    /// receiving it, or read it whole once). Bounded: an evicted digest is
    /// just verified again on its next read.
    verified: Cache<Digest, ()>,
    epoch: AtomicU64,
    fill_lock: Mutex<()>,
    /// Where lookups are counted (`berth_cache_lookups_total`).
    metrics: Arc<Metrics>,
}

/// Taken before a storage read whose result may be cached.
#[derive(Clone, Copy)]
pub struct ReadTicket(u64);

impl Caches {
    /// How long a mutable answer is trusted: the stated bound on how stale
    /// this process may be about another's changes.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Caches {
        let content_items = (config.content_bytes / 4096).max(16) as usize;
        Caches {
            ttl: config.ttl,
            links: Cache::new(STATE_ENTRIES),
            sizes: Cache::new(STATE_ENTRIES),
            tag_lists: Cache::with_weighter(TAG_LISTS, config.content_bytes, ByteWeight),
            manifests: Cache::with_weighter(content_items, config.content_bytes, ByteWeight),
            small_blobs: Cache::with_weighter(content_items, config.content_bytes, ByteWeight),
            verified: Cache::new(VERIFIED_ENTRIES),
            epoch: AtomicU64::new(0),
            fill_lock: Mutex::new(()),
            metrics,
        }
    }

    pub fn ticket(&self) -> ReadTicket {
        ReadTicket(self.epoch.load(Ordering::Acquire))
    }

    /// A cached link, while fresh. Only presence is served from the cache:
    /// an absence may have been filled by another replica (or process) since,
    /// and a client told "absent" re-uploads or fails its push (docker's
    /// "unknown blob" when a HEAD through one replica answered from a cached
    /// 404 while the upload went through another).
    pub fn link(&self, key: &str) -> Option<Option<Digest>> {
        let found = self.fresh(self.links.get(key)).filter(|v| v.is_some());
        self.counted("link", found)
    }

    /// Counts a lookup's hit or miss, and passes its answer on.
    fn counted<T>(&self, cache: &'static str, found: Option<T>) -> Option<T> {
        self.metrics.cache_lookup(cache, found.is_some());
        found
    }

    pub fn fill_link(&self, ticket: ReadTicket, key: &str, value: Option<Digest>) {
        self.fill(ticket, || {
            self.links.insert(key.to_owned(), self.stamp(value))
        });
    }

    /// Records a link this process has just written (`Some`) or removed (`None`).
    pub fn wrote_link(&self, key: &str, value: Option<Digest>) {
        self.wrote(|| self.links.insert(key.to_owned(), self.stamp(value)));
    }

    pub fn tag_list(&self, name: &RepositoryName) -> Option<Arc<Vec<String>>> {
        let found = self.fresh(self.tag_lists.get(name));
        self.counted("tag_list", found)
    }

    pub fn fill_tag_list(&self, ticket: ReadTicket, name: &RepositoryName, tags: Arc<Vec<String>>) {
        self.fill(ticket, || {
            self.tag_lists.insert(name.clone(), self.stamp(tags))
        });
    }

    /// A tag of `name` was created, moved or deleted by this process.
    pub fn wrote_tags(&self, name: &RepositoryName) {
        self.wrote(|| {
            self.tag_lists.remove(name);
        });
    }

    /// A cached content size, while fresh; an absence is not served (see
    /// [`Caches::link`]).
    pub fn size(&self, digest: &Digest) -> Option<Option<u64>> {
        let found = self.fresh(self.sizes.get(digest)).filter(|v| v.is_some());
        self.counted("blob_size", found)
    }

    pub fn fill_size(&self, ticket: ReadTicket, digest: &Digest, value: Option<u64>) {
        self.fill(ticket, || {
            self.sizes.insert(digest.clone(), self.stamp(value))
        });
    }

    /// Records blob content this process has just committed.
    pub fn wrote_blob(&self, digest: &Digest, size: u64) {
        self.wrote(|| self.sizes.insert(digest.clone(), self.stamp(Some(size))));
    }

    /// Content garbage collection has removed: it must not be served from
    /// memory, and its size reads as absent until it is written again.
    pub fn removed_content(&self, digest: &Digest) {
        self.wrote(|| {
            self.sizes.insert(digest.clone(), self.stamp(None));
            self.manifests.remove(digest);
            self.small_blobs.remove(digest);
        });
    }

    pub fn manifest(&self, digest: &Digest) -> Option<Arc<CachedManifest>> {
        self.counted("manifest", self.manifests.get(digest))
    }

    /// Content keyed by digest cannot go stale: no ticket needed. Only bytes
    /// that hashed to `digest` may be kept.
    pub fn keep_manifest(&self, digest: &Digest, manifest: Arc<CachedManifest>) {
        self.manifests.insert(digest.clone(), manifest);
    }

    pub fn small_blob(&self, digest: &Digest) -> Option<Bytes> {
        self.counted("small_blob", self.small_blobs.get(digest))
    }

    /// Whether the stored content of `digest` is known to match it.
    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.verified.get(digest).is_some()
    }

    pub fn verified(&self, digest: &Digest) {
        self.verified.insert(digest.clone(), ());
    }

    /// The content of `digest` was moved out of the store (quarantined):
    /// nothing this process knows of it holds any more.
    pub fn lost_blob(&self, digest: &Digest) {
        self.wrote(|| {
            self.sizes.insert(digest.clone(), self.stamp(None));
            self.small_blobs.remove(digest);
            self.manifests.remove(digest);
            self.verified.remove(digest);
        });
    }

    /// Only content that hashed to its digest may be kept (see
    /// [`Caches::verified`]): the cache serves without checking.
    pub fn keep_small_blob(&self, digest: &Digest, content: Bytes) {
        if content.len() as u64 <= SMALL_BLOB_BYTES {
            self.small_blobs.insert(digest.clone(), content);
        }
    }

    fn stamp<T>(&self, value: T) -> Fresh<T> {
        Fresh {
            value,
            read_at: Instant::now(),
        }
    }

    fn fresh<T>(&self, entry: Option<Fresh<T>>) -> Option<T> {
        entry
            .filter(|e| e.read_at.elapsed() < self.ttl)
            .map(|e| e.value)
    }

    fn fill(&self, ticket: ReadTicket, insert: impl FnOnce()) {
        let _guard = self.fill_lock.lock().expect("cache lock poisoned");
        if self.epoch.load(Ordering::Acquire) == ticket.0 {
            insert();
        }
    }

    fn wrote(&self, insert: impl FnOnce()) {
        let _guard = self.fill_lock.lock().expect("cache lock poisoned");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        insert();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn digest(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    #[test]
    fn a_fill_started_before_a_write_does_not_overwrite_it() {
        let caches = Caches::new(&CacheConfig::default(), Arc::default());
        let ticket = caches.ticket();
        caches.wrote_link("k", Some(digest("new")));
        caches.fill_link(ticket, "k", Some(digest("old")));
        assert_eq!(caches.link("k"), Some(Some(digest("new"))));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let caches = Caches::new(
            &CacheConfig {
                ttl: Duration::from_millis(20),
                ..CacheConfig::default()
            },
            Arc::default(),
        );
        caches.fill_link(caches.ticket(), "k", Some(digest("d")));
        assert_eq!(caches.link("k"), Some(Some(digest("d"))));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(caches.link("k"), None);
    }

    #[test]
    fn an_absence_is_never_served_from_the_cache() {
        // Another replica may have written the link or the content since.
        let caches = Caches::new(&CacheConfig::default(), Arc::default());
        caches.fill_link(caches.ticket(), "k", None);
        assert_eq!(caches.link("k"), None);
        caches.wrote_link("k", None);
        assert_eq!(caches.link("k"), None);
        caches.fill_size(caches.ticket(), &digest("d"), None);
        assert_eq!(caches.size(&digest("d")), None);
        caches.fill_size(caches.ticket(), &digest("d"), Some(3));
        assert_eq!(caches.size(&digest("d")), Some(Some(3)));
    }

    #[test]
    fn tag_lists_are_bounded_by_their_bytes() {
        let budget = 64 * 1024;
        let caches = Caches::new(
            &CacheConfig {
                content_bytes: budget,
                ..CacheConfig::default()
            },
            Arc::default(),
        );
        // 200 repositories of 20 tags (about 1 KB each) offer three times
        // the budget.
        let tags: Arc<Vec<String>> =
            Arc::new((0..20).map(|i| format!("release-{i:012}")).collect());
        let names: Vec<RepositoryName> = (0..200)
            .map(|i| RepositoryName::parse(&format!("repo{i}")).unwrap())
            .collect();
        for name in &names {
            caches.fill_tag_list(caches.ticket(), name, tags.clone());
        }
        let kept = names
            .iter()
            .filter(|n| caches.tag_list(n).is_some())
            .count();
        assert!(
            caches.tag_lists.weight() <= budget,
            "{}",
            caches.tag_lists.weight()
        );
        assert!(kept > 0 && kept < 100, "kept {kept} lists");
    }

    #[test]
    fn only_small_blobs_are_kept() {
        let caches = Caches::new(&CacheConfig::default(), Arc::default());
        caches.keep_small_blob(&digest("s"), Bytes::from(vec![0; 10]));
        caches.keep_small_blob(
            &digest("l"),
            Bytes::from(vec![0; SMALL_BLOB_BYTES as usize + 1]),
        );
        assert!(caches.small_blob(&digest("s")).is_some());
        assert!(caches.small_blob(&digest("l")).is_none());
    }
}
