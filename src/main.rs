//! The `berth` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::auth::AuthConfig;
use berth::config::{Config, LogFormat};

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
        Ok(config)
    }
}

/// Logs go to stderr through a writer thread, so a request never waits on a
/// terminal or pipe. The guard flushes what is queued when `main` returns.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
            let _log_guard = init_logging(&config);
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(config: Config) -> std::io::Result<()> {
    let app = berth::build_app(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        auth = if config.auth.is_some() { "on" } else { "off" },
        version = env!("CARGO_PKG_VERSION"),
        "berth is serving"
    );
    berth::serve(listener, app, shutdown_signal()).await
}
