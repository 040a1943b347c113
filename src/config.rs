//! Typed configuration: defaults < config file < `BERTH_*` environment <
//! command-line flags. `config/berth.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::events::EventsConfig;
use crate::mirror::ProxyConfig;
use crate::registry::{LifecycleConfig, QuotaRule};
use crate::storage::s3::{GcsConfig, S3Config};
use crate::traces::TracesConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Distribution's `rootdirectory`: with the filesystem store, files live
    /// under `<data_dir>/docker/registry/v2/`. With S3 it holds only local
    /// state (the robot store by default).
    pub data_dir: PathBuf,
    /// Where the registry's content lives (the `[storage]` table).
    pub storage: StorageConfig,
    pub log_format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `berth=debug`.
    pub log_level: String,
    /// The largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Memory for cached manifests and, separately, small blobs, in bytes each.
    pub cache_bytes: u64,
    /// How long a cached tag or link is trusted before storage is read again,
    /// in milliseconds (bounds staleness after changes by another process).
    pub cache_ttl_ms: u64,
    /// Access control (the `[auth]` table); absent: everyone may do
    /// everything.
    pub auth: Option<AuthConfig>,
    /// PEM certificate chain: with `tls_key`, Berth serves HTTPS (HTTP/1.1
    /// and HTTP/2) instead of plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Garbage collection, retention, immutable tags, tag history, upload
    /// expiry (the `[lifecycle]` table).
    pub lifecycle: LifecycleConfig,
    /// The transport's limits (the `[server]` table): how long a client may
    /// take over each stage it controls, how many connections are served at
    /// once, how long a graceful stop waits.
    pub server: ServerConfig,
    /// Upstream registries mirrored under local prefixes (`[[proxy]]`
    /// entries; none: Berth mirrors nothing).
    pub proxy: Vec<ProxyConfig>,
    /// Prometheus metrics (the `[metrics]` table).
    pub metrics: MetricsConfig,
    /// Request rate and concurrent upload limits (the `[limits]` table).
    pub limits: LimitsConfig,
    /// The audit log (the `[audit]` table).
    pub audit: AuditConfig,
    /// Events for CI/CD (the `[events]` table, `[[events.endpoints]]`).
    pub events: EventsConfig,
    /// Storage quotas per repository pattern (`[[quotas]]` entries).
    pub quotas: Vec<QuotaRule>,
    /// OpenTelemetry traces (the `[traces]` table).
    pub traces: TracesConfig,
    /// The web UI (the `[ui]` table).
    pub ui: UiConfig,
}

/// The `[ui]` table: the web UI served at `/ui/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Whether the UI (its pages and `/ui/api/session`) is served.
    pub enabled: bool,
    /// How long a login in the UI lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for UiConfig {
    fn default() -> UiConfig {
        UiConfig {
            enabled: true,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// The `[audit]` table: one JSON line per change and per refused request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The file lines are appended to (`-`: standard output); absent: no
    /// audit log.
    pub path: Option<PathBuf>,
}

/// The `[limits]` table: what one client may ask for, and how many uploads
/// are received at once. Nothing is limited by default. Over a limit the
/// answer is 429 `TOOMANYREQUESTS` with `Retry-After`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one client (its address; behind
    /// `auth.trusted_proxies`, the one they report) may make to `/v2/` and
    /// the token endpoint, sustained.
    pub requests_per_second: Option<u32>,
    /// Requests a client may make at once above that rate (default: one
    /// second's worth).
    pub burst: Option<u32>,
    /// Blob upload requests (POST, PATCH, PUT of an upload) received at once,
    /// by all clients together.
    pub max_uploads: Option<usize>,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests_per_second == Some(0) {
            return Err("limits.requests_per_second must be at least 1".to_owned());
        }
        if self.burst == Some(0) {
            return Err("limits.burst must be at least 1".to_owned());
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            return Err("limits.burst needs limits.requests_per_second".to_owned());
        }
        if self.max_uploads == Some(0) {
            return Err("limits.max_uploads must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// The `[metrics]` table: `GET /metrics` in Prometheus's text format, on the
/// main listener (like `/healthz`, outside access control), or only on a
/// listener of its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all.
    pub enabled: bool,
    /// A separate plain-HTTP address for `/metrics` (a port the network
    /// keeps internal); the main listener then does not serve it.
    pub listen: Option<SocketAddr>,
    /// How often the store is counted for the `berth_storage_*` gauges
    /// (also soon after the start and after each lifecycle run): a walk of the
    /// store, never one per scrape.
    #[serde(with = "humantime_serde")]
    pub inventory_interval: Duration,
    /// A file holding the token a scrape must send as `Authorization:
    /// Bearer <token>`; absent, anyone who reaches `/metrics` may scrape.
    pub token_file: Option<PathBuf>,
}

fn validate_quotas(quotas: &[QuotaRule]) -> Result<(), String> {
    match quotas
        .iter()
        .find(|q| q.max_bytes.is_none() && q.max_tags.is_none())
    {
        Some(q) => Err(format!(
            "quotas: {} sets neither max_bytes nor max_tags",
            q.repositories
        )),
        None => Ok(()),
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.inventory_interval.is_zero() {
            return Err("metrics.inventory_interval must be more than zero".to_owned());
        }
        Ok(())
    }
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            enabled: true,
            listen: None,
            inventory_interval: Duration::from_secs(3600),
            token_file: None,
        }
    }
}

/// Which store holds the registry's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Files under `data_dir` (Distribution's `filesystem` layout).
    #[default]
    Filesystem,
    /// An S3-compatible bucket (Distribution's `s3` layout), shared by any
    /// number of replicas.
    S3,
    /// A Google Cloud Storage bucket, by the S3 backend's design and keys
    /// (untested: docs/design/s3.md).
    Gcs,
}

/// The `[storage]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The `[storage.s3]` table, used when `backend = "s3"`.
    pub s3: S3Config,
    /// The `[storage.gcs]` table, used when `backend = "gcs"`.
    pub gcs: GcsConfig,
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.backend {
            StorageBackend::Filesystem => Ok(()),
            StorageBackend::S3 => self.s3.validate(),
            StorageBackend::Gcs => self.gcs.validate(),
        }
    }
}

/// The `[server]` table. Every stage of a connection that the client paces
/// has a bound, so that a client cannot hold a connection (a descriptor and
/// a task) by being slow or silent; `serve` enforces them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The TLS handshake, from accept to its end.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A request's head: from the connection's start (or from the first byte
    /// of the next request on a kept-alive HTTP/1.1 connection) until the
    /// head is read whole.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in flight, from the end of its
    /// last response.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Between two pieces of a request body while the handler waits for one
    /// (not while it works, not in total: a slow upload that keeps arriving
    /// is never cut).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A write to the client that cannot progress (its receive window stays
    /// full): a slow reader that keeps reading is never cut.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// On SIGTERM: how long requests in flight may go on; connections with
    /// none are closed at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections served at once; absent: derived from the descriptor limit
    /// (`serve::connection_cap`). At the cap the longest idle connection is
    /// closed for a new one.
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            max_connections: None,
        }
    }
}

impl ServerConfig {
    /// Refuses bounds that would close every connection at once.
    pub fn validate(&self) -> Result<(), String> {
        let timeouts = [
            ("handshake_timeout", self.handshake_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("server.{key} must be more than zero"));
        }
        if self.max_connections == Some(0) {
            return Err("server.max_connections must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Where the TLS certificate chain and its key are: with both configured,
/// Berth serves HTTPS (`serve::tls` builds the acceptor from them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./data"),
            storage: StorageConfig::default(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            max_manifest_bytes: 4 * 1024 * 1024,
            cache_bytes: 16 * 1024 * 1024,
            cache_ttl_ms: 2000,
            auth: None,
            tls_cert: None,
            tls_key: None,
            lifecycle: LifecycleConfig::default(),
            server: ServerConfig::default(),
            proxy: Vec::new(),
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
            audit: AuditConfig::default(),
            events: EventsConfig::default(),
            quotas: Vec::new(),
            traces: TracesConfig::default(),
            ui: UiConfig::default(),
        }
    }
}

impl Config {
    /// Reads a config file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .lifecycle
            .validate()
            .and_then(|()| config.server.validate())
            .and_then(|()| config.storage.validate())
            .and_then(|()| ProxyConfig::validate_all(&config.proxy))
            .and_then(|()| config.metrics.validate())
            .and_then(|()| config.limits.validate())
            .and_then(|()| config.events.validate())
            .and_then(|()| validate_quotas(&config.quotas))
            .and_then(|()| config.traces.validate())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// The TLS settings, when both halves are configured; one without the
    /// other is an error. Only paths: `serve::tls` reads and checks the files.
    pub fn tls(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err("tls_cert and tls_key must be given together".to_owned()),
        }
    }

    /// The directory the storage keys are relative to.
    pub fn storage_root(&self) -> PathBuf {
        self.data_dir.join("docker/registry/v2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_example_parses_as_replicas_over_s3_with_a_shared_signing_key() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/berth.toml");
        let config = Config::from_file(&example).unwrap();
        assert_eq!(config.storage.backend, StorageBackend::S3);
        assert!(!config.storage.s3.bucket.is_empty());
        let auth = config.auth.expect("auth on");
        assert!(
            auth.signing_key.is_some(),
            "replicas must share the token key"
        );
    }

    #[test]
    fn the_kubernetes_filesystem_example_keeps_its_data_on_the_volume_claim() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/filesystem/berth.toml");
        let config = Config::from_file(&example).unwrap();
        assert_eq!(config.storage.backend, StorageBackend::Filesystem);
        // Where berth.yaml mounts the claim, and reachable from the Service.
        assert_eq!(config.data_dir, Path::new("/var/lib/berth"));
        assert_eq!(config.listen.port(), 5000);
        assert!(config.listen.ip().is_unspecified());
    }

    #[test]
    fn the_documented_example_parses_and_unknown_keys_are_refused() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/berth.toml");
        let config = Config::from_file(&example).unwrap();
        assert_eq!(config.listen, Config::default().listen);
        assert!(toml::from_str::<Config>("listn = \"x\"").is_err());
        assert!(config.auth.is_none(), "auth is off by default");
        assert_eq!(
            config.server,
            ServerConfig::default(),
            "the documented defaults"
        );
        assert!(toml::from_str::<Config>("[server]\nidle_timout = \"1s\"").is_err());
        let zero: Config = toml::from_str("[server]\nheader_timeout = \"0s\"").unwrap();
        assert!(zero.server.validate().is_err());
        assert_eq!(
            config.storage,
            StorageConfig::default(),
            "the documented defaults"
        );
    }

    #[test]
    fn a_gcs_bucket_is_configured_by_its_own_table_and_checked_like_s3() {
        let config: Config = toml::from_str(
            "[storage]\nbackend = \"gcs\"\n[storage.gcs]\nbucket = \"images\"\nprefix = \"team\"",
        )
        .unwrap();
        assert_eq!(config.storage.backend, StorageBackend::Gcs);
        assert_eq!(config.storage.gcs.bucket, "images");
        assert_eq!(config.storage.gcs.part_size, 8 * 1024 * 1024);
        assert_eq!(config.storage.validate(), Ok(()));
        let missing: Config = toml::from_str("[storage]\nbackend = \"gcs\"").unwrap();
        assert_eq!(
            missing.storage.validate(),
            Err("storage.gcs.bucket is required".to_owned())
        );
        let small: Config = toml::from_str(
            "[storage]\nbackend = \"gcs\"\n[storage.gcs]\nbucket = \"b\"\npart_size = 1024",
        )
        .unwrap();
        assert!(small
            .storage
            .validate()
            .unwrap_err()
            .starts_with("storage.gcs.part_size"));
        assert!(toml::from_str::<Config>("[storage.gcs]\nendpoint = \"x\"").is_err());
    }

    /// The `[lifecycle]` rules and `gc_interval` are commented out in
    /// config/berth.toml; uncommented, they must parse and mean what the
    /// comments say.
    #[test]
    fn the_commented_lifecycle_examples_parse() {
        let example = include_str!("../config/berth.toml");
        let lifecycle: String = example
            .lines()
            .skip_while(|l| *l != "[lifecycle]")
            .take_while(|l| !l.starts_with("# ----"))
            .map(|l| match l.strip_prefix("# ") {
                // Commented keys and tables, not the prose around them.
                Some(code) if code.starts_with("[[") || code.contains(" = ") => code,
                Some(_) => "",
                None if l.starts_with('#') => "",
                None => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let config: Config =
            toml::from_str(&lifecycle).unwrap_or_else(|e| panic!("{e}\n{lifecycle}"));
        let lifecycle = config.lifecycle;
        assert_eq!(
            lifecycle.gc_interval,
            Some(std::time::Duration::from_secs(6 * 3600))
        );
        assert_eq!(lifecycle.immutable_tags.len(), 1);
        assert_eq!(lifecycle.retention.len(), 2);
        let name = crate::oci::RepositoryName::parse("team/app").unwrap();
        let tag = |t: &str| crate::oci::Tag::parse(t).unwrap();
        assert!(lifecycle.is_immutable(&name, &tag("v1.2")));
        assert!(!lifecycle.is_immutable(&name, &tag("dev-1")));
        let dev = lifecycle.retention_rule(&name, &tag("dev-7")).unwrap();
        assert_eq!(dev.keep_newest, Some(3));
        assert_eq!(
            dev.max_age,
            Some(std::time::Duration::from_secs(7 * 24 * 3600))
        );
    }

    /// The `[auth]` example is commented out in config/berth.toml (auth is
    /// off by default); uncommented, it must parse and validate.
    #[test]
    fn the_commented_auth_example_parses() {
        let example = include_str!("../config/berth.toml");
        let auth_example: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# [auth]"))
            .filter_map(|l| l.strip_prefix("# ").or(l.strip_prefix("#")))
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let config: Config =
            toml::from_str(&auth_example).unwrap_or_else(|e| panic!("{e}\n{auth_example}"));
        let auth = config.auth.expect("the [auth] table");
        auth.validate().unwrap();
        assert_eq!(auth.htpasswd, Some(PathBuf::from("/etc/berth/htpasswd")));
        assert_eq!(auth.rules.len(), 2);
        assert_eq!(auth.challenge, crate::auth::Challenge::Bearer);
        assert!(auth.external.is_some());
        // The [[proxy]] example after it.
        assert_eq!(config.proxy.len(), 1);
        assert_eq!(ProxyConfig::validate_all(&config.proxy), Ok(()));
        assert_eq!(config.proxy[0].tag_ttl, Duration::from_secs(300));
    }
}
