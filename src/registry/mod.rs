//! The registry service: the distribution-spec's operations over a [`Storage`].
//! It knows storage keys (through [`layout`]) and the spec's rules (through
//! [`crate::oci`]), never HTTP.

mod blobs;
pub mod cache;
mod catalog;
mod expiry;
pub mod fsck;
mod gc;
mod history;
mod integrity;
pub mod lifecycle;
mod locks;
pub mod maintenance;
mod manifests;
mod referrers;
mod retention;
mod tags;
mod uploads;

use std::io;
use std::sync::Arc;

pub use blobs::Blob;
pub use expiry::ExpiryReport;
pub use gc::{GcOptions, GcReport};
pub use history::{Rollback, RollbackTarget, TagChange, TagHistory};
pub use lifecycle::LifecycleConfig;
pub use maintenance::{LifecycleReport, LifecycleTask};
pub use manifests::{ManifestPut, StoredManifest};
pub use retention::{RemovedTag, RetentionReport};
pub use uploads::{UploadSession, UploadStart};

use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::storage::{layout, Storage, WriteMode};
use cache::{CacheConfig, Caches};

/// Limits the registry enforces, whatever the transport.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest manifest accepted (distribution-spec suggests at least 4 MiB).
    pub max_manifest_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
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
    /// Every repository's name, for the catalog (catalog.rs).
    repository_index: Arc<catalog::RepositoryIndex>,
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        limits: Limits,
        cache: &CacheConfig,
        lifecycle: LifecycleConfig,
    ) -> Registry {
        Registry {
            storage,
            limits,
            caches: Arc::new(Caches::new(cache)),
            upload_locks: locks::KeyedLocks::default(),
            tag_locks: locks::KeyedLocks::default(),
            lifecycle: Arc::new(lifecycle),
            repository_index: Arc::new(catalog::RepositoryIndex::new(cache.ttl)),
        }
    }

    pub fn lifecycle(&self) -> &LifecycleConfig {
        &self.lifecycle
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
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

    /// Removes a link; returns whether it was there.
    async fn remove_link(&self, key: &str) -> Result<bool, RegistryError> {
        let removed = self.storage.delete(key).await.map_err(storage_error)?;
        self.caches.wrote_link(key, None);
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
        let children = self
            .storage
            .list(&layout::repository(name))
            .await
            .map_err(storage_error)?;
        Ok(!children.is_empty())
    }
}

/// A directory below `repositories/` and the names of its children.
pub(crate) struct RepositoryDir {
    /// Relative to `repositories/`: a repository name if it is one.
    pub path: String,
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

/// Every directory of the repository tree, sorted by path. Names nest
/// (`team/app`, `team/app/tools`), so the walk descends into every child
/// that is not a `_`-prefixed registry folder. The catalog, garbage
/// collection and fsck all walk it; each decides what counts for it.
pub(crate) async fn repository_tree(storage: &dyn Storage) -> io::Result<Vec<RepositoryDir>> {
    let mut dirs = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(path) = pending.pop() {
        let prefix = if path.is_empty() {
            layout::REPOSITORIES.to_owned()
        } else {
            format!("{}/{path}", layout::REPOSITORIES)
        };
        let children = storage.list(&prefix).await?;
        for child in children.iter().filter(|c| !c.starts_with('_')) {
            pending.push(if path.is_empty() {
                child.clone()
            } else {
                format!("{path}/{child}")
            });
        }
        dirs.push(RepositoryDir { path, children });
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
    let mut algorithms = storage.list(dir).await?;
    algorithms.sort_unstable();
    for name in algorithms {
        let Some(algorithm) = crate::oci::Algorithm::parse(&name) else {
            found.strays.push(format!("{dir}/{name}"));
            continue;
        };
        let alg_dir = format!("{dir}/{name}");
        let mut hexes = storage.list(&alg_dir).await?;
        hexes.sort_unstable();
        for hex in hexes {
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
