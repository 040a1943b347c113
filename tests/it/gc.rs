//! Garbage collection, upload expiry and `berth gc`, against a real server
//! on a real socket and its store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lifecycle_support::{
    age, aged_grace, collector, get_bytes, stored_blobs, uncached, Image,
};
use crate::support::backend::on_s3;
use crate::support::{
    error_code, expect_status, expect_status_of, sha256_digest, store, with_query, TestRegistry,
    OCI_INDEX, OCI_MANIFEST,
};
use berth::registry::lifecycle::UntaggedManifests;
use berth::registry::{GcOptions, GcReport, LifecycleConfig};
use reqwest::StatusCode;

const TWO_HOURS: Duration = Duration::from_secs(2 * 3600);

/// Untagged manifests go, and no history keeps an image.
fn deleting() -> LifecycleConfig {
    LifecycleConfig {
        untagged_manifests: UntaggedManifests::Delete,
        history_keep: 0,
        ..LifecycleConfig::default()
    }
}

async fn collect(registry: &TestRegistry, lifecycle: LifecycleConfig) -> GcReport {
    collector(registry, lifecycle)
        .await
        .collect_garbage(&GcOptions::default())
        .await
        .unwrap()
}

async fn status(registry: &TestRegistry, path: &str) -> StatusCode {
    get_bytes(registry, path).await.0
}

/// Kept image, an image whose tag was deleted, and a blob nothing names.
async fn kept_dropped_and_stray(registry: &TestRegistry) -> (Image, Image, String) {
    let kept = Image::new("kept", &[b"shared layer", b"kept layer"]);
    let dropped = Image::new("dropped", &[b"shared layer", b"dropped layer"]);
    kept.push(registry, "app", "stable").await;
    dropped.push(registry, "app", "old").await;
    let stray = registry.push_blob("app", b"never referenced").await;
    expect_status(
        registry.delete_manifest("app", "old").await,
        StatusCode::ACCEPTED,
    )
    .await;
    (kept, dropped, stray)
}

#[tokio::test]
async fn unreferenced_blobs_and_manifests_are_collected_and_referenced_ones_kept() {
    let registry = uncached().await;
    let (kept, dropped, stray) = kept_dropped_and_stray(&registry).await;
    age(&registry, TWO_HOURS).await;

    let report = collect(&registry, deleting()).await;
    assert_eq!(report.manifests_removed, 1);
    // The dropped manifest, its config, its own layer, the stray blob.
    assert_eq!(report.blobs_removed, 4);
    assert_eq!(report.manifest_blobs_removed, 1);
    let bytes = dropped.manifest.len()
        + dropped.blobs[0].1.len()
        + b"dropped layer".len()
        + b"never referenced".len();
    assert_eq!(report.bytes_removed, bytes as u64);
    assert_eq!(report.layer_links_removed, 3);
    assert_eq!(report.spared, 0);

    kept.assert_intact(&registry, "app").await;
    let expected: BTreeSet<String> = kept.digests().into_iter().collect();
    assert_eq!(stored_blobs(&registry).await, expected);
    let manifest = format!("/v2/app/manifests/{}", dropped.digest);
    assert_eq!(status(&registry, &manifest).await, StatusCode::NOT_FOUND);
    for digest in [&dropped.blobs[0].0, &stray] {
        let blob = format!("/v2/app/blobs/{digest}");
        assert_eq!(status(&registry, &blob).await, StatusCode::NOT_FOUND);
    }

    let again = collect(&registry, deleting()).await;
    assert_eq!((again.blobs_removed, again.manifests_removed), (0, 0));
}

/// A kept manifest whose stored bytes are damaged cannot be read: the run
/// reports it and keeps everything its repository links (what it names is
/// unknown), and the run itself goes on. On S3 the read that checks the
/// digest fails the stream; that is this manifest's problem, not the run's.
#[tokio::test]
async fn a_damaged_kept_manifest_is_reported_and_its_repository_kept_whole() {
    let registry = uncached().await;
    let image = Image::new("kept", &[b"layer one", b"layer two"]);
    image.push(&registry, "app", "stable").await;
    let stray = registry.push_blob("other", b"never referenced").await;
    let storage = registry.storage().await;
    store::damage(storage.as_ref(), &store::blob_key(&image.digest), |m| {
        m[1] ^= 0x01
    })
    .await;
    let registry = registry.restart().await;
    age(&registry, TWO_HOURS).await;

    let report = collect(&registry, deleting()).await;
    let expected = format!("app@{}: unreadable manifest", image.digest);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with(&expected) && p.ends_with("repository not swept")),
        "{:#?}",
        report.problems
    );
    // Only the blob nothing names went.
    assert_eq!(report.blobs_removed, 1);
    let kept: BTreeSet<String> = image.digests().into_iter().collect();
    assert_eq!(stored_blobs(&registry).await, kept);
    assert!(!stored_blobs(&registry).await.contains(&stray));
}

/// Nested repositories whose names sort on both sides of a repository's
/// own folders (`team/app/0tools` before `team/app/_layers`, `team/app/tools`
/// after, `team/app-x` before `team/app/`), and more unreferenced blobs than
/// a removal batch reads by listing rather than one by one: exactly those go
/// and every image stays whole. On S3 this is the tree-listing walk, scan,
/// sweep and removal; on the filesystem the directory walk.
#[tokio::test]
async fn nested_repositories_and_many_unreferenced_blobs_are_collected_exactly() {
    let registry = uncached().await;
    let names = [
        "team/app",
        "team/app/0tools",
        "team/app/tools",
        "team/app-x",
    ];
    let layers: Vec<Vec<u8>> = (0..names.len())
        .map(|i| format!("nested layer {i}").into_bytes())
        .collect();
    let mut images = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let image = Image::new(&format!("nested {i}"), &[&layers[i]]);
        image.push(&registry, name, "latest").await;
        images.push(image);
    }
    let orphans = 150;
    for i in 0..orphans {
        let content = format!("orphan {i}");
        registry
            .push_blob(names[i % names.len()], content.as_bytes())
            .await;
    }
    age(&registry, TWO_HOURS).await;

    let report = collect(&registry, deleting()).await;
    assert_eq!(report.repositories, names.len(), "{report:?}");
    assert_eq!(report.blobs_removed, orphans, "{report:?}");
    assert_eq!(report.layer_links_removed, orphans, "{report:?}");
    assert_eq!((report.manifests_removed, report.spared), (0, 0));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for (image, name) in images.iter().zip(names) {
        image.assert_intact(&registry, name).await;
    }
    let expected: BTreeSet<String> = images.iter().flat_map(Image::digests).collect();
    assert_eq!(stored_blobs(&registry).await, expected);
}

#[tokio::test]
async fn untagged_manifests_stay_with_keep_and_go_with_delete() {
    let registry = uncached().await;
    let tagged = Image::new("tagged", &[b"layer t"]);
    tagged.push(&registry, "app", "v1").await;
    let by_digest = Image::new("by-digest", &[b"layer d"]);
    by_digest.push(&registry, "app", &by_digest.digest).await;
    age(&registry, TWO_HOURS).await;

    let keep = collect(&registry, LifecycleConfig::default()).await;
    assert_eq!((keep.manifests_removed, keep.blobs_removed), (0, 0));
    by_digest.assert_intact(&registry, "app").await;

    let delete = collect(&registry, deleting()).await;
    assert_eq!((delete.manifests_removed, delete.blobs_removed), (1, 3));
    tagged.assert_intact(&registry, "app").await;
    let manifest = format!("/v2/app/manifests/{}", by_digest.digest);
    assert_eq!(status(&registry, &manifest).await, StatusCode::NOT_FOUND);
}

fn index_of(children: &[&Image]) -> Image {
    let manifests: Vec<_> = children
        .iter()
        .map(|c| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": c.digest, "size": c.manifest.len(),
                "platform": {"architecture": "amd64", "os": "linux"}
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
    }))
    .unwrap();
    Image {
        digest: sha256_digest(&manifest),
        manifest,
        blobs: Vec::new(),
    }
}

/// An artifact (an SBOM, a signature) whose subject is `subject`.
fn artifact_of(kind: &str, subject: &Image, subject_media_type: &str) -> Image {
    let empty = b"{}".to_vec();
    let content = format!("{kind} of {}", subject.digest).into_bytes();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": format!("application/vnd.example.{kind}"),
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256_digest(&empty), "size": 2},
        "layers": [{"mediaType": "application/octet-stream",
                    "digest": sha256_digest(&content), "size": content.len()}],
        "subject": {"mediaType": subject_media_type, "digest": subject.digest,
                    "size": subject.manifest.len()},
    }))
    .unwrap();
    Image {
        digest: sha256_digest(&manifest),
        manifest,
        blobs: vec![
            (sha256_digest(&empty), empty),
            (sha256_digest(&content), content),
        ],
    }
}

#[tokio::test]
async fn index_children_and_referrers_are_kept_with_their_index() {
    let registry = uncached().await;
    let amd = Image::new("amd64", &[b"amd layer"]);
    let arm = Image::new("arm64", &[b"arm layer"]);
    amd.push(&registry, "app", &amd.digest).await;
    arm.push(&registry, "app", &arm.digest).await;
    let index = index_of(&[&amd, &arm]);
    let resp = registry
        .put_manifest("app", "multi", OCI_INDEX, &index.manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let sbom = artifact_of("sbom", &index, OCI_INDEX);
    sbom.push(&registry, "app", &sbom.digest).await;
    let signature = artifact_of("signature", &sbom, OCI_MANIFEST);
    signature.push(&registry, "app", &signature.digest).await;
    let unrelated = Image::new("unrelated", &[b"unrelated layer"]);
    unrelated.push(&registry, "app", &unrelated.digest).await;
    age(&registry, TWO_HOURS).await;

    let report = collect(&registry, deleting()).await;
    assert_eq!(report.manifests_removed, 1, "only the unrelated manifest");
    assert_eq!(report.referrer_links_removed, 0);
    for image in [&amd, &arm, &index, &sbom, &signature] {
        image.assert_intact(&registry, "app").await;
    }
    let (_, referrers) = get_bytes(&registry, &format!("/v2/app/referrers/{}", index.digest)).await;
    let referrers: serde_json::Value = serde_json::from_slice(&referrers).unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], sbom.digest.as_str());

    expect_status(
        registry.delete_manifest("app", "multi").await,
        StatusCode::ACCEPTED,
    )
    .await;
    age(&registry, TWO_HOURS).await;
    let report = collect(&registry, deleting()).await;
    assert_eq!(report.manifests_removed, 5);
    assert_eq!(report.referrer_links_removed, 2);
    assert!(stored_blobs(&registry).await.is_empty());
    let (_, referrers) = get_bytes(&registry, &format!("/v2/app/referrers/{}", index.digest)).await;
    let referrers: serde_json::Value = serde_json::from_slice(&referrers).unwrap();
    assert_eq!(referrers["manifests"], serde_json::json!([]));
}

#[tokio::test]
async fn history_keep_keeps_rollback_targets_even_after_the_tag_is_deleted() {
    let registry = uncached().await;
    let versions: Vec<Image> = (1..=3)
        .map(|v| Image::new(&format!("v{v}"), &[format!("layer of v{v}").as_bytes()]))
        .collect();
    for image in &versions {
        image.push(&registry, "app", "live").await;
    }
    age(&registry, TWO_HOURS).await;
    let keep_two = LifecycleConfig {
        history_keep: 2,
        ..deleting()
    };
    let gc = collector(&registry, keep_two.clone()).await;
    let report = gc.collect_garbage(&GcOptions::default()).await.unwrap();
    assert_eq!(report.manifests_removed, 1);
    assert_eq!(report.history_entries_removed, 1);
    versions[1].assert_intact(&registry, "app").await;
    versions[2].assert_intact(&registry, "app").await;
    let v1 = format!("/v2/app/manifests/{}", versions[0].digest);
    assert_eq!(status(&registry, &v1).await, StatusCode::NOT_FOUND);
    let name = berth::oci::RepositoryName::parse("app").unwrap();
    let tag = berth::oci::Tag::parse("live").unwrap();
    let history: Vec<_> = gc
        .tag_history(&name, &tag)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.digest.unwrap().to_string())
        .collect();
    assert_eq!(
        history,
        [versions[2].digest.clone(), versions[1].digest.clone()]
    );

    // A deleted tag's history still keeps its rollback targets…
    expect_status(
        registry.delete_manifest("app", "live").await,
        StatusCode::ACCEPTED,
    )
    .await;
    age(&registry, TWO_HOURS).await;
    let report = collect(&registry, keep_two).await;
    assert_eq!(report.manifests_removed, 0);
    versions[1].assert_intact(&registry, "app").await;
    versions[2].assert_intact(&registry, "app").await;
    // …until the history kept is shorter.
    let report = collect(&registry, deleting()).await;
    assert_eq!(report.manifests_removed, 2);
    assert!(stored_blobs(&registry).await.is_empty());
}

#[tokio::test]
async fn the_grace_period_spares_fresh_uploads_and_whatever_was_used_again() {
    let registry = uncached().await;
    let old_stray = registry.push_blob("a", b"old stray").await;
    let mounted = registry.push_blob("a", b"old, mounted again").await;
    let reuploaded = registry.push_blob("a", b"old, uploaded again").await;
    let repushed = Image::new("re-pushed", &[b"layer of the re-pushed image"]);
    repushed.push(&registry, "a", &repushed.digest).await;
    age(&registry, TWO_HOURS).await;

    let fresh = registry.push_blob("a", b"fresh stray").await;
    let mount = registry
        .client
        .post(registry.url(&format!("/v2/b/blobs/uploads/?mount={mounted}&from=a")))
        .send()
        .await
        .unwrap();
    expect_status(mount, StatusCode::CREATED).await;
    registry.push_blob("a", b"old, uploaded again").await;
    let resp = registry
        .put_manifest("a", &repushed.digest, OCI_MANIFEST, &repushed.manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;

    let report = collect(&registry, deleting()).await;
    assert_eq!(
        report.blobs_removed, 1,
        "only the old stray blob: {report:?}"
    );
    assert_eq!(report.manifests_removed, 0);
    assert!(
        report.spared >= 3,
        "the re-pushed manifest and its links: {report:?}"
    );
    assert_eq!(
        status(&registry, &format!("/v2/a/blobs/{old_stray}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&registry, &format!("/v2/a/blobs/{fresh}")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&registry, &format!("/v2/b/blobs/{mounted}")).await,
        StatusCode::OK
    );
    // The old link in the source repository was not used again.
    assert_eq!(
        status(&registry, &format!("/v2/a/blobs/{mounted}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&registry, &format!("/v2/a/blobs/{reuploaded}")).await,
        StatusCode::OK
    );
    repushed.assert_intact(&registry, "a").await;
}

/// Every stored object's size and time. The filesystem's write-ahead
/// journal is left out: it is the store's own log, whose background
/// checkpoint rewrites a header a second after the last write, whatever
/// runs then.
async fn snapshot(registry: &TestRegistry) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let storage = registry.storage().await;
    let mut objects = BTreeMap::new();
    for top in ["repositories", "blobs", "_berth"] {
        objects.extend(store::objects(storage.as_ref(), top).await);
    }
    objects
        .into_iter()
        .filter(|(key, _)| !key.starts_with("_berth/journal/"))
        .map(|(key, info)| (key, (info.size, info.modified)))
        .collect()
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_reports_what_a_run_removes() {
    let registry = uncached().await;
    let (kept, dropped, _) = kept_dropped_and_stray(&registry).await;
    age(&registry, TWO_HOURS).await;
    let before = snapshot(&registry).await;
    let gc = collector(&registry, deleting()).await;
    let dry = gc
        .collect_garbage(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(snapshot(&registry).await, before, "nothing changed");
    dropped.assert_intact(&registry, "app").await;

    let real = gc.collect_garbage(&GcOptions::default()).await.unwrap();
    assert!(dry.dry_run && !real.dry_run);
    assert_eq!(dry.bytes_removed, real.bytes_removed);
    assert!(dry.bytes_removed > 0);
    assert_eq!(
        GcReport {
            dry_run: false,
            ..dry
        },
        real
    );
    kept.assert_intact(&registry, "app").await;
}

async fn patch(registry: &TestRegistry, location: &str, chunk: &[u8]) -> reqwest::Response {
    registry
        .client
        .patch(location)
        .header("Content-Type", "application/octet-stream")
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn abandoned_uploads_expire_orphans_too_and_their_ids_become_unknown() {
    let registry = TestRegistry::start().await;
    let abandoned = registry.start_upload("app").await;
    expect_status(
        patch(&registry, &abandoned, b"abandoned chunk").await,
        StatusCode::ACCEPTED,
    )
    .await;
    let storage = registry.storage().await;
    let uploads = "repositories/app/_uploads";
    let orphan = format!("{uploads}/{}", uuid_like());
    store::write(storage.as_ref(), &format!("{orphan}/data"), b"orphan bytes").await;
    store::write(
        storage.as_ref(),
        &format!("{orphan}/startedat"),
        b"2020-01-01T00:00:00Z",
    )
    .await;
    let junk = format!("{uploads}/not-an-upload/data");
    store::write(storage.as_ref(), &junk, b"junk").await;
    age(&registry, Duration::from_secs(48 * 3600)).await;
    let live = registry.start_upload("app").await;
    expect_status(
        patch(&registry, &live, b"live chunk").await,
        StatusCode::ACCEPTED,
    )
    .await;

    let gc = collector(&registry, LifecycleConfig::default()).await;
    let dry = gc.expire_uploads(true).await.unwrap();
    assert_eq!((dry.expired, dry.bytes_removed), (2, 27));
    let report = gc.expire_uploads(false).await.unwrap();
    assert_eq!(report.expired, 2);
    assert_eq!(
        report.bytes_removed,
        (b"abandoned chunk".len() + b"orphan bytes".len()) as u64
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(store::objects(storage.as_ref(), &orphan).await.is_empty());
    assert!(
        store::exists(storage.as_ref(), &junk).await,
        "what is not an upload is left alone"
    );

    let resp = patch(&registry, &abandoned, b"more").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    let put = with_query(
        &abandoned,
        &format!("digest={}", sha256_digest(b"abandoned chunk")),
    );
    let resp = registry.client.put(put).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");

    let put = with_query(&live, &format!("digest={}", sha256_digest(b"live chunk")));
    let resp = registry.client.put(put).send().await.unwrap();
    expect_status_of(resp, StatusCode::CREATED, "a live upload is untouched").await;
}

fn uuid_like() -> String {
    let hex = sha256_digest(b"orphan")[7..39].to_owned();
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

async fn berth_gc(registry: &TestRegistry, args: &[&str]) -> String {
    let mut command = tokio::process::Command::from(registry.berth_command("gc"));
    let output = command.args(args).output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "berth gc failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn berth_gc_collects_a_data_dir_and_prints_a_summary() {
    let registry = uncached().await;
    let (kept, dropped, _) = kept_dropped_and_stray(&registry).await;
    age(&registry, TWO_HOURS).await;
    let config = registry.data.path().join("gc.toml");
    std::fs::write(
        &config,
        "[lifecycle]\nuntagged_manifests = \"delete\"\nhistory_keep = 0\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let mut base = vec!["--config".to_owned(), config.clone()];
    if on_s3() {
        // The default grace period (1 h), as aging leaves it on S3.
        let grace = aged_grace(&registry, Duration::from_secs(3600));
        base.extend([
            "--grace-period".to_owned(),
            format!("{}ms", grace.as_millis()),
        ]);
    }
    let base: Vec<&str> = base.iter().map(String::as_str).collect();

    let spared = berth_gc(&registry, &["--config", &config, "--grace-period", "30d"]).await;
    assert!(spared.contains("manifests removed: 0\n"), "{spared}");
    assert!(spared.contains("blobs removed: 0 "), "{spared}");

    let before = stored_blobs(&registry).await;
    let dry = berth_gc(&registry, &[&base[..], &["--dry-run"]].concat()).await;
    assert!(dry.starts_with("dry run: nothing was changed"), "{dry}");
    assert_eq!(stored_blobs(&registry).await, before);

    let run = berth_gc(&registry, &base).await;
    let bytes = dropped.manifest.len()
        + dropped.blobs[0].1.len()
        + b"dropped layer".len()
        + b"never referenced".len();
    for expected in [
        "repositories: 1\n".to_owned(),
        "tags removed by retention: 0\n".to_owned(),
        "manifests removed: 1\n".to_owned(),
        "blobs removed: 4 (1 of them manifests)\n".to_owned(),
        "links removed: 3 layer, 0 referrer, 1 tag history entries\n".to_owned(),
        "uploads expired: 0 (0 bytes)\n".to_owned(),
        format!("bytes reclaimed: {bytes} ("),
    ] {
        assert!(run.contains(&expected), "{expected:?} in:\n{run}");
        assert!(
            dry.contains(&expected),
            "{expected:?} in the dry run:\n{dry}"
        );
    }
    kept.assert_intact(&registry, "app").await;
    let expected: BTreeSet<String> = kept.digests().into_iter().collect();
    assert_eq!(stored_blobs(&registry).await, expected);
}

#[tokio::test]
async fn a_server_with_gc_interval_collects_by_itself() {
    // The grace protects a blob between its upload and the manifest that
    // names it: it must outlast a push (over S3, on a loaded machine, with
    // every replica collecting, a push of zero grace loses the race).
    let registry = TestRegistry::start_with(|c| {
        c.lifecycle = LifecycleConfig {
            gc_interval: Some(Duration::from_millis(300)),
            gc_grace_period: Duration::from_secs(3),
            ..deleting()
        }
    })
    .await;
    let kept = Image::new("kept", &[b"kept layer"]);
    kept.push(&registry, "app", "stable").await;
    let dropped = Image::new("dropped", &[b"dropped layer"]);
    dropped.push(&registry, "app", "old").await;
    expect_status(
        registry.delete_manifest("app", "old").await,
        StatusCode::ACCEPTED,
    )
    .await;
    let expected: BTreeSet<String> = kept.digests().into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_blobs(&registry).await != expected {
        assert!(Instant::now() < deadline, "the server never collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Collected in the server's own process: its caches forgot at once.
    let manifest = format!("/v2/app/manifests/{}", dropped.digest);
    assert_eq!(status(&registry, &manifest).await, StatusCode::NOT_FOUND);
    kept.assert_intact(&registry, "app").await;
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

/// Pushes like a real client: blobs the repository says it has are not sent
/// again; some are mounted from another repository. Returns whether the
/// registry acknowledged the manifest (it may refuse with
/// MANIFEST_BLOB_UNKNOWN when the collector won a race: never anything else).
async fn push_racing(
    registry: &TestRegistry,
    name: &str,
    other: &str,
    image: &Image,
    reference: &str,
    choices: &mut Choices,
) -> bool {
    for (digest, content) in &image.blobs {
        let head = registry
            .client
            .head(registry.url(&format!("/v2/{name}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        if head.status() == StatusCode::OK {
            continue;
        }
        let start = if choices.next(3) == 0 {
            format!("/v2/{name}/blobs/uploads/?mount={digest}&from={other}")
        } else {
            format!("/v2/{name}/blobs/uploads/")
        };
        let resp = registry
            .client
            .post(registry.url(&start))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::CREATED {
            continue;
        }
        let resp = expect_status(resp, StatusCode::ACCEPTED).await;
        let put = with_query(&registry.location(&resp), &format!("digest={digest}"));
        let resp = registry
            .client
            .put(put)
            .body(content.clone())
            .send()
            .await
            .unwrap();
        expect_status_of(resp, StatusCode::CREATED, &format!("upload of {digest}")).await;
    }
    let resp = registry
        .put_manifest(name, reference, OCI_MANIFEST, &image.manifest)
        .await;
    match resp.status() {
        StatusCode::CREATED => true,
        _ => {
            assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
            false
        }
    }
}

#[derive(Default)]
struct ClientLog {
    /// Tag → image, for every tag the client still has.
    live: HashMap<String, Image>,
    /// Images whose last tag the client deleted.
    deleted: Vec<Image>,
    acknowledged: usize,
    refused: usize,
}

/// How far the race has gone, and whether it is over.
#[derive(Default)]
struct Race {
    over: AtomicBool,
    collections: AtomicUsize,
    acknowledged: AtomicUsize,
}

impl Race {
    /// Whether it has run long enough to have interleaved pushes and
    /// collections many times: six seconds, five collections and ten
    /// acknowledged pushes (a collection of a bucket takes longer than one
    /// of a data directory).
    fn ran(&self, started: Instant) -> bool {
        started.elapsed() >= Duration::from_secs(6)
            && self.collections.load(Ordering::Relaxed) >= 5
            && self.acknowledged.load(Ordering::Relaxed) >= 10
    }
}

async fn race_client(
    registry: Arc<TestRegistry>,
    client: usize,
    pool: Arc<Vec<Vec<u8>>>,
    race: Arc<Race>,
) -> ClientLog {
    let name = format!("race/c{client}");
    let other = format!("race/c{}", (client + 1) % 3);
    let mut choices = Choices(0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1));
    let mut log = ClientLog::default();
    let mut serial = 0;
    while !race.over.load(Ordering::Relaxed) {
        serial += 1;
        match choices.next(10) {
            0..=5 => {
                let a = &pool[choices.next(pool.len())];
                let b = &pool[choices.next(pool.len())];
                let image = Image::new(&format!("{client}-{serial}"), &[a, b]);
                let tag = format!("t{serial}");
                if push_racing(&registry, &name, &other, &image, &tag, &mut choices).await {
                    log.acknowledged += 1;
                    race.acknowledged.fetch_add(1, Ordering::Relaxed);
                    log.live.insert(tag, image);
                } else {
                    log.refused += 1;
                }
            }
            6 | 7 if !log.live.is_empty() => {
                let mut tags: Vec<_> = log.live.keys().cloned().collect();
                tags.sort();
                let tag = tags[choices.next(tags.len())].clone();
                let resp = registry.delete_manifest(&name, &tag).await;
                expect_status(resp, StatusCode::ACCEPTED).await;
                let image = log.live.remove(&tag).unwrap();
                log.deleted.push(image);
            }
            8 if !log.live.is_empty() => {
                // Re-tag: the same manifest bytes under another tag.
                let mut tags: Vec<_> = log.live.keys().cloned().collect();
                tags.sort();
                let image = log.live[&tags[choices.next(tags.len())]].clone();
                let tag = format!("t{serial}");
                let resp = registry
                    .put_manifest(&name, &tag, OCI_MANIFEST, &image.manifest)
                    .await;
                expect_status_of(
                    resp,
                    StatusCode::CREATED,
                    "re-tag of an image the client holds",
                )
                .await;
                log.live.insert(tag, image);
            }
            _ => {
                let layer = sha256_digest(&pool[choices.next(pool.len())]);
                let path = format!("/v2/{name}/blobs/uploads/?mount={layer}&from={other}");
                let resp = registry
                    .client
                    .post(registry.url(&path))
                    .send()
                    .await
                    .unwrap();
                if resp.status() == StatusCode::ACCEPTED {
                    let cancel = registry
                        .client
                        .delete(registry.location(&resp))
                        .send()
                        .await
                        .unwrap();
                    expect_status(cancel, StatusCode::NO_CONTENT).await;
                } else {
                    expect_status(resp, StatusCode::CREATED).await;
                }
            }
        }
    }
    log
}

/// The collector runs again and again (as another process would, with a
/// 2 s grace period) while clients push, mount, re-tag and delete tags, with
/// layers drawn from a small pool so that content the collector is removing
/// is wanted again all the time. Every acknowledged push must pull back
/// whole; afterwards a final collection leaves exactly the live images.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_mounts_and_retags_racing_the_collector_stay_whole() {
    let lifecycle = LifecycleConfig {
        gc_grace_period: Duration::from_secs(2),
        ..deleting()
    };
    let registry = Arc::new(
        TestRegistry::start_with(|c| {
            c.cache_ttl_ms = 500;
            c.lifecycle = lifecycle.clone();
        })
        .await,
    );
    let gc = collector(&registry, lifecycle).await;
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|i| {
                crate::support::pattern(300 + i * 1000)
                    .into_iter()
                    .map(|b| b ^ i as u8)
                    .collect()
            })
            .collect(),
    );
    let race = Arc::new(Race::default());
    let stop = Arc::new(AtomicBool::new(false));
    let collecting = {
        let (gc, stop, race) = (gc.clone(), stop.clone(), race.clone());
        tokio::spawn(async move {
            let mut total = GcReport::default();
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let report = gc.collect_garbage(&GcOptions::default()).await.unwrap();
                runs += 1;
                race.collections.fetch_add(1, Ordering::Relaxed);
                total.manifests_removed += report.manifests_removed;
                total.blobs_removed += report.blobs_removed;
                total.bytes_removed += report.bytes_removed;
                total.spared += report.spared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (runs, total)
        })
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|c| tokio::spawn(race_client(registry.clone(), c, pool.clone(), race.clone())))
        .collect();
    while !race.ran(started) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the race did not get going: {} collections, {} pushes acknowledged",
            race.collections.load(Ordering::Relaxed),
            race.acknowledged.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    race.over.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, total) = collecting.await.unwrap();
    let acknowledged: usize = logs.iter().map(|l| l.acknowledged).sum();
    let refused: usize = logs.iter().map(|l| l.refused).sum();
    eprintln!(
        "{runs} collections removed {} manifests, {} blobs, {} bytes, spared {}; \
         {acknowledged} pushes acknowledged, {refused} refused",
        total.manifests_removed, total.blobs_removed, total.bytes_removed, total.spared
    );
    assert!(runs >= 5 && acknowledged >= 10, "the race ran");
    assert!(
        total.blobs_removed > 0,
        "the collector removed something while clients worked"
    );

    for (client, log) in logs.iter().enumerate() {
        let name = format!("race/c{client}");
        for (tag, image) in &log.live {
            let (status, body) = get_bytes(&registry, &format!("/v2/{name}/manifests/{tag}")).await;
            assert_eq!(status, StatusCode::OK, "{name}:{tag}");
            assert_eq!(body, image.manifest);
            image.assert_intact(&registry, &name).await;
        }
    }

    // Past all activity, a final collection leaves exactly the live images.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = gc
        .collect_garbage(&GcOptions {
            grace_period: Some(Duration::ZERO),
            ..GcOptions::default()
        })
        .await
        .unwrap();
    eprintln!("final collection: {last:?}");
    let expected: BTreeSet<String> = logs
        .iter()
        .flat_map(|l| l.live.values().flat_map(Image::digests))
        .collect();
    assert_eq!(stored_blobs(&registry).await, expected);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (client, log) in logs.iter().enumerate() {
        let name = format!("race/c{client}");
        for image in log.live.values() {
            image.assert_intact(&registry, &name).await;
        }
        let live: BTreeSet<&str> = log.live.values().map(|i| i.digest.as_str()).collect();
        for image in log
            .deleted
            .iter()
            .filter(|i| !live.contains(i.digest.as_str()))
        {
            let path = format!("/v2/{name}/manifests/{}", image.digest);
            assert_eq!(status(&registry, &path).await, StatusCode::NOT_FOUND);
        }
    }
}
