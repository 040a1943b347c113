//! Faults under replicas over S3 (issue 13), on a real Garage: a replica
//! killed mid-push, a Garage node stopped while replicas push and pull, an
//! object store that cannot be reached. The replicas and clients are those
//! of `s3`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::fault_proxy::{FaultProxy, Mode};
use crate::garage_s3::{location, s3_config, Api, Replica, TestImage, MIB};
use crate::support::garage::{garage_or_skip, Garage};
use crate::support::{expect_status, random_bytes, ServeProcess};

/// `berth serve` on `s3`'s bucket and prefix, as a process (so that it can
/// be killed), with its local state in `data`.
fn replica_process(garage: &Garage, prefix: &str, data: &std::path::Path) -> ServeProcess {
    ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--s3-bucket",
            &garage.bucket,
            "--s3-endpoint",
            &garage.endpoint,
            "--s3-region",
            &garage.region,
            "--s3-prefix",
            prefix,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &garage.key_id),
            ("AWS_SECRET_ACCESS_KEY", &garage.secret),
        ],
    )
}

/// Replica A, a process, is killed (SIGKILL) while a client streams a layer
/// to it (after a first 8 MiB chunk was acknowledged, in the middle of the
/// second): through replica B nothing of the layer or of the image is
/// visible (no blob, no tag, no manifest, no object at the blob's key), the
/// session B reads still ends at the acknowledged chunk, and the client's
/// retry of the whole push through B succeeds and pulls whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_push_leaves_nothing_visible_and_the_retry_through_another_works() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let prefix = garage.prefix();
    let s3 = s3_config(garage, &garage.endpoint, &prefix);
    let a_data = tempfile::tempdir().unwrap();
    let mut a_process = replica_process(garage, &prefix, a_data.path());
    let a = Api::new(&a_process.url(""));
    let b = Replica::start(&s3, |_| {}).await;
    let name = "killed/app";
    let layer = random_bytes(32 * MIB, 90);
    let image = TestImage::new("killed", &[&layer]);
    let (config_digest, config) = &image.blobs[0];
    let layer_digest = &image.blobs[1].0;

    // Through A: the config, then the layer in chunks.
    a.push_blob(name, config).await;
    let session = a.start_upload(name).await;
    let first = 8 * MIB;
    let resp = a
        .client
        .patch(a.url(&session))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", first - 1))
        .body(layer[..first].to_vec())
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    let session = location(&resp);
    // The second chunk's body comes from a channel this test feeds: A dies
    // with half of it sent, the channel still open (closing it would end
    // the body cleanly).
    let (mut feed, body) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(0);
    let patch = {
        let request = a
            .client
            .patch(a.url(&session))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{first}-{}", layer.len() - 1))
            .header("content-length", (layer.len() - first).to_string())
            .body(reqwest::Body::wrap_stream(body));
        tokio::spawn(request.send())
    };
    let half = first + (layer.len() - first) / 2;
    for block in layer[first..half].chunks(MIB) {
        feed.send(Ok(Bytes::copy_from_slice(block))).await.unwrap();
    }
    a_process.child.kill().unwrap();
    a_process.child.wait().unwrap();
    let outcome = patch.await.unwrap();
    assert!(
        outcome.is_err(),
        "the PATCH cannot succeed: {:?}",
        outcome.map(|r| r.status())
    );
    drop(feed);

    // Through B: nothing of the layer or the image.
    let blob = format!("/v2/{name}/blobs/{layer_digest}");
    assert_eq!(b.api.head(&blob).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(b.api.get(&blob).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(b.api.manifest_digest(name, "v1").await, None);
    let manifest = format!("/v2/{name}/manifests/{}", image.digest);
    assert_eq!(b.api.get(&manifest).await.status(), StatusCode::NOT_FOUND);
    let storage = berth::open_storage(&b.config, false).await.unwrap();
    let hex = layer_digest.trim_start_matches("sha256:");
    let key = format!("blobs/sha256/{}/{hex}/data", &hex[..2]);
    assert_eq!(storage.size(&key).await.unwrap(), None, "{key}");
    // The session as B reads it: what A acknowledged, not what it was
    // receiving when it died.
    let status = expect_status(b.api.get(&session).await, StatusCode::NO_CONTENT).await;
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        format!("0-{}", first - 1)
    );
    // The config A acknowledged is there.
    let (status, body) = b
        .api
        .get_bytes(&format!("/v2/{name}/blobs/{config_digest}"))
        .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &config[..]));

    // The client retries the whole push through B.
    b.api.push_image(name, "v1", &image).await;
    b.api.assert_intact(name, &image).await;
    let fresh = Replica::start(&s3, |c| c.storage.s3.cache_bytes = 0).await;
    fresh.api.assert_intact(name, &image).await;
    assert_eq!(
        fresh.api.manifest_digest(name, "v1").await,
        Some(image.digest.clone())
    );
}

/// What the pushers and pullers of the node-stop test did.
#[derive(Default)]
struct Activity {
    /// (replica, repository, tag, image) of every acknowledged push.
    acknowledged: Mutex<Vec<(usize, String, String, TestImage)>>,
    /// Acknowledged while the node was stopped.
    acknowledged_while_stopped: AtomicUsize,
    push_failures: AtomicUsize,
    pulls: AtomicUsize,
    pull_failures: AtomicUsize,
}

/// Pushes images through `api` until `stop`: a small layer each, and every
/// fourth image a 6 MiB one (a multipart upload).
async fn keep_pushing(
    api: Api,
    replica: usize,
    activity: Arc<Activity>,
    node_stopped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let name = format!("faults/r{replica}");
    let mut serial = 0u64;
    while !stop.load(Ordering::SeqCst) {
        serial += 1;
        let size = if serial % 4 == 0 { 6 * MIB } else { 64 * 1024 };
        let layer = random_bytes(size, replica as u64 * 1_000_000 + serial);
        let image = TestImage::new(&format!("{replica}-{serial}"), &[&layer]);
        let tag = format!("t{serial}");
        if push_image_tolerantly(&api, &name, &tag, &image).await {
            if node_stopped.load(Ordering::SeqCst) {
                activity
                    .acknowledged_while_stopped
                    .fetch_add(1, Ordering::SeqCst);
            }
            activity
                .acknowledged
                .lock()
                .unwrap()
                .push((replica, name.clone(), tag, image));
        } else {
            activity.push_failures.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Pushes the image; false on any failure (a fault may refuse a push: only
/// an acknowledged one must hold).
async fn push_image_tolerantly(api: &Api, name: &str, tag: &str, image: &TestImage) -> bool {
    for (digest, content) in &image.blobs {
        let Ok(resp) = api
            .client
            .post(api.url(&format!("/v2/{name}/blobs/uploads/?digest={digest}")))
            .body(content.clone())
            .send()
            .await
        else {
            return false;
        };
        if resp.status() != StatusCode::CREATED {
            return false;
        }
    }
    let Ok(resp) = api
        .client
        .put(api.url(&format!("/v2/{name}/manifests/{tag}")))
        .header("content-type", crate::support::OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
    else {
        return false;
    };
    resp.status() == StatusCode::CREATED
}

/// Pulls acknowledged images through `api` until `stop`; a pull that
/// answers 200 must carry the right bytes.
async fn keep_pulling(api: Api, activity: Arc<Activity>, stop: Arc<AtomicBool>) {
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let pick = {
            let acknowledged = activity.acknowledged.lock().unwrap();
            (!acknowledged.is_empty()).then(|| {
                next += 1;
                acknowledged[next % acknowledged.len()].clone()
            })
        };
        let Some((_, name, _, image)) = pick else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        for (digest, content) in &image.blobs {
            activity.pulls.fetch_add(1, Ordering::SeqCst);
            match api
                .client
                .get(api.url(&format!("/v2/{name}/blobs/{digest}")))
                .send()
                .await
            {
                Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                    Ok(body) => assert!(body == content[..], "a pull of {digest} got other bytes"),
                    Err(_) => {
                        activity.pull_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
                _ => {
                    activity.pull_failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Every acknowledged image pulls whole, by tag, through `api`.
async fn assert_all_intact(api: &Api, activity: &Activity) {
    let acknowledged = activity.acknowledged.lock().unwrap().clone();
    for (_, name, tag, image) in &acknowledged {
        assert_eq!(
            api.manifest_digest(name, tag).await.as_deref(),
            Some(image.digest.as_str()),
            "{name}:{tag} through {}",
            api.base
        );
        api.assert_intact(name, image).await;
    }
}

/// A 3-node Garage (replication factor 3) under two replicas (A on node 1,
/// B on node 2) that push and pull all the while: node 3 is stopped in the
/// middle and restarted at the end. Pushes go on being acknowledged while it
/// is down (2 of 3 is a quorum), and every acknowledged image pulls whole,
/// through both replicas with the node down, and through a fresh replica on
/// node 3 once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_garage_node_costs_no_acknowledged_image() {
    if !garage_or_skip() {
        return;
    }
    let started = Instant::now();
    let cluster = Garage::start_cluster(3);
    let prefix = cluster.prefix();
    let on_node = |n: usize| s3_config(&cluster, cluster.endpoint_of(n), &prefix);
    let a = Replica::start(&on_node(1), |_| {}).await;
    let b = Replica::start(&on_node(2), |_| {}).await;
    let activity = Arc::new(Activity::default());
    let node_stopped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (replica, api) in [(0, &a.api), (1, &b.api)] {
        workers.push(tokio::spawn(keep_pushing(
            api.clone(),
            replica,
            activity.clone(),
            node_stopped.clone(),
            stop.clone(),
        )));
    }
    // Each replica pulls what both push.
    for api in [&a.api, &b.api] {
        workers.push(tokio::spawn(keep_pulling(
            api.clone(),
            activity.clone(),
            stop.clone(),
        )));
    }
    let count = || activity.acknowledged.lock().unwrap().len();
    crate::garage_s3::wait_until(
        Duration::from_secs(30),
        "pushes before the stop",
        || async { count() >= 6 },
    )
    .await;
    cluster.stop_node(3);
    node_stopped.store(true, Ordering::SeqCst);
    let before = count();
    let stopped_at = Instant::now();
    crate::garage_s3::wait_until(
        Duration::from_secs(30),
        "pushes acknowledged with node 3 down",
        || async { count() >= before + 8 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    eprintln!(
        "{} pushes acknowledged ({} with node 3 down, for {:?}), {} failed; \
         {} blob pulls, {} failed",
        count(),
        activity.acknowledged_while_stopped.load(Ordering::SeqCst),
        stopped_at.elapsed(),
        activity.push_failures.load(Ordering::SeqCst),
        activity.pulls.load(Ordering::SeqCst),
        activity.pull_failures.load(Ordering::SeqCst),
    );
    assert!(activity.acknowledged_while_stopped.load(Ordering::SeqCst) > 0);

    // With the node still down: through both replicas, and through one with
    // no cache of its own (every byte from the store).
    let uncached = Replica::start(&on_node(2), |c| {
        c.cache_ttl_ms = 0;
        c.storage.s3.cache_bytes = 0;
    })
    .await;
    for api in [&a.api, &b.api, &uncached.api] {
        assert_all_intact(api, &activity).await;
    }
    cluster.start_node(3);
    let on_3 = Replica::start(&on_node(3), |c| {
        c.cache_ttl_ms = 0;
        c.storage.s3.cache_bytes = 0;
    })
    .await;
    assert_all_intact(&on_3.api, &activity).await;
    eprintln!("3-node test took {:?}", started.elapsed());
}

/// Asserts `resp` is a clean 503: the spec's JSON error, code UNAVAILABLE
/// (but for a HEAD, which has no body, and /readyz, which is plain text).
async fn assert_unavailable(what: &str, resp: reqwest::Response) {
    let status = resp.status();
    let json = !what.contains("HEAD") && !what.contains("readyz");
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    if !json {
        return;
    }
    let body: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: not a JSON error ({e}): {body}"));
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{what}: {body}");
}

/// Requests that each need the store (nothing a cache could answer: no
/// cache TTL, the blob never read): each must come back a clean 503 within
/// `bound`, never hang.
async fn requests_fail_cleanly(api: &Api, image: &TestImage, bound: Duration, fault: &str) {
    let name = "unreachable/app";
    let layer = &image.blobs[1].0;
    let client = &api.client;
    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "GET a tag",
            client.get(api.url(&format!("/v2/{name}/manifests/v1"))),
        ),
        (
            "GET a manifest by digest",
            client.get(api.url(&format!("/v2/{name}/manifests/{}", image.digest))),
        ),
        (
            "HEAD a blob",
            client.head(api.url(&format!("/v2/{name}/blobs/{layer}"))),
        ),
        (
            "GET a blob",
            client.get(api.url(&format!("/v2/{name}/blobs/{layer}"))),
        ),
        (
            "GET the tags",
            client.get(api.url(&format!("/v2/{name}/tags/list"))),
        ),
        (
            "POST an upload",
            client.post(api.url(&format!("/v2/{name}/blobs/uploads/"))),
        ),
        (
            "PUT a manifest",
            client
                .put(api.url(&format!("/v2/{name}/manifests/v2")))
                .header("content-type", crate::support::OCI_MANIFEST)
                .body(image.manifest.clone()),
        ),
        ("GET /readyz", client.get(api.url("/readyz"))),
    ];
    // At once: each is bounded on its own, and the test waits for the
    // slowest only.
    let started = Instant::now();
    let answers =
        futures::future::join_all(requests.into_iter().map(|(what, request)| async move {
            let resp = tokio::time::timeout(bound, request.send())
                .await
                .unwrap_or_else(|_| panic!("{fault}: {what} did not answer within {bound:?}"))
                .unwrap();
            (what, started.elapsed(), resp)
        }))
        .await;
    for (what, took, resp) in answers {
        eprintln!("{fault}: {what} answered {} after {took:?}", resp.status());
        assert_unavailable(&format!("{fault}: {what}"), resp).await;
    }
}

/// A store that cannot be reached under a running replica (it must be
/// reachable at start: the start-up probe refuses a store it cannot write)
/// turns each request that needs it into a clean 503 JSON error within a
/// bound, never a hung request: a store whose connections are cut (and then
/// a port nothing listens on) within 10 s, a store that accepts and never
/// answers within 40 s (Berth bounds each store request at 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_store_gives_clean_503s_within_a_bound_not_a_hang() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replica = Replica::start(&s3, |c| c.cache_ttl_ms = 0).await;
    let image = TestImage::new("unreachable", &[&random_bytes(MIB, 95)]);
    replica
        .api
        .push_image("unreachable/app", "v1", &image)
        .await;

    proxy.set_mode(Mode::Cut);
    requests_fail_cleanly(&replica.api, &image, Duration::from_secs(10), "cut").await;
    proxy.set_mode(Mode::BlackHole);
    requests_fail_cleanly(&replica.api, &image, Duration::from_secs(40), "black hole").await;
    // Nothing listens on the port any more.
    let port = proxy.addr;
    drop(proxy);
    crate::garage_s3::wait_until(
        Duration::from_secs(2),
        "the proxy's port closes",
        || async { tokio::net::TcpStream::connect(port).await.is_err() },
    )
    .await;
    requests_fail_cleanly(&replica.api, &image, Duration::from_secs(10), "refused").await;
}

/// A store that answers a ranged GET with fewer bytes than it claims: the
/// first pull of a blob (downloaded in ranges) through a replica never
/// reaches its client whole (the body breaks off, or the answer is an
/// error), the replica keeps no copy of it, and once the store answers
/// whole the same replica serves the blob whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_sending_short_ranges_fails_the_pull_and_leaves_no_copy() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let pusher = Replica::start(&s3, |c| c.cache_ttl_ms = 0).await;
    // Above the blob cache's range size (8 MiB): three ranges.
    let image = TestImage::new("short", &[&random_bytes(20 * MIB, 96)]);
    let name = "short/app";
    pusher.api.push_image(name, "v1", &image).await;
    let (digest, content) = image.blobs[1].clone();
    let path = format!("/v2/{name}/blobs/{digest}");

    // A replica that has read nothing yet.
    let reader = Replica::start(&s3, |c| c.cache_ttl_ms = 0).await;
    proxy.set_mode(Mode::ShortRanges);
    for attempt in 1..=2 {
        let resp = reader.api.get(&path).await;
        let status = resp.status();
        match resp.bytes().await {
            Ok(body) => assert!(
                status != StatusCode::OK || body.len() < content.len(),
                "attempt {attempt}: {status} with {} of {} bytes",
                body.len(),
                content.len()
            ),
            Err(e) => assert_eq!(status, StatusCode::OK, "attempt {attempt}: {e:?}"),
        }
    }
    let short = proxy
        .requests()
        .iter()
        .filter(|r| r.ranged && r.path.ends_with("/data"))
        .count();
    assert!(short > 0, "the pulls asked for ranges");

    proxy.set_mode(Mode::Forward);
    let (status, body) = reader.api.get_bytes(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == content[..],
        "the blob, whole, once the store answers whole"
    );
    reader.api.assert_intact(name, &image).await;
}

/// A store that fails a part streamed as its bytes arrive (a 500 to the
/// presigned `UploadPart`, its body unread), or never answers it: the
/// replica sends the part again whole, signed in its headers, once all its
/// bytes are in (a stalled one once the store has not answered for 30 s
/// after them), and the push succeeds; the blob pulls whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_part_the_store_fails_is_sent_again_whole() {
    streamed_part_sent_again_whole(Mode::FailPresignedParts, Some(500), 98).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_part_the_store_stalls_is_sent_again_whole_after_30_s() {
    streamed_part_sent_again_whole(Mode::HangPresignedParts, None, 99).await;
}

async fn streamed_part_sent_again_whole(mode: Mode, answered: Option<u16>, seed: u64) {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replica = Replica::start(&s3, |c| c.cache_ttl_ms = 0).await;
    let name = format!("failed-part/{seed}");
    // 12 MiB: one part (too few bytes for a second one of at least 5 MiB).
    let content = random_bytes(12 * MIB, seed);
    let digest = crate::support::sha256_digest(&content);
    proxy.set_mode(mode);
    let session = replica.api.start_upload(&name).await;
    let started = Instant::now();
    let patch = replica
        .api
        .client
        .patch(replica.api.url(&session))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", content.len() - 1))
        .body(content.clone())
        .send();
    let resp = tokio::time::timeout(Duration::from_secs(120), patch)
        .await
        .expect("the PATCH is answered: a stalled part must not hang it")
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    let took = started.elapsed();
    let session = location(&resp);
    if answered.is_none() {
        assert!(
            took >= Duration::from_secs(30) && took < Duration::from_secs(90),
            "a stalled part is given up 30 s after its bytes are in: {took:?}"
        );
    }
    let parts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PUT"
                && form_urlencoded::parse(r.query.as_bytes())
                    .any(|(k, v)| k == "partNumber" && v == "1")
        })
        .collect();
    assert!(
        parts.len() == 2
            && parts[0].presigned
            && parts[0].status == answered
            && !parts[1].presigned
            && parts[1].status == Some(200),
        "a failed streamed part, then the part whole: {parts:?}"
    );
    proxy.set_mode(Mode::Forward);
    let resp = replica
        .api
        .client
        .put(
            replica
                .api
                .url(&crate::garage_s3::with_digest(&session, &digest)),
        )
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::CREATED).await;
    let (status, body) = replica
        .api
        .get_bytes(&format!("/v2/{name}/blobs/{digest}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == content[..], "the blob, whole");
}
