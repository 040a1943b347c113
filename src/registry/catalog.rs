//! The catalog (`GET /v2/_catalog`): every repository name, lexically sorted
//! and paginated like tags.
//!
//! A repository is a directory under `repositories/` that has a
//! `_manifests` child, as in Distribution (see [`repository_tree`]).

use super::{paginate, repository_tree, storage_error, Page, Registry};
use crate::oci::Result;
use crate::storage::layout;

impl Registry {
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let names: Vec<String> = repository_tree(self.storage.as_ref())
            .await
            .map_err(storage_error)?
            .into_iter()
            .filter(|dir| dir.children.iter().any(|c| c == layout::MANIFESTS_DIR))
            .map(|dir| dir.path)
            .collect();
        Ok(paginate(&names, n, last))
    }
}
