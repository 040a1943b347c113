//! Listing tags (distribution-spec "Listing Tags"): lexical order, `n`/`last`
//! pagination.

use std::sync::Arc;

use super::{paginate, storage_error, Page, Registry};
use crate::oci::{ErrorCode, RepositoryName, Result};
use crate::storage::{layout, Listing};

impl Registry {
    /// One page of a repository's tags, or `NAME_UNKNOWN` if it does not
    /// exist. A repository whose tags fit in one walk page of the backend
    /// (`Storage::walk_page`: 1,000 names on an object store, 10,000 on a
    /// filesystem, which reads a whole directory per listing anyway) has its
    /// sorted list cached (weighed within `cache_bytes`), so following `Link`
    /// pages costs no listing; a larger one is read a page at a time, `last`
    /// and `n` mapped onto the storage's listing, never whole.
    pub async fn list_tags(
        &self,
        name: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        if let Some(tags) = self.caches.tag_list(name) {
            return Ok(paginate(&tags, n, last));
        }
        let dir = layout::tags_dir(name);
        // A later page of a paged listing: that page alone (one listing of
        // `n` names on an object store, where reading the first page too, to
        // cache a small list, cost a listing of a thousand each time).
        if let (Some(n @ 1..), Some(last)) = (n, last) {
            let page = self
                .storage
                .list(&dir, Some(last), n)
                .await
                .map_err(storage_error)?;
            if page.names.is_empty() && !page.more && !self.repository_exists(name).await? {
                return Err(ErrorCode::NameUnknown.into());
            }
            return Ok(Page {
                entries: page.names,
                more: page.more,
            });
        }
        let ticket = self.caches.ticket();
        let first = self
            .storage
            .list(&dir, None, self.storage.walk_page())
            .await
            .map_err(storage_error)?;
        if !first.more {
            if first.names.is_empty() && !self.repository_exists(name).await? {
                return Err(ErrorCode::NameUnknown.into());
            }
            let tags = Arc::new(first.names);
            self.caches.fill_tag_list(ticket, name, tags.clone());
            return Ok(paginate(&tags, n, last));
        }
        match (n, last) {
            // The first page asked for lies within the page just read.
            (Some(n), None) if n <= first.names.len() => {
                let mut entries = first.names;
                entries.truncate(n);
                Ok(Page {
                    entries,
                    more: true,
                })
            }
            (Some(n), last) => {
                let page = self
                    .storage
                    .list(&dir, last, n)
                    .await
                    .map_err(storage_error)?;
                Ok(Page {
                    entries: page.names,
                    more: page.more,
                })
            }
            // Without `n` the client asked for every tag: the answer holds
            // them all anyway.
            (None, last) => Ok(Page {
                entries: Listing::new(self.storage.as_ref(), dir)
                    .starting_after(last)
                    .collect()
                    .await
                    .map_err(storage_error)?,
                more: false,
            }),
        }
    }

    /// A repository's tags, a page at a time.
    pub(super) fn tags(&self, name: &RepositoryName) -> Listing<'_> {
        Listing::new(self.storage.as_ref(), layout::tags_dir(name))
    }
}
