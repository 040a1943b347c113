//! Which store the integration tests run on, chosen by `BERTH_TEST_STORAGE`:
//! unset or `filesystem` (a data directory per server, the default), or `s3`
//! (the shared Garage of [`super::garage`], a fresh key prefix per registry,
//! two replicas behind the round-robin [`super::balancer`]).
//!
//! A test inherently about the filesystem (the journal, sendfile from the
//! data directory, a full disk, Distribution's directory layout on disk)
//! starts with `if filesystem_only("why") { return; }`: the one place that
//! skips a test on S3, loudly.

use std::io::Write as _;
use std::sync::OnceLock;

use berth::config::StorageBackend;
use berth::storage::s3::S3Config;

use super::garage::Garage;

/// The variable that picks the backend.
pub const VARIABLE: &str = "BERTH_TEST_STORAGE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Filesystem,
    S3,
}

/// The backend of this run; an unknown value is a mistake, not a default.
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var(VARIABLE).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("") | Ok("filesystem") => Backend::Filesystem,
        Ok("s3") => Backend::S3,
        other => panic!("{VARIABLE}={other:?}: expected filesystem or s3"),
    })
}

pub fn on_s3() -> bool {
    backend() == Backend::S3
}

/// True (and a loud SKIPPED line naming the test and `why`) when the
/// backend is not the filesystem: for a test that is about the filesystem
/// itself. Written to stderr directly, past the harness's output capture,
/// so that `cargo test` shows it.
pub fn filesystem_only(why: &str) -> bool {
    if !on_s3() {
        return false;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a filesystem-only test")
        .to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} (filesystem only: {why})");
    true
}

/// The shared Garage. With `BERTH_TEST_STORAGE=s3` a missing Garage fails
/// the test (its fixture says why): the run asked for S3.
fn garage() -> &'static Garage {
    Garage::shared()
}

/// A fresh key prefix in the shared bucket: a store of its own.
pub fn fresh_prefix() -> String {
    garage().prefix()
}

/// The `[storage.s3]` table of the store under `prefix`.
pub fn s3_config(prefix: &str) -> S3Config {
    let garage = garage();
    S3Config {
        bucket: garage.bucket.clone(),
        endpoint: Some(garage.endpoint.clone()),
        region: garage.region.clone(),
        prefix: prefix.to_owned(),
        access_key_id: Some(garage.key_id.clone()),
        secret_access_key: Some(garage.secret.clone()),
        ..S3Config::default()
    }
}

/// Points `config` at the store under `prefix`.
pub fn use_s3(config: &mut berth::Config, prefix: &str) {
    config.storage.backend = StorageBackend::S3;
    config.storage.s3 = s3_config(prefix);
}

/// The environment that makes a `berth` process (serve, gc, fsck) open the
/// store under `prefix`: the `--s3-*` flags' variables and the standard
/// AWS credentials.
pub fn s3_env(prefix: &str) -> Vec<(String, String)> {
    let garage = garage();
    [
        ("BERTH_S3_BUCKET", garage.bucket.as_str()),
        ("BERTH_S3_ENDPOINT", garage.endpoint.as_str()),
        ("BERTH_S3_REGION", garage.region.as_str()),
        ("BERTH_S3_PREFIX", prefix),
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
