//! Pulling, checking and deleting blobs (distribution-spec end-2, end-10):
//! headers, Range requests, per-repository visibility, and the validation of
//! digests and repository names in the path.

use crate::support::{
    error_code, expect_status, expect_status_of, get, header_str, pattern, sha256_digest,
    sha512_digest, store, uncached_on_s3, TestRegistry,
};
use reqwest::{header, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get_range(registry: &TestRegistry, path: &str, range: &str) -> reqwest::Response {
    registry
        .client
        .get(registry.url(path))
        .header(header::RANGE, range)
        .send()
        .await
        .unwrap()
}

/// A response read off a raw socket.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not a JSON error body ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        body["errors"][0]["code"].as_str().unwrap().to_owned()
    }
}

/// Sends `method path` over a plain socket, byte for byte: reqwest (like any
/// WHATWG URL parser) would resolve `..` and `%2e%2e` segments before sending.
async fn raw_request(registry: &TestRegistry, method: &str, path: &str) -> RawResponse {
    let mut stream = TcpStream::connect(registry.addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        registry.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn get_blob_returns_content_with_length_digest_type_and_accept_ranges() {
    let registry = TestRegistry::start().await;
    let content = pattern(1000);
    let digest = registry.push_blob("team/app", &content).await;
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), "1000");
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(header_str(&resp, "accept-ranges"), "bytes");
    assert_eq!(
        header_str(&resp, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn head_blob_has_the_get_headers_and_an_empty_body() {
    let registry = TestRegistry::start().await;
    let content = pattern(777);
    let digest = registry.push_blob("team/app", &content).await;
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), "777");
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(header_str(&resp, "accept-ranges"), "bytes");
    assert_eq!(
        header_str(&resp, "content-type"),
        "application/octet-stream"
    );
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD sent a body");
    // The content is intact after the HEAD.
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn get_unknown_blob_is_404_blob_unknown() {
    let registry = TestRegistry::start().await;
    registry.push_blob("team/app", b"something else").await;
    let digest = sha256_digest(b"never pushed");
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn blob_is_visible_only_in_repositories_that_link_it() {
    let registry = TestRegistry::start().await;
    let content = b"private layer".to_vec();
    let digest = registry.push_blob("team/a", &content).await;
    // The content exists in the store, but team/b never linked it.
    let resp = get(&registry, &format!("/v2/team/b/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/b/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NOT_FOUND).await;
    let resp = get_range(
        &registry,
        &format!("/v2/team/b/blobs/{digest}"),
        "bytes=0-3",
    )
    .await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    // Still readable where it was pushed.
    let resp = get(&registry, &format!("/v2/team/a/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn range_a_to_b_is_206_with_content_range() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    let resp = get_range(
        &registry,
        &format!("/v2/r/app/blobs/{digest}"),
        "bytes=10-19",
    )
    .await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 10-19/100");
    assert_eq!(header_str(&resp, "content-length"), "10");
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[10..20]);
    // A single byte.
    let resp = get_range(&registry, &format!("/v2/r/app/blobs/{digest}"), "bytes=0-0").await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 0-0/100");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[..1]);
}

#[tokio::test]
async fn range_open_ended_is_206_to_the_last_byte() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    let resp = get_range(&registry, &format!("/v2/r/app/blobs/{digest}"), "bytes=90-").await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 90-99/100");
    assert_eq!(header_str(&resp, "content-length"), "10");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[90..]);
}

#[tokio::test]
async fn range_suffix_is_206_with_the_last_n_bytes() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    let resp = get_range(&registry, &format!("/v2/r/app/blobs/{digest}"), "bytes=-5").await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 95-99/100");
    assert_eq!(header_str(&resp, "content-length"), "5");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[95..]);
    // A suffix longer than the blob is the whole blob (RFC 9110 §14.1.2).
    let resp = get_range(
        &registry,
        &format!("/v2/r/app/blobs/{digest}"),
        "bytes=-500",
    )
    .await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 0-99/100");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn range_end_beyond_the_blob_is_clamped() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    let resp = get_range(
        &registry,
        &format!("/v2/r/app/blobs/{digest}"),
        "bytes=50-100000",
    )
    .await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes 50-99/100");
    assert_eq!(header_str(&resp, "content-length"), "50");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[50..]);
}

#[tokio::test]
async fn range_starting_beyond_the_blob_is_416_with_content_range_star() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    for range in ["bytes=100-", "bytes=100-200", "bytes=5000-5001"] {
        let resp = get_range(&registry, &format!("/v2/r/app/blobs/{digest}"), range).await;
        let resp = expect_status_of(resp, StatusCode::RANGE_NOT_SATISFIABLE, range).await;
        assert_eq!(header_str(&resp, "content-range"), "bytes */100", "{range}");
    }
    // The blob is intact.
    let resp = get(&registry, &format!("/v2/r/app/blobs/{digest}")).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn inverted_range_is_416_with_content_range_star() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("r/app", &pattern(100)).await;
    let resp = get_range(
        &registry,
        &format!("/v2/r/app/blobs/{digest}"),
        "bytes=20-10",
    )
    .await;
    let resp = expect_status(resp, StatusCode::RANGE_NOT_SATISFIABLE).await;
    assert_eq!(header_str(&resp, "content-range"), "bytes */100");
}

#[tokio::test]
async fn range_on_a_zero_length_blob_is_416() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("r/app", b"").await;
    for range in ["bytes=0-0", "bytes=0-", "bytes=-1"] {
        let resp = get_range(&registry, &format!("/v2/r/app/blobs/{digest}"), range).await;
        let resp = expect_status_of(resp, StatusCode::RANGE_NOT_SATISFIABLE, range).await;
        assert_eq!(header_str(&resp, "content-range"), "bytes */0", "{range}");
    }
}

#[tokio::test]
async fn multiple_ranges_are_ignored_and_the_whole_blob_is_sent() {
    let registry = TestRegistry::start().await;
    let content = pattern(100);
    let digest = registry.push_blob("r/app", &content).await;
    let resp = get_range(
        &registry,
        &format!("/v2/r/app/blobs/{digest}"),
        "bytes=0-9,20-29",
    )
    .await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(resp.headers().get("content-range").is_none());
    assert_eq!(header_str(&resp, "content-length"), "100");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn delete_blob_is_202_then_404_in_that_repository_only() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let content = b"shared layer".to_vec();
    let digest = registry.push_blob("team/a", &content).await;
    assert_eq!(registry.push_blob("team/b", &content).await, digest);
    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/team/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::ACCEPTED).await;
    let resp = get(&registry, &format!("/v2/team/a/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NOT_FOUND).await;
    // team/b still has it, byte for byte.
    let resp = get(&registry, &format!("/v2/team/b/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    // A second delete in team/a finds nothing.
    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/team/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn delete_unknown_blob_is_404_blob_unknown() {
    let registry = TestRegistry::start().await;
    let kept = registry.push_blob("team/a", b"kept").await;
    let digest = sha256_digest(b"never pushed");
    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/team/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = get(&registry, &format!("/v2/team/a/blobs/{kept}")).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"kept");
}

#[tokio::test]
async fn invalid_digest_in_path_is_400_digest_invalid() {
    let registry = TestRegistry::start().await;
    let content = b"hello".to_vec();
    let digest = registry.push_blob("team/app", &content).await;
    let bad = [
        "sha256:xyz".to_owned(),
        "md5:5d41402abc4b2a76b9719d911017c592".to_owned(),
        digest.to_uppercase().replace("SHA256", "sha256"),
        format!("sha256:{}", &digest["sha256:".len()..][..63]),
        "sha256".to_owned(),
    ];
    for d in &bad {
        let path = format!("/v2/team/app/blobs/{d}");
        let resp = get(&registry, &path).await;
        let resp = expect_status_of(resp, StatusCode::BAD_REQUEST, &format!("GET {d}")).await;
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "GET {d}");
        let resp = registry
            .client
            .head(registry.url(&path))
            .send()
            .await
            .unwrap();
        expect_status_of(resp, StatusCode::BAD_REQUEST, &format!("HEAD {d}")).await;
        let resp = registry
            .client
            .delete(registry.url(&path))
            .send()
            .await
            .unwrap();
        let resp = expect_status_of(resp, StatusCode::BAD_REQUEST, &format!("DELETE {d}")).await;
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "DELETE {d}");
    }
    // Nothing was deleted by the uppercase spelling of the real digest.
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn uppercase_repository_name_is_400_name_invalid() {
    let registry = TestRegistry::start().await;
    let digest = sha256_digest(b"x");
    let resp = get(&registry, &format!("/v2/UPPER/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/UPPER/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::BAD_REQUEST).await;
    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/UPPER/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    let resp = registry
        .client
        .post(registry.url("/v2/UPPER/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    let storage = registry.storage().await;
    assert!(
        store::objects(storage.as_ref(), "repositories")
            .await
            .is_empty(),
        "an invalid name reached storage"
    );
}

#[tokio::test]
async fn empty_name_component_is_400_name_invalid() {
    let registry = TestRegistry::start().await;
    let digest = sha256_digest(b"x");
    for path in [
        format!("/v2/a//b/blobs/{digest}"),
        format!("/v2//a/blobs/{digest}"),
        format!("/v2/a/b//blobs/{digest}"),
    ] {
        // What the server receives, exactly as written.
        let resp = raw_request(&registry, "GET", &path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.error_code(), "NAME_INVALID", "{path}");
    }
    // reqwest keeps empty segments too.
    let resp = get(&registry, &format!("/v2/a//b/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
}

#[tokio::test]
async fn dot_dot_name_components_are_400_name_invalid() {
    let registry = TestRegistry::start().await;
    let content = b"secret".to_vec();
    let digest = registry.push_blob("x", &content).await;
    // Sent raw: a URL library would resolve both spellings away before sending.
    for path in [
        format!("/v2/%2e%2e/x/blobs/{digest}"),
        format!("/v2/%2E%2E/x/blobs/{digest}"),
        format!("/v2/../x/blobs/{digest}"),
        format!("/v2/a/../x/blobs/{digest}"),
        format!("/v2/./x/blobs/{digest}"),
    ] {
        let resp = raw_request(&registry, "GET", &path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.error_code(), "NAME_INVALID", "{path}");
    }
    let resp = raw_request(&registry, "POST", "/v2/../x/blobs/uploads/").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "NAME_INVALID");
    let resp = raw_request(&registry, "DELETE", &format!("/v2/a/../x/blobs/{digest}")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "NAME_INVALID");
    // x's blob was not touched.
    let resp = get(&registry, &format!("/v2/x/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn name_longer_than_255_characters_is_400_name_invalid() {
    let registry = TestRegistry::start().await;
    let digest = sha256_digest(b"x");
    let too_long = "a".repeat(256);
    let resp = get(&registry, &format!("/v2/{too_long}/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    let nested = format!("{}/{}", "a".repeat(128), "b".repeat(127));
    assert_eq!(nested.len(), 256);
    let resp = get(&registry, &format!("/v2/{nested}/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    // 255 characters is a valid name: the blob is merely unknown there.
    let longest = "a".repeat(255);
    let resp = get(&registry, &format!("/v2/{longest}/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn sha512_blob_push_and_fetch() {
    let registry = TestRegistry::start().await;
    let content = pattern(5000);
    let digest = sha512_digest(&content);
    // Monolithic.
    let resp = registry
        .client
        .post(registry.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(
        header_str(&resp, "location"),
        format!("/v2/team/app/blobs/{digest}")
    );
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(header_str(&resp, "content-length"), "5000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    let resp = get_range(
        &registry,
        &format!("/v2/team/app/blobs/{digest}"),
        "bytes=4990-",
    )
    .await;
    let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[4990..]);

    // POST then PUT in another repository.
    let resp = registry
        .client
        .post(registry.url("/v2/team/other/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED).await;
    let location = registry.location(&resp);
    let resp = registry
        .client
        .put(crate::support::with_query(
            &location,
            &format!("digest={digest}"),
        ))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/other/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    assert_eq!(header_str(&resp, "content-length"), "5000");
    // The sha256 name of the same bytes is not linked anywhere.
    let resp = get(
        &registry,
        &format!("/v2/team/app/blobs/{}", sha256_digest(&content)),
    )
    .await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn zero_length_blob_push_head_and_get() {
    let registry = TestRegistry::start().await;
    let digest = registry.push_blob("team/app", b"").await;
    assert_eq!(
        digest,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), "0");
    assert_eq!(header_str(&resp, "docker-content-digest"), digest);
    let resp = get(&registry, &format!("/v2/team/app/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), "0");
    assert!(resp.bytes().await.unwrap().is_empty());
    // Monolithic, in another repository.
    let resp = registry
        .client
        .post(registry.url(&format!("/v2/team/other/blobs/uploads/?digest={digest}")))
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::CREATED).await;
    let resp = registry
        .client
        .head(registry.url(&format!("/v2/team/other/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "content-length"), "0");
}
