//! Helpers shared by the lifecycle tests (garbage collection, retention,
//! upload expiry): making stored data older, a collector over a server's
//! data directory, and pushing and pulling whole images.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth::registry::{LifecycleConfig, Registry};
use berth::Config;
use reqwest::StatusCode;

use crate::support::{expect_status, image_manifest, sha256_digest, TestRegistry, OCI_MANIFEST};

/// Makes everything stored `by` older, as if that much time had passed:
/// every file's modification time, and the times in tag history entry names.
pub fn age(storage_root: &Path, by: Duration) {
    let mut pending = vec![storage_root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        // Read whole first: a renamed entry must not be met (and aged) again.
        let entries: Vec<_> = entries.map(|e| e.unwrap()).collect();
        for entry in entries {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let then = filetime::FileTime::from_system_time(meta.modified().unwrap() - by);
            filetime::set_file_mtime(entry.path(), then).unwrap();
            let in_history = dir.parent().is_some_and(|p| p.ends_with("_berth/history"));
            let name = entry.file_name().into_string().unwrap();
            if let (true, Some((nanos, rest))) = (in_history, name.split_once('-')) {
                if let Ok(nanos) = nanos.parse::<u128>() {
                    let older = nanos - by.as_nanos();
                    std::fs::rename(entry.path(), dir.join(format!("{older:020}-{rest}"))).unwrap();
                }
            }
        }
    }
}

/// A registry over a test server's data directory, as `berth gc` would
/// open it: another process's view (its own caches).
pub async fn collector(registry: &TestRegistry, lifecycle: LifecycleConfig) -> Arc<Registry> {
    let config = Config {
        data_dir: registry.data.path().to_path_buf(),
        lifecycle,
        ..Config::default()
    };
    berth::build_registry(&config).await.unwrap()
}

/// The digests in the shared content store.
pub fn stored_blobs(storage_root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let blobs = storage_root.join("blobs");
    for alg in std::fs::read_dir(&blobs).into_iter().flatten() {
        let alg = alg.unwrap();
        for shard in std::fs::read_dir(alg.path()).unwrap() {
            for hex in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let hex = hex.unwrap();
                if hex.path().join("data").exists() {
                    found.insert(format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        hex.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    found
}

/// An image as pushed: its manifest and every blob it names.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Image {
    /// A config unique to `seed` and the given layers.
    pub fn new(seed: &str, layers: &[&[u8]]) -> Image {
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
        let config_digest = sha256_digest(&config);
        let layer_refs: Vec<(String, usize)> =
            layers.iter().map(|l| (sha256_digest(l), l.len())).collect();
        let manifest = image_manifest(&config_digest, config.len(), &layer_refs);
        let mut blobs = vec![(config_digest, config)];
        blobs.extend(layers.iter().map(|l| (sha256_digest(l), l.to_vec())));
        Image {
            digest: sha256_digest(&manifest),
            manifest,
            blobs,
        }
    }

    pub fn digests(&self) -> Vec<String> {
        let mut all: Vec<String> = self.blobs.iter().map(|(d, _)| d.clone()).collect();
        all.push(self.digest.clone());
        all
    }

    /// Uploads every blob, then puts the manifest under `reference`.
    pub async fn push(&self, registry: &TestRegistry, name: &str, reference: &str) {
        for (_, content) in &self.blobs {
            registry.push_blob(name, content).await;
        }
        let resp = registry
            .put_manifest(name, reference, OCI_MANIFEST, &self.manifest)
            .await;
        expect_status(resp, StatusCode::CREATED).await;
    }

    /// Pulls the image by digest and checks every byte.
    pub async fn assert_intact(&self, registry: &TestRegistry, name: &str) {
        let (status, body) =
            get_bytes(registry, &format!("/v2/{name}/manifests/{}", self.digest)).await;
        assert_eq!(status, StatusCode::OK, "manifest {} of {name}", self.digest);
        assert_eq!(body, self.manifest);
        for (digest, content) in &self.blobs {
            let (status, body) = get_bytes(registry, &format!("/v2/{name}/blobs/{digest}")).await;
            assert_eq!(status, StatusCode::OK, "blob {digest} of {name}");
            assert_eq!(&body, content, "blob {digest} of {name}");
        }
    }
}

/// A server that reads storage on every request, so another process's
/// collection shows at once.
pub async fn uncached() -> TestRegistry {
    TestRegistry::start_with(|c| c.cache_ttl_ms = 0).await
}

/// Status and body of a GET.
pub async fn get_bytes(registry: &TestRegistry, path: &str) -> (StatusCode, Vec<u8>) {
    let resp = registry
        .client
        .get(registry.url(path))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}
