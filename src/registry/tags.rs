//! Listing tags (distribution-spec "Listing Tags"): lexical order, `n`/`last`
//! pagination.

use std::sync::Arc;

use super::{paginate, storage_error, Page, Registry};
use crate::oci::{ErrorCode, RepositoryName, Result};
use crate::storage::layout;

impl Registry {
    /// One page of a repository's tags, or `NAME_UNKNOWN` if it does not exist.
    /// The sorted list is cached, so following `Link` pages costs no listing.
    pub async fn list_tags(
        &self,
        name: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        let tags = match self.caches.tag_list(name) {
            Some(tags) => tags,
            None => {
                let ticket = self.caches.ticket();
                let mut tags = self.all_tags(name).await?;
                tags.sort_unstable();
                let tags = Arc::new(tags);
                self.caches.fill_tag_list(ticket, name, tags.clone());
                tags
            }
        };
        if tags.is_empty() && !self.repository_exists(name).await? {
            return Err(ErrorCode::NameUnknown.into());
        }
        Ok(paginate(&tags, n, last))
    }

    pub(super) async fn all_tags(&self, name: &RepositoryName) -> Result<Vec<String>> {
        self.storage
            .list(&layout::tags_dir(name))
            .await
            .map_err(storage_error)
    }
}
