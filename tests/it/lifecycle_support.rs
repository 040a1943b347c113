//! Helpers shared by the lifecycle tests (garbage collection, retention,
//! upload expiry): making stored data older, a collector over a server's
//! store, and pushing and pulling whole images.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth::registry::{LifecycleConfig, Registry};
use berth::Config;
use reqwest::StatusCode;

use crate::support::backend::on_s3;
use crate::support::{
    expect_status, image_manifest, sha256_digest, store, TestRegistry, OCI_MANIFEST,
};

/// Makes everything stored so far `by` older, as if that much time had
/// passed: what a collection or retention run afterwards sees as old.
///
/// On the filesystem: every file's modification time, and the times in tag
/// history entry names. On S3, whose times cannot be set: the history
/// entries are renamed the same way, and, since an object's time is the
/// store's clock at its write, the registry remembers a point T after
/// everything written so far (HEAD times have whole seconds: T is the second
/// boundary a second past now) and waits until a second past T, so that
/// whatever is written afterwards is certainly newer than T. A collector or
/// `berth gc` opened afterwards with a grace period shorter than `by` then
/// uses T as its cutoff ([`aged_grace`]), which is what aging by `by` means
/// for it.
pub async fn age(registry: &TestRegistry, by: Duration) {
    if !on_s3() {
        age_files(&registry.storage_root(), by);
        return;
    }
    let storage = registry.storage().await;
    for repository in repositories_with_history(storage.as_ref()).await {
        let histories = format!("{repository}/_berth/history");
        for tag in store::children(storage.as_ref(), &histories).await {
            let dir = format!("{histories}/{tag}");
            for entry in store::children(storage.as_ref(), &dir).await {
                let Some((nanos, rest)) = entry.split_once('-') else {
                    continue;
                };
                let Ok(nanos) = nanos.parse::<u128>() else {
                    continue;
                };
                let older = format!("{dir}/{:020}-{rest}", nanos - by.as_nanos());
                assert!(storage
                    .rename(&format!("{dir}/{entry}"), &older)
                    .await
                    .unwrap());
            }
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let point = UNIX_EPOCH + Duration::from_secs(now.as_secs() + 2);
    while SystemTime::now() < point + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *registry.aged.lock().unwrap() = Some((point, by));
}

/// Every repository's key (`repositories/<name>`) that holds a Berth tag
/// history: the directories under `repositories/` that have `_berth/history`.
async fn repositories_with_history(storage: &dyn berth::storage::Storage) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec!["repositories".to_owned()];
    while let Some(dir) = pending.pop() {
        let children = store::children(storage, &dir).await;
        if children.iter().any(|c| c == "_berth")
            && !store::children(storage, &format!("{dir}/_berth/history"))
                .await
                .is_empty()
        {
            found.push(dir.clone());
        }
        pending.extend(
            children
                .into_iter()
                .filter(|c| !c.starts_with('_'))
                .map(|c| format!("{dir}/{c}")),
        );
    }
    found
}

/// The filesystem's [`age`]: file times, and history entry names.
fn age_files(storage_root: &Path, by: Duration) {
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

/// The period a collection or expiry run given `configured` should use to
/// see the store as [`age`] left it: `configured` itself, except on S3
/// after an `age` by more than it, where it is the time since the aging
/// point (so that what was written before is old, what came after is new).
pub fn aged_grace(registry: &TestRegistry, configured: Duration) -> Duration {
    match *registry.aged.lock().unwrap() {
        Some((point, by)) if configured < by => SystemTime::now()
            .duration_since(point)
            .expect("the aging point has passed"),
        _ => configured,
    }
}

/// A registry over the test's store, as `berth gc` would open it: another
/// process's view (its own caches). On S3, its grace period and upload
/// expiry see what [`age`] made old as old (see [`aged_grace`]): use it at
/// once, within the second of slack `age` leaves.
pub async fn collector(registry: &TestRegistry, mut lifecycle: LifecycleConfig) -> Arc<Registry> {
    lifecycle.gc_grace_period = aged_grace(registry, lifecycle.gc_grace_period);
    lifecycle.upload_expiry = aged_grace(registry, lifecycle.upload_expiry);
    let config = Config {
        lifecycle,
        ..registry.tool_config()
    };
    berth::build_registry(&config).await.unwrap()
}

/// The digests in the shared content store.
pub async fn stored_blobs(registry: &TestRegistry) -> BTreeSet<String> {
    let storage = registry.storage().await;
    let storage = storage.as_ref();
    let mut found = BTreeSet::new();
    for alg in store::children(storage, "blobs").await {
        for shard in store::children(storage, &format!("blobs/{alg}")).await {
            for hex in store::children(storage, &format!("blobs/{alg}/{shard}")).await {
                if store::exists(storage, &format!("blobs/{alg}/{shard}/{hex}/data")).await {
                    found.insert(format!("{alg}:{hex}"));
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
