//! Eviction of what pull-through mirrors cached (docs/design/mirror.md §10):
//! a mirrored manifest nobody pulled for its entry's `unused_for`, and then,
//! while the entry's cached images add up to more than its `max_bytes`, the
//! least recently pulled, lose their tags (with their history, which would
//! otherwise keep the image for rollbacks) and revision links, so that
//! garbage collection reclaims them and the blobs no other manifest
//! reaches; the next pull fetches them again. An entry's size is the sum,
//! each digest once, of its recorded manifests and of the blobs they name
//! that are linked in their repository (read from the manifests: no
//! request per blob); the limit is met once the collection has run, one
//! grace period later.
//!
//! What "pulled" means is a record per manifest, written by the mirror
//! when it fetches the manifest and when it serves it (at most once per
//! `unused_for / 10`, at most an hour, per process: a write per image per
//! period, not per pull), holding the time in milliseconds. A manifest
//! without a record (pushed, or cached before records were kept) is never
//! evicted, nor counted.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::oci::name::lies_below;
use crate::oci::{Digest, Manifest, Reference, RepositoryName, Result, Tag};
use crate::registry::{storage_error, Registry, RepositoryWalk};
use crate::storage::{layout, Listing, WriteMode};

/// A mirrored prefix whose cached images go when unused for `unused_for`,
/// or least recently pulled first beyond `max_bytes` (a `[[proxy]]`
/// entry's; the lifecycle is given them as data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorEviction {
    pub prefix: RepositoryName,
    pub unused_for: Option<Duration>,
    pub max_bytes: Option<u64>,
}

/// A recorded manifest of a mirrored prefix.
struct Cached {
    name: RepositoryName,
    digest: Digest,
    record: String,
    /// Milliseconds since the Unix epoch.
    pulled: u64,
    /// Its own digest and size, and those of the blobs it names that are
    /// linked in its repository (with `max_bytes` only).
    holds: Vec<(Digest, u64)>,
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

    /// Evicts mirrored manifests as their prefixes' rules say (see the
    /// module's doc).
    pub async fn evict_mirrored(&self, dry_run: bool) -> Result<EvictionReport> {
        let mut report = EvictionReport::default();
        let rules = &self.lifecycle.mirror_eviction;
        if rules.is_empty() {
            return Ok(report);
        }
        let now = millis(SystemTime::now());
        let mut cached: Vec<Vec<Cached>> = rules.iter().map(|_| Vec::new()).collect();
        let mut walk = RepositoryWalk::new(self.storage.as_ref());
        while let Some(name) = super::next_repository(&mut walk, &mut report.problems).await? {
            let Some(index) = rules
                .iter()
                .position(|r| lies_below(name.as_str(), r.prefix.as_str()))
            else {
                continue;
            };
            let sized = rules[index].max_bytes.is_some();
            self.cached_in(&name, sized, &mut cached[index], &mut report)
                .await?;
        }
        for (rule, entries) in rules.iter().zip(cached) {
            for cached in evicted_by(rule, entries, now) {
                if !dry_run {
                    if !self
                        .evict_manifest(&cached.name, &cached.digest, &mut report)
                        .await?
                    {
                        continue;
                    }
                    self.storage
                        .delete(&cached.record)
                        .await
                        .map_err(storage_error)?;
                }
                report.evicted.push((cached.name, cached.digest));
            }
        }
        Ok(report)
    }

    /// The recorded manifests of `name`, with what they hold when `sized`.
    async fn cached_in(
        &self,
        name: &RepositoryName,
        sized: bool,
        cached: &mut Vec<Cached>,
        report: &mut EvictionReport,
    ) -> Result<()> {
        let dir = layout::mirror_pull_records(name);
        let mut records = Listing::new(self.storage.as_ref(), dir.clone());
        while let Some(entry) = records.next().await.map_err(storage_error)? {
            let Some(digest) = layout::parse_mirror_pull_record(&entry) else {
                report
                    .problems
                    .push(format!("{dir}/{entry}: not a pull record, skipped"));
                continue;
            };
            let record = layout::mirror_pull_record(name, &digest);
            let Some(body) = self.storage.get(&record).await.map_err(storage_error)? else {
                continue;
            };
            let Some(pulled) = std::str::from_utf8(&body)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
            else {
                report
                    .problems
                    .push(format!("{record}: not a time in milliseconds, skipped"));
                continue;
            };
            let mut holds = Vec::new();
            if sized {
                let reference = Reference::Digest(digest.clone());
                if let Ok(stored) = self.get_manifest(name, &reference).await {
                    holds.push((digest.clone(), stored.body.len() as u64));
                    if let Ok(manifest) = Manifest::parse(&stored.body, None) {
                        for declared in manifest.descriptors {
                            let link = layout::layer_link(name, &declared.digest);
                            if self.read_link_uncached(&link).await?.is_some() {
                                holds.push((declared.digest, declared.size));
                            }
                        }
                    }
                }
            }
            cached.push(Cached {
                name: name.clone(),
                digest,
                record,
                pulled,
                holds,
            });
        }
        Ok(())
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

/// What `rule` evicts of an entry's recorded manifests: those unused for
/// `unused_for`, then, while what the rest hold (each digest once) is over
/// `max_bytes`, the least recently pulled.
fn evicted_by(rule: &MirrorEviction, cached: Vec<Cached>, now: u64) -> Vec<Cached> {
    let unused = |c: &Cached| {
        rule.unused_for.is_some_and(|limit| {
            let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(c.pulled) > limit
        })
    };
    let (mut evicted, mut kept): (Vec<Cached>, Vec<Cached>) = cached.into_iter().partition(unused);
    let Some(max_bytes) = rule.max_bytes else {
        return evicted;
    };
    let mut holders: HashMap<Digest, (u64, usize)> = HashMap::new();
    for (digest, size) in kept.iter().flat_map(|c| &c.holds) {
        holders.entry(digest.clone()).or_insert((*size, 0)).1 += 1;
    }
    let mut total: u64 = holders.values().map(|(size, _)| size).sum();
    kept.sort_by(|a, b| a.pulled.cmp(&b.pulled).then_with(|| a.name.cmp(&b.name)));
    let mut kept = kept.into_iter();
    while total > max_bytes {
        let Some(oldest) = kept.next() else {
            break;
        };
        for (digest, _) in &oldest.holds {
            if let Some((size, holding)) = holders.get_mut(digest) {
                *holding -= 1;
                if *holding == 0 {
                    total -= *size;
                }
            }
        }
        evicted.push(oldest);
    }
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(seed: &str) -> Digest {
        Digest::of(crate::oci::Algorithm::Sha256, seed.as_bytes())
    }

    fn cached(name: &str, pulled: u64, holds: &[(&str, u64)]) -> Cached {
        let name = RepositoryName::parse(name).unwrap();
        Cached {
            digest: digest(name.as_str()),
            record: String::new(),
            name,
            pulled,
            holds: holds.iter().map(|(d, size)| (digest(d), *size)).collect(),
        }
    }

    fn names(evicted: Vec<Cached>) -> Vec<String> {
        evicted.into_iter().map(|c| c.name.to_string()).collect()
    }

    #[test]
    fn the_unused_go_then_the_least_recently_pulled_until_the_rest_fit_each_blob_counted_once() {
        let rule = |unused_for: Option<u64>, max_bytes: Option<u64>| MirrorEviction {
            prefix: RepositoryName::parse("hub").unwrap(),
            unused_for: unused_for.map(Duration::from_millis),
            max_bytes,
        };
        let entries = || {
            vec![
                cached("hub/a", 1_000, &[("a", 10), ("base", 100)]),
                cached("hub/b", 5_000, &[("b", 10), ("base", 100)]),
                cached("hub/c", 9_000, &[("c", 10), ("big", 300)]),
            ]
        };
        // Unused for more than 3 s at 10 s: a and b.
        assert_eq!(
            names(evicted_by(&rule(Some(3_000), None), entries(), 10_000)),
            ["hub/a", "hub/b"]
        );
        // All three hold 430 bytes (base once). Evicting a frees only its
        // own 10 (b still holds base): 420; then b: 310, which fits 400.
        assert_eq!(
            names(evicted_by(&rule(None, Some(400)), entries(), 10_000)),
            ["hub/a", "hub/b"]
        );
        assert_eq!(
            names(evicted_by(&rule(None, Some(430)), entries(), 10_000)),
            Vec::<String>::new()
        );
        assert_eq!(
            names(evicted_by(&rule(None, Some(420)), entries(), 10_000)),
            ["hub/a"]
        );
        // Both: the unused go first and no longer count.
        assert_eq!(
            names(evicted_by(&rule(Some(7_000), Some(320)), entries(), 10_000)),
            ["hub/a", "hub/b"]
        );
        assert_eq!(
            names(evicted_by(&rule(None, Some(0)), entries(), 10_000)),
            ["hub/a", "hub/b", "hub/c"]
        );
    }
}
