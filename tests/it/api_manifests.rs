//! Manifests (distribution-spec "Pushing Manifests", "Pulling manifests",
//! "Deleting tags", "Deleting Manifests"): end-3, end-7, end-9.

use std::collections::HashSet;

use crate::support::backend::on_s3;
use crate::support::{
    error_code, expect_status, expect_status_of, header_str, image_manifest, sha256_digest,
    sha512_digest, store, uncached_on_s3, TestRegistry, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use reqwest::{Response, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const NON_DISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// What a client that understands every manifest type sends.
const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// helpers

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').expect("alg:hex").1
}

/// A config and one layer blob in `name`: (config digest, config size, layer digest, layer size).
async fn push_config_and_layer(
    registry: &TestRegistry,
    name: &str,
    layer: &[u8],
) -> (String, usize, String, usize) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha256_digest(layer)
    );
    let config_digest = registry.push_blob(name, config.as_bytes()).await;
    let layer_digest = registry.push_blob(name, layer).await;
    (config_digest, config.len(), layer_digest, layer.len())
}

/// An OCI image manifest over an already pushed config + layer, made unique by `note`.
fn annotated_manifest(config: &(String, usize, String, usize), note: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": [{"mediaType": OCI_LAYER, "digest": config.2, "size": config.3}],
        "annotations": {"org.example.note": note},
    }))
    .unwrap()
}

async fn get_manifest(
    registry: &TestRegistry,
    name: &str,
    reference: &str,
    accept: &str,
) -> Response {
    registry
        .client
        .get(registry.url(&format!("/v2/{name}/manifests/{reference}")))
        .header("Accept", accept)
        .send()
        .await
        .unwrap()
}

async fn head_manifest(registry: &TestRegistry, name: &str, reference: &str) -> Response {
    registry
        .client
        .head(registry.url(&format!("/v2/{name}/manifests/{reference}")))
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .unwrap()
}

/// Asserts that `reference` in `name` is served (GET and HEAD) as exactly
/// `body`, with `media_type` and `digest`.
async fn assert_served(
    registry: &TestRegistry,
    name: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
    digest: &str,
) {
    let resp = get_manifest(registry, name, reference, ACCEPT_ALL_MANIFESTS).await;
    let resp = expect_status_of(resp, StatusCode::OK, &format!("GET {name}:{reference}")).await;
    assert_eq!(header_str(&resp, "content-type"), media_type);
    assert_eq!(header_str(&resp, "content-length"), body.len().to_string());
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body);

    let resp = head_manifest(registry, name, reference).await;
    let resp = expect_status_of(resp, StatusCode::OK, &format!("HEAD {name}:{reference}")).await;
    assert_eq!(header_str(&resp, "content-type"), media_type);
    assert_eq!(header_str(&resp, "content-length"), body.len().to_string());
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");
}

/// A GET over a raw socket, so that no `Accept` header at all is sent
/// (reqwest always adds `Accept: */*`). Returns the status code.
async fn raw_get_status(registry: &TestRegistry, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        registry.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().expect("status line");
    status_line
        .split_whitespace()
        .nth(1)
        .expect("status code")
        .parse()
        .unwrap()
}

/// A manifest of exactly `size` bytes (padded with an annotation) over the
/// given config and layer.
fn manifest_of_size(config: &(String, usize, String, usize), size: usize) -> Vec<u8> {
    let empty = annotated_manifest(config, "");
    assert!(size > empty.len());
    let padded = annotated_manifest(config, &"x".repeat(size - empty.len()));
    assert_eq!(padded.len(), size);
    padded
}

// ---------------------------------------------------------------------------
// pushing and pulling

#[tokio::test]
async fn put_manifest_by_tag_returns_201_with_location_and_digest() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = image_manifest(&blobs.0, blobs.1, &[(blobs.2.clone(), blobs.3)]);
    let digest = sha256_digest(&manifest);

    let resp = registry
        .put_manifest("team/app", "v1", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(
        registry.location(&resp),
        registry.url(&format!("/v2/team/app/manifests/{digest}"))
    );
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
}

#[tokio::test]
async fn get_manifest_by_tag_returns_exact_bytes_and_headers() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("team/app", "v1", b"layer").await;
    let resp = get_manifest(&registry, "team/app", "v1", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(
        header_str(&resp, "content-length"),
        manifest.len().to_string()
    );
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), manifest.as_slice());
}

#[tokio::test]
async fn get_manifest_by_digest_returns_exact_bytes_and_headers() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("team/app", "v1", b"layer").await;
    let resp = get_manifest(&registry, "team/app", &digest, OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(
        header_str(&resp, "content-length"),
        manifest.len().to_string()
    );
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), manifest.as_slice());
}

#[tokio::test]
async fn head_manifest_by_tag_and_digest_returns_headers_without_body() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("team/app", "v1", b"layer").await;
    for reference in ["v1", digest.as_str()] {
        let resp = head_manifest(&registry, "team/app", reference).await;
        let resp = expect_status_of(resp, StatusCode::OK, &format!("HEAD {reference}")).await;
        assert_eq!(header_str(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(
            header_str(&resp, "content-length"),
            manifest.len().to_string()
        );
        assert_eq!(header_str(&resp, "docker-content-digest"), digest);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn oci_image_index_is_stored_and_served_with_its_media_type() {
    let registry = TestRegistry::start().await;
    let (child, child_digest) = registry.push_image("multi", "amd64", b"amd64 layer").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("multi", "latest", OCI_INDEX, &index)
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&index);
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_served(&registry, "multi", "latest", OCI_INDEX, &index, &digest).await;
    assert_served(&registry, "multi", &digest, OCI_INDEX, &index, &digest).await;
}

#[tokio::test]
async fn docker_schema2_manifest_is_stored_and_served_with_its_media_type() {
    let registry = TestRegistry::start().await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = registry.push_blob("docker/app", config).await;
    let layer = b"docker layer bytes";
    let layer_digest = registry.push_blob("docker/app", layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": layer_digest}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("docker/app", "v2", DOCKER_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&manifest);
    assert_served(
        &registry,
        "docker/app",
        "v2",
        DOCKER_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
    assert_served(
        &registry,
        "docker/app",
        &digest,
        DOCKER_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn docker_manifest_list_is_stored_and_served_with_its_media_type() {
    let registry = TestRegistry::start().await;
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let config_digest = registry.push_blob("docker/multi", config).await;
    let layer = b"arm64 layer";
    let layer_digest = registry.push_blob("docker/multi", layer).await;
    let child = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": layer_digest}]
    }))
    .unwrap();
    let child_digest = sha256_digest(&child);
    let resp = registry
        .put_manifest("docker/multi", &child_digest, DOCKER_MANIFEST, &child)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST, "size": child.len(), "digest": child_digest,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}
        }]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("docker/multi", "latest", DOCKER_MANIFEST_LIST, &list)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&list);
    assert_served(
        &registry,
        "docker/multi",
        "latest",
        DOCKER_MANIFEST_LIST,
        &list,
        &digest,
    )
    .await;
    assert_served(
        &registry,
        "docker/multi",
        &digest,
        DOCKER_MANIFEST_LIST,
        &list,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn artifact_manifest_with_artifact_type_and_empty_config_is_accepted() {
    let registry = TestRegistry::start().await;
    let empty_digest = registry.push_blob("artifacts", b"{}").await;
    assert_eq!(
        empty_digest,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let sbom = br#"{"spdxVersion":"SPDX-2.3"}"#;
    let sbom_digest = registry.push_blob("artifacts", sbom).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom_digest, "size": sbom.len()}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("artifacts", "sbom", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&manifest);
    assert_served(
        &registry,
        "artifacts",
        "sbom",
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn manifest_bytes_are_stored_exactly_as_pushed() {
    let registry = TestRegistry::start().await;
    let (config_digest, config_size, layer_digest, layer_size) =
        push_config_and_layer(&registry, "exact", b"layer").await;
    // Unusual key order, indentation, spacing and trailing newlines: a
    // registry that re-serialised the JSON would change the digest.
    let manifest = format!(
        "\n  {{\n\t\"layers\" : [ {{ \"size\":{layer_size},   \"digest\":\"{layer_digest}\",\"mediaType\":\"{OCI_LAYER}\" }} ],\r\n    \"config\":{{\"size\" :{config_size},\"digest\":\"{config_digest}\",\"mediaType\":\"{OCI_CONFIG}\"}},\n  \"mediaType\":  \"{OCI_MANIFEST}\",\n  \"schemaVersion\":2 }}\n\n"
    );
    let digest = sha256_digest(manifest.as_bytes());
    let resp = registry
        .put_manifest("exact", "odd", OCI_MANIFEST, manifest.as_bytes())
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_served(
        &registry,
        "exact",
        "odd",
        OCI_MANIFEST,
        manifest.as_bytes(),
        &digest,
    )
    .await;
    assert_served(
        &registry,
        "exact",
        &digest,
        OCI_MANIFEST,
        manifest.as_bytes(),
        &digest,
    )
    .await;
}

#[tokio::test]
async fn put_manifest_by_digest_with_matching_body_is_created() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "bydigest", b"layer").await;
    let manifest = annotated_manifest(&blobs, "by digest");
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest("bydigest", &digest, OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(
        registry.location(&resp),
        registry.url(&format!("/v2/bydigest/manifests/{digest}"))
    );
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_served(
        &registry,
        "bydigest",
        &digest,
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn put_manifest_by_digest_with_mismatched_body_is_digest_invalid() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "bydigest", b"layer").await;
    let claimed = annotated_manifest(&blobs, "claimed");
    let claimed_digest = sha256_digest(&claimed);
    let sent = annotated_manifest(&blobs, "actually sent");
    let resp = registry
        .put_manifest("bydigest", &claimed_digest, OCI_MANIFEST, &sent)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    // Nothing was stored under either digest.
    for digest in [claimed_digest, sha256_digest(&sent)] {
        let resp = get_manifest(&registry, "bydigest", &digest, OCI_MANIFEST).await;
        expect_status(resp, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn put_manifest_by_sha512_digest_is_served_with_a_sha512_digest() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "sha512", b"layer").await;
    let manifest = annotated_manifest(&blobs, "sha512");
    let digest = sha512_digest(&manifest);
    let resp = registry
        .put_manifest(
            "sha512",
            &format!("{digest}?tag=long"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(
        registry.location(&resp),
        registry.url(&format!("/v2/sha512/manifests/{digest}"))
    );
    assert_served(
        &registry,
        "sha512",
        &digest,
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
    assert_served(
        &registry,
        "sha512",
        "long",
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn manifests_without_a_media_type_field_are_served_with_the_pushed_content_type() {
    let registry = TestRegistry::start().await;
    // mediaType is optional in OCI documents: the Content-Type says what they are.
    let blobs = push_config_and_layer(&registry, "untyped", b"layer").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": blobs.0, "size": blobs.1},
        "layers": [{"mediaType": OCI_LAYER, "digest": blobs.2, "size": blobs.3}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("untyped", "image", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&manifest);
    assert_served(
        &registry,
        "untyped",
        "image",
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("untyped", "index", OCI_INDEX, &index)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let index_digest = sha256_digest(&index);
    assert_served(
        &registry,
        "untyped",
        "index",
        OCI_INDEX,
        &index,
        &index_digest,
    )
    .await;
}

#[tokio::test]
async fn docker_manifest_without_media_type_is_rejected_or_served_as_pushed() {
    // distribution-spec "Pulling manifests": the Content-Type "SHOULD match what
    // the client pushed as the manifest's Content-Type". Docker schema2 requires
    // the mediaType field, so rejecting the push is fine too; serving it back
    // as an OCI manifest is not.
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "untyped", b"layer").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": DOCKER_CONFIG, "digest": blobs.0, "size": blobs.1},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": blobs.2, "size": blobs.3}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("untyped", "docker", DOCKER_MANIFEST, &manifest)
        .await;
    if resp.status() == StatusCode::BAD_REQUEST {
        assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
        return;
    }
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&manifest);
    assert_served(
        &registry,
        "untyped",
        "docker",
        DOCKER_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn put_manifest_by_malformed_digest_is_rejected() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = annotated_manifest(&blobs, "x");
    for reference in ["sha256:short", "md5:d41d8cd98f00b204e9800998ecf8427e"] {
        let resp = registry
            .put_manifest("team/app", reference, OCI_MANIFEST, &manifest)
            .await;
        let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "{reference}");
    }
}

// ---------------------------------------------------------------------------
// what a manifest references

#[tokio::test]
async fn manifest_with_missing_layer_is_manifest_blob_unknown_and_tag_does_not_move() {
    let registry = TestRegistry::start().await;
    let (old, old_digest) = registry
        .push_image("team/app", "latest", b"old layer")
        .await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = registry.push_blob("team/app", config).await;
    let missing = sha256_digest(b"never pushed");
    let manifest = image_manifest(&config_digest, config.len(), &[(missing, 12)]);
    let resp = registry
        .put_manifest("team/app", "latest", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    // The tag still names the previous manifest, and the rejected one is not stored.
    assert_served(
        &registry,
        "team/app",
        "latest",
        OCI_MANIFEST,
        &old,
        &old_digest,
    )
    .await;
    let resp = get_manifest(
        &registry,
        "team/app",
        &sha256_digest(&manifest),
        OCI_MANIFEST,
    )
    .await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn manifest_with_missing_config_blob_is_manifest_blob_unknown() {
    let registry = TestRegistry::start().await;
    let layer_digest = registry.push_blob("team/app", b"layer").await;
    let manifest = image_manifest(
        &sha256_digest(b"config never pushed"),
        19,
        &[(layer_digest, 5)],
    );
    let resp = registry
        .put_manifest("team/app", "latest", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn index_referencing_an_unknown_manifest_is_manifest_blob_unknown() {
    let registry = TestRegistry::start().await;
    let (child, child_digest) = registry.push_image("multi", "amd64", b"layer").await;
    let unknown = sha256_digest(b"no such manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len()},
            {"mediaType": OCI_MANIFEST, "digest": unknown, "size": 123}
        ]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("multi", "latest", OCI_INDEX, &index)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    let resp = get_manifest(&registry, "multi", "latest", OCI_INDEX).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn blobs_of_another_repository_do_not_satisfy_a_manifest() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "owner", b"private layer").await;
    let manifest = annotated_manifest(&blobs, "elsewhere");
    let resp = registry
        .put_manifest("intruder", "latest", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn non_distributable_layer_need_not_be_pushed() {
    let registry = TestRegistry::start().await;
    let config = br#"{"architecture":"amd64","os":"windows"}"#;
    let config_digest = registry.push_blob("windows", config).await;
    let layer_digest = registry.push_blob("windows", b"app layer").await;
    let foreign = sha256_digest(b"windows base layer, hosted elsewhere");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [
            {"mediaType": NON_DISTRIBUTABLE_LAYER, "digest": foreign, "size": 1_000_000,
             "urls": ["https://example.invalid/base.tar.gz"]},
            {"mediaType": OCI_LAYER, "digest": layer_digest, "size": 9}
        ]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("windows", "ltsc", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let digest = sha256_digest(&manifest);
    assert_served(
        &registry,
        "windows",
        "ltsc",
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

// ---------------------------------------------------------------------------
// invalid manifests

#[tokio::test]
async fn malformed_json_is_manifest_invalid() {
    let registry = TestRegistry::start().await;
    let resp = registry
        .put_manifest(
            "team/app",
            "latest",
            OCI_MANIFEST,
            b"{\"schemaVersion\": 2, ",
        )
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    let resp = get_manifest(&registry, "team/app", "latest", OCI_MANIFEST).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn manifest_without_config_is_manifest_invalid() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "layers": [{"mediaType": OCI_LAYER, "digest": blobs.2, "size": blobs.3}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("team/app", "latest", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
}

#[tokio::test]
async fn schema_version_1_is_manifest_invalid() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": blobs.0, "size": blobs.1},
        "layers": [{"mediaType": OCI_LAYER, "digest": blobs.2, "size": blobs.3}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("team/app", "latest", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
}

#[tokio::test]
async fn media_type_differing_from_content_type_is_manifest_invalid() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = image_manifest(&blobs.0, blobs.1, &[(blobs.2.clone(), blobs.3)]);
    let resp = registry
        .put_manifest("team/app", "latest", DOCKER_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    let resp = get_manifest(&registry, "team/app", "latest", ACCEPT_ALL_MANIFESTS).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn manifest_over_4_mib_is_rejected_with_413_and_not_stored() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "big", b"layer").await;
    let manifest = manifest_of_size(&blobs, MAX_MANIFEST_BYTES + 1);
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest("big", "huge", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    for reference in ["huge", digest.as_str()] {
        let resp = get_manifest(&registry, "big", reference, OCI_MANIFEST).await;
        expect_status(resp, StatusCode::NOT_FOUND).await;
    }
    let storage = registry.storage().await;
    let blob = format!("blobs/sha256/{}/{}", &hex_of(&digest)[..2], hex_of(&digest));
    assert!(
        store::objects(storage.as_ref(), &blob).await.is_empty(),
        "oversized manifest content was stored"
    );
}

#[tokio::test]
async fn manifest_of_3_9_mb_is_accepted() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "big", b"layer").await;
    let manifest = manifest_of_size(&blobs, 3_900_000);
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest("big", "large", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    assert_served(&registry, "big", "large", OCI_MANIFEST, &manifest, &digest).await;
}

// ---------------------------------------------------------------------------
// tags on push, Accept, subject

#[tokio::test]
async fn put_by_digest_with_tag_parameters_creates_every_tag() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "tagged", b"layer").await;
    let manifest = annotated_manifest(&blobs, "two tags");
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest(
            "tagged",
            &format!("{digest}?tag=a&tag=b"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    let oci_tags: Vec<&str> = resp
        .headers()
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    assert_eq!(oci_tags, ["a", "b"]);
    assert_eq!(registry.tags("tagged").await, ["a", "b"]);
    for tag in ["a", "b"] {
        assert_served(&registry, "tagged", tag, OCI_MANIFEST, &manifest, &digest).await;
    }
}

#[tokio::test]
async fn accept_excluding_the_stored_media_type_is_manifest_unknown() {
    let registry = TestRegistry::start().await;
    let (child, child_digest) = registry.push_image("multi", "amd64", b"layer").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len()}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("multi", "latest", OCI_INDEX, &index)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let resp = get_manifest(&registry, "multi", "latest", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn accept_wildcard_or_absent_serves_any_media_type() {
    let registry = TestRegistry::start().await;
    let (child, child_digest) = registry.push_image("multi", "amd64", b"layer").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len()}]
    }))
    .unwrap();
    let resp = registry
        .put_manifest("multi", "latest", OCI_INDEX, &index)
        .await;
    expect_status(resp, StatusCode::CREATED).await;

    let resp = get_manifest(&registry, "multi", "latest", "*/*").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-type"), OCI_INDEX);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), index.as_slice());

    let status = raw_get_status(&registry, "/v2/multi/manifests/latest").await;
    assert_eq!(status, 200, "GET without any Accept header");
}

#[tokio::test]
async fn manifest_with_subject_returns_oci_subject_even_if_the_subject_is_missing() {
    let registry = TestRegistry::start().await;
    let empty_digest = registry.push_blob("signed", b"{}").await;
    let subject = sha256_digest(b"a manifest that was never pushed");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1234}
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest("signed", &digest, OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(header_str(&resp, "oci-subject"), subject);
    assert_served(
        &registry,
        "signed",
        &digest,
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
}

#[tokio::test]
async fn manifest_without_subject_has_no_oci_subject_header() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "plain", b"layer").await;
    let manifest = annotated_manifest(&blobs, "plain");
    let resp = registry
        .put_manifest("plain", "v1", OCI_MANIFEST, &manifest)
        .await;
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert!(resp.headers().get("oci-subject").is_none());
}

// ---------------------------------------------------------------------------
// unknown and invalid references

#[tokio::test]
async fn unknown_tag_is_manifest_unknown() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", "v1", b"layer").await;
    let resp = get_manifest(&registry, "team/app", "v2", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = head_manifest(&registry, "team/app", "v2").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn unknown_digest_is_manifest_unknown() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", "v1", b"layer").await;
    let digest = sha256_digest(b"not a manifest here");
    let resp = get_manifest(&registry, "team/app", &digest, OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifest_of_another_repository_is_not_served_by_digest() {
    let registry = TestRegistry::start().await;
    let (_, digest) = registry.push_image("owner", "v1", b"layer").await;
    let resp = get_manifest(&registry, "other", &digest, OCI_MANIFEST).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn unknown_repository_is_404() {
    let registry = TestRegistry::start().await;
    let resp = get_manifest(&registry, "no/such/repo", "latest", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    let code = error_code(resp).await;
    assert!(
        code == "NAME_UNKNOWN" || code == "MANIFEST_UNKNOWN",
        "unexpected code {code}"
    );
}

#[tokio::test]
async fn put_with_an_invalid_tag_is_rejected() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = image_manifest(&blobs.0, blobs.1, &[(blobs.2.clone(), blobs.3)]);
    let resp = registry
        .put_manifest("team/app", "good", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let too_long = "a".repeat(129);
    for tag in [".bad", "-bad", too_long.as_str()] {
        let resp = registry
            .put_manifest("team/app", tag, OCI_MANIFEST, &manifest)
            .await;
        let resp = expect_status_of(resp, StatusCode::BAD_REQUEST, &format!("tag {tag:?}")).await;
        error_code(resp).await;
    }
    // A tag of exactly 128 characters is fine.
    let longest = "a".repeat(128);
    let resp = registry
        .put_manifest("team/app", &longest, OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(registry.tags("team/app").await, [longest.as_str(), "good"]);
}

#[tokio::test]
async fn put_with_an_invalid_tag_parameter_is_rejected_and_creates_nothing() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "team/app", b"layer").await;
    let manifest = annotated_manifest(&blobs, "bad tag param");
    let digest = sha256_digest(&manifest);
    let resp = registry
        .put_manifest(
            "team/app",
            &format!("{digest}?tag=ok&tag=.bad"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    expect_status(resp, StatusCode::BAD_REQUEST).await;
    let resp = get_manifest(&registry, "team/app", "ok", OCI_MANIFEST).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

// ---------------------------------------------------------------------------
// deletes

#[tokio::test]
async fn delete_by_tag_removes_the_tag_but_not_the_manifest() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (manifest, digest) = registry.push_image("team/app", "v1", b"layer").await;
    let resp = registry.delete_manifest("team/app", "v1").await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    let resp = get_manifest(&registry, "team/app", "v1", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    assert_served(
        &registry,
        "team/app",
        &digest,
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
    assert!(registry.tags("team/app").await.is_empty());
}

#[tokio::test]
async fn delete_by_digest_removes_the_manifest_and_its_tags() {
    // A delete through one replica, then reads through either: exact at once
    // only without the cache's staleness bound (s3.md §7).
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (manifest, digest) = registry.push_image("team/app", "one", b"layer").await;
    let resp = registry
        .put_manifest("team/app", "two", OCI_MANIFEST, &manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    let (other, other_digest) = registry
        .push_image("team/app", "other", b"other layer")
        .await;

    let resp = registry.delete_manifest("team/app", &digest).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    for reference in [digest.as_str(), "one", "two"] {
        let resp = get_manifest(&registry, "team/app", reference, OCI_MANIFEST).await;
        let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    }
    assert_eq!(registry.tags("team/app").await, ["other"]);
    assert_served(
        &registry,
        "team/app",
        "other",
        OCI_MANIFEST,
        &other,
        &other_digest,
    )
    .await;
}

#[tokio::test]
async fn delete_by_digest_leaves_other_repositories_alone() {
    // A delete through one replica, then reads through either: exact at once
    // only without the cache's staleness bound (s3.md §7).
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (manifest, digest) = registry.push_image("first", "v1", b"shared layer").await;
    let (again, same_digest) = registry.push_image("second", "v1", b"shared layer").await;
    assert_eq!((&manifest, &digest), (&again, &same_digest));
    let resp = registry.delete_manifest("first", &digest).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    let resp = get_manifest(&registry, "first", &digest, OCI_MANIFEST).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_served(&registry, "second", "v1", OCI_MANIFEST, &manifest, &digest).await;
}

#[tokio::test]
async fn delete_unknown_manifest_is_404() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", "v1", b"layer").await;
    let unknown = sha256_digest(b"unknown");
    for reference in ["v2", unknown.as_str()] {
        let resp = registry.delete_manifest("team/app", reference).await;
        let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    }
    let resp = registry.delete_manifest("no/such/repo", "v1").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

// ---------------------------------------------------------------------------
// storage layout and concurrency

/// The names in a tag's Berth history directory, oldest first.
async fn history_entries(registry: &TestRegistry, repo: &str, tag: &str) -> Vec<String> {
    let storage = registry.storage().await;
    let dir = format!("repositories/{repo}/_berth/history/{tag}");
    let names = store::children(storage.as_ref(), &dir).await;
    assert!(!names.is_empty(), "{dir} is empty");
    names
}

#[tokio::test]
async fn tag_history_is_recorded_in_order_beside_the_distribution_layout() {
    let registry = TestRegistry::start().await;
    let (_, digest_a) = registry.push_image("team/app", "t", b"layer A").await;
    let (_, digest_b) = registry.push_image("team/app", "t", b"layer B").await;
    assert_ne!(digest_a, digest_b);
    let entries = history_entries(&registry, "team/app", "t").await;
    let named: Vec<String> = entries
        .iter()
        .map(|e| e.split_once('-').unwrap().1.replacen('-', ":", 1))
        .collect();
    assert_eq!(named, [digest_a.clone(), digest_b.clone()], "{entries:?}");
    let storage = registry.storage().await;
    let current = store::read(
        storage.as_ref(),
        "repositories/team/app/_manifests/tags/t/current/link",
    )
    .await;
    assert_eq!(current, Some(digest_b.into_bytes()));
    let revision = format!(
        "repositories/team/app/_manifests/revisions/sha256/{}/link",
        hex_of(&digest_a)
    );
    assert_eq!(
        store::read(storage.as_ref(), &revision).await,
        Some(digest_a.into_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_updates_leave_the_tag_on_one_whole_manifest() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "race", b"layer").await;
    let manifests: Vec<Vec<u8>> = (0..16)
        .map(|i| annotated_manifest(&blobs, &format!("writer {i}")))
        .collect();
    let url = registry.url("/v2/race/manifests/contended");
    let tasks: Vec<_> = manifests
        .iter()
        .cloned()
        .map(|body| {
            let client = registry.client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let resp = client
                    .put(url)
                    .header("Content-Type", OCI_MANIFEST)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                resp.status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }

    let resp = get_manifest(&registry, "race", "contended", OCI_MANIFEST).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let digest = header_str(&resp, "docker-content-digest").to_owned();
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        sha256_digest(&body),
        digest,
        "served bytes match the digest"
    );
    assert!(
        manifests.iter().any(|m| m.as_slice() == body.as_ref()),
        "the tag names one of the pushed manifests"
    );
    // Every pushed manifest is stored and in the tag's history, and the
    // newest history entry is where the tag points: in one process. Replicas
    // over a store that ignores conditional writes (Garage) may leave the
    // newest entry on another manifest than `current`, which stays the
    // truth (docs/design/s3.md §6).
    let history = history_entries(&registry, "race", "contended").await;
    for manifest in &manifests {
        let d = sha256_digest(manifest);
        assert_served(&registry, "race", &d, OCI_MANIFEST, manifest, &d).await;
        assert!(
            history.iter().any(|e| e.ends_with(hex_of(&d))),
            "{d} not in {history:?}"
        );
    }
    if !on_s3() {
        assert!(history.last().unwrap().ends_with(hex_of(&digest)));
    }
    assert_eq!(registry.tags("race").await, ["contended"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_the_same_manifest_all_succeed() {
    let registry = TestRegistry::start().await;
    let blobs = push_config_and_layer(&registry, "same", b"layer").await;
    let manifest = annotated_manifest(&blobs, "everyone pushes me");
    let digest = sha256_digest(&manifest);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = registry.client.clone();
            // Half by tag, half by digest.
            let reference = if i % 2 == 0 {
                "shared".to_owned()
            } else {
                digest.clone()
            };
            let url = registry.url(&format!("/v2/same/manifests/{reference}"));
            let body = manifest.clone();
            tokio::spawn(async move {
                let resp = client
                    .put(url)
                    .header("Content-Type", OCI_MANIFEST)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, digest)
            })
        })
        .collect();
    let mut digests = HashSet::new();
    for task in tasks {
        let (status, returned) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        digests.insert(returned.expect("Docker-Content-Digest"));
    }
    assert_eq!(digests, HashSet::from([digest.clone()]));
    assert_served(
        &registry,
        "same",
        "shared",
        OCI_MANIFEST,
        &manifest,
        &digest,
    )
    .await;
    assert_served(&registry, "same", &digest, OCI_MANIFEST, &manifest, &digest).await;
}
