//! end-1 and the operational endpoints.

use crate::support::backend::filesystem_only;
use crate::support::{expect_status, TestRegistry};
use reqwest::StatusCode;

#[tokio::test]
async fn base_endpoint_answers_with_the_api_version_header() {
    let registry = TestRegistry::start().await;
    let resp = registry
        .client
        .get(registry.url("/v2/"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let registry = TestRegistry::start().await;
    let resp = registry
        .client
        .get(registry.url("/healthz"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
    let resp = registry
        .client
        .get(registry.url("/readyz"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
}

#[tokio::test]
async fn readiness_fails_when_the_store_is_not_writable() {
    if filesystem_only(
        "the store is made unwritable by replacing its root directory with a file; \
         the shared Garage cannot be made unwritable for one test",
    ) {
        return;
    }
    let registry = TestRegistry::start().await;
    let root = registry.storage_root();
    // Replace the storage root with a file: nothing can be written under it.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let resp = registry
        .client
        .get(registry.url("/readyz"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test]
async fn image_round_trip_through_the_api() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry.push_image("team/app", "1.0", b"layer bytes").await;
    let resp = registry
        .client
        .get(registry.url("/v2/team/app/manifests/1.0"))
        .header("Accept", crate::support::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(resp.headers()["content-type"], crate::support::OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), manifest.as_slice());
}

#[tokio::test]
async fn an_unsupported_method_is_405_and_an_unknown_path_404() {
    let registry = TestRegistry::start().await;
    let send = |method: &str, path: &str| {
        registry
            .client
            .request(method.parse().unwrap(), registry.url(path))
            .send()
    };
    // The method decides before the name: an invalid name with an
    // unsupported method is still 405.
    for path in ["/v2/a/manifests/v1", "/v2/A/manifests/v1", "/v2/_catalog"] {
        let resp = send("PATCH", path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(
            crate::support::error_code(resp).await,
            "UNSUPPORTED",
            "{path}"
        );
    }
    let resp = send("GET", "/v2/A/manifests/v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(crate::support::error_code(resp).await, "NAME_INVALID");
    let resp = send("GET", "/v2/a/unknown/v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
