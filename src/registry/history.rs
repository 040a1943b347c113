//! Tag history: every change of a tag (pointed at a digest, or deleted), with
//! its time, newest first. It outlives the tag's deletion so that a tag can be
//! rolled back, and garbage collection keeps the images of the most recent
//! entries (`history_keep`). Entries naming a manifest that was deleted are
//! not part of the history ("history keeps no deleted image").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{storage_error, Registry};
use crate::oci::{Digest, ErrorCode, RegistryError, RepositoryName, Result, Tag};
use crate::storage::{layout, WriteMode};

/// One change of a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagChange {
    pub time: SystemTime,
    /// The digest the tag was pointed at, `None` when it was deleted.
    pub digest: Option<Digest>,
}

impl Registry {
    /// Writes a tag's current link, and a history entry if it changed.
    /// Refuses to move or re-create an immutable tag onto another digest.
    /// Returns whether the tag changed.
    pub(super) async fn set_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<bool> {
        let current_key = layout::tag_current_link(name, tag);
        let _serialised = self.tag_locks.lock(&current_key).await;
        let current = self.read_link_uncached(&current_key).await?;
        if current.as_ref() == Some(digest) {
            self.caches.wrote_link(&current_key, Some(digest.clone()));
            return Ok(false);
        }
        let immutable = self.lifecycle.is_immutable(name, tag);
        if immutable && current.is_some() {
            return Err(immutable_tag(name, tag));
        }
        if immutable {
            // Another process may create the tag at the same moment: only one
            // of them may win, and only the winner's change is history.
            let created = self
                .storage
                .put(
                    &current_key,
                    layout::link_body(digest),
                    WriteMode::CreateIfAbsent,
                )
                .await
                .map_err(storage_error)?;
            if !created {
                let now = self.read_link_uncached(&current_key).await?;
                self.caches.wrote_link(&current_key, now.clone());
                return match now {
                    Some(d) if &d == digest => Ok(false),
                    _ => Err(immutable_tag(name, tag)),
                };
            }
            self.record_tag_change(name, tag, Some(digest)).await?;
        } else {
            // The current link and the history entry are independent files,
            // written side by side: a crash between them leaves a history
            // entry for a change that did not finish, which rolls back to an
            // image that exists, or a change missing from history; never a
            // tag pointing at something that is not stored.
            let link = async { self.write_link(&current_key, digest).await.map(drop) };
            tokio::try_join!(link, self.record_tag_change(name, tag, Some(digest)))?;
        }
        self.caches.wrote_link(&current_key, Some(digest.clone()));
        self.caches.wrote_tags(name);
        Ok(true)
    }

    /// Appends one change to a tag's history; a change to a digest is also
    /// recorded in Distribution's `index/` of the tag, as Distribution does.
    pub(super) async fn record_tag_change(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: Option<&Digest>,
    ) -> Result<()> {
        let index = async {
            if let Some(digest) = digest {
                let key = layout::tag_index_link(name, tag, digest);
                self.storage
                    .put(&key, layout::link_body(digest), WriteMode::CreateIfAbsent)
                    .await
                    .map_err(storage_error)?;
            }
            Ok::<_, RegistryError>(())
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let key = layout::tag_history_entry(name, tag, nanos, digest);
        let entry = async {
            self.storage
                .create_marker(&key)
                .await
                .map_err(storage_error)
        };
        tokio::try_join!(index, entry)?;
        Ok(())
    }

    /// Removes every history entry naming `digest` in `name` (a deleted
    /// manifest is gone for good, and no rollback may bring it back).
    pub(super) async fn forget_in_history(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<()> {
        let histories = layout::tag_histories(name);
        for tag in self.storage.list(&histories).await.map_err(storage_error)? {
            let Some(tag) = Tag::parse(&tag) else {
                continue;
            };
            let dir = layout::tag_history_dir(name, &tag);
            for entry in self.storage.list(&dir).await.map_err(storage_error)? {
                if let Some((_, Some(d))) = layout::parse_tag_history_entry(&entry) {
                    if &d == digest {
                        self.storage
                            .delete(&format!("{dir}/{entry}"))
                            .await
                            .map_err(storage_error)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every recorded change of `tag`, newest first, without entries whose
    /// manifest is no longer in the repository.
    pub async fn tag_history(&self, name: &RepositoryName, tag: &Tag) -> Result<Vec<TagChange>> {
        let mut entries: Vec<(u128, Option<Digest>)> = self
            .storage
            .list(&layout::tag_history_dir(name, tag))
            .await
            .map_err(storage_error)?
            .iter()
            .filter_map(|entry| layout::parse_tag_history_entry(entry))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut history = Vec::with_capacity(entries.len());
        for (nanos, digest) in entries {
            if let Some(d) = &digest {
                if self
                    .read_link(&layout::revision_link(name, d))
                    .await?
                    .is_none()
                {
                    continue;
                }
            }
            let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
            history.push(TagChange {
                time: UNIX_EPOCH + Duration::from_nanos(nanos),
                digest,
            });
        }
        Ok(history)
    }
}

fn immutable_tag(name: &RepositoryName, tag: &Tag) -> RegistryError {
    RegistryError::with_detail(ErrorCode::TagImmutable, format!("{name}:{tag}"))
}
