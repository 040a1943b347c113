//! The lifecycle run (`berth gc`, and `berth serve` with `gc_interval`):
//! retention, then garbage collection, then upload expiry; and the one
//! background task that runs it on a schedule inside the server.
//!
//! The task is owned by a [`LifecycleTask`] handle, as mini-redis owns its
//! expiry task through a drop guard: dropping the handle (the server shutting
//! down drops the application that holds it) stops the task. Stopping in the
//! middle of a run is safe: every removal is one atomic storage operation.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::expiry::ExpiryReport;
use super::gc::{GcOptions, GcReport};
use super::mirror::EvictionReport;
use super::retention::RetentionReport;
use crate::oci::Result;
use crate::registry::Registry;

/// What one lifecycle run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Mirrored images unused for their prefix's `unused_for`.
    pub mirror: EvictionReport,
    pub retention: RetentionReport,
    pub gc: GcReport,
    pub uploads: ExpiryReport,
}

impl Registry {
    /// Retention, then mark and sweep, then upload expiry. Retention runs
    /// first so that the images of the tags it removes are collected in the
    /// same run; in a dry run the collection treats those tags as removed.
    #[tracing::instrument(level = "debug", name = "lifecycle.run", skip_all)]
    pub async fn run_lifecycle(&self, options: &GcOptions) -> Result<LifecycleReport> {
        let started = std::time::Instant::now();
        let run = self.run_lifecycle_once(options).await;
        let metrics = self.metrics();
        if !options.dry_run {
            let result = if run.is_ok() { "ok" } else { "error" };
            metrics
                .gc_runs
                .get_or_create(&crate::metrics::ResultLabels { result })
                .inc();
            metrics.gc_duration.observe(started.elapsed().as_secs_f64());
        }
        if let (false, Ok(report)) = (options.dry_run, &run) {
            metrics
                .gc_removed_blobs
                .inc_by(report.gc.blobs_removed as u64);
            metrics.gc_removed_bytes.inc_by(report.gc.bytes_removed);
            metrics
                .gc_removed_manifests
                .inc_by(report.gc.manifests_removed as u64);
            metrics
                .mirror_evicted_manifests
                .inc_by(report.mirror.evicted.len() as u64);
        }
        run
    }

    async fn run_lifecycle_once(&self, options: &GcOptions) -> Result<LifecycleReport> {
        // Mirror eviction first, so that the collection reclaims what it
        // unlinked in the same run (in a dry run it only counts).
        let mirror = self.evict_mirrored(options.dry_run).await?;
        let retention = self.apply_retention(options.dry_run).await?;
        let ignored: HashSet<_> = if options.dry_run {
            retention
                .removed
                .iter()
                .map(|t| (t.repository.clone(), t.tag.clone()))
                .collect()
        } else {
            HashSet::new()
        };
        let gc = self.collect_garbage_ignoring(options, &ignored).await?;
        let uploads = self.expire_uploads(options.dry_run).await?;
        // A collection may have emptied repositories: the catalog's index
        // should not wait for its staleness bound to drop them. Only a
        // removed tag or revision link can empty a repository's `_manifests`
        // (what the catalog lists by); otherwise the walk, a request per
        // repository on an object store, is skipped.
        let unlinked = !retention.removed.is_empty() || !mirror.evicted.is_empty();
        if !options.dry_run && (unlinked || gc.manifests_removed > 0) {
            self.rebuild_repository_index().await?;
        }
        Ok(LifecycleReport {
            mirror,
            retention,
            gc,
            uploads,
        })
    }
}

/// The summary `berth gc` prints: one `what: count` line each, so scripts
/// can read it.
impl fmt::Display for LifecycleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let LifecycleReport {
            mirror,
            retention,
            gc,
            uploads,
        } = self;
        if gc.dry_run {
            writeln!(
                f,
                "dry run: nothing was changed; counts are what a run would remove"
            )?;
        }
        writeln!(f, "repositories: {}", gc.repositories)?;
        writeln!(
            f,
            "mirrored manifests evicted (unused): {}",
            mirror.evicted.len()
        )?;
        for (name, digest) in &mirror.evicted {
            writeln!(f, "  {name}@{digest}")?;
        }
        writeln!(f, "tags removed by retention: {}", retention.removed.len())?;
        for removed in &retention.removed {
            writeln!(
                f,
                "  {}:{} ({})",
                removed.repository, removed.tag, removed.digest
            )?;
        }
        writeln!(f, "manifests removed: {}", gc.manifests_removed)?;
        writeln!(
            f,
            "blobs removed: {} ({} of them manifests)",
            gc.blobs_removed, gc.manifest_blobs_removed
        )?;
        writeln!(
            f,
            "links removed: {} layer, {} referrer, {} tag history entries",
            gc.layer_links_removed,
            gc.referrer_links_removed,
            gc.history_entries_removed + retention.history_entries_removed
        )?;
        writeln!(
            f,
            "uploads expired: {} ({} bytes)",
            uploads.expired, uploads.bytes_removed
        )?;
        let bytes = gc.bytes_removed + uploads.bytes_removed;
        writeln!(f, "bytes reclaimed: {bytes} ({})", human_bytes(bytes))?;
        writeln!(
            f,
            "spared (used during the run): {}",
            gc.spared + uploads.spared
        )?;
        for problem in mirror
            .problems
            .iter()
            .chain(&retention.problems)
            .chain(&gc.problems)
            .chain(&uploads.problems)
        {
            writeln!(f, "warning: {problem}")?;
        }
        Ok(())
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The server's lifecycle task. Dropping this handle stops it.
pub struct LifecycleTask {
    /// Dropped with the handle, which the task notices at once.
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LifecycleTask {
    /// Starts the task on the current tokio runtime: upload expiry every
    /// min(`upload_expiry` / 4, 10 min), and with `gc_interval` a whole
    /// lifecycle run (retention, collection, expiry) at that interval. The
    /// first runs come one period after the start, not at it. With
    /// `inventory_every`, an inventory of the store for the metrics soon
    /// after the start, after each whole run, and at that interval.
    pub fn spawn(registry: Arc<Registry>, inventory_every: Option<Duration>) -> LifecycleTask {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(registry, inventory_every, stopped));
        LifecycleTask { stop, task }
    }

    /// Stops the task and waits until it has.
    pub async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

/// The longest the first inventory of the store waits after the start.
const INVENTORY_AFTER_START: Duration = Duration::from_secs(30);

/// How often uploads are expired between full runs: often enough that an
/// upload is gone soon after it expires, rarely enough to cost nothing.
fn expiry_period(upload_expiry: Duration) -> Duration {
    (upload_expiry / 4)
        .min(Duration::from_secs(600))
        .max(Duration::from_secs(1))
}

/// What the task does on a tick.
enum Work {
    Expiry,
    FullRun,
    Inventory,
}

async fn run(
    registry: Arc<Registry>,
    inventory_every: Option<Duration>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use tokio::time::{interval_at, Instant, MissedTickBehavior};
    let lifecycle = registry.lifecycle().clone();
    let every = expiry_period(lifecycle.upload_expiry);
    let mut expiry = interval_at(Instant::now() + every, every);
    expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut collection = lifecycle.gc_interval.map(|period| {
        let mut timer = interval_at(Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    // The first soon after the start (within 30 s: after the start's own
    // traffic, a pod's readiness checks and first pulls), then every period.
    let mut inventory = inventory_every.map(|period| {
        let first = period.min(INVENTORY_AFTER_START);
        let mut timer = interval_at(Instant::now() + first, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    loop {
        let next = tokio::select! {
            _ = &mut stopped => return,
            _ = expiry.tick() => Work::Expiry,
            _ = async { collection.as_mut().expect("guarded").tick().await },
                if collection.is_some() => Work::FullRun,
            _ = async { inventory.as_mut().expect("guarded").tick().await },
                if inventory.is_some() => Work::Inventory,
        };
        let take_inventory = || async {
            if let Err(e) = registry.take_inventory().await {
                tracing::warn!(error = %e, "counting the store for the metrics failed");
            }
        };
        let work = async {
            if let Work::Inventory = next {
                take_inventory().await;
            } else if let Work::FullRun = next {
                match registry.run_lifecycle(&GcOptions::default()).await {
                    Ok(report) => log_run(&report),
                    Err(e) => tracing::error!(error = %e, "lifecycle run failed"),
                }
                if inventory.is_some() {
                    take_inventory().await;
                }
            } else {
                let expiry = registry.expire_uploads(false);
                let span = tracing::debug_span!("lifecycle.expiry");
                match tracing::Instrument::instrument(expiry, span).await {
                    Ok(report) if report.expired > 0 => tracing::info!(
                        expired = report.expired,
                        bytes = report.bytes_removed,
                        "expired abandoned uploads"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "upload expiry failed"),
                }
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            () = work => {}
        }
    }
}

fn log_run(report: &LifecycleReport) {
    let LifecycleReport {
        mirror,
        retention,
        gc,
        uploads,
    } = report;
    tracing::info!(
        mirrored_manifests_evicted = mirror.evicted.len(),
        tags_removed = retention.removed.len(),
        manifests_removed = gc.manifests_removed,
        blobs_removed = gc.blobs_removed,
        bytes_reclaimed = gc.bytes_removed + uploads.bytes_removed,
        uploads_expired = uploads.expired,
        spared = gc.spared,
        "lifecycle run finished"
    );
    for problem in mirror
        .problems
        .iter()
        .chain(&retention.problems)
        .chain(&gc.problems)
        .chain(&uploads.problems)
    {
        tracing::warn!(problem = %problem, "lifecycle run skipped something");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_task_stops_when_asked_even_in_the_middle_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::fs::FsStorage::open(dir.path()).unwrap();
        let lifecycle = crate::registry::LifecycleConfig {
            gc_interval: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let registry = Arc::new(Registry::new(
            Arc::new(storage),
            crate::registry::Limits::default(),
            &crate::registry::cache::CacheConfig::default(),
            lifecycle,
        ));
        let task = LifecycleTask::spawn(registry.clone(), Some(Duration::from_secs(3600)));
        tokio::time::timeout(Duration::from_secs(5), task.stop())
            .await
            .expect("the task stops at once");
        assert_eq!(
            Arc::strong_count(&registry),
            1,
            "the task let go of the registry"
        );
    }

    #[test]
    fn expiry_runs_a_quarter_of_the_expiry_at_most_every_ten_minutes() {
        assert_eq!(
            expiry_period(Duration::from_secs(24 * 3600)),
            Duration::from_secs(600)
        );
        assert_eq!(
            expiry_period(Duration::from_secs(120)),
            Duration::from_secs(30)
        );
        assert_eq!(expiry_period(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
