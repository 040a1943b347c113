//! Prometheus metrics: every family Berth exports, in one place, and their
//! text encoding for `GET /metrics` (the `prometheus-client` crate, the
//! Prometheus project's own Rust client).
//!
//! One [`Metrics`] per running registry, created with it
//! (`Registry::metrics`) and handed to what records into it: the HTTP
//! layer (requests, bytes, uploads in progress, auth failures), the
//! registry (caches, stored content, the lifecycle) and the mirror (upstream
//! requests). Per instance rather than global, so that the servers a test
//! process starts count apart. Names follow Prometheus's conventions:
//! `berth_` prefix, base units (seconds, bytes), `_total` on counters.
//! Recording is an atomic add, or a read-locked map lookup for a labelled
//! family: nothing on a request's path waits for a scrape.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the answer to a scrape (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The kind of resource (`blob`, `manifest`, `upload`, ...), never the
    /// path: repository names would make the series unbounded.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Which cache: `link`, `tag_list`, `blob_size`, `manifest`,
    /// `small_blob`.
    pub cache: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The mirror entry's prefix (bounded by the configuration).
    pub prefix: String,
    /// `manifest`, `manifest_head`, `blob`, `blob_head`, `tags`.
    pub request: &'static str,
    /// `ok`, `not_found`, `too_many_requests`, `unusable` (an answer the
    /// mirror cannot take: credentials refused, bad data), `error` (no
    /// answer, a timeout, 5xx).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// An events endpoint's host and the key of its URL (never the URL,
    /// which may hold a token).
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub endpoint: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreRequestLabels {
    /// What the request asks of the object store: `get`, `head`, `put`,
    /// `copy`, `delete`, `list`, `create_multipart`, `upload_part`,
    /// `upload_part_streamed` (a part sent as a client's bytes arrive: its
    /// duration includes the client's pace), `complete_multipart`,
    /// `abort_multipart`, `other`.
    pub operation: &'static str,
    /// `ok` (2xx, 3xx), `not_found`, `conflict` (409, 412: a conditional
    /// write lost), `client_error` (another 4xx), `server_error` (5xx, 503
    /// slow-downs included), `error` (no answer: refused, reset, timed out).
    pub result: &'static str,
}

/// Requests sent to an object store (the S3 backend's), each attempt of a
/// retried one counted apart. Kept by the backend from its opening and
/// registered with a registry's [`Metrics`] that serves over it
/// ([`Metrics::export_store_requests`]): the store is opened before the
/// registry, and tools (`berth fsck`) open one with no metrics at all.
#[derive(Clone, Debug)]
pub struct StoreRequests {
    requests: Family<StoreRequestLabels, Counter>,
    duration: Family<StoreRequestLabels, Histogram>,
}

impl Default for StoreRequests {
    fn default() -> StoreRequests {
        StoreRequests {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl StoreRequests {
    /// Counts one request and how long it took to its response's head
    /// (`None` for a request that got no answer: counted, not timed).
    pub fn record(
        &self,
        operation: &'static str,
        result: &'static str,
        elapsed: Option<std::time::Duration>,
    ) {
        let labels = StoreRequestLabels { operation, result };
        self.requests.get_or_create(&labels).inc();
        if let Some(elapsed) = elapsed {
            self.duration
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The `result` label for an HTTP status.
    pub fn result_of(status: u16) -> &'static str {
        match status {
            200..=399 => "ok",
            404 => "not_found",
            409 | 412 => "conflict",
            400..=499 => "client_error",
            _ => "server_error",
        }
    }
}

/// Every family Berth exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, Histogram>,
    pub http_received_bytes: Family<RouteLabels, Counter>,
    pub http_sent_bytes: Family<RouteLabels, Counter>,
    pub uploads_in_progress: Gauge,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub rate_limited: Family<ReasonLabels, Counter>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub stored: Arc<Stored>,
    pub gc_runs: Family<ResultLabels, Counter>,
    pub gc_duration: Histogram,
    pub gc_removed_blobs: Counter,
    pub gc_removed_bytes: Counter,
    pub gc_removed_manifests: Counter,
    pub mirror_evicted_manifests: Counter,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_request_duration: Family<UpstreamLabels, Histogram>,
    pub events_queued: Family<EndpointLabels, Gauge>,
    pub events_sent: Family<DeliveryLabels, Counter>,
    pub events_dropped: Family<EndpointLabels, Counter>,
}

/// What the store holds, as the last inventory of it counted (the
/// lifecycle task's, `registry/lifecycle/inventory.rs`: never a walk per
/// scrape). `-1` until the first inventory has ended: not exported until
/// then.
#[derive(Debug)]
pub struct Stored {
    pub blobs: AtomicI64,
    pub blob_bytes: AtomicI64,
    pub manifests: AtomicI64,
    pub repositories: AtomicI64,
    /// When the last inventory ended, in seconds since the Unix epoch.
    pub counted_at: AtomicI64,
}

impl Default for Stored {
    fn default() -> Stored {
        Stored {
            blobs: AtomicI64::new(-1),
            blob_bytes: AtomicI64::new(-1),
            manifests: AtomicI64::new(-1),
            repositories: AtomicI64::new(-1),
            counted_at: AtomicI64::new(-1),
        }
    }
}

impl Collector for Stored {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges: [(&str, &str, Option<Unit>, &AtomicI64); 5] = [
            (
                "storage_blobs",
                "Blobs in the store (layers, configs and manifests), as of the last inventory",
                None,
                &self.blobs,
            ),
            (
                "storage_blobs",
                "Bytes of the blobs in the store, as of the last inventory",
                Some(Unit::Bytes),
                &self.blob_bytes,
            ),
            (
                "storage_manifests",
                "Manifests linked in repositories (one per repository and digest), as of the last inventory",
                None,
                &self.manifests,
            ),
            (
                "storage_repositories",
                "Repositories in the store, as of the last inventory",
                None,
                &self.repositories,
            ),
            (
                "storage_inventory_timestamp",
                "When the last inventory of the store ended (Unix time)",
                Some(Unit::Seconds),
                &self.counted_at,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let value = value.load(Ordering::Relaxed);
            if value < 0 {
                continue;
            }
            let gauge = ConstGauge::new(value);
            let metric =
                encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// A counter read when scraped from a part that keeps its own count (the
/// journal's syncs).
pub struct CounterFn {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for CounterFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for CounterFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = prometheus_client::metrics::counter::ConstCounter::new((self.read)());
        let metric =
            encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}

/// Seconds, from 1 ms to about 65 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let metrics = Metrics {
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(duration_histogram),
            http_received_bytes: Family::default(),
            http_sent_bytes: Family::default(),
            uploads_in_progress: Gauge::default(),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            cache_lookups: Family::default(),
            stored: Arc::new(Stored::default()),
            gc_runs: Family::default(),
            gc_duration: duration_histogram(),
            gc_removed_blobs: Counter::default(),
            gc_removed_bytes: Counter::default(),
            gc_removed_manifests: Counter::default(),
            mirror_evicted_manifests: Counter::default(),
            upstream_requests: Family::default(),
            upstream_request_duration: Family::new_with_constructor(duration_histogram),
            events_queued: Family::default(),
            events_sent: Family::default(),
            events_dropped: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "Requests answered, by method, kind of resource and status",
            metrics.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "From a request's head to the end of its response body",
            Unit::Seconds,
            metrics.http_request_duration.clone(),
        );
        r.register_with_unit(
            "http_received",
            "Request body bytes read",
            Unit::Bytes,
            metrics.http_received_bytes.clone(),
        );
        r.register_with_unit(
            "http_sent",
            "Response body bytes handed to the connection",
            Unit::Bytes,
            metrics.http_sent_bytes.clone(),
        );
        r.register(
            "uploads_in_progress",
            "Blob upload requests (POST, PATCH, PUT) whose body is being received",
            metrics.uploads_in_progress.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused by access control, by reason",
            metrics.auth_failures.clone(),
        );
        r.register(
            "rate_limited",
            "Requests answered 429, by what limited them",
            metrics.rate_limited.clone(),
        );
        r.register(
            "cache_lookups",
            "Lookups in the registry's in-memory caches, by cache and result",
            metrics.cache_lookups.clone(),
        );
        r.register_collector(Box::new(metrics.stored.clone()));
        r.register(
            "gc_runs",
            "Lifecycle runs (mirror eviction, retention, garbage collection, upload expiry)",
            metrics.gc_runs.clone(),
        );
        r.register_with_unit(
            "gc_duration",
            "How long each lifecycle run took",
            Unit::Seconds,
            metrics.gc_duration.clone(),
        );
        r.register(
            "gc_removed_blobs",
            "Blobs garbage collection removed",
            metrics.gc_removed_blobs.clone(),
        );
        r.register_with_unit(
            "gc_removed",
            "Bytes of the blobs garbage collection removed",
            Unit::Bytes,
            metrics.gc_removed_bytes.clone(),
        );
        r.register(
            "gc_removed_manifests",
            "Manifests (revision links) garbage collection removed from repositories",
            metrics.gc_removed_manifests.clone(),
        );
        r.register(
            "mirror_evicted_manifests",
            "Mirrored manifests the lifecycle evicted (unused_for, max_bytes)",
            metrics.mirror_evicted_manifests.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests a mirror sent to its upstreams, by entry, kind and result",
            metrics.upstream_requests.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "From sending an upstream request to its response's head",
            Unit::Seconds,
            metrics.upstream_request_duration.clone(),
        );
        r.register(
            "events_queued",
            "Events waiting in an endpoint's queue on disk",
            metrics.events_queued.clone(),
        );
        r.register(
            "events_sent",
            "Deliveries of events tried, by endpoint and result (a failed one is tried again)",
            metrics.events_sent.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped from a full queue (events.max_queued), oldest first",
            metrics.events_dropped.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Exports an object store's request counts and durations as
    /// `berth_s3_requests_total` and `berth_s3_request_duration_seconds`.
    pub fn export_store_requests(&mut self, store: &StoreRequests) {
        self.registry.register(
            "s3_requests",
            "Requests sent to the object store, by operation and result (each attempt of a retried one)",
            store.requests.clone(),
        );
        self.registry.register_with_unit(
            "s3_request_duration",
            "From sending a request to the object store to its response's head",
            Unit::Seconds,
            store.duration.clone(),
        );
    }

    /// Registers a counter (`berth_<name>_total`) that `read` gives at each
    /// scrape.
    pub fn count_from(
        &mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.registry.register_collector(Box::new(CounterFn {
            name,
            help,
            read: Box::new(read),
        }));
    }

    /// Counts a lookup in one of the registry's caches.
    pub fn cache_lookup(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { cache, result })
            .inc();
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_as_prometheus_expects() {
        let metrics = Metrics::new();
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                method: "GET",
                route: "blob",
                status: 200,
            })
            .inc();
        metrics.cache_lookup("link", true);
        let text = metrics.encode();
        assert!(
            text.contains(
                "berth_http_requests_total{method=\"GET\",route=\"blob\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("berth_http_request_duration_seconds"),
            "no series yet"
        );
        assert!(!text.contains("berth_storage_blobs"), "no inventory yet");
        metrics
            .http_request_duration
            .get_or_create(&RouteLabels {
                method: "GET",
                route: "blob",
            })
            .observe(0.003);
        metrics.stored.blobs.store(7, Ordering::Relaxed);
        let blob = RouteLabels {
            method: "GET",
            route: "blob",
        };
        metrics.http_sent_bytes.get_or_create(&blob).inc_by(512);
        let text = metrics.encode();
        assert!(text.contains("# TYPE berth_http_request_duration_seconds histogram"));
        assert!(text.contains(
            "berth_http_request_duration_seconds_bucket{method=\"GET\",route=\"blob\",le=\"0.004\"} 1"
        ), "{text}");
        assert!(text.contains("berth_http_sent_bytes_total{method=\"GET\",route=\"blob\"} 512"));
        assert!(text.contains("berth_cache_lookups_total{cache=\"link\",result=\"hit\"} 1"));
        assert!(text.contains("berth_storage_blobs 7"), "{text}");
        assert!(!text.contains("berth_storage_blobs_bytes"), "{text}");
    }

    #[test]
    fn every_series_the_grafana_dashboard_queries_is_exported() {
        let dashboard = include_str!("../deploy/grafana/berth-dashboard.json");
        let metrics = Metrics::new();
        // One series in every family, as a running server soon has.
        let route = RouteLabels {
            method: "GET",
            route: "blob",
        };
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                method: "GET",
                route: "blob",
                status: 200,
            })
            .inc();
        metrics
            .http_request_duration
            .get_or_create(&route)
            .observe(0.1);
        metrics.http_received_bytes.get_or_create(&route).inc();
        metrics.http_sent_bytes.get_or_create(&route).inc();
        let reason = ReasonLabels { reason: "denied" };
        metrics.auth_failures.get_or_create(&reason).inc();
        metrics.rate_limited.get_or_create(&reason).inc();
        metrics.cache_lookup("link", true);
        metrics
            .gc_runs
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        let upstream = UpstreamLabels {
            prefix: "hub".into(),
            request: "blob",
            result: "ok",
        };
        metrics.upstream_requests.get_or_create(&upstream).inc();
        metrics
            .upstream_request_duration
            .get_or_create(&upstream)
            .observe(0.1);
        let store = StoreRequests::default();
        store.record("get", "ok", Some(std::time::Duration::from_millis(3)));
        let mut metrics = metrics;
        metrics.export_store_requests(&store);
        for gauge in [
            &metrics.stored.blobs,
            &metrics.stored.blob_bytes,
            &metrics.stored.manifests,
            &metrics.stored.repositories,
            &metrics.stored.counted_at,
        ] {
            gauge.store(1, Ordering::Relaxed);
        }
        let text = metrics.encode();
        let exported: std::collections::HashSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let queried: Vec<&str> = dashboard
            .match_indices("berth_")
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(queried.len() > 10, "{queried:?}");
        for name in queried {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, not exported"
            );
        }
    }
}
