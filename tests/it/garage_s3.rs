//! Stateless replicas over S3 (issue 13), on a real Garage: two Berth
//! replicas share one bucket (a fresh prefix per test), each with a data
//! directory of its own (its local blob cache), and behave as one registry.
//! Tests address a replica directly (`a`, `b`) when which one answers matters,
//! and the round-robin balancer (`via`) when clients should alternate.
//!
//! The shared set-up of this module is also used by `s3_faults`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::{StorageBackend, StorageConfig};
use berth::registry::lifecycle::UntaggedManifests;
use berth::registry::{GcOptions, GcReport, LifecycleConfig};
use berth::storage::s3::S3Config;
use berth::storage::{Storage, WriteMode};
use berth::{Config, RunningServer};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use crate::fault_proxy::FaultProxy;
use crate::support::balancer::Balancer;
use crate::support::garage::{garage_or_skip, Garage};
use crate::support::{
    basic_auth, client_with_authorization, error_code, expect_status, expect_status_of,
    random_bytes, sha256_digest, OCI_MANIFEST, SIGNING_KEY, TEST_BCRYPT_COST,
};

pub const MIB: usize = 1024 * 1024;

/// S3's smallest part but the last, which Berth advertises as
/// `OCI-Chunk-Min-Length` (Garage does not enforce it, so the tests check
/// the parts Berth records).
const MIN_PART: u64 = 5 * 1024 * 1024;

/// The `[storage.s3]` table of a replica of `garage`'s bucket under
/// `prefix`, reaching the store at `endpoint` (a node, or a proxy before it).
pub fn s3_config(garage: &Garage, endpoint: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: garage.bucket.clone(),
        endpoint: Some(endpoint.to_owned()),
        region: garage.region.clone(),
        prefix: prefix.to_owned(),
        access_key_id: Some(garage.key_id.clone()),
        secret_access_key: Some(garage.secret.clone()),
        ..S3Config::default()
    }
}

/// A replica's configuration: the store `s3`, local state in `data`.
pub fn replica_config(s3: &S3Config, data: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        storage: StorageConfig {
            backend: StorageBackend::S3,
            s3: s3.clone(),
            ..StorageConfig::default()
        },
        ..Config::default()
    }
}

/// One replica, served in this process on a loopback port.
pub struct Replica {
    pub server: RunningServer,
    pub config: Config,
    /// A client of this replica alone (connections pooled).
    pub api: Api,
    _data: tempfile::TempDir,
}

impl Replica {
    pub async fn start(s3: &S3Config, adjust: impl FnOnce(&mut Config)) -> Replica {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = replica_config(s3, data.path());
        adjust(&mut config);
        let server = RunningServer::start(&config)
            .await
            .expect("a replica starts");
        let api = Api::new(&format!("http://{}", server.addr));
        Replica {
            server,
            config,
            api,
            _data: data,
        }
    }
}

/// Two replicas over one prefix of the bucket, and a balancer before them.
pub struct Replicas {
    pub a: Replica,
    pub b: Replica,
    /// Each request on a new connection through the balancer: consecutive
    /// requests alternate between the replicas.
    pub via: Api,
    pub s3: S3Config,
    _balancer: Balancer,
}

impl Replicas {
    /// Two replicas over the shared Garage and a fresh prefix, each with
    /// the configuration `adjust` makes; `None` (after a loud SKIPPED line)
    /// when there is no Garage.
    pub async fn start(adjust: impl Fn(&mut Config)) -> Option<Replicas> {
        if !garage_or_skip() {
            return None;
        }
        let garage = Garage::shared();
        let s3 = s3_config(garage, &garage.endpoint, &garage.prefix());
        Some(Replicas::start_on(s3, adjust).await)
    }

    /// Two replicas over `s3`.
    pub async fn start_on(s3: S3Config, adjust: impl Fn(&mut Config)) -> Replicas {
        let a = Replica::start(&s3, &adjust).await;
        let b = Replica::start(&s3, &adjust).await;
        let balancer = Balancer::start(vec![a.server.addr, b.server.addr]).await;
        Replicas {
            via: Api::alternating(&format!("http://{}", balancer.addr)),
            a,
            b,
            s3,
            _balancer: balancer,
        }
    }

    /// The store the replicas share, opened as another process would (no
    /// cache), for reading what they wrote.
    pub async fn storage(&self) -> Arc<dyn Storage> {
        let data = tempfile::tempdir().unwrap();
        berth::open_storage(&replica_config(&self.s3, data.path()), false)
            .await
            .expect("the store opens")
    }
}

/// Removes every object under `s3`'s prefix: the tests that write hundreds
/// of MiB give the space back (the shared Garage lives as long as the test
/// binary).
pub async fn remove_prefix(garage: &Garage, s3: &S3Config) {
    use object_store::ObjectStore;
    let store = garage.store();
    let prefix = object_store::path::Path::from(s3.prefix.as_str());
    let keys = store
        .list(Some(&prefix))
        .map(|meta| meta.map(|m| m.location))
        .boxed();
    let removed: Vec<_> = store.delete_stream(keys).collect().await;
    for outcome in removed {
        outcome.expect("an object of the test's prefix is removed");
    }
}

/// A client of one registry address.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api::with_client(base, Client::new())
    }

    /// A client that opens a new connection for every request (through a
    /// balancer: each request goes to the next replica).
    pub fn alternating(base: &str) -> Api {
        let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
        Api::with_client(base, client)
    }

    pub fn with_client(base: &str, client: Client) -> Api {
        Api {
            base: base.to_owned(),
            client,
        }
    }

    /// `base` + `path`, or `path` itself when it is absolute.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn head(&self, path: &str) -> Response {
        self.client.head(self.url(path)).send().await.unwrap()
    }

    /// Status and body of `GET path`.
    pub async fn get_bytes(&self, path: &str) -> (StatusCode, Bytes) {
        let resp = self.get(path).await;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{} {path}: the body broke off: {e:?}", self.base));
        (status, body)
    }

    /// `POST /v2/<name>/blobs/uploads/`, asserting 202: the session's path.
    pub async fn start_upload(&self, name: &str) -> String {
        let resp = self
            .client
            .post(self.url(&format!("/v2/{name}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::ACCEPTED).await;
        location(&resp)
    }

    /// Uploads a blob (POST, then PUT with the content), asserting 201.
    pub async fn push_blob(&self, name: &str, content: &[u8]) -> String {
        let digest = sha256_digest(content);
        let session = self.start_upload(name).await;
        let resp = self
            .client
            .put(self.url(&with_digest(&session, &digest)))
            .body(content.to_vec())
            .send()
            .await
            .unwrap();
        expect_status_of(resp, StatusCode::CREATED, &format!("PUT of {digest}")).await;
        digest
    }

    pub async fn put_manifest(&self, name: &str, reference: &str, body: &[u8]) -> Response {
        self.client
            .put(self.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("content-type", OCI_MANIFEST)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Uploads the image's blobs, then its manifest under `reference`,
    /// asserting 201 each time.
    pub async fn push_image(&self, name: &str, reference: &str, image: &TestImage) {
        self.push_blobs(name, image).await;
        let resp = self.put_manifest(name, reference, &image.manifest).await;
        expect_status_of(resp, StatusCode::CREATED, &format!("{name}:{reference}")).await;
    }

    pub async fn push_blobs(&self, name: &str, image: &TestImage) {
        for (_, content) in &image.blobs {
            self.push_blob(name, content).await;
        }
    }

    /// The digest `reference` names here (`Docker-Content-Digest` of a
    /// GET), `None` on 404.
    pub async fn manifest_digest(&self, name: &str, reference: &str) -> Option<String> {
        let resp = self
            .client
            .get(self.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let resp = expect_status(resp, StatusCode::OK).await;
        let digest = resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = resp.bytes().await.unwrap();
        assert_eq!(sha256_digest(&body), digest, "the body is what it claims");
        Some(digest)
    }

    /// Pulls the image by digest and checks every byte of it.
    pub async fn assert_intact(&self, name: &str, image: &TestImage) {
        let (status, body) = self
            .get_bytes(&format!("/v2/{name}/manifests/{}", image.digest))
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} manifest {}",
            self.base,
            image.digest
        );
        assert_eq!(body, image.manifest);
        for (digest, content) in &image.blobs {
            let (status, body) = self.get_bytes(&format!("/v2/{name}/blobs/{digest}")).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{} blob {digest} of {name}",
                self.base
            );
            assert!(body == content[..], "{} blob {digest} of {name}", self.base);
        }
    }
}

/// A response's `Location` (a path).
pub fn location(resp: &Response) -> String {
    resp.headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn with_digest(session: &str, digest: &str) -> String {
    let separator = if session.contains('?') { '&' } else { '?' };
    format!("{session}{separator}digest={digest}")
}

/// An image as pushed: the one the lifecycle tests use.
pub use crate::lifecycle_support::Image as TestImage;

/// Polls `condition` every 20 ms until it holds, failing with `what` past
/// `deadline`; returns how long it took.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Uploads across replicas
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Replicas {
    fn side(&self, side: Side) -> &Api {
        match side {
            Side::A => &self.a.api,
            Side::B => &self.b.api,
        }
    }
}

/// Asserts a 202 answer to a chunked upload carries the smallest chunk the
/// registry wants (S3's part minimum) and `Range: 0-<offset - 1>`.
fn assert_upload_accepted(resp: &Response, offset: u64) {
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        resp.headers()
            .get("oci-chunk-min-length")
            .map(|v| v.to_str().unwrap()),
        Some("5242880"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(
        resp.headers()["range"].to_str().unwrap(),
        format!("0-{}", offset.saturating_sub(1))
    );
}

/// Reads the session record of upload `id` from the store and checks it
/// against S3's rules for multipart uploads: no empty part, every part but
/// the last at least 5 MiB; and that parts and tail add up to `offset`.
/// Returns the sizes of the parts and of the carried-over tail.
async fn check_session_record(
    storage: &dyn Storage,
    name: &str,
    id: &str,
    offset: u64,
) -> (Vec<u64>, u64) {
    let key = format!("repositories/{name}/_uploads/{id}/berth-session.json");
    let record = storage
        .get(&key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no session record at {key}"));
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["offset"].as_u64(), Some(offset), "{record}");
    let state = record["storage_state"].as_str().unwrap_or_default();
    let state: Value = if state.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(state).unwrap()
    };
    let parts: Vec<u64> = state["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    assert!(
                        !p["etag"].as_str().unwrap_or_default().is_empty(),
                        "a part without its ETag: {state}"
                    );
                    p["size"].as_u64().unwrap()
                })
                .collect()
        })
        .unwrap_or_default();
    let tail = state["tail"].as_u64().unwrap_or(0);
    assert!(parts.iter().all(|&p| p > 0), "an empty part: {state}");
    if let Some((_, but_last)) = parts.split_last() {
        assert!(
            but_last.iter().all(|&p| p >= MIN_PART),
            "a part other than the last under 5 MiB: {state}"
        );
    }
    assert_eq!(
        parts.iter().sum::<u64>() + tail,
        offset,
        "parts and tail add up to the offset: {state}"
    );
    if !parts.is_empty() {
        assert!(
            state["id"].as_str().is_some(),
            "parts without an upload id: {state}"
        );
    }
    (parts, tail)
}

/// Pulls `digest` through both replicas and compares every byte.
async fn assert_blob_on_both(replicas: &Replicas, name: &str, digest: &str, content: &[u8]) {
    for api in [&replicas.a.api, &replicas.b.api] {
        let path = format!("/v2/{name}/blobs/{digest}");
        let head = expect_status(api.head(&path).await, StatusCode::OK).await;
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            content.len().to_string()
        );
        let (status, body) = api.get_bytes(&path).await;
        assert_eq!(status, StatusCode::OK, "{} {path}", api.base);
        assert_eq!(body.len(), content.len(), "{} {path}", api.base);
        assert!(body == content, "{} {path}: other bytes", api.base);
    }
}

/// One chunked upload: PATCHes through the replicas named, then the final
/// PUT (with `last` as its body, if any) through B; the session record is
/// checked after every PATCH.
async fn chunked_upload(
    replicas: &Replicas,
    storage: &dyn Storage,
    name: &str,
    patches: &[(Side, usize)],
    last: usize,
    seed: u64,
) {
    let total = patches.iter().map(|(_, n)| n).sum::<usize>() + last;
    let content = random_bytes(total, seed);
    let digest = sha256_digest(&content);
    let resp = replicas
        .a
        .api
        .client
        .post(replicas.a.api.url(&format!("/v2/{name}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_upload_accepted(&resp, 0);
    let mut session = location(&resp);
    let id = resp.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut offset = 0;
    let mut shapes = Vec::new();
    for &(side, len) in patches {
        let chunk = content[offset..offset + len].to_vec();
        let api = replicas.side(side);
        let mut request = api
            .client
            .patch(api.url(&session))
            .header("content-type", "application/octet-stream")
            .body(chunk);
        if len > 0 {
            request = request.header("content-range", format!("{offset}-{}", offset + len - 1));
        }
        let resp = request.send().await.unwrap();
        let what = format!("PATCH of {len} bytes at {offset} through {side:?}");
        let resp = expect_status_of(resp, StatusCode::ACCEPTED, &what).await;
        offset += len;
        assert_upload_accepted(&resp, offset as u64);
        session = location(&resp);
        shapes.push(check_session_record(storage, name, &id, offset as u64).await);
    }
    // The upload's state, as the other replica reads it.
    let status = replicas.b.api.get(&session).await;
    let status = expect_status(status, StatusCode::NO_CONTENT).await;
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        format!("0-{}", offset.saturating_sub(1))
    );
    let resp = replicas
        .b
        .api
        .client
        .put(replicas.b.api.url(&with_digest(&session, &digest)))
        .header("content-type", "application/octet-stream")
        .body(content[offset..].to_vec())
        .send()
        .await
        .unwrap();
    expect_status_of(
        resp,
        StatusCode::CREATED,
        &format!("final PUT of {total} bytes"),
    )
    .await;
    eprintln!("{name}: {patches:?} + {last}: recorded {shapes:?}");
    assert_blob_on_both(replicas, name, &digest, &content).await;
    // The session ended with the commit.
    let gone = replicas.a.api.get(&session).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

/// A chunked upload goes on through the other replica: PATCHes through A,
/// more PATCHes and the final PUT through B, with chunks of 1 B, 4 MiB,
/// 5 MiB and 5 MiB + 1 in several orders (so chunks end on a part, within
/// a part, and as a short tail carried over), PATCHes through A, then B,
/// then A again (whose copy of the session record B's write made stale), a
/// 1-byte blob and a zero-byte blob. After every PATCH the session record's multipart state keeps S3's
/// rule (which Garage does not enforce): no empty part, every part but the
/// last at least 5 MiB; every 202 asks for 5 MiB chunks. The blob pulls
/// whole through both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_continues_on_the_other_replica_in_parts_of_at_least_5_mib() {
    let Some(replicas) = Replicas::start(|_| {}).await else {
        return;
    };
    let storage = replicas.storage().await;
    let storage = storage.as_ref();
    use Side::{A, B};
    let m = MIB;
    chunked_upload(
        &replicas,
        storage,
        "chunks/short-first",
        &[(A, 1), (A, 4 * m), (B, 5 * m), (B, 5 * m + 1)],
        0,
        1,
    )
    .await;
    chunked_upload(
        &replicas,
        storage,
        "chunks/long-first",
        &[(A, 5 * m + 1), (A, 5 * m), (B, 1), (B, 4 * m)],
        5 * m,
        2,
    )
    .await;
    chunked_upload(
        &replicas,
        storage,
        "chunks/under-a-part",
        &[(A, 4 * m), (B, 1)],
        1,
        3,
    )
    .await;
    // Back to A after B wrote the record: A's copy of it is stale.
    chunked_upload(
        &replicas,
        storage,
        "chunks/back-to-a",
        &[(A, 5 * m), (B, 5 * m), (A, 1)],
        1,
        7,
    )
    .await;
    chunked_upload(&replicas, storage, "chunks/one-byte", &[(A, 1)], 0, 4).await;
    chunked_upload(&replicas, storage, "chunks/zero", &[(A, 0)], 0, 5).await;
    chunked_upload(&replicas, storage, "chunks/zero-put", &[], 0, 6).await;
}

/// A chunk whose length the client declared is cut into parts before its
/// bytes arrive, and each part goes to the store as they come in: the part
/// of a 6 MiB chunk (one part: too few bytes for two) is on its way, to a
/// presigned URL, before the chunk's second half is sent (a part filled in
/// memory first would start only after it). A 7 MiB chunk becomes one part
/// of 7 MiB and no tail carried over. The replica reads the session record
/// it wrote back by a conditional GET, answered 304 (a plain GET of a
/// record past Garage's inline size waited 40 ms for delayed ACKs). The
/// blob pulls whole through both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_chunk_streams_its_parts_and_its_session_record_comes_back_as_a_304() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let root = format!("{}/docker/registry/v2/", s3.prefix);
    let replicas = Replicas::start_on(s3.clone(), |_| {}).await;
    let api = &replicas.a.api;
    let name = "streamed/app";
    let content = Bytes::from(random_bytes(14 * MIB, 41));
    let digest = sha256_digest(&content);
    let labelled = |label: &str| -> Vec<crate::fault_proxy::Logged> {
        proxy
            .requests()
            .into_iter()
            .filter(|r| request_label(r, &garage.bucket, &root) == label)
            .collect()
    };
    let mut session = api.start_upload(name).await;

    proxy.clear();
    let (mut body, from_test) = futures::channel::mpsc::channel::<std::io::Result<Bytes>>(1);
    let patch = api
        .client
        .patch(api.url(&session))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", 6 * MIB - 1))
        .header("content-length", 6 * MIB)
        .body(reqwest::Body::wrap_stream(from_test))
        .send();
    let patch = tokio::spawn(patch);
    body.send(Ok(content.slice(..3 * MIB))).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the part's upload starts before its chunk's second half is sent",
        || async { !labelled("UploadPart").is_empty() },
    )
    .await;
    body.send(Ok(content.slice(3 * MIB..6 * MIB)))
        .await
        .unwrap();
    drop(body);
    let resp = expect_status(patch.await.unwrap().unwrap(), StatusCode::ACCEPTED).await;
    session = location(&resp);
    let parts = labelled("UploadPart");
    assert_eq!(parts.len(), 1, "one part for 6 MiB: {parts:?}");
    assert!(
        parts[0].presigned && parts[0].status == Some(200),
        "streamed to a presigned URL: {parts:?}"
    );

    proxy.clear();
    let resp = api
        .client
        .patch(api.url(&session))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", 6 * MIB, 13 * MIB - 1))
        .body(content.slice(6 * MIB..13 * MIB))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    session = location(&resp);
    assert_eq!(labelled("UploadPart").len(), 1, "7 MiB: one part");
    assert!(
        labelled("PUT upload tail").is_empty(),
        "no tail carried over"
    );
    let reads = labelled("GET session record");
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert!(
        reads[0].if_none_match && reads[0].status == Some(304),
        "the record read back by a conditional GET, answered 304: {reads:?}"
    );

    let resp = replicas
        .b
        .api
        .client
        .put(replicas.b.api.url(&with_digest(&session, &digest)))
        .header("content-type", "application/octet-stream")
        .body(content.slice(13 * MIB..))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::CREATED).await;
    assert_blob_on_both(&replicas, name, &digest, &content).await;
}

/// Monolithic uploads (POST then PUT with the content, and the single
/// `POST ?digest=`) above the part size (8 MiB: a multipart upload) and
/// below it (one PUT) through one replica pull whole through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_blobs_above_and_below_the_part_size_pull_through_both_replicas() {
    let Some(replicas) = Replicas::start(|_| {}).await else {
        return;
    };
    for (size, seed) in [(11 * MIB + 7, 11), (3 * MIB, 12), (100 * 1024, 13)] {
        let content = random_bytes(size, seed);
        let digest = replicas.a.api.push_blob("mono/put", &content).await;
        assert_blob_on_both(&replicas, "mono/put", &digest, &content).await;

        let content = random_bytes(size, seed + 100);
        let digest = sha256_digest(&content);
        let resp = replicas
            .b
            .api
            .client
            .post(
                replicas
                    .b
                    .api
                    .url(&format!("/v2/mono/post/blobs/uploads/?digest={digest}")),
            )
            .body(content.clone())
            .send()
            .await
            .unwrap();
        expect_status(resp, StatusCode::CREATED).await;
        assert_blob_on_both(&replicas, "mono/post", &digest, &content).await;
    }
}

/// The first pull of a blob through a replica reads it from the bucket into
/// the replica's disk cache while streaming it to the client from that file:
/// the client gets every byte, blob after blob. (The cache once told its
/// readers that bytes were in the file before tokio's file writer had
/// written them: about a third of these pulls ended short.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pull_through_each_replica_streams_the_whole_blob_from_the_store() {
    let Some(replicas) = Replicas::start(|_| {}).await else {
        return;
    };
    for round in 0..10 {
        let content = random_bytes(11 * MIB + 7, 200 + round);
        let digest = replicas.a.api.push_blob("first/pull", &content).await;
        for api in [&replicas.a.api, &replicas.b.api] {
            let (status, body) = api
                .get_bytes(&format!("/v2/first/pull/blobs/{digest}"))
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.len(), content.len(), "round {round}: {}", api.base);
            assert!(body == content, "round {round}: {}: other bytes", api.base);
        }
    }
}

// ---------------------------------------------------------------------------
// 2-4. Tags across replicas
// ---------------------------------------------------------------------------

/// A tag moved through A is served by B within `cache_ttl_ms` (2 s by
/// default): B, which has just served the old digest, answers the new one
/// before the TTL and a second of slack have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_through_one_replica_is_served_by_the_other_within_the_cache_ttl() {
    let Some(replicas) = Replicas::start(|_| {}).await else {
        return;
    };
    let ttl = Duration::from_millis(replicas.b.config.cache_ttl_ms);
    assert_eq!(ttl, Duration::from_secs(2), "the default TTL");
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let old = TestImage::new("old", &[b"old layer"]);
    let new = TestImage::new("new", &[b"new layer"]);
    a.push_image("app", "latest", &old).await;
    a.push_blobs("app", &new).await;
    // B has served (and cached) the old digest.
    assert_eq!(
        b.manifest_digest("app", "latest").await,
        Some(old.digest.clone())
    );
    let resp = a.put_manifest("app", "latest", &new.manifest).await;
    expect_status(resp, StatusCode::CREATED).await;
    let took = wait_until(
        ttl + Duration::from_secs(1),
        "B serves the moved tag",
        || async {
            b.manifest_digest("app", "latest").await.as_deref() == Some(new.digest.as_str())
        },
    )
    .await;
    eprintln!("B served the moved tag {took:?} after A moved it (TTL {ttl:?})");
    // And keeps serving it; A does at once.
    assert_eq!(
        b.manifest_digest("app", "latest").await,
        Some(new.digest.clone())
    );
    assert_eq!(
        a.manifest_digest("app", "latest").await,
        Some(new.digest.clone())
    );
    b.assert_intact("app", &new).await;
}

/// With `cache_ttl_ms = 0`, the very next request through B after a tag
/// moved through A answers the new digest (GET and HEAD), round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_ttl_the_next_request_through_the_other_replica_sees_the_move() {
    let Some(replicas) = Replicas::start(|c| c.cache_ttl_ms = 0).await else {
        return;
    };
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    for round in 0..5 {
        let image = TestImage::new(&format!("round {round}"), &[b"layer"]);
        // B reads the tag first (its old value, or none), then A moves it.
        let before = b.manifest_digest("app", "moving").await;
        assert_ne!(before.as_deref(), Some(image.digest.as_str()));
        a.push_image("app", "moving", &image).await;
        assert_eq!(
            b.manifest_digest("app", "moving").await,
            Some(image.digest.clone()),
            "round {round}: GET through B"
        );
        let head = b.head("/v2/app/manifests/moving").await;
        let head = expect_status(head, StatusCode::OK).await;
        assert_eq!(
            head.headers()["docker-content-digest"],
            image.digest.as_str()
        );
    }
}

/// Both replicas move one tag at the same moment, round after round, each
/// to manifests of its own: afterwards the tag names, on both replicas, one
/// of that round's manifests, whole (config and layers pull).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_moves_of_one_tag_through_both_replicas_leave_one_complete_manifest() {
    let Some(replicas) = Replicas::start(|c| c.cache_ttl_ms = 0).await else {
        return;
    };
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let shared = random_bytes(4096, 7);
    for round in 0..12 {
        // Two manifests a side, all put at once.
        let images: Vec<TestImage> = (0..4)
            .map(|i| {
                let own = format!("round {round} image {i}").into_bytes();
                TestImage::new(&format!("{round}-{i}"), &[&shared, &own])
            })
            .collect();
        let side = |i: usize| if i % 2 == 0 { a } else { b };
        for (i, image) in images.iter().enumerate() {
            side(i).push_blobs("app", image).await;
        }
        let puts = images
            .iter()
            .enumerate()
            .map(|(i, image)| side(i).put_manifest("app", "race", &image.manifest));
        for resp in futures::future::join_all(puts).await {
            expect_status(resp, StatusCode::CREATED).await;
        }
        let on_a = a
            .manifest_digest("app", "race")
            .await
            .expect("the tag on A");
        let on_b = b
            .manifest_digest("app", "race")
            .await
            .expect("the tag on B");
        assert_eq!(on_a, on_b, "round {round}: the replicas agree");
        let winner = images
            .iter()
            .find(|i| i.digest == on_a)
            .unwrap_or_else(|| panic!("round {round}: {on_a} is none of the round's manifests"));
        a.assert_intact("app", winner).await;
        b.assert_intact("app", winner).await;
    }
    let tags = expect_status(a.get("/v2/app/tags/list").await, StatusCode::OK).await;
    let tags: Value = tags.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["race"]));
}

/// An immutable tag created at the same moment through A and B with
/// different digests: exactly one push succeeds, the other is refused with
/// 403 DENIED, and both replicas then serve the winner (Garage ignores
/// conditional writes: Berth checks, writes, and reads back after a settle
/// delay). Later pushes of the loser stay refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immutable_tag_created_through_both_replicas_at_once_has_exactly_one_winner() {
    let lifecycle: LifecycleConfig = toml::from_str(
        r#"
        [[immutable_tags]]
        repositories = "*"
        tags = "v.*"
        "#,
    )
    .unwrap();
    let Some(replicas) = Replicas::start(|c| c.lifecycle = lifecycle.clone()).await else {
        return;
    };
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let mut wins = [0; 2];
    for round in 0..5 {
        let tag = format!("v{round}");
        let x = TestImage::new(&format!("x{round}"), &[b"x layer"]);
        let y = TestImage::new(&format!("y{round}"), &[b"y layer"]);
        a.push_blobs("app", &x).await;
        b.push_blobs("app", &y).await;
        let (on_a, on_b) = tokio::join!(
            a.put_manifest("app", &tag, &x.manifest),
            b.put_manifest("app", &tag, &y.manifest)
        );
        let (winner, loser) = match (on_a.status(), on_b.status()) {
            (StatusCode::CREATED, StatusCode::FORBIDDEN) => {
                assert_eq!(error_code(on_b).await, "DENIED");
                wins[0] += 1;
                (&x, &y)
            }
            (StatusCode::FORBIDDEN, StatusCode::CREATED) => {
                assert_eq!(error_code(on_a).await, "DENIED");
                wins[1] += 1;
                (&y, &x)
            }
            (sa, sb) => panic!("round {round}: A answered {sa}, B {sb}: not exactly one winner"),
        };
        for api in [a, b] {
            assert_eq!(
                api.manifest_digest("app", &tag).await.as_deref(),
                Some(winner.digest.as_str()),
                "round {round}: {} serves the winner",
                api.base
            );
        }
        a.assert_intact("app", winner).await;
        b.assert_intact("app", winner).await;
        // The loser's manifest cannot take the tag later either.
        for api in [a, b] {
            let resp = api.put_manifest("app", &tag, &loser.manifest).await;
            let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
            assert_eq!(error_code(resp).await, "DENIED");
        }
    }
    eprintln!(
        "immutable tag races won by A {} times, by B {} times",
        wins[0], wins[1]
    );
}

// ---------------------------------------------------------------------------
// 5. Auth across replicas
// ---------------------------------------------------------------------------

/// The `[auth]` table of both replicas: bob may pull and push `app/*`;
/// tokens signed with the shared test key, or (without it) with a key each
/// replica makes at start.
fn auth_config(htpasswd: &Path, shared_key: bool) -> berth::auth::AuthConfig {
    let key = if shared_key {
        format!("signing_key = \"{SIGNING_KEY}\"")
    } else {
        String::new()
    };
    let mut auth: berth::auth::AuthConfig = toml::from_str(&format!(
        r#"
        {key}
        [[rules]]
        repositories = ["app/*"]
        users = {{ bob = ["pull", "push"] }}
        "#
    ))
    .unwrap();
    auth.htpasswd = Some(htpasswd.to_path_buf());
    auth
}

async fn replicas_with_auth(shared_key: bool) -> Option<(Replicas, tempfile::TempDir)> {
    let users = tempfile::tempdir().unwrap();
    let htpasswd = users.path().join("htpasswd");
    berth::auth::Htpasswd::add_or_update_user(&htpasswd, "bob", "bob-pw", TEST_BCRYPT_COST)
        .unwrap();
    let auth = auth_config(&htpasswd, shared_key);
    let replicas = Replicas::start(|c| c.auth = Some(auth.clone())).await?;
    Some((replicas, users))
}

/// A token for bob from `api`'s token endpoint.
async fn bobs_token(api: &Api, scope: &str) -> String {
    let resp = api
        .client
        .get(api.url(&format!("/auth/token?service=berth&scope={scope}")))
        .header("authorization", basic_auth("bob", "bob-pw"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// With a shared `signing_key`, a token issued by A is accepted by B: bob
/// pushes through B with A's token and pulls through A with B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_replica_is_accepted_by_the_other_with_a_shared_key() {
    let Some((replicas, _users)) = replicas_with_auth(true).await else {
        return;
    };
    let scope = "repository:app/web:pull,push";
    let from_a = bobs_token(&replicas.a.api, scope).await;
    let bearer = |token: &str| client_with_authorization(&format!("Bearer {token}"));
    let b_with_a_token = Api::with_client(&replicas.b.api.base, bearer(&from_a));
    let image = TestImage::new("auth", &[b"auth layer"]);
    b_with_a_token.push_image("app/web", "v1", &image).await;

    let from_b = bobs_token(&replicas.b.api, scope).await;
    let a_with_b_token = Api::with_client(&replicas.a.api.base, bearer(&from_b));
    a_with_b_token.assert_intact("app/web", &image).await;
    // Without a token, neither lets anyone in.
    for api in [&replicas.a.api, &replicas.b.api] {
        let resp = api.get("/v2/app/web/manifests/v1").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

/// A robot made through A logs in through B at once, though B served
/// nothing since its settings last went stale: the token endpoint reads
/// current settings before the login (it read them after, so a robot
/// revoked through A could log in through an idle B, and a new one could
/// not, until B's next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_made_through_one_replica_logs_in_through_an_idle_other() {
    let users = tempfile::tempdir().unwrap();
    let htpasswd = users.path().join("htpasswd");
    berth::auth::Htpasswd::add_or_update_user(&htpasswd, "bob", "bob-pw", TEST_BCRYPT_COST)
        .unwrap();
    let mut auth = auth_config(&htpasswd, true);
    auth.admins = vec!["bob".into()];
    let Some(replicas) = Replicas::start(|c| {
        c.auth = Some(auth.clone());
        c.cache_ttl_ms = 500;
    })
    .await
    else {
        return;
    };
    // B reads the settings now, then idles past its cache_ttl.
    let resp = replicas.b.api.get("/v2/").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resp = replicas
        .a
        .api
        .client
        .post(replicas.a.api.url("/v2/_berth/robots"))
        .header("authorization", basic_auth("bob", "bob-pw"))
        .json(&serde_json::json!({"name": "ci", "grants": ["app/*:pull"]}))
        .send()
        .await
        .unwrap();
    let made: Value = expect_status(resp, StatusCode::CREATED)
        .await
        .json()
        .await
        .unwrap();
    let secret = made["secret"].as_str().unwrap();
    let resp = replicas
        .b
        .api
        .client
        .get(
            replicas
                .b
                .api
                .url("/auth/token?service=berth&scope=repository:app/web:pull"),
        )
        .header("authorization", basic_auth("robot$ci", secret))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
}

/// Without a shared key each replica signs with a key of its own, made at
/// start: B refuses A's token with 401 (which is why replicas must share
/// `signing_key`), while A accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_key_a_replica_refuses_the_others_tokens() {
    let Some((replicas, _users)) = replicas_with_auth(false).await else {
        return;
    };
    let from_a = bobs_token(&replicas.a.api, "repository:app/web:pull,push").await;
    let client = client_with_authorization(&format!("Bearer {from_a}"));
    let on_a = Api::with_client(&replicas.a.api.base, client.clone());
    let on_b = Api::with_client(&replicas.b.api.base, client);
    let image = TestImage::new("auth", &[b"auth layer"]);
    on_a.push_image("app/web", "v1", &image).await;
    on_a.assert_intact("app/web", &image).await;
    for path in [
        format!("/v2/app/web/manifests/{}", image.digest),
        "/v2/app/web/tags/list".to_owned(),
    ] {
        let resp = on_b.get(&path).await;
        let resp = expect_status_of(resp, StatusCode::UNAUTHORIZED, "A's token at B").await;
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(error_code(resp).await, "UNAUTHORIZED");
    }
    let resp = on_b
        .client
        .post(on_b.url("/v2/app/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------
// 6. Garbage collection beside pushes through another replica
// ---------------------------------------------------------------------------

/// Untagged manifests go, and no history keeps an image.
fn deleting() -> LifecycleConfig {
    LifecycleConfig {
        untagged_manifests: UntaggedManifests::Delete,
        history_keep: 0,
        gc_grace_period: Duration::ZERO,
        ..LifecycleConfig::default()
    }
}

/// A small deterministic generator (xorshift), so a failing interleaving of
/// choices can be told apart from another.
struct Choices(u64);

impl Choices {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

#[derive(Default)]
struct PushLog {
    /// Tag → image, for every tag the client still has.
    live: std::collections::HashMap<String, TestImage>,
    deleted: usize,
    acknowledged: usize,
    refused: usize,
}

/// Pushes like a real client: blobs the repository says it has are not sent
/// again, some are mounted from the other repository. Whether the manifest
/// was acknowledged (it may be refused with MANIFEST_BLOB_UNKNOWN when the
/// collector removed a blob first: never anything else).
async fn push_like_a_client(
    api: &Api,
    name: &str,
    other: &str,
    image: &TestImage,
    tag: &str,
    choices: &mut Choices,
) -> bool {
    for (digest, content) in &image.blobs {
        if api
            .head(&format!("/v2/{name}/blobs/{digest}"))
            .await
            .status()
            == StatusCode::OK
        {
            continue;
        }
        let start = if choices.next(3) == 0 {
            format!("/v2/{name}/blobs/uploads/?mount={digest}&from={other}")
        } else {
            format!("/v2/{name}/blobs/uploads/")
        };
        let resp = api.client.post(api.url(&start)).send().await.unwrap();
        if resp.status() == StatusCode::CREATED {
            continue;
        }
        let resp = expect_status(resp, StatusCode::ACCEPTED).await;
        let put = with_digest(&location(&resp), digest);
        let resp = api
            .client
            .put(api.url(&put))
            .body(content.clone())
            .send()
            .await
            .unwrap();
        expect_status_of(resp, StatusCode::CREATED, &format!("upload of {digest}")).await;
    }
    let resp = api.put_manifest(name, tag, &image.manifest).await;
    match resp.status() {
        StatusCode::CREATED => true,
        _ => {
            assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
            false
        }
    }
}

/// How long the clients of the race keep on (`Race::until`), and past that
/// until they have had this many pushes acknowledged between them, so that a
/// slow machine still runs the race it asserts (`Race::deadline` bounds it).
const RACE_ACKNOWLEDGED: usize = 10;

/// When the race's clients stop, and what they have done so far.
#[derive(Clone)]
struct Race {
    until: Instant,
    deadline: Instant,
    acknowledged: Arc<AtomicUsize>,
}

impl Race {
    fn goes_on(&self) -> bool {
        let now = Instant::now();
        now < self.until
            || (now < self.deadline
                && self.acknowledged.load(Ordering::Relaxed) < RACE_ACKNOWLEDGED)
    }
}

async fn pushing_client(api: Api, client: usize, pool: Arc<Vec<Vec<u8>>>, race: Race) -> PushLog {
    let name = format!("race/c{client}");
    let other = format!("race/c{}", (client + 1) % 2);
    let mut choices = Choices(0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1));
    let mut log = PushLog::default();
    let mut serial = 0;
    while race.goes_on() {
        serial += 1;
        if choices.next(10) < 6 || log.live.is_empty() {
            let a = &pool[choices.next(pool.len())];
            let b = &pool[choices.next(pool.len())];
            let image = TestImage::new(&format!("{client}-{serial}"), &[a, b]);
            let tag = format!("t{serial}");
            if push_like_a_client(&api, &name, &other, &image, &tag, &mut choices).await {
                log.acknowledged += 1;
                race.acknowledged.fetch_add(1, Ordering::Relaxed);
                log.live.insert(tag, image);
            } else {
                log.refused += 1;
            }
        } else {
            // The image goes (its last tag does), so its blobs become
            // garbage that the next pushes want again.
            let mut tags: Vec<_> = log.live.keys().cloned().collect();
            tags.sort();
            let tag = tags[choices.next(tags.len())].clone();
            let resp = api
                .client
                .delete(api.url(&format!("/v2/{name}/manifests/{tag}")))
                .send()
                .await
                .unwrap();
            expect_status(resp, StatusCode::ACCEPTED).await;
            log.live.remove(&tag);
            log.deleted += 1;
        }
    }
    log
}

/// The blob digests in the store.
async fn stored_blobs(storage: &dyn Storage) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let shards = list_all(storage, "blobs/sha256").await;
    for shard in shards {
        for hex in list_all(storage, &format!("blobs/sha256/{shard}")).await {
            let data = format!("blobs/sha256/{shard}/{hex}/data");
            if storage.size(&data).await.unwrap().is_some() {
                found.insert(format!("sha256:{hex}"));
            }
        }
    }
    found
}

async fn list_all(storage: &dyn Storage, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let page = storage
            .list(prefix, names.last().map(String::as_str), 1000)
            .await
            .unwrap();
        names.extend(page.names);
        if !page.more {
            return names;
        }
    }
}

/// A collector (a registry of its own over the bucket, as `berth gc` on
/// another machine, grace period 0) runs again and again while two clients
/// push through replica B, delete tags and push images again that reuse the
/// deleted images' layers, so the collector keeps removing content that
/// pushes want. Every acknowledged image pulls whole afterwards, through B
/// and through a fresh replica that has no cache; a last collection then
/// leaves exactly the live images' blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collections_beside_pushes_through_another_replica_keep_every_acknowledged_image() {
    let Some(replicas) = Replicas::start(|c| c.lifecycle = deleting()).await else {
        return;
    };
    let gc_data = tempfile::tempdir().unwrap();
    let mut gc_config = replica_config(&replicas.s3, gc_data.path());
    gc_config.lifecycle = deleting();
    let gc = berth::build_registry(&gc_config).await.unwrap();
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..6)
            .map(|i| random_bytes(2000 + i * 700, 40 + i as u64))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let options = GcOptions {
        grace_period: Some(Duration::ZERO),
        ..GcOptions::default()
    };
    let collecting = {
        let (gc, stop, options) = (gc.clone(), stop.clone(), options.clone());
        tokio::spawn(async move {
            let mut total = GcReport::default();
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let report = gc.collect_garbage(&options).await.unwrap();
                runs += 1;
                total.manifests_removed += report.manifests_removed;
                total.blobs_removed += report.blobs_removed;
                total.spared += report.spared;
            }
            (runs, total)
        })
    };
    let race = Race {
        until: Instant::now() + Duration::from_secs(8),
        deadline: Instant::now() + Duration::from_secs(120),
        acknowledged: Arc::default(),
    };
    let clients: Vec<_> = (0..2)
        .map(|c| {
            tokio::spawn(pushing_client(
                replicas.b.api.clone(),
                c,
                pool.clone(),
                race.clone(),
            ))
        })
        .collect();
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, total) = collecting.await.unwrap();
    let acknowledged: usize = logs.iter().map(|l| l.acknowledged).sum();
    let refused: usize = logs.iter().map(|l| l.refused).sum();
    let deleted: usize = logs.iter().map(|l| l.deleted).sum();
    eprintln!(
        "{runs} collections removed {} manifests and {} blobs (spared {}) while \
         {acknowledged} pushes were acknowledged, {refused} refused, {deleted} tags deleted",
        total.manifests_removed, total.blobs_removed, total.spared
    );
    assert!(
        runs >= 3 && acknowledged >= RACE_ACKNOWLEDGED,
        "the race ran: {runs} collections, {acknowledged} pushes acknowledged"
    );
    assert!(
        total.blobs_removed > 0,
        "the collector removed content meanwhile"
    );

    let fresh = Replica::start(&replicas.s3, |c| c.cache_ttl_ms = 0).await;
    for (client, log) in logs.iter().enumerate() {
        let name = format!("race/c{client}");
        for (tag, image) in &log.live {
            for api in [&replicas.b.api, &fresh.api] {
                assert_eq!(
                    api.manifest_digest(&name, tag).await.as_deref(),
                    Some(image.digest.as_str()),
                    "{name}:{tag} through {}",
                    api.base
                );
                api.assert_intact(&name, image).await;
            }
        }
    }

    // Past all activity, a last collection leaves exactly the live images.
    let last = gc.collect_garbage(&options).await.unwrap();
    eprintln!("last collection: {last:?}");
    let storage = replicas.storage().await;
    let expected: BTreeSet<String> = logs
        .iter()
        .flat_map(|l| l.live.values().flat_map(TestImage::digests))
        .collect();
    assert_eq!(stored_blobs(storage.as_ref()).await, expected);
}

// ---------------------------------------------------------------------------
// 7. Pull storm
// ---------------------------------------------------------------------------

/// 64 clients pull one new 64 MiB blob at once through the balancer (32 on
/// each replica): the replicas read it from the bucket at most twice in all
/// (once each: the first reader's download is shared through the local
/// cache), counted by a proxy between the replicas and Garage in bytes
/// asked for (a download reads ranges side by side); every client gets
/// every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_storm_of_64_clients_over_two_replicas_reads_the_blob_from_s3_at_most_twice() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replicas = Replicas::start_on(s3.clone(), |_| {}).await;
    let content = Arc::new(random_bytes(64 * MIB, 64));
    let digest = replicas.a.api.push_blob("storm/app", &content).await;
    let hex = digest.trim_start_matches("sha256:");
    let key = format!(
        "/{}/{}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        garage.bucket,
        s3.prefix,
        &hex[..2]
    );
    proxy.clear();

    let started = Instant::now();
    let url = replicas.via.url(&format!("/v2/storm/app/blobs/{digest}"));
    let pulls: Vec<_> = (0..64)
        .map(|_| {
            let (url, content) = (url.clone(), content.clone());
            // A client of its own, so each pull is a connection of its own
            // (the balancer alternates connections).
            let client = Client::new();
            tokio::spawn(async move {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let mut at = 0;
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.unwrap();
                    assert!(
                        content[at..at + chunk.len()] == chunk[..],
                        "bytes {at}.. differ"
                    );
                    at += chunk.len();
                }
                assert_eq!(at, content.len(), "the whole blob");
            })
        })
        .collect();
    for pull in pulls {
        pull.await.unwrap();
    }
    let took = started.elapsed();
    let requests = proxy.requests();
    let gets: Vec<_> = requests
        .iter()
        .filter(|r| r.method == hyper::Method::GET && r.path == key)
        .collect();
    // A replica downloads a large blob as ranges side by side: what counts
    // is how many times its bytes were read, not how many GETs read them.
    let size = content.len() as u64;
    let asked: u64 = gets
        .iter()
        .map(|r| match &r.range {
            Some(range) => range.end.min(size).saturating_sub(range.start),
            None => size,
        })
        .sum();
    eprintln!(
        "64 pulls of 64 MiB through 2 replicas in {took:?}: {} GETs of the blob \
         ({} ranged, {asked} bytes asked for), {} requests to the store in all",
        gets.len(),
        gets.iter().filter(|r| r.ranged).count(),
        requests.len()
    );
    assert!(!gets.is_empty(), "the proxy saw the replicas read the blob");
    assert!(
        gets.iter().all(|r| r.range.is_some() == r.ranged),
        "every ranged GET asked for one plain range: {gets:?}"
    );
    assert!(
        asked <= 2 * size,
        "the blob's bytes were read from the store {asked} bytes' worth, \
         more than once per replica ({} GETs)",
        gets.len()
    );
    drop(replicas);
    remove_prefix(garage, &s3).await;
}

// ---------------------------------------------------------------------------
// 8. Memory during a 1 GiB push
// ---------------------------------------------------------------------------

/// Content of `len` bytes made 1 MiB at a time, never held whole: one
/// random MiB repeated, each copy stamped with its index (so no two MiB are
/// the same and Garage, which deduplicates blocks, stores them all).
struct Generated {
    block: Bytes,
    len: usize,
}

impl Generated {
    fn new(len: usize, seed: u64) -> Generated {
        Generated {
            block: Bytes::from(random_bytes(MIB, seed)),
            len,
        }
    }

    /// The MiB blocks from `start` (a multiple of 1 MiB) to `end`.
    fn blocks(&self, start: usize, end: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
        let block = self.block.clone();
        (start / MIB..end.div_ceil(MIB)).map(move |i| {
            let mut copy = block.to_vec();
            copy[..8].copy_from_slice(&(i as u64).to_le_bytes());
            copy.truncate(end.min((i + 1) * MIB) - i * MIB);
            Bytes::from(copy)
        })
    }

    fn body(&self, start: usize, end: usize) -> reqwest::Body {
        let blocks = self.blocks(start, end).map(Ok::<_, std::io::Error>);
        reqwest::Body::wrap_stream(futures::stream::iter(blocks))
    }

    fn digest(&self) -> String {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for block in self.blocks(0, self.len) {
            hasher.update(&block);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

/// A line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// A 1 GiB blob pushed through a replica run as the `berth` binary, chunked
/// (64 MiB PATCHes) and monolithic (one PUT), each streamed from a
/// generator: the replica's peak RSS (VmHWM) grows by tens of MiB over its
/// idle baseline, under 100 MiB, not by anything near the blob's size (parts
/// are streamed to S3 as they fill, two in memory at most). The blobs then
/// pull whole (size and digest) through an in-process replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_1_gib_push_through_a_replica_process_grows_its_memory_by_tens_of_mib_only() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let prefix = garage.prefix();
    let data = tempfile::tempdir().unwrap();
    let server = crate::support::ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--s3-bucket",
            &garage.bucket,
            "--s3-endpoint",
            &garage.endpoint,
            "--s3-region",
            &garage.region,
            "--s3-prefix",
            &prefix,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &garage.key_id),
            ("AWS_SECRET_ACCESS_KEY", &garage.secret),
        ],
    );
    let pid = server.child.id();
    let api = Api::new(&server.url(""));
    // Warm: a small image pushed and pulled, so the baseline counts what any
    // request allocates once (connection pools, caches, the runtime's threads).
    let warm = TestImage::new("warm", &[&random_bytes(MIB, 80)]);
    api.push_image("big/warm", "v1", &warm).await;
    api.assert_intact("big/warm", &warm).await;
    let baseline = proc_status_bytes(pid, "VmHWM");

    const GIB: usize = 1 << 30;
    const CHUNK: usize = 64 * MIB;
    let chunked = Generated::new(GIB, 81);
    let started = Instant::now();
    let mut session = api.start_upload("big/chunked").await;
    for start in (0..GIB).step_by(CHUNK) {
        let end = (start + CHUNK).min(GIB);
        let resp = api
            .client
            .patch(api.url(&session))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{}", end - 1))
            .header("content-length", (end - start).to_string())
            .body(chunked.body(start, end))
            .send()
            .await
            .unwrap();
        let resp = expect_status_of(resp, StatusCode::ACCEPTED, "a 64 MiB PATCH").await;
        session = location(&resp);
    }
    let chunked_digest = chunked.digest();
    let resp = api
        .client
        .put(api.url(&with_digest(&session, &chunked_digest)))
        .send()
        .await
        .unwrap();
    expect_status_of(resp, StatusCode::CREATED, "the final PUT").await;
    let after_chunked = proc_status_bytes(pid, "VmHWM");
    let chunked_took = started.elapsed();

    let monolithic = Generated::new(GIB, 82);
    let monolithic_digest = monolithic.digest();
    let started = Instant::now();
    let session = api.start_upload("big/monolithic").await;
    let resp = api
        .client
        .put(api.url(&with_digest(&session, &monolithic_digest)))
        .header("content-type", "application/octet-stream")
        .header("content-length", GIB.to_string())
        .body(monolithic.body(0, GIB))
        .send()
        .await
        .unwrap();
    expect_status_of(resp, StatusCode::CREATED, "the monolithic PUT").await;
    let after_monolithic = proc_status_bytes(pid, "VmHWM");
    let monolithic_took = started.elapsed();
    let rss = proc_status_bytes(pid, "VmRSS");

    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    eprintln!(
        "replica process: VmHWM {:.1} MiB idle, {:.1} MiB after the chunked 1 GiB push ({chunked_took:?}), \
         {:.1} MiB after the monolithic one ({monolithic_took:?}); VmRSS now {:.1} MiB",
        mib(baseline),
        mib(after_chunked),
        mib(after_monolithic),
        mib(rss)
    );
    for (what, peak) in [("chunked", after_chunked), ("monolithic", after_monolithic)] {
        let growth = peak.saturating_sub(baseline);
        assert!(
            growth < 100 * MIB as u64,
            "the {what} push grew the peak RSS by {:.1} MiB",
            mib(growth)
        );
    }

    // What was pushed is whole: a replica of this process reads it back.
    let s3 = s3_config(garage, &garage.endpoint, &prefix);
    let reader = Replica::start(&s3, |c| c.storage.s3.cache_bytes = 0).await;
    for (name, digest) in [
        ("big/chunked", &chunked_digest),
        ("big/monolithic", &monolithic_digest),
    ] {
        let resp = reader.api.get(&format!("/v2/{name}/blobs/{digest}")).await;
        let resp = expect_status(resp, StatusCode::OK).await;
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            len += chunk.len();
            hasher.update(&chunk);
        }
        assert_eq!(len, GIB, "{name}");
        assert_eq!(
            &format!("sha256:{}", hex::encode(hasher.finalize())),
            digest,
            "{name}"
        );
    }
    drop(reader);
    drop(server);
    remove_prefix(garage, &s3).await;
}

// ---------------------------------------------------------------------------
// 10. Listing order
// ---------------------------------------------------------------------------

/// The tags whose names are prefixes of one another, cut before a byte
/// below `/` (`v1` of `v1.0`), that S3 lists out of byte order.
const AWKWARD_TAGS: [&str; 8] = [
    "v1",
    "v1.0",
    "v1-rc",
    "v1.0.1",
    "1",
    "1.2",
    "1.2.3-alpine",
    "latest",
];

/// Over a thousand tags of those shapes (more than one S3 listing page, so
/// the registry pages through the store instead of caching the list).
fn many_tags() -> BTreeSet<String> {
    let mut tags: BTreeSet<String> = AWKWARD_TAGS.iter().map(|t| t.to_string()).collect();
    for i in 0..172 {
        for tag in [
            format!("v{i}"),
            format!("v{i}.0"),
            format!("v{i}-rc"),
            format!("v{i}.0.1"),
            format!("{i}"),
            format!("{i}.2"),
            format!("{i}.2.3-alpine"),
        ] {
            tags.insert(tag);
        }
    }
    tags
}

/// Every tag of `name` through `api`, `n` at a time, following `Link`.
async fn list_tags_in_pages(api: &Api, name: &str, n: usize) -> Vec<String> {
    let mut tags = Vec::new();
    let mut next = Some(format!("/v2/{name}/tags/list?n={n}"));
    while let Some(path) = next.take() {
        let resp = expect_status(api.get(&path).await, StatusCode::OK).await;
        next = resp.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            let url = link.split(['<', '>']).nth(1).expect("<url> in Link");
            url.to_owned()
        });
        let body: Value = resp.json().await.unwrap();
        let page: Vec<String> = body["tags"]
            .as_array()
            .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        assert!(page.len() <= n, "a page of {} for n={n}", page.len());
        assert!(
            !page.is_empty() || next.is_none(),
            "an empty page with a Link"
        );
        tags.extend(page);
    }
    tags
}

/// Puts `image` under every tag of `tags` through `api`, a few at a time.
async fn push_tags(api: &Api, name: &str, image: &TestImage, tags: &BTreeSet<String>) {
    api.push_blobs(name, image).await;
    futures::stream::iter(tags)
        .map(|tag| async move {
            let resp = api.put_manifest(name, tag, &image.manifest).await;
            expect_status_of(resp, StatusCode::CREATED, tag).await;
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

/// Writes the tag links of `tags` (Distribution's
/// `_manifests/tags/<tag>/current/link`, naming `digest`) straight into a
/// store: a tag push through the API costs tens of milliseconds on S3, and
/// a listing test needs over a thousand of them.
async fn seed_tags(storage: &dyn Storage, name: &str, digest: &str, tags: &BTreeSet<String>) {
    let docs = tags
        .iter()
        .map(|tag| {
            (
                format!("repositories/{name}/_manifests/tags/{tag}/current/link"),
                Bytes::from(digest.to_owned()),
                WriteMode::Overwrite,
            )
        })
        .collect();
    storage.put_all(docs).await.unwrap();
}

/// Tags that S3 lists out of byte order (`v1.0/` before `v1/`) come back,
/// over S3 and through both replicas, in exact byte order, each once, in
/// small pages followed through `Link`, as on the filesystem: the eight
/// awkward tags pushed alone (a list the registry holds whole), and among
/// 1,200 others written into the store (more than one S3 listing page, so
/// the registry pages through the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_list_in_byte_order_in_pages_over_s3_as_on_the_filesystem() {
    let Some(replicas) = Replicas::start(|_| {}).await else {
        return;
    };
    let fs_data = tempfile::tempdir().unwrap();
    let fs_config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: fs_data.path().to_path_buf(),
        ..Config::default()
    };
    let filesystem = RunningServer::start(&fs_config).await.unwrap();
    let filesystem = Api::new(&format!("http://{}", filesystem.addr));
    let image = TestImage::new("tags", &[b"layer"]);
    let few: BTreeSet<String> = AWKWARD_TAGS.iter().map(|t| t.to_string()).collect();
    let many = many_tags();
    assert!(many.len() > 1200, "{} tags", many.len());
    let s3_store = replicas.storage().await;
    let fs_store = berth::open_storage(&fs_config, false).await.unwrap();
    for (backend, api, store) in [
        ("S3", &replicas.via, &s3_store),
        ("the filesystem", &filesystem, &fs_store),
    ] {
        push_tags(api, "order/few", &image, &few).await;
        // The image itself is pushed, so that every seeded tag resolves.
        api.push_image("order/many", "latest", &image).await;
        let started = Instant::now();
        seed_tags(store.as_ref(), "order/many", &image.digest, &many).await;
        eprintln!(
            "{} tag links written into {backend} in {:?}",
            many.len(),
            started.elapsed()
        );
        assert_eq!(
            api.manifest_digest("order/many", "v1.0.1").await,
            Some(image.digest.clone()),
            "a seeded tag resolves through {}",
            api.base
        );
    }

    // BTreeSet<String> iterates in byte order.
    let cases: [(&str, &BTreeSet<String>, &[usize]); 2] = [
        ("order/few", &few, &[1, 2, 3, 5, 100]),
        ("order/many", &many, &[13, 100, 999]),
    ];
    for (name, expected, sizes) in cases {
        let expected: Vec<String> = expected.iter().cloned().collect();
        for &n in sizes {
            let started = Instant::now();
            let over_s3 = list_tags_in_pages(&replicas.via, name, n).await;
            let took = started.elapsed();
            assert_eq!(over_s3, expected, "{name} in pages of {n} over S3");
            let on_fs = list_tags_in_pages(&filesystem, name, n).await;
            assert_eq!(
                on_fs, over_s3,
                "{name} in pages of {n}: the filesystem agrees"
            );
            eprintln!(
                "{name}: {} tags in pages of {n} over S3 in {took:?}",
                expected.len()
            );
        }
        // Whole, in one answer.
        let whole = replicas.via.get(&format!("/v2/{name}/tags/list")).await;
        let whole: Value = expect_status(whole, StatusCode::OK)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(whole["tags"], serde_json::json!(expected), "{name} whole");
    }
}

// ---------------------------------------------------------------------------
// 9. Requests per operation
// ---------------------------------------------------------------------------

/// What a request to the store was, in the words of the registry's layout:
/// `GET tag link`, `LIST gc intents`, `PUT gc marker`, `UploadPart`.
fn request_label(request: &crate::fault_proxy::Logged, bucket: &str, root: &str) -> String {
    let what = |key: &str| -> &'static str {
        let key = key
            .strip_prefix(bucket)
            .unwrap_or(key)
            .trim_start_matches('/');
        let key = key.strip_prefix(root).unwrap_or(key);
        if key.starts_with("_berth/gc/touches") {
            "gc marker"
        } else if key.starts_with("_berth/gc/intents") {
            "gc intents"
        } else if key == "_berth/gc/active" {
            "gc active flag"
        } else if key.starts_with("blobs/") {
            "blob"
        } else if key.contains("/_manifests/tags/") {
            "tag link"
        } else if key.contains("/_berth/history/") {
            "history entry"
        } else if key.contains("/_manifests/revisions/") {
            "revision link"
        } else if key.contains("/_layers/") {
            "layer link"
        } else if key.ends_with("/berth-session.json") {
            "session record"
        } else if key.ends_with("/startedat") {
            "upload startedat"
        } else if key.contains(".tail.") {
            "upload tail"
        } else if key.contains("/_uploads/") {
            "upload data"
        } else {
            "other"
        }
    };
    let query: Vec<(String, String)> = form_urlencoded::parse(request.query.as_bytes())
        .into_owned()
        .collect();
    let has = |name: &str| query.iter().any(|(k, _)| k == name);
    let key = request.path.trim_start_matches('/');
    match request.method.as_str() {
        "GET" if has("list-type") => {
            let prefix = query
                .iter()
                .find(|(k, _)| k == "prefix")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            format!("LIST {}", what(prefix))
        }
        "POST" if has("uploads") => "CreateMultipartUpload".to_owned(),
        "PUT" if has("partNumber") => "UploadPart".to_owned(),
        "POST" if has("uploadId") => "CompleteMultipartUpload".to_owned(),
        "DELETE" if has("uploadId") => "AbortMultipartUpload".to_owned(),
        "POST" if has("delete") => "DeleteObjects".to_owned(),
        "PUT" if request.copy => format!("COPY to {}", what(key)),
        method => format!("{method} {}", what(key)),
    }
}

/// The longest chain of requests each sent after the one before it was
/// answered: the round trips an operation waited for (requests sent side by
/// side count once).
fn round_trips(requests: &[crate::fault_proxy::Logged]) -> usize {
    let mut chain: Vec<usize> = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let before = requests[..i]
            .iter()
            .zip(&chain)
            .filter(|(earlier, _)| earlier.answered.is_some_and(|a| a <= request.arrived))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        chain.push(before + 1);
    }
    chain.into_iter().max().unwrap_or(0)
}

/// The S3 requests each common operation makes, counted by a proxy between
/// two replicas and Garage, stated as upper bounds: a change that adds a
/// request to one of these paths fails here. The counts are deterministic
/// (the operations run one at a time, the link caches' TTL is long enough
/// that nothing expires during the test, and chunk sizes are fixed); round
/// trips are printed, not asserted (they depend on timing).
/// `docs/design/s3.md` ("Requests per operation") has the same table with
/// the reason for each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_common_operation_makes_at_most_its_stated_number_of_s3_requests() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let root = format!("{}/docker/registry/v2/", s3.prefix);
    // Ten minutes: "warm" means within the TTL for the whole test.
    let replicas = Replicas::start_on(s3.clone(), |c| c.cache_ttl_ms = 600_000).await;
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let name = "count/app";
    // Above the registry's in-memory small-blob bound (64 KiB), so pulls
    // stream through the blob cache.
    let layer = random_bytes(MIB, 9);
    let first = TestImage::new("count-1", &[&layer]);
    let second = TestImage::new("count-2", &[&layer]);
    let (layer_digest, config) = (&first.blobs[1].0, &first.blobs[0].1);

    // (operation, requests at most, what it did, how long it took)
    let mut rows: Vec<(&str, usize, Vec<crate::fault_proxy::Logged>, Duration)> = Vec::new();
    macro_rules! counted {
        ($label:expr, $bound:expr, $op:expr) => {{
            proxy.clear();
            let started = Instant::now();
            let out = $op;
            rows.push(($label, $bound, proxy.requests(), started.elapsed()));
            out
        }};
    }

    counted!(
        "blob push, monolithic (1 MiB)",
        10,
        a.push_blob(name, &layer).await
    );
    counted!(
        "blob push, monolithic (small)",
        6,
        a.push_blob(name, config).await
    );
    // Content before its link (a reader that finds the link finds the
    // content), though they share one look at the collections.
    {
        let (_, _, requests, _) = rows.last().expect("a row");
        let labelled = |label: &str| {
            requests
                .iter()
                .find(|r| request_label(r, &garage.bucket, &root) == label)
                .unwrap_or_else(|| panic!("no {label} in the small push"))
        };
        let (content, link) = (labelled("PUT blob"), labelled("PUT layer link"));
        assert!(
            content
                .answered
                .is_some_and(|answered| answered <= link.arrived),
            "the layer link was written only once the content was"
        );
    }
    // A chunked upload as clients that honour OCI-Chunk-Min-Length send
    // it: a part of 5 MiB, then a short last chunk carried over as a tail.
    let chunked = random_bytes(6 * MIB, 10);
    let chunked_digest = sha256_digest(&chunked);
    counted!("blob push, chunked (5 MiB + 1 MiB)", 20, {
        let session = a.start_upload(name).await;
        let resp = a
            .client
            .patch(a.url(&session))
            .header("content-range", format!("0-{}", MIN_PART - 1))
            .body(chunked[..MIN_PART as usize].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let session = location(&resp);
        let resp = a
            .client
            .patch(a.url(&session))
            .header("content-range", format!("{MIN_PART}-{}", chunked.len() - 1))
            .body(chunked[MIN_PART as usize..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let session = location(&resp);
        let resp = a
            .client
            .put(a.url(&with_digest(&session, &chunked_digest)))
            .send()
            .await
            .unwrap();
        expect_status(resp, StatusCode::CREATED).await;
    });
    let head = |api: &Api, digest: &str| {
        let (api, path) = (api.clone(), format!("/v2/{name}/blobs/{digest}"));
        async move { expect_status(api.head(&path).await, StatusCode::OK).await }
    };
    counted!("blob HEAD, cold replica", 2, head(b, &chunked_digest).await);
    counted!("blob HEAD, warm", 0, head(b, &chunked_digest).await);

    let put_on = |api: &Api, reference: &'static str, image: &TestImage| {
        let (api, manifest) = (api.clone(), image.manifest.clone());
        async move {
            let resp = api.put_manifest(name, reference, &manifest).await;
            expect_status(resp, StatusCode::CREATED).await;
        }
    };
    let put = |reference: &'static str, image: &TestImage| put_on(a, reference, image);
    let touched = Instant::now();
    counted!(
        "manifest PUT, new manifest, new tag",
        14,
        put("one", &first).await
    );
    // A CI job's second tag of an image: the first push's touch (less than
    // half of MARKED_FOR, 1 s, ago) still covers what this one relies on,
    // so it only reads the tag and writes the tag and its history entry (a
    // new key: no look at the collectors, s3.md §5): no HEAD of the links,
    // since a DELETE through another replica is acknowledged only after the
    // cover. Should the machine stall past the cover, this push touches again
    // (the row below's 12), said loudly.
    let label = "manifest PUT, stored manifest, new tag, right after another tag of it";
    counted!(label, 3, put("two", &first).await);
    if touched.elapsed() >= Duration::from_millis(500) {
        eprintln!(
            "NOTE: {label}: {:?} after the first push's touch, past its cover: bound 12",
            touched.elapsed()
        );
        rows.last_mut().expect("a row").1 = 12;
    }
    a.push_blob(name, &second.blobs[0].1).await;
    counted!(
        "manifest PUT, new manifest, moving a tag",
        14,
        put("one", &second).await
    );
    counted!(
        "manifest PUT, stored manifest, moving a tag",
        12,
        put("two", &second).await
    );

    let get = |api: &Api, reference: String, expected: String| {
        let api = api.clone();
        async move {
            assert_eq!(api.manifest_digest(name, &reference).await, Some(expected));
        }
    };
    counted!(
        "manifest GET by tag, cold replica",
        3,
        get(b, "one".into(), second.digest.clone()).await
    );
    counted!(
        "manifest GET by digest, cold replica",
        2,
        get(b, first.digest.clone(), first.digest.clone()).await
    );
    counted!(
        "manifest GET by tag, warm",
        0,
        get(a, "two".into(), second.digest.clone()).await
    );
    counted!(
        "manifest GET by digest, warm",
        0,
        get(a, first.digest.clone(), first.digest.clone()).await
    );
    // On the other replica, which touched none of it: the touch in full.
    counted!(
        "manifest PUT, stored manifest, new tag, no touch of it just now",
        12,
        put_on(b, "four", &first).await
    );

    // A collection (another process, as `berth gc` elsewhere) that finds
    // something to decide about (the chunked blob, which no manifest names,
    // too new to remove) raises the active flag: until the flag is old,
    // pushes list the intents and HEAD their keys again after that.
    let gc_data = tempfile::tempdir().unwrap();
    let gc_config = replica_config(
        &s3_config(garage, &garage.endpoint, &s3.prefix),
        gc_data.path(),
    );
    let gc = berth::build_registry(&gc_config).await.unwrap();
    let report = gc.collect_garbage(&GcOptions::default()).await.unwrap();
    assert_eq!(report.blobs_removed, 0, "{report:?}");
    assert!(
        report.spared > 0,
        "the collection decided about something: {report:?}"
    );
    // Every touch of `first`'s keys on replica a is older than the cover
    // (half of MARKED_FOR) after this: the push below touches them again, as
    // any push does while a collection may be at work.
    tokio::time::sleep(Duration::from_millis(500)).await;
    counted!(
        "manifest PUT, stored manifest, new tag, a collection just ran",
        20,
        put("three", &first).await
    );
    let pull = |api: &Api| {
        let (api, path) = (api.clone(), format!("/v2/{name}/blobs/{layer_digest}"));
        let layer = &layer;
        async move {
            let (status, body) = api.get_bytes(&path).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body == layer[..], "the layer's bytes");
        }
    };
    counted!("blob GET (1 MiB), first on a replica", 3, pull(b).await);
    counted!("blob GET (1 MiB), second", 0, pull(b).await);

    let mut report = String::from(
        "\n| operation | S3 requests (bound) | round trips | ms | requests |\n|---|---|---|---|---|\n",
    );
    for (label, bound, requests, took) in &rows {
        let mut kinds: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
        for request in requests {
            let kind = kinds
                .entry(request_label(request, &garage.bucket, &root))
                .or_default();
            kind.0 += 1;
            kind.1 += request
                .answered
                .map_or(0.0, |a| (a - request.arrived).as_secs_f64() * 1e3);
        }
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(kind, (n, ms))| {
                if *n == 1 {
                    format!("{kind} [{ms:.1}]")
                } else {
                    format!("{n} × {kind} [{:.1}]", ms / *n as f64)
                }
            })
            .collect();
        report.push_str(&format!(
            "| {label} | {} ({bound}) | {} | {:.1} | {} |\n",
            requests.len(),
            round_trips(requests),
            took.as_secs_f64() * 1e3,
            kinds.join(", ")
        ));
    }
    eprintln!("{report}");
    for (label, bound, requests, _) in &rows {
        assert!(
            requests.len() <= *bound,
            "{label}: {} S3 requests, at most {bound} stated{report}",
            requests.len()
        );
    }
    // The cheap look at the collectors (one flag) is only that while none
    // runs: with a collection just run, the push lists the intents; without,
    // nothing lists them.
    let lists_intents = |requests: &[crate::fault_proxy::Logged]| {
        requests
            .iter()
            .filter(|r| request_label(r, &garage.bucket, &root) == "LIST gc intents")
            .count()
    };
    for (label, _, requests, _) in &rows {
        let expected = label.ends_with("a collection just ran");
        assert_eq!(
            lists_intents(requests) > 0,
            expected,
            "{label}: intents listed{report}"
        );
    }
    drop(replicas);
    remove_prefix(garage, &s3).await;
}

/// Above the store's copy limit (`copy_limit`: AWS's `CopyObject` takes at
/// most 5 GiB; 1 MiB here), a commit copies the completed upload to the
/// blob's key by streaming it through the replica (a GET into a multipart
/// upload) instead of a server-side copy: the blob pulls whole through both
/// replicas, the store saw no copy request, and the upload's object is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_above_the_stores_copy_limit_is_committed_by_a_streamed_copy() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let mut s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    s3.copy_limit = MIB as u64;
    let root = format!("{}/docker/registry/v2/", s3.prefix);
    let replicas = Replicas::start_on(s3.clone(), |_| {}).await;
    let name = "copy-limit/app";
    // Two parts of 8 MiB and a short last one: a multipart upload.
    let content = random_bytes(19 * MIB, 31);
    let digest = sha256_digest(&content);
    proxy.clear();
    replicas.a.api.push_blob(name, &content).await;
    let labels: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| request_label(r, &garage.bucket, &root))
        .collect();
    assert!(
        !labels.iter().any(|l| l.starts_with("COPY")),
        "a copy request above the limit: {labels:?}"
    );
    assert!(labels.iter().any(|l| l == "GET upload data"), "{labels:?}");
    assert!(
        labels
            .iter()
            .filter(|l| *l == "CompleteMultipartUpload")
            .count()
            >= 2,
        "the upload and the copy each complete a multipart upload: {labels:?}"
    );
    assert_blob_on_both(&replicas, name, &digest, &content).await;
    let storage = replicas.storage().await;
    let uploads = list_all(storage.as_ref(), &format!("repositories/{name}/_uploads")).await;
    assert!(uploads.is_empty(), "upload objects left: {uploads:?}");
}

/// A manifest or blob DELETE through one replica is acknowledged only once
/// no touch answered from memory predates it, on any replica (half a
/// second on S3): a push through the other replica right after it finds
/// the deleted manifest gone and stores it again (its revision link written
/// anew), and finds a deleted layer gone and refuses the manifest; never a
/// tag naming what was deleted. Each push comes right after this replica's
/// own touch of the same keys, which without the wait it would answer from
/// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_one_replica_is_seen_by_the_next_push_through_the_other() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replicas = Replicas::start_on(s3.clone(), |_| {}).await;
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let name = "memory/deleted";
    let layer = random_bytes(2000, 78);
    let image = TestImage::new("deleted-1", &[&layer]);
    let root = format!("{}/docker/registry/v2/", s3.prefix);
    let cover = Duration::from_millis(500);

    // A DELETE through `b`, acknowledged only after the cover.
    let delete_through_b = |path: String| async move {
        let deleting = Instant::now();
        let resp = b.client.delete(b.url(&path)).send().await.unwrap();
        expect_status(resp, StatusCode::ACCEPTED).await;
        assert!(
            deleting.elapsed() >= cover,
            "DELETE {path} is acknowledged after the cover of a touch from memory, not {:?}",
            deleting.elapsed()
        );
    };

    a.push_image(name, "one", &image).await;
    delete_through_b(format!("/v2/{name}/manifests/{}", image.digest)).await;
    proxy.clear();
    let resp = a.put_manifest(name, "two", &image.manifest).await;
    expect_status(resp, StatusCode::CREATED).await;
    let requests: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| request_label(r, &garage.bucket, &root))
        .collect();
    assert_eq!(
        b.manifest_digest(name, "two").await,
        Some(image.digest.clone()),
        "the new tag names a stored manifest ({requests:?})"
    );
    b.assert_intact(name, &image).await;
    assert!(
        requests.iter().any(|r| r == "PUT revision link"),
        "the deleted manifest's revision link was written again: {requests:?}"
    );

    // The push just touched the layer's link through `a`; the layer is
    // deleted through `b`, and the next push of a manifest naming it is refused.
    let layer_digest = sha256_digest(&layer);
    delete_through_b(format!("/v2/{name}/blobs/{layer_digest}")).await;
    let resp = a.put_manifest(name, "three", &image.manifest).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(b.manifest_digest(name, "three").await, None);
    drop(replicas);
    remove_prefix(garage, &s3).await;
}

/// The touch answered from memory (s3.md §5) against a collection, at a
/// grace period of 0: an old untagged image tagged (a full touch), untagged
/// again, and tagged again from memory within half a second.
/// A collection between the two, whose cutoff is past the first push's
/// marker, must still read that marker (it reads markers from MARKED_FOR
/// before its cutoff) and spare the image; one after the new tag finds the
/// tag. The image pulls whole through the other replica, and the second tag
/// made no marker and no HEAD, unless the machine stalled past the cover
/// (said loudly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_from_memory_keeps_an_image_a_collection_would_otherwise_remove() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replicas = Replicas::start_on(s3.clone(), |c| c.lifecycle = deleting()).await;
    let (a, b) = (&replicas.a.api, &replicas.b.api);
    let gc_data = tempfile::tempdir().unwrap();
    let mut gc_config = replica_config(
        &s3_config(garage, &garage.endpoint, &s3.prefix),
        gc_data.path(),
    );
    gc_config.lifecycle = deleting();
    let gc = berth::build_registry(&gc_config).await.unwrap();
    let options = GcOptions {
        grace_period: Some(Duration::ZERO),
        ..GcOptions::default()
    };
    let name = "memory/app";
    let layer = random_bytes(3000, 77);
    let image = TestImage::new("memory-1", &[&layer]);
    let untag = |tag: &'static str| async move {
        let resp = a
            .client
            .delete(a.url(&format!("/v2/{name}/manifests/{tag}")))
            .send()
            .await
            .unwrap();
        expect_status(resp, StatusCode::ACCEPTED).await;
    };
    a.push_image(name, "zero", &image).await;
    untag("zero").await;
    // Every object of the image older than a collection's allowance for a
    // time read in whole seconds (`older_than`): from here only a marker
    // keeps a collection from removing it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let touched = Instant::now();
    let resp = a.put_manifest(name, "first", &image.manifest).await;
    expect_status(resp, StatusCode::CREATED).await;
    untag("first").await;
    // Untagged now: a collection that missed the marker would remove it.
    let report = gc.collect_garbage(&options).await.unwrap();
    assert_eq!(report.manifests_removed, 0, "{report:?}");
    assert!(report.spared > 0, "the collection decided: {report:?}");
    proxy.clear();
    let resp = a.put_manifest(name, "second", &image.manifest).await;
    expect_status(resp, StatusCode::CREATED).await;
    let root = format!("{}/docker/registry/v2/", s3.prefix);
    let requests: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| request_label(r, &garage.bucket, &root))
        .collect();
    if touched.elapsed() < Duration::from_millis(500) {
        assert!(
            !requests
                .iter()
                .any(|r| r == "PUT gc marker" || r.starts_with("HEAD ")),
            "a tag from memory made no marker and no HEAD: {requests:?}"
        );
        assert!(
            requests.len() <= 3,
            "GET tag link, PUT tag link, PUT history entry: {requests:?}"
        );
    } else {
        eprintln!(
            "NOTE: the second tag came {:?} after the first push's touch, past its cover: \
             it touched in full ({requests:?}); the collection's outcome still holds",
            touched.elapsed()
        );
    }
    let report = gc.collect_garbage(&options).await.unwrap();
    assert_eq!(report.manifests_removed, 0, "{report:?}");
    assert_eq!(
        b.manifest_digest(name, "second").await,
        Some(image.digest.clone())
    );
    b.assert_intact(name, &image).await;
    drop(replicas);
    remove_prefix(garage, &s3).await;
}
