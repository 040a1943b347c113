//! Berth against CNCF Distribution (Debian's `docker-registry`), side by side on this machine.
//!
//! `cargo bench --bench compare` (3 rounds, 512 MiB blobs, 10 s wrk runs) or
//! `cargo bench --bench compare -- --quick` (1 round, smaller sizes: what CI runs). `--rounds N`
//! overrides the number of rounds, `--only GROUP,…` runs some workload groups.
//! `BERTH_BIN` and `DISTRIBUTION_BIN` override the two server binaries.
//!
//! `--storage s3` (with `--quick`, `--rounds` and `--only` as above) runs both registries on one
//! Garage node started for the run by tests/garage.sh: Berth with its `--s3-*` flags, Distribution
//! with its `s3` driver, each under its own prefix of the same bucket, and Garage's own PUT and GET
//! throughput (object_store, the client library Berth uses) as the limit. Its workloads, the pull
//! storm over two replicas of each and the garbage collection over a large bucket live in
//! `compare/s3.rs`; a complete full run writes docs/benchmarks/s3-latest.{json,md} and the
//! README's `<!-- bench-s3:begin -->` block.
//!
//! Fairness (docs/design/benchmark.md): Distribution runs in its standard configuration
//! (Debian's config.yml); the order of the two alternates per round; before every timed run the
//! disk settles (Berth's journal checkpoint has passed, `sync`, dirty pages written back); the
//! machine limits a row is held against are measured on the same random bytes and with the
//! same durability as the workload.
//!
//! A complete full run writes docs/benchmarks/latest.json and latest.md and rewrites the table
//! between the README's `<!-- bench:begin -->` and `<!-- bench:end -->` markers; `--quick` and
//! `--only` runs write under target/bench/ instead, so CI never dirties the tree. Any protocol
//! failure (a wrong status, a short pull, wrk errors) exits non-zero; the timings themselves
//! never do. Each row is also printed as one `BENCH key=value …` line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, RequestBuilder, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;
type R<T> = Result<T, Error>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*).into()) };
}

// After `bail!`, which it uses.
#[path = "compare/s3.rs"]
mod s3;

#[path = "compare/mirror.rs"]
mod mirror;

#[path = "compare/proxy.rs"]
mod proxy;

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ACCEPT_MANIFESTS: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const OCTET: &str = "application/octet-stream";

// ---------------------------------------------------------------------------------------------
// Options

/// Where both registries keep their data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Storage {
    /// Fresh directories on this machine's disk.
    Filesystem,
    /// One Garage node on loopback, a prefix of its bucket each.
    S3,
}

struct Opts {
    quick: bool,
    storage: Storage,
    rounds: usize,
    big: usize,
    chunk: usize,
    pull_conns: usize,
    pull_blob: usize,
    layers: usize,
    layer_size: usize,
    layer_par: usize,
    wrk_secs: u64,
    wrk_threads: usize,
    wrk_conns: usize,
    tags: usize,
    tag_conc: usize,
    page: usize,
    loopback: usize,
    loopback_conns: usize,
    /// Growth: new repositories (one tagged image each), then tags pushed into one repository.
    growth_repos: usize,
    growth_tags: usize,
    /// Catalog page size (`/v2/_catalog?n=`).
    catalog_page: usize,
    /// Workload groups to run (all when `None`): a quick look at one change.
    only: Option<Vec<String>>,
    openssl_secs: u32,
    sha_bytes: usize,
    /// S3 mode: the pull storm (`storm_pulls` concurrent pulls of one new `storm_blob`-byte
    /// blob, spread over two replicas of each registry).
    storm_pulls: usize,
    storm_blob: usize,
    /// Filesystem mode, group `mirror`: an image of `mirror_layers` layers of `mirror_layer`
    /// bytes pulled through each mirror, and `mirror_storm_pulls` concurrent pulls of one new
    /// `mirror_storm_blob`-byte blob.
    mirror_layers: usize,
    mirror_layer: usize,
    mirror_storm_pulls: usize,
    mirror_storm_blob: usize,
    /// S3 mode: the bucket a collection runs over: `gc_repos` repositories of one tagged image
    /// (`gc_layers` layers and a config) and `gc_orphans` unreferenced blobs each.
    gc_repos: usize,
    gc_layers: usize,
    gc_orphans: usize,
}

/// Workload groups `--only` can pick, per storage.
const GROUPS: &[&str] = &["blobs", "image", "wrk", "tags", "growth", "auth", "mirror"];
const S3_GROUPS: &[&str] = &["blobs", "image", "wrk", "tags", "storm", "gc"];

impl Opts {
    fn parse() -> R<Opts> {
        let mut quick = false;
        let mut storage = Storage::Filesystem;
        let mut rounds = None;
        let mut only: Option<Vec<String>> = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--storage" => {
                    storage = match args.next().as_deref() {
                        Some("filesystem") => Storage::Filesystem,
                        Some("s3") => Storage::S3,
                        other => bail!("--storage is filesystem or s3, not {other:?}"),
                    };
                }
                "--rounds" => {
                    let n: usize = args.next().ok_or("--rounds needs a number")?.parse()?;
                    if n == 0 {
                        bail!("--rounds must be at least 1");
                    }
                    rounds = Some(n);
                }
                "--only" => {
                    let list = args.next().ok_or("--only needs a list")?;
                    only = Some(list.split(',').map(str::to_owned).collect());
                }
                "--bench" => {} // added by `cargo bench`
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench compare [-- [--quick] [--rounds N] [--only {}]]\n       cargo bench --bench compare -- --storage s3 [--quick] [--rounds N] [--only {}]",
                        GROUPS.join(","),
                        S3_GROUPS.join(",")
                    );
                    std::process::exit(0);
                }
                other if other.starts_with('-') => bail!("unknown option {other} (try --help)"),
                _ => {} // a `cargo bench` name filter: there is only one benchmark
            }
        }
        // Checked once the storage is known (the option may come in any order).
        let groups = match storage {
            Storage::Filesystem => GROUPS,
            Storage::S3 => S3_GROUPS,
        };
        if let Some(g) = only
            .iter()
            .flatten()
            .find(|g| !groups.contains(&g.as_str()))
        {
            bail!(
                "unknown workload group {g} for --storage {} (groups: {})",
                storage.name(),
                groups.join(",")
            );
        }
        let q =
            |quick_value: usize, full_value: usize| if quick { quick_value } else { full_value };
        Ok(Opts {
            only,
            quick,
            storage,
            rounds: rounds.unwrap_or(q(1, 3)),
            big: q(64, 512) * MIB,
            chunk: 16 * MIB,
            pull_conns: 16,
            pull_blob: q(16, 64) * MIB,
            layers: 200,
            layer_size: 4096,
            layer_par: 8,
            wrk_secs: q(2, 10) as u64,
            wrk_threads: 2,
            wrk_conns: 32,
            tags: q(300, 3000),
            tag_conc: 8,
            page: 100,
            loopback: q(512, 2048) * MIB,
            loopback_conns: 16,
            growth_repos: q(300, 3000),
            growth_tags: q(1000, 20_000),
            catalog_page: q(100, 1000),
            openssl_secs: q(1, 3) as u32,
            sha_bytes: q(64, 512) * MIB,
            storm_pulls: 64,
            storm_blob: q(16, 64) * MIB,
            mirror_layers: 4,
            mirror_layer: q(4, 25) * MIB,
            mirror_storm_pulls: 32,
            mirror_storm_blob: q(16, 64) * MIB,
            // 14 objects a repository (below): over 50,000 objects in a full run.
            gc_repos: q(300, 3600),
            gc_layers: 3,
            gc_orphans: 2,
        })
    }

    /// The workload groups of this storage mode.
    fn groups(&self) -> &'static [&'static str] {
        match self.storage {
            Storage::Filesystem => GROUPS,
            Storage::S3 => S3_GROUPS,
        }
    }

    /// The results are kept in the repository (and the README's table rewritten) only by a
    /// complete full run; anything else writes under target/ so that CI never dirties the tree.
    fn publishes(&self) -> bool {
        !self.quick && self.only.is_none()
    }
}

impl Opts {
    /// The command that produced a run of these options' kind (what the report names).
    fn command(&self) -> &'static str {
        match self.storage {
            Storage::Filesystem => "cargo bench --bench compare",
            Storage::S3 => "cargo bench --bench compare -- --storage s3",
        }
    }
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::Filesystem => "filesystem",
            Storage::S3 => "s3",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// splitmix64: fast enough that generating 512 MiB takes well under a second.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(nanos ^ (u64::from(std::process::id()) << 32))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
        buf
    }
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One large random buffer, generated and hashed once. Each push sends a *variant*: the same
/// bytes with the last 8 replaced by a counter, so every push is a new blob (no dedup) while
/// its digest costs only an 8-byte update of the saved prefix hash.
struct Big {
    head: Bytes,
    prefix: Sha256,
}

impl Big {
    fn new(size: usize, rng: &mut Rng) -> Big {
        let data = Bytes::from(rng.bytes(size));
        let head = data.slice(..size - 8);
        let mut prefix = Sha256::new();
        prefix.update(&head);
        Big { head, prefix }
    }

    fn variant(&self, k: u64) -> Blob {
        let tail = Bytes::copy_from_slice(&(k ^ 0xB1B1_0000_0000_0000).to_le_bytes());
        let mut hasher = self.prefix.clone();
        hasher.update(&tail);
        Blob {
            head: self.head.clone(),
            tail,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        }
    }

    /// A new blob of `len` bytes (at most the buffer's): its first `len - 8` bytes and a
    /// counter, hashed whole (a smaller blob than the buffer costs a hash of its own).
    fn variant_of(&self, len: usize, k: u64) -> Blob {
        let head = self.head.slice(..len - 8);
        let tail = Bytes::copy_from_slice(&(k ^ 0x5707_0000_0000_0000).to_le_bytes());
        let mut hasher = Sha256::new();
        hasher.update(&head);
        hasher.update(&tail);
        Blob {
            head,
            tail,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        }
    }
}

/// A blob as two zero-copy pieces (`head` ++ `tail`) and its digest.
#[derive(Clone)]
struct Blob {
    head: Bytes,
    tail: Bytes,
    digest: String,
}

impl Blob {
    fn whole(data: Bytes) -> Blob {
        let digest = sha256_digest(&data);
        Blob {
            head: data,
            tail: Bytes::new(),
            digest,
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Bytes `start..end` of the blob as slices of the shared buffers (no copies).
    fn pieces(&self, start: usize, end: usize) -> Vec<Bytes> {
        let h = self.head.len();
        let mut out = Vec::with_capacity(2);
        if start < h {
            out.push(self.head.slice(start..end.min(h)));
        }
        if end > h {
            out.push(self.tail.slice(start.max(h) - h..end - h));
        }
        out
    }
}

/// A request body from pieces, and its length (sent as Content-Length, never chunked).
fn body_of(pieces: Vec<Bytes>) -> (reqwest::Body, usize) {
    let len = pieces.iter().map(Bytes::len).sum();
    if pieces.len() == 1 {
        let one = pieces.into_iter().next().expect("one piece");
        (reqwest::Body::from(one), len)
    } else {
        let stream = futures::stream::iter(pieces.into_iter().map(Ok::<Bytes, std::io::Error>));
        (reqwest::Body::wrap_stream(stream), len)
    }
}

fn image_manifest(config: &Blob, layers: &[Blob]) -> Bytes {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": OCI_LAYER, "digest": l.digest, "size": l.len()}))
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.len()},
            "layers": layers,
        }))
        .expect("manifest serializes"),
    )
}

fn config_blob(label: &str) -> Blob {
    let text = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"comment":"{label}"}}"#
    );
    Blob::whole(Bytes::from(text))
}

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Clone)]
struct Reg {
    name: &'static str,
    base: String,
}

struct Server {
    reg: Reg,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    command: String,
}

impl Server {
    /// Starts `cmd`, its output to `log`; `command` is the command line the report quotes
    /// (`cmd` may carry what the report must not: credentials in its environment).
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        command: String,
        port: u16,
        log: PathBuf,
    ) -> R<Server> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting {name} ({command}): {e}"))?;
        Ok(Server {
            reg: Reg {
                name,
                base: format!("http://127.0.0.1:{port}"),
            },
            pid: child.id(),
            child: Some(child),
            log,
            command,
        })
    }

    async fn wait_ready(&mut self, client: &Client) -> R<()> {
        let url = format!("{}/v2/", self.reg.base);
        for _ in 0..300 {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited at start ({status}):\n{}",
                        self.reg.name,
                        self.log_tail()
                    );
                }
            }
            if let Ok(resp) = client.get(&url).send().await {
                // 401: up, with authentication on.
                if matches!(resp.status(), StatusCode::OK | StatusCode::UNAUTHORIZED) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} did not answer {url}:\n{}",
            self.reg.name,
            self.log_tail()
        )
    }

    /// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
    fn status_kib(&self, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    fn status_mib(&self, key: &str) -> R<f64> {
        match self.status_kib(key) {
            Some(kib) => Ok(kib as f64 / 1024.0),
            None => bail!("cannot read {key} of {} (pid {})", self.reg.name, self.pid),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> R<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn berth_binary() -> R<PathBuf> {
    let bin = std::env::var_os("BERTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    if !bin.exists() {
        eprintln!("{} missing: cargo build --release", bin.display());
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "berth"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()?;
        if !status.success() || !bin.exists() {
            bail!("cargo build --release failed ({status})");
        }
    }
    Ok(bin)
}

/// Distribution's standard configuration: Debian's `/etc/docker/registry/config.yml` (the same
/// keys as the upstream image's `config-example.yml`), with the blob descriptor cache in memory,
/// the `nosniff` header and the storage health check, plus htpasswd authentication when
/// `htpasswd` is given. Only the address, the data directory and logging differ: errors and
/// warnings only, no access log, as for Berth (`--log-level warn`), so neither pays for logging.
///
/// On S3 (`DistStore::S3`) the `filesystem` driver becomes the `s3` driver as its documentation
/// configures it for an S3-compatible store (`regionendpoint`, `forcepathstyle`), with redirects
/// off (Berth's default; clients here cannot be sent to the bucket), and `http.secret`, when
/// given, is what its replicas behind one address must share. The credentials appear as
/// `S3_ACCESS_KEY_HIDDEN` and `S3_SECRET_KEY_HIDDEN`, so the text can go into the report; the
/// file Distribution reads has them filled in (`s3::S3Env::fill`).
fn distribution_config(
    store: &DistStore,
    port: u16,
    htpasswd: Option<&Path>,
    secret: Option<&str>,
) -> String {
    let driver = match store {
        DistStore::Dir(root) => format!("  filesystem:\n    rootdirectory: {}\n", root.display()),
        DistStore::S3 {
            endpoint,
            region,
            bucket,
            root,
        } => format!(
            "  s3:
    region: {region}
    regionendpoint: {endpoint}
    forcepathstyle: true
    bucket: {bucket}
    rootdirectory: {root}
    accesskey: {}
    secretkey: {}
  redirect:
    disable: true
",
            s3::ACCESS_KEY_HIDDEN,
            s3::SECRET_KEY_HIDDEN
        ),
    };
    let secret = secret.map_or(String::new(), |s| format!("  secret: {s}\n"));
    let mut yaml = format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
{driver}  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{secret}  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"
    );
    if let Some(file) = htpasswd {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
            file.display()
        ));
    }
    yaml
}

/// Where Distribution keeps its data.
enum DistStore<'a> {
    Dir(&'a Path),
    /// `rootdirectory` `root` in `bucket`, through `endpoint`.
    S3 {
        endpoint: &'a str,
        region: &'a str,
        bucket: &'a str,
        root: &'a str,
    },
}

/// wrk from apt when missing (`apt-get update` only if the plain install fails).
fn ensure_wrk() -> R<()> {
    let present = || {
        Command::new("wrk")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if present() {
        return Ok(());
    }
    let install = || {
        eprintln!("installing wrk: apt-get install -y wrk");
        Command::new("apt-get")
            .args(["install", "-y", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        install();
    }
    if !present() {
        bail!("wrk is missing and `apt-get install -y wrk` did not install it");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Registry protocol (every response checked)

fn abs(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Sends, requires `want`, and reads the (small) body so the connection is reused.
async fn call(req: RequestBuilder, want: StatusCode, what: &str) -> R<(HeaderMap, Bytes)> {
    let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if status != want {
        let text = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
        bail!("{what}: HTTP {status}, want {want}: {text}");
    }
    Ok((headers, body))
}

fn location(reg: &Reg, headers: &HeaderMap, what: &str) -> R<String> {
    match headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        Some(loc) => Ok(abs(&reg.base, loc)),
        None => bail!("{what}: no Location header"),
    }
}

async fn start_upload(c: &Client, reg: &Reg, repo: &str) -> R<String> {
    let url = format!("{}/v2/{repo}/blobs/uploads/", reg.base);
    let (headers, _) = call(
        c.post(url).body(Bytes::new()),
        StatusCode::ACCEPTED,
        "POST upload",
    )
    .await?;
    location(reg, &headers, "POST upload")
}

/// POST, then one PUT ?digest= carrying the whole blob.
async fn push_monolithic(c: &Client, reg: &Reg, repo: &str, blob: &Blob) -> R<()> {
    let loc = start_upload(c, reg, repo).await?;
    let (body, len) = body_of(blob.pieces(0, blob.len()));
    let req = c
        .put(with_query(&loc, &format!("digest={}", blob.digest)))
        .header(header::CONTENT_TYPE, OCTET)
        .header(header::CONTENT_LENGTH, len)
        .body(body);
    call(req, StatusCode::CREATED, "monolithic PUT").await?;
    Ok(())
}

/// POST, PATCHes of `chunk` bytes with Content-Range, then PUT ?digest= without a body.
async fn push_chunked(c: &Client, reg: &Reg, repo: &str, blob: &Blob, chunk: usize) -> R<()> {
    let mut loc = start_upload(c, reg, repo).await?;
    let mut start = 0;
    while start < blob.len() {
        let end = (start + chunk).min(blob.len());
        let (body, len) = body_of(blob.pieces(start, end));
        let req = c
            .patch(&loc)
            .header(header::CONTENT_TYPE, OCTET)
            .header(header::CONTENT_RANGE, format!("{start}-{}", end - 1))
            .header(header::CONTENT_LENGTH, len)
            .body(body);
        let (headers, _) = call(req, StatusCode::ACCEPTED, "PATCH chunk").await?;
        loc = location(reg, &headers, "PATCH chunk")?;
        start = end;
    }
    let req = c
        .put(with_query(&loc, &format!("digest={}", blob.digest)))
        .body(Bytes::new());
    call(req, StatusCode::CREATED, "final PUT").await?;
    Ok(())
}

/// GET a blob, streaming and counting the bytes (no hashing on the client).
async fn pull_count(c: &Client, reg: &Reg, repo: &str, blob: &Blob) -> R<()> {
    let url = format!("{}/v2/{repo}/blobs/{}", reg.base, blob.digest);
    let what = |e: reqwest::Error| format!("{}: GET blob {}: {e:?}", reg.name, blob.digest);
    let mut resp = c.get(&url).send().await.map_err(what)?;
    if resp.status() != StatusCode::OK {
        bail!("{}: GET blob: HTTP {}", reg.name, resp.status());
    }
    let mut got = 0usize;
    while let Some(chunk) = resp.chunk().await.map_err(what)? {
        got += chunk.len();
    }
    if got != blob.len() {
        bail!("GET blob {}: {got} bytes, want {}", blob.digest, blob.len());
    }
    Ok(())
}

/// GET a blob with a bare HTTP/1.1 request on a new connection, reading with 1 MiB buffers and
/// counting bytes: the receiver of the loopback limit, so that the two compare the servers and not
/// two clients' costs.
async fn pull_bare(reg: &Reg, repo: &str, blob: &Blob) -> R<()> {
    let host = reg.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(host).await?;
    sock.set_nodelay(true)?;
    let request = format!(
        "GET /v2/{repo}/blobs/{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        blob.digest
    );
    sock.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; MIB];
    let mut head = Vec::new();
    let (status, length, mut got) = loop {
        let k = sock.read(&mut buf).await?;
        if k == 0 {
            bail!("{}: connection closed before the response head", reg.name);
        }
        head.extend_from_slice(&buf[..k]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let status = text.split(' ').nth(1).unwrap_or("").to_owned();
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            break (status, length, head.len() - end - 4);
        }
        if head.len() > 64 * 1024 {
            bail!("{}: response head over 64 KiB", reg.name);
        }
    };
    if status != "200" || length != Some(blob.len()) {
        bail!(
            "{}: GET blob answered {status} with content-length {length:?}",
            reg.name
        );
    }
    loop {
        let k = sock.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    if got != blob.len() {
        bail!(
            "{}: GET blob {}: {got} bytes, want {}",
            reg.name,
            blob.digest,
            blob.len()
        );
    }
    Ok(())
}

async fn put_manifest(c: &Client, reg: &Reg, repo: &str, reference: &str, body: Bytes) -> R<()> {
    let req = c
        .put(format!("{}/v2/{repo}/manifests/{reference}", reg.base))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(body);
    call(req, StatusCode::CREATED, "PUT manifest").await?;
    Ok(())
}

/// Runs `job(i)` for i in 0..n with `conc` in flight; returns the wall time and each job's time.
async fn run_pool<F, Fut>(n: usize, conc: usize, job: F) -> R<(f64, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R<()>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc.min(n) {
        let (job, next, times) = (job.clone(), next.clone(), times.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), Error>(());
                }
                let t = Instant::now();
                job(i).await?;
                times.lock().expect("times").push(t.elapsed().as_secs_f64());
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let wall = start.elapsed().as_secs_f64();
    let times = std::mem::take(&mut *times.lock().expect("times"));
    Ok((wall, times))
}

// ---------------------------------------------------------------------------------------------
// wrk

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// Requests that took longer than `WRK_TIMEOUT_SECS`.
    timeouts: u64,
}

/// wrk's arguments; `headers` are whole header lines (`Accept: …`, `Authorization: …`).
/// A request slower than this is a timeout, which fails the run: well above any latency either
/// registry shows, yet an htpasswd check queued behind 32 bcrypt verifications on a busy
/// 2-core machine stays under it (wrk's default of 2 s does not).
const WRK_TIMEOUT_SECS: u64 = 10;

fn wrk_args(o: &Opts, secs: u64, url: &str, headers: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("-t{}", o.wrk_threads),
        format!("-c{}", o.wrk_conns),
        format!("-d{secs}s"),
        format!("--timeout={WRK_TIMEOUT_SECS}s"),
        "--latency".to_owned(),
    ];
    for h in headers {
        args.push("-H".to_owned());
        args.push(h.clone());
    }
    args.push(url.to_owned());
    args
}

/// A wrk command line as a shell would take it, with each credential replaced by `hidden`
/// (the report is kept in the repository; a token or password never goes there).
fn wrk_command_text(args: &[String], hidden: &str) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let a = match a.strip_prefix("Authorization: ") {
                Some(v) => format!(
                    "Authorization: {} {hidden}",
                    v.split(' ').next().unwrap_or("")
                ),
                None => a.clone(),
            };
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    format!("wrk {}", quoted.join(" "))
}

/// wrk's durations: `123.45us`, `1.20ms`, `2.00s`, `1.00m`.
fn wrk_ms(text: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1e3)
    } else if let Some(v) = text.strip_suffix('m') {
        (v, 60e3)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * scale)
}

async fn run_wrk(o: &Opts, secs: u64, url: &str, headers: &[String]) -> R<WrkResult> {
    let args = wrk_args(o, secs, url, headers);
    let out = tokio::process::Command::new("wrk")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fail = |why: &str| -> Error {
        format!(
            "{}: {why}\n{text}{}",
            wrk_command_text(&args, "…"),
            String::from_utf8_lossy(&out.stderr)
        )
        .into()
    };
    if !out.status.success() {
        return Err(fail(&format!("exit status {}", out.status)));
    }
    if text.contains("Non-2xx or 3xx responses") {
        return Err(fail("non-2xx responses"));
    }
    // `Socket errors: connect 0, read 0, write 0, timeout 3`. Connection failures are failures;
    // a timeout is a request slower than WRK_TIMEOUT_SECS, which is a measurement (counted
    // and reported), not a wrong answer.
    let mut timeouts = 0;
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        let count = |key: &str| {
            line.split(',')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("Socket errors:")
                        .trim()
                        .strip_prefix(key)
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match (
            count("connect"),
            count("read"),
            count("write"),
            count("timeout"),
        ) {
            (Some(0), Some(0), Some(0), Some(t)) => timeouts = t,
            _ => return Err(fail("socket errors")),
        }
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse::<f64>().ok());
    let p50 = field("50%").and_then(wrk_ms);
    let p99 = field("99%").and_then(wrk_ms);
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
    match (rps, p50, p99, requests) {
        // No request finished within the run: every one took longer than the run (Distribution's
        // bcrypt check on every request, on a busy machine). The rate is 0 and there is no
        // latency to report; the caller notes it. The answers were checked before the run.
        (Some(_), _, _, Some(0)) => Ok(WrkResult {
            rps: 0.0,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            requests: 0,
            timeouts,
        }),
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(WrkResult {
            rps,
            p50_ms,
            p99_ms,
            requests,
            timeouts,
        }),
        _ => Err(fail("cannot parse the output")),
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Throughput or rate: higher is better, ratio Berth/Distribution.
    Higher,
    /// Time: lower is better, shown as "N× faster/slower".
    Time,
    /// Memory: lower is better, ratio Berth/Distribution.
    Memory,
    /// A count of requests or bytes: fewer is better, ratio Berth/Distribution.
    Fewer,
}

struct Row {
    id: String,
    label: String,
    unit: &'static str,
    kind: Kind,
    vals: [Vec<f64>; 2],
    /// Why a registry has no value, when it cannot run the workload.
    missing: Option<&'static str>,
}

impl Row {
    fn medians(&self) -> [f64; 2] {
        [median(&self.vals[0]), median(&self.vals[1])]
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn add(&mut self, id: &str, label: &str, unit: &'static str, kind: Kind) -> usize {
        self.rows.push(Row {
            id: id.to_owned(),
            label: label.to_owned(),
            unit,
            kind,
            vals: [Vec::new(), Vec::new()],
            missing: None,
        });
        self.rows.len() - 1
    }

    fn push(&mut self, row: usize, reg: usize, value: f64) {
        let r = &mut self.rows[row];
        r.vals[reg].push(value);
        let name = ["berth", "distribution"][reg];
        eprintln!("  {:<34} {name:<12} {} {}", r.label, fmt_num(value), r.unit);
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A number for people: no decimals from 1,000 up (with thousands separators), three
/// significant digits below.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (k, c) in digits.chars().enumerate() {
            if k > 0 && (digits.len() - k) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio_text(kind: Kind, berth: f64, dist: f64) -> String {
    if !(berth.is_finite() && dist.is_finite()) || berth <= 0.0 || dist <= 0.0 {
        return "n/a".to_owned();
    }
    let times = |r: f64| {
        if r >= 100.0 {
            format!("{}×", fmt_num(r))
        } else if r >= 10.0 {
            format!("{r:.1}×")
        } else {
            format!("{r:.2}×")
        }
    };
    match kind {
        Kind::Higher | Kind::Memory | Kind::Fewer => times(berth / dist),
        Kind::Time => {
            let speedup = dist / berth;
            if speedup >= 1.0 {
                format!("{} faster", times(speedup))
            } else {
                format!("{} slower", times(1.0 / speedup))
            }
        }
    }
}

/// A markdown table; the first column left-aligned, the others right-aligned, padded so that it
/// also reads as plain text.
fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    markdown_table_aligned(headers, rows, headers.len())
}

/// A markdown table whose columns from `text_from` on are left-aligned text.
fn markdown_table_aligned(headers: &[&str], rows: &[Vec<String>], text_from: usize) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let fill = " ".repeat(w[i] - c.chars().count());
            if i == 0 || i >= text_from {
                out.push_str(&format!(" {c}{fill} |"));
            } else {
                out.push_str(&format!(" {fill}{c} |"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    out.push('|');
    for (i, width) in w.iter().enumerate() {
        if i == 0 || i >= text_from {
            out.push_str(&format!("{}|", "-".repeat(width + 2)));
        } else {
            out.push_str(&format!("{}:|", "-".repeat(width + 1)));
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn join_vals(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.4}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn latency_summary(times: &[f64]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|t| t * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

// ---------------------------------------------------------------------------------------------
// Machine limits

struct Limit {
    id: &'static str,
    label: String,
    value: f64,
    runs: Vec<f64>,
    unit: &'static str,
    /// What it measures, in one sentence (the workload it bounds and how).
    method: String,
}

fn openssl_sha256(o: &Opts) -> R<f64> {
    let secs = o.openssl_secs.to_string();
    let out = Command::new("openssl")
        .args([
            "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", &secs,
        ])
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line is `sha256   1803155.46k` (thousands of bytes per second, 16384-byte blocks).
    let value = text.lines().rev().find_map(|l| {
        let mut it = l.split_whitespace();
        let name = it.next()?;
        let last = it.last()?;
        (name.eq_ignore_ascii_case("sha256")).then_some(())?;
        last.strip_suffix('k')?.parse::<f64>().ok()
    });
    match value {
        Some(k) if out.status.success() => Ok(k / 1000.0),
        _ => bail!("cannot parse `openssl speed` output:\n{text}"),
    }
}

/// Writes `blob` (random bytes, as pushed) to a new file in 16 MiB `write()`s, the way a push
/// lands in an upload file. With `durable`, then the file operations Berth's blob commit does
/// (`FsStorage::commit_upload`): fsync the file, rename it into place, fsync the directory.
/// Without, nothing is synced: what a registry that never fsyncs (Distribution) waits for.
/// MB/s over the whole sequence.
fn write_blob_file(dir: &Path, blob: &Blob, durable: bool) -> R<f64> {
    use std::io::Write as _;
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let placed = dir.join(format!("write-test-{run}"));
    std::fs::create_dir_all(&placed)?;
    let temp = dir.join(format!("write-test-{run}.tmp"));
    let start = Instant::now();
    let mut file = std::fs::File::create(&temp)?;
    for piece in blob.pieces(0, blob.len()) {
        for part in piece.chunks(16 * MIB) {
            file.write_all(part)?;
        }
    }
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temp, placed.join("data"))?;
    if durable {
        std::fs::File::open(&placed)?.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&placed)?;
    Ok(blob.len() as f64 / secs / 1e6)
}

/// `total` bytes of the benchmark's random data over `conns` loopback TCP connections with
/// 1 MiB writes and reads; MB/s at the receiver.
async fn loopback(data: Bytes, total: usize, conns: usize) -> R<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let per = total / conns;
    let receiver = tokio::spawn(async move {
        let mut readers = Vec::new();
        for _ in 0..conns {
            let (mut sock, _) = listener.accept().await?;
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MIB];
                let mut n = 0usize;
                loop {
                    let k = sock.read(&mut buf).await?;
                    if k == 0 {
                        return Ok::<usize, std::io::Error>(n);
                    }
                    n += k;
                }
            }));
        }
        let mut sum = 0;
        for r in readers {
            sum += r.await.map_err(std::io::Error::other)??;
        }
        Ok::<usize, std::io::Error>(sum)
    });
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..conns {
        let data = data.clone();
        senders.push(tokio::spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let mut left = per;
            let mut at = 0;
            while left > 0 {
                let k = left.min(MIB).min(data.len() - at);
                sock.write_all(&data[at..at + k]).await?;
                left -= k;
                at = if at + k == data.len() { 0 } else { at + k };
            }
            sock.shutdown().await?;
            Ok::<(), std::io::Error>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let got = receiver.await??;
    let secs = start.elapsed().as_secs_f64();
    if got != per * conns {
        bail!("loopback: received {got} bytes, sent {}", per * conns);
    }
    Ok(got as f64 / secs / 1e6)
}

/// Berth's journal checkpoint (a `syncfs`) runs about 1 s after its last write
/// (`journal::Tuning::checkpoint_after`); waiting this long after its last write lets it finish
/// before the next timed run instead of inside it.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(1500);
/// "Writeback is done" once Dirty + Writeback in /proc/meminfo is at most this.
const SETTLED_DIRTY_KIB: u64 = 8 * 1024;
/// Give up waiting after this (the machine is busy with something else); counted and reported.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Keeps one registry's deferred disk work out of the next timed run (point 10 of issue 11):
/// before every timed run, wait until `CHECKPOINT_WAIT` has passed since Berth's last write,
/// `sync`, then wait until the kernel's dirty and writeback pages are few.
/// Distribution never syncs, so without this its pushes' writeback lands in the next run's
/// time; Berth's checkpoint would land in Distribution's.
struct Settler {
    /// Berth's last write.
    last_write: Instant,
    /// How long after it to wait: `CHECKPOINT_WAIT`, or nothing in quick mode, whose timings
    /// are not judged (it still syncs and waits for writeback, so the path is exercised).
    checkpoint_wait: Duration,
    settles: usize,
    timeouts: usize,
    waited: Duration,
}

impl Settler {
    fn new(checkpoint_wait: Duration) -> Settler {
        Settler {
            last_write: Instant::now(),
            checkpoint_wait,
            settles: 0,
            timeouts: 0,
            waited: Duration::ZERO,
        }
    }

    /// A workload wrote to registry `i` just now. Only Berth's writes start a checkpoint to
    /// wait out; the writeback of anyone's writes is waited for by `sync` and the dirty count.
    fn wrote(&mut self, i: usize) {
        if i == 0 {
            self.last_write = Instant::now();
        }
    }

    async fn settle(&mut self) -> R<()> {
        let start = Instant::now();
        let since = self.last_write.elapsed();
        if since < self.checkpoint_wait {
            tokio::time::sleep(self.checkpoint_wait - since).await;
        }
        let status = tokio::process::Command::new("sync").status().await?;
        if !status.success() {
            bail!("sync failed: {status}");
        }
        loop {
            if dirty_kib()? <= SETTLED_DIRTY_KIB {
                break;
            }
            if start.elapsed() > SETTLE_TIMEOUT {
                self.timeouts += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.settles += 1;
        self.waited += start.elapsed();
        Ok(())
    }
}

/// The 1-minute load average (NaN when unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Dirty + Writeback from /proc/meminfo, in KiB.
fn dirty_kib() -> R<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    match (field("Dirty"), field("Writeback")) {
        (Some(d), Some(w)) => Ok(d + w),
        _ => bail!("/proc/meminfo has no Dirty or Writeback"),
    }
}

/// The file operations a durable registry cannot skip when a push creates a tag, and nothing
/// else: make the tag's directory (Distribution's layout, `tags/<tag>/current/`), write its
/// 71-byte link to a temp file, fdatasync it, rename it into place, fsync the directory.
/// `threads` create `n` tags between them; tags per second.
fn durable_tag_floor(dir: &Path, n: usize, threads: usize) -> R<f64> {
    use std::io::Write as _;
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let root = dir.join(format!("tag-floor-{threads}-{run}"));
    let link = format!("sha256:{}", "a".repeat(64));
    let start = Instant::now();
    std::thread::scope(|scope| -> R<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (root, link) = (&root, &link);
                scope.spawn(move || -> std::io::Result<()> {
                    for k in (t..n).step_by(threads) {
                        let current = root.join(format!("tags/t{k:06}/current"));
                        std::fs::create_dir_all(&current)?;
                        let temp = current.join(".tmp");
                        let mut file = std::fs::File::create(&temp)?;
                        file.write_all(link.as_bytes())?;
                        file.sync_data()?;
                        std::fs::rename(&temp, current.join("link"))?;
                        std::fs::File::open(&current)?.sync_all()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "tag floor thread panicked")??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    // Left for the end of the run: ext4 without a journal skips inodes freed in the last
    // minutes when it allocates, scanning for others, which would slow the registries' tag
    // pushes that follow.
    Ok(n as f64 / secs)
}

/// The machine's limits, each measured on the data and with the durability of the workload it
/// bounds, after the registries have stopped, settled like the timed runs.
async fn machine_limits(o: &Opts, dir: &Path, big: &Big, settler: &mut Settler) -> R<Vec<Limit>> {
    let mut out = Vec::new();
    eprintln!("== machine limits");
    settler.settle().await?;
    let v = openssl_sha256(o)?;
    out.push(Limit {
        id: "sha256_openssl",
        label: "SHA-256, one core (openssl, 16 KiB blocks)".to_owned(),
        value: v,
        runs: vec![v],
        unit: "MB/s",
        method: format!(
            "openssl speed -evp sha256 -bytes 16384 -seconds {}",
            o.openssl_secs
        ),
    });
    let n = o.sha_bytes.min(big.head.len());
    let t = Instant::now();
    let digest = Sha256::digest(&big.head[..n]);
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    let v = n as f64 / secs / 1e6;
    out.push(Limit {
        id: "sha256_sha2_crate",
        label: format!(
            "SHA-256, one core (sha2 crate, {:.0} MiB)",
            n as f64 / MIB as f64
        ),
        value: v,
        runs: vec![v],
        unit: "MB/s",
        method: "Sha256::digest over the benchmark's random data, in memory".to_owned(),
    });
    let gib = o.loopback as f64 / (1024.0 * MIB as f64);
    for (id, conns) in [("loopback_tcp_1", 1), ("loopback_tcp_16", o.loopback_conns)] {
        let mut runs = Vec::new();
        for _ in 0..o.rounds {
            runs.push(loopback(big.head.clone(), o.loopback, conns).await?);
        }
        let plural = if conns == 1 { "" } else { "s" };
        out.push(Limit {
            id,
            label: format!("loopback TCP {gib} GiB, {conns} connection{plural}"),
            value: median(&runs),
            runs,
            unit: "MB/s",
            method: "tokio TcpListener and TcpStreams on 127.0.0.1, random bytes, 1 MiB writes and reads, no HTTP".to_owned(),
        });
    }
    let mib = o.big / MIB;
    for (id, durable) in [("blob_write_durable", true), ("blob_write_cached", false)] {
        let mut runs = Vec::new();
        for round in 0..o.rounds {
            settler.settle().await?;
            let blob = big.variant(u64::MAX - round as u64);
            runs.push(write_blob_file(dir, &blob, durable)?);
        }
        let (label, method) = if durable {
            (
                format!("write a {mib} MiB random blob durably"),
                "16 MiB write()s to a new file, fsync, rename into place, fsync the directory: the file operations of Berth's blob commit, on the same random bytes as the pushes",
            )
        } else {
            (
                format!("write a {mib} MiB random blob, no sync"),
                "16 MiB write()s to a new file and a rename, nothing synced: the page cache, which is where a registry that never fsyncs (Distribution) leaves a push",
            )
        };
        out.push(Limit {
            id,
            label,
            value: median(&runs),
            runs,
            unit: "MB/s",
            method: method.to_owned(),
        });
    }
    for (id, threads) in [
        ("durable_tag_floor_c8", o.tag_conc),
        ("durable_tag_floor_c1", 1),
    ] {
        let mut runs = Vec::new();
        for _ in 0..o.rounds {
            settler.settle().await?;
            runs.push(durable_tag_floor(dir, o.tags, threads)?);
        }
        out.push(Limit {
            id,
            label: format!(
                "a new tag's durable file ops only, {threads} thread{}",
                if threads == 1 { "" } else { "s" }
            ),
            value: median(&runs),
            runs,
            unit: "tags/s",
            method: format!("{} tags in Distribution's layout: mkdir -p tags/<tag>/current, write the 71-byte link to a temp file, fdatasync, rename, fsync the directory", o.tags),
        });
    }
    for l in &out {
        eprintln!("  {:<44} {} {}", l.label, fmt_num(l.value), l.unit);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The run

/// The order of the two registries in round `round`: Berth first in even rounds, Distribution
/// first in odd ones, so that neither always runs right after the other's writes.
fn order(round: usize) -> [usize; 2] {
    if round % 2 == 0 {
        [0, 1]
    } else {
        [1, 0]
    }
}

const NAMES: [&str; 2] = ["Berth", "Distribution"];

/// Where the binaries are and how the two servers of a pair are started.
struct Launch {
    berth_bin: PathBuf,
    dist_bin: PathBuf,
    tmp: PathBuf,
    /// The Garage node of an S3 run: both registries keep their data in its bucket.
    s3: Option<s3::S3Env>,
}

/// A started pair and how it was started (the report quotes both).
struct Pair {
    servers: Vec<Server>,
    distribution_yaml: String,
}

impl Launch {
    /// Berth and Distribution on free ports with fresh data directories under `tmp/<label>`
    /// (in an S3 run, `<label>-berth` and `/<label>-distribution` in Garage's bucket, and Berth's
    /// data directory holds only its blob cache); with `htpasswd`, both check the same bcrypt
    /// file.
    async fn start(&self, label: &str, htpasswd: Option<&Path>, client: &Client) -> R<Pair> {
        let dir = self.tmp.join(label);
        let endpoint = self.s3.as_ref().map(|s3| s3.endpoint.clone());
        let berth_prefix = format!("{label}-berth");
        let dist_root = format!("/{label}-distribution");
        let berth = self.berth(
            &dir,
            "berth",
            endpoint.as_deref().map(|e| (e, berth_prefix.as_str())),
            htpasswd,
            None,
        )?;
        let (dist, yaml) = self.distribution(
            &dir,
            "distribution",
            endpoint.as_deref().map(|e| (e, dist_root.as_str())),
            htpasswd,
            None,
            None,
        )?;
        let mut servers = vec![berth, dist];
        for s in &mut servers {
            s.wait_ready(client).await?;
        }
        Ok(Pair {
            servers,
            distribution_yaml: yaml,
        })
    }

    /// Berth on a free port, its data directory `<dir>/<name>-data`, its log `<dir>/<name>.log`;
    /// with `s3` (an endpoint and a prefix), on the bucket of this run's Garage.
    fn berth(
        &self,
        dir: &Path,
        name: &str,
        s3: Option<(&str, &str)>,
        htpasswd: Option<&Path>,
        config: Option<&Path>,
    ) -> R<Server> {
        let port = free_port()?;
        let data = dir.join(format!("{name}-data"));
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(&self.berth_bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--log-level", "warn"]);
        if let Some(file) = config {
            cmd.arg("--config").arg(file);
        }
        if let Some(file) = htpasswd {
            cmd.arg("--htpasswd").arg(file);
        }
        let mut command = format!("{cmd:?}").replace('"', "");
        if let Some((endpoint, prefix)) = s3 {
            let env = self.s3.as_ref().ok_or("an S3 store without Garage")?;
            cmd.args(["--s3-bucket", &env.bucket])
                .args(["--s3-endpoint", endpoint])
                .args(["--s3-region", &env.region])
                .args(["--s3-prefix", prefix]);
            command = format!(
                "AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} {}",
                s3::ACCESS_KEY_HIDDEN,
                s3::SECRET_KEY_HIDDEN,
                format!("{cmd:?}").replace('"', "")
            );
            env.credentials(&mut cmd);
        }
        Server::spawn("berth", cmd, command, port, dir.join(format!("{name}.log")))
    }

    /// Distribution on a free port in its standard configuration, its files `<dir>/<name>*`;
    /// with `s3` (an endpoint and a `rootdirectory`), on the bucket of this run's Garage. Also
    /// the configuration's text, credentials hidden.
    fn distribution(
        &self,
        dir: &Path,
        name: &str,
        s3: Option<(&str, &str)>,
        htpasswd: Option<&Path>,
        secret: Option<&str>,
        proxy: Option<&str>,
    ) -> R<(Server, String)> {
        let port = free_port()?;
        let yml = dir.join(format!("{name}.yml"));
        let data = dir.join(format!("{name}-data"));
        let (mut yaml, mut file) = match s3 {
            None => {
                std::fs::create_dir_all(&data)?;
                let yaml = distribution_config(&DistStore::Dir(&data), port, htpasswd, secret);
                (yaml.clone(), yaml)
            }
            Some((endpoint, root)) => {
                let env = self.s3.as_ref().ok_or("an S3 store without Garage")?;
                let store = DistStore::S3 {
                    endpoint,
                    region: &env.region,
                    bucket: &env.bucket,
                    root,
                };
                let yaml = distribution_config(&store, port, htpasswd, secret);
                let file = env.fill(&yaml);
                (yaml, file)
            }
        };
        // A pull-through cache of `proxy` (Distribution's proxy mode: one upstream, no pushes).
        if let Some(remote) = proxy {
            let section = format!("proxy:\n  remoteurl: {remote}\n");
            yaml.push_str(&section);
            file.push_str(&section);
        }
        std::fs::create_dir_all(dir)?;
        write_private(&yml, &file)?;
        let mut cmd = Command::new(&self.dist_bin);
        cmd.arg("serve").arg(&yml);
        let mut command = format!("{cmd:?}").replace('"', "");
        if s3.is_some() {
            // These machines set AWS_CA_BUNDLE, and Distribution's Go S3 client panics at start
            // when it is set (issue 13); the endpoint is plain http:// anyway.
            cmd.env_remove("AWS_CA_BUNDLE");
            command = format!("env -u AWS_CA_BUNDLE {command}");
        }
        let server = Server::spawn(
            "distribution",
            cmd,
            command,
            port,
            dir.join(format!("{name}.log")),
        )?;
        Ok((server, yaml))
    }
}

/// Writes a file only its owner can read (it may hold credentials).
fn write_private(path: &Path, text: &str) -> R<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

struct Bench {
    o: Opts,
    client: Client,
    servers: Vec<Server>,
    table: Table,
    rng: Rng,
    variants: u64,
    commands: Vec<String>,
    settler: Settler,
    /// The Garage node's process in an S3 run, whose CPU time the notes set beside the
    /// registries'.
    garage_pid: Option<u32>,
    /// CPU seconds each timed big push and pull took, per workload and registry: the
    /// registry's process, and Garage's beside it in an S3 run.
    cpu: BTreeMap<&'static str, [Vec<CpuSpent>; 2]>,
}

/// What one timed run cost: CPU seconds of the registry, of Garage (when there is one) and of
/// this process (the client), and its wall time.
#[derive(Clone, Copy)]
struct CpuSpent {
    registry: f64,
    garage: Option<f64>,
    client: Option<f64>,
    wall: f64,
}

/// CPU seconds used so far by a registry, Garage and this process, and when they were read.
struct CpuMark {
    registry: Option<f64>,
    garage: Option<f64>,
    client: Option<f64>,
    at: Instant,
}

/// CPU seconds (user and system) a process has used so far, from `/proc/PID/stat`; `None` when
/// it cannot be read.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime and
    // stime the 12th and 13th; in clock ticks of USER_HZ, 100 on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

impl Bench {
    /// CPU seconds used so far by registry `i`, by Garage and by this process.
    fn cpu_now(&self, i: usize) -> CpuMark {
        CpuMark {
            registry: cpu_seconds(self.servers[i].pid),
            garage: self.garage_pid.and_then(cpu_seconds),
            client: cpu_seconds(std::process::id()),
            at: Instant::now(),
        }
    }

    /// Records what a timed run of `workload` on registry `i` cost since `before`.
    fn cpu_since(&mut self, workload: &'static str, i: usize, before: CpuMark) {
        let after = self.cpu_now(i);
        let spent = |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| a - b);
        if let Some(registry) = spent(before.registry, after.registry) {
            self.cpu.entry(workload).or_default()[i].push(CpuSpent {
                registry,
                garage: spent(before.garage, after.garage),
                client: spent(before.client, after.client),
                wall: after.at.duration_since(before.at).as_secs_f64(),
            });
        }
    }

    /// One note with the median CPU time of each workload recorded by [`Bench::cpu_since`], and
    /// how many of the machine's cores the registry, Garage and the client kept busy together
    /// (their CPU time over the wall time): near the number of cores, the run was bound by the
    /// CPU, not by a wait.
    fn note_cpu(&mut self) {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut parts = Vec::new();
        for (workload, runs) in &self.cpu {
            let mut sides = Vec::new();
            for (i, name) in NAMES.iter().enumerate() {
                if runs[i].is_empty() {
                    continue;
                }
                let of = |f: &dyn Fn(&CpuSpent) -> Option<f64>| -> Option<f64> {
                    let values: Vec<f64> = runs[i].iter().filter_map(f).collect();
                    (values.len() == runs[i].len()).then(|| median(&values))
                };
                let registry = of(&|r| Some(r.registry)).expect("every run has it");
                let mut side = format!("{name} {registry:.2} s");
                if let Some(garage) = of(&|r| r.garage) {
                    side.push_str(&format!(" (Garage {garage:.2} s"));
                    if let Some(client) = of(&|r| r.client) {
                        side.push_str(&format!(", client {client:.2} s"));
                    }
                    let busy =
                        of(&|r| Some((r.registry + r.garage? + r.client?) / r.wall.max(1e-9)));
                    if let Some(busy) = busy {
                        side.push_str(&format!("; {busy:.2} of {cpus} cores busy"));
                    }
                    side.push(')');
                }
                sides.push(side);
            }
            parts.push(format!("{workload}: {}", sides.join(", ")));
        }
        if !parts.is_empty() {
            self.table.notes.push(format!(
                "CPU time of each timed run, medians of the rounds (the registry's process{}, from /proc/PID/stat): {}",
                if self.garage_pid.is_some() {
                    "; Garage's node and the benchmark's own client beside it, and the cores the three kept busy together: their CPU time over the run's wall time"
                } else {
                    ""
                },
                parts.join("; ")
            ));
        }
    }

    fn regs(&self) -> Vec<Reg> {
        self.servers.iter().map(|s| s.reg.clone()).collect()
    }

    fn next_variant(&mut self, big: &Big) -> Blob {
        self.variants += 1;
        big.variant(self.variants)
    }

    async fn blobs_and_pulls(&mut self, big: &Big) -> R<()> {
        let o = &self.o;
        let size_mib = o.big / MIB;
        let mono = self.table.add(
            &format!("push_monolithic_{size_mib}MiB"),
            &format!("push {size_mib} MiB, monolithic"),
            "MB/s",
            Kind::Higher,
        );
        let chunked = self.table.add(
            &format!("push_chunked_{size_mib}MiB"),
            &format!("push {size_mib} MiB, {} MiB chunks", o.chunk / MIB),
            "MB/s",
            Kind::Higher,
        );
        let pull = self.table.add(
            &format!("pull_{size_mib}MiB"),
            &format!("pull {size_mib} MiB"),
            "MB/s",
            Kind::Higher,
        );
        let rss_after = self.table.add(
            &format!("rss_after_push_{size_mib}MiB"),
            &format!("RSS after {size_mib} MiB pushes (max)"),
            "MiB",
            Kind::Memory,
        );
        let mut max_rss = [0f64; 2];
        // The blob each registry's pull reads, per round.
        let mut pushed: Vec<[Option<(String, Blob)>; 2]> = vec![[None, None]; self.o.rounds];
        eprintln!("== push {size_mib} MiB, monolithic (POST + PUT)");
        for round in 0..self.o.rounds {
            for i in order(round) {
                let blob = self.next_variant(big);
                let repo = format!("bench/mono-r{round}");
                let reg = self.servers[i].reg.clone();
                self.settler.settle().await?;
                let cpu = self.cpu_now(i);
                let t = Instant::now();
                push_monolithic(&self.client, &reg, &repo, &blob).await?;
                let secs = t.elapsed().as_secs_f64();
                self.cpu_since("push monolithic", i, cpu);
                self.settler.wrote(i);
                self.table.push(mono, i, blob.len() as f64 / secs / 1e6);
                max_rss[i] = max_rss[i].max(self.servers[i].status_mib("VmRSS")?);
            }
        }
        eprintln!(
            "== push {size_mib} MiB, chunked (POST, PATCH × {} MiB, PUT)",
            self.o.chunk / MIB
        );
        for (round, slot) in pushed.iter_mut().enumerate() {
            for i in order(round) {
                let blob = self.next_variant(big);
                let repo = format!("bench/chunked-r{round}");
                let reg = self.servers[i].reg.clone();
                self.settler.settle().await?;
                let cpu = self.cpu_now(i);
                let t = Instant::now();
                push_chunked(&self.client, &reg, &repo, &blob, self.o.chunk).await?;
                let secs = t.elapsed().as_secs_f64();
                self.cpu_since("push chunked", i, cpu);
                self.settler.wrote(i);
                self.table.push(chunked, i, blob.len() as f64 / secs / 1e6);
                max_rss[i] = max_rss[i].max(self.servers[i].status_mib("VmRSS")?);
                slot[i] = Some((repo, blob));
            }
        }
        for (i, rss) in max_rss.iter().enumerate() {
            self.table.push(rss_after, i, *rss);
        }
        eprintln!("== pull {size_mib} MiB");
        for (round, slot) in pushed.iter().enumerate() {
            for i in order(round) {
                let (repo, blob) = slot[i].as_ref().expect("pushed");
                self.settler.settle().await?;
                let cpu = self.cpu_now(i);
                let t = Instant::now();
                pull_count(&self.client, &self.servers[i].reg, repo, blob).await?;
                let secs = t.elapsed().as_secs_f64();
                self.cpu_since("pull", i, cpu);
                self.table.push(pull, i, blob.len() as f64 / secs / 1e6);
            }
        }
        self.note_cpu();
        if self.o.storage == Storage::S3 {
            // Repeated concurrent pulls of one blob on S3 measure Berth's blob cache after the
            // first round; the S3 run has the pull storm instead (`storm`), a new blob each
            // time over two replicas, with the reads that reach the bucket counted.
            return Ok(());
        }

        let (conns, blob_mib) = (self.o.pull_conns, self.o.pull_blob / MIB);
        let pull_n = self.table.add(
            &format!("pull_{conns}x{blob_mib}MiB"),
            &format!("pull {blob_mib} MiB × {conns} concurrent"),
            "MB/s",
            Kind::Higher,
        );
        eprintln!("== pull {blob_mib} MiB × {conns} concurrent (aggregate)");
        let blob = Blob::whole(big.head.slice(..self.o.pull_blob));
        for reg in self.regs() {
            push_monolithic(&self.client, &reg, "bench/pull", &blob).await?;
        }
        self.settler.wrote(0);
        let pull_bare_n = self.table.add(
            &format!("pull_{conns}x{blob_mib}MiB_bare"),
            &format!("pull {blob_mib} MiB × {conns} concurrent, bare client"),
            "MB/s",
            Kind::Higher,
        );
        eprintln!("== the same with a bare HTTP/1.1 client reading 1 MiB at a time");
        for round in 0..self.o.rounds {
            for i in order(round) {
                let reg = self.servers[i].reg.clone();
                self.settler.settle().await?;
                let (client, blob2, reg2) = (self.client.clone(), blob.clone(), reg.clone());
                let (wall, _) = run_pool(conns, conns, move |_| {
                    let (client, reg, blob) = (client.clone(), reg2.clone(), blob2.clone());
                    async move { pull_count(&client, &reg, "bench/pull", &blob).await }
                })
                .await?;
                self.table
                    .push(pull_n, i, (conns * blob.len()) as f64 / wall / 1e6);
                let blob2 = blob.clone();
                self.settler.settle().await?;
                let (wall, _) = run_pool(conns, conns, move |_| {
                    let (reg, blob) = (reg.clone(), blob2.clone());
                    async move { pull_bare(&reg, "bench/pull", &blob).await }
                })
                .await?;
                self.table
                    .push(pull_bare_n, i, (conns * blob.len()) as f64 / wall / 1e6);
            }
        }
        Ok(())
    }

    async fn image_push(&mut self) -> R<()> {
        let (n, size, par) = (self.o.layers, self.o.layer_size, self.o.layer_par);
        let row = self.table.add(
            &format!("push_image_{n}x{}KiB", size / 1024),
            &format!(
                "push image {n} × {} KiB layers, {par} parallel",
                size / 1024
            ),
            "s",
            Kind::Time,
        );
        eprintln!("== push an image of {n} × {size} B layers, {par} uploads in flight");
        for round in 0..self.o.rounds {
            for i in order(round) {
                let reg = self.servers[i].reg.clone();
                // Fresh content every time: nothing is already there.
                let layers: Vec<Blob> = (0..n)
                    .map(|_| Blob::whole(Bytes::from(self.rng.bytes(size))))
                    .collect();
                let config = config_blob(&format!(
                    "image r{round} {} {}",
                    reg.name,
                    self.rng.next_u64()
                ));
                let manifest = image_manifest(&config, &layers);
                let mut blobs = layers;
                blobs.push(config);
                let blobs = Arc::new(blobs);
                let repo = format!("bench/image-r{round}");
                self.settler.settle().await?;
                let t = Instant::now();
                let (client, reg2, repo2) = (self.client.clone(), reg.clone(), repo.clone());
                run_pool(blobs.len(), par, move |k| {
                    let (client, reg, repo, blobs) =
                        (client.clone(), reg2.clone(), repo2.clone(), blobs.clone());
                    async move { push_monolithic(&client, &reg, &repo, &blobs[k]).await }
                })
                .await?;
                put_manifest(&self.client, &reg, &repo, "v1", manifest).await?;
                let secs = t.elapsed().as_secs_f64();
                self.settler.wrote(i);
                self.table.push(row, i, secs);
            }
        }
        Ok(())
    }

    /// Pushes the small image the wrk rows read (`client` carries any credentials) and checks
    /// that its manifest and blob URLs answer what wrk will count as success.
    async fn push_wrk_image(&mut self, client: &Client) -> R<(Vec<(String, String)>, Blob)> {
        let small = Blob::whole(Bytes::from(self.rng.bytes(4096)));
        let config = config_blob("wrk");
        let manifest = image_manifest(&config, std::slice::from_ref(&small));
        let mut urls = Vec::new();
        for reg in self.regs() {
            push_monolithic(client, &reg, "bench/wrk", &small).await?;
            push_monolithic(client, &reg, "bench/wrk", &config).await?;
            put_manifest(client, &reg, "bench/wrk", "latest", manifest.clone()).await?;
            let m_url = format!("{}/v2/bench/wrk/manifests/latest", reg.base);
            let (_, body) = call(
                client.get(&m_url).header(header::ACCEPT, ACCEPT_MANIFESTS),
                StatusCode::OK,
                "GET manifest",
            )
            .await?;
            if body != manifest {
                bail!("{}: GET manifest returned other bytes", reg.name);
            }
            let b_url = format!("{}/v2/bench/wrk/blobs/{}", reg.base, small.digest);
            let (_, body) = call(client.get(&b_url), StatusCode::OK, "GET blob").await?;
            if body.len() != small.len() {
                bail!("{}: GET small blob returned {} bytes", reg.name, body.len());
            }
            urls.push((m_url, b_url));
        }
        self.settler.wrote(0);
        Ok((urls, small))
    }

    /// One wrk workload on the registries that have headers for it (`None`: the registry
    /// cannot run it), round after round in alternating order; rows `<id>_rps` and `<id>_p99`.
    async fn wrk_rows(
        &mut self,
        id: &str,
        label: &str,
        secs: u64,
        urls: [&str; 2],
        headers: [Option<Vec<String>>; 2],
        missing: Option<&'static str>,
    ) -> R<()> {
        let conns = self.o.wrk_conns;
        let rps = self.table.add(
            &format!("{id}_c{conns}_rps"),
            &format!("{label}, {conns} conns"),
            "req/s",
            Kind::Higher,
        );
        let p99 = self.table.add(
            &format!("{id}_c{conns}_p99"),
            &format!("{label}, {conns} conns, p99"),
            "ms",
            Kind::Time,
        );
        self.table.rows[rps].missing = missing;
        self.table.rows[p99].missing = missing;
        for (i, h) in headers.iter().enumerate() {
            if h.is_none() {
                self.table.notes.push(format!(
                    "{label}: n/a for {}: {}",
                    NAMES[i],
                    missing.unwrap_or("it cannot run this workload")
                ));
            }
        }
        eprintln!("== {label}: wrk, {conns} connections, {secs} s");
        let mut p50s = [Vec::new(), Vec::new()];
        for round in 0..self.o.rounds {
            for i in order(round) {
                let Some(h) = &headers[i] else { continue };
                self.settler.settle().await?;
                let r = run_wrk(&self.o, secs, urls[i], h).await?;
                self.table.push(rps, i, r.rps);
                if r.p99_ms.is_finite() {
                    self.table.push(p99, i, r.p99_ms);
                    p50s[i].push(r.p50_ms);
                }
                if r.requests == 0 || r.timeouts > 0 {
                    self.table.notes.push(format!(
                        "{label}, {} round {}: {} requests finished in {secs} s, {} took longer than {WRK_TIMEOUT_SECS} s",
                        NAMES[i],
                        round + 1,
                        r.requests,
                        r.timeouts
                    ));
                }
                eprintln!("    ({} requests, p50 {:.3} ms)", r.requests, r.p50_ms);
            }
        }
        let p50_text: Vec<String> = (0..2)
            .filter(|&i| headers[i].is_some())
            .map(|i| format!("{} {} ms", NAMES[i], fmt_num(median(&p50s[i]))))
            .collect();
        self.table.notes.push(format!(
            "{label}: wrk p50 latency (median of rounds): {}",
            p50_text.join(", ")
        ));
        for i in 0..2 {
            if let Some(h) = &headers[i] {
                let args = wrk_args(&self.o, secs, urls[i], h);
                self.commands.push(format!(
                    "{label} ({}): {}",
                    NAMES[i],
                    wrk_command_text(&args, "<credential>")
                ));
            }
        }
        Ok(())
    }

    async fn wrk_workloads(&mut self) -> R<()> {
        let client = self.client.clone();
        let (urls, _) = self.push_wrk_image(&client).await?;
        let accept = vec![format!("Accept: {ACCEPT_MANIFESTS}")];
        self.wrk_rows(
            "manifest_get",
            "manifest GET by tag",
            self.o.wrk_secs,
            [&urls[0].0, &urls[1].0],
            [Some(accept.clone()), Some(accept)],
            None,
        )
        .await?;
        self.wrk_rows(
            "blob_get_4KiB",
            "blob GET 4 KiB",
            self.o.wrk_secs,
            [&urls[0].1, &urls[1].1],
            [Some(Vec::new()), Some(Vec::new())],
            None,
        )
        .await?;
        Ok(())
    }

    async fn tags(&mut self) -> R<()> {
        let (n, conc, page) = (self.o.tags, self.o.tag_conc, self.o.page);
        let layer = Blob::whole(Bytes::from(self.rng.bytes(4096)));
        let config = config_blob("tags");
        let manifest = image_manifest(&config, std::slice::from_ref(&layer));
        let par = self.table.add(
            &format!("tag_put_{n}_c{conc}"),
            &format!("tag PUT × {n}, {conc} in flight"),
            "tags/s",
            Kind::Higher,
        );
        let seq = self.table.add(
            &format!("tag_put_{n}_c1"),
            &format!("tag PUT × {n}, sequential"),
            "tags/s",
            Kind::Higher,
        );
        let list = self.table.add(
            &format!("tag_list_{n}_n{page}"),
            &format!("list {n} tags, n={page} pages"),
            "ms",
            Kind::Time,
        );
        let whole = self.table.add(
            &format!("tag_list_{n}_whole"),
            &format!("list {n} tags, one request (no n)"),
            "ms",
            Kind::Time,
        );
        let mut seq_times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut pages_seen = [0usize; 2];
        for (label, row, in_flight) in [("par", par, conc), ("seq", seq, 1)] {
            eprintln!("== tag PUT × {n}, {in_flight} in flight");
            for round in 0..self.o.rounds {
                for i in order(round) {
                    let reg = self.servers[i].reg.clone();
                    let repo = format!("bench/tags-{label}-r{round}");
                    push_monolithic(&self.client, &reg, &repo, &layer).await?;
                    push_monolithic(&self.client, &reg, &repo, &config).await?;
                    self.settler.wrote(i);
                    let (client, reg2, repo2, m) = (
                        self.client.clone(),
                        reg.clone(),
                        repo.clone(),
                        manifest.clone(),
                    );
                    self.settler.settle().await?;
                    let (wall, times) =
                        run_pool(n, in_flight, move |k| {
                            let (client, reg, repo, m) =
                                (client.clone(), reg2.clone(), repo2.clone(), m.clone());
                            async move {
                                put_manifest(&client, &reg, &repo, &format!("t{k:06}"), m).await
                            }
                        })
                        .await?;
                    self.settler.wrote(i);
                    self.table.push(row, i, n as f64 / wall);
                    if in_flight == 1 {
                        seq_times[i].extend(times);
                    }
                }
            }
        }
        eprintln!("== list {n} tags, n={page} per page following Link, and in one request");
        let want: BTreeSet<String> = (0..n).map(|k| format!("t{k:06}")).collect();
        for round in 0..self.o.rounds {
            for i in order(round) {
                let reg = self.servers[i].reg.clone();
                for (row, page) in [(list, page), (whole, 0)] {
                    let repo = format!("bench/tags-seq-r{round}");
                    let first = match page {
                        0 => format!("{}/v2/{repo}/tags/list", reg.base),
                        _ => format!("{}/v2/{repo}/tags/list?n={page}", reg.base),
                    };
                    self.settler.settle().await?;
                    let t = Instant::now();
                    let (tags, pages) = list_paged(&self.client, &reg, &first, "tags").await?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let got: BTreeSet<String> = tags.iter().cloned().collect();
                    if tags.len() != n || got != want {
                        bail!(
                            "{}: listing {repo} gave {} tags ({} distinct), want {n}",
                            reg.name,
                            tags.len(),
                            got.len()
                        );
                    }
                    self.table.push(row, i, ms);
                    if page > 0 {
                        pages_seen[i] = pages;
                    }
                }
            }
        }
        for (i, name) in NAMES.iter().enumerate() {
            self.table.notes.push(format!(
                "sequential tag PUT latency, {name}: {}",
                latency_summary(&seq_times[i])
            ));
        }
        self.table.notes.push(format!(
            "tag listing with n={page}: Berth answered in {} pages, Distribution in {} pages{}",
            pages_seen[0],
            pages_seen[1],
            if pages_seen[1] == 1 {
                " (it ignores n and returns every tag at once)"
            } else {
                ""
            }
        ));
        Ok(())
    }

    /// The registry grows (`growth_repos` new repositories holding one tagged image each, then
    /// `growth_tags` tags in one repository), then: how long that took, the RSS it leaves, and
    /// the cost of listing the catalog `catalog_page` repositories at a time.
    async fn growth(&mut self) -> R<()> {
        let (repos, tags, page) = (self.o.growth_repos, self.o.growth_tags, self.o.catalog_page);
        let conc = self.o.tag_conc;
        let layer = Blob::whole(Bytes::from(self.rng.bytes(4096)));
        let config = config_blob("growth");
        let manifest = image_manifest(&config, std::slice::from_ref(&layer));
        let grow = self.table.add(
            &format!("grow_{repos}_repos_{tags}_tags"),
            &format!("{repos} new repositories, then {tags} tags, {conc} in flight"),
            "s",
            Kind::Time,
        );
        let rss = self.table.add(
            &format!("rss_after_{repos}_repos_{tags}_tags"),
            &format!("RSS after {repos} new repositories and {tags} tags"),
            "MiB",
            Kind::Memory,
        );
        let catalog = self.table.add(
            &format!("catalog_{repos}_n{page}"),
            &format!("catalog of {repos}+ repositories, n={page} pages"),
            "ms",
            Kind::Time,
        );
        eprintln!("== growth: {repos} new repositories (blobs mounted, one tag each), {tags} tags in one repository");
        // The growth happens once per registry (a second round would measure a bigger store),
        // Berth first; the settle between keeps each apart.
        for i in [0, 1] {
            let reg = self.servers[i].reg.clone();
            let source = "bench/growth-source";
            push_monolithic(&self.client, &reg, source, &layer).await?;
            push_monolithic(&self.client, &reg, source, &config).await?;
            self.settler.wrote(i);
            self.settler.settle().await?;
            let t = Instant::now();
            let (client, reg2, m, digests) = (
                self.client.clone(),
                reg.clone(),
                manifest.clone(),
                [layer.digest.clone(), config.digest.clone()],
            );
            run_pool(repos, conc, move |k| {
                let (client, reg, m, digests) =
                    (client.clone(), reg2.clone(), m.clone(), digests.clone());
                async move {
                    let repo = format!("bench/growth/r{k:05}");
                    for digest in &digests {
                        mount_blob(&client, &reg, &repo, digest, source).await?;
                    }
                    put_manifest(&client, &reg, &repo, "v1", m).await
                }
            })
            .await?;
            let (client, reg2, m) = (self.client.clone(), reg.clone(), manifest.clone());
            run_pool(tags, conc, move |k| {
                let (client, reg, m) = (client.clone(), reg2.clone(), m.clone());
                async move { put_manifest(&client, &reg, source, &format!("g{k:06}"), m).await }
            })
            .await?;
            let secs = t.elapsed().as_secs_f64();
            self.settler.wrote(i);
            self.table.push(grow, i, secs);
            // After the checkpoint and writeback, so the RSS is what stays.
            self.settler.settle().await?;
            let mib = self.servers[i].status_mib("VmRSS")?;
            self.table.push(rss, i, mib);
        }
        eprintln!("== catalog, n={page} per page following Link");
        let want: BTreeSet<String> = (0..repos)
            .map(|k| format!("bench/growth/r{k:05}"))
            .collect();
        let mut pages_seen = [0usize; 2];
        let mut listed = [0usize; 2];
        for round in 0..self.o.rounds {
            for i in order(round) {
                let reg = self.servers[i].reg.clone();
                let first = format!("{}/v2/_catalog?n={page}", reg.base);
                self.settler.settle().await?;
                let t = Instant::now();
                let (names, pages) = list_paged(&self.client, &reg, &first, "repositories").await?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let got: BTreeSet<String> = names.iter().cloned().collect();
                if got.len() != names.len() || !want.is_subset(&got) {
                    bail!(
                        "{}: the catalog listed {} names ({} distinct), missing {} of the {repos} new repositories",
                        reg.name,
                        names.len(),
                        got.len(),
                        want.difference(&got).count()
                    );
                }
                self.table.push(catalog, i, ms);
                pages_seen[i] = pages;
                listed[i] = names.len();
            }
        }
        self.table.notes.push(format!(
            "catalog with n={page}: Berth listed {} repositories in {} pages, Distribution {} in {} pages",
            listed[0], pages_seen[0], listed[1], pages_seen[1]
        ));
        Ok(())
    }

    /// Manifest GET by tag with authentication on: both registries check one bcrypt htpasswd
    /// file; Basic credentials on every request for both, and Berth's Bearer token (from its
    /// `/auth/token`). Distribution's htpasswd mode has no token endpoint, so it has no Bearer
    /// row: its token mode needs a separate token server, which is not Distribution.
    async fn auth(&mut self, launch: &Launch, berth_bin: &Path) -> R<String> {
        let dir = launch.tmp.join("auth");
        std::fs::create_dir_all(&dir)?;
        let htpasswd = dir.join("htpasswd");
        let user = "bench";
        let password = hex::encode(self.rng.bytes(16));
        add_htpasswd_user(berth_bin, &htpasswd, user, &password)?;
        let pair = launch.start("auth", Some(&htpasswd), &self.client).await?;
        self.servers = pair.servers;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let mut auth_headers = HeaderMap::new();
        auth_headers.insert(header::AUTHORIZATION, basic.parse()?);
        let authed = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .default_headers(auth_headers)
            .build()?;
        // Both must refuse an anonymous pull before they are measured with credentials.
        for reg in self.regs() {
            let url = format!("{}/v2/bench/wrk/manifests/latest", reg.base);
            call(
                self.client.get(&url),
                StatusCode::UNAUTHORIZED,
                "anonymous GET manifest",
            )
            .await
            .map_err(|e| format!("{}: {e}", reg.name))?;
        }
        let (urls, _) = self.push_wrk_image(&authed).await?;
        let token = berth_token(&self.client, &self.servers[0].reg, &basic, "bench/wrk").await?;
        let bearer = format!("Bearer {token}");
        let (_, body) = call(
            self.client
                .get(&urls[0].0)
                .header(header::ACCEPT, ACCEPT_MANIFESTS)
                .header(header::AUTHORIZATION, &bearer),
            StatusCode::OK,
            "GET manifest with the Bearer token",
        )
        .await?;
        if body.is_empty() {
            bail!("berth: empty manifest with the Bearer token");
        }
        // 5 s in a full run: Distribution checks bcrypt on every request (tens of ms each), and
        // 5 s gives it enough for a median while 10 s would add 45 s for no steadier one. Quick
        // mode only checks that the rows work (a run that completes no request is noted, not
        // failed), so it keeps its 2 s.
        let auth_secs = if self.o.quick { 2 } else { 5 };
        let accept = format!("Accept: {ACCEPT_MANIFESTS}");
        let with_basic = vec![accept.clone(), format!("Authorization: {basic}")];
        let with_bearer = vec![accept, format!("Authorization: {bearer}")];
        self.wrk_rows(
            "manifest_get_basic",
            "manifest GET by tag, Basic auth",
            auth_secs,
            [&urls[0].0, &urls[1].0],
            [Some(with_basic.clone()), Some(with_basic)],
            None,
        )
        .await?;
        self.wrk_rows(
            "manifest_get_bearer",
            "manifest GET by tag, Bearer token",
            auth_secs,
            [&urls[0].0, &urls[1].0],
            [Some(with_bearer), None],
            Some("Distribution's htpasswd mode issues no tokens"),
        )
        .await?;
        let cost = bcrypt_cost(&htpasswd)?;
        self.table.notes.push(format!(
            "auth rows: one user in one bcrypt htpasswd file (cost {cost}, written by `berth user add`), read by both registries; Berth's Bearer token from GET /auth/token with Basic credentials, scope repository:bench/wrk:pull"
        ));
        for s in &mut self.servers {
            s.stop();
        }
        Ok(pair.distribution_yaml)
    }
}

/// `berth user add NAME --htpasswd FILE`, the password on stdin: the file both registries read.
fn add_htpasswd_user(berth_bin: &Path, file: &Path, user: &str, password: &str) -> R<()> {
    use std::io::Write as _;
    let mut child = Command::new(berth_bin)
        .args(["user", "add", user, "--htpasswd"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "berth user add: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The bcrypt cost of the first entry (`user:$2y$10$…`).
fn bcrypt_cost(file: &Path) -> R<u32> {
    let text = std::fs::read_to_string(file)?;
    let hash = text
        .lines()
        .next()
        .and_then(|l| l.split_once(':'))
        .map(|(_, h)| h);
    match hash.and_then(|h| h.split('$').nth(2)?.parse().ok()) {
        Some(cost) => Ok(cost),
        None => bail!("{}: not a bcrypt htpasswd entry", file.display()),
    }
}

/// Berth's token for pulling `repo`: the realm and service from the 401 challenge of `/v2/`,
/// then `GET realm?service=…&scope=repository:<repo>:pull` with Basic credentials.
async fn berth_token(c: &Client, reg: &Reg, basic: &str, repo: &str) -> R<String> {
    let (headers, _) = call(
        c.get(format!("{}/v2/", reg.base)),
        StatusCode::UNAUTHORIZED,
        "GET /v2/ without credentials",
    )
    .await?;
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .ok_or("berth: 401 without WWW-Authenticate")?;
    let param = |key: &str| {
        let at = challenge.find(&format!("{key}=\""))? + key.len() + 2;
        let len = challenge[at..].find('"')?;
        Some(challenge[at..at + len].to_owned())
    };
    let (Some(realm), Some(service)) = (param("realm"), param("service")) else {
        bail!("berth: cannot read realm and service from {challenge}");
    };
    let url = reqwest::Url::parse_with_params(
        &abs(&reg.base, &realm),
        &[
            ("service", service.as_str()),
            ("scope", &format!("repository:{repo}:pull")),
        ],
    )?;
    let (_, body) = call(
        c.get(url).header(header::AUTHORIZATION, basic),
        StatusCode::OK,
        "GET token",
    )
    .await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)?;
    match doc["token"].as_str() {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        _ => bail!("berth: token response without a token"),
    }
}

/// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`: 201, the blob linked without
/// sending it.
async fn mount_blob(c: &Client, reg: &Reg, repo: &str, digest: &str, from: &str) -> R<()> {
    let url = format!(
        "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
        reg.base
    );
    call(
        c.post(url).body(Bytes::new()),
        StatusCode::CREATED,
        "POST mount",
    )
    .await?;
    Ok(())
}

/// Lists `key` (`tags` or `repositories`) from `first`, following `Link: <…>; rel="next"`;
/// the names and the number of pages.
async fn list_paged(c: &Client, reg: &Reg, first: &str, key: &str) -> R<(Vec<String>, usize)> {
    let mut url = Some(first.to_owned());
    let mut names = Vec::new();
    let mut pages = 0;
    while let Some(u) = url.take() {
        pages += 1;
        if pages > 100_000 {
            bail!("{}: listing does not end", reg.name);
        }
        let (headers, body) = call(c.get(&u), StatusCode::OK, "GET list").await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)?;
        let Some(list) = doc[key].as_array() else {
            bail!("{}: {u} answered without a {key} array", reg.name);
        };
        names.extend(list.iter().filter_map(|t| t.as_str().map(str::to_owned)));
        url = headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find(|part| part.contains("rel=\"next\""))
            .and_then(|part| {
                let s = part.find('<')?;
                let e = part.find('>')?;
                Some(abs(&reg.base, &part[s + 1..e]))
            });
    }
    Ok((names, pages))
}

// ---------------------------------------------------------------------------------------------
// Machine facts and the report

/// What the results depend on besides the code, recorded with them.
struct Facts {
    date: String,
    commit: String,
    dirty: bool,
    cpu: String,
    cpus: usize,
    memory_gib: f64,
    kernel: String,
    os: String,
    disk: String,
    versions: Vec<(&'static str, String)>,
}

/// The first line a command prints on stdout or stderr, or "unknown".
fn first_line_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown")
                .to_owned()
        }
        Err(_) => "unknown".to_owned(),
    }
}

fn gather_facts(data_dir: &Path, berth_bin: &Path, dist_bin: &Path) -> Facts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mount = first_line_of(
        Path::new("findmnt"),
        &[
            "-n",
            "-o",
            "SOURCE,FSTYPE,OPTIONS",
            "-T",
            &data_dir.display().to_string(),
        ],
    );
    let disk = format!(
        "{} on {}",
        std::env::temp_dir().display(),
        mount.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let repo = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let versions = vec![
        ("berth", first_line_of(berth_bin, &["--version"])),
        ("distribution", first_line_of(dist_bin, &["--version"])),
        ("wrk", first_line_of(Path::new("wrk"), &["-v"])),
        ("rustc", first_line_of(Path::new("rustc"), &["-V"])),
        ("openssl", first_line_of(Path::new("openssl"), &["version"])),
    ];
    Facts {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit,
        dirty,
        cpu,
        cpus,
        memory_gib,
        kernel,
        os,
        disk,
        versions,
    }
}

struct Report<'a> {
    o: &'a Opts,
    facts: Facts,
    table: &'a Table,
    limits: &'a [Limit],
    commands: &'a [String],
    server_cmds: [String; 2],
    distribution_yaml: String,
    auth_distribution_yaml: Option<String>,
    settles: usize,
    settle_timeouts: usize,
    settle_secs: f64,
    total_secs: f64,
    /// Wall time of each workload group and of the limits.
    group_secs: Vec<(&'static str, f64)>,
    /// The 1-minute load average before and after: on a quiet machine both are well under
    /// one; anything near the number of CPUs means something else ran beside the benchmark.
    load_start: f64,
    load_end: f64,
    /// `garage --version` of an S3 run.
    garage_version: Option<String>,
}

impl Report<'_> {
    fn row(&self, id: &str) -> Option<[f64; 2]> {
        self.table
            .rows
            .iter()
            .find(|r| r.id == id)
            .map(Row::medians)
    }

    fn limit(&self, id: &str) -> Option<f64> {
        self.limits.iter().find(|l| l.id == id).map(|l| l.value)
    }

    fn short_commit(&self) -> String {
        let short: String = self.facts.commit.chars().take(12).collect();
        if self.facts.dirty {
            format!("{short} (with uncommitted changes)")
        } else {
            short
        }
    }

    fn results_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .table
            .rows
            .iter()
            .map(|r| {
                let [bm, dm] = r.medians();
                let ratio = ratio_text(r.kind, bm, dm);
                vec![
                    format!("{} ({})", r.label, r.unit),
                    fmt_num(bm),
                    fmt_num(dm),
                    ratio,
                ]
            })
            .collect();
        markdown_table(
            &["workload", "Berth", "Distribution", "Berth/Distribution"],
            &rows,
        )
    }

    /// Each measured row set against the machine limit that bounds it (the analysis the README
    /// used to type by hand).
    fn bounds(&self) -> Vec<String> {
        if self.o.storage == Storage::S3 {
            return self.s3_bounds();
        }
        let o = self.o;
        let mib = o.big / MIB;
        let pct = |v: f64, limit: f64| format!("{:.0}%", 100.0 * v / limit);
        let mut out = Vec::new();
        let (durable, cached) = (
            self.limit("blob_write_durable"),
            self.limit("blob_write_cached"),
        );
        for (id, what) in [
            (format!("push_chunked_{mib}MiB"), "chunked push"),
            (format!("push_monolithic_{mib}MiB"), "monolithic push"),
        ] {
            if let (Some([b, d]), Some(durable), Some(cached)) = (self.row(&id), durable, cached) {
                out.push(format!(
                    "{mib} MiB {what}: Berth (fsyncs the blob before answering) {} MB/s, {} of the durable blob write limit ({} MB/s); Distribution (never fsyncs) {} MB/s, {} of the no-sync write limit ({} MB/s).",
                    fmt_num(b), pct(b, durable), fmt_num(durable), fmt_num(d), pct(d, cached), fmt_num(cached)
                ));
            }
        }
        let (l1, l16) = (self.limit("loopback_tcp_1"), self.limit("loopback_tcp_16"));
        if let (Some([b, d]), Some(l1)) = (self.row(&format!("pull_{mib}MiB")), l1) {
            out.push(format!(
                "one {mib} MiB pull: Berth {}, Distribution {} of one loopback TCP connection without HTTP ({} MB/s).",
                pct(b, l1), pct(d, l1), fmt_num(l1)
            ));
        }
        let (conns, blob_mib) = (o.pull_conns, o.pull_blob / MIB);
        if let (Some([b, d]), Some(l16)) =
            (self.row(&format!("pull_{conns}x{blob_mib}MiB_bare")), l16)
        {
            out.push(format!(
                "{conns} concurrent pulls, bare client: Berth {}, Distribution {} of {conns} loopback TCP connections without HTTP ({} MB/s), whose receivers do the same reads.",
                pct(b, l16), pct(d, l16), fmt_num(l16)
            ));
        }
        for (id, floor, what) in [
            (
                format!("tag_put_{}_c1", o.tags),
                "durable_tag_floor_c1",
                "sequential tag PUT".to_owned(),
            ),
            (
                format!("tag_put_{}_c{}", o.tags, o.tag_conc),
                "durable_tag_floor_c8",
                format!("tag PUT with {} in flight", o.tag_conc),
            ),
        ] {
            if let (Some([b, _]), Some(f)) = (self.row(&id), self.limit(floor)) {
                out.push(format!(
                    "{what}: Berth {} tags/s, every tag durable before its 201 through the write-ahead journal; a new tag's durable file operations done directly, the syncs the journal replaces, reach {} tags/s with as many threads ({} of that). Distribution does not sync its tags.",
                    fmt_num(b), fmt_num(f), pct(b, f)
                ));
            }
        }
        out.extend(self.mirror_bounds());
        out
    }

    fn parameters(&self) -> serde_json::Value {
        let o = self.o;
        let mut parameters = serde_json::json!({
            "mode": if o.quick { "quick" } else { "full" },
            "storage": o.storage.name(),
            "rounds": o.rounds,
            "only": o.only,
            "big_blob_bytes": o.big,
            "chunk_bytes": o.chunk,
            "pull_concurrent": o.pull_conns,
            "pull_concurrent_blob_bytes": o.pull_blob,
            "image_layers": o.layers,
            "image_layer_bytes": o.layer_size,
            "image_parallel": o.layer_par,
            "wrk_seconds": o.wrk_secs,
            "wrk_threads": o.wrk_threads,
            "wrk_connections": o.wrk_conns,
            "wrk_timeout_seconds": WRK_TIMEOUT_SECS,
            "tags": o.tags,
            "tag_concurrency": o.tag_conc,
            "tag_page": o.page,
            "growth_repositories": o.growth_repos,
            "growth_tags": o.growth_tags,
            "catalog_page": o.catalog_page,
            "loopback_bytes": o.loopback,
            "loopback_connections": o.loopback_conns,
            "openssl_seconds": o.openssl_secs,
            "sha2_bytes": o.sha_bytes,
            "settle": {
                "checkpoint_wait_ms": checkpoint_wait(o).as_millis() as u64,
                "dirty_plus_writeback_kib_at_most": SETTLED_DIRTY_KIB,
                "timeout_s": SETTLE_TIMEOUT.as_secs(),
            },
        });
        if o.storage == Storage::S3 {
            if let Some(map) = parameters.as_object_mut() {
                // What the S3 run does not run.
                for key in [
                    "pull_concurrent",
                    "pull_concurrent_blob_bytes",
                    "growth_repositories",
                    "growth_tags",
                    "catalog_page",
                    "loopback_bytes",
                    "loopback_connections",
                    "openssl_seconds",
                    "sha2_bytes",
                ] {
                    map.remove(key);
                }
            }
            parameters["storm_pulls"] = serde_json::json!(o.storm_pulls);
            parameters["storm_blob_bytes"] = serde_json::json!(o.storm_blob);
            parameters["storm_replicas"] = serde_json::json!(2);
            parameters["gc_repositories"] = serde_json::json!(o.gc_repos);
            parameters["gc_layers"] = serde_json::json!(o.gc_layers);
            parameters["gc_unreferenced_blobs_per_repository"] = serde_json::json!(o.gc_orphans);
        }
        parameters
    }

    fn json(&self) -> serde_json::Value {
        let f = &self.facts;
        let number = |v: f64| {
            if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        let rows: Vec<_> = self
            .table
            .rows
            .iter()
            .map(|r| {
                let [bm, dm] = r.medians();
                let side = |i: usize, m: f64| {
                    if r.vals[i].is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::json!({"median": number(m), "runs": r.vals[i]})
                    }
                };
                serde_json::json!({
                    "id": r.id,
                    "label": r.label,
                    "unit": r.unit,
                    "better": if r.kind == Kind::Higher { "higher" } else { "lower" },
                    "berth": side(0, bm),
                    "distribution": side(1, dm),
                    "ratio_berth_over_distribution": number(bm / dm),
                    "missing": r.missing,
                })
            })
            .collect();
        let limits: Vec<_> = self
            .limits
            .iter()
            .map(|l| {
                serde_json::json!({
                    "id": l.id, "label": l.label, "unit": l.unit,
                    "value": number(l.value), "runs": l.runs, "method": l.method,
                })
            })
            .collect();
        let versions: serde_json::Map<String, serde_json::Value> = f
            .versions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        let targets: Vec<_> = if self.o.storage == Storage::S3 {
            self.s3_targets()
                .into_iter()
                .map(|t| serde_json::json!({"target": t.what, "want": t.want, "measured": t.got, "met": t.met}))
                .collect()
        } else {
            Vec::new()
        };
        serde_json::json!({
            "schema": 1,
            "generated_by": self.o.command(),
            "storage": self.o.storage.name(),
            "garage": self.garage_version.as_ref().map(|v| serde_json::json!({"version": v, "setup": s3::GARAGE_SETUP})),
            "date": f.date,
            "git_commit": f.commit,
            "git_dirty": f.dirty,
            "machine": {
                "cpu": f.cpu,
                "cpus": f.cpus,
                "memory_gib": number(f.memory_gib),
                "kernel": f.kernel,
                "os": f.os,
                "disk": f.disk,
            },
            "versions": versions,
            "parameters": self.parameters(),
            "rows": rows,
            "limits": limits,
            "bounds": self.bounds(),
            "targets": targets,
            "notes": self.table.notes,
            "commands": {
                "berth": self.server_cmds[0],
                "distribution": self.server_cmds[1],
                "distribution_config": self.distribution_yaml,
                "distribution_config_auth": self.auth_distribution_yaml,
                "wrk": self.commands,
            },
            "load_average_1min": {"start": number(self.load_start), "end": number(self.load_end)},
            "group_seconds": self.group_secs.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "settling": {
                "settles": self.settles,
                "timeouts": self.settle_timeouts,
                "seconds": self.settle_secs,
            },
            "total_seconds": self.total_secs,
        })
    }

    fn summary_line(&self) -> String {
        let f = &self.facts;
        format!(
            "{}, commit `{}`: {}, {} CPUs, {:.0} GiB memory, Linux {}, {}; load average {:.2} before, {:.2} after; {} mode, {} round{}, medians; {:.0} s in all",
            f.date,
            self.short_commit(),
            f.cpu,
            f.cpus,
            f.memory_gib,
            f.kernel,
            f.disk,
            self.load_start,
            self.load_end,
            if self.o.quick { "quick" } else { "full" },
            self.o.rounds,
            if self.o.rounds == 1 { "" } else { "s" },
            self.total_secs
        )
    }

    /// What the README quotes between its markers.
    fn readme_block(&self) -> String {
        let (begin, end) = readme_markers(self.o.storage);
        let stem = report_stem(self.o.storage);
        let mut out = String::new();
        out.push_str(begin);
        out.push('\n');
        out.push_str(&format!(
            "<!-- Written by `{}` (a full run); edit benches/compare.rs, not this. -->\n",
            self.o.command()
        ));
        out.push_str(&format!(
            "Run: {}. Machine limits, every round's values, notes and the exact commands: [docs/benchmarks/{stem}.md](docs/benchmarks/{stem}.md) ([JSON](docs/benchmarks/{stem}.json)).\n\n",
            self.summary_line()
        ));
        out.push_str(&self.results_table());
        match self.o.storage {
            Storage::Filesystem => out.push_str(
                "\nEach row against the machine limit that bounds it, in the same run:\n\n",
            ),
            Storage::S3 => out.push_str(
                "\nEach row against Garage's own throughput (object_store on the same loopback), in the same run:\n\n",
            ),
        }
        for b in self.bounds() {
            out.push_str(&format!("- {b}\n"));
        }
        if self.o.storage == Storage::S3 {
            out.push('\n');
            out.push_str(&self.s3_targets_table());
        }
        out.push_str(end);
        out.push('\n');
        out
    }

    fn markdown(&self) -> String {
        let f = &self.facts;
        let o = self.o;
        let mut md = String::new();
        let stem = report_stem(o.storage);
        match o.storage {
            Storage::Filesystem => {
                md.push_str("# Berth against CNCF Distribution: benchmark results\n\n")
            }
            Storage::S3 => md.push_str(
                "# Berth against CNCF Distribution on S3 (Garage): benchmark results\n\n",
            ),
        }
        md.push_str(&format!("Written by `{}`; do not edit: the next full run rewrites this file, `{stem}.json` beside it and the table in the README. The method (why the runs are fair) is in [docs/design/benchmark.md](../design/benchmark.md).\n\n", o.command()));
        md.push_str(&format!("Run: {}.\n\n", self.summary_line()));
        md.push_str("## Machine\n\n");
        md.push_str(&format!("- CPU: {} ({} CPUs available)\n", f.cpu, f.cpus));
        md.push_str(&format!("- memory: {:.1} GiB\n", f.memory_gib));
        md.push_str(&format!("- kernel: Linux {} ({})\n", f.kernel, f.os));
        md.push_str(&format!("- data directories and limit files: {}\n", f.disk));
        if let Some(v) = &self.garage_version {
            md.push_str(&format!("- storage: {v}, {}\n", s3::GARAGE_SETUP));
        }
        for (name, v) in &f.versions {
            md.push_str(&format!("- {name}: {v}\n"));
        }
        md.push_str(&format!(
            "- git commit: {}{}\n\n",
            f.commit,
            if f.dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ));
        md.push_str("## Results\n\n");
        md.push_str(&self.results_table());
        md.push_str("\nThroughput, rate, memory and count rows: ratio = Berth / Distribution (memory and counts: lower is better). Time rows (s, ms, p99): \"N× faster\" = Distribution's time / Berth's time.\n\n");
        if o.storage == Storage::S3 {
            md.push_str("## Targets\n\n");
            md.push_str(&self.s3_targets_table());
            md.push('\n');
        }
        md.push_str("## What bounds the rows\n\n");
        let bounds = self.bounds();
        if bounds.is_empty() {
            md.push_str("(none of the bounded rows ran)\n");
        }
        for b in bounds {
            md.push_str(&format!("- {b}\n"));
        }
        match o.storage {
            Storage::Filesystem => md.push_str("\n## Machine limits\n\nMeasured after both registries stopped, each on the data and with the durability of the workload it bounds, settled like the timed runs.\n\n"),
            Storage::S3 => md.push_str("\n## Limits: Garage's own throughput\n\nMeasured on the same Garage node after the registries stopped, with object_store (the client library Berth uses) on the same loopback, on a new variant of the pushes' random blob each round, settled like the timed runs.\n\n"),
        }
        let rows: Vec<Vec<String>> = self
            .limits
            .iter()
            .map(|l| {
                let runs: Vec<String> = l.runs.iter().map(|v| fmt_num(*v)).collect();
                vec![
                    format!("{} ({})", l.label, l.unit),
                    fmt_num(l.value),
                    runs.join(", "),
                    l.method.clone(),
                ]
            })
            .collect();
        md.push_str(&markdown_table_aligned(
            &["limit", "median", "runs", "how"],
            &rows,
            3,
        ));
        md.push_str("\n## Every round\n\n");
        let rows: Vec<Vec<String>> = self
            .table
            .rows
            .iter()
            .map(|r| {
                let runs = |i: usize| {
                    let v: Vec<String> = r.vals[i].iter().map(|v| fmt_num(*v)).collect();
                    if v.is_empty() {
                        "n/a".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                vec![format!("{} ({})", r.label, r.unit), runs(0), runs(1)]
            })
            .collect();
        md.push_str(&markdown_table(
            &["workload", "Berth", "Distribution"],
            &rows,
        ));
        md.push_str("\n## Notes\n\n");
        for n in &self.table.notes {
            md.push_str(&format!("- {n}\n"));
        }
        md.push_str(&format!(
            "- settling: {} settles before timed runs took {:.0} s in all; {}\n",
            self.settles,
            self.settle_secs,
            match self.settle_timeouts {
                0 => "each ended with the disk settled".to_owned(),
                n => format!(
                    "{n} gave up after {} s with Dirty + Writeback still above {} MiB (something else was writing: read the rows with care)",
                    SETTLE_TIMEOUT.as_secs(),
                    SETTLED_DIRTY_KIB / 1024
                ),
            }
        ));
        let took: Vec<String> = self
            .group_secs
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.0} s"))
            .collect();
        md.push_str(&format!(
            "- wall time: {:.0} s in all; {}\n",
            self.total_secs,
            took.join(", ")
        ));
        md.push_str("\n## Method, commands and parameters\n\n");
        if o.storage == Storage::S3 {
            md.push_str("- order: round 1 runs each workload on Berth first, round 2 on Distribution first, and so on; the collection runs once, Berth first\n");
            md.push_str(&self.s3_method());
        } else {
            md.push_str(&format!(
                "- order: round 1 runs each workload on Berth first, round 2 on Distribution first, and so on; the growth rows run once, Berth first\n- settling before every timed run: wait until {} ms after Berth's last write (its journal checkpoint, a `syncfs`, runs about 1 s after its last write; 0 in quick mode, whose timings are not judged), `sync`, then wait until Dirty + Writeback in /proc/meminfo is at most {} MiB\n",
                checkpoint_wait(o).as_millis(),
                SETTLED_DIRTY_KIB / 1024
            ));
            md.push_str(&format!("- berth: `{}`\n", self.server_cmds[0]));
            md.push_str(&format!(
                "- distribution: `{}` with its standard configuration (Debian's /etc/docker/registry/config.yml: blob descriptor cache in memory, nosniff header, storage health check), only the address, the data directory and logging changed:\n\n```yaml\n{}```\n",
                self.server_cmds[1], self.distribution_yaml
            ));
        }
        if let Some(yaml) = &self.auth_distribution_yaml {
            md.push_str(&format!(
                "- with authentication: berth adds `--htpasswd FILE`; distribution adds Debian's `auth: htpasswd` block:\n\n```yaml\n{yaml}```\n"
            ));
        }
        md.push_str("- client: reqwest (HTTP/1.1 keep-alive, TCP_NODELAY), bodies sent from memory as `Bytes` slices, Content-Length always set; every response checked (a wrong status, a short pull, an incomplete listing or wrk errors fail the run)\n");
        md.push_str(&format!(
            "- push monolithic: POST /v2/bench/mono-rN/blobs/uploads/ -> PUT <Location>&digest=sha256:… with the whole {} MiB body; a new random blob every push (no deduplication)\n",
            o.big / MIB
        ));
        md.push_str(&format!(
            "- push chunked: POST -> PATCH <Location> × {} ({} MiB each, Content-Range: start-end) -> PUT <Location>&digest=… (empty body)\n",
            o.big.div_ceil(o.chunk),
            o.chunk / MIB
        ));
        match o.storage {
            Storage::Filesystem => md.push_str(&format!(
                "- pull: GET /v2/<repo>/blobs/<digest> of the chunked-pushed blob, bytes counted (not hashed); concurrent: {} GETs at once of one {} MiB blob, by reqwest and by a bare HTTP/1.1 client reading 1 MiB at a time\n",
                o.pull_conns,
                o.pull_blob / MIB
            )),
            Storage::S3 => md.push_str("- pull: GET /v2/<repo>/blobs/<digest> of the chunked-pushed blob, its first read (Berth's blob cache is empty: a push does not fill it), bytes counted (not hashed)\n"),
        }
        md.push_str(&format!(
            "- image: {} layers of {} B random + config, each POST + PUT ?digest=, {} in flight, then PUT manifest (OCI); time from the first POST to the manifest's 201\n",
            o.layers, o.layer_size, o.layer_par
        ));
        md.push_str(&format!(
            "- tags: PUT /v2/bench/tags-*-rN/manifests/t000000… (one small OCI manifest), {} in flight and 1 in flight; listing: GET /v2/<repo>/tags/list?n={} then each Link rel=\"next\", and once without n\n",
            o.tag_conc, o.page
        ));
        if o.storage == Storage::Filesystem {
            md.push_str(&format!(
                "- growth: {} repositories bench/growth/rNNNNN, each with the layer and config mounted (POST ?mount=&from=) and one manifest PUT, then {} tags in bench/growth-source, {} in flight; RSS (VmRSS) read after settling; catalog: GET /v2/_catalog?n={} then each Link rel=\"next\"\n",
                o.growth_repos, o.growth_tags, o.tag_conc, o.catalog_page
            ));
            md.push_str("- RSS: VmRSS from /proc/PID/status at start, after each big push (max shown) and after the growth; peak: VmHWM before stopping each server\n");
        } else {
            md.push_str("- manifest GET and 4 KiB blob GET: Berth answers a blob it has read once from its blob cache on disk (by `sendfile`), Distribution reads it from the bucket every time; both hold a tag's answer in memory for a while (Berth for `cache_ttl_ms`)\n");
            md.push_str("- RSS: VmRSS from /proc/PID/status at start and after each big push (max shown); peak: VmHWM before stopping each server (the storm's and the collection's processes are not counted)\n");
        }
        for c in self.commands {
            md.push_str(&format!("- {c}\n"));
        }
        md
    }
}

const README_BEGIN: &str = "<!-- bench:begin -->";
const README_END: &str = "<!-- bench:end -->";
const S3_README_BEGIN: &str = "<!-- bench-s3:begin -->";
const S3_README_END: &str = "<!-- bench-s3:end -->";

/// The README markers of a storage mode's block.
fn readme_markers(storage: Storage) -> (&'static str, &'static str) {
    match storage {
        Storage::Filesystem => (README_BEGIN, README_END),
        Storage::S3 => (S3_README_BEGIN, S3_README_END),
    }
}

/// The report files' name, without `.md` or `.json`.
fn report_stem(storage: Storage) -> &'static str {
    match storage {
        Storage::Filesystem => "latest",
        Storage::S3 => "s3-latest",
    }
}

/// How long after Berth's last write a settle waits: its journal's checkpoint, in a full
/// filesystem run. Quick runs' timings are not judged, and on S3 Berth keeps no journal.
fn checkpoint_wait(o: &Opts) -> Duration {
    if o.quick || o.storage == Storage::S3 {
        Duration::ZERO
    } else {
        CHECKPOINT_WAIT
    }
}

/// Replaces what lies between the README's markers (markers included) of `storage`'s block by
/// `block`.
fn rewrite_readme(path: &Path, storage: Storage, block: &str) -> R<()> {
    let (begin, end_marker) = readme_markers(storage);
    let text = std::fs::read_to_string(path)?;
    let (Some(start), Some(end)) = (text.find(begin), text.find(end_marker)) else {
        bail!(
            "{}: no {begin} … {end_marker} markers to rewrite",
            path.display()
        );
    };
    if end < start {
        bail!("{}: {end_marker} before {begin}", path.display());
    }
    let mut end = end + end_marker.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    let new = format!("{}{block}{}", &text[..start], &text[end..]);
    std::fs::write(path, new)?;
    Ok(())
}

/// Where the report goes: the repository's docs/benchmarks for a complete full run, the target
/// directory otherwise (CI's `--quick` must never dirty the tree).
fn report_dir(o: &Opts) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if o.publishes() {
        return repo.join("docs/benchmarks");
    }
    // The bench runs as target/<profile>/deps/compare-<hash>.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|t| t.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| repo.join("target"));
    target.join("bench")
}

async fn run(o: Opts) -> R<()> {
    let started = Instant::now();
    let load_start = load_average();
    ensure_wrk()?;
    let berth_bin = berth_binary()?;
    let dist_bin = PathBuf::from(
        std::env::var("DISTRIBUTION_BIN").unwrap_or_else(|_| "/usr/bin/docker-registry".into()),
    );
    // Declared before the servers so the servers are stopped before it is removed.
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench.")
        .tempdir_in(std::env::temp_dir())?;
    // After `tmp`, so it is stopped before its directory goes.
    let garage = match o.storage {
        Storage::S3 => Some(s3::Garage::start(&tmp.path().join("garage"))?),
        Storage::Filesystem => None,
    };
    let client = Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(None)
        .build()?;

    let mut rng = Rng::seeded();
    eprintln!(
        "== generating {} MiB of random data and its prefix hash",
        o.big / MIB
    );
    let big = Big::new(o.big, &mut rng);
    let launch = Launch {
        berth_bin: berth_bin.clone(),
        dist_bin: dist_bin.clone(),
        tmp: tmp.path().to_path_buf(),
        s3: garage.as_ref().map(|g| g.env.clone()),
    };
    let pair = launch.start("main", None, &client).await?;
    let checkpoint_wait = checkpoint_wait(&o);
    let mut b = Bench {
        o,
        client,
        servers: pair.servers,
        table: Table::default(),
        rng,
        variants: 0,
        commands: Vec::new(),
        settler: Settler::new(checkpoint_wait),
        garage_pid: garage.as_ref().and_then(|g| g.pid()),
        cpu: BTreeMap::new(),
    };
    let rss_start = b
        .table
        .add("rss_idle", "RSS idle after start", "MiB", Kind::Memory);
    for i in 0..2 {
        let v = b.servers[i].status_mib("VmRSS")?;
        b.table.push(rss_start, i, v);
    }

    let selected: Vec<&'static str> =
        b.o.groups()
            .iter()
            .copied()
            .filter(|group| {
                b.o.only
                    .as_ref()
                    .is_none_or(|g| g.iter().any(|x| x == group))
            })
            .collect();
    let runs = |group: &str| selected.contains(&group);
    let [blobs, image, wrk, tags, growth, auth, storm, gc, mirror] = [
        "blobs", "image", "wrk", "tags", "growth", "auth", "storm", "gc", "mirror",
    ]
    .map(runs);
    let server_cmds: [String; 2] = [b.servers[0].command.clone(), b.servers[1].command.clone()];
    let result = async {
        let timed = |name: &'static str, since: Instant| {
            let secs = since.elapsed().as_secs_f64();
            eprintln!("== {name} took {secs:.0} s");
            (name, secs)
        };
        let mut took = Vec::new();
        if blobs {
            let t = Instant::now();
            b.blobs_and_pulls(&big).await?;
            took.push(timed("blobs", t));
        }
        if image {
            let t = Instant::now();
            b.image_push().await?;
            took.push(timed("image", t));
        }
        if wrk {
            let t = Instant::now();
            b.wrk_workloads().await?;
            took.push(timed("wrk", t));
        }
        if tags {
            let t = Instant::now();
            b.tags().await?;
            took.push(timed("tags", t));
        }
        if growth {
            let t = Instant::now();
            b.growth().await?;
            took.push(timed("growth", t));
        }
        let hwm = b
            .table
            .add("rss_peak", "peak RSS (VmHWM at end)", "MiB", Kind::Memory);
        for i in 0..2 {
            let v = b.servers[i].status_mib("VmHWM")?;
            b.table.push(hwm, i, v);
        }
        for s in &mut b.servers {
            s.stop();
        }
        let mut auth_yaml = None;
        if auth {
            let t = Instant::now();
            auth_yaml = Some(b.auth(&launch, &berth_bin).await?);
            took.push(timed("auth", t));
        }
        if storm {
            let t = Instant::now();
            b.storm(&launch, &big).await?;
            took.push(timed("storm", t));
        }
        if gc {
            let t = Instant::now();
            b.gc(&launch).await?;
            took.push(timed("gc", t));
        }
        let mut mirror_limits = Vec::new();
        if mirror {
            let t = Instant::now();
            mirror_limits = b.mirror(&launch, &big).await?;
            took.push(timed("mirror", t));
        }
        Ok::<_, Error>((auth_yaml, took, mirror_limits))
    }
    .await;
    let (auth_yaml, mut group_secs, mirror_limits) = match result {
        Ok(done) => done,
        Err(e) => {
            for s in &b.servers {
                eprintln!("--- last lines of {} log:\n{}", s.reg.name, s.log_tail());
            }
            return Err(e);
        }
    };
    let t = Instant::now();
    let mut limits = match &garage {
        Some(garage) => s3::garage_limits(&b.o, &garage.env, &big, &mut b.settler).await?,
        None => machine_limits(&b.o, tmp.path(), &big, &mut b.settler).await?,
    };
    limits.extend(mirror_limits);
    group_secs.push(("limits", t.elapsed().as_secs_f64()));
    let total = started.elapsed().as_secs_f64();

    let report = Report {
        o: &b.o,
        facts: gather_facts(tmp.path(), &berth_bin, &dist_bin),
        table: &b.table,
        limits: &limits,
        commands: &b.commands,
        server_cmds,
        distribution_yaml: pair.distribution_yaml,
        auth_distribution_yaml: auth_yaml,
        settles: b.settler.settles,
        settle_timeouts: b.settler.timeouts,
        settle_secs: b.settler.waited.as_secs_f64(),
        total_secs: total,
        group_secs,
        load_start,
        load_end: load_average(),
        garage_version: garage.as_ref().map(|g| g.version.clone()),
    };
    let markdown = report.markdown();
    println!("{markdown}");
    for r in &b.table.rows {
        let [bm, dm] = r.medians();
        let better = if r.kind == Kind::Higher {
            "higher"
        } else {
            "lower"
        };
        println!(
            "BENCH workload={} unit={} better={better} berth={bm:.4} distribution={dm:.4} ratio={:.4} berth_runs={} distribution_runs={}",
            r.id,
            r.unit.replace('/', "_per_"),
            bm / dm,
            join_vals(&r.vals[0]),
            join_vals(&r.vals[1])
        );
    }
    for l in &limits {
        println!(
            "BENCH machine={} value={:.1} unit={}",
            l.id,
            l.value,
            l.unit.replace('/', "_per_")
        );
    }
    println!("BENCH total_seconds={total:.1}");

    let dir = report_dir(&b.o);
    std::fs::create_dir_all(&dir)?;
    let stem = report_stem(b.o.storage);
    let json = serde_json::to_string_pretty(&report.json())? + "\n";
    std::fs::write(dir.join(format!("{stem}.json")), json)?;
    std::fs::write(dir.join(format!("{stem}.md")), &markdown)?;
    let block = report.readme_block();
    if b.o.publishes() {
        rewrite_readme(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
            b.o.storage,
            &block,
        )?;
        println!(
            "wrote docs/benchmarks/{stem}.json, docs/benchmarks/{stem}.md and README.md's table"
        );
    } else {
        let name = match b.o.storage {
            Storage::Filesystem => "readme-block.md",
            Storage::S3 => "s3-readme-block.md",
        };
        std::fs::write(dir.join(name), &block)?;
        println!(
            "wrote {}/{stem}.json, {stem}.md and {name} (only a complete full run writes docs/benchmarks and the README)",
            dir.display()
        );
    }
    println!();
    println!("bench finished in {total:.0} s");
    drop(b);
    drop(garage);
    drop(tmp);
    Ok(())
}

fn main() -> ExitCode {
    let o = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compare: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("compare: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run: the servers are killed and the temp dir removed on the way out.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(o) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("BENCH FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
