//! Tag history: every change of a tag (pointed at a digest, or deleted), with
//! its time, newest first. It outlives the tag's deletion so that a tag can be
//! rolled back, and garbage collection keeps the images of the most recent
//! entries (`history_keep`). Entries naming a manifest that was deleted are
//! not part of the history ("history keeps no deleted image").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{storage_error, Registry};
use crate::oci::{Digest, ErrorCode, RegistryError, RepositoryName, Result, Tag};
use crate::storage::{layout, Listing, WriteMode};

/// One change of a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagChange {
    pub time: SystemTime,
    /// The digest the tag was pointed at, `None` when it was deleted.
    pub digest: Option<Digest>,
}

/// A tag's current digest and its history, as [`Registry::tag_history_view`]
/// reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHistory {
    /// `None` when the tag is deleted.
    pub current: Option<Digest>,
    /// Newest first.
    pub changes: Vec<TagChange>,
}

/// Which earlier image a rollback points a tag at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// This image, which must be in the tag's history.
    Digest(Digest),
    /// The image this many distinct images back (see [`earlier_images`]).
    Steps(usize),
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub digest: Digest,
    /// Where the tag pointed before; `None` when it was deleted.
    pub previous: Option<Digest>,
}

impl Registry {
    /// Writes a tag's current link, and a history entry if it changed (at
    /// `entry`, named by [`Registry::tag_change_entries`], or now), for a
    /// caller that holds the tag's lock and has read its `current` digest
    /// from storage under it. Refuses to move or re-create an immutable tag
    /// onto another digest. Returns whether the tag changed.
    pub(super) async fn change_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        current: Option<Digest>,
        digest: &Digest,
        entry: Option<String>,
    ) -> Result<bool> {
        let current_key = layout::tag_current_link(name, tag);
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
                .create_exclusive(&current_key, layout::link_body(digest))
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
            // The current link and the history entries are independent
            // documents, written as one batch: a crash in between may leave
            // a history entry for a change that did not finish (it names an
            // image that exists) or a change missing from history; never a
            // tag pointing at something that is not stored. The entry is
            // not synced (`WriteMode::Record`): a machine crash may lose
            // it, an outcome the batch already allowed, for a sync less.
            let entry = entry.unwrap_or_else(|| {
                self.tag_change_entries(name, &[tag], Some(digest))
                    .remove(0)
            });
            let mut docs = vec![(entry, bytes::Bytes::new(), WriteMode::Record)];
            docs.push((
                current_key.clone(),
                layout::link_body(digest),
                WriteMode::Overwrite,
            ));
            self.storage.put_all(docs).await.map_err(storage_error)?;
        }
        self.caches.wrote_link(&current_key, Some(digest.clone()));
        self.caches.wrote_tags(name);
        Ok(true)
    }

    /// Appends one change to a tag's history.
    pub(super) async fn record_tag_change(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: Option<&Digest>,
    ) -> Result<()> {
        let docs = self.tag_change_documents(name, tag, digest);
        self.storage.put_all(docs).await.map_err(storage_error)?;
        Ok(())
    }

    /// The document that records a change: a history entry, empty because
    /// its name says everything. (Distribution's `index/` of the tag is not
    /// written: nothing reads it to serve a tag, and a change costs one
    /// directory sync less without it.)
    fn tag_change_documents(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: Option<&Digest>,
    ) -> Vec<(String, bytes::Bytes, WriteMode)> {
        self.tag_change_entries(name, &[tag], digest)
            .into_iter()
            .map(|entry| (entry, bytes::Bytes::new(), WriteMode::Record))
            .collect()
    }

    /// The history entries that record a change of each of `tags` to
    /// `digest` now.
    pub(super) fn tag_change_entries(
        &self,
        name: &RepositoryName,
        tags: &[&Tag],
        digest: Option<&Digest>,
    ) -> Vec<String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        tags.iter()
            .map(|tag| layout::tag_history_entry(name, tag, nanos, digest))
            .collect()
    }

    /// Removes every history entry naming `digest` in `name` (a deleted
    /// manifest is gone for good, and no rollback may bring it back).
    pub(super) async fn forget_in_history(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<()> {
        let histories = layout::tag_histories(name);
        let mut tags = Listing::new(self.storage.as_ref(), histories);
        while let Some(tag) = tags.next().await.map_err(storage_error)? {
            let Some(tag) = Tag::parse(&tag) else {
                continue;
            };
            let dir = layout::tag_history_dir(name, &tag);
            let mut entries = Listing::new(self.storage.as_ref(), dir.as_str());
            while let Some(entry) = entries.next().await.map_err(storage_error)? {
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
        let entries = self.history_entries(name, tag).await?;
        self.present_changes(name, entries, None).await
    }

    /// What the history extension shows of a tag: where it points now and
    /// at most `limit` of its changes, newest first. A tag that has neither
    /// is unknown: `NAME_UNKNOWN` when the repository does not exist either,
    /// else `MANIFEST_UNKNOWN` (what a pull of an unknown tag answers).
    pub async fn tag_history_view(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        limit: Option<usize>,
    ) -> Result<TagHistory> {
        let current = self
            .read_link_uncached(&layout::tag_current_link(name, tag))
            .await?;
        let entries = self.history_entries(name, tag).await?;
        if current.is_none() && entries.is_empty() {
            return Err(self.unknown_tag(name, tag).await?);
        }
        let changes = self.present_changes(name, entries, limit).await?;
        Ok(TagHistory { current, changes })
    }

    /// Points `tag` back at an image from its history, recording the change
    /// like any other. The tag's lock is held from reading where it points
    /// to writing the new link, so `previous` is what the rollback replaced
    /// and `steps` counts from it. A deleted tag is re-created.
    pub async fn rollback_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        target: &RollbackTarget,
    ) -> Result<Rollback> {
        if self.lifecycle.is_immutable(name, tag) {
            return Err(immutable_tag(name, tag));
        }
        let current_key = layout::tag_current_link(name, tag);
        let _serialised = self.tag_locks.lock(&current_key).await;
        let previous = self.read_link_uncached(&current_key).await?;
        let entries = self.history_entries(name, tag).await?;
        if previous.is_none() && entries.is_empty() {
            return Err(self.unknown_tag(name, tag).await?);
        }
        let history = self.present_changes(name, entries, None).await?;
        let digest = match target {
            RollbackTarget::Digest(wanted) => history
                .iter()
                .find_map(|c| c.digest.as_ref().filter(|d| *d == wanted))
                .cloned()
                .ok_or_else(|| {
                    RegistryError::with_detail(
                        ErrorCode::ManifestUnknown,
                        format!("{wanted} is not an image in the history of {name}:{tag}"),
                    )
                })?,
            RollbackTarget::Steps(steps) => {
                let earlier = earlier_images(&history, previous.as_ref());
                steps
                    .checked_sub(1)
                    .and_then(|i| earlier.get(i))
                    .map(|d| (*d).clone())
                    .ok_or_else(|| {
                        RegistryError::with_detail(
                            ErrorCode::ManifestUnknown,
                            format!(
                                "cannot go {steps} step(s) back: the history of {name}:{tag} \
                                 holds {} earlier image(s)",
                                earlier.len()
                            ),
                        )
                    })?
            }
        };
        // The history was filtered through the (cached) revision links; the
        // write must rest on storage, so a manifest deleted meanwhile by
        // another process is not brought back as a dangling tag.
        // Touched, with all it requires, like any push: a collection running
        // now may have judged this image unreachable (touch.rs; docs/design/gc.md).
        let target = crate::oci::Requirement::Manifest(digest.clone());
        if !self.touch_requirement(name, &target).await? {
            return Err(RegistryError::with_detail(
                ErrorCode::ManifestUnknown,
                format!("{digest} is no longer complete in {name}"),
            ));
        }
        self.change_tag(name, tag, previous.clone(), &digest, None)
            .await?;
        Ok(Rollback { digest, previous })
    }

    /// The error for a tag with neither a current link nor a history.
    async fn unknown_tag(&self, name: &RepositoryName, tag: &Tag) -> Result<RegistryError> {
        Ok(if self.repository_exists(name).await? {
            RegistryError::with_detail(
                ErrorCode::ManifestUnknown,
                format!("{name}:{tag} has no history"),
            )
        } else {
            RegistryError::with_detail(ErrorCode::NameUnknown, format!("{name}"))
        })
    }

    /// A tag's history entries as stored (deleted manifests included),
    /// newest first.
    pub(super) async fn history_entries(
        &self,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Result<Vec<(u128, Option<Digest>)>> {
        // The caller needs the newest entries first, and names sort oldest
        // first: the whole history is read (bounded by `history_keep` once
        // garbage collection runs).
        let mut entries: Vec<(u128, Option<Digest>)> =
            Listing::new(self.storage.as_ref(), layout::tag_history_dir(name, tag))
                .collect()
                .await
                .map_err(storage_error)?
                .iter()
                .filter_map(|entry| layout::parse_tag_history_entry(entry))
                .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(entries)
    }

    /// The first `limit` of `entries` whose manifest is still in `name`.
    async fn present_changes(
        &self,
        name: &RepositoryName,
        entries: Vec<(u128, Option<Digest>)>,
        limit: Option<usize>,
    ) -> Result<Vec<TagChange>> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut history = Vec::with_capacity(entries.len().min(limit));
        for (nanos, digest) in entries {
            if history.len() >= limit {
                break;
            }
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

/// The images a tag pointed at before, newest first, each once, without
/// `current`: what `steps` counts (1 is the image before the current one).
/// Counting distinct images makes `steps=2` skip back over an A→B→A flip
/// instead of landing on the current image again.
fn earlier_images<'a>(history: &'a [TagChange], current: Option<&Digest>) -> Vec<&'a Digest> {
    let mut earlier: Vec<&Digest> = Vec::new();
    for digest in history.iter().filter_map(|c| c.digest.as_ref()) {
        if Some(digest) != current && !earlier.contains(&digest) {
            earlier.push(digest);
        }
    }
    earlier
}

fn immutable_tag(name: &RepositoryName, tag: &Tag) -> RegistryError {
    RegistryError::with_detail(ErrorCode::TagImmutable, format!("{name}:{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest::of(crate::oci::Algorithm::Sha256, &[byte])
    }

    fn change(d: Option<u8>) -> TagChange {
        TagChange {
            time: UNIX_EPOCH,
            digest: d.map(digest),
        }
    }

    #[test]
    fn steps_count_distinct_earlier_images_skipping_the_current_one() {
        // Newest first: A (current), B, A, deleted, C, B.
        let history = [
            change(Some(1)),
            change(Some(2)),
            change(Some(1)),
            change(None),
            change(Some(3)),
            change(Some(2)),
        ];
        let earlier = earlier_images(&history, Some(&digest(1)));
        assert_eq!(earlier, [&digest(2), &digest(3)]);
        // A deleted tag has no current image: the newest entry is step 1.
        let earlier = earlier_images(&history, None);
        assert_eq!(earlier, [&digest(1), &digest(2), &digest(3)]);
    }
}
