//! The catalog (`GET /v2/_catalog`): every repository name, lexically sorted
//! and paginated like tags.
//!
//! A repository is a directory under `repositories/` that has a
//! `_manifests` child, as in Distribution; names nest (`team/app`), so the
//! walk descends into every child that is not a `_`-prefixed registry folder.

use super::{paginate, storage_error, Page, Registry};
use crate::oci::Result;
use crate::storage::layout;

impl Registry {
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let mut names = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(name) = pending.pop() {
            let prefix = if name.is_empty() {
                layout::REPOSITORIES.to_owned()
            } else {
                format!("{}/{name}", layout::REPOSITORIES)
            };
            for child in self.storage.list(&prefix).await.map_err(storage_error)? {
                if child == layout::MANIFESTS_DIR {
                    names.push(name.clone());
                } else if !child.starts_with('_') {
                    pending.push(if name.is_empty() {
                        child
                    } else {
                        format!("{name}/{child}")
                    });
                }
            }
        }
        names.sort_unstable();
        Ok(paginate(&names, n, last))
    }
}
