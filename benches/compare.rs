//! Berth against CNCF Distribution (Debian's `docker-registry`), side by side on this machine.
//!
//! `cargo bench --bench compare` (3 rounds, 512 MiB blobs, 10 s wrk runs: a few minutes) or
//! `cargo bench --bench compare -- --quick` (1 round, smaller sizes). `--rounds N` overrides the
//! number of rounds. `BERTH_BIN` and `DISTRIBUTION_BIN` override the two server binaries.
//!
//! Both registries run on 127.0.0.1 with fresh data directories under one temp dir; every workload
//! runs against Berth then Distribution, round after round (A B A B …), and the table shows
//! medians. Any protocol failure (a wrong status, a short pull, wrk errors) exits non-zero; the
//! timings themselves never do. Each row is also printed as one `BENCH key=value …` line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ACCEPT_MANIFESTS: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const OCTET: &str = "application/octet-stream";

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
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
    /// Workload groups to run (all when `None`): a quick look at one change.
    only: Option<Vec<String>>,
    dd_count: usize,
    openssl_secs: u32,
    sha_bytes: usize,
}

/// Workload groups `--only` can pick.
const GROUPS: [&str; 4] = ["blobs", "image", "wrk", "tags"];

impl Opts {
    fn parse() -> R<Opts> {
        let mut quick = false;
        let mut rounds = None;
        let mut only: Option<Vec<String>> = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--rounds" => {
                    let n: usize = args.next().ok_or("--rounds needs a number")?.parse()?;
                    if n == 0 {
                        bail!("--rounds must be at least 1");
                    }
                    rounds = Some(n);
                }
                "--only" => {
                    let list = args.next().ok_or("--only needs a list")?;
                    let groups: Vec<String> = list.split(',').map(str::to_owned).collect();
                    if let Some(g) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                        bail!("unknown workload group {g} (groups: {})", GROUPS.join(","));
                    }
                    only = Some(groups);
                }
                "--bench" => {} // added by `cargo bench`
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench compare [-- [--quick] [--rounds N] [--only {}]]",
                        GROUPS.join(",")
                    );
                    std::process::exit(0);
                }
                other if other.starts_with('-') => bail!("unknown option {other} (try --help)"),
                _ => {} // a `cargo bench` name filter: there is only one benchmark
            }
        }
        let q =
            |quick_value: usize, full_value: usize| if quick { quick_value } else { full_value };
        Ok(Opts {
            only,
            quick,
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
            dd_count: q(16, 64),
            openssl_secs: q(1, 3) as u32,
            sha_bytes: q(64, 512) * MIB,
        })
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
    fn spawn(name: &'static str, mut cmd: Command, port: u16, log: PathBuf) -> R<Server> {
        let command = format!("{cmd:?}").replace('"', "");
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
                if resp.status() == StatusCode::OK {
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

fn distribution_config(root: &Path, port: u16) -> String {
    format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        root.display()
    )
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
    let mut resp = c.get(&url).send().await?;
    if resp.status() != StatusCode::OK {
        bail!("GET blob: HTTP {}", resp.status());
    }
    let mut got = 0usize;
    while let Some(chunk) = resp.chunk().await? {
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
}

fn wrk_args(o: &Opts, url: &str, accept: Option<&str>) -> Vec<String> {
    let mut args = vec![
        format!("-t{}", o.wrk_threads),
        format!("-c{}", o.wrk_conns),
        format!("-d{}s", o.wrk_secs),
        "--latency".to_owned(),
    ];
    if let Some(a) = accept {
        args.push("-H".to_owned());
        args.push(format!("Accept: {a}"));
    }
    args.push(url.to_owned());
    args
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

async fn run_wrk(o: &Opts, url: &str, accept: Option<&str>) -> R<WrkResult> {
    let args = wrk_args(o, url, accept);
    let out = tokio::process::Command::new("wrk")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fail = |why: &str| -> Error {
        format!(
            "wrk {}: {why}\n{text}{}",
            args.join(" "),
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
    if text.contains("Socket errors") {
        return Err(fail("socket errors"));
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
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) if requests > 0 => Ok(WrkResult {
            rps,
            p50_ms,
            p99_ms,
            requests,
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
}

struct Row {
    id: String,
    label: String,
    unit: &'static str,
    kind: Kind,
    vals: [Vec<f64>; 2],
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

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio_text(kind: Kind, berth: f64, dist: f64) -> String {
    match kind {
        Kind::Higher | Kind::Memory => format!("{:.2}×", berth / dist),
        Kind::Time => {
            let speedup = dist / berth;
            if speedup >= 1.0 {
                format!("{speedup:.2}× faster")
            } else {
                format!("{:.2}× slower", 1.0 / speedup)
            }
        }
    }
}

fn print_table(headers: [&str; 4], rows: &[[String; 4]]) {
    let mut w = headers.map(|h| h.chars().count());
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 4]| {
        let pad = |s: &str, n: usize, right: bool| {
            let fill = " ".repeat(n - s.chars().count());
            if right {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        println!(
            "| {} | {} | {} | {} |",
            pad(cells[0], w[0], false),
            pad(cells[1], w[1], true),
            pad(cells[2], w[2], true),
            pad(cells[3], w[3], true)
        );
    };
    line(headers);
    println!(
        "|{}|{}:|{}:|{}:|",
        "-".repeat(w[0] + 2),
        "-".repeat(w[1] + 1),
        "-".repeat(w[2] + 1),
        "-".repeat(w[3] + 1)
    );
    for r in rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
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
    unit: &'static str,
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

/// dd of `count` × 16 MiB zeros; MB/s from dd's own report (falls back to our timing).
fn dd_write(o: &Opts, dir: &Path, sync: bool) -> R<f64> {
    let file = dir.join("dd-test");
    let mut args = vec![
        "if=/dev/zero".to_owned(),
        format!("of={}", file.display()),
        "bs=16M".to_owned(),
        format!("count={}", o.dd_count),
    ];
    if sync {
        args.push("conv=fdatasync".to_owned());
    }
    let t = Instant::now();
    let out = Command::new("dd").args(&args).output()?;
    let elapsed = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("dd {}: {text}", args.join(" "));
    }
    // "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.5 s, 430 MB/s"
    let parsed = text
        .lines()
        .find(|l| l.contains(" copied, "))
        .and_then(|l| {
            let bytes: f64 = l.split_whitespace().next()?.parse().ok()?;
            let after = l.split(" copied, ").nth(1)?;
            let secs: f64 = after.split_whitespace().next()?.parse().ok()?;
            (secs > 0.0).then_some(bytes / secs / 1e6)
        });
    Ok(parsed.unwrap_or((o.dd_count * 16 * MIB) as f64 / elapsed / 1e6))
}

/// `total` bytes of random data (cycling over `data`) written with 16 MiB writes, then
/// fdatasync: what a registry does with a pushed blob. The host's disk may treat zeros (dd's
/// input) differently from random bytes.
fn write_random(dir: &Path, data: &[u8], total: usize) -> R<f64> {
    use std::io::Write as _;
    let path = dir.join("write-test");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut left = total;
    while left > 0 {
        for piece in data.chunks(16 * MIB) {
            let k = piece.len().min(left);
            file.write_all(&piece[..k])?;
            left -= k;
            if left == 0 {
                break;
            }
        }
    }
    file.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(total as f64 / secs / 1e6)
}

/// `total` bytes over `conns` loopback TCP connections with 1 MiB buffers; MB/s at the receiver.
async fn loopback(total: usize, conns: usize) -> R<f64> {
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
        senders.push(tokio::spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let buf = vec![0x5au8; MIB];
            let mut left = per;
            while left > 0 {
                let k = left.min(buf.len());
                sock.write_all(&buf[..k]).await?;
                left -= k;
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

/// Writes every dirty page out (`sync`), untimed, before a timed workload: Distribution does not
/// sync, so without this its last push's writeback lands in the next registry's timed window
/// (Berth's fsyncs wait behind it, and Berth's journal checkpoint, a `syncfs`, would do that
/// writeback during Berth's pull).
fn settle_disk() -> R<()> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// The file operations a durable registry cannot skip when a push creates a tag, and nothing
/// else: make the tag's directory (Distribution's layout, `tags/<tag>/current/`), write its
/// 71-byte link to a temp file, fdatasync it, rename it into place, fsync the directory.
/// `threads` create `n` tags between them; tags per second.
fn durable_tag_floor(dir: &Path, n: usize, threads: usize) -> R<f64> {
    use std::io::Write as _;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

async fn machine_limits(o: &Opts, dir: &Path, big: &Big) -> R<Vec<Limit>> {
    let mut out = Vec::new();
    eprintln!("== machine limits");
    let v = openssl_sha256(o)?;
    out.push(Limit {
        id: "sha256_openssl",
        label: "SHA-256, one core (openssl, 16 KiB blocks)".to_owned(),
        value: v,
        unit: "MB/s",
    });
    let n = o.sha_bytes.min(big.head.len());
    let t = Instant::now();
    let digest = Sha256::digest(&big.head[..n]);
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    out.push(Limit {
        id: "sha256_sha2_crate",
        label: format!(
            "SHA-256, one core (sha2 crate, {:.0} MiB)",
            n as f64 / MIB as f64
        ),
        value: n as f64 / secs / 1e6,
        unit: "MB/s",
    });
    // Loopback before dd, so no writeback from the file test is still going on.
    let gib = o.loopback as f64 / (1024.0 * MIB as f64);
    for (id, conns) in [("loopback_tcp_1", 1), ("loopback_tcp_16", o.loopback_conns)] {
        let mut runs = Vec::new();
        for _ in 0..o.rounds {
            runs.push(loopback(o.loopback, conns).await?);
        }
        let plural = if conns == 1 { "" } else { "s" };
        out.push(Limit {
            id,
            label: format!("loopback TCP {gib} GiB, {conns} connection{plural}"),
            value: median(&runs),
            unit: "MB/s",
        });
    }
    let gib = (o.dd_count * 16) as f64 / 1024.0;
    out.push(Limit {
        id: "disk_write_fdatasync",
        label: format!("file write {gib} GiB, fdatasync at end (dd)"),
        value: dd_write(o, dir, true)?,
        unit: "MB/s",
    });
    out.push(Limit {
        id: "disk_write_random_fdatasync",
        label: format!("file write {gib} GiB random, fdatasync at end"),
        value: write_random(dir, &big.head, o.dd_count * 16 * MIB)?,
        unit: "MB/s",
    });
    out.push(Limit {
        id: "disk_write_cached",
        label: format!("file write {gib} GiB, no sync (dd)"),
        value: dd_write(o, dir, false)?,
        unit: "MB/s",
    });
    for (id, threads) in [
        ("durable_tag_floor_c8", o.tag_conc),
        ("durable_tag_floor_c1", 1),
    ] {
        let mut runs = Vec::new();
        for _ in 0..o.rounds {
            runs.push(durable_tag_floor(dir, o.tags, threads)?);
        }
        out.push(Limit {
            id,
            label: format!(
                "new tag's durable file ops only (mkdir, write, fdatasync, rename, fsync dir), {threads} thread{}",
                if threads == 1 { "" } else { "s" }
            ),
            value: median(&runs),
            unit: "tags/s",
        });
    }
    for l in &out {
        eprintln!("  {:<44} {} {}", l.label, fmt_num(l.value), l.unit);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The run

struct Bench {
    o: Opts,
    client: Client,
    servers: Vec<Server>,
    table: Table,
    rng: Rng,
    variants: u64,
    commands: Vec<String>,
}

impl Bench {
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
            &format!("RSS after {size_mib} MiB push (max)"),
            "MiB",
            Kind::Memory,
        );
        let mut max_rss = [0f64; 2];
        // The blob each registry's pull reads, per round.
        let mut pushed: Vec<[Option<(String, Blob)>; 2]> = vec![[None, None]; self.o.rounds];
        eprintln!("== push {size_mib} MiB, monolithic (POST + PUT)");
        for round in 0..self.o.rounds {
            for (i, rss) in max_rss.iter_mut().enumerate() {
                let blob = self.next_variant(big);
                let repo = format!("bench/mono-r{round}");
                let reg = self.servers[i].reg.clone();
                settle_disk()?;
                let t = Instant::now();
                push_monolithic(&self.client, &reg, &repo, &blob).await?;
                let secs = t.elapsed().as_secs_f64();
                self.table.push(mono, i, blob.len() as f64 / secs / 1e6);
                *rss = rss.max(self.servers[i].status_mib("VmRSS")?);
            }
        }
        eprintln!(
            "== push {size_mib} MiB, chunked (POST, PATCH × {} MiB, PUT)",
            self.o.chunk / MIB
        );
        for (round, slot) in pushed.iter_mut().enumerate() {
            for (i, dst) in slot.iter_mut().enumerate() {
                let blob = self.next_variant(big);
                let repo = format!("bench/chunked-r{round}");
                let reg = self.servers[i].reg.clone();
                settle_disk()?;
                let t = Instant::now();
                push_chunked(&self.client, &reg, &repo, &blob, self.o.chunk).await?;
                let secs = t.elapsed().as_secs_f64();
                self.table.push(chunked, i, blob.len() as f64 / secs / 1e6);
                max_rss[i] = max_rss[i].max(self.servers[i].status_mib("VmRSS")?);
                *dst = Some((repo, blob));
            }
        }
        for (i, rss) in max_rss.iter().enumerate() {
            self.table.push(rss_after, i, *rss);
        }
        eprintln!("== pull {size_mib} MiB");
        for slot in &pushed {
            for (i, entry) in slot.iter().enumerate() {
                let (repo, blob) = entry.as_ref().expect("pushed");
                settle_disk()?;
                let t = Instant::now();
                pull_count(&self.client, &self.servers[i].reg, repo, blob).await?;
                let secs = t.elapsed().as_secs_f64();
                self.table.push(pull, i, blob.len() as f64 / secs / 1e6);
            }
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
        let pull_bare_n = self.table.add(
            &format!("pull_{conns}x{blob_mib}MiB_bare"),
            &format!("pull {blob_mib} MiB × {conns} concurrent, bare client"),
            "MB/s",
            Kind::Higher,
        );
        eprintln!("== the same with a bare HTTP/1.1 client reading 1 MiB at a time");
        for _ in 0..self.o.rounds {
            for (i, reg) in self.regs().into_iter().enumerate() {
                settle_disk()?;
                let (client, blob2, reg2) = (self.client.clone(), blob.clone(), reg.clone());
                let (wall, _) = run_pool(conns, conns, move |_| {
                    let (client, reg, blob) = (client.clone(), reg2.clone(), blob2.clone());
                    async move { pull_count(&client, &reg, "bench/pull", &blob).await }
                })
                .await?;
                self.table
                    .push(pull_n, i, (conns * blob.len()) as f64 / wall / 1e6);
                let blob2 = blob.clone();
                settle_disk()?;
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
            for (i, reg) in self.regs().into_iter().enumerate() {
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
                settle_disk()?;
                let t = Instant::now();
                let (client, reg2, repo2) = (self.client.clone(), reg.clone(), repo.clone());
                run_pool(blobs.len(), par, move |k| {
                    let (client, reg, repo, blobs) =
                        (client.clone(), reg2.clone(), repo2.clone(), blobs.clone());
                    async move { push_monolithic(&client, &reg, &repo, &blobs[k]).await }
                })
                .await?;
                put_manifest(&self.client, &reg, &repo, "v1", manifest).await?;
                self.table.push(row, i, t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    async fn wrk_workloads(&mut self) -> R<()> {
        let small = Blob::whole(Bytes::from(self.rng.bytes(4096)));
        let config = config_blob("wrk");
        let manifest = image_manifest(&config, std::slice::from_ref(&small));
        let mut urls = Vec::new();
        for reg in self.regs() {
            let c = &self.client;
            push_monolithic(c, &reg, "bench/wrk", &small).await?;
            push_monolithic(c, &reg, "bench/wrk", &config).await?;
            put_manifest(c, &reg, "bench/wrk", "latest", manifest.clone()).await?;
            // Check both URLs answer what wrk will count as success.
            let m_url = format!("{}/v2/bench/wrk/manifests/latest", reg.base);
            let (_, body) = call(
                c.get(&m_url).header(header::ACCEPT, ACCEPT_MANIFESTS),
                StatusCode::OK,
                "GET manifest",
            )
            .await?;
            if body != manifest {
                bail!("{}: GET manifest returned other bytes", reg.name);
            }
            let b_url = format!("{}/v2/bench/wrk/blobs/{}", reg.base, small.digest);
            let (_, body) = call(c.get(&b_url), StatusCode::OK, "GET blob").await?;
            if body.len() != small.len() {
                bail!("{}: GET small blob returned {} bytes", reg.name, body.len());
            }
            urls.push((m_url, b_url));
        }
        let secs = self.o.wrk_secs;
        let workloads = [
            ("manifest_get", "manifest GET by tag", true),
            ("blob_get_4KiB", "blob GET 4 KiB", false),
        ];
        for (id, label, is_manifest) in workloads {
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
            eprintln!("== {label}: wrk, {conns} connections, {secs} s");
            let mut p50s = [Vec::new(), Vec::new()];
            for _ in 0..self.o.rounds {
                for (i, (m_url, b_url)) in urls.iter().enumerate() {
                    let (url, accept) = if is_manifest {
                        (m_url, Some(ACCEPT_MANIFESTS))
                    } else {
                        (b_url, None)
                    };
                    let r = run_wrk(&self.o, url, accept).await?;
                    self.table.push(rps, i, r.rps);
                    self.table.push(p99, i, r.p99_ms);
                    p50s[i].push(r.p50_ms);
                    eprintln!("    ({} requests, p50 {:.3} ms)", r.requests, r.p50_ms);
                }
            }
            self.table.notes.push(format!(
                "{label}: wrk p50 latency (median of rounds) Berth {:.3} ms, Distribution {:.3} ms",
                median(&p50s[0]),
                median(&p50s[1])
            ));
            for (i, (m_url, b_url)) in urls.iter().enumerate() {
                let url = if is_manifest { m_url } else { b_url };
                let args = wrk_args(&self.o, url, accept_of(is_manifest));
                let quoted: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if a.contains(' ') {
                            format!("'{a}'")
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                self.commands.push(format!(
                    "{label} ({}): wrk {}",
                    self.servers[i].reg.name,
                    quoted.join(" ")
                ));
            }
        }
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
                for (i, reg) in self.regs().into_iter().enumerate() {
                    let repo = format!("bench/tags-{label}-r{round}");
                    push_monolithic(&self.client, &reg, &repo, &layer).await?;
                    push_monolithic(&self.client, &reg, &repo, &config).await?;
                    let (client, reg2, repo2, m) = (
                        self.client.clone(),
                        reg.clone(),
                        repo.clone(),
                        manifest.clone(),
                    );
                    settle_disk()?;
                    let (wall, times) =
                        run_pool(n, in_flight, move |k| {
                            let (client, reg, repo, m) =
                                (client.clone(), reg2.clone(), repo2.clone(), m.clone());
                            async move {
                                put_manifest(&client, &reg, &repo, &format!("t{k:06}"), m).await
                            }
                        })
                        .await?;
                    self.table.push(row, i, n as f64 / wall);
                    if in_flight == 1 {
                        seq_times[i].extend(times);
                    }
                }
            }
        }
        eprintln!("== list {n} tags, n={page} per page following Link, and in one request");
        for round in 0..self.o.rounds {
            for (i, reg) in self.regs().into_iter().enumerate() {
                for (row, page) in [(list, page), (whole, 0)] {
                    let repo = format!("bench/tags-seq-r{round}");
                    settle_disk()?;
                    let t = Instant::now();
                    let (tags, pages) = list_tags(&self.client, &reg, &repo, page).await?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let want: BTreeSet<String> = (0..n).map(|k| format!("t{k:06}")).collect();
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
        for (i, name) in ["Berth", "Distribution"].iter().enumerate() {
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
}

fn accept_of(is_manifest: bool) -> Option<&'static str> {
    is_manifest.then_some(ACCEPT_MANIFESTS)
}

/// Lists a repository's tags `page` at a time, following `Link: <…>; rel="next"`
/// (`page` 0: one request without `n`).
async fn list_tags(c: &Client, reg: &Reg, repo: &str, page: usize) -> R<(Vec<String>, usize)> {
    let first = match page {
        0 => format!("{}/v2/{repo}/tags/list", reg.base),
        _ => format!("{}/v2/{repo}/tags/list?n={page}", reg.base),
    };
    let mut url = Some(first);
    let mut tags = Vec::new();
    let mut pages = 0;
    while let Some(u) = url.take() {
        pages += 1;
        if pages > 100_000 {
            bail!("{}: tag listing does not end", reg.name);
        }
        let (headers, body) = call(c.get(&u), StatusCode::OK, "GET tags/list").await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)?;
        let Some(list) = doc["tags"].as_array() else {
            bail!("{}: tags/list without a tags array", reg.name);
        };
        tags.extend(list.iter().filter_map(|t| t.as_str().map(str::to_owned)));
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
    Ok((tags, pages))
}

async fn run(o: Opts) -> R<()> {
    let started = Instant::now();
    ensure_wrk()?;
    let berth_bin = berth_binary()?;
    let dist_bin =
        std::env::var("DISTRIBUTION_BIN").unwrap_or_else(|_| "/usr/bin/docker-registry".into());
    // Declared before the servers so the servers are stopped before it is removed.
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench.")
        .tempdir_in(std::env::temp_dir())?;
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

    let berth_port = free_port()?;
    let berth_data = tmp.path().join("berth-data");
    std::fs::create_dir_all(&berth_data)?;
    let mut cmd = Command::new(&berth_bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{berth_port}"))
        .arg("--data-dir")
        .arg(&berth_data)
        .args(["--log-level", "warn"]);
    let berth = Server::spawn("berth", cmd, berth_port, tmp.path().join("berth.log"))?;

    let dist_port = free_port()?;
    let dist_data = tmp.path().join("distribution-data");
    std::fs::create_dir_all(&dist_data)?;
    let dist_yml = tmp.path().join("distribution.yml");
    let yaml = distribution_config(&dist_data, dist_port);
    std::fs::write(&dist_yml, &yaml)?;
    let mut cmd = Command::new(&dist_bin);
    cmd.arg("serve").arg(&dist_yml);
    let dist = Server::spawn(
        "distribution",
        cmd,
        dist_port,
        tmp.path().join("distribution.log"),
    )?;

    let mut b = Bench {
        o,
        client,
        servers: vec![berth, dist],
        table: Table::default(),
        rng,
        variants: 0,
        commands: Vec::new(),
    };
    for s in &mut b.servers {
        s.wait_ready(&b.client).await?;
    }
    let rss_start = b
        .table
        .add("rss_idle", "RSS idle after start", "MiB", Kind::Memory);
    for i in 0..2 {
        let v = b.servers[i].status_mib("VmRSS")?;
        b.table.push(rss_start, i, v);
    }

    let runs = |group: &str| {
        b.o.only
            .as_ref()
            .is_none_or(|g| g.iter().any(|x| x == group))
    };
    let (blobs, image, wrk, tags) = (runs("blobs"), runs("image"), runs("wrk"), runs("tags"));
    let result = async {
        if blobs {
            b.blobs_and_pulls(&big).await?;
        }
        if image {
            b.image_push().await?;
        }
        if wrk {
            b.wrk_workloads().await?;
        }
        if tags {
            b.tags().await?;
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = result {
        for s in &b.servers {
            eprintln!("--- last lines of {} log:\n{}", s.reg.name, s.log_tail());
        }
        return Err(e);
    }

    let hwm = b
        .table
        .add("rss_peak", "peak RSS (VmHWM at end)", "MiB", Kind::Memory);
    for i in 0..2 {
        let v = b.servers[i].status_mib("VmHWM")?;
        b.table.push(hwm, i, v);
    }
    let server_cmds: Vec<String> = b.servers.iter().map(|s| s.command.clone()).collect();
    for s in &mut b.servers {
        s.stop();
    }
    let limits = machine_limits(&b.o, tmp.path(), &big).await?;
    let total = started.elapsed().as_secs_f64();

    // ------------------------------------------------------------------ report
    let o = &b.o;
    println!();
    println!(
        "Berth vs CNCF Distribution ({} mode, {} round{}, medians; MB = 10^6 bytes)",
        if o.quick { "quick" } else { "full" },
        o.rounds,
        if o.rounds == 1 { "" } else { "s" }
    );
    println!();
    let rows: Vec<[String; 4]> = b
        .table
        .rows
        .iter()
        .map(|r| {
            let (bm, dm) = (median(&r.vals[0]), median(&r.vals[1]));
            [
                format!("{} ({})", r.label, r.unit),
                fmt_num(bm),
                fmt_num(dm),
                ratio_text(r.kind, bm, dm),
            ]
        })
        .collect();
    print_table(
        ["workload", "Berth", "Distribution", "Berth/Distribution"],
        &rows,
    );
    println!();
    println!(
        "Throughput, rate and memory rows: ratio = Berth / Distribution (memory: lower is better)."
    );
    println!("Time rows (s, ms, p99): \"N× faster\" = Distribution time / Berth time.");
    println!();
    println!("Machine limits:");
    for l in &limits {
        println!("  {:<46} {:>8} {}", l.label, fmt_num(l.value), l.unit);
    }
    println!();
    println!("Notes:");
    for n in &b.table.notes {
        println!("  - {n}");
    }
    println!();
    println!("Commands and parameters:");
    println!("  berth:        {}", server_cmds[0]);
    println!("  distribution: {}  with:", server_cmds[1]);
    for l in yaml.lines() {
        println!("      {l}");
    }
    println!("  client: reqwest (HTTP/1.1 keep-alive, TCP_NODELAY), bodies sent from memory as Bytes slices, Content-Length always set");
    println!(
        "  push monolithic: POST /v2/bench/mono-rN/blobs/uploads/ -> PUT <Location>&digest=sha256:… with the whole {} MiB body; a new random blob every push",
        o.big / MIB
    );
    println!(
        "  push chunked: POST -> PATCH <Location> × {} ({} MiB each, Content-Range: start-end) -> PUT <Location>&digest=… (empty body)",
        o.big.div_ceil(o.chunk),
        o.chunk / MIB
    );
    println!(
        "  pull: GET /v2/<repo>/blobs/<digest> of the chunked-pushed blob, bytes counted (not hashed); concurrent: {} GETs at once of one {} MiB blob",
        o.pull_conns,
        o.pull_blob / MIB
    );
    println!(
        "  image: {} layers of {} B random + config, each POST + PUT ?digest=, {} in flight, then PUT manifest (OCI); time from first POST to manifest 201",
        o.layers, o.layer_size, o.layer_par
    );
    for c in &b.commands {
        println!("  {c}");
    }
    println!(
        "  tags: PUT /v2/bench/tags-*-rN/manifests/t000000… (one ~{} B OCI manifest), {} in flight and 1 in flight; listing: GET /v2/<repo>/tags/list?n={} then each Link rel=\"next\"",
        image_manifest(&config_blob("tags"), &[Blob::whole(Bytes::from_static(&[0; 4096]))]).len(),
        o.tag_conc,
        o.page
    );
    println!(
        "  RSS: VmRSS from /proc/PID/status right after each big push (max shown); VmHWM read before stopping each server"
    );
    println!(
        "  disk: `sync` (untimed) before every timed push, pull, image push, tag PUT run and tag listing, so that one registry's writeback does not fall into the other's time"
    );
    println!(
        "  machine: openssl speed -evp sha256 -bytes 16384 -seconds {}; dd if=/dev/zero of=TMP bs=16M count={} [conv=fdatasync]; the same size of random bytes from memory in 16 MiB write()s + fdatasync; loopback: tokio TcpListener + client, 1 MiB writes/reads, median of the rounds",
        o.openssl_secs, o.dd_count
    );
    println!();
    for r in &b.table.rows {
        let (bm, dm) = (median(&r.vals[0]), median(&r.vals[1]));
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
    println!();
    println!("bench finished in {total:.0} s");
    drop(b);
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
