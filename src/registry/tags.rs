//! Listing tags (distribution-spec "Listing Tags"): lexical order, `n`/`last`
//! pagination.

use super::{paginate, storage_error, Page, Registry};
use crate::oci::{ErrorCode, RepositoryName, Result};
use crate::storage::layout;

impl Registry {
    /// One page of a repository's tags, or `NAME_UNKNOWN` if it does not exist.
    pub async fn list_tags(
        &self,
        name: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        if !self.repository_exists(name).await? {
            return Err(ErrorCode::NameUnknown.into());
        }
        let mut tags = self.all_tags(name).await?;
        tags.sort_unstable();
        Ok(paginate(tags, n, last))
    }

    pub(super) async fn all_tags(&self, name: &RepositoryName) -> Result<Vec<String>> {
        self.storage
            .list(&layout::tags_dir(name))
            .await
            .map_err(storage_error)
    }
}
