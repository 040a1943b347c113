//! Eviction of what pull-through mirrors cached (docs/design/mirror.md §10):
//! a mirrored manifest nobody pulled for its entry's `unused_for` loses its
//! tags (with their history, which would otherwise keep the image for
//! rollbacks) and its revision link, so that garbage collection reclaims it
//! and the blobs no other manifest reaches; the next pull fetches it again.
//!
//! What "pulled" means is a record per manifest, written by the mirror
//! when it fetches the manifest and when it serves it (at most once per
//! `unused_for / 10`, at most an hour, per process: a write per image per
//! period, not per pull), holding the time in milliseconds. A manifest
//! without a record (pushed, or cached before records were kept) is never
//! evicted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::oci::{Digest, Reference, RepositoryName, Result, Tag};
use crate::registry::{storage_error, Registry, RepositoryWalk};
use crate::storage::{layout, Listing, WriteMode};

/// A mirrored prefix whose cached images go when unused for `unused_for`
/// (a `[[proxy]]` entry's; the lifecycle is given them as data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorEviction {
    pub prefix: RepositoryName,
    pub unused_for: Duration,
}

/// What eviction removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictionReport {
    pub evicted: Vec<(RepositoryName, Digest)>,
    pub problems: Vec<String>,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Registry {
    /// Records that a mirror fetched or served the manifest `digest` of
    /// `name` now, replacing the last record. Not synced: a crash that loses
    /// it costs the image an earlier eviction, never its content's
    /// integrity.
    pub async fn record_pull(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        let body = Bytes::from(millis(SystemTime::now()).to_string());
        self.storage
            .put(
                &layout::mirror_pull_record(name, digest),
                body,
                WriteMode::Scratch,
            )
            .await
            .map_err(storage_error)
            .map(|_| ())
    }

    /// Evicts every mirrored manifest unused for longer than its prefix's
    /// `unused_for` (see the module's doc).
    pub async fn evict_unused_mirrored(&self, dry_run: bool) -> Result<EvictionReport> {
        let mut report = EvictionReport::default();
        let rules = &self.lifecycle.mirror_eviction;
        if rules.is_empty() {
            return Ok(report);
        }
        let now = millis(SystemTime::now());
        let mut walk = RepositoryWalk::new(self.storage.as_ref());
        while let Some(name) = super::next_repository(&mut walk, &mut report.problems).await? {
            let Some(rule) = rules.iter().find(|r| {
                name.as_str()
                    .strip_prefix(r.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            }) else {
                continue;
            };
            let unused_for = u64::try_from(rule.unused_for.as_millis()).unwrap_or(u64::MAX);
            let mut unused = Vec::new();
            let dir = layout::mirror_pull_records(&name);
            let mut records = Listing::new(self.storage.as_ref(), dir.clone());
            while let Some(entry) = records.next().await.map_err(storage_error)? {
                let Some(digest) = layout::parse_mirror_pull_record(&entry) else {
                    report
                        .problems
                        .push(format!("{dir}/{entry}: not a pull record, skipped"));
                    continue;
                };
                let key = layout::mirror_pull_record(&name, &digest);
                let Some(body) = self.storage.get(&key).await.map_err(storage_error)? else {
                    continue;
                };
                let Some(pulled) = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                else {
                    report
                        .problems
                        .push(format!("{key}: not a time in milliseconds, skipped"));
                    continue;
                };
                if now.saturating_sub(pulled) > unused_for {
                    unused.push((digest, key));
                }
            }
            for (digest, key) in unused {
                if !dry_run {
                    if !self.evict_manifest(&name, &digest, &mut report).await? {
                        continue;
                    }
                    self.storage.delete(&key).await.map_err(storage_error)?;
                }
                report.evicted.push((name.clone(), digest));
            }
        }
        Ok(report)
    }

    /// Removes the tags pointing at `digest` with their history, then its
    /// revision link. Returns false when a tag stays (immutable, or pushed
    /// meanwhile): the manifest is then kept.
    async fn evict_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        report: &mut EvictionReport,
    ) -> Result<bool> {
        let Ok(stored) = self
            .get_manifest(name, &Reference::Digest(digest.clone()))
            .await
        else {
            // Gone already (deleted through the API): only its record is left.
            return Ok(true);
        };
        let mut pointing = Vec::new();
        let mut tags = self.tags(name);
        while let Some(tag) = tags.next().await.map_err(storage_error)? {
            let Some(tag) = Tag::parse(&tag) else {
                continue;
            };
            let current = layout::tag_current_link(name, &tag);
            if self.read_link_uncached(&current).await?.as_ref() == Some(digest) {
                pointing.push(tag);
            }
        }
        for tag in pointing {
            if self
                .delete_tag_and_history_if(name, &tag, digest)
                .await?
                .is_none()
            {
                report.problems.push(format!(
                    "{name}:{tag} still points at {digest}: the unused manifest is kept"
                ));
                return Ok(false);
            }
        }
        self.remove_revision(name, digest, &stored.body).await?;
        Ok(true)
    }
}
