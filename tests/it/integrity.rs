//! Integrity: `berth fsck` (the real binary) finds damage and repairs what it
//! can; the server never serves a blob or manifest whose content does not
//! match its digest; a full disk (a real size-limited tmpfs) refuses pushes
//! cleanly and keeps pulls working.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::backend::filesystem_only;
use crate::support::store::{self, blob_key};
use crate::support::{
    error_code, expect_status, expect_status_of, get, image_manifest, pattern, sha256_digest,
    with_query, TestRegistry, BERTH, OCI_MANIFEST,
};
use berth::{Config, RunningServer};
use reqwest::{header, StatusCode};
use sha2::{Digest as _, Sha256};

/// What `berth fsck` said: exit success, and its output lines.
struct Fsck {
    ok: bool,
    lines: Vec<String>,
}

impl Fsck {
    fn problems(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("PROBLEM"))
            .collect()
    }

    fn has(&self, prefix: &str, containing: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.contains(containing))
    }

    fn summary(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or_default()
    }
}

/// `berth fsck` over the registry's store, beside its running servers.
fn fsck(registry: &TestRegistry, repair: bool) -> Fsck {
    let mut command = registry.berth_command("fsck");
    if repair {
        command.arg("--repair");
    }
    run_fsck(command)
}

fn run_fsck(mut command: Command) -> Fsck {
    let output = command.output().expect("berth fsck runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    Fsck {
        ok: output.status.success(),
        lines: stdout.lines().map(str::to_owned).collect(),
    }
}

fn quarantine_key(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    format!("_berth/quarantine/sha256/{hex}")
}

/// Whether `key` holds an object in the registry's store.
async fn stored(registry: &TestRegistry, key: &str) -> bool {
    store::exists(registry.storage().await.as_ref(), key).await
}

/// Flips one bit of byte `at` of the stored object `key`.
async fn flip_byte(registry: &TestRegistry, key: &str, at: usize) {
    let storage = registry.storage().await;
    store::damage(storage.as_ref(), key, |content| content[at] ^= 0x01).await;
}

/// A one-image store: its layer is `layer_len` bytes.
struct Image {
    registry: TestRegistry,
    manifest: Vec<u8>,
    manifest_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    config_digest: String,
}

async fn store_with_image(layer_len: usize) -> Image {
    let registry = TestRegistry::start().await;
    let layer = pattern(layer_len);
    let (manifest, manifest_digest) = registry.push_image("team/app", "v1", &layer).await;
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    Image {
        config_digest: parsed["config"]["digest"].as_str().unwrap().to_owned(),
        layer_digest: sha256_digest(&layer),
        registry,
        manifest,
        manifest_digest,
        layer,
    }
}

/// The registry started afresh on the same store: it has verified nothing
/// yet, as after a restart.
async fn restart(registry: TestRegistry) -> TestRegistry {
    registry.restart().await
}

#[tokio::test]
async fn fsck_is_clean_on_a_good_store() {
    let image = store_with_image(300 * 1024).await;
    let report = fsck(&image.registry, false);
    assert!(report.ok, "{:#?}", report.lines);
    assert!(report.problems().is_empty());
    let parsed: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    let config_len = parsed["config"]["size"].as_u64().unwrap();
    let hashed = image.layer.len() as u64 + config_len + image.manifest.len() as u64;
    let summary = report.summary();
    assert!(
        summary.starts_with(&format!("fsck: 3 blobs checked, {hashed} bytes hashed"))
            && summary.contains(" 0 problems"),
        "{summary}"
    );
}

#[tokio::test]
async fn fsck_reports_a_blob_with_a_flipped_byte() {
    let image = store_with_image(100 * 1024).await;
    flip_byte(&image.registry, &blob_key(&image.layer_digest), 5000).await;
    let report = fsck(&image.registry, false);
    assert!(!report.ok);
    assert!(
        report.has(
            &format!("PROBLEM blob {}", image.layer_digest),
            "corrupt or truncated"
        ),
        "{:#?}",
        report.lines
    );
    // The blob, and the two objects that rely on it.
    assert!(report.has(
        &format!("PROBLEM layer link team/app@{}", image.layer_digest),
        "is corrupt"
    ));
    assert!(report.has(
        &format!("PROBLEM manifest team/app@{}", image.manifest_digest),
        &format!("references blob {} is corrupt", image.layer_digest)
    ));
    assert!(
        report.summary().contains(" 3 problems"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn fsck_reports_a_truncated_blob() {
    let image = store_with_image(100 * 1024).await;
    let storage = image.registry.storage().await;
    store::damage(
        storage.as_ref(),
        &blob_key(&image.layer_digest),
        |content| content.truncate(60 * 1024),
    )
    .await;
    let report = fsck(&image.registry, false);
    assert!(!report.ok);
    assert!(
        report.has(
            &format!("PROBLEM blob {}", image.layer_digest),
            "(61440 bytes)"
        ),
        "{:#?}",
        report.lines
    );
}

#[tokio::test]
async fn fsck_reports_a_tag_pointing_at_no_manifest() {
    let image = store_with_image(1024).await;
    let missing = sha256_digest(b"a manifest never pushed");
    let storage = image.registry.storage().await;
    store::write(
        storage.as_ref(),
        "repositories/team/app/_manifests/tags/dangling/current/link",
        missing.as_bytes(),
    )
    .await;
    let report = fsck(&image.registry, false);
    assert!(!report.ok);
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);
    assert!(report.has(
        "PROBLEM tag team/app:dangling",
        &format!("points at {missing} is not a manifest of team/app")
    ));
}

#[tokio::test]
async fn fsck_reports_a_manifest_whose_layer_is_missing() {
    let image = store_with_image(1024).await;
    let storage = image.registry.storage().await;
    store::remove(storage.as_ref(), &blob_key(&image.layer_digest)).await;
    let report = fsck(&image.registry, false);
    assert!(!report.ok);
    let manifest = format!("PROBLEM manifest team/app@{}", image.manifest_digest);
    assert!(
        report.has(
            &manifest,
            &format!(
                "references blob {} is missing from the blob store",
                image.layer_digest
            )
        ),
        "{:#?}",
        report.lines
    );
    assert!(report.has(
        &format!("PROBLEM layer link team/app@{}", image.layer_digest),
        "missing"
    ));
}

#[tokio::test]
async fn repair_quarantines_a_corrupt_blob_and_a_second_run_reports_what_remains() {
    let image = store_with_image(100 * 1024).await;
    let key = blob_key(&image.layer_digest);
    flip_byte(&image.registry, &key, 0).await;
    let storage = image.registry.storage().await;
    let corrupted = store::read(storage.as_ref(), &key).await.unwrap();

    let repair = fsck(&image.registry, true);
    assert!(!repair.ok, "the damage was found: {:#?}", repair.lines);
    let blob = format!("blob {}", image.layer_digest);
    assert!(repair.has(&format!("REPAIRED {blob}"), "moved to _berth/quarantine/"));
    assert!(!stored(&image.registry, &key).await);
    assert_eq!(
        store::read(storage.as_ref(), &quarantine_key(&image.layer_digest)).await,
        Some(corrupted),
        "quarantined, never deleted"
    );

    let again = fsck(&image.registry, false);
    assert!(!again.ok);
    assert!(
        !again.has(&format!("PROBLEM {blob}"), ""),
        "{:#?}",
        again.lines
    );
    assert!(again.has(
        &format!("PROBLEM layer link team/app@{}", image.layer_digest),
        "is in quarantine"
    ));
    assert!(again.has(
        &format!("PROBLEM manifest team/app@{}", image.manifest_digest),
        &format!("references blob {} is in quarantine", image.layer_digest)
    ));
    assert_eq!(again.problems().len(), 2, "{:#?}", again.lines);
    assert!(again.summary().contains("1 blobs in quarantine"));

    // The server no longer has the blob; pushing the content again heals it.
    let registry = restart(image.registry).await;
    let path_url = format!("/v2/team/app/blobs/{}", image.layer_digest);
    expect_status(get(&registry, &path_url).await, StatusCode::NOT_FOUND).await;
    registry.push_blob("team/app", &image.layer).await;
    let healed = fsck(&registry, false);
    assert!(healed.ok, "{:#?}", healed.lines);
}

#[tokio::test]
async fn repair_removes_an_old_temporary_file_a_crash_left() {
    if filesystem_only("temporary files beside the blobs are the filesystem's write debris") {
        return;
    }
    let image = store_with_image(1024).await;
    // An old temporary file, as a crash mid-write leaves.
    let temp = image
        .registry
        .storage_root()
        .join("blobs/sha256/.tmp-crashed");
    std::fs::write(&temp, b"partial").unwrap();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    filetime::set_file_mtime(&temp, long_ago.into()).unwrap();

    let repair = fsck(&image.registry, true);
    assert!(
        repair.has(
            "REPAIRED temporary file blobs/sha256/.tmp-crashed",
            "removed"
        ),
        "{:#?}",
        repair.lines
    );
    assert!(!temp.exists());
    let again = fsck(&image.registry, false);
    assert!(again.ok, "{:#?}", again.lines);
}

/// Reads a whole response body; `Err` when the transfer broke off.
async fn read_body(resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    resp.bytes().await.map(|b| b.to_vec())
}

#[tokio::test]
async fn a_corrupt_blob_is_never_served_whole_and_is_quarantined() {
    let image = store_with_image(3 * 1024 * 1024 + 17).await;
    // The byte is early: everything before the last chunk would go out.
    flip_byte(&image.registry, &blob_key(&image.layer_digest), 10).await;
    let registry = restart(image.registry).await;
    let url = format!("/v2/team/app/blobs/{}", image.layer_digest);

    let resp = get(&registry, &url).await;
    let resp = expect_status_of(resp, StatusCode::OK, "headers go out before the body").await;
    // Content-Length promised the whole blob: a client sees the cut as a
    // failed transfer.
    let body = read_body(resp).await;
    assert!(
        body.is_err(),
        "a body was served whole: {:?}",
        body.map(|b| b.len())
    );
    assert!(stored(&registry, &quarantine_key(&image.layer_digest)).await);
    assert!(!stored(&registry, &blob_key(&image.layer_digest)).await);
    let resp = get(&registry, &url).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn a_range_of_an_unverified_corrupt_blob_is_refused() {
    let image = store_with_image(2 * 1024 * 1024).await;
    flip_byte(
        &image.registry,
        &blob_key(&image.layer_digest),
        2 * 1024 * 1024 - 1,
    )
    .await;
    let registry = restart(image.registry).await;
    let url = format!("/v2/team/app/blobs/{}", image.layer_digest);
    let resp = registry
        .client
        .get(registry.url(&url))
        .header(header::RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    assert!(stored(&registry, &quarantine_key(&image.layer_digest)).await);
}

#[tokio::test]
async fn an_intact_blob_is_served_whole_and_in_ranges_after_a_restart() {
    let image = store_with_image(2 * 1024 * 1024 + 3).await;
    let registry = restart(image.registry).await;
    let url = format!("/v2/team/app/blobs/{}", image.layer_digest);
    let resp = registry
        .client
        .get(registry.url(&url))
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(read_body(resp).await.unwrap(), &image.layer[100..200]);
    let resp = get(&registry, &url).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(read_body(resp).await.unwrap(), image.layer);
    let resp = get(&registry, "/v2/team/app/manifests/v1").await;
    assert_eq!(read_body(resp).await.unwrap(), image.manifest);
}

#[tokio::test]
async fn a_corrupt_small_blob_or_manifest_is_not_served() {
    let image = store_with_image(1000).await;
    flip_byte(&image.registry, &blob_key(&image.config_digest), 1).await;
    flip_byte(&image.registry, &blob_key(&image.manifest_digest), 1).await;
    let registry = restart(image.registry).await;

    let resp = get(
        &registry,
        &format!("/v2/team/app/blobs/{}", image.config_digest),
    )
    .await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    for reference in ["v1", image.manifest_digest.as_str()] {
        let resp = get(&registry, &format!("/v2/team/app/manifests/{reference}")).await;
        let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    }
    assert!(stored(&registry, &quarantine_key(&image.config_digest)).await);
    assert!(stored(&registry, &quarantine_key(&image.manifest_digest)).await);
    // The layer was not damaged and is still served.
    let resp = get(
        &registry,
        &format!("/v2/team/app/blobs/{}", image.layer_digest),
    )
    .await;
    assert_eq!(read_body(resp).await.unwrap(), image.layer);
}

/// Mounting a tmpfs needs root. Without it the test is skipped, loudly
/// (written to stderr directly, past the harness's output capture, so that
/// `cargo test` shows it), except in CI (`CI=true`), which runs as root and
/// must run the test.
fn may_mount(test: &str) -> bool {
    use std::io::Write;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if effective_uid == Some("0") {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test} needs root to mount a tmpfs, and CI must run it"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: mounting a tmpfs needs root (CI runs it as root)"
    );
    false
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test
/// fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): this test needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a server of a failed test holds files): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                return written;
            }
        }
    }
}

fn blob_files(root: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            blob_files(&path, found);
        } else if path.file_name().unwrap() == "data" {
            found.push(path);
        }
    }
}

/// Every blob under a real name holds exactly the content of its digest.
fn assert_no_partial_blob(storage_root: &Path) {
    let mut files = Vec::new();
    blob_files(&storage_root.join("blobs"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let hex = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let actual = hex::encode(Sha256::digest(std::fs::read(&file).unwrap()));
        assert_eq!(actual, hex, "{} is partial", file.display());
    }
}

#[tokio::test]
async fn a_full_disk_refuses_pushes_with_507_keeps_pulls_and_recovers() {
    if filesystem_only("a full disk under the data directory") {
        return;
    }
    if !may_mount("a_full_disk_refuses_pushes_with_507_keeps_pulls_and_recovers") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mount_point, "8m");
    let data_dir = mount_point.join("data");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    let server = RunningServer::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let absolute = |resp: &reqwest::Response| {
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        if location.starts_with("http") {
            location
        } else {
            url(&location)
        }
    };
    let refused = |resp: reqwest::Response, what: &str| {
        assert_eq!(
            resp.status(),
            StatusCode::INSUFFICIENT_STORAGE,
            "{what} on a full disk"
        );
        resp
    };

    // An image pushed while there is room.
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = pattern(300 * 1024);
    let mut digests = Vec::new();
    for blob in [&config_blob, &layer] {
        let digest = sha256_digest(blob);
        let resp = client
            .post(url(&format!("/v2/full/app/blobs/uploads/?digest={digest}")))
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        expect_status(resp, StatusCode::CREATED).await;
        digests.push(digest);
    }
    let manifest = image_manifest(
        &digests[0],
        config_blob.len(),
        &[(digests[1].clone(), layer.len())],
    );
    let put_manifest = |reference: &str, body: Vec<u8>| {
        client
            .put(url(&format!("/v2/full/app/manifests/{reference}")))
            .header("Content-Type", OCI_MANIFEST)
            .body(body)
            .send()
    };
    expect_status(
        put_manifest("v1", manifest.clone()).await.unwrap(),
        StatusCode::CREATED,
    )
    .await;

    // Fill the disk, then leave 200 KiB: a session can start, 400 KiB cannot land.
    let filler = mount_point.join("filler");
    let filled = fill(&filler);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled - 200 * 1024)
        .unwrap();
    let resp = client
        .post(url("/v2/full/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    let session = absolute(&resp);
    let id = session
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let big = pattern(400 * 1024);
    let big_digest = sha256_digest(&big);
    let resp = client
        .patch(&session)
        .header("Content-Type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let resp = refused(resp, "PATCH");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNKNOWN");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("storage is full"));
    let upload_data = data_dir.join(format!(
        "docker/registry/v2/repositories/full/app/_uploads/{id}/data"
    ));
    let left = std::fs::metadata(&upload_data).map_or(0, |m| m.len());
    assert_eq!(left, 0, "the failed chunk was cut off, freeing its space");

    // Monolithic, in one POST and with POST + PUT.
    let resp = client
        .post(url(&format!(
            "/v2/full/app/blobs/uploads/?digest={big_digest}"
        )))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    refused(resp, "monolithic POST");
    let resp = client
        .post(url("/v2/full/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let second = absolute(&resp);
    let resp = client
        .put(with_query(&second, &format!("digest={big_digest}")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    refused(resp, "monolithic PUT");

    // Completely full: a manifest cannot be stored either.
    let filler2 = mount_point.join("filler2");
    fill(&filler2);
    let other = image_manifest(&digests[0], config_blob.len(), &[]);
    let other_digest = sha256_digest(&other);
    refused(
        put_manifest("v2", other.clone()).await.unwrap(),
        "manifest PUT",
    );

    // Pulls still work, and nothing refused is visible.
    let resp = client
        .get(url("/v2/full/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), manifest);
    let resp = client
        .get(url(&format!("/v2/full/app/blobs/{}", digests[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), layer);
    for path in [
        format!("/v2/full/app/manifests/{other_digest}"),
        "/v2/full/app/manifests/v2".to_owned(),
        format!("/v2/full/app/blobs/{big_digest}"),
    ] {
        let resp = client.get(url(&path)).send().await.unwrap();
        expect_status(resp, StatusCode::NOT_FOUND).await;
    }
    let tags: serde_json::Value = client
        .get(url("/v2/full/app/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_no_partial_blob(&data_dir.join("docker/registry/v2"));

    // Space freed: the interrupted session continues and the push completes.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    let resp = client
        .patch(&session)
        .header("Content-Type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    let resp = client
        .put(with_query(
            &absolute(&resp),
            &format!("digest={big_digest}"),
        ))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::CREATED).await;
    let resp = put_manifest("v2", other.clone()).await.unwrap();
    expect_status(resp, StatusCode::CREATED).await;
    let resp = client
        .get(url(&format!("/v2/full/app/blobs/{big_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), big);
    server.shutdown().await.unwrap();

    let mut command = Command::new(BERTH);
    command.arg("fsck").arg("--data-dir").arg(&data_dir);
    let report = run_fsck(command);
    assert!(report.ok, "{:#?}", report.lines);
}
