//! The touch-before-use protocol (`docs/design/gc.md`) on an object store,
//! which has no atomic "delete unless touched" and no cheap touch: touch
//! markers and collector intents, a Dekker-style handshake over S3's
//! read-after-write consistent PUT and LIST (AWS, and Garage in its default
//! `consistent` mode). `docs/design/s3.md` §5 has the argument; in short:
//!
//! - A **toucher** (a manifest push touching its blobs, a mount, a write
//!   finding its document in place) first PUTs a marker naming the keys it
//!   uses, then LISTs the intents. A write of a collectable key needs no
//!   marker (the object's own new time is one): it LISTs after its PUT.
//! - A **collector** first PUTs an intent naming the keys it is about to
//!   remove, then LISTs the markers since its cutoff and HEADs the keys, and
//!   removes those untouched, then deletes the intent.
//!
//! Whichever of the two wrote first is seen by the other's LIST: a toucher
//! that missed the intent wrote its marker before the collector listed the
//! markers, so the collector spares the key; a toucher that sees an intent
//! naming its key waits for the intent to go, then HEADs the key (or writes
//! it again), so it never relies on a removed object. An intent is a lease:
//! a collector that took longer than [`DECIDE_WITHIN`] to decide removes
//! nothing, and a toucher stops waiting for an intent older than [`LEASE`]
//! (a collector that died). Times compare across replicas, so their clocks
//! must agree to well within those bounds and the grace period (NTP).
//!
//! Two savings keep the common path, where no collection runs, cheap:
//!
//! - **The active flag.** A collector PUTs [`GC_ACTIVE`] (the time it is
//!   about to write an intent) before each intent. A toucher reads that one
//!   small object instead of listing the intents, and lists them only while
//!   the flag is younger than [`ACTIVE_FOR`]. The handshake is the same: a
//!   toucher that read an old flag read it before the collector's flag PUT,
//!   so after its own marker (or write), and the collector's marker listing
//!   (or HEAD) comes later still and sees it. Every replica over a bucket
//!   must write the flag, so they run one version of this protocol.
//!   A touch's HEADs go beside its flag GET (both after its marker): with
//!   an old flag, no removal can be under way (a collector removes within
//!   [`DECIDE_WITHIN`] and one request's time of its flag, far less than
//!   [`ACTIVE_FOR`]), and one that starts later lists the marker; with a
//!   fresh flag the intents are listed, waited for, and the keys HEADed again.
//! - **A touch covers the operation's writes.** After a marker and a clean
//!   look at the intents, a collector that has not written its intent yet
//!   spares the marked keys (it lists the marker), and none that had is still
//!   at work on them; so writing one of those keys soon after needs no look
//!   at the intents of its own (a manifest push touches its content,
//!   revision link and history entries with its requirements, then writes
//!   them). "Soon" is [`MARKED_FOR`]: a collection whose cutoff is past the
//!   marker's time does not read it, and that takes a grace period, which
//!   must be longer (gc.md already asks that an operation finish within it).
//! - **A recent touch answers the next.** Keys all marked less than half of
//!   [`MARKED_FOR`] ago and found there (their sizes remembered) need no new
//!   marker, flag or HEAD for an operation that relies on them again (a CI
//!   job's second tag of an image): a collection that missed that marker's
//!   keys has a cutoff more than [`MARKED_FOR`] past it, so it started a
//!   grace period later still and finds the operation's own writes, which
//!   land within it (s3.md §5 states the condition).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::list::PaginatedListOptions;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{io_error, S3Storage, CONCURRENT_REQUESTS};
use crate::storage::layout::{self, GC_ACTIVE, GC_INTENTS, GC_TOUCHES};

/// Touch markers are grouped in folders of this many seconds, so a
/// collector lists only the folders since its cutoff and old folders go
/// whole.
const WINDOW_SECS: u64 = 600;

/// A collector decides within this after writing its intent, or removes
/// nothing.
pub(super) const DECIDE_WITHIN: Duration = Duration::from_secs(30);

/// A toucher waits for an intent at most this long after it was written:
/// older, its collector gave up (or died) before removing anything.
pub(super) const LEASE: Duration = Duration::from_secs(60);

/// A decision lists the range of its keys (one page) rather than HEAD
/// them when it has at least this many keys per page it may list.
const LIST_PAGES_PER: usize = 100;

/// What a listing after an intent found of its keys: the time of each that
/// was there, up to the last key it covered.
#[derive(Default)]
struct ListedTimes {
    times: HashMap<String, SystemTime>,
    /// Keys up to this one were all listed: one missing from `times` is gone.
    covered: Option<String>,
}

impl ListedTimes {
    /// `Some(time)` for a key the listing found, `Some(None)` for one it
    /// would have found and did not (gone), `None` when it did not get that
    /// far (the key needs a HEAD).
    fn time_of(&self, key: &str) -> Option<Option<SystemTime>> {
        if let Some(time) = self.times.get(key) {
            return Some(Some(*time));
        }
        match &self.covered {
            Some(covered) if key <= covered.as_str() => Some(None),
            _ => None,
        }
    }
}

/// How often a toucher looks again whether an intent naming its key is gone.
const POLL: Duration = Duration::from_millis(50);

/// How long after a collector's flag a toucher still lists the intents: a
/// lease for an intent written at the flag's time, and another for one
/// whose flag a slower collector overwrote with an older time.
const ACTIVE_FOR: Duration = Duration::from_secs(2 * LEASE.as_secs());

/// How long a key this process marked (and found no collection at work on)
/// counts as marked for its writes: well under any grace period in use.
pub(super) const MARKED_FOR: Duration = Duration::from_secs(1);

/// Marked keys remembered at most (a bound on memory, not on correctness:
/// a key forgotten is written with its own look at the intents).
const MARKED_KEYS: usize = 4096;

/// What a process remembers of the protocol's objects, which are immutable
/// once written: it reads each once.
#[derive(Default)]
pub(super) struct CollectionCache {
    /// Touch markers' keys, by marker name.
    markers: Mutex<HashMap<String, Arc<[String]>>>,
    /// Intents' keys, by intent name.
    intents: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// When this process last removed old markers and dead intents.
    last_cleanup: Mutex<Option<Instant>>,
    /// Keys this process marked in use and found no collection at work on:
    /// when the marker was written, and the key's size then (`None`: it was
    /// absent), or the size this process wrote since.
    marked: Mutex<HashMap<String, (Instant, Option<u64>)>>,
}

impl CollectionCache {
    /// Remembers `keys` as marked at `at`, with the size of each found.
    pub(super) fn marked(&self, at: Instant, keys: &[&str], found: &[Option<u64>]) {
        let mut marked = self.marked.lock().expect("lock");
        if marked.len() + keys.len() > MARKED_KEYS {
            marked.retain(|_, (when, _)| when.elapsed() < MARKED_FOR);
            if marked.len() + keys.len() > MARKED_KEYS {
                marked.clear();
            }
        }
        for (key, found) in keys.iter().zip(found) {
            if is_protected(key) {
                marked.insert((*key).to_owned(), (at, *found));
            }
        }
    }

    /// Whether `key` was marked by this process within [`MARKED_FOR`], and
    /// if so whether it existed.
    pub(super) fn marked_recently(&self, key: &str) -> Option<bool> {
        let marked = self.marked.lock().expect("lock");
        let (when, found) = marked.get(key)?;
        (when.elapsed() < MARKED_FOR).then_some(found.is_some())
    }

    /// The size of each of `keys` when this process marked every one of them
    /// less than `within` ago and found each there (or wrote it since):
    /// what a touch of them now would answer, and that earlier marker still
    /// covers relying on them (§5 of docs/design/s3.md). `None` when any is
    /// unknown, absent, or marked longer ago.
    pub(super) fn present_within(&self, keys: &[&str], within: Duration) -> Option<Vec<u64>> {
        let within = within.min(MARKED_FOR);
        let marked = self.marked.lock().expect("lock");
        keys.iter()
            .map(|key| match marked.get(*key) {
                Some((when, Some(size))) if when.elapsed() < within => Some(*size),
                _ => None,
            })
            .collect()
    }

    /// This process wrote `size` bytes at `key`: a later create-if-absent
    /// (or a touch answered from memory) finds it.
    pub(super) fn written(&self, key: &str, size: u64) {
        if let Some(entry) = self.marked.lock().expect("lock").get_mut(key) {
            entry.1 = Some(size);
        }
    }

    /// This process removed `key`: its marker no longer says anything of it.
    pub(super) fn removed(&self, key: &str) {
        self.marked.lock().expect("lock").remove(key);
    }

    /// This process removed everything under `prefix`.
    pub(super) fn removed_under(&self, prefix: &str) {
        self.marked
            .lock()
            .expect("lock")
            .retain(|key, _| !key.starts_with(prefix));
    }
}

/// Whether the protocol guards `key`: what a collection may remove
/// ([`layout::is_collectable`]) but a tag's current link, which no
/// collection removes (tags are its roots) and which no push touches.
pub(super) fn is_protected(key: &str) -> bool {
    layout::is_collectable(key) && !key.contains("/_manifests/tags/")
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn window_of(time: Duration) -> u64 {
    time.as_secs() / WINDOW_SECS
}

fn window_name(window: u64) -> String {
    format!("{window:012}")
}

/// An intent's name: when it was written (ms since the epoch) first, so a
/// toucher can tell a dead one from its name alone.
fn intent_name(now: Duration) -> String {
    format!("{:015}-{}", now.as_millis(), uuid::Uuid::new_v4())
}

fn intent_written(name: &str) -> Option<Duration> {
    let millis = name.split('-').next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(millis))
}

/// A marker's name: its time (ns since the epoch), so a collector reads only
/// the markers since its cutoff.
fn marker_name(now: Duration) -> String {
    format!("{:020}-{}", now.as_nanos(), uuid::Uuid::new_v4())
}

fn body_of(keys: &[&str]) -> Bytes {
    Bytes::from(keys.join("\n"))
}

fn keys_of(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether an object last modified at `modified` (as S3 reports it: HEAD
/// has whole seconds, so the true time may be up to a second later) is
/// certainly older than `cutoff`.
pub(super) fn older_than(modified: SystemTime, cutoff: SystemTime) -> bool {
    modified + Duration::from_secs(1) <= cutoff
}

impl S3Storage {
    /// Every object name under `dir` (a key prefix without its trailing
    /// `/`) after `start_after`, page by page: for the protocol's own
    /// folders, whose names need no byte-order repair.
    async fn names_under(&self, dir: &str, start_after: Option<String>) -> io::Result<Vec<String>> {
        let prefix = format!("{}/{dir}/", self.root);
        let mut names = Vec::new();
        let mut token = None;
        let mut offset = start_after.map(|after| format!("{prefix}{after}"));
        loop {
            let page = self
                .meta
                .list_paginated(
                    Some(&prefix),
                    PaginatedListOptions {
                        offset: offset.take(),
                        delimiter: Some("/".into()),
                        page_token: token.take(),
                        ..PaginatedListOptions::default()
                    },
                )
                .await
                .map_err(io_error)?;
            let names_of = |path: &object_store::path::Path| {
                path.as_ref().strip_prefix(&prefix).map(str::to_owned)
            };
            names.extend(page.result.common_prefixes.iter().filter_map(names_of));
            names.extend(
                page.result
                    .objects
                    .iter()
                    .filter_map(|o| names_of(&o.location)),
            );
            match page.page_token {
                Some(next) => token = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// The toucher's first step: a marker naming the collectable `keys`,
    /// written before their existence is checked.
    pub(super) async fn mark_used(&self, keys: &[&str]) -> io::Result<()> {
        let collectable: Vec<&str> = keys.iter().copied().filter(|k| is_protected(k)).collect();
        if collectable.is_empty() {
            return Ok(());
        }
        let now = since_epoch(SystemTime::now());
        let key = format!(
            "{GC_TOUCHES}/{}/{}",
            window_name(window_of(now)),
            marker_name(now)
        );
        self.meta
            .put(&self.path(&key), body_of(&collectable).into())
            .await
            .map(drop)
            .map_err(io_error)
    }

    /// The toucher's second step, after its marker or its write: waits until
    /// no live intent names any of `keys`, and returns those an intent named
    /// (they may be gone now: the caller checks them again).
    pub(super) async fn await_collections(&self, keys: &[&str]) -> io::Result<HashSet<String>> {
        if !keys.iter().any(|k| is_protected(k)) || !self.collection_may_run().await? {
            return Ok(HashSet::new());
        }
        self.await_intents(keys).await
    }

    /// [`S3Storage::await_collections`] past the flag: lists the intents and
    /// waits for those naming any of `keys`, which it returns.
    pub(super) async fn await_intents(&self, keys: &[&str]) -> io::Result<HashSet<String>> {
        let wanted: HashSet<&str> = keys.iter().copied().filter(|k| is_protected(k)).collect();
        let mut named = HashSet::new();
        if wanted.is_empty() {
            return Ok(named);
        }
        let names = self.names_under(GC_INTENTS, None).await?;
        let mut waiting = Vec::new();
        for name in names {
            let Some(written) = intent_written(&name) else {
                continue;
            };
            if since_epoch(SystemTime::now()) > written + LEASE {
                continue;
            }
            let Some(intent) = self.intent(&name).await? else {
                continue;
            };
            let hits: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|k| intent.contains(*k))
                .collect();
            if !hits.is_empty() {
                named.extend(hits.into_iter().map(str::to_owned));
                waiting.push((name, written));
            }
        }
        for (name, written) in waiting {
            let path = self.path(&format!("{GC_INTENTS}/{name}"));
            while since_epoch(SystemTime::now()) <= written + LEASE {
                match self.meta.head(&path).await {
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(e) => return Err(io_error(e)),
                    Ok(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        Ok(named)
    }

    /// Whether a collector wrote an intent recently enough that one may be
    /// at work: the flag is younger than [`ACTIVE_FOR`] (or unreadable).
    pub(super) async fn collection_may_run(&self) -> io::Result<bool> {
        let Some(body) = super::Storage::get(self, GC_ACTIVE).await? else {
            return Ok(false);
        };
        let Some(written) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        else {
            return Ok(true);
        };
        Ok(since_epoch(SystemTime::now()) <= Duration::from_millis(written) + ACTIVE_FOR)
    }

    /// An intent's keys (read once per process), or `None` when it is gone.
    async fn intent(&self, name: &str) -> io::Result<Option<Arc<HashSet<String>>>> {
        if let Some(keys) = self.collection.intents.lock().expect("lock").get(name) {
            return Ok(Some(keys.clone()));
        }
        let Some(body) = super::Storage::get(self, &format!("{GC_INTENTS}/{name}")).await? else {
            return Ok(None);
        };
        let keys: Arc<HashSet<String>> = Arc::new(keys_of(&body).into_iter().collect());
        self.collection
            .intents
            .lock()
            .expect("lock")
            .insert(name.to_owned(), keys.clone());
        Ok(Some(keys))
    }

    /// Every key a marker written at or after `cutoff` names.
    async fn touched_since(&self, cutoff: SystemTime) -> io::Result<HashSet<String>> {
        let cutoff = since_epoch(cutoff);
        let first = window_of(cutoff);
        let windows = self
            .names_under(GC_TOUCHES, first.checked_sub(1).map(window_name))
            .await?;
        let mut markers = Vec::new();
        for window in windows {
            let after = format!("{:020}", cutoff.as_nanos().saturating_sub(1));
            let dir = format!("{GC_TOUCHES}/{window}");
            for name in self.names_under(&dir, Some(after)).await? {
                markers.push(format!("{dir}/{name}"));
            }
        }
        let unread: Vec<String> = {
            let cache = self.collection.markers.lock().expect("lock");
            markers
                .iter()
                .filter(|m| !cache.contains_key(*m))
                .cloned()
                .collect()
        };
        let read: Vec<(String, Option<Bytes>)> = futures::stream::iter(unread)
            .map(|marker| async move {
                let body = super::Storage::get(self, &marker).await?;
                Ok::<_, io::Error>((marker, body))
            })
            .buffer_unordered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
        let mut cache = self.collection.markers.lock().expect("lock");
        for (marker, body) in read {
            // A marker removed meanwhile is older than any cutoff that matters.
            if let Some(body) = body {
                cache.insert(marker, keys_of(&body).into());
            }
        }
        // Forget markers of windows no cutoff reaches any more.
        let oldest = window_name(first.saturating_sub(2));
        cache.retain(|marker, _| {
            marker
                .strip_prefix(&format!("{GC_TOUCHES}/"))
                .is_some_and(|rest| rest >= oldest.as_str())
        });
        Ok(markers
            .iter()
            .filter_map(|m| cache.get(m))
            .flat_map(|keys| keys.iter().cloned())
            .collect())
    }

    /// The collector's side: removes each of `keys` that was neither written
    /// nor touched at or after `cutoff`, announcing the batch first (one
    /// intent for up to a listing page of keys).
    pub(super) async fn remove_untouched(
        &self,
        keys: &[String],
        cutoff: SystemTime,
    ) -> io::Result<Vec<bool>> {
        let now = since_epoch(SystemTime::now());
        let name = intent_name(now);
        let intent = format!("{GC_INTENTS}/{name}");
        let started = Instant::now();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        // The flag first: a toucher that reads it after this lists the
        // intents, and one that read it before wrote its marker before.
        self.meta
            .put(
                &self.path(GC_ACTIVE),
                Bytes::from(now.as_millis().to_string()).into(),
            )
            .await
            .map_err(io_error)?;
        self.meta
            .put(&self.path(&intent), body_of(&refs).into())
            .await
            .map_err(io_error)?;
        let decided = self.decide(keys, cutoff, started).await;
        let removed = match decided {
            Ok(doomed) => {
                let paths = doomed
                    .iter()
                    .zip(keys)
                    .filter(|(doomed, _)| **doomed)
                    .map(|(_, key)| {
                        self.forget(key);
                        self.collection.removed(key);
                        Ok(self.path(key))
                    })
                    .collect::<Vec<_>>();
                let removal = self
                    .meta
                    .delete_stream(futures::stream::iter(paths).boxed())
                    .try_for_each(|_| async { Ok(()) })
                    .await
                    .map_err(io_error);
                removal.map(|()| doomed)
            }
            Err(e) => Err(e),
        };
        // The intent goes whatever happened: touchers waiting on it go on.
        let _ = self.meta.delete(&self.path(&intent)).await;
        self.clean_up(cutoff).await;
        removed
    }

    /// Which of `keys` to remove: not named by a marker since `cutoff`, and
    /// last written before it. Nothing when the decision took longer than
    /// the intent's lease allows.
    async fn decide(
        &self,
        keys: &[String],
        cutoff: SystemTime,
        started: Instant,
    ) -> io::Result<Vec<bool>> {
        // Markers from up to MARKED_FOR before the cutoff count too: a
        // toucher writes keys its marker covers for that long without a look
        // at the intents, so a marker the cutoff passed may still cover a
        // write in flight. Reading them spares more, never less, and the
        // protocol then holds with any grace period (even 0), not only with
        // one longer than MARKED_FOR.
        let since = cutoff.checked_sub(MARKED_FOR).unwrap_or(cutoff);
        let touched = self.touched_since(since).await?;
        let untouched: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| !touched.contains(*key))
            .collect();
        let listed = self.times_listed(&untouched).await?;
        let keys: Vec<(String, bool)> = keys
            .iter()
            .map(|key| (key.clone(), touched.contains(key)))
            .collect();
        let count = keys.len();
        let listed = &listed;
        let doomed: Vec<bool> = futures::stream::iter(keys)
            .map(|(key, touched)| async move {
                if touched {
                    return Ok::<_, io::Error>(false);
                }
                if let Some(time) = listed.time_of(&key) {
                    return Ok(time.is_some_and(|time| older_than(time, cutoff)));
                }
                Ok(self
                    .head(&key)
                    .await?
                    .is_some_and(|meta| older_than(meta.last_modified.into(), cutoff)))
            })
            .buffered(CONCURRENT_REQUESTS)
            .try_collect::<Vec<bool>>()
            .await?;
        if started.elapsed() > DECIDE_WITHIN {
            tracing::warn!(
                keys = count,
                took = ?started.elapsed(),
                "a collection batch took too long to decide: nothing removed"
            );
            return Ok(vec![false; count]);
        }
        Ok(doomed)
    }

    /// The times of `keys` (untouched keys of a batch, after its intent),
    /// read from a listing of the key range they span instead of a HEAD each:
    /// a batch of content the sweep found in one stretch of its listing is a
    /// few pages, where the HEADs were a thousand requests. A LIST after the
    /// intent is as good a look as a HEAD after it (§5 of docs/design/s3.md):
    /// S3's LIST is read-after-write consistent, so a write the LIST missed
    /// came after it, and its writer reads the flag later still and waits
    /// for this intent. Listing stops after a few pages ([`LIST_PAGES_PER`]
    /// keys a page): keys past what it covered are HEADed as before.
    async fn times_listed(&self, keys: &[&str]) -> io::Result<ListedTimes> {
        let mut listed = ListedTimes::default();
        let (Some(first), Some(last)) = (keys.iter().min(), keys.iter().max()) else {
            return Ok(listed);
        };
        if keys.len() < LIST_PAGES_PER {
            return Ok(listed);
        }
        // The deepest folder holding them all, and a name just before the
        // first (the first without its last byte, which sorts before it).
        let common = first
            .bytes()
            .zip(last.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let dir = first.as_bytes()[..common]
            .iter()
            .rposition(|b| *b == b'/')
            .map_or("", |at| &first[..=at]);
        let Some(before) = first.char_indices().last().map(|(at, _)| &first[..at]) else {
            return Ok(listed);
        };
        let wanted: HashSet<&str> = keys.iter().copied().collect();
        let prefix = format!("{}/{dir}", self.root);
        let mut offset = format!("{}/{before}", self.root);
        let pages = 1 + keys.len() / LIST_PAGES_PER;
        for _ in 0..pages {
            let page = self
                .meta
                .list_paginated(
                    Some(&prefix),
                    PaginatedListOptions {
                        offset: Some(offset.clone()),
                        ..PaginatedListOptions::default()
                    },
                )
                .await
                .map_err(io_error)?;
            let more = page.page_token.is_some();
            for object in page.result.objects {
                let Some(key) = object
                    .location
                    .as_ref()
                    .strip_prefix(&format!("{}/", self.root))
                else {
                    continue;
                };
                if key > *last {
                    listed.covered = Some((*last).to_owned());
                    return Ok(listed);
                }
                if wanted.contains(key) {
                    listed
                        .times
                        .insert(key.to_owned(), object.last_modified.into());
                }
                listed.covered = Some(key.to_owned());
                offset = object.location.as_ref().to_owned();
            }
            if !more {
                listed.covered = Some((*last).to_owned());
                return Ok(listed);
            }
        }
        Ok(listed)
    }

    /// Removes marker windows no collection with this cutoff reads, and
    /// intents of collectors that died: at most every ten minutes per process.
    async fn clean_up(&self, cutoff: SystemTime) {
        {
            let mut last = self.collection.last_cleanup.lock().expect("lock");
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(WINDOW_SECS)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let keep_from = window_name(window_of(since_epoch(cutoff)).saturating_sub(2));
        if let Ok(windows) = self.names_under(GC_TOUCHES, None).await {
            for window in windows.iter().filter(|w| w.as_str() < keep_from.as_str()) {
                let _ = super::Storage::delete_all(self, &format!("{GC_TOUCHES}/{window}")).await;
            }
        }
        let now = since_epoch(SystemTime::now());
        if let Ok(intents) = self.names_under(GC_INTENTS, None).await {
            for name in intents {
                if intent_written(&name).is_some_and(|w| now > w + 2 * LEASE) {
                    let _ = self
                        .meta
                        .delete(&self.path(&format!("{GC_INTENTS}/{name}")))
                        .await;
                    self.collection.intents.lock().expect("lock").remove(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_time_and_sort_by_it() {
        let early = Duration::from_millis(1_700_000_000_000);
        let late = early + Duration::from_millis(5);
        assert!(intent_name(early) < intent_name(late));
        assert_eq!(intent_written(&intent_name(early)), Some(early));
        assert!(marker_name(early) < marker_name(late));
        // A marker written at the cutoff sorts after the listing's start.
        let after = format!("{:020}", early.as_nanos() - 1);
        assert!(marker_name(early) > after);
        assert!(
            window_name(window_of(early))
                < window_name(window_of(early + Duration::from_secs(600)))
        );
    }

    #[test]
    fn a_time_reported_in_whole_seconds_is_old_only_a_second_before_the_cutoff() {
        let cutoff = UNIX_EPOCH + Duration::from_millis(10_500);
        assert!(!older_than(UNIX_EPOCH + Duration::from_secs(10), cutoff));
        assert!(older_than(UNIX_EPOCH + Duration::from_secs(9), cutoff));
    }

    #[test]
    fn a_marked_key_covers_writes_for_a_second_and_what_this_process_does_to_it_updates_it() {
        let cache = CollectionCache::default();
        let blob = "blobs/sha256/ab/abc/data";
        let link = "repositories/a/_layers/sha256/abc/link";
        let tag = "repositories/a/_manifests/tags/latest/current/link";
        let upload = "repositories/a/_uploads/u/data";
        cache.marked(
            Instant::now(),
            &[blob, link, tag, upload],
            &[Some(3), None, Some(71), None],
        );
        assert_eq!(cache.marked_recently(blob), Some(true));
        assert_eq!(cache.marked_recently(link), Some(false));
        // Keys the protocol does not guard are never remembered.
        assert_eq!(cache.marked_recently(tag), None);
        assert_eq!(cache.marked_recently(upload), None);
        cache.written(link, 71);
        assert_eq!(cache.marked_recently(link), Some(true));
        cache.removed(blob);
        assert_eq!(cache.marked_recently(blob), None);
        cache.removed_under("repositories/a/");
        assert_eq!(cache.marked_recently(link), None);
        // A marker older than MARKED_FOR covers nothing.
        let old = Instant::now() - MARKED_FOR;
        cache.marked(old, &[blob], &[Some(3)]);
        assert_eq!(cache.marked_recently(blob), None);
    }

    #[test]
    fn a_touch_is_answered_from_memory_only_for_keys_all_found_within_the_bound() {
        let cache = CollectionCache::default();
        let (blob, link, absent) = (
            "blobs/sha256/ab/abc/data",
            "repositories/a/_layers/sha256/abc/link",
            "repositories/a/_manifests/revisions/sha256/def/link",
        );
        let half = MARKED_FOR / 2;
        let now = Instant::now();
        cache.marked(now, &[blob, link, absent], &[Some(3), Some(71), None]);
        assert_eq!(cache.present_within(&[blob, link], half), Some(vec![3, 71]));
        // One absent key, or one never marked, and the whole touch is needed.
        assert_eq!(cache.present_within(&[blob, absent], half), None);
        assert_eq!(
            cache.present_within(&[blob, "blobs/sha256/cd/cde/data"], half),
            None
        );
        // Written by this process since: found, with the size written.
        cache.written(absent, 71);
        assert_eq!(
            cache.present_within(&[blob, absent], half),
            Some(vec![3, 71])
        );
        // A bound of 0 (a caller that trusts nothing it remembers) answers nothing.
        assert_eq!(cache.present_within(&[blob], Duration::ZERO), None);
        // Removed by this process: forgotten.
        cache.removed(link);
        assert_eq!(cache.present_within(&[blob, link], half), None);
        // Expiry at the bound: marked just under it counts, at it does not,
        // and a longer bound than MARKED_FOR is cut to it.
        let just_under = Instant::now() - (half - Duration::from_millis(100));
        cache.marked(just_under, &[blob], &[Some(3)]);
        assert_eq!(cache.present_within(&[blob], half), Some(vec![3]));
        cache.marked(Instant::now() - half, &[blob], &[Some(3)]);
        assert_eq!(cache.present_within(&[blob], half), None);
        cache.marked(Instant::now() - MARKED_FOR, &[blob], &[Some(3)]);
        assert_eq!(
            cache.present_within(&[blob], Duration::from_secs(3600)),
            None
        );
    }

    #[test]
    fn tag_links_and_uploads_are_outside_the_protocol() {
        assert!(is_protected("blobs/sha256/ab/abc/data"));
        assert!(is_protected(
            "repositories/a/_manifests/revisions/sha256/abc/link"
        ));
        assert!(is_protected(
            "repositories/a/_berth/history/latest/0001-sha256-abc"
        ));
        assert!(!is_protected(
            "repositories/a/_manifests/tags/latest/current/link"
        ));
        assert!(!is_protected("repositories/a/_uploads/u/data"));
        assert!(!is_protected("_berth/gc/active"));
    }

    #[test]
    fn marker_bodies_round_trip() {
        let keys = [
            "blobs/sha256/ab/abc/data",
            "repositories/a/_layers/sha256/abc/link",
        ];
        assert_eq!(keys_of(&body_of(&keys)), keys);
    }
}
