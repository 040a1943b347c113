//! Pull-through mirroring (issue 14, first increment): a Berth whose
//! `[[proxy]]` entry mirrors another registry under the prefix `hub`. The
//! upstream is a second real registry (Berth) on loopback, reached through
//! a logging proxy that counts what the mirror asks of it and can cut it
//! off (an upstream gone down).

use std::time::Duration;

use berth::mirror::ProxyConfig;
use berth::oci::{RepositoryName, RepositoryPattern, Tag};
use berth::storage::layout;
use reqwest::StatusCode;

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::*;

struct Mirrored {
    upstream: TestRegistry,
    proxy: FaultProxy,
    mirror: TestRegistry,
}

/// An upstream registry, the logging proxy in front of it, and one mirror
/// server whose entry `hub` mirrors the upstream through the proxy (and
/// serves `?ns=upstream.example`). One
/// server, on either backend: the counts are of one process's fetches.
async fn mirrored(tag_ttl: Duration) -> Mirrored {
    // One upstream server: with two replicas on S3, one could answer from
    // its cache for a moment what the other just moved.
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let proxy = FaultProxy::start(&format!("http://{}", upstream.addr)).await;
    let endpoint = proxy.endpoint();
    let mirror = TestRegistry::start_one_with(|config| {
        config.proxy = vec![ProxyConfig {
            tag_ttl,
            revalidate_timeout: Duration::from_millis(300),
            ns: vec!["upstream.example".into()],
            ..ProxyConfig::new("hub", &endpoint)
        }];
    })
    .await;
    Mirrored {
        upstream,
        proxy,
        mirror,
    }
}

impl Mirrored {
    /// Upstream requests so far of `method` whose path contains `part`.
    fn asked(&self, method: &str, part: &str) -> usize {
        self.proxy
            .requests()
            .iter()
            .filter(|r| r.method.as_str() == method && r.path.contains(part))
            .count()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        get(&self.mirror, path).await
    }

    /// `GET path`, asserting 200.
    async fn ok(&self, path: &str) -> reqwest::Response {
        expect_status(self.get(path).await, StatusCode::OK).await
    }

    async fn head(&self, path: &str) -> reqwest::Response {
        self.mirror
            .client
            .head(self.mirror.url(path))
            .send()
            .await
            .unwrap()
    }
}

fn digest_header(resp: &reqwest::Response) -> String {
    header_str(resp, "docker-content-digest").to_owned()
}

/// An image's manifest bytes and digest, its layer's and config's digests.
struct Image {
    manifest: Vec<u8>,
    digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    config_digest: String,
}

async fn push(upstream: &TestRegistry, name: &str, tag: &str, seed: u64) -> Image {
    let layer = random_bytes(300_000, seed);
    let (manifest, digest) = upstream.push_image(name, tag, &layer).await;
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    Image {
        layer_digest: sha256_digest(&layer),
        config_digest: parsed["config"]["digest"].as_str().unwrap().to_owned(),
        manifest,
        digest,
        layer,
    }
}

#[tokio::test]
async fn an_image_is_fetched_once_then_served_locally_by_digest_and_within_the_tag_ttl() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let image = push(&m.upstream, "library/app", "1.0", 1).await;

    let resp = m.ok("/v2/hub/library/app/manifests/1.0").await;
    assert_eq!(digest_header(&resp), image.digest);
    assert_eq!(
        resp.bytes().await.unwrap(),
        image.manifest,
        "the upstream's bytes"
    );
    // A HEAD, then a GET by the digest it named: the content is the one
    // the tag pointed at when asked.
    assert_eq!(m.asked("HEAD", "/v2/library/app/manifests/1.0"), 1);
    assert_eq!(
        m.asked(
            "GET",
            &format!("/v2/library/app/manifests/{}", image.digest)
        ),
        1
    );

    let layer = format!("/v2/hub/library/app/blobs/{}", image.layer_digest);
    let resp = m.ok(&layer).await;
    assert_eq!(resp.bytes().await.unwrap(), image.layer);
    let config = format!("/v2/hub/library/app/blobs/{}", image.config_digest);
    m.ok(&config).await;
    assert_eq!(m.asked("GET", &image.layer_digest), 1);

    // Stored: the mirror's own store holds the manifest, the tag and the
    // blob under the layout of pushed content.
    let storage = m.mirror.storage().await;
    let name = RepositoryName::parse("hub/library/app").unwrap();
    let tag_link = layout::tag_current_link(&name, &Tag::parse("1.0").unwrap());
    let stored = storage
        .get(&tag_link)
        .await
        .unwrap()
        .expect("the tag is stored");
    assert_eq!(stored, image.digest.as_bytes());

    // Again, by tag (within its TTL), by digest, and the blobs: nothing
    // goes upstream.
    let before = m.proxy.requests().len();
    for _ in 0..2 {
        let resp = m.ok("/v2/hub/library/app/manifests/1.0").await;
        assert_eq!(resp.bytes().await.unwrap(), image.manifest);
        let by_digest = format!("/v2/hub/library/app/manifests/{}", image.digest);
        m.ok(&by_digest).await;
        let resp = m.ok(&layer).await;
        assert_eq!(resp.bytes().await.unwrap(), image.layer);
        expect_status(m.head(&layer).await, StatusCode::OK).await;
    }
    assert_eq!(
        m.proxy.requests().len(),
        before,
        "{:#?}",
        m.proxy.requests()
    );
    // The upstream requests, as the mirror's metrics count them.
    let metrics = scrape(&m.mirror).await;
    let sent = |request: &str| {
        metrics.get(&format!(
            "berth_upstream_requests_total{{prefix=\"hub\",request=\"{request}\",result=\"ok\"}}"
        ))
    };
    assert_eq!(sent("manifest_head"), 1.0);
    assert_eq!(sent("manifest"), 1.0);
    assert_eq!(sent("blob"), 2.0, "the layer and the config");
}

#[tokio::test]
async fn a_tag_past_its_ttl_is_checked_by_head_and_fetched_again_only_when_it_moved() {
    let m = mirrored(Duration::ZERO).await;
    let first = push(&m.upstream, "library/app", "prod", 2).await;
    let resp = m.ok("/v2/hub/library/app/manifests/prod").await;
    assert_eq!(digest_header(&resp), first.digest);
    m.proxy.clear();

    // Unchanged upstream: one HEAD per pull of the tag, no GET.
    for _ in 0..3 {
        let resp = expect_status(
            m.head("/v2/hub/library/app/manifests/prod").await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(digest_header(&resp), first.digest);
    }
    assert_eq!(m.asked("HEAD", "/manifests/prod"), 3);
    assert_eq!(
        m.asked("GET", "/manifests/"),
        0,
        "{:#?}",
        m.proxy.requests()
    );

    // The tag moves upstream: the next pull serves the new image, fetched
    // by the digest the HEAD named.
    let second = push(&m.upstream, "library/app", "prod", 3).await;
    let resp = m.ok("/v2/hub/library/app/manifests/prod").await;
    assert_eq!(digest_header(&resp), second.digest);
    assert_eq!(resp.bytes().await.unwrap(), second.manifest);
    assert_eq!(m.asked("GET", &format!("/manifests/{}", second.digest)), 1);
    assert_eq!(m.asked("GET", "/manifests/prod"), 0, "never a GET by tag");
    // The old image stays by digest, local.
    let old = format!("/v2/hub/library/app/manifests/{}", first.digest);
    m.ok(&old).await;
}

/// Whether the mirror's store holds `digest`'s content, or a link to it in
/// `name`.
async fn stored(mirror: &TestRegistry, name: &str, digest: &str) -> (bool, bool) {
    let storage = mirror.storage().await;
    let digest = digest.parse().unwrap();
    let name = RepositoryName::parse(name).unwrap();
    let content = storage.get(&layout::blob_data(&digest)).await.unwrap();
    let link = storage
        .get(&layout::layer_link(&name, &digest))
        .await
        .unwrap();
    (content.is_some(), link.is_some())
}

/// [`stored`], once the blob and its link are there or after 5 s: a blob
/// is committed just after its last byte reached the clients.
async fn committed(mirror: &TestRegistry, name: &str, digest: &str) -> (bool, bool) {
    for _ in 0..100 {
        if stored(mirror, name, digest).await == (true, true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stored(mirror, name, digest).await
}

/// What a fetch into `name` left behind: files in the mirror's spool
/// directory and uploads in `name`, once there are none or after 5 s.
async fn leftovers(m: &Mirrored, name: &str) -> Vec<String> {
    let dir = m.mirror.config.data_dir.join("mirror").join("spool");
    let storage = m.mirror.storage().await;
    let uploads = layout::uploads_dir(&RepositoryName::parse(name).unwrap());
    let mut left = Vec::new();
    for _ in 0..100 {
        left = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        left.extend(crate::support::store::children(&*storage, &uploads).await);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    left
}

#[tokio::test]
async fn sixteen_concurrent_pulls_of_a_missing_blob_stream_from_one_upstream_fetch_as_it_arrives() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let layer = random_bytes(4 << 20, 4);
    let digest = m.upstream.push_blob("library/big", &layer).await;
    let path = format!("/v2/hub/library/big/blobs/{digest}");
    // The upstream sends the first half, then holds the rest back.
    m.proxy.set_mode(Mode::StallBlob);
    let starts = (0..16).map(|_| async {
        let start = async {
            let mut resp = m.ok(&path).await;
            let first = resp.chunk().await.unwrap().expect("a first chunk");
            (resp, first)
        };
        let (resp, first) = tokio::time::timeout(Duration::from_secs(20), start)
            .await
            .expect("an answer and bytes while the upstream still holds the rest");
        assert_eq!(header_str(&resp, "content-length"), layer.len().to_string());
        (resp, first)
    });
    let started = futures::future::join_all(starts).await;
    // Nothing is visible while the fetch is under way.
    assert_eq!(
        stored(&m.mirror, "hub/library/big", &digest).await,
        (false, false)
    );
    m.proxy.set_mode(Mode::Forward);
    let rests = started.into_iter().map(|(resp, first)| async move {
        let rest = resp.bytes().await.expect("the rest of the blob");
        [first, rest].concat()
    });
    for body in futures::future::join_all(rests).await {
        assert!(body == layer, "every client gets the blob whole");
    }
    assert_eq!(m.asked("GET", &digest), 1, "{:#?}", m.proxy.requests());
    // Committed once checked, and from then on served locally.
    assert_eq!(
        committed(&m.mirror, "hub/library/big", &digest).await,
        (true, true)
    );
    let resp = m.ok(&path).await;
    assert!(resp.bytes().await.unwrap() == layer);
    assert_eq!(m.asked("GET", &digest), 1);
    assert_eq!(leftovers(&m, "hub/library/big").await, Vec::<String>::new());
}

#[tokio::test]
async fn an_upstream_blob_with_wrong_bytes_or_cut_short_fails_the_transfer_and_stores_nothing() {
    let m = mirrored(Duration::from_secs(3600)).await;
    for (mode, seed) in [(Mode::FlipBlobByte, 40), (Mode::TruncateBlob, 41)] {
        let layer = random_bytes(3 << 20, seed);
        let digest = m.upstream.push_blob("library/bad", &layer).await;
        let path = format!("/v2/hub/library/bad/blobs/{digest}");
        m.proxy.set_mode(mode);
        let resp = m.get(&path).await;
        match resp.status() {
            // The answer had started: the client's transfer fails, and it
            // never has the whole body.
            StatusCode::OK => {
                let body = resp.bytes().await;
                assert!(
                    body.as_ref().map_or(true, |b| b.len() < layer.len()),
                    "{mode:?}: a failed transfer, not a whole body"
                );
                assert!(body.is_err(), "{mode:?}: the transfer fails");
            }
            // The fetch had failed before the client joined it.
            status => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode:?}");
                assert_eq!(error_code(resp).await, "UNAVAILABLE");
            }
        }
        assert_eq!(
            stored(&m.mirror, "hub/library/bad", &digest).await,
            (false, false),
            "{mode:?}: nothing stored"
        );
        assert_eq!(
            leftovers(&m, "hub/library/bad").await,
            Vec::<String>::new(),
            "{mode:?}"
        );
        // The next pull fetches again, and the upstream now sends it whole.
        m.proxy.set_mode(Mode::Forward);
        let resp = m.ok(&path).await;
        assert!(resp.bytes().await.unwrap() == layer, "{mode:?}");
        assert_eq!(m.asked("GET", &digest), 2, "{mode:?}");
    }
}

#[tokio::test]
async fn a_ranged_get_of_a_missing_blob_gets_its_range_once_the_blob_is_fetched() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let layer = random_bytes(1 << 20, 42);
    let digest = m.upstream.push_blob("library/app", &layer).await;
    let path = format!("/v2/hub/library/app/blobs/{digest}");
    let resp = m
        .mirror
        .client
        .get(m.mirror.url(&path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(resp.bytes().await.unwrap(), layer[1000..2000]);
    assert_eq!(m.asked("GET", &digest), 1);
    assert_eq!(
        stored(&m.mirror, "hub/library/app", &digest).await,
        (true, true)
    );
}

#[tokio::test]
async fn a_request_with_ns_is_served_by_the_entry_mirroring_that_registry_and_an_unknown_one_is_404(
) {
    let m = mirrored(Duration::from_secs(3600)).await;
    let image = push(&m.upstream, "library/app", "1.0", 50).await;
    // A local repository of the same name holds another image.
    let (_, local_digest) = m
        .mirror
        .push_image("library/app", "1.0", &random_bytes(1000, 51))
        .await;

    // containerd's request to a mirror: the name as the registry knows it,
    // and `ns` naming the registry.
    let resp = m
        .ok("/v2/library/app/manifests/1.0?ns=upstream.example")
        .await;
    assert_eq!(header_str(&resp, "oci-namespace"), "upstream.example");
    assert_eq!(digest_header(&resp), image.digest);
    let layer = format!(
        "/v2/library/app/blobs/{}?ns=upstream.example",
        image.layer_digest
    );
    let resp = m.ok(&layer).await;
    assert_eq!(header_str(&resp, "oci-namespace"), "upstream.example");
    assert!(resp.bytes().await.unwrap() == image.layer);
    // Cached under the entry's prefix, like a pull through the prefix.
    assert_eq!(
        committed(&m.mirror, "hub/library/app", &image.layer_digest).await,
        (true, true)
    );
    let resp = m.ok("/v2/hub/library/app/manifests/1.0").await;
    assert_eq!(digest_header(&resp), image.digest);

    // Without `ns`: the local repository, untouched.
    let resp = m.ok("/v2/library/app/manifests/1.0").await;
    assert_eq!(digest_header(&resp), local_digest);
    assert!(resp.headers().get("oci-namespace").is_none());

    // A registry no entry mirrors: 404, not the local image, and nothing
    // asked upstream.
    m.proxy.clear();
    let resp = expect_status(
        m.get("/v2/library/app/manifests/1.0?ns=quay.io").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
    // A name under the prefix is explicit: `ns` is ignored.
    let resp = m.ok("/v2/hub/library/app/manifests/1.0?ns=quay.io").await;
    assert_eq!(digest_header(&resp), image.digest);
    assert!(resp.headers().get("oci-namespace").is_none());
    assert_eq!(m.proxy.requests().len(), 0, "{:#?}", m.proxy.requests());
}

#[tokio::test]
async fn a_request_sent_to_a_host_an_entry_lists_names_the_upstreams_repositories() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let (_proxy, mirror) = mirror_of(&upstream, |entry| {
        entry.hosts = vec!["hub-mirror.test".into()];
    })
    .await;
    let image = push(&upstream, "library/app", "1", 70).await;
    let (_, local_digest) = mirror
        .push_image("library/app", "1", &random_bytes(1000, 71))
        .await;
    // dockerd's `registry-mirrors` request: the plain name, sent to the
    // mirror's own name.
    let via_host = |path: String| {
        mirror
            .client
            .get(mirror.url(&path))
            .header("host", format!("hub-mirror.test:{}", mirror.addr.port()))
            .send()
    };
    let resp = expect_status(
        via_host("/v2/library/app/manifests/1".into())
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(digest_header(&resp), image.digest);
    let resp = expect_status(
        via_host(format!("/v2/library/app/blobs/{}", image.layer_digest))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(resp.bytes().await.unwrap() == image.layer);
    // Sent to any other name, the same path is the local repository.
    let resp = expect_status(
        get(&mirror, "/v2/library/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(digest_header(&resp), local_digest);
}

#[tokio::test]
async fn with_allow_push_pushes_land_beside_mirrored_images_and_a_pushed_tag_shadows_the_upstream()
{
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let (proxy, mirror) = mirror_of(&upstream, |entry| {
        entry.allow_push = true;
        entry.hosts = vec!["hub-mirror.test".into()];
        entry.ns = vec!["upstream.example".into()];
        // Every pull of a mirrored tag asks the upstream.
        entry.tag_ttl = Duration::ZERO;
    })
    .await;
    // A write routed by `?ns=` or by the mirror's host is refused, stores
    // nothing, and goes nowhere (the push goes to the local name).
    let host = format!("hub-mirror.test:{}", mirror.addr.port());
    for (path, host) in [
        ("/v2/library/app/blobs/uploads/?ns=upstream.example", None),
        ("/v2/library/app/blobs/uploads/", Some(host.as_str())),
    ] {
        let mut request = mirror.client.post(mirror.url(path));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let resp = expect_status(request.send().await.unwrap(), StatusCode::FORBIDDEN).await;
        assert_eq!(error_code(resp).await, "DENIED", "{path}");
    }
    assert_eq!(proxy.requests().len(), 0, "{:#?}", proxy.requests());
    let fetched = push(&upstream, "library/app", "1", 80).await;
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(digest_header(&resp), fetched.digest);

    // Pushed here over the mirrored tag, and a tag only pushed here.
    let (_, pushed) = mirror
        .push_image("hub/library/app", "1", &random_bytes(1000, 81))
        .await;
    let (_, own) = mirror
        .push_image("hub/library/app", "own", &random_bytes(1000, 82))
        .await;
    proxy.clear();
    for _ in 0..2 {
        let resp = get(&mirror, "/v2/hub/library/app/manifests/1").await;
        assert_eq!(digest_header(&resp), pushed, "the pushed tag is served");
        let resp = get(&mirror, "/v2/hub/library/app/manifests/own").await;
        assert_eq!(digest_header(&resp), own);
    }
    assert_eq!(proxy.requests().len(), 0, "{:#?}", proxy.requests());
    // The tag list has the upstream's tags and those pushed here.
    push(&upstream, "library/app", "upstream-only", 84).await;
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/app/tags/list").await,
        StatusCode::OK,
    )
    .await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        listed["tags"],
        serde_json::json!(["1", "own", "upstream-only"])
    );

    // A tag the mirror set is still checked upstream on every pull.
    let second = push(&upstream, "library/app", "2", 83).await;
    for _ in 0..2 {
        let resp = get(&mirror, "/v2/hub/library/app/manifests/2").await;
        assert_eq!(digest_header(&resp), second.digest);
    }
    let heads = proxy
        .requests()
        .iter()
        .filter(|r| r.method == reqwest::Method::HEAD && r.path.ends_with("/manifests/2"))
        .count();
    assert_eq!(heads, 2, "{:#?}", proxy.requests());
}

#[tokio::test]
async fn an_image_unused_for_its_entrys_unused_for_is_evicted_and_fetched_again_on_the_next_pull() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let (proxy, mirror) = mirror_of(&upstream, |entry| {
        entry.unused_for = Some(Duration::from_secs(1));
    })
    .await;
    let gone = push(&upstream, "library/gone", "1", 90).await;
    let kept = push(&upstream, "library/kept", "1", 91).await;
    let (_, own) = mirror
        .push_image("local/app", "1", &random_bytes(1000, 92))
        .await;
    for name in ["gone", "kept"] {
        let path = format!("/v2/hub/library/{name}/manifests/1");
        expect_status(get(&mirror, &path).await, StatusCode::OK).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Pulled again: its record is new.
    expect_status(
        get(&mirror, "/v2/hub/library/kept/manifests/1").await,
        StatusCode::OK,
    )
    .await;

    let evicted = lifecycle_evictions(&mirror).await;
    assert_eq!(evicted, [format!("hub/library/gone@{}", gone.digest)]);
    let storage = mirror.storage().await;
    let tag = Tag::parse("1").unwrap();
    let gone_name = RepositoryName::parse("hub/library/gone").unwrap();
    let kept_name = RepositoryName::parse("hub/library/kept").unwrap();
    assert!(storage
        .get(&layout::tag_current_link(&gone_name, &tag))
        .await
        .unwrap()
        .is_none());
    assert!(storage
        .get(&layout::revision_link(
            &gone_name,
            &gone.digest.parse().unwrap()
        ))
        .await
        .unwrap()
        .is_none());
    assert!(storage
        .get(&layout::tag_current_link(&kept_name, &tag))
        .await
        .unwrap()
        .is_some());
    // Pushed content has no pull record and stays.
    let resp = get(&mirror, "/v2/local/app/manifests/1").await;
    assert_eq!(digest_header(&resp), own);

    // The next pull of the evicted image fetches it again.
    proxy.clear();
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/gone/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(digest_header(&resp), gone.digest);
    assert_eq!(
        count(&proxy, |r| r.method == reqwest::Method::GET
            && r.path.ends_with(&format!("/manifests/{}", gone.digest))),
        1
    );
    drop(kept);
}

/// Runs the lifecycle as `berth gc` does over the mirror's configuration
/// (another process's view); the manifests it evicted, as `name@digest`.
async fn lifecycle_evictions(mirror: &TestRegistry) -> Vec<String> {
    let config = berth::Config {
        proxy: mirror.config.proxy.clone(),
        ..mirror.tool_config()
    };
    let collector = berth::build_registry(&config).await.unwrap();
    let report = collector
        .run_lifecycle(&berth::registry::GcOptions::default())
        .await
        .unwrap();
    report
        .mirror
        .evicted
        .iter()
        .map(|(name, digest)| format!("{name}@{digest}"))
        .collect()
}

/// `berth fsck` with the mirror's config counts the blobs of a mirrored
/// manifest that nobody pulled as not fetched yet, not as damage.
#[tokio::test]
async fn fsck_counts_the_unpulled_blobs_of_a_mirrored_manifest_as_not_fetched() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let image = push(&m.upstream, "library/app", "1", 95).await;
    m.ok("/v2/hub/library/app/manifests/1").await;
    let fsck = |config: Option<&std::path::Path>| {
        let mut command = m.mirror.berth_command("fsck");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let output = command.output().expect("berth fsck runs");
        let stdout = String::from_utf8(output.stdout).unwrap();
        (output.status.success(), stdout)
    };
    // Without the mirror's config: the config and layer are missing.
    let (ok, out) = fsck(None);
    assert!(!ok, "{out}");
    assert!(out.contains(&image.layer_digest), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        "[[proxy]]\nprefix = \"hub\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let (ok, out) = fsck(Some(&config));
    assert!(ok, "{out}");
    assert!(
        out.contains("; 2 references of mirrored images not fetched yet"),
        "{out}"
    );
    // Once pulled (and committed), nothing is left unfetched.
    for digest in [&image.layer_digest, &image.config_digest] {
        let path = format!("/v2/hub/library/app/blobs/{digest}");
        m.ok(&path).await.bytes().await.unwrap();
        let stored = committed(&m.mirror, "hub/library/app", digest).await;
        assert_eq!(stored, (true, true));
    }
    assert_eq!(leftovers(&m, "hub/library/app").await, Vec::<String>::new());
    let (ok, out) = fsck(Some(&config));
    assert!(ok, "{out}");
    assert!(!out.contains("not fetched"), "{out}");
}

/// On S3 the mirror runs as two replicas over one bucket (on the filesystem
/// as one server, which is then both).
#[tokio::test]
async fn what_one_replica_fetched_another_serves_without_fetching_it_again() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let proxy = FaultProxy::start(&format!("http://{}", upstream.addr)).await;
    let endpoint = proxy.endpoint();
    let mirror = TestRegistry::start_with(|config| {
        config.proxy = vec![ProxyConfig {
            tag_ttl: Duration::from_secs(3600),
            ..ProxyConfig::new("hub", &endpoint)
        }];
    })
    .await;
    let image = push(&upstream, "library/app", "1", 95).await;
    let via = |server: usize, path: String| {
        let url = format!("http://{}{path}", mirror.servers[server].addr);
        mirror.client.get(url).send()
    };
    let blobs = [&image.layer_digest, &image.config_digest];
    let first = 0;
    let resp = via(first, "/v2/hub/library/app/manifests/1".into())
        .await
        .unwrap();
    assert_eq!(
        digest_header(&expect_status(resp, StatusCode::OK).await),
        image.digest
    );
    for digest in blobs {
        let resp = via(first, format!("/v2/hub/library/app/blobs/{digest}"))
            .await
            .unwrap();
        expect_status(resp, StatusCode::OK)
            .await
            .bytes()
            .await
            .unwrap();
    }
    // Committed in the shared store (just after the clients had the bytes).
    let storage = mirror.storage().await;
    for digest in blobs {
        let key = layout::blob_data(&digest.parse().unwrap());
        for _ in 0..100 {
            if storage.get(&key).await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    proxy.clear();
    let other = mirror.servers.len() - 1;
    let resp = via(other, "/v2/hub/library/app/manifests/1".into())
        .await
        .unwrap();
    assert_eq!(
        digest_header(&expect_status(resp, StatusCode::OK).await),
        image.digest
    );
    let resp = via(
        other,
        format!("/v2/hub/library/app/blobs/{}", image.layer_digest),
    )
    .await
    .unwrap();
    assert!(
        expect_status(resp, StatusCode::OK)
            .await
            .bytes()
            .await
            .unwrap()
            == image.layer
    );
    // At most the tag's check (a HEAD): no GET of a manifest or blob.
    let gets: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == reqwest::Method::GET)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(gets, Vec::<String>::new());
}

#[tokio::test]
async fn beyond_max_bytes_the_least_recently_fetched_images_are_evicted() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    // Room for two of the three images (a 300,000-byte layer each).
    let (proxy, mirror) = mirror_of(&upstream, |entry| entry.max_bytes = Some(700_000)).await;
    let mut images = Vec::new();
    for (i, name) in ["first", "second", "third"].into_iter().enumerate() {
        let image = push(&upstream, &format!("library/{name}"), "1", 100 + i as u64).await;
        let path = format!("/v2/hub/library/{name}/manifests/1");
        expect_status(get(&mirror, &path).await, StatusCode::OK).await;
        for digest in [&image.layer_digest, &image.config_digest] {
            let path = format!("/v2/hub/library/{name}/blobs/{digest}");
            let resp = expect_status(get(&mirror, &path).await, StatusCode::OK).await;
            resp.bytes().await.unwrap();
        }
        let key = format!("hub/library/{name}");
        assert_eq!(
            committed(&mirror, &key, &image.layer_digest).await,
            (true, true)
        );
        images.push(image);
        // Pull records are in milliseconds: one image clearly after the other.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let evicted = lifecycle_evictions(&mirror).await;
    assert_eq!(evicted, [format!("hub/library/first@{}", images[0].digest)]);
    let resp = get(&mirror, "/v2/hub/library/second/manifests/1").await;
    assert_eq!(digest_header(&resp), images[1].digest);
    // The images kept are still served from here.
    let before = proxy.requests().len();
    let resp = get(&mirror, "/v2/hub/library/third/manifests/1").await;
    assert_eq!(digest_header(&resp), images[2].digest);
    assert_eq!(proxy.requests().len(), before);
}

#[tokio::test]
async fn allow_and_deny_lists_pick_the_upstream_names_that_may_be_pulled_through() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let (proxy, mirror) = mirror_of(&upstream, |entry| {
        entry.allow = vec![RepositoryPattern::parse("library/*").unwrap()];
        entry.deny = vec![RepositoryPattern::parse("library/evil*").unwrap()];
        entry.ns = vec!["upstream.example".into()];
    })
    .await;
    let good = push(&upstream, "library/app", "1", 60).await;
    push(&upstream, "library/evil-app", "1", 61).await;
    push(&upstream, "team/app", "1", 62).await;
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(digest_header(&resp), good.digest);
    proxy.clear();
    for path in [
        "/v2/hub/library/evil-app/manifests/1",
        "/v2/hub/team/app/manifests/1",
        "/v2/library/evil-app/manifests/1?ns=upstream.example",
        &format!("/v2/hub/team/app/blobs/{}", good.layer_digest),
    ] {
        let resp = expect_status(get(&mirror, path).await, StatusCode::FORBIDDEN).await;
        assert_eq!(error_code(resp).await, "DENIED", "{path}");
    }
    assert_eq!(proxy.requests().len(), 0, "{:#?}", proxy.requests());
}

#[tokio::test]
async fn a_blob_head_is_answered_from_the_upstream_without_fetching_it() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let layer = random_bytes(100_000, 5);
    let digest = m.upstream.push_blob("library/app", &layer).await;
    let path = format!("/v2/hub/library/app/blobs/{digest}");
    let resp = expect_status(m.head(&path).await, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), layer.len().to_string());
    assert_eq!(digest_header(&resp), digest);
    assert_eq!(m.asked("GET", &digest), 0);
    let storage = m.mirror.storage().await;
    let key = layout::blob_data(&digest.parse().unwrap());
    assert!(
        storage.get(&key).await.unwrap().is_none(),
        "nothing fetched"
    );

    // Missing upstream too: 404, as for any unknown blob.
    let missing = format!("/v2/hub/library/app/blobs/{}", sha256_digest(b"nowhere"));
    let resp = expect_status(m.head(&missing).await, StatusCode::NOT_FOUND).await;
    drop(resp);
    let resp = expect_status(m.get(&missing).await, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = expect_status(
        m.get("/v2/hub/library/app/manifests/nope").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn pushes_into_a_mirrored_prefix_are_refused_and_local_names_never_go_upstream() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let client = &m.mirror.client;
    let resp = client
        .post(m.mirror.url("/v2/hub/library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    let manifest = image_manifest(&sha256_digest(b"c"), 1, &[]);
    let resp = m
        .mirror
        .put_manifest("hub/library/app", "1", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");

    // A local repository, even one named like an upstream's, is local.
    let layer = random_bytes(1000, 6);
    m.mirror.push_image("library/app", "1", &layer).await;
    let resp = m.ok("/v2/library/app/manifests/1").await;
    drop(resp);
    // `hubx` is not under `hub`.
    m.mirror.push_image("hubx/app", "1", &layer).await;
    m.ok("/v2/hubx/app/manifests/1").await;
    assert!(m.proxy.requests().is_empty(), "{:#?}", m.proxy.requests());
}

#[tokio::test]
async fn an_upstream_that_is_down_leaves_cached_tags_served_with_a_warning_and_misses_failing_fast()
{
    let m = mirrored(Duration::ZERO).await;
    let image = push(&m.upstream, "library/app", "1", 7).await;
    let other = m
        .upstream
        .push_blob("library/app", &random_bytes(5000, 8))
        .await;
    m.ok("/v2/hub/library/app/manifests/1").await;

    m.proxy.set_mode(Mode::Cut);
    // The tag is due for a check (TTL 0), the upstream cannot answer: the
    // cached image is served, with a Warning saying so.
    let resp = m.ok("/v2/hub/library/app/manifests/1").await;
    assert_eq!(digest_header(&resp), image.digest);
    let warning = header_str(&resp, "warning");
    assert!(warning.starts_with("299 - \""), "{warning}");
    assert!(warning.contains("hub/library/app:1 as cached"), "{warning}");
    // A miss while the breaker is open: 503 UNAVAILABLE at once, with
    // Retry-After, and nothing sent upstream.
    let asked = m.proxy.requests().len();
    let started = std::time::Instant::now();
    let resp = m.get(&format!("/v2/hub/library/app/blobs/{other}")).await;
    let resp = expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let retry_after: u64 = header_str(&resp, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
    let resp = m.get("/v2/hub/library/other/manifests/1").await;
    expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        m.proxy.requests().len(),
        asked,
        "the breaker holds requests back"
    );

    // Back up: once the pause is over, the miss is fetched (a failure is
    // not remembered past it).
    m.proxy.set_mode(Mode::Forward);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = m.get(&format!("/v2/hub/library/app/blobs/{other}")).await;
        if resp.status() == StatusCode::OK {
            break;
        }
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = m.ok("/v2/hub/library/app/manifests/1").await;
    assert!(
        resp.headers().get("warning").is_none(),
        "checked again: no warning"
    );
}

#[tokio::test]
async fn a_mirrored_tag_list_is_the_upstreams_paged_here_and_the_cached_tags_while_it_is_down() {
    let m = mirrored(Duration::ZERO).await;
    for (tag, seed) in [("1", 90), ("2", 91), ("3", 92)] {
        push(&m.upstream, "library/app", tag, seed).await;
    }
    // Tags the mirror never fetched are listed, under the client's name.
    let resp = m.ok("/v2/hub/library/app/tags/list").await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["name"], "hub/library/app");
    assert_eq!(listed["tags"], serde_json::json!(["1", "2", "3"]));
    assert_eq!(m.asked("GET", "/v2/library/app/tags/list"), 1);
    // Paged here, with `Link`s under the client's name; by `?ns=` too.
    let resp = m.ok("/v2/hub/library/app/tags/list?n=2").await;
    assert_eq!(
        header_str(&resp, "link"),
        "</v2/hub/library/app/tags/list?n=2&last=2>; rel=\"next\""
    );
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["1", "2"]));
    let resp = m.ok("/v2/hub/library/app/tags/list?n=2&last=2").await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["3"]));
    let resp = m.ok("/v2/library/app/tags/list?ns=upstream.example").await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["name"], "library/app");
    assert_eq!(listed["tags"], serde_json::json!(["1", "2", "3"]));
    // A repository the upstream does not have.
    let resp = m.get("/v2/hub/library/nothing/tags/list").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");

    // The upstream down: the tags cached here, with a Warning; a repository
    // with none cached is the upstream's failure.
    m.ok("/v2/hub/library/app/manifests/2").await;
    m.proxy.set_mode(Mode::Cut);
    let resp = m.ok("/v2/hub/library/app/tags/list").await;
    let warning = header_str(&resp, "warning");
    assert!(
        warning.contains("listing the tags cached here"),
        "{warning}"
    );
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["2"]));
    let resp = m.get("/v2/hub/library/other/tags/list").await;
    let resp = expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
}

/// A hostile upstream's tag list: not JSON, pages without end, a flood of
/// bytes or of tags, names that are not tags. Each is a clear 503 naming the upstream (or,
/// for the names, a list without them); the mirror holds nothing of it,
/// answers at once, and keeps mirroring: an unusable answer is not an
/// outage, so the upstream's breaker stays shut.
#[tokio::test]
async fn a_hostile_upstream_tag_list_is_refused_clearly_and_bounded() {
    let m = mirrored(Duration::ZERO).await;
    push(&m.upstream, "library/app", "1", 93).await;
    let refused = |mode: Mode, says: &'static str| {
        let m = &m;
        async move {
            m.proxy.set_mode(mode);
            m.proxy.clear();
            let started = std::time::Instant::now();
            let resp = m.get("/v2/hub/library/app/tags/list").await;
            let resp = expect_status_of(resp, StatusCode::SERVICE_UNAVAILABLE, says).await;
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
            let detail = body["errors"][0]["detail"].to_string();
            assert!(
                detail.contains(&m.proxy.endpoint()) && detail.contains(says),
                "{mode:?}: {detail}"
            );
            assert!(started.elapsed() < Duration::from_secs(20), "{mode:?}");
        }
    };
    refused(Mode::GarbageTagList, "a tag list that is not one").await;
    refused(Mode::OversizedTagList, "over the 4194304-byte limit").await;
    refused(Mode::TooManyTags, "a tag list of over 100000 tags").await;
    refused(Mode::EndlessTagList, "a tag list of over 100 pages").await;
    assert_eq!(
        m.asked("GET", "/v2/library/app/tags/list"),
        100,
        "the endless list is read for 100 pages, then given up"
    );

    // Names no tag can have are left out; the tags are listed.
    m.proxy.set_mode(Mode::NotTagNames);
    let resp = m.ok("/v2/hub/library/app/tags/list").await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["1", "ok_2"]));
    assert!(crate::fault_proxy::NOT_TAG_NAMES.contains("../escape"));

    // None of it opened the breaker: the image is pulled through at once.
    m.proxy.set_mode(Mode::Forward);
    m.ok("/v2/hub/library/app/manifests/1").await;
    let resp = m.ok("/v2/hub/library/app/tags/list").await;
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["1"]));

    // With a tag cached here, a garbage list leaves the cached tags, with a
    // Warning that says why.
    m.proxy.set_mode(Mode::GarbageTagList);
    let resp = m.ok("/v2/hub/library/app/tags/list").await;
    let warning = header_str(&resp, "warning");
    assert!(warning.contains("a tag list that is not one"), "{warning}");
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["1"]));
}

#[tokio::test]
async fn a_cached_tag_is_served_after_revalidate_timeout_when_the_upstream_hangs() {
    let m = mirrored(Duration::ZERO).await;
    push(&m.upstream, "library/app", "1", 14).await;
    m.ok("/v2/hub/library/app/manifests/1").await;
    m.proxy.set_mode(Mode::BlackHole);
    let started = std::time::Instant::now();
    let resp = m.ok("/v2/hub/library/app/manifests/1").await;
    let waited = started.elapsed();
    // revalidate_timeout is 300 ms here; the upstream's own bound is 15 s.
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(header_str(&resp, "warning").contains("did not answer within 300 ms"));
}

#[tokio::test]
async fn an_upstream_429_is_passed_on_with_its_retry_after_and_holds_requests_back() {
    let m = mirrored(Duration::from_secs(3600)).await;
    let blob = m
        .upstream
        .push_blob("library/app", &random_bytes(5000, 15))
        .await;
    m.proxy.set_mode(Mode::TooManyRequests);
    let resp = m.get(&format!("/v2/hub/library/app/blobs/{blob}")).await;
    let resp = expect_status(resp, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(header_str(&resp, "retry-after"), "7");
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    // For the next 7 s the upstream is not asked: the same answer at once.
    let asked = m.proxy.requests().len();
    let resp = m.get("/v2/hub/library/app/manifests/2").await;
    let resp = expect_status(resp, StatusCode::TOO_MANY_REQUESTS).await;
    let retry_after: u64 = header_str(&resp, "retry-after").parse().unwrap();
    assert!((1..=7).contains(&retry_after), "{retry_after}");
    assert_eq!(m.proxy.requests().len(), asked);
}

// Upstreams that need a login.

/// An upstream with access control: `alice` (an admin) pushes, `ci` may
/// pull `library/*`, anonymous callers nothing. `extra` goes into its
/// `[auth]` table (`challenge = "basic"`).
async fn upstream_with_auth(extra: &str) -> TestRegistry {
    let table = format!(
        r#"
        admins = ["alice"]
        {extra}
        [[rules]]
        repositories = ["library/*"]
        users = {{ ci = ["pull"] }}
        "#
    );
    let mut upstream =
        TestRegistry::start_one_with_auth(&[("alice", "alice-pw"), ("ci", "ci-pw")], &table).await;
    upstream.client = client_with_authorization(&basic_auth("alice", "alice-pw"));
    upstream
}

/// A mirror of `upstream` (through a logging proxy) that logs in as
/// `adjust` sets.
async fn mirror_of(
    upstream: &TestRegistry,
    adjust: impl FnOnce(&mut ProxyConfig),
) -> (FaultProxy, TestRegistry) {
    let proxy = FaultProxy::start(&format!("http://{}", upstream.addr)).await;
    let mut entry = ProxyConfig {
        tag_ttl: Duration::from_secs(3600),
        ..ProxyConfig::new("hub", &proxy.endpoint())
    };
    adjust(&mut entry);
    let mirror = TestRegistry::start_one_with(|config| {
        config.proxy = vec![entry];
        // What another process (`berth gc`) changes shows at once.
        config.cache_ttl_ms = 0;
    })
    .await;
    (proxy, mirror)
}

fn count(proxy: &FaultProxy, keep: impl Fn(&crate::fault_proxy::Logged) -> bool) -> usize {
    proxy.requests().iter().filter(|r| keep(r)).count()
}

#[tokio::test]
async fn a_mirror_logs_in_through_the_token_flow_once_per_scope_and_token() {
    let upstream = upstream_with_auth("").await;
    let image = push(&upstream, "library/app", "1", 10).await;
    let other = push(&upstream, "library/other", "1", 11).await;
    let (proxy, mirror) = mirror_of(&upstream, |e| {
        e.username = Some("ci".into());
        e.password = Some("ci-pw".into());
    })
    .await;
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    let layer = format!("/v2/hub/library/app/blobs/{}", image.layer_digest);
    let resp = expect_status(get(&mirror, &layer).await, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap(), image.layer);
    // One 401 (the first request), one token for the repository's scope,
    // used for every request after it.
    let tokens = |p: &FaultProxy| count(p, |r| r.path.starts_with("/auth/token"));
    assert_eq!(tokens(&proxy), 1, "{:#?}", proxy.requests());
    assert_eq!(
        count(&proxy, |r| r.status == Some(401)),
        1,
        "{:#?}",
        proxy.requests()
    );

    // Another repository: its own token, fetched before its first request
    // (the token endpoint is known now): no 401.
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/other/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resp.bytes().await.unwrap(), other.manifest);
    assert_eq!(tokens(&proxy), 2);
    assert_eq!(count(&proxy, |r| r.status == Some(401)), 1);
    // The token asked for names the repository and pull only.
    let asked = proxy
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/auth/token"))
        .map(|r| r.query.clone())
        .collect::<Vec<_>>();
    assert!(
        asked[1].contains("scope=repository%3Alibrary%2Fother%3Apull"),
        "{asked:?}"
    );
}

#[tokio::test]
async fn an_upstream_refusing_the_credentials_is_a_clear_503_and_a_rotated_password_file_is_read_again(
) {
    let upstream = upstream_with_auth("").await;
    push(&upstream, "library/app", "1", 12).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("upstream-password");
    std::fs::write(&password_file, "wrong\n").unwrap();
    let file = password_file.clone();
    let (_proxy, mirror) = mirror_of(&upstream, |e| {
        e.username = Some("ci".into());
        e.password_file = Some(file);
    })
    .await;
    let path = "/v2/hub/library/app/manifests/1";
    let resp = get(&mirror, path).await;
    let resp = expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let detail = body["errors"][0]["detail"].to_string();
    assert!(
        detail.contains("refused the configured credentials"),
        "{detail}"
    );
    assert!(
        !detail.contains("wrong"),
        "no password in an answer: {detail}"
    );

    // The password is rotated in its file: the next pull logs in with it.
    std::fs::write(&password_file, "ci-pw\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&password_file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let resp = get(&mirror, path).await;
    expect_status(resp, StatusCode::OK).await;

    // Without credentials: the same 503, saying none are configured.
    let (_proxy, anonymous) = mirror_of(&upstream, |_| {}).await;
    let resp = get(&anonymous, path).await;
    let resp = expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["errors"][0]["detail"].to_string();
    assert!(detail.contains("needs credentials"), "{detail}");
}

/// A hostile token endpoint: a token with an endless lifetime (which
/// overflowed the clock and crashed the request), a 5 MiB answer. Each is
/// a clear 503; the mirror logs in again once the endpoint behaves.
#[tokio::test]
async fn a_hostile_token_endpoint_is_a_clear_503_and_the_next_login_works() {
    let upstream = upstream_with_auth("").await;
    let image = push(&upstream, "library/app", "1", 12).await;
    let (proxy, mirror) = mirror_of(&upstream, |e| {
        e.username = Some("ci".into());
        e.password = Some("ci-pw".into());
    })
    .await;
    for (mode, says) in [
        (Mode::EndlessTokenLifetime, "refused"),
        (Mode::OversizedToken, "over the"),
    ] {
        proxy.set_mode(mode);
        let resp = get(&mirror, "/v2/hub/library/app/manifests/1").await;
        let resp = expect_status_of(resp, StatusCode::SERVICE_UNAVAILABLE, says).await;
        let body: serde_json::Value = resp.json().await.unwrap();
        let detail = body["errors"][0]["detail"].to_string();
        assert!(detail.contains(says), "{mode:?}: {detail}");
    }
    proxy.set_mode(Mode::Forward);
    let resp = expect_status(
        get(&mirror, "/v2/hub/library/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
}

#[tokio::test]
async fn a_mirror_logs_in_with_basic_where_the_upstream_asks_for_it() {
    let upstream = upstream_with_auth(r#"challenge = "basic""#).await;
    let image = push(&upstream, "library/app", "1", 13).await;
    let (proxy, mirror) = mirror_of(&upstream, |e| {
        e.username = Some("ci".into());
        e.password = Some("ci-pw".into());
    })
    .await;
    for path in [
        "/v2/hub/library/app/manifests/1".to_owned(),
        format!("/v2/hub/library/app/blobs/{}", image.layer_digest),
        format!("/v2/hub/library/app/blobs/{}", image.config_digest),
    ] {
        let resp = get(&mirror, &path).await;
        expect_status(resp, StatusCode::OK).await;
    }
    // Challenged once; Basic with every request from then on.
    assert_eq!(
        count(&proxy, |r| r.status == Some(401)),
        1,
        "{:#?}",
        proxy.requests()
    );
    assert_eq!(count(&proxy, |r| r.path.starts_with("/auth/token")), 0);
}

#[tokio::test]
async fn a_mirror_logs_in_with_the_credentials_of_a_docker_config_json() {
    let upstream = upstream_with_auth("").await;
    let image = push(&upstream, "library/app", "1", 16).await;
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("config.json");
    let (proxy, mirror) = mirror_of(&upstream, |e| {
        // The proxy's address is the upstream's host as the mirror knows it.
        let auth = base64_of("ci:ci-pw");
        let text = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, e.upstream);
        std::fs::write(&docker_config, text).unwrap();
        e.docker_config = Some(docker_config.clone());
    })
    .await;
    let resp = get(&mirror, "/v2/hub/library/app/manifests/1").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(count(&proxy, |r| r.path.starts_with("/auth/token")), 1);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn a_caller_access_control_refuses_causes_no_upstream_request() {
    let upstream = TestRegistry::start_one_with(|_| {}).await;
    let image = push(&upstream, "library/app", "1", 17).await;
    let proxy = FaultProxy::start(&format!("http://{}", upstream.addr)).await;
    let endpoint = proxy.endpoint();
    let mirror = TestRegistry::start_with_auth_and(
        |config| {
            config.proxy = vec![ProxyConfig {
                tag_ttl: Duration::ZERO,
                ns: vec!["upstream.example".into()],
                hosts: vec!["hub-mirror.test".into()],
                ..ProxyConfig::new("hub", &endpoint)
            }];
        },
        &[("nodes", "nodes-pw")],
        r#"
        [[rules]]
        repositories = ["hub/library/*"]
        users = { nodes = ["pull"] }
        "#,
    )
    .await;
    // Anonymous, and a user with no right on the name: refused, and the
    // upstream never hears of it.
    let paths = [
        "/v2/hub/library/app/manifests/1".to_owned(),
        format!("/v2/hub/library/app/blobs/{}", image.layer_digest),
        "/v2/hub/other/app/manifests/1".to_owned(),
    ];
    for path in &paths {
        let resp = get(&mirror, path).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The same names reached by `?ns=` and by the mirror's host: the local
    // names are what access control checks.
    let resp = get(&mirror, "/v2/library/app/manifests/1?ns=upstream.example").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = mirror
        .client
        .get(mirror.url("/v2/library/app/manifests/1"))
        .header("host", "hub-mirror.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Hostile `ns` values name no mirrored registry: 404, never upstream.
    for ns in ["..%2F..", "%0d%0aX-Injected:%201", &"a".repeat(5000)] {
        let resp = get(&mirror, &format!("/v2/library/app/manifests/1?ns={ns}")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{ns}");
        assert!(resp.headers().get("x-injected").is_none());
    }
    let nodes = client_with_authorization(&basic_auth("nodes", "nodes-pw"));
    let resp = nodes.get(mirror.url(&paths[2])).send().await.unwrap();
    assert!(resp.status() == StatusCode::FORBIDDEN || resp.status() == StatusCode::UNAUTHORIZED);
    assert!(proxy.requests().is_empty(), "{:#?}", proxy.requests());
    // The user who may pull gets the image through the mirror.
    let resp = nodes.get(mirror.url(&paths[0])).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
}
