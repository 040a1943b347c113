//! Online garbage collection: mark and sweep while clients push and pull.
//!
//! **Mark.** For every repository the roots are each tag's current manifest,
//! the manifests of each tag's `history_keep` most recent history entries that
//! name a manifest still in the repository (deleted tags' histories included),
//! and, with `untagged_manifests = "keep"`, every revision link. From the roots
//! the mark follows index children, configs and layers, and keeps every
//! referrer (`_referrers/`) of a kept manifest, recursively.
//!
//! **Sweep.** Per repository: revision links of manifests not kept (with
//! `untagged_manifests = "delete"`), their referrer links and the history
//! entries naming them, and layer links that no kept manifest of the
//! repository references. Then, over the whole store, content (`blobs/`) that
//! no remaining link and no kept manifest names.
//!
//! **Why it is safe while clients work (the touch-before-use protocol).** Every
//! removal is [`Storage::delete_if_untouched_since`] with a cutoff of the
//! run's start minus the grace period, and whoever makes an existing object
//! reachable touches it first and relies on it only if the touch found it
//! (the write path's side of the protocol is `registry/touch.rs`;
//! `docs/design/gc.md` has the whole argument). So anything written or
//! touched after the cutoff survives this run, and a push that lost its race
//! against a removal is refused (`MANIFEST_BLOB_UNKNOWN`) instead of
//! acknowledged incomplete.
//!
//! [`Storage::delete_if_untouched_since`]: crate::storage::Storage::delete_if_untouched_since

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::UntaggedManifests;
use crate::oci::{Algorithm, Digest, Manifest, RepositoryName, Result, Tag};
use crate::registry::{digests_under, registry_folder_of, storage_error, Registry, RepositoryWalk};
use crate::storage::{layout, Listing, TreeListing, LIST_PAGE};

/// How many sizes a collection asks storage for at once.
const STATS_IN_FLIGHT: usize = 32;

/// How many repositories a collection marks and sweeps at once. Each costs a
/// handful of round trips on an object store (its link listings, its tag
/// links, its kept manifests), so one at a time spends a run over thousands
/// of repositories waiting: 3,600 took 217 s on a one-node Garage.
const REPOSITORIES_IN_FLIGHT: usize = 16;

/// How a collection runs.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Report what would be removed, and change nothing.
    pub dry_run: bool,
    /// Replaces the configured `gc_grace_period` for this run.
    pub grace_period: Option<Duration>,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: usize,
    /// Revision links removed: manifests no longer in a repository.
    pub manifests_removed: usize,
    pub layer_links_removed: usize,
    pub referrer_links_removed: usize,
    pub history_entries_removed: usize,
    /// Content removed from `blobs/` (layers, configs and manifests).
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    /// Of those, manifest documents.
    pub manifest_blobs_removed: usize,
    pub manifest_bytes_removed: u64,
    /// Objects chosen for removal but touched during the run, so kept.
    pub spared: usize,
    /// Things skipped because they could not be understood (invalid names,
    /// unreadable manifests); a repository with an unreadable kept manifest
    /// is not swept at all.
    pub problems: Vec<String>,
}

impl GcReport {
    /// Adds what `other` (a part of this run) counted.
    fn absorb(&mut self, other: GcReport) {
        self.repositories += other.repositories;
        self.manifests_removed += other.manifests_removed;
        self.layer_links_removed += other.layer_links_removed;
        self.referrer_links_removed += other.referrer_links_removed;
        self.history_entries_removed += other.history_entries_removed;
        self.blobs_removed += other.blobs_removed;
        self.bytes_removed += other.bytes_removed;
        self.manifest_blobs_removed += other.manifest_blobs_removed;
        self.manifest_bytes_removed += other.manifest_bytes_removed;
        self.spared += other.spared;
        self.problems.extend(other.problems);
    }
}

/// What the collection of one repository found and did.
#[derive(Default)]
struct RepositoryOutcome {
    report: GcReport,
    /// Content its remaining links and kept manifests name.
    referenced: HashSet<Digest>,
    /// Every digest that was a manifest in it.
    manifests: HashSet<Digest>,
}

/// One collection run over a registry's store: the mark and sweep steps,
/// removing (or, in a dry run, judging) objects against the run's cutoff.
/// The registry only offers the entry points ([`Registry::collect_garbage`]).
struct Collection<'a> {
    registry: &'a Registry,
    cutoff: SystemTime,
    dry_run: bool,
}

impl Collection<'_> {
    /// Marks and sweeps one repository ([`Collection::collect_repository`]),
    /// from the names of its own objects when the walk read them.
    async fn repository(
        &self,
        name: RepositoryName,
        keys: Option<Vec<String>>,
        ignored: &HashSet<(RepositoryName, Tag)>,
    ) -> Result<RepositoryOutcome> {
        let mut outcome = RepositoryOutcome::default();
        self.collect_repository(
            &name,
            keys,
            ignored,
            &mut outcome.report,
            &mut outcome.referenced,
            &mut outcome.manifests,
        )
        .await?;
        Ok(outcome)
    }

    /// Whether `key` was removed (would be, in a dry run): only if it was not
    /// written or touched at or after the cutoff.
    async fn remove(&self, key: &str) -> Result<bool> {
        let storage = &self.registry.storage;
        if self.dry_run {
            let info = storage.stat(key).await.map_err(storage_error)?;
            return Ok(info.is_some_and(|i| i.modified < self.cutoff));
        }
        storage
            .delete_if_untouched_since(key, self.cutoff)
            .await
            .map_err(storage_error)
    }

    /// [`Collection::remove`] for many keys, a storage batch (a listing
    /// page) at a time: whether each was removed, in order.
    async fn remove_all(&self, keys: Vec<String>) -> Result<Vec<bool>> {
        let mut removed = Vec::with_capacity(keys.len());
        for batch in keys.chunks(LIST_PAGE) {
            if self.dry_run {
                for key in batch {
                    removed.push(self.remove(key).await?);
                }
                continue;
            }
            removed.extend(
                self.registry
                    .storage
                    .delete_all_if_untouched_since(batch.to_vec(), self.cutoff)
                    .await
                    .map_err(storage_error)?,
            );
        }
        Ok(removed)
    }

    /// Removes links and, in this process, what the cache says of them.
    async fn remove_links(&self, keys: Vec<String>) -> Result<Vec<bool>> {
        let removed = self.remove_all(keys.clone()).await?;
        if !self.dry_run {
            for (key, _) in keys.iter().zip(&removed).filter(|(_, r)| **r) {
                self.registry.caches.wrote_link(key, None);
            }
        }
        Ok(removed)
    }

    async fn collect_repository(
        &self,
        name: &RepositoryName,
        keys: Option<Vec<String>>,
        ignored: &HashSet<(RepositoryName, Tag)>,
        report: &mut GcReport,
        referenced: &mut HashSet<Digest>,
        manifests: &mut HashSet<Digest>,
    ) -> Result<()> {
        let scan = self
            .scan_repository(name, keys, &mut report.problems)
            .await?;
        let roots = self.roots(name, &scan, ignored, report).await?;
        let (kept_manifests, kept_blobs, complete) = self.mark(name, &scan, roots, report).await?;
        manifests.extend(scan.revisions.iter().cloned());
        referenced.extend(kept_manifests.iter().cloned());
        referenced.extend(kept_blobs.iter().cloned());
        if !complete {
            // What an unreadable kept manifest references is unknown: keep
            // every link of this repository, and so the content they name.
            referenced.extend(scan.revisions.iter().cloned());
            referenced.extend(scan.layers.iter().cloned());
            return Ok(());
        }

        let mut removed_manifests = HashSet::new();
        if self.registry.lifecycle.untagged_manifests == UntaggedManifests::Delete {
            let unkept: Vec<&Digest> = scan.revisions.difference(&kept_manifests).collect();
            let keys = unkept
                .iter()
                .map(|digest| layout::revision_link(name, digest))
                .collect();
            for (digest, removed) in unkept.into_iter().zip(self.remove_links(keys).await?) {
                if removed {
                    report.manifests_removed += 1;
                    removed_manifests.insert(digest.clone());
                } else {
                    report.spared += 1;
                }
            }
        }
        referenced.extend(
            scan.revisions
                .iter()
                .filter(|d| !removed_manifests.contains(*d))
                .cloned(),
        );

        // A referrer link goes with its manifest, or when it names none.
        let keys = scan
            .referrers
            .iter()
            .filter(|(_, referrer)| {
                let gone =
                    removed_manifests.contains(referrer) || !scan.revisions.contains(referrer);
                gone && !kept_manifests.contains(referrer)
            })
            .map(|(subject, referrer)| layout::referrer_link(name, subject, referrer))
            .collect();
        for removed in self.remove_all(keys).await? {
            match removed {
                true => report.referrer_links_removed += 1,
                false => report.spared += 1,
            }
        }

        // A collected manifest is gone for good; no rollback may name it.
        let keys = scan
            .history
            .iter()
            .filter(|(_, _, digest)| {
                digest
                    .as_ref()
                    .is_some_and(|d| removed_manifests.contains(d))
            })
            .map(|(tag, entry, _)| format!("{}/{entry}", layout::tag_history_dir(name, tag)))
            .collect();
        report.history_entries_removed += self
            .remove_all(keys)
            .await?
            .into_iter()
            .filter(|removed| *removed)
            .count();

        let unlinked: Vec<&Digest> = scan.layers.difference(&kept_blobs).collect();
        let keys = unlinked
            .iter()
            .map(|digest| layout::layer_link(name, digest))
            .collect();
        for (digest, removed) in unlinked.into_iter().zip(self.remove_links(keys).await?) {
            if removed {
                report.layer_links_removed += 1;
            } else {
                report.spared += 1;
                referenced.insert(digest.clone());
            }
        }
        Ok(())
    }

    /// Lists a repository's links and tag histories.
    async fn scan_repository(
        &self,
        name: &RepositoryName,
        keys: Option<Vec<String>>,
        problems: &mut Vec<String>,
    ) -> Result<RepositoryScan> {
        if let Some(keys) = keys {
            return Ok(scan_of_keys(name, keys, problems));
        }
        if let Some(scan) = self.scan_repository_tree(name, problems).await? {
            return Ok(scan);
        }
        let revisions = self
            .list_digests(&layout::revisions_dir(name), problems)
            .await?;
        let layers = self
            .list_digests(&layout::layers_dir(name), problems)
            .await?;
        let mut referrers = Vec::new();
        let dir = layout::referrers_dir(name);
        for subject in self.list_digests(&dir, problems).await? {
            let of_subject = layout::referrers_of(name, &subject);
            for referrer in self.list_digests(&of_subject, problems).await? {
                referrers.push((subject.clone(), referrer));
            }
        }
        let mut history = Vec::new();
        let histories = layout::tag_histories(name);
        let mut tags = Listing::new(self.registry.storage.as_ref(), histories.as_str());
        while let Some(tag) = tags.next().await.map_err(storage_error)? {
            let Some(tag) = Tag::parse(&tag) else {
                problems.push(format!("{histories}/{tag}: not a valid tag, skipped"));
                continue;
            };
            let dir = layout::tag_history_dir(name, &tag);
            let mut entries = Listing::new(self.registry.storage.as_ref(), dir.as_str());
            while let Some(entry) = entries.next().await.map_err(storage_error)? {
                match layout::parse_tag_history_entry(&entry) {
                    Some((_, digest)) => history.push((tag.clone(), entry, digest)),
                    None => problems.push(format!("{dir}/{entry}: not a history entry, skipped")),
                }
            }
        }
        Ok(RepositoryScan {
            revisions,
            layers,
            referrers,
            history,
        })
    }

    /// [`Collection::scan_repository`] from one listing of the repository's
    /// whole tree, where the backend has one ([`Storage::list_tree`]): on an
    /// object store a small repository costs one request instead of one per
    /// directory (eight, and the tags). The repository's own objects are the
    /// names starting with `_`, which sort together: a nested repository's
    /// name starts with a letter or digit, before `^` or after `_`. `None`
    /// from a backend without such a listing.
    async fn scan_repository_tree(
        &self,
        name: &RepositoryName,
        problems: &mut Vec<String>,
    ) -> Result<Option<RepositoryScan>> {
        let repository = layout::repository(name);
        let storage = self.registry.storage.as_ref();
        let Some(mut objects) = TreeListing::start(storage, repository.clone(), Some("^"))
            .await
            .map_err(storage_error)?
        else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        while let Some((key, _)) = objects.next().await.map_err(storage_error)? {
            if !key.starts_with('_') {
                break;
            }
            keys.push(key);
        }
        Ok(Some(scan_of_keys(name, keys, problems)))
    }
}

/// A repository's scan from the names of its own objects (`_layers/…`,
/// `_manifests/…`, below its directory, in key order), reporting what the
/// level-by-level scan reports.
fn scan_of_keys(
    name: &RepositoryName,
    keys: Vec<String>,
    problems: &mut Vec<String>,
) -> RepositoryScan {
    let mut revisions = HashSet::new();
    let mut layers = HashSet::new();
    let mut referrers = BTreeSet::new();
    let mut history = Vec::new();
    // Reported once each, as the level-by-level walk reports them.
    let mut strays = BTreeSet::new();
    let mut bad_tags = BTreeSet::new();
    let mut last_entry: Option<(String, String)> = None;
    for key in &keys {
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            ["_manifests", "revisions", rest @ ..] => {
                let dir = layout::revisions_dir(name);
                if let Some(d) = digest_of(&dir, rest, &mut strays) {
                    revisions.insert(d);
                }
            }
            ["_layers", rest @ ..] => {
                if let Some(d) = digest_of(&layout::layers_dir(name), rest, &mut strays) {
                    layers.insert(d);
                }
            }
            ["_referrers", rest @ ..] => {
                let dir = layout::referrers_dir(name);
                let Some(subject) = digest_of(&dir, rest, &mut strays) else {
                    continue;
                };
                let dir = layout::referrers_of(name, &subject);
                if let Some(referrer) = digest_of(&dir, &rest[2..], &mut strays) {
                    referrers.insert((subject, referrer));
                }
            }
            ["_berth", "history", tag, entry, ..] => {
                let Some(tag) = Tag::parse(tag) else {
                    bad_tags.insert((*tag).to_owned());
                    continue;
                };
                let this = (tag.to_string(), (*entry).to_owned());
                if last_entry.as_ref() == Some(&this) {
                    continue;
                }
                match layout::parse_tag_history_entry(entry) {
                    Some((_, digest)) => history.push((tag.clone(), entry.to_string(), digest)),
                    None => problems.push(format!(
                        "{}/{entry}: not a history entry, skipped",
                        layout::tag_history_dir(name, &tag)
                    )),
                }
                last_entry = Some(this);
            }
            _ => {}
        }
    }
    problems.extend(
        strays
            .into_iter()
            .map(|stray| format!("{stray}: not a digest, skipped")),
    );
    let histories = layout::tag_histories(name);
    problems.extend(
        bad_tags
            .into_iter()
            .map(|tag| format!("{histories}/{tag}: not a valid tag, skipped")),
    );
    RepositoryScan {
        revisions,
        layers,
        referrers: referrers.into_iter().collect(),
        history,
    }
}

impl Collection<'_> {
    /// The manifests kept in their own right: tags, recent history, and
    /// (with `untagged_manifests = "keep"`) every manifest.
    async fn roots(
        &self,
        name: &RepositoryName,
        scan: &RepositoryScan,
        ignored: &HashSet<(RepositoryName, Tag)>,
        report: &mut GcReport,
    ) -> Result<Vec<Digest>> {
        let mut roots = Vec::new();
        let mut tags = self.registry.tags(name);
        while let Some(tag) = super::next_tag(&mut tags, name, &mut report.problems).await? {
            if ignored.contains(&(name.clone(), tag.clone())) {
                continue;
            }
            // Read uncached: the cache may not know of another process's push.
            match self
                .registry
                .read_link_uncached(&layout::tag_current_link(name, &tag))
                .await
            {
                Ok(Some(digest)) => roots.push(digest),
                Ok(None) => {}
                Err(_) => report
                    .problems
                    .push(format!("{name}:{tag}: unreadable tag link")),
            }
        }
        let mut by_tag: HashMap<&Tag, Vec<(&str, &Digest)>> = HashMap::new();
        for (tag, entry, digest) in &scan.history {
            if let Some(digest) = digest {
                if scan.revisions.contains(digest)
                    && !ignored.contains(&(name.clone(), tag.clone()))
                {
                    by_tag.entry(tag).or_default().push((entry, digest));
                }
            }
        }
        for mut entries in by_tag.into_values() {
            // Entry names start with a fixed-width time: newest sorts last.
            entries.sort_unstable_by(|a, b| b.0.cmp(a.0));
            roots.extend(
                entries
                    .into_iter()
                    .take(self.registry.lifecycle.history_keep)
                    .map(|(_, d)| d.clone()),
            );
        }
        if self.registry.lifecycle.untagged_manifests == UntaggedManifests::Keep {
            roots.extend(scan.revisions.iter().cloned());
        }
        Ok(roots)
    }

    /// Follows the roots to everything they keep. Returns the kept manifests,
    /// the kept blobs, and whether every kept manifest could be read (if
    /// not, the repository must not be swept).
    async fn mark(
        &self,
        name: &RepositoryName,
        scan: &RepositoryScan,
        roots: Vec<Digest>,
        report: &mut GcReport,
    ) -> Result<(HashSet<Digest>, HashSet<Digest>, bool)> {
        let mut referrers_of: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for (subject, referrer) in &scan.referrers {
            referrers_of.entry(subject).or_default().push(referrer);
        }
        let mut kept_manifests = HashSet::new();
        let mut kept_blobs = HashSet::new();
        let mut complete = true;
        let mut pending = roots;
        while let Some(digest) = pending.pop() {
            if !kept_manifests.insert(digest.clone()) {
                continue;
            }
            // A referrer link naming no manifest of the repository is an
            // orphan (or a push in progress, whose links are fresh): it keeps
            // nothing.
            if let Some(referrers) = referrers_of.get(&digest) {
                pending.extend(
                    referrers
                        .iter()
                        .filter(|d| scan.revisions.contains(**d))
                        .map(|d| (*d).clone()),
                );
            }
            match self.read_stored_manifest(&digest).await? {
                Ok(manifest) => {
                    kept_blobs.extend(manifest.optional_blobs);
                    for requirement in manifest.requirements {
                        match requirement {
                            crate::oci::Requirement::Blob(d) => {
                                kept_blobs.insert(d);
                            }
                            crate::oci::Requirement::Manifest(d) => pending.push(d),
                        }
                    }
                }
                // A digest the repository does not hold (a tag or index naming
                // a manifest that is not there) keeps nothing else.
                Err(_) if !scan.revisions.contains(&digest) => {}
                Err(why) => {
                    report
                        .problems
                        .push(format!("{name}@{digest}: {why}; repository not swept"));
                    complete = false;
                }
            }
        }
        Ok((kept_manifests, kept_blobs, complete))
    }

    /// A stored manifest, parsed; the inner error says why it cannot be.
    async fn read_stored_manifest(
        &self,
        digest: &Digest,
    ) -> Result<std::result::Result<Manifest, String>> {
        let key = layout::blob_data(digest);
        let max = self.registry.limits.max_manifest_bytes as u64;
        // One request (a GET on an object store, not a HEAD and a GET): the
        // read reports the size before any byte is taken, and a "manifest"
        // larger than any accepted one is dropped unread (bounded memory).
        // A store that checks content as it reads (the S3 blob cache) may
        // find bytes that do not match the digest, when it opens the read or
        // as it streams: a problem of this manifest (its repository is not
        // swept), not of the run.
        let unreadable = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::InvalidData => Ok(Err(format!("unreadable manifest: {e}"))),
            _ => Err(storage_error(e)),
        };
        let read = match self.registry.storage.read(&key, None).await {
            Ok(read) => read,
            Err(e) => return unreadable(e),
        };
        let Some(read) = read else {
            return Ok(Err("manifest content is missing".into()));
        };
        if read.size > max {
            return Ok(Err(format!(
                "{} bytes is too large for a manifest",
                read.size
            )));
        }
        use futures::TryStreamExt;
        let body = read
            .stream
            .try_fold(Vec::new(), |mut body, chunk| async move {
                body.extend_from_slice(&chunk);
                Ok(body)
            })
            .await;
        let body = match body {
            Ok(body) => body,
            Err(e) => return unreadable(e),
        };
        Ok(Manifest::parse(&body, None).map_err(|e| format!("unreadable manifest: {e}")))
    }

    /// Removes content no remaining link or kept manifest names.
    async fn sweep_content(
        &self,
        referenced: &HashSet<Digest>,
        manifests: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let storage = self.registry.storage.as_ref();
        if self
            .sweep_content_tree(referenced, manifests, report)
            .await?
        {
            return Ok(());
        }
        let mut candidates = Vec::new();
        let mut algorithms = Listing::new(storage, layout::BLOBS);
        while let Some(algorithm) = algorithms.next().await.map_err(storage_error)? {
            let Some(algorithm) = Algorithm::parse(&algorithm) else {
                report.problems.push(format!(
                    "{}/{algorithm}: unknown algorithm, skipped",
                    layout::BLOBS
                ));
                continue;
            };
            let dir = layout::blobs_of(algorithm);
            let mut shards = Listing::new(storage, dir);
            while let Some(shard) = shards.next().await.map_err(storage_error)? {
                let shard_dir = layout::blob_shard(algorithm, &shard);
                let mut hexes = Listing::new(storage, shard_dir.as_str());
                while let Some(hex) = hexes.next().await.map_err(storage_error)? {
                    let digest = match layout::parse_blob_dir(algorithm, &shard, &hex) {
                        Some(d) => d,
                        None => {
                            report
                                .problems
                                .push(format!("{shard_dir}/{hex}: not a blob, skipped"));
                            continue;
                        }
                    };
                    if referenced.contains(&digest) {
                        continue;
                    }
                    candidates.push(digest);
                    if candidates.len() == LIST_PAGE {
                        self.remove_content(std::mem::take(&mut candidates), manifests, report)
                            .await?;
                    }
                }
            }
        }
        self.remove_content(candidates, manifests, report).await
    }

    /// [`Collection::sweep_content`] from one listing of the whole `blobs/`
    /// tree, where the backend has one: a request per thousand objects
    /// instead of one per shard directory, and the sizes come with the
    /// names (no request per candidate). False from a backend without it.
    async fn sweep_content_tree(
        &self,
        referenced: &HashSet<Digest>,
        manifests: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<bool> {
        let storage = self.registry.storage.as_ref();
        let Some(mut objects) = TreeListing::start(storage, layout::BLOBS.to_owned(), None)
            .await
            .map_err(storage_error)?
        else {
            return Ok(false);
        };
        let mut candidates = Vec::new();
        // Names sort by directory: a bad one is reported once, as the
        // level-by-level walk does.
        let mut reported = String::new();
        while let Some((name, size)) = objects.next().await.map_err(storage_error)? {
            let parts: Vec<&str> = name.split('/').collect();
            let Some(algorithm) = Algorithm::parse(parts[0]) else {
                let stray = format!("{}/{}", layout::BLOBS, parts[0]);
                if stray != reported {
                    report
                        .problems
                        .push(format!("{stray}: unknown algorithm, skipped"));
                    reported = stray;
                }
                continue;
            };
            let [_, shard, hex, rest @ ..] = parts.as_slice() else {
                continue;
            };
            let Some(digest) = layout::parse_blob_dir(algorithm, shard, hex) else {
                let stray = format!("{}/{hex}", layout::blob_shard(algorithm, shard));
                if stray != reported {
                    report
                        .problems
                        .push(format!("{stray}: not a blob, skipped"));
                    reported = stray;
                }
                continue;
            };
            if rest != ["data"] || referenced.contains(&digest) {
                continue;
            }
            let key = layout::blob_data(&digest);
            candidates.push((digest, key, size));
            if candidates.len() == LIST_PAGE {
                self.remove_sized(std::mem::take(&mut candidates), manifests, report)
                    .await?;
            }
        }
        self.remove_sized(candidates, manifests, report).await?;
        Ok(true)
    }

    /// Removes unreferenced content (a batch of digests), counting what goes.
    async fn remove_content(
        &self,
        digests: Vec<Digest>,
        manifests: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        // Sizes are for the report: read before the content goes, side by
        // side (an object store answers each in a round trip).
        let storage = self.registry.storage.as_ref();
        let sized: Vec<(Digest, String, u64)> = futures::stream::iter(digests)
            .map(|digest| async move {
                let key = layout::blob_data(&digest);
                let info = storage.stat(&key).await?;
                Ok::<_, std::io::Error>(info.map(|info| (digest, key, info.size)))
            })
            .buffered(STATS_IN_FLIGHT)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await
            .map_err(storage_error)?;
        self.remove_sized(sized, manifests, report).await
    }

    /// Removes unreferenced content whose sizes are known (digest, key,
    /// size), counting what goes.
    async fn remove_sized(
        &self,
        sized: Vec<(Digest, String, u64)>,
        manifests: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let keys = sized.iter().map(|(_, key, _)| key.clone()).collect();
        for ((digest, _, size), removed) in sized.iter().zip(self.remove_all(keys).await?) {
            if removed {
                report.blobs_removed += 1;
                report.bytes_removed += size;
                if manifests.contains(digest) {
                    report.manifest_blobs_removed += 1;
                    report.manifest_bytes_removed += size;
                }
                if !self.dry_run {
                    self.registry.caches.removed_content(digest);
                }
            } else {
                report.spared += 1;
            }
        }
        Ok(())
    }

    /// The digests named by a `<alg>/<hex>/` directory tree (links, referrers).
    async fn list_digests(&self, dir: &str, problems: &mut Vec<String>) -> Result<HashSet<Digest>> {
        let found = digests_under(self.registry.storage.as_ref(), dir)
            .await
            .map_err(storage_error)?;
        problems.extend(
            found
                .strays
                .into_iter()
                .map(|stray| format!("{stray}: not a digest, skipped")),
        );
        Ok(found.digests.into_iter().collect())
    }
}

/// One repository as the mark phase found it.
struct RepositoryScan {
    revisions: HashSet<Digest>,
    layers: HashSet<Digest>,
    /// (subject, referrer) for every referrer link.
    referrers: Vec<(Digest, Digest)>,
    /// Every history entry: tag, entry name, the digest it names.
    history: Vec<(Tag, String, Option<Digest>)>,
}

/// The digest an `<alg>/<hex>/…` path below `dir` names, if it is one; a
/// part that is not is recorded as a stray (`dir/alg`, `dir/alg/hex`).
fn digest_of(dir: &str, parts: &[&str], strays: &mut BTreeSet<String>) -> Option<Digest> {
    let (algorithm, hex) = match parts {
        [algorithm, hex, ..] => (*algorithm, *hex),
        [algorithm] => {
            if Algorithm::parse(algorithm).is_none() {
                strays.insert(format!("{dir}/{algorithm}"));
            }
            return None;
        }
        [] => return None,
    };
    let Some(parsed) = Algorithm::parse(algorithm) else {
        strays.insert(format!("{dir}/{algorithm}"));
        return None;
    };
    match Digest::from_parts(parsed, hex) {
        Ok(digest) => Some(digest),
        Err(_) => {
            strays.insert(format!("{dir}/{algorithm}/{hex}"));
            None
        }
    }
}

/// The repositories of a tree listing of `repositories/`, each with the
/// names of its own objects (below its directory). A repository's objects
/// are the keys whose first `_`-prefixed segment follows its name, and they
/// sort together (a nested repository's name starts with a letter or
/// digit, never `_`), so one repository is held at a time.
struct RepositoryKeys<'a> {
    listing: TreeListing<'a>,
    /// The first key of the next repository, read past the previous one.
    carry: Option<String>,
}

impl RepositoryKeys<'_> {
    /// The next repository (as [`super::next_repository`]: valid names
    /// only, others reported) and its objects' names.
    async fn next_repository(
        &mut self,
        problems: &mut Vec<String>,
    ) -> Result<Option<(RepositoryName, Option<Vec<String>>)>> {
        loop {
            let first = match self.carry.take() {
                Some(key) => key,
                None => loop {
                    match self.listing.next().await.map_err(storage_error)? {
                        None => return Ok(None),
                        Some((key, _)) if registry_folder_of(&key).is_some() => break key,
                        Some(_) => {}
                    }
                },
            };
            let dir = registry_folder_of(&first).expect("checked").0.to_owned();
            let mut keys = vec![first[dir.len() + 1..].to_owned()];
            while let Some((key, _)) = self.listing.next().await.map_err(storage_error)? {
                match registry_folder_of(&key) {
                    Some((of, _, _)) if of == dir => keys.push(key[dir.len() + 1..].to_owned()),
                    Some(_) => {
                        self.carry = Some(key);
                        break;
                    }
                    None => {}
                }
            }
            let is_repository = keys.iter().any(|key| {
                let folder = key.split('/').next().unwrap_or_default();
                layout::REPOSITORY_DIRS.contains(&folder)
            });
            if !is_repository {
                continue;
            }
            match RepositoryName::parse(&dir) {
                Some(name) => return Ok(Some((name, Some(keys)))),
                None => problems.push(format!(
                    "{}/{dir}: not a valid repository name, skipped",
                    layout::REPOSITORIES
                )),
            }
        }
    }
}

impl Registry {
    /// Collects unreferenced manifests, links and content (see the module
    /// documentation).
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        self.collect_garbage_ignoring(options, &HashSet::new())
            .await
    }

    /// [`Registry::collect_garbage`] as if the `ignored` tags and their
    /// histories were gone: a dry run's view of what retention would remove.
    pub(super) async fn collect_garbage_ignoring(
        &self,
        options: &GcOptions,
        ignored: &HashSet<(RepositoryName, Tag)>,
    ) -> Result<GcReport> {
        let grace = options
            .grace_period
            .unwrap_or(self.lifecycle.gc_grace_period);
        let collection = Collection {
            registry: self,
            cutoff: SystemTime::now()
                .checked_sub(grace)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            dry_run: options.dry_run,
        };
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        // Content some remaining link or kept manifest names, over all
        // repositories; and every digest that was a manifest somewhere (to
        // tell manifest documents from layers in the report).
        // Repositories are independent until the content sweep, which needs
        // them all: up to REPOSITORIES_IN_FLIGHT are collected at once.
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut referenced = HashSet::new();
        let mut manifests = HashSet::new();
        let started = std::time::Instant::now();
        let mut walk = RepositoryWalk::new(self.storage.as_ref());
        // Where the backend lists a whole tree, one listing of
        // `repositories/` names the repositories and their objects: no
        // request per repository to find it or to scan it.
        let mut tree = TreeListing::start(self.storage.as_ref(), layout::REPOSITORIES.into(), None)
            .await
            .map_err(storage_error)?
            .map(|listing| RepositoryKeys {
                listing,
                carry: None,
            });
        let mut walked = false;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while !walked && in_flight.len() < REPOSITORIES_IN_FLIGHT {
                let next = match tree.as_mut() {
                    Some(tree) => tree.next_repository(&mut report.problems).await?,
                    None => super::next_repository(&mut walk, &mut report.problems)
                        .await?
                        .map(|name| (name, None)),
                };
                match next {
                    Some((name, keys)) => {
                        report.repositories += 1;
                        in_flight.push(collection.repository(name, keys, ignored));
                    }
                    None => walked = true,
                }
            }
            let Some(outcome) = in_flight.next().await else {
                break;
            };
            let outcome = outcome?;
            report.absorb(outcome.report);
            referenced.extend(outcome.referenced);
            manifests.extend(outcome.manifests);
        }
        let marked = started.elapsed();
        collection
            .sweep_content(&referenced, &manifests, &mut report)
            .await?;
        // For operators: where a run's time went (on an object store, the
        // requests of each phase).
        tracing::info!(
            repositories = report.repositories,
            mark_and_links = ?marked,
            content_sweep = ?started.elapsed() - marked,
            blobs_removed = report.blobs_removed,
            "garbage collection finished"
        );
        // Repositories finish in any order: the report's problems are
        // sorted, so that two runs over one store say the same.
        report.problems.sort();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::oci::{ErrorCode, Reference};
    use crate::registry::cache::CacheConfig;
    use crate::registry::{LifecycleConfig, Limits};
    use crate::storage::fs::FsStorage;

    fn registry(root: &std::path::Path) -> Registry {
        let lifecycle = LifecycleConfig {
            untagged_manifests: UntaggedManifests::Delete,
            history_keep: 0,
            ..LifecycleConfig::default()
        };
        let cache = CacheConfig {
            // Long enough that only an explicit drop can make an entry go.
            ttl: Duration::from_secs(3600),
            ..CacheConfig::default()
        };
        Registry::new(
            Arc::new(FsStorage::open(root).unwrap()),
            Limits::default(),
            &cache,
            lifecycle,
        )
    }

    /// Every stored file is made `by` older, as if that time had passed.
    fn age(root: &std::path::Path, by: Duration) {
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    let then = filetime::FileTime::from_system_time(meta.modified().unwrap() - by);
                    filetime::set_file_mtime(entry.path(), then).unwrap();
                }
            }
        }
    }

    fn stream(content: &'static [u8]) -> crate::storage::RequestBody {
        crate::storage::RequestBody {
            length: Some(content.len() as u64),
            stream: Box::pin(futures::stream::once(async move {
                Ok(Bytes::from_static(content))
            })),
        }
    }

    #[tokio::test]
    async fn what_a_collection_removes_is_no_longer_served_from_the_caches() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let name = RepositoryName::parse("cached/app").unwrap();
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = Digest::of(Algorithm::Sha256, config);
        registry
            .upload_whole(&name, &config_digest, stream(config))
            .await
            .unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
            config.len()
        );
        let digest = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        let reference = Reference::Digest(digest.clone());
        registry
            .put_manifest(&name, &reference, None, Bytes::from(manifest), &[])
            .await
            .unwrap();
        // Fill every cache: links, sizes, manifest bytes, small blob bytes.
        registry.get_manifest(&name, &reference).await.unwrap();
        let blob = registry.open_blob(&name, &config_digest).await.unwrap();
        drop(registry.read_blob(&blob, None).await.unwrap());

        age(dir.path(), Duration::from_secs(7200));
        let report = registry
            .collect_garbage(&GcOptions::default())
            .await
            .unwrap();
        assert_eq!(report.manifests_removed, 1);
        assert_eq!(report.blobs_removed, 2);
        assert_eq!(report.manifest_blobs_removed, 1);

        let gone = registry
            .get_manifest(&name, &reference)
            .await
            .err()
            .unwrap();
        assert_eq!(gone.code, ErrorCode::ManifestUnknown);
        let gone = registry
            .open_blob(&name, &config_digest)
            .await
            .err()
            .unwrap();
        assert_eq!(gone.code, ErrorCode::BlobUnknown);
        assert_eq!(registry.content_size(&digest).await.unwrap(), None);
    }

    #[tokio::test]
    async fn invalid_names_in_the_store_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let odd = dir.path().join("repositories/Upper/_layers/sha256/xyz");
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join("link"), "junk").unwrap();
        let stray = dir.path().join("blobs/sha256/zz/not-hex");
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::write(stray.join("data"), "junk").unwrap();
        age(dir.path(), Duration::from_secs(7200));
        let report = registry
            .collect_garbage(&GcOptions::default())
            .await
            .unwrap();
        assert_eq!(report.repositories, 0);
        assert_eq!(report.blobs_removed, 0);
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(odd.join("link").exists() && stray.join("data").exists());
    }
}
