//! The catalog (`GET /v2/_catalog`): every repository name, lexically sorted
//! and paginated like tags, served from an in-memory repository index so
//! that a page costs what it returns, not a walk of the whole tree.
//!
//! A repository is a directory under `repositories/` that has a
//! `_manifests` child, as in Distribution (see [`repository_tree`]). The
//! store itself stays the truth; the index is a sorted set of names built
//! from it by a walk and kept current by this process's own writes:
//! - a manifest push adds its repository ([`RepositoryIndex::added`]) once
//!   the revision link is written, so this process's pushes are listed at
//!   once;
//! - a manifest delete by digest re-checks its repository
//!   ([`Registry::recheck_repository`]): the filesystem prunes an emptied
//!   `_manifests`, and the repository then leaves the catalog, as it does in
//!   Distribution;
//! - what other processes do (another replica's pushes, `berth gc`, a data
//!   directory filled offline, a `registry:2` data directory that never had
//!   an index) is seen through the walk. The server walks once when it
//!   starts; after that a page is always served from the index, and a page
//!   that finds the last walk older than [`RepositoryIndex::max_age`]
//!   (`max(cache_ttl_ms, 10 × the last walk's duration)`) starts the next walk
//!   in the background. So no page waits for a walk (only a page asked for
//!   before the first walk ended), and another process's change is listed
//!   once a walk that started after it has ended: at most the bound plus one
//!   walk after the change, for a catalog in use.
//!
//! Why in memory and not a stored index: a stored index must be written by
//! every process that creates a repository, and on an object store without
//! conditional writes (Garage ignores `If-None-Match`) one shared document
//! cannot be updated safely by several replicas; one marker object per
//! repository can, but then its keys must sort like the names (`/` sorts
//! between `.` and `0`, which no file name can keep) and writers that are not
//! Berth (`registry:2`, an offline copy) still bypass it, so a walk with a
//! staleness bound is needed either way. The bound also makes other
//! replicas' pushes visible, as `cache_ttl_ms` does for links. What an S3
//! backend will add is a cheaper refresh than the tree walk (see
//! docs/design/catalog.md), not a different contract.

use std::collections::BTreeSet;
use std::io;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{repository_tree, storage_error, Page, Registry};
use crate::oci::{RepositoryName, Result};
use crate::storage::{layout, Storage};

/// A walk may take at most about 1/`WALK_SHARE` of the time while the
/// catalog is in use: the staleness bound grows with the walk's duration.
const WALK_SHARE: u32 = 10;

/// The sorted names of every repository, as of the last walk plus this
/// process's own changes since.
pub(crate) struct RepositoryIndex {
    state: Mutex<IndexState>,
    /// One walk at a time: a request that finds the index too old waits for
    /// the walk in flight rather than starting another.
    walking: tokio::sync::Mutex<()>,
    /// The shortest staleness bound (the caches' `ttl`).
    min_age: Duration,
}

#[derive(Default)]
struct IndexState {
    names: BTreeSet<String>,
    /// When the last walk started (what it found was on storage by then)
    /// and how long it took; `None` before the first walk or once invalidated.
    walked: Option<Walked>,
    /// This process's changes while a walk is in flight, applied to what the
    /// walk finds (it may have passed their place before they happened).
    during_walk: Option<Vec<Change>>,
}

#[derive(Clone, Copy)]
struct Walked {
    started: Instant,
    took: Duration,
}

enum Change {
    Added(String),
    Removed(String),
}

/// What a page request must do before reading the index.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    /// Young enough to serve as it is.
    Fresh,
    /// Older than the bound: serve it, and refresh it in the background for
    /// the requests that follow.
    Stale,
    /// Never built: walk first (or wait for the walk in flight).
    Missing,
}

impl RepositoryIndex {
    pub fn new(min_age: Duration) -> RepositoryIndex {
        RepositoryIndex {
            state: Mutex::new(IndexState::default()),
            walking: tokio::sync::Mutex::new(()),
            min_age,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.state.lock().expect("repository index lock poisoned")
    }

    /// How old a walk may be for a page to be served from it.
    fn max_age(&self, walked: &Walked) -> Duration {
        self.min_age.max(walked.took * WALK_SHARE)
    }

    fn freshness(&self, now: Instant) -> Freshness {
        let state = self.state();
        let Some(walked) = state.walked else {
            return Freshness::Missing;
        };
        if now.saturating_duration_since(walked.started) >= self.max_age(&walked) {
            Freshness::Stale
        } else {
            Freshness::Fresh
        }
    }

    /// `name` now has a `_manifests` directory (this process wrote a
    /// revision link in it).
    pub fn added(&self, name: &RepositoryName) {
        let mut state = self.state();
        if let Some(changes) = &mut state.during_walk {
            changes.push(Change::Added(name.to_string()));
        }
        if state.walked.is_some() && !state.names.contains(name.as_str()) {
            state.names.insert(name.to_string());
        }
    }

    fn removed(&self, name: &RepositoryName) {
        let mut state = self.state();
        if let Some(changes) = &mut state.during_walk {
            changes.push(Change::Removed(name.to_string()));
        }
        state.names.remove(name.as_str());
    }

    /// Walks the store and replaces the index with what it found, unless a
    /// walk that started after `requested` (with `None`: any walk) finished
    /// while this one waited for its turn.
    async fn walk(&self, storage: &dyn Storage, requested: Option<Instant>) -> io::Result<()> {
        let _one_walk = self.walking.lock().await;
        if self
            .state()
            .walked
            .is_some_and(|walked| requested.is_none_or(|at| walked.started >= at))
        {
            return Ok(());
        }
        let started = Instant::now();
        self.state().during_walk = Some(Vec::new());
        match repository_tree(storage).await {
            Ok(tree) => {
                let names = tree
                    .into_iter()
                    .filter(|dir| dir.children.iter().any(|c| c == layout::MANIFESTS_DIR))
                    .map(|dir| dir.path)
                    .collect();
                self.finish_walk(names, started);
                Ok(())
            }
            Err(e) => {
                self.state().during_walk = None;
                Err(e)
            }
        }
    }

    /// Replaces the index with what a walk that began at `started` found,
    /// plus the changes this process made meanwhile, in order.
    fn finish_walk(&self, mut names: BTreeSet<String>, started: Instant) {
        let mut state = self.state();
        for change in state.during_walk.take().unwrap_or_default() {
            match change {
                Change::Added(name) => names.insert(name),
                Change::Removed(name) => names.remove(&name),
            };
        }
        state.names = names;
        state.walked = Some(Walked {
            started,
            took: started.elapsed(),
        });
    }

    /// The names after `last` that `shows` accepts, at most `n` of them, and
    /// whether another accepted name follows. Costs the names it skips and
    /// returns, not the whole index.
    fn page(&self, n: Option<usize>, last: Option<&str>, shows: impl Fn(&str) -> bool) -> Page {
        let state = self.state();
        let after = last.map_or(Bound::Unbounded, Bound::Excluded);
        let mut visible = state
            .names
            .range::<str, _>((after, Bound::Unbounded))
            .filter(|name| shows(name));
        let entries: Vec<String> = match n {
            Some(n) => visible.by_ref().take(n).cloned().collect(),
            None => visible.by_ref().cloned().collect(),
        };
        Page {
            entries,
            more: visible.next().is_some(),
        }
    }
}

impl Registry {
    /// One page of the catalog: repository names after `last`, at most `n`.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        self.catalog_visible(n, last, |_| true).await
    }

    /// One page of the repositories `shows` accepts (access control filters
    /// before it paginates, so `n`, `last` and `more` are about what the
    /// caller may see).
    pub async fn catalog_visible(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        shows: impl Fn(&RepositoryName) -> bool,
    ) -> Result<Page> {
        let now = Instant::now();
        match self.repository_index.freshness(now) {
            Freshness::Fresh => {}
            Freshness::Stale => {
                let (index, storage) = (self.repository_index.clone(), self.storage.clone());
                tokio::spawn(async move {
                    // One walk is enough: skip when one is running.
                    if index.walking.try_lock().is_err() {
                        return;
                    }
                    if let Err(e) = index.walk(storage.as_ref(), Some(now)).await {
                        tracing::warn!(error = %e, "refreshing the repository index failed");
                    }
                });
            }
            Freshness::Missing => self
                .repository_index
                .walk(self.storage.as_ref(), None)
                .await
                .map_err(storage_error)?,
        }
        Ok(self.repository_index.page(n, last, |name| {
            RepositoryName::parse(name).is_some_and(|name| shows(&name))
        }))
    }

    /// One page of every repository `shows` accepts, as people browse them:
    /// the catalog's (those with manifests) and those that exist only by
    /// their settings (created before their first push), merged in name
    /// order; each with whether it has manifests.
    pub async fn browse(
        &self,
        n: usize,
        last: Option<&str>,
        shows: impl Fn(&RepositoryName) -> bool,
    ) -> Result<BrowsePage> {
        let listed = self.catalog_visible(Some(n), last, &shows).await?;
        let settings = self.fresh_settings().await;
        let after = last.map_or(Bound::Unbounded, Bound::Excluded);
        let mut configured = settings
            .repositories
            .range::<str, _>((after, Bound::Unbounded))
            .map(|(name, _)| name)
            .filter(|name| RepositoryName::parse(name).is_some_and(|name| shows(&name)));
        let extra: Vec<&String> = configured.by_ref().take(n).collect();
        let more_configured = configured.next().is_some();
        let mut merged: Vec<(String, bool)> = listed
            .entries
            .iter()
            .map(|name| (name.clone(), true))
            .collect();
        for name in extra {
            if !listed.entries.contains(name) {
                merged.push((name.clone(), false));
            }
        }
        merged.sort_unstable();
        let more = listed.more || more_configured || merged.len() > n;
        merged.truncate(n);
        Ok(BrowsePage {
            entries: merged,
            more,
        })
    }

    /// Rebuilds the repository index from a walk of the store now. For
    /// whoever changed many repositories at once (garbage collection, fsck's
    /// repairs) and wants the catalog to show it before the staleness bound.
    pub async fn rebuild_repository_index(&self) -> Result<()> {
        self.repository_index
            .walk(self.storage.as_ref(), Some(Instant::now()))
            .await
            .map_err(storage_error)
    }

    /// After this process removed a revision link of `name`: the repository
    /// leaves the catalog if that emptied its `_manifests` (the store prunes
    /// empty directories). A push racing this re-check is listed again by
    /// the next walk, within the staleness bound.
    pub(super) async fn recheck_repository(&self, name: &RepositoryName) -> Result<()> {
        let manifests = format!("{}/{}", layout::repository(name), layout::MANIFESTS_DIR);
        let first = self
            .storage
            .list(&manifests, None, 1)
            .await
            .map_err(storage_error)?;
        if first.names.is_empty() {
            self.repository_index.removed(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn walked(index: &RepositoryIndex, names: &[&str], started: Instant, took: Duration) {
        let mut state = index.state();
        state.names = names.iter().map(|s| s.to_string()).collect();
        state.walked = Some(Walked { started, took });
    }

    #[test]
    fn a_page_starts_after_last_and_says_whether_more_follow() {
        let index = RepositoryIndex::new(Duration::from_secs(1));
        walked(
            &index,
            &["a", "a-b", "a/b", "b"],
            Instant::now(),
            Duration::ZERO,
        );
        let page = index.page(Some(2), None, |_| true);
        assert_eq!(page.entries, ["a", "a-b"]);
        assert!(page.more);
        let page = index.page(Some(2), Some("a-b"), |_| true);
        assert_eq!(page.entries, ["a/b", "b"]);
        assert!(!page.more);
        let page = index.page(Some(5), Some("a/a"), |n| n != "b");
        assert_eq!(page.entries, ["a/b"]);
        assert!(
            !page.more,
            "the hidden name after it does not count as more"
        );
    }

    #[test]
    fn the_staleness_bound_grows_with_the_walk() {
        let index = RepositoryIndex::new(Duration::from_secs(2));
        let now = Instant::now();
        assert_eq!(index.freshness(now), Freshness::Missing, "never walked");
        walked(&index, &[], now, Duration::from_millis(10));
        assert_eq!(index.freshness(now), Freshness::Fresh);
        assert_eq!(
            index.freshness(now + Duration::from_millis(1999)),
            Freshness::Fresh
        );
        assert_eq!(
            index.freshness(now + Duration::from_secs(2)),
            Freshness::Stale
        );
        walked(&index, &[], now, Duration::from_secs(1));
        assert_eq!(
            index.freshness(now + Duration::from_secs(4)),
            Freshness::Fresh
        );
        assert_eq!(
            index.freshness(now + Duration::from_secs(10)),
            Freshness::Stale
        );
    }

    #[test]
    fn changes_made_during_a_walk_are_applied_to_what_it_found() {
        let index = RepositoryIndex::new(Duration::from_secs(1));
        walked(&index, &["gone"], Instant::now(), Duration::ZERO);
        let started = Instant::now();
        index.state().during_walk = Some(Vec::new());
        // The walk passed "new"'s place before it was pushed, and listed
        // "gone" before its last manifest was deleted.
        index.added(&name("new"));
        index.removed(&name("gone"));
        let found: BTreeSet<String> = ["gone", "old"].iter().map(|s| s.to_string()).collect();
        index.finish_walk(found, started);
        let page = index.page(None, None, |_| true);
        assert_eq!(page.entries, ["new", "old"]);
        assert!(index.state().during_walk.is_none());
        assert_eq!(index.freshness(Instant::now()), Freshness::Fresh);
    }

    #[test]
    fn a_push_before_the_first_walk_is_left_to_the_walk() {
        let index = RepositoryIndex::new(Duration::from_secs(1));
        index.added(&name("early"));
        assert!(
            index.state().names.is_empty(),
            "an unwalked index lists nothing by itself"
        );
        assert_eq!(index.freshness(Instant::now()), Freshness::Missing);
    }
}

/// A page of [`Registry::browse`]: names, each with whether it has
/// manifests, and whether more follow.
#[derive(Debug)]
pub struct BrowsePage {
    pub entries: Vec<(String, bool)>,
    pub more: bool,
}
