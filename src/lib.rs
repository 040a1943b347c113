//! Berth: an OCI Distribution-spec container registry.
//!
//! A request travels one way: [`http`] → [`registry`] → [`storage`], with the
//! rules in [`oci`]. This file assembles them from a [`Config`] and runs the
//! server; tests start it the same way on an ephemeral port.

// System calls go through `sys`, the one module allowed `unsafe`.
#![deny(unsafe_code)]

#[cfg(test)]
mod architecture_tests;
pub mod auth;
pub mod client;
pub mod config;
pub mod events;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod registry;
pub mod serve;
pub mod storage;
#[allow(unsafe_code)]
mod sys;
pub mod traces;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
use http::auth::AccessControl;
use registry::cache::CacheConfig;
use registry::{Limits, Registry};
use storage::fs::FsStorage;

/// Opens the configured store: the one place that picks a backend. With
/// `recover`, what a killed garbage collection left moved aside goes back
/// first (a server, `berth gc`; not `berth fsck`, which without `--repair`
/// writes nothing).
pub async fn open_storage(config: &Config, recover: bool) -> io::Result<Arc<dyn storage::Storage>> {
    match config.storage.backend {
        config::StorageBackend::Filesystem => {
            let storage = FsStorage::open(config.storage_root())?;
            if recover {
                storage.restore_trash(std::time::Duration::from_secs(60))?;
            }
            Ok(Arc::new(storage))
        }
        config::StorageBackend::S3 => {
            // Blob content read from the bucket is cached on local disk by
            // a server (and `berth gc`), not by `berth fsck`, which reads
            // every blob once.
            let cache = recover.then(|| config.data_dir.join("s3-cache"));
            Ok(Arc::new(
                storage::s3::S3Storage::open(&config.storage.s3, cache.as_deref()).await?,
            ))
        }
        config::StorageBackend::Gcs => {
            tracing::warn!(
                "backend = \"gcs\" is untested: it runs the S3 backend through object_store's \
                 Google Cloud Storage client (docs/design/s3.md)"
            );
            let cache = recover.then(|| config.data_dir.join("s3-cache"));
            Ok(Arc::new(
                storage::s3::S3Storage::open_gcs(&config.storage.gcs, cache.as_deref()).await?,
            ))
        }
    }
}

/// Threads tokio may start for blocking work (file I/O). Its default, 512,
/// suits blocking calls that wait on the network; ours wait on a disk, which
/// more threads do not make faster, while each thread that allocates can
/// bring glibc to open another malloc arena (see [`bound_allocator_arenas`]).
/// No blocking task here waits for another to start (a journal follower
/// waits for a leader that is already running), so a cap cannot deadlock.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// glibc malloc arenas: at most this many per core.
const ARENAS_PER_CORE: usize = 2;

/// The runtime `berth serve` and `berth gc` run on.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
}

/// Caps glibc's malloc arenas at [`ARENAS_PER_CORE`] per core. By default
/// glibc gives threads up to 8 arenas per core, and each keeps the memory
/// freed into it: buffers read on blocking threads (512 KiB blob chunks)
/// and freed on runtime workers leave every arena holding megabytes after a
/// burst, long after the threads are gone. Fewer arenas keep less, at the
/// price of more threads sharing one arena's lock. Call it first in `main`,
/// before any thread starts; a no-op elsewhere than glibc.
pub fn bound_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        sys::limit_malloc_arenas(cores.saturating_mul(ARENAS_PER_CORE));
    }
}

/// Builds the registry service over the configured store.
pub async fn build_registry(config: &Config) -> io::Result<Arc<Registry>> {
    let storage = open_storage(config, true).await?;
    let limits = Limits {
        max_manifest_bytes: config.max_manifest_bytes,
        quotas: config.quotas.clone(),
    };
    let cache = CacheConfig {
        content_bytes: config.cache_bytes,
        ttl: std::time::Duration::from_millis(config.cache_ttl_ms),
    };
    let mut lifecycle = config.lifecycle.clone();
    // Mirrored prefixes whose unused images go: the lifecycle's as data.
    lifecycle.mirror_eviction = config
        .proxy
        .iter()
        .filter(|entry| entry.unused_for.is_some() || entry.max_bytes.is_some())
        .filter_map(|entry| {
            Some(registry::MirrorEviction {
                prefix: oci::RepositoryName::parse(&entry.prefix)?,
                unused_for: entry.unused_for,
                max_bytes: entry.max_bytes,
            })
        })
        .collect();
    Ok(Arc::new(Registry::new(storage, limits, &cache, lifecycle)))
}

/// Access control from the `[auth]` table; `None` when there is none (auth
/// off). Fails when a file it names is missing or invalid.
pub fn build_access_control(
    config: &Config,
    registry: &Arc<Registry>,
) -> io::Result<Option<Arc<AccessControl>>> {
    let Some(auth_config) = &config.auth else {
        return Ok(None);
    };
    let metrics = registry.metrics().clone();
    // Repository settings add their grants to the configuration's rules,
    // and the robots made through the API to the robot file's.
    let auth = auth::Auth::from_config(auth_config, &config.data_dir)
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_grant_source(Arc::new(http::SettingsGrants::new(registry.clone())))
        .with_robot_source(Arc::new(http::RegistryRobots::new(registry.clone())));
    Ok(Some(Arc::new(AccessControl::new(
        auth,
        auth_config.challenge,
        metrics,
    ))))
}

/// The token in `path` (`[metrics] token_file`), its line end trimmed; an
/// empty one is refused rather than taken as "no token".
fn read_token_file(path: &std::path::Path) -> io::Result<auth::Secret> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading metrics.token_file {}: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("metrics.token_file {} is empty", path.display()),
        ));
    }
    Ok(auth::Secret::new(token))
}

/// What serving a registry takes: the API (the registry behind the HTTP
/// API, with access control when configured, and `/metrics` unless
/// `[metrics] listen` moves it), and the separate metrics application when
/// it does.
pub struct App {
    pub api: Router,
    pub metrics: Option<Router>,
}

pub async fn build_app(config: &Config) -> io::Result<App> {
    let registry = build_registry(config).await?;
    // Settings are in force from the first request.
    registry
        .load_settings()
        .await
        .map_err(|e| io::Error::other(format!("reading repository settings: {e}")))?;
    let access = build_access_control(config, &registry)?;
    let mirror = mirror::Mirror::new(
        &config.proxy,
        &config.data_dir.join("mirror").join("spool"),
        registry.metrics().clone(),
    )
    .map_err(io::Error::other)?;
    let scrape_access = match &config.metrics.token_file {
        Some(path) => http::ScrapeAccess::with_token(&read_token_file(path)?),
        None => http::ScrapeAccess::anyone(),
    };
    let separate_metrics = config.metrics.enabled && config.metrics.listen.is_some();
    let metrics = separate_metrics.then(|| http::metrics_router(&registry, scrape_access.clone()));
    let on_main = (config.metrics.enabled && !separate_metrics).then_some(scrape_access);
    let (proxies, forwarded_header) = config
        .auth
        .as_ref()
        .map(|auth| (auth.trusted_proxies.clone(), auth.forwarded_header))
        .unwrap_or_default();
    let limits = http::RequestLimits::new(
        config.limits.requests_per_second,
        config.limits.burst,
        config.limits.max_uploads,
        proxies,
        forwarded_header,
        registry.metrics().clone(),
    );
    let audit = match &config.audit.path {
        Some(path) => Some(Arc::new(http::AuditLog::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening the audit log {}: {e}", path.display()),
            )
        })?)),
        None => None,
    };
    let events =
        events::Events::start(&config.events, &config.data_dir, registry.metrics().clone())
            .map_err(|e| io::Error::new(e.kind(), format!("opening the event queues: {e}")))?;
    let services = http::Services {
        access,
        mirror,
        limits,
        audit,
        events,
        serve_metrics: on_main,
        ui: config.ui.enabled.then_some(http::UiOptions {
            session_ttl: config.ui.session_ttl,
        }),
    };
    let app = http::router(registry.clone(), services);
    // The lifecycle task (upload expiry; retention and garbage collection
    // with `gc_interval`) lives exactly as long as the application: when
    // serving ends and the app is dropped, the task stops. An app built
    // outside a runtime serves nothing, so it needs none.
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(App { api: app, metrics });
    }
    // The catalog's repository index is built while the server starts
    // serving, so that no catalog page waits for a walk of the store.
    let warming = registry.clone();
    tokio::spawn(async move {
        if let Err(e) = warming.rebuild_repository_index().await {
            tracing::warn!(error = %e, "building the repository index failed");
        }
    });
    let inventory_every = config
        .metrics
        .enabled
        .then_some(config.metrics.inventory_interval);
    let task = registry::LifecycleTask::spawn(registry, inventory_every);
    Ok(App {
        api: app.layer(Holding(Arc::new(task))),
        metrics,
    })
}

/// Serves the metrics application on `listener` (plain HTTP) until the
/// task is dropped or aborted.
pub fn spawn_metrics_server(
    listener: TcpListener,
    app: Router,
) -> tokio::task::JoinHandle<io::Result<()>> {
    tokio::spawn(async move { axum::serve(listener, app).await })
}

/// Tower layer that holds a value for as long as the services it wraps exist.
struct Holding<T>(Arc<T>);

impl<T> Clone for Holding<T> {
    fn clone(&self) -> Self {
        Holding(self.0.clone())
    }
}

impl<S, T> tower::Layer<S> for Holding<T> {
    type Service = Held<S, T>;

    fn layer(&self, inner: S) -> Held<S, T> {
        Held {
            inner,
            _held: self.0.clone(),
        }
    }
}

/// A service, and the value it keeps alive.
struct Held<S, T> {
    inner: S,
    _held: Arc<T>,
}

impl<S: Clone, T> Clone for Held<S, T> {
    fn clone(&self) -> Self {
        Held {
            inner: self.inner.clone(),
            _held: self._held.clone(),
        }
    }
}

impl<S: tower::Service<R>, T, R> tower::Service<R> for Held<S, T> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// The TLS server settings the configuration asks for, with its files read
/// and checked; `None` for plain HTTP.
pub fn tls_acceptor_config(config: &Config) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
    config
        .tls()
        .and_then(|files| files.as_ref().map(serve::tls::server_config).transpose())
        .map_err(io::Error::other)
}

/// `berth gc`: one lifecycle run (retention, garbage collection, upload
/// expiry) over the configured store, outside any server.
pub async fn run_gc(
    config: &Config,
    options: &registry::GcOptions,
) -> io::Result<registry::LifecycleReport> {
    let registry = build_registry(config).await?;
    registry
        .run_lifecycle(options)
        .await
        .map_err(|e| io::Error::other(e.to_string()))
}

/// A server running in this process, for tests and embedding. Dropping it
/// stops it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    metrics_task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl RunningServer {
    /// Binds `config.listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(config: &Config) -> io::Result<RunningServer> {
        let tls = tls_acceptor_config(config)?;
        let App { api: app, metrics } = build_app(config).await?;
        let (mut metrics_addr, mut metrics_task) = (None, None);
        if let (Some(metrics), Some(listen)) = (metrics, config.metrics.listen) {
            let listener = TcpListener::bind(listen).await?;
            metrics_addr = Some(listener.local_addr()?);
            metrics_task = Some(spawn_metrics_server(listener, metrics));
        }
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let stopped = async {
            let _ = stopped.await;
        };
        let limits = config.server.clone();
        let task =
            tokio::spawn(async move { serve::run(listener, app, tls, &limits, stopped).await });
        Ok(RunningServer {
            addr,
            metrics_addr,
            metrics_task,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting, waits for in-flight requests, and returns.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = self.metrics_task.take() {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
