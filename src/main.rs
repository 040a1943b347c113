//! The `berth` command line.

// System calls go through the library's `sys`, the one module allowed `unsafe`.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use berth::auth::htpasswd::UserChange;
use berth::auth::{rfc3339, AuthConfig, Grant, Htpasswd, RobotStore};
use berth::config::{Config, LogFormat, StorageBackend};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An OCI Distribution-spec container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Check a config file and print the effective configuration.
    CheckConfig {
        #[arg(long, env = "BERTH_CONFIG")]
        config: PathBuf,
    },
    /// Manage the users of an htpasswd file (bcrypt).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage robot accounts (credentials for CI, `robot$NAME`).
    #[command(subcommand)]
    Robot(RobotCommand),
    /// A tag's history and rollbacks, on a running registry.
    #[command(subcommand)]
    Tag(berth::client::tag::TagCommand),
    /// Check every blob's digest and every link and manifest reference; with
    /// --repair, move corrupt blobs to quarantine and remove stale temp files.
    /// Read-only without --repair (safe beside a running server).
    Fsck {
        /// Data directory (Distribution's rootdirectory) [default: the config's, else ./data].
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Config file (TOML) naming the store ([storage]).
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        repair: bool,
    },
    /// Apply retention, collect garbage and expire abandoned uploads once,
    /// then print what was removed. Safe while a server uses the data.
    Gc {
        /// Data directory [default: the config's, else ./data].
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Config file (TOML) with the [lifecycle] rules.
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageArgs,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Spare what was written or used this recently, e.g. 1h, 30m
        /// [default: the config's gc_grace_period].
        #[arg(long, value_parser = humantime::parse_duration)]
        grace_period: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user or change its password; the password is read from stdin
    /// (one line). Creates the file if missing.
    Add {
        name: String,
        #[arg(long, env = "BERTH_HTPASSWD")]
        htpasswd: PathBuf,
        /// bcrypt cost (4-31); each step doubles the time a login takes.
        #[arg(long, default_value_t = berth::auth::htpasswd::DEFAULT_COST)]
        cost: u32,
    },
    /// Remove a user.
    Remove {
        name: String,
        #[arg(long, env = "BERTH_HTPASSWD")]
        htpasswd: PathBuf,
    },
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create a robot and print its credentials (shown once, not stored).
    Create {
        name: String,
        /// What it may do: PATTERN:ACTIONS, e.g. 'team-a/*:pull,push'. Repeat
        /// for more.
        #[arg(long = "allow", required = true)]
        grants: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 4w [default: never expires].
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        store: RobotStoreArgs,
    },
    /// List robots (names, grants, dates; never secrets).
    List {
        #[command(flatten)]
        store: RobotStoreArgs,
    },
    /// Delete a robot: its secret stops working at once, running servers
    /// included.
    Revoke {
        name: String,
        #[command(flatten)]
        store: RobotStoreArgs,
    },
}

/// Where the robot store is: `auth.robots` of the config file, else
/// `<data-dir>/berth/robots.json`, as `berth serve` resolves it.
#[derive(clap::Args)]
struct RobotStoreArgs {
    /// Config file (TOML) of the server the robots are for.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: the config's, else ./data].
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl RobotStoreArgs {
    fn open(&self) -> Result<RobotStore, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        let path = config
            .auth
            .unwrap_or_default()
            .robots_path(&config.data_dir);
        RobotStore::open(&path).map_err(|e| e.to_string())
    }
}

/// The store, for every command that opens one (flags override the
/// config file's `[storage]` table).
#[derive(clap::Args)]
struct StorageArgs {
    /// Where content is stored: `filesystem` (under --data-dir) or `s3`
    /// [default: filesystem; s3 when --s3-bucket is given].
    #[arg(long = "storage", env = "BERTH_STORAGE", value_enum)]
    backend: Option<StorageBackend>,
    /// The S3 bucket.
    #[arg(long, env = "BERTH_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// The S3 endpoint URL, for stores other than AWS (Garage, MinIO, Ceph):
    /// path-style requests, and http:// allowed.
    #[arg(long, env = "BERTH_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The S3 region [default: us-east-1].
    #[arg(long, env = "BERTH_S3_REGION")]
    s3_region: Option<String>,
    /// Keys live under <prefix>/docker/registry/v2/ (Distribution's rootdirectory).
    #[arg(long, env = "BERTH_S3_PREFIX")]
    s3_prefix: Option<String>,
}

impl StorageArgs {
    fn apply(&self, config: &mut Config) -> Result<(), String> {
        let s3 = &mut config.storage.s3;
        if let Some(bucket) = &self.s3_bucket {
            s3.bucket = bucket.clone();
            config.storage.backend = StorageBackend::S3;
        }
        if let Some(endpoint) = &self.s3_endpoint {
            s3.endpoint = Some(endpoint.clone());
        }
        if let Some(region) = &self.s3_region {
            s3.region = region.clone();
        }
        if let Some(prefix) = &self.s3_prefix {
            s3.prefix = prefix.clone();
        }
        if let Some(backend) = self.backend {
            config.storage.backend = backend;
        }
        config.storage.validate()
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (TOML); see config/berth.toml.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (Distribution's rootdirectory) [default: ./data].
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter [default: info].
    #[arg(long, env = "BERTH_LOG_LEVEL")]
    log_level: Option<String>,
    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long, env = "BERTH_MAX_MANIFEST_BYTES")]
    max_manifest_bytes: Option<usize>,
    /// Memory for cached manifests and small blobs, bytes each [default: 16777216].
    #[arg(long, env = "BERTH_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// How long cached tags and links are trusted, in ms [default: 2000].
    #[arg(long, env = "BERTH_CACHE_TTL_MS")]
    cache_ttl_ms: Option<u64>,
    /// Turn on authentication with the users in this htpasswd file (bcrypt):
    /// users may pull and push, anonymous clients nothing. With an [auth]
    /// table in the config file, replaces its `htpasswd`.
    #[arg(long, env = "BERTH_HTPASSWD")]
    htpasswd: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "BERTH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "BERTH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
}

impl ServeArgs {
    fn config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
        if let Some(max) = self.max_manifest_bytes {
            config.max_manifest_bytes = max;
        }
        if let Some(bytes) = self.cache_bytes {
            config.cache_bytes = bytes;
        }
        if let Some(ttl) = self.cache_ttl_ms {
            config.cache_ttl_ms = ttl;
        }
        if let Some(htpasswd) = &self.htpasswd {
            config.auth.get_or_insert_with(AuthConfig::default).htpasswd = Some(htpasswd.clone());
        }
        if let Some(cert) = &self.tls_cert {
            config.tls_cert = Some(cert.clone());
        }
        if let Some(key) = &self.tls_key {
            config.tls_key = Some(key.clone());
        }
        self.storage.apply(&mut config)?;
        Ok(config)
    }
}

/// Logs go to stderr through a writer thread, so a request never waits on a
/// terminal or pipe; with `[traces] otlp_endpoint`, spans also go to an OTLP
/// collector (`berth::traces`). The guards flush what is queued when `main`
/// returns.
fn init_logging(
    config: &Config,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    Option<berth::traces::Traces>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, spans) = match berth::traces::Traces::start(&config.traces) {
        Ok(Some((traces, layer))) => {
            // Berth's own spans (`request`, `storage.*`, at debug level).
            let only_berth = tracing_subscriber::filter::Targets::new()
                .with_target("berth", tracing::Level::DEBUG);
            (Some(traces), Some(layer.with_filter(only_berth)))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("berth: {e}; serving without traces");
            (None, None)
        }
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    (guard, traces)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: closing idle connections, finishing in-flight requests");
}

fn main() -> ExitCode {
    berth::bound_allocator_arenas();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::User(command) => user(command),
        Command::Robot(command) => robot(command),
        other => return run_command(other),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user(command: UserCommand) -> Result<(), String> {
    match command {
        UserCommand::Add {
            name,
            htpasswd,
            cost,
        } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("Password for {name} (echoed; pipe it in to hide it): ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the password: {e}"))?;
            let password = line.strip_suffix('\n').unwrap_or(&line);
            let password = password.strip_suffix('\r').unwrap_or(password);
            let change = Htpasswd::add_or_update_user(&htpasswd, &name, password, cost)
                .map_err(|e| e.to_string())?;
            let done = match change {
                UserChange::Added => "added",
                UserChange::Updated => "changed the password of",
            };
            println!("{done} user {name} in {}", htpasswd.display());
            Ok(())
        }
        UserCommand::Remove { name, htpasswd } => {
            match Htpasswd::remove_user(&htpasswd, &name).map_err(|e| e.to_string())? {
                true => {
                    println!("removed user {name} from {}", htpasswd.display());
                    Ok(())
                }
                false => Err(format!("no user {name} in {}", htpasswd.display())),
            }
        }
    }
}

fn robot(command: RobotCommand) -> Result<(), String> {
    match command {
        RobotCommand::Create {
            name,
            grants,
            expires,
            store,
        } => {
            let grants = grants
                .iter()
                .map(|g| Grant::parse(g))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let expires_at = expires
                .map(|e| berth::auth::robots::parse_duration(&e))
                .transpose()
                .map_err(|e| e.to_string())?
                .map(|lifetime| SystemTime::now() + lifetime);
            let store = store.open()?;
            let secret = store
                .create(&name, grants, expires_at)
                .map_err(|e| e.to_string())?;
            println!("username: {}", berth::auth::robots::user_name(&name));
            println!("secret: {}", secret.expose());
            eprintln!("The secret is shown only this once: store it now.");
            Ok(())
        }
        RobotCommand::List { store } => {
            let robots = store.open()?.list().map_err(|e| e.to_string())?;
            let now = SystemTime::now();
            println!("{:<24} {:<22} {:<32} GRANTS", "NAME", "CREATED", "EXPIRES");
            for robot in robots {
                let expires = match robot.expires_at {
                    None => "never".to_owned(),
                    Some(t) if robot.is_expired(now) => format!("{} (expired)", rfc3339(t)),
                    Some(t) => rfc3339(t),
                };
                let grants: Vec<String> = robot.grants.iter().map(Grant::to_string).collect();
                println!(
                    "{:<24} {:<22} {:<32} {}",
                    robot.name,
                    rfc3339(robot.created_at),
                    expires,
                    grants.join(" ")
                );
            }
            Ok(())
        }
        RobotCommand::Revoke { name, store } => {
            store.open()?.revoke(&name).map_err(|e| e.to_string())?;
            println!("revoked robot {name}");
            Ok(())
        }
    }
}

fn run_command(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig { config } => match Config::from_file(&config) {
            Ok(config) => {
                println!("{config:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let _log_guards = init_logging(&config);
            let runtime = berth::runtime().expect("tokio runtime");
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tag(command) => berth::client::tag::main(command),
        Command::Fsck {
            data_dir,
            config,
            storage,
            repair,
        } => {
            let config = config
                .map_or_else(|| Ok(Config::default()), |path| Config::from_file(&path))
                .and_then(|mut config| {
                    if let Some(dir) = data_dir {
                        config.data_dir = dir;
                    }
                    storage.apply(&mut config)?;
                    Ok(config)
                });
            match config {
                Ok(config) => fsck(&config, repair),
                Err(e) => {
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Gc {
            data_dir,
            config,
            storage,
            dry_run,
            grace_period,
        } => {
            let outcome = config
                .map_or_else(|| Ok(Config::default()), |path| Config::from_file(&path))
                .and_then(|mut config| {
                    if let Some(dir) = data_dir {
                        config.data_dir = dir;
                    }
                    storage.apply(&mut config)?;
                    let options = berth::registry::GcOptions {
                        dry_run,
                        grace_period,
                    };
                    let runtime = berth::runtime().map_err(|e| e.to_string())?;
                    runtime
                        .block_on(berth::run_gc(&config, &options))
                        .map_err(|e| e.to_string())
                });
            match outcome {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth gc: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::User(_) | Command::Robot(_) => unreachable!("handled in main"),
    }
}

/// `berth fsck`: one line per finding as it is found, then the summary;
/// failure when a problem remains.
fn fsck(config: &Config, repair: bool) -> ExitCode {
    use berth::registry::lifecycle::fsck;
    use std::io::Write;
    let root = config.storage_root();
    if config.storage.backend == StorageBackend::Filesystem && !root.is_dir() {
        eprintln!("berth: no registry data at {}", root.display());
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let storage = match runtime.block_on(berth::open_storage(config, false)) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("berth: opening the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = fsck::Options {
        repair,
        mirrored: config.proxy.iter().map(|p| p.prefix.clone()).collect(),
        ..fsck::Options::default()
    };
    let stdout = std::io::stdout();
    let mut print = |finding: &fsck::Finding| {
        let _ = writeln!(stdout.lock(), "{finding}");
    };
    match runtime.block_on(fsck::check(storage.as_ref(), &options, &mut print)) {
        Ok(report) => {
            println!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("berth: fsck stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> std::io::Result<()> {
    // Before anything opens descriptors: the soft limit (1,024 under
    // systemd) would otherwise cap connections far below what the hard
    // limit allows.
    if let Err(e) = berth::serve::raise_open_files_limit() {
        tracing::warn!(error = %e, "could not raise the open files limit");
    }
    let tls = berth::tls_acceptor_config(&config)?;
    let berth::App { api: app, metrics } = berth::build_app(&config).await?;
    if let (Some(metrics), Some(listen)) = (metrics, config.metrics.listen) {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(listen = %listener.local_addr()?, "serving /metrics");
        // Ends with the process.
        drop(berth::spawn_metrics_server(listener, metrics));
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        auth = if config.auth.is_some() { "on" } else { "off" },
        tls = if tls.is_some() { "on" } else { "off" },
        version = env!("CARGO_PKG_VERSION"),
        "berth is serving"
    );
    berth::serve::run(listener, app, tls, &config.server, shutdown_signal()).await
}
