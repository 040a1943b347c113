//! `GET /v2/<name>/_berth/tags` over real HTTP: each tag's digest, size,
//! platforms (an image's from its config, an index's from its entries,
//! attestations left out) and date, sorted by name or newest first, filtered
//! and paged on the server with `next`; refusals of bad parameters and of
//! callers who may not pull. On S3 the dates come from one tree listing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn details(registry: &TestRegistry, name: &str, query: &str) -> Value {
    let resp = get(registry, &format!("/v2/{name}/_berth/tags?{query}")).await;
    json_of(resp, StatusCode::OK).await
}

fn tags_of(page: &Value) -> Vec<&str> {
    page["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tags_come_with_size_platforms_and_date_sorted_and_paged_on_the_server() {
    let registry = TestRegistry::start().await;
    let name = "team/app";
    // A second apart: an object store's dates may count whole seconds.
    let pause = || tokio::time::sleep(Duration::from_millis(1100));
    let (manifest_a, digest_a) = registry.push_image(name, "a", &random_bytes(5000, 1)).await;
    pause().await;
    let (manifest_b, digest_b) = registry.push_image(name, "b", &random_bytes(7000, 2)).await;
    pause().await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest_a, "size": manifest_a.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": digest_b, "size": manifest_b.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": digest_b, "size": manifest_b.len(),
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }))
    .unwrap();
    let resp = registry
        .put_manifest(name, "multi", OCI_INDEX, &index)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    pause().await;
    // Pointing `a` elsewhere makes it the newest (pushed again as it was,
    // a tag is not moved, nor its date).
    let resp = registry
        .put_manifest(name, "a", OCI_MANIFEST, &manifest_b)
        .await;
    expect_status(resp, StatusCode::CREATED).await;

    let page = details(&registry, name, "").await;
    assert_eq!(tags_of(&page), ["a", "b", "multi"]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["tags"][0]["digest"], digest_b);
    let b = &page["tags"][1];
    assert_eq!(b["digest"], digest_b);
    assert_eq!(b["media_type"], OCI_MANIFEST);
    assert_eq!(b["platforms"], json!(["linux/amd64"]));
    let manifest: Value = serde_json::from_slice(&manifest_b).unwrap();
    let size = manifest_b.len() as u64
        + manifest["config"]["size"].as_u64().unwrap()
        + manifest["layers"][0]["size"].as_u64().unwrap();
    assert_eq!(b["size"], size);
    let multi = &page["tags"][2];
    assert_eq!(multi["media_type"], OCI_INDEX);
    assert_eq!(multi["platforms"], json!(["linux/amd64", "linux/arm64/v8"]));
    assert_eq!(multi["size"], Value::Null);
    for tag in page["tags"].as_array().unwrap() {
        assert!(
            tag["updated_at"].as_str().unwrap().starts_with("20"),
            "{tag}"
        );
    }

    // Newest first, a page at a time.
    let first = details(&registry, name, "sort=newest&n=2").await;
    assert_eq!(tags_of(&first), ["a", "multi"]);
    let next = first["next"].as_str().unwrap();
    // (A cursor is digits, a dot and a tag: nothing to escape.)
    let second = details(&registry, name, &format!("sort=newest&n=2&last={next}")).await;
    assert_eq!(tags_of(&second), ["b"]);
    assert_eq!(second["next"], Value::Null);
    // By name, paged, and filtered.
    let first = details(&registry, name, "n=1").await;
    assert_eq!(tags_of(&first), ["a"]);
    assert_eq!(first["next"], "a");
    assert_eq!(
        tags_of(&details(&registry, name, "n=1&last=a").await),
        ["b"]
    );
    let found = details(&registry, name, "q=ult").await;
    assert_eq!(tags_of(&found), ["multi"]);
    assert_eq!(found["total"], 1);

    for bad in ["sort=size", "n=0", "n=101", "n=x"] {
        let resp = get(&registry, &format!("/v2/{name}/_berth/tags?{bad}")).await;
        let resp = expect_status_of(resp, StatusCode::BAD_REQUEST, bad).await;
        assert_eq!(error_code(resp).await, "PARAMETER_INVALID");
    }
    let resp = get(&registry, "/v2/no/such/_berth/tags").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn tag_details_need_the_pull_right() {
    let mut registry = TestRegistry::start_with_auth_and(
        |_| {},
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        r#"
        [[rules]]
        repositories = ["app/*"]
        users = { alice = ["pull", "push"] }
        "#,
    )
    .await;
    let alice = client_with_authorization(&basic_auth("alice", "alice-pw"));
    registry.client = alice.clone();
    registry
        .push_image("app/web", "1", &random_bytes(100, 3))
        .await;
    let url = registry.url("/v2/app/web/_berth/tags");
    let resp = alice.get(&url).send().await.unwrap();
    assert_eq!(tags_of(&json_of(resp, StatusCode::OK).await), ["1"]);
    let bob = client_with_authorization(&basic_auth("bob", "bob-pw"));
    let resp = bob.get(&url).send().await.unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;
    let resp = new_client().get(&url).send().await.unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
}

/// A manifest the registry did not check (a mirror stores an upstream's as
/// sent) whose config descriptor understates the size of the blob it names:
/// the tag list reads a config only when the stored blob is small, never a
/// blob of any size into memory, and adds the declared sizes without
/// overflow.
#[tokio::test]
async fn a_config_descriptor_that_understates_its_blob_is_not_read() {
    let registry = TestRegistry::start().await;
    let name = "team/app";
    // A valid image config of 2 MiB: read, it would show linux/evil.
    let padding = "x".repeat(2 << 20);
    let big = json!({"os": "linux", "architecture": "evil", "pad": padding}).to_string();
    let big_digest = registry.push_blob(name, big.as_bytes()).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": big_digest, "size": 10},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": big_digest, "size": u64::MAX},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": big_digest, "size": u64::MAX},
        ],
    }))
    .unwrap();
    let digest: berth::oci::Digest = sha256_digest(&manifest).parse().unwrap();
    let repository = berth::oci::RepositoryName::parse(name).unwrap();
    let tag = berth::oci::Tag::parse("lying").unwrap();
    let storage = registry.storage().await;
    use berth::storage::layout;
    store::write(storage.as_ref(), &layout::blob_data(&digest), &manifest).await;
    let link = digest.to_string();
    store::write(
        storage.as_ref(),
        &layout::revision_link(&repository, &digest),
        link.as_bytes(),
    )
    .await;
    store::write(
        storage.as_ref(),
        &layout::tag_current_link(&repository, &tag),
        link.as_bytes(),
    )
    .await;

    let page = details(&registry, name, "").await;
    assert_eq!(tags_of(&page), ["lying"]);
    let lying = &page["tags"][0];
    assert_eq!(lying["digest"], link);
    assert_eq!(lying["platforms"], json!([]), "{lying}");
    assert_eq!(lying["size"], json!(u64::MAX), "{lying}");
}
