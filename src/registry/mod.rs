//! The registry service: the distribution-spec's operations over a [`Storage`].
//! It knows storage keys (through [`layout`]) and the spec's rules (through
//! [`crate::oci`]), never HTTP.

mod blobs;
mod catalog;
mod locks;
mod manifests;
mod referrers;
mod tags;
mod uploads;

use std::io;
use std::sync::Arc;

pub use blobs::BlobRead;
pub use manifests::{ManifestPut, StoredManifest};
pub use uploads::{UploadSession, UploadStart};

use crate::oci::RegistryError;
use crate::storage::{layout, Storage};

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
    upload_locks: locks::KeyedLocks,
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, limits: Limits) -> Registry {
        Registry {
            storage,
            limits,
            upload_locks: locks::KeyedLocks::default(),
        }
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

    async fn exists(&self, key: &str) -> Result<bool, RegistryError> {
        Ok(self
            .storage
            .size(key)
            .await
            .map_err(storage_error)?
            .is_some())
    }

    /// Reads a link document and the digest it names.
    async fn read_link(&self, key: &str) -> Result<Option<crate::oci::Digest>, RegistryError> {
        let Some(body) = self.storage.get(key).await.map_err(storage_error)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&body).unwrap_or_default().trim();
        text.parse()
            .map(Some)
            .map_err(|_| RegistryError::internal("corrupt link document", key))
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

fn storage_error(e: io::Error) -> RegistryError {
    RegistryError::internal("storage operation failed", e)
}

/// One page of a lexically sorted listing (distribution-spec, "Listing Tags"):
/// the entries after `last`, at most `n` of them, and whether more follow.
pub struct Page {
    pub entries: Vec<String>,
    pub more: bool,
}

pub fn paginate(mut sorted: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    if let Some(last) = last {
        let start = sorted.partition_point(|e| e.as_str() <= last);
        sorted.drain(..start);
    }
    let more = n.is_some_and(|n| sorted.len() > n);
    if let Some(n) = n {
        sorted.truncate(n);
    }
    Page {
        entries: sorted,
        more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_starts_after_last_and_reports_more() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let page = paginate(all.clone(), Some(2), None);
        assert_eq!(page.entries, ["a", "b"]);
        assert!(page.more);
        let page = paginate(all.clone(), Some(2), Some("b"));
        assert_eq!(page.entries, ["c", "d"]);
        assert!(!page.more);
        let page = paginate(all.clone(), None, Some("bb"));
        assert_eq!(page.entries, ["c", "d"]);
        let page = paginate(all, Some(0), None);
        assert!(page.entries.is_empty());
        assert!(page.more);
    }
}
