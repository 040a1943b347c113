//! A real Garage (S3-compatible object store) for the tests of the S3
//! backend: a 1-node cluster shared by the whole test binary, and 3-node
//! clusters of a test's own for fault tests.
//!
//! Every cluster is started by `tests/garage.sh`, the one home of the start
//! sequence (for the e2e scripts and the benchmark too). Its watchdog stops the
//! nodes once this process is gone, so the shared cluster, a static that is
//! never dropped, does not outlive the test binary even when it is killed.
//!
//! A test that needs Garage starts with
//! `if !garage_or_skip() { return; }`: the one place that decides what a
//! missing Garage means.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, RetryConfig};

/// `tests/garage.sh`.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/garage.sh");

/// The script's exit status for "no garage binary here".
const NO_GARAGE: i32 = 3;

/// Whether tests that need Garage can run. Without a Garage binary: in CI
/// (`CI=true`) this panics, since a green CI must mean the S3 tests ran;
/// elsewhere it prints a loud SKIPPED line naming the test and returns false.
///
/// Its test must have `garage_` in its path (a `garage_*` module):
/// `tests/run.sh` runs those apart, once its Garage build is done, and any
/// other would find no Garage on a fresh CI machine. Checked here, on every
/// machine, so that a misplaced test fails where it is written.
pub fn garage_or_skip() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test that needs Garage")
        .to_owned();
    assert!(
        test.contains("garage_"),
        "{test} needs Garage, so it belongs in a garage_* module: \
         tests/run.sh runs those once Garage is built"
    );
    if garage_found() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: no Garage binary, and CI=true requires one \
             (tests/run.sh builds it; or set GARAGE_BIN)"
        );
    }
    // Written to stderr directly, past the harness's output capture, so that
    // `cargo test` shows it (as integrity.rs's tmpfs test does).
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no Garage binary (GARAGE_BIN, target/garage/bin/garage, \
         /work/cache/garage/bin/garage or PATH; `tests/install-tools.sh --garage` builds one)"
    );
    false
}

/// Whether `tests/garage.sh find` finds a binary (the script, which starts
/// the clusters, is the one judge of which), asked once per test binary.
fn garage_found() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let output = Command::new(SCRIPT)
            .arg("find")
            .output()
            .expect("tests/garage.sh runs");
        match output.status.code() {
            Some(0) => true,
            Some(NO_GARAGE) => false,
            _ => panic!(
                "tests/garage.sh find failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    })
}

/// A running Garage cluster and the credentials of its one key, allowed to
/// read, write and own the bucket.
pub struct Garage {
    /// Node 1's S3 API, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    /// Each node's S3 API, node 1 first.
    endpoints: Vec<String>,
    /// The cluster's directory (configs, data, logs, the `env` file).
    dir: PathBuf,
    /// Removes the cluster's parent directory on drop; `None` for the
    /// shared cluster, which is never dropped (its watchdog removes it).
    _temp: Option<tempfile::TempDir>,
}

impl Garage {
    /// The 1-node cluster of this test binary, started on first use. Call
    /// [`garage_or_skip`] first.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Kept: the watchdog deletes it with the nodes once this process
            // ends (a static is never dropped).
            let dir = tempfile::Builder::new()
                .prefix("berth-garage-")
                .tempdir()
                .expect("temp dir")
                .keep();
            Garage::start(dir, None, 1)
        })
    }

    /// A cluster of `nodes` (1 or 3) of the caller's own, replication factor
    /// `nodes` (so 3 nodes keep read and write quorum with one stopped);
    /// stopped when dropped. Call [`garage_or_skip`] first.
    pub fn start_cluster(nodes: usize) -> Garage {
        let temp = tempfile::Builder::new()
            .prefix("berth-garage-")
            .tempdir()
            .expect("temp dir");
        Garage::start(temp.path().to_path_buf(), Some(temp), nodes)
    }

    /// Starts a cluster in `dir/cluster`. The watchdog removes `dir` with
    /// the nodes when this process is gone (`temp`, which removes it on
    /// drop, is never dropped then).
    fn start(dir: PathBuf, temp: Option<tempfile::TempDir>, nodes: usize) -> Garage {
        let cluster = dir.join("cluster");
        let output = Command::new(SCRIPT)
            .arg("start")
            .arg(&cluster)
            .args(["--nodes", &nodes.to_string()])
            .args(["--owner", &std::process::id().to_string()])
            .arg("--remove")
            .arg(&dir)
            .output()
            .expect("tests/garage.sh runs");
        assert!(
            output.status.success(),
            "tests/garage.sh start failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // "N-node cluster up in T ms", past the output capture: start-up
        // times show in every run's log.
        let _ = std::io::stderr().write_all(&output.stdout);

        let env = std::fs::read_to_string(cluster.join("env")).expect("the cluster's env file");
        let env: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let var = |name: &str| {
            env.get(name)
                .unwrap_or_else(|| panic!("{name} missing from the env file"))
                .to_string()
        };
        Garage {
            endpoint: var("S3_ENDPOINT"),
            region: var("S3_REGION"),
            bucket: var("S3_BUCKET"),
            key_id: var("AWS_ACCESS_KEY_ID"),
            secret: var("AWS_SECRET_ACCESS_KEY"),
            endpoints: (1..=nodes)
                .map(|n| var(&format!("S3_ENDPOINT_{n}")))
                .collect(),
            dir: cluster,
            _temp: temp,
        }
    }

    /// A fresh key prefix (`test-<uuid>`: a directory, as Berth's S3 prefix
    /// is, with no slash either side) for one test, so that tests sharing the
    /// bucket never see each other's objects.
    pub fn prefix(&self) -> String {
        format!("test-{}", uuid::Uuid::new_v4().simple())
    }

    /// Node `n`'s S3 API (`n` from 1).
    pub fn endpoint_of(&self, n: usize) -> &str {
        &self.endpoints[n - 1]
    }

    /// An object_store client on node 1 with this cluster's key.
    pub fn store(&self) -> AmazonS3 {
        self.store_at(&self.endpoint)
    }

    /// An object_store client on `endpoint`.
    pub fn store_at(&self, endpoint: &str) -> AmazonS3 {
        self.store_builder(endpoint).build().expect("an S3 client")
    }

    /// The builder of [`Garage::store_at`], for a test to adjust. Retries
    /// are few and short: a test should see a fault, not wait out
    /// object_store's 3-minute default.
    pub fn store_builder(&self, endpoint: &str) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
    }

    /// Stops node `n` (SIGTERM), once every running node has dropped it
    /// (Garage would notice only at its next ping: see tests/garage.sh).
    pub fn stop_node(&self, n: usize) {
        self.script(&["stop-node", &n.to_string()]);
    }

    /// Starts node `n` again, and waits until it and the running nodes are
    /// connected both ways and its S3 API answers.
    pub fn start_node(&self, n: usize) {
        self.script(&["start-node", &n.to_string()]);
    }

    fn script(&self, args: &[&str]) {
        let (command, rest) = args.split_first().unwrap();
        let output = Command::new(SCRIPT)
            .arg(command)
            .arg(&self.dir)
            .args(rest)
            .output()
            .expect("tests/garage.sh runs");
        assert!(
            output.status.success(),
            "tests/garage.sh {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // Only clusters of a test's own are dropped; a failing stop must not
        // turn a passing test into a panic in drop, and the watchdog is there.
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).output();
    }
}
