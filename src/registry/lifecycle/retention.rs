//! Tag retention (`[[lifecycle.retention]]`): removes tags the rules no
//! longer keep, so that garbage collection can reclaim their images.
//!
//! For each tag the first rule that matches it decides (see
//! [`super::RetentionRule`]). A tag's age is the time of its newest
//! history entry, or, for a tag without Berth history (data written by
//! Distribution), when its current link was written. Immutable tags are never
//! removed, though they count among a rule's newest. A removed tag goes
//! through the ordinary tag deletion, and then its history goes too: keeping
//! rollback targets of a tag that retention removed would keep the very
//! images retention exists to reclaim.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::oci::{Digest, RepositoryName, Result, Tag};
use crate::registry::{storage_error, Registry, RepositoryWalk};
use crate::storage::layout;

/// A tag retention removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedTag {
    pub repository: RepositoryName,
    pub tag: Tag,
    /// What it pointed at.
    pub digest: Digest,
    /// When it last changed.
    pub changed: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub removed: Vec<RemovedTag>,
    pub history_entries_removed: usize,
    pub problems: Vec<String>,
}

/// A tag a rule judges.
struct Candidate {
    tag: Tag,
    digest: Digest,
    changed: SystemTime,
}

impl Registry {
    /// Applies the retention rules to every repository.
    pub async fn apply_retention(&self, dry_run: bool) -> Result<RetentionReport> {
        let mut report = RetentionReport {
            dry_run,
            ..RetentionReport::default()
        };
        let rules = &self.lifecycle.retention;
        if rules.is_empty() {
            return Ok(report);
        }
        let now = SystemTime::now();
        let mut walk = RepositoryWalk::new(self.storage.as_ref());
        while let Some(name) = super::next_repository(&mut walk, &mut report.problems).await? {
            // The tags each rule decides, by the rule's position.
            let mut decided: BTreeMap<usize, Vec<Candidate>> = BTreeMap::new();
            let mut tags = self.tags(&name);
            while let Some(tag) = super::next_tag(&mut tags, &name, &mut report.problems).await? {
                let Some(index) = rules.iter().position(|r| r.tags.matches(&name, &tag)) else {
                    continue;
                };
                if rules[index].keep_newest.is_none() && rules[index].max_age.is_none() {
                    continue;
                }
                let current = layout::tag_current_link(&name, &tag);
                let Some(digest) = self.read_link_uncached(&current).await? else {
                    continue;
                };
                let Some(changed) = self.tag_changed_at(&name, &tag).await? else {
                    continue;
                };
                decided.entry(index).or_default().push(Candidate {
                    tag,
                    digest,
                    changed,
                });
            }
            for (index, mut candidates) in decided {
                let rule = &rules[index];
                candidates.sort_by(|a, b| {
                    b.changed
                        .cmp(&a.changed)
                        .then_with(|| a.tag.as_str().cmp(b.tag.as_str()))
                });
                for candidate in candidates.into_iter().skip(rule.keep_newest.unwrap_or(0)) {
                    let expired = match rule.max_age {
                        Some(max_age) => now
                            .duration_since(candidate.changed)
                            .is_ok_and(|age| age > max_age),
                        None => true,
                    };
                    if !expired || self.lifecycle.is_immutable(&name, &candidate.tag) {
                        continue;
                    }
                    if dry_run || self.remove_tag(&name, &candidate, &mut report).await? {
                        report.removed.push(RemovedTag {
                            repository: name.clone(),
                            tag: candidate.tag,
                            digest: candidate.digest,
                            changed: candidate.changed,
                        });
                    }
                }
            }
        }
        Ok(report)
    }

    /// When a tag last changed: its newest history entry, else (a tag from
    /// Distribution) when its current link was written.
    async fn tag_changed_at(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<SystemTime>> {
        let newest = self
            .history_entries(name, tag)
            .await?
            .first()
            .map(|(nanos, _)| *nanos);
        if let Some(nanos) = newest {
            let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
            return Ok(Some(UNIX_EPOCH + Duration::from_nanos(nanos)));
        }
        let current = layout::tag_current_link(name, tag);
        let info = self.storage.stat(&current).await.map_err(storage_error)?;
        Ok(info.map(|i| i.modified))
    }

    /// Deletes a tag and its history. Returns false when the tag changed
    /// since it was judged (pushed again: it is new, and stays) or is gone.
    async fn remove_tag(
        &self,
        name: &RepositoryName,
        candidate: &Candidate,
        report: &mut RetentionReport,
    ) -> Result<bool> {
        let Some(entries) = self
            .delete_tag_and_history_if(name, &candidate.tag, &candidate.digest)
            .await?
        else {
            return Ok(false);
        };
        report.history_entries_removed += entries;
        Ok(true)
    }
}
