//! The registry service: the distribution-spec's operations over a [`Storage`].
//! It knows storage keys (through [`layout`]) and the spec's rules (through
//! [`crate::oci`]), never HTTP.

mod blobs;
pub mod cache;
mod catalog;
mod history;
mod integrity;
pub mod lifecycle;
mod locks;
mod manifests;
mod quota;
mod referrers;
mod settings;
mod tag_details;
mod tags;
mod touch;
mod uploads;

use std::io;
use std::sync::Arc;

/// What the registry hands out of storage: body streams, and a blob as a local
/// file where the backend keeps them (so the layers above never name storage).
pub use crate::storage::{spool, ByteStream, LocalFile, RequestBody};
pub use blobs::Blob;
pub use catalog::BrowsePage;
pub use history::{Rollback, RollbackTarget, TagChange, TagHistory};
pub use lifecycle::{
    EvictionReport, ExpiryReport, GcOptions, GcReport, LifecycleConfig, LifecycleReport,
    LifecycleTask, MirrorEviction, RemovedTag, RetentionReport,
};
pub use manifests::{ManifestPut, StoredManifest};
pub use quota::{Counted, QuotaRule, QuotaScope, Usage};
pub use settings::{
    RobotAccount, Settings, SettingsChange, SettingsGrant, SettingsOf, SettingsSnapshot,
    SubjectKind, Visibility,
};
pub use tag_details::{TagDetail, TagDetailsPage, TagOrder, TagQuery, MAX_TAG_DETAILS};
pub use uploads::{UploadSession, UploadStart};

use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::storage::{layout, Listing, Storage, TreeObject, WriteMode};
use cache::{CacheConfig, Caches};

/// Limits the registry enforces, whatever the transport.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest manifest accepted (distribution-spec suggests at least 4 MiB).
    pub max_manifest_bytes: usize,
    /// Storage quotas per repository pattern (quota.rs).
    pub quotas: Vec<QuotaRule>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            quotas: Vec::new(),
        }
    }
}

pub struct Registry {
    storage: Arc<dyn Storage>,
    limits: Limits,
    /// Shared with streams that outlive a request's borrow of the registry
    /// (a blob read verifying its digest as it goes).
    caches: Arc<Caches>,
    upload_locks: locks::KeyedLocks,
    /// Serialises changes to one tag within this process, so that its
    /// history records changes in the order they happened.
    tag_locks: locks::KeyedLocks,
    lifecycle: Arc<LifecycleConfig>,
    /// What this registry counts (metrics.rs), shared with the HTTP layer
    /// and the mirror that serve it.
    metrics: Arc<Metrics>,
    /// Every repository's name, for the catalog (catalog.rs).
    repository_index: Arc<catalog::RepositoryIndex>,
    /// Repository and namespace settings, in memory (settings.rs).
    settings: Arc<settings::SettingsIndex>,
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        limits: Limits,
        cache: &CacheConfig,
        lifecycle: LifecycleConfig,
    ) -> Registry {
        let mut metrics = Metrics::new();
        if storage.deferred_durability().is_some() {
            let (syncs, records) = (storage.clone(), storage.clone());
            metrics.count_from(
                "journal_syncs",
                "Data syncs of the filesystem store's journal",
                move || syncs.deferred_durability().map_or(0, |d| d.synced().0),
            );
            metrics.count_from(
                "journal_records",
                "Records (document writes and deletes) the journal's syncs made durable",
                move || records.deferred_durability().map_or(0, |d| d.synced().1),
            );
        }
        if let Some(requests) = storage.store_requests() {
            metrics.export_store_requests(requests);
        }
        let metrics = Arc::new(metrics);
        Registry {
            storage,
            limits,
            caches: Arc::new(Caches::new(cache, metrics.clone())),
            metrics,
            upload_locks: locks::KeyedLocks::default(),
            tag_locks: locks::KeyedLocks::default(),
            lifecycle: Arc::new(lifecycle),
            repository_index: Arc::new(catalog::RepositoryIndex::new(cache.ttl)),
            settings: Arc::new(settings::SettingsIndex::new(cache.ttl)),
        }
    }

    pub fn lifecycle(&self) -> &LifecycleConfig {
        &self.lifecycle
    }

    /// What this registry counts, for `GET /metrics` and for the parts
    /// that serve it to record into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The smallest chunk the store wants in a chunked upload, if any.
    pub fn upload_chunk_min_length(&self) -> Option<u64> {
        self.storage.upload_chunk_min_length()
    }

    /// Readiness: the store can be written.
    pub async fn check_ready(&self) -> Result<(), RegistryError> {
        self.storage
            .check_writable()
            .await
            .map_err(|e| RegistryError::internal("storage is not writable", e))
    }

    /// What a link says: the digest it names, or `None` when it is absent.
    /// Served from the cache while fresh.
    async fn read_link(&self, key: &str) -> Result<Option<Digest>, RegistryError> {
        if let Some(cached) = self.caches.link(key) {
            return Ok(cached);
        }
        let ticket = self.caches.ticket();
        let digest = self.read_link_uncached(key).await?;
        self.caches.fill_link(ticket, key, digest.clone());
        Ok(digest)
    }

    /// What a link says on storage right now (for decisions that must not
    /// rest on a cached view, such as skipping a write).
    async fn read_link_uncached(&self, key: &str) -> Result<Option<Digest>, RegistryError> {
        let Some(body) = self.storage.get(key).await.map_err(storage_error)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&body).unwrap_or_default().trim();
        text.parse()
            .map(Some)
            .map_err(|_| RegistryError::internal("corrupt link document", key))
    }

    /// [`Registry::read_link_uncached`] of an owned key (for futures that
    /// outlive the caller's borrow).
    async fn read_link_uncached_owned(&self, key: String) -> Result<Option<Digest>, RegistryError> {
        self.read_link_uncached(&key).await
    }

    /// Writes a link durably (Distribution's format: the digest as text).
    /// Returns false when storage already said exactly that.
    async fn write_link(&self, key: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let written = self
            .storage
            .put(key, layout::link_body(digest), WriteMode::Overwrite)
            .await
            .map_err(storage_error)?;
        self.caches.wrote_link(key, Some(digest.clone()));
        Ok(written)
    }

    /// Removes a link (a manifest or blob DELETE through the API); returns
    /// whether it was there. A removal is acknowledged only once the storage
    /// answers no touch from memory made before it, in any process
    /// ([`crate::storage::Storage::touch_memory`]; on S3 half a second): a
    /// push through another replica that starts after the client saw this
    /// answer then finds the link gone, and does not tag what was deleted.
    async fn remove_link(&self, key: &str) -> Result<bool, RegistryError> {
        let removed = self.storage.delete(key).await.map_err(storage_error)?;
        self.caches.wrote_link(key, None);
        let memory = self.storage.touch_memory();
        if removed && !memory.is_zero() {
            tokio::time::sleep(memory).await;
        }
        Ok(removed)
    }

    /// The size of the content stored for `digest`, whichever repository
    /// holds it, or `None` when the store has no such content.
    async fn content_size(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        if let Some(cached) = self.caches.size(digest) {
            return Ok(cached);
        }
        let ticket = self.caches.ticket();
        let size = self
            .storage
            .size(&layout::blob_data(digest))
            .await
            .map_err(storage_error)?;
        self.caches.fill_size(ticket, digest, size);
        Ok(size)
    }

    async fn repository_exists(
        &self,
        name: &crate::oci::RepositoryName,
    ) -> Result<bool, RegistryError> {
        let first = self
            .storage
            .list(&layout::repository(name), None, 1)
            .await
            .map_err(storage_error)?;
        Ok(!first.names.is_empty())
    }
}

/// A directory below `repositories/` and the registry folders in it.
pub(crate) struct RepositoryDir {
    /// Relative to `repositories/`: a repository name if it is one.
    pub path: String,
    /// Its `_`-prefixed registry folders (`_manifests`, `_layers`, …).
    pub children: Vec<String>,
}

impl RepositoryDir {
    /// Whether it holds a repository's registry folders (it may have blob
    /// links or uploads and no manifest yet).
    pub fn is_repository(&self) -> bool {
        !self.path.is_empty()
            && self
                .children
                .iter()
                .any(|c| layout::REPOSITORY_DIRS.contains(&c.as_str()))
    }
}

/// Walks the repository tree depth first, a listing page at a time: memory
/// holds one page per level of nesting, whatever the number of
/// repositories. Names nest (`team/app`, `team/app/tools`), so the walk
/// descends into every child that is not a `_`-prefixed registry folder, and
/// hands out a directory once its listing is done (after its sub-directories).
///
/// Where the backend lists a whole tree ([`Storage::list_tree`]), the walk
/// reads that instead, in key order: a directory with registry folders is
/// handed out once its keys are past (directories without any are not
/// handed out: every caller skips them). On an object store this is a
/// request per thousand keys instead of one per directory (3,600
/// repositories: 30 requests, not 3,600); a page that ends inside a
/// registry folder resumes after that folder, so a repository with many
/// links costs a request per folder at most.
pub(crate) struct RepositoryWalk<'a> {
    storage: &'a dyn Storage,
    /// The directories being listed, outermost first.
    open: Vec<(RepositoryDir, Listing<'a>)>,
    /// The tree listing, once the backend answered one.
    tree: Option<TreeWalk>,
    /// Whether the backend was asked for a tree listing yet.
    asked: bool,
    /// The directory below `repositories/` the walk covers (`""`: all).
    base: String,
}

/// [`RepositoryWalk`] over a tree listing.
struct TreeWalk {
    page: std::vec::IntoIter<TreeObject>,
    /// Where the next page starts after.
    after: Option<String>,
    more: bool,
    /// The directory whose keys are being read.
    current: Option<RepositoryDir>,
}

/// A key below `repositories/` split at its first `_`-prefixed segment:
/// the directory holding that registry folder, the folder, and whether
/// the key lies inside it (not the folder's own name).
pub(crate) fn registry_folder_of(key: &str) -> Option<(&str, &str, bool)> {
    let mut start = 0;
    for segment in key.split('/') {
        if segment.starts_with('_') {
            if start == 0 {
                return None;
            }
            let dir = &key[..start - 1];
            let inside = key.len() > start + segment.len();
            return Some((dir, segment, inside));
        }
        start += segment.len() + 1;
    }
    None
}

impl<'a> RepositoryWalk<'a> {
    pub fn new(storage: &'a dyn Storage) -> RepositoryWalk<'a> {
        RepositoryWalk::under(storage, "")
    }

    /// A walk of the repositories named `base/...` (and `base` itself), a
    /// part of the tree: `""` is all of it.
    pub fn under(storage: &'a dyn Storage, base: &str) -> RepositoryWalk<'a> {
        let base = base.trim_matches('/').to_owned();
        let root = RepositoryDir {
            path: base.clone(),
            children: Vec::new(),
        };
        RepositoryWalk {
            storage,
            open: vec![(root, Listing::new(storage, Self::dir_of(&base)))],
            tree: None,
            asked: false,
            base,
        }
    }

    /// The key of the directory `base` names.
    fn dir_of(base: &str) -> String {
        if base.is_empty() {
            layout::REPOSITORIES.to_owned()
        } else {
            format!("{}/{base}", layout::REPOSITORIES)
        }
    }

    /// The next directory below `repositories/`, or `None` at the end.
    pub async fn next(&mut self) -> io::Result<Option<RepositoryDir>> {
        if !self.asked {
            self.asked = true;
            let page = self
                .storage
                .list_tree(&Self::dir_of(&self.base), None, self.storage.walk_page())
                .await?;
            if let Some(page) = page {
                self.tree = Some(TreeWalk {
                    more: page.more && !page.objects.is_empty(),
                    after: page.objects.last().map(|o| o.name.clone()),
                    page: page.objects.into_iter(),
                    current: None,
                });
            }
        }
        if self.tree.is_some() {
            return self.next_in_tree().await;
        }
        while let Some((dir, listing)) = self.open.last_mut() {
            match listing.next().await? {
                Some(child) if child.starts_with('_') => dir.children.push(child),
                Some(child) => {
                    let path = if dir.path.is_empty() {
                        child
                    } else {
                        format!("{}/{child}", dir.path)
                    };
                    let listing =
                        Listing::new(self.storage, format!("{}/{path}", layout::REPOSITORIES));
                    let dir = RepositoryDir {
                        path,
                        children: Vec::new(),
                    };
                    self.open.push((dir, listing));
                }
                None => {
                    let (done, _) = self.open.pop().expect("looked at it above");
                    // The root is handed out unless it is the whole tree's.
                    if !done.path.is_empty() {
                        return Ok(Some(done));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn next_in_tree(&mut self) -> io::Result<Option<RepositoryDir>> {
        let storage = self.storage;
        let tree = self.tree.as_mut().expect("in tree mode");
        loop {
            let Some(TreeObject { name: key, .. }) = tree.page.next() else {
                if !tree.more {
                    return Ok(tree.current.take());
                }
                // A page that ended inside a registry folder resumes after
                // the folder (`0` follows `/`): the walk needs its name only.
                let start_after =
                    tree.after
                        .as_deref()
                        .map(|after| match registry_folder_of(after) {
                            Some((dir, folder, true)) => format!("{dir}/{folder}0"),
                            _ => after.to_owned(),
                        });
                let page = storage
                    .list_tree(
                        &Self::dir_of(&self.base),
                        start_after.as_deref(),
                        storage.walk_page(),
                    )
                    .await?
                    .unwrap_or_default();
                tree.more = page.more && !page.objects.is_empty();
                tree.after = page.objects.last().map(|o| o.name.clone());
                tree.page = page.objects.into_iter();
                continue;
            };
            // Keys are relative to the listed directory.
            let key = match self.base.as_str() {
                "" => key,
                base => format!("{base}/{key}"),
            };
            let Some((dir, folder, _)) = registry_folder_of(&key) else {
                continue;
            };
            match &mut tree.current {
                Some(current) if current.path == dir => {
                    if current.children.last().map(String::as_str) != Some(folder) {
                        current.children.push(folder.to_owned());
                    }
                }
                current => {
                    let next = RepositoryDir {
                        path: dir.to_owned(),
                        children: vec![folder.to_owned()],
                    };
                    if let Some(done) = current.replace(next) {
                        return Ok(Some(done));
                    }
                }
            }
        }
    }
}

/// Every directory of the repository tree, sorted by path: for the catalog,
/// which answers in lexical order (a walk's order differs: `-` and `.` sort
/// before `/`).
pub(crate) async fn repository_tree(storage: &dyn Storage) -> io::Result<Vec<RepositoryDir>> {
    let mut dirs = Vec::new();
    let mut walk = RepositoryWalk::new(storage);
    while let Some(dir) = walk.next().await? {
        dirs.push(dir);
    }
    dirs.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(dirs)
}

/// The digests named by an `<alg>/<hex>/` directory tree (links,
/// referrers), sorted, and the children that name no digest.
pub(crate) struct DigestDirs {
    pub digests: Vec<Digest>,
    pub strays: Vec<String>,
}

pub(crate) async fn digests_under(storage: &dyn Storage, dir: &str) -> io::Result<DigestDirs> {
    let mut found = DigestDirs {
        digests: Vec::new(),
        strays: Vec::new(),
    };
    let mut algorithms = Listing::new(storage, dir);
    while let Some(name) = algorithms.next().await? {
        let Some(algorithm) = crate::oci::Algorithm::parse(&name) else {
            found.strays.push(format!("{dir}/{name}"));
            continue;
        };
        let alg_dir = format!("{dir}/{name}");
        let mut hexes = Listing::new(storage, alg_dir.as_str());
        while let Some(hex) = hexes.next().await? {
            match Digest::from_parts(algorithm, &hex) {
                Ok(digest) => found.digests.push(digest),
                Err(_) => found.strays.push(format!("{alg_dir}/{hex}")),
            }
        }
    }
    Ok(found)
}

fn storage_error(e: io::Error) -> RegistryError {
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        // Not a fault of Berth's: say so (the operator must free space) and
        // let the client know it may retry later.
        tracing::warn!(error = %e, "storage is full: refusing the write");
        return RegistryError::with_detail(ErrorCode::StorageFull, "free space and retry");
    }
    if matches!(
        e.kind(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut
    ) {
        // The store did not answer or refused (an object store down, slow
        // or misconfigured): the request may succeed later. The cause is
        // logged, not sent (it may name the bucket).
        tracing::warn!(error = %e, "storage is unavailable");
        return RegistryError::with_detail(ErrorCode::Unavailable, "storage is unavailable; retry");
    }
    RegistryError::internal("storage operation failed", e)
}

/// One page of a lexically sorted listing (distribution-spec, "Listing Tags"):
/// the entries after `last`, at most `n` of them, and whether more follow.
pub struct Page {
    pub entries: Vec<String>,
    pub more: bool,
}

pub fn paginate(sorted: &[String], n: Option<usize>, last: Option<&str>) -> Page {
    let start = last.map_or(0, |last| sorted.partition_point(|e| e.as_str() <= last));
    let rest = &sorted[start..];
    let take = n.map_or(rest.len(), |n| n.min(rest.len()));
    Page {
        entries: rest[..take].to_vec(),
        more: take < rest.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{RepositoryName, Tag};
    use crate::storage::fs::FsStorage;
    use crate::storage::LIST_PAGE;
    use bytes::Bytes;

    fn registry(root: &std::path::Path) -> Registry {
        Registry::new(
            Arc::new(FsStorage::open(root).unwrap()),
            Limits::default(),
            &CacheConfig::default(),
            LifecycleConfig::default(),
        )
    }

    #[test]
    fn a_store_that_does_not_answer_is_a_503_and_a_full_one_a_507() {
        let code = |kind| storage_error(io::Error::new(kind, "s3: connection refused")).code;
        assert_eq!(code(io::ErrorKind::HostUnreachable), ErrorCode::Unavailable);
        assert_eq!(code(io::ErrorKind::TimedOut), ErrorCode::Unavailable);
        assert_eq!(code(io::ErrorKind::StorageFull), ErrorCode::StorageFull);
        assert_eq!(code(io::ErrorKind::PermissionDenied), ErrorCode::Internal);
        // The cause (a bucket, an endpoint) is not sent.
        let error = storage_error(io::Error::new(io::ErrorKind::HostUnreachable, "bucket-x"));
        assert!(!error.to_string().contains("bucket-x"));
    }

    fn digest() -> Digest {
        format!("sha256:{}", "a".repeat(64)).parse().unwrap()
    }

    /// Writes `count` tags `t00000`, `t00001`, … naming the same manifest.
    async fn tags(registry: &Registry, name: &RepositoryName, count: usize) -> Vec<String> {
        let tags: Vec<String> = (0..count).map(|i| format!("t{i:05}")).collect();
        let docs = tags
            .iter()
            .map(|tag| {
                let tag = Tag::parse(tag).unwrap();
                let key = layout::tag_current_link(name, &tag);
                (key, layout::link_body(&digest()), WriteMode::Overwrite)
            })
            .collect();
        registry.storage.put_all(docs).await.unwrap();
        tags
    }

    #[tokio::test]
    async fn a_repository_larger_than_a_storage_page_lists_its_tags_page_by_page() {
        // On a store that pages by LIST_PAGE the listing is read a page at a
        // time; the filesystem (walk pages of 10,000) caches it whole. Both
        // answer the same pages.
        let memory = Registry::new(
            Arc::new(crate::storage::memory::MemoryStorage::default()),
            Limits::default(),
            &CacheConfig::default(),
            LifecycleConfig::default(),
        );
        assert_eq!(memory.storage.walk_page(), LIST_PAGE);
        lists_tags_page_by_page(&memory).await;
        let dir = tempfile::tempdir().unwrap();
        lists_tags_page_by_page(&registry(dir.path())).await;
    }

    async fn lists_tags_page_by_page(registry: &Registry) {
        let name = RepositoryName::parse("big/app").unwrap();
        let all = tags(registry, &name, LIST_PAGE * 2 + 17).await;

        // Pages of 700 that cross the storage's pages, as a client follows them.
        let mut listed = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = registry
                .list_tags(&name, Some(700), last.as_deref())
                .await
                .unwrap();
            assert!(page.entries.len() <= 700);
            listed.extend(page.entries.iter().cloned());
            if !page.more {
                break;
            }
            last = page.entries.last().cloned();
        }
        assert_eq!(listed, all);
        // Without `n`, everything after `last`.
        let rest = registry
            .list_tags(&name, None, Some("t01500"))
            .await
            .unwrap();
        assert_eq!(rest.entries, all[1501..]);
        assert!(!rest.more);
        let whole = registry.list_tags(&name, None, None).await.unwrap();
        assert_eq!(whole.entries, all);
    }

    #[tokio::test]
    async fn a_small_repository_lists_from_one_page_and_an_unknown_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let name = RepositoryName::parse("small").unwrap();
        let all = tags(&registry, &name, 5).await;
        let page = registry
            .list_tags(&name, Some(2), Some("t00001"))
            .await
            .unwrap();
        assert_eq!(page.entries, all[2..4]);
        assert!(page.more);
        let unknown = RepositoryName::parse("nothing/here").unwrap();
        let refused = registry.list_tags(&unknown, None, None).await;
        assert!(matches!(refused, Err(e) if e.code == ErrorCode::NameUnknown));
    }

    #[tokio::test]
    async fn the_walk_finds_nested_repositories_across_listing_pages() {
        // A store that walks in pages of LIST_PAGE (the filesystem's are
        // larger). More top-level repositories than one page, one of them with
        // repositories nested below it, and a directory that is none.
        let mut expected = Vec::new();
        let mut docs = Vec::new();
        let storage = crate::storage::memory::MemoryStorage::default();
        assert_eq!(storage.walk_page(), LIST_PAGE);
        for i in 0..LIST_PAGE + 3 {
            expected.push(format!("r{i:04}"));
        }
        expected.extend(["r0007/tools".to_owned(), "r0007/tools/x-y".to_owned()]);
        for path in &expected {
            let name = RepositoryName::parse(path).unwrap();
            docs.push((
                layout::layer_link(&name, &digest()),
                layout::link_body(&digest()),
                WriteMode::Overwrite,
            ));
        }
        docs.push((
            "repositories/plain/dir/_other".to_owned(),
            Bytes::new(),
            WriteMode::Overwrite,
        ));
        storage.put_all(docs).await.unwrap();

        let mut walk = RepositoryWalk::new(&storage);
        let mut found = Vec::new();
        let mut others = Vec::new();
        while let Some(dir) = walk.next().await.unwrap() {
            if dir.is_repository() {
                found.push(dir.path);
            } else {
                others.push(dir.path);
            }
        }
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(others, ["plain/dir", "plain"]);
    }

    #[test]
    fn pagination_starts_after_last_and_reports_more() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let page = paginate(&all, Some(2), None);
        assert_eq!(page.entries, ["a", "b"]);
        assert!(page.more);
        let page = paginate(&all, Some(2), Some("b"));
        assert_eq!(page.entries, ["c", "d"]);
        assert!(!page.more);
        let page = paginate(&all, None, Some("bb"));
        assert_eq!(page.entries, ["c", "d"]);
        let page = paginate(&all, Some(0), None);
        assert!(page.entries.is_empty());
        assert!(page.more);
    }
}
