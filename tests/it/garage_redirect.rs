//! `[storage.s3] redirect = true` on a real Garage: a blob GET answers 307
//! to a presigned URL on the store, so the bytes flow from the bucket, not
//! through Berth. What must hold around it: the URL alone (no credentials)
//! gives exactly the blob, a Range is re-sent to the store and honoured,
//! HEAD and manifests are answered by Berth itself, a blob the repository
//! cannot see is 404 (never a URL), and with auth on a caller without `pull`
//! gets 401/403 and never a URL.
//!
//! HEAD: Distribution redirects HEAD too, to a presigned HEAD URL (its s3
//! driver's `RedirectURL` signs GET or HEAD by the request's method). Berth
//! answers HEAD itself, with the spec's 200, `Content-Length` and
//! `Docker-Content-Digest`: it has already checked the blob's link and size
//! to answer, and a redirect would cost the client a second round trip for
//! no bytes. The spec allows either ("the status codes documented ... are
//! those returned after any redirects have been followed").

use std::path::Path;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{Client, Response, StatusCode};

use crate::garage_s3::{s3_config, Api, Replica, TestImage};
use crate::support::garage::{garage_or_skip, Garage};
use crate::support::{
    basic_auth, error_code, expect_status, random_bytes, sha256_digest, OCI_MANIFEST,
    TEST_BCRYPT_COST,
};

/// How long a signed URL lives (`REDIRECT_VALIDITY`, 20 min), as the
/// presigned query states it.
const EXPIRES_SECS: &str = "1200";

/// A client that does not follow redirects (so a test sees the 307), with
/// `headers` on every request.
fn no_redirect_client(headers: HeaderMap) -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

/// One replica over a fresh prefix of the shared Garage with `redirect =
/// true`, and `adjust` applied; `None` (after a loud SKIPPED line) without
/// Garage.
async fn redirecting_replica(
    adjust: impl FnOnce(&mut berth::Config),
) -> Option<(&'static Garage, Replica)> {
    if !garage_or_skip() {
        return None;
    }
    let garage = Garage::shared();
    let mut s3 = s3_config(garage, &garage.endpoint, &garage.prefix());
    s3.redirect = true;
    let replica = Replica::start(&s3, adjust).await;
    Some((garage, replica))
}

/// The replica's API through a client that does not follow redirects.
fn raw_api(replica: &Replica) -> Api {
    Api::with_client(
        &format!("http://{}", replica.server.addr),
        no_redirect_client(HeaderMap::new()),
    )
}

/// Asserts `resp` is the 307 of a redirected blob GET of `digest`: a
/// Location on the Garage endpoint, in the bucket, at the blob's key under
/// the replica's prefix, signed (SigV4 query) for 20 minutes, and no body.
/// Returns the Location.
async fn expect_redirect(resp: Response, garage: &Garage, prefix: &str, digest: &str) -> String {
    // Not expect_status: its message would print a blob's bytes.
    assert_eq!(
        resp.status(),
        StatusCode::TEMPORARY_REDIRECT,
        "GET {}",
        resp.url()
    );
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let url = reqwest::Url::parse(&location).expect("an absolute Location");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let key = format!(
        "/{}/{prefix}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        garage.bucket,
        &hex[..2]
    );
    assert_eq!(
        format!("{}://{}", url.scheme(), url.authority()),
        garage.endpoint,
        "the URL is on the store: {location}"
    );
    assert_eq!(url.path(), key, "the URL names the blob's key: {location}");
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query.get("X-Amz-Algorithm").map(String::as_str),
        Some("AWS4-HMAC-SHA256"),
        "presigned: {location}"
    );
    assert!(query.contains_key("X-Amz-Signature"), "signed: {location}");
    assert_eq!(
        query.get("X-Amz-Expires").map(String::as_str),
        Some(EXPIRES_SECS)
    );
    assert!(resp.bytes().await.unwrap().is_empty(), "a 307 has no body");
    location
}

/// GET `url` with a fresh client that has no credentials of any kind.
async fn fetch_anonymously(url: &str, headers: HeaderMap) -> Response {
    no_redirect_client(headers).get(url).send().await.unwrap()
}

/// A pushed blob's GET is a 307 to a presigned URL on Garage, and that URL,
/// fetched by a client with no credentials, is exactly the blob: a small
/// one (one PUT to the store), one of three multipart parts, and the empty
/// blob (a zero-byte object). A client that follows redirects (reqwest's
/// default, as docker's) gets the same bytes from Berth's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_get_redirects_to_a_signed_store_url_that_serves_exactly_the_blob() {
    let Some((garage, replica)) = redirecting_replica(|_| {}).await else {
        return;
    };
    let api = raw_api(&replica);
    let prefix = &replica.config.storage.s3.prefix;
    let small = random_bytes(100_000, 1);
    // Over two 8 MiB parts: the blob is a completed multipart upload.
    let multipart = random_bytes(17 * 1024 * 1024 + 3, 2);
    let empty = Vec::new();
    for content in [&small, &multipart, &empty] {
        let digest = api.push_blob("app/web", content).await;
        let resp = api.get(&format!("/v2/app/web/blobs/{digest}")).await;
        let location = expect_redirect(resp, garage, prefix, &digest).await;

        let resp = fetch_anonymously(&location, HeaderMap::new()).await;
        let resp = expect_status(resp, StatusCode::OK).await;
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), content.len(), "{digest}: the store's length");
        assert_eq!(
            sha256_digest(&body),
            digest,
            "the store's bytes are the blob"
        );

        let following = Api::new(&api.base);
        let (status, body) = following
            .get_bytes(&format!("/v2/app/web/blobs/{digest}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sha256_digest(&body), digest, "followed: the blob");
    }
}

/// HEAD of a blob is answered by Berth (200, its size, its digest), not
/// redirected: see the module's note on Distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_head_is_answered_by_berth_without_a_redirect() {
    let Some((_, replica)) = redirecting_replica(|_| {}).await else {
        return;
    };
    let api = raw_api(&replica);
    let content = random_bytes(12_345, 3);
    let digest = api.push_blob("app/web", &content).await;
    let resp = api.head(&format!("/v2/app/web/blobs/{digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(resp.headers().get(LOCATION).is_none());
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        content.len().to_string()
    );
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    // The same blob's GET is redirected: HEAD's answer is a choice, not
    // redirect being off.
    let resp = api.get(&format!("/v2/app/web/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
}

/// A blob that does not exist, and one that exists in the bucket but is not
/// linked into the repository asked, are 404 `BLOB_UNKNOWN`: visibility is
/// decided by Berth before any URL is signed, so a signed URL never leaks a
/// blob across repositories, and a missing one is not a redirect to the
/// store's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unlinked_blob_is_404_not_a_redirect() {
    let Some((_, replica)) = redirecting_replica(|_| {}).await else {
        return;
    };
    let api = raw_api(&replica);
    let missing = sha256_digest(b"never pushed");
    let pushed = api.push_blob("app/web", b"only in app/web").await;
    for path in [
        format!("/v2/app/web/blobs/{missing}"),
        format!("/v2/app/other/blobs/{pushed}"),
    ] {
        let resp = api.get(&path).await;
        assert!(resp.headers().get(LOCATION).is_none(), "{path}: no URL");
        let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(error_code(resp).await, "BLOB_UNKNOWN", "{path}");
        let resp = api.head(&path).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "HEAD {path}");
        assert!(
            resp.headers().get(LOCATION).is_none(),
            "HEAD {path}: no URL"
        );
    }
    // Where it is linked, the same blob is redirected: the 404s above are
    // not redirect being off.
    let resp = api.get(&format!("/v2/app/web/blobs/{pushed}")).await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
}

/// Manifests are served by Berth, by tag and by digest, GET and HEAD: never
/// redirected (they are small, cached, and carry the media type and digest
/// headers a client checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_get_is_never_redirected() {
    let Some((_, replica)) = redirecting_replica(|_| {}).await else {
        return;
    };
    let api = raw_api(&replica);
    let image = TestImage::new("redirect", &[b"a layer"]);
    api.push_image("app/web", "v1", &image).await;
    for reference in ["v1", image.digest.as_str()] {
        let path = format!("/v2/app/web/manifests/{reference}");
        let resp = api
            .client
            .get(api.url(&path))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get(LOCATION).is_none(), "{path}");
        let resp = expect_status(resp, StatusCode::OK).await;
        assert_eq!(
            resp.headers()["docker-content-digest"].to_str().unwrap(),
            image.digest
        );
        assert_eq!(resp.bytes().await.unwrap(), image.manifest, "{path}");
        let resp = api
            .client
            .head(api.url(&path))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {path}");
        assert!(resp.headers().get(LOCATION).is_none(), "HEAD {path}");
    }
    // The image's layer is redirected: manifests are served by a choice,
    // not because redirect is off.
    let (layer, _) = &image.blobs[1];
    let resp = api.get(&format!("/v2/app/web/blobs/{layer}")).await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
}

/// A 307 keeps the method and the request's headers: a client re-sends its
/// Range to the store, which honours it (206, the slice, `Content-Range`
/// over the whole size). Berth redirects before looking at the range, so
/// a range past the end is the store's 416. A client that follows
/// redirects gets the same 206 through Berth's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_get_is_redirected_and_the_store_serves_the_range() {
    let Some((garage, replica)) = redirecting_replica(|_| {}).await else {
        return;
    };
    let api = raw_api(&replica);
    let prefix = &replica.config.storage.s3.prefix;
    let content = random_bytes(1_000_000, 4);
    let digest = api.push_blob("app/web", &content).await;
    let path = format!("/v2/app/web/blobs/{digest}");
    let range = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, value.parse().unwrap());
        headers
    };
    let size = content.len();

    for (asked, start, end) in [
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=999000-", 999_000, size - 1),
        ("bytes=-10", size - 10, size - 1),
    ] {
        let resp = api
            .client
            .get(api.url(&path))
            .headers(range(asked))
            .send()
            .await
            .unwrap();
        let location = expect_redirect(resp, garage, prefix, &digest).await;
        let resp = fetch_anonymously(&location, range(asked)).await;
        let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
        assert_eq!(
            resp.headers()[CONTENT_RANGE].to_str().unwrap(),
            format!("bytes {start}-{end}/{size}"),
            "{asked}"
        );
        let body = resp.bytes().await.unwrap();
        assert!(body == content[start..=end], "{asked}: the slice");

        let resp = Client::new()
            .get(api.url(&path))
            .headers(range(asked))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::PARTIAL_CONTENT).await;
        let body = resp.bytes().await.unwrap();
        assert!(body == content[start..=end], "{asked} followed: the slice");
    }

    let past_end = format!("bytes={size}-");
    let resp = api
        .client
        .get(api.url(&path))
        .headers(range(&past_end))
        .send()
        .await
        .unwrap();
    let location = expect_redirect(resp, garage, prefix, &digest).await;
    let resp = fetch_anonymously(&location, range(&past_end)).await;
    assert_eq!(
        resp.status(),
        StatusCode::RANGE_NOT_SATISFIABLE,
        "the store refuses a range past the end"
    );
}

/// The `[auth]` table: bob may pull and push `app/*`, carol is a user with
/// no grant there.
fn auth_config(htpasswd: &Path) -> berth::auth::AuthConfig {
    let mut auth: berth::auth::AuthConfig = toml::from_str(
        r#"
        [[rules]]
        repositories = ["app/*"]
        users = { bob = ["pull", "push"] }
        "#,
    )
    .unwrap();
    auth.htpasswd = Some(htpasswd.to_path_buf());
    auth
}

/// With auth on, a blob GET (and HEAD) without `pull` is refused before
/// any URL is signed: anonymous gets 401 with a challenge, carol (no grant)
/// 403 `DENIED`, and neither response holds a Location or a signature.
/// bob gets the 307, and the URL works without his credentials (which a
/// client must not send to another host, and reqwest does not: a client
/// holding them and following the redirect gets the blob too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_caller_without_pull_gets_401_or_403_and_never_a_url() {
    let users = tempfile::tempdir().unwrap();
    let htpasswd = users.path().join("htpasswd");
    for (user, password) in [("bob", "bob-pw"), ("carol", "carol-pw")] {
        berth::auth::Htpasswd::add_or_update_user(&htpasswd, user, password, TEST_BCRYPT_COST)
            .unwrap();
    }
    let auth = auth_config(&htpasswd);
    let Some((garage, replica)) = redirecting_replica(|c| c.auth = Some(auth)).await else {
        return;
    };
    let base = format!("http://{}", replica.server.addr);
    let as_user = |user: &str, password: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, basic_auth(user, password).parse().unwrap());
        headers
    };
    let bob = Api::with_client(&base, no_redirect_client(as_user("bob", "bob-pw")));
    let content = random_bytes(50_000, 5);
    let digest = bob.push_blob("app/web", &content).await;
    let path = format!("/v2/app/web/blobs/{digest}");

    let anonymous = raw_api(&replica);
    let carol = Api::with_client(&base, no_redirect_client(as_user("carol", "carol-pw")));
    for (who, api, want) in [
        ("anonymous", &anonymous, StatusCode::UNAUTHORIZED),
        ("carol", &carol, StatusCode::FORBIDDEN),
    ] {
        for resp in [api.get(&path).await, api.head(&path).await] {
            assert_eq!(resp.status(), want, "{who}");
            assert!(resp.headers().get(LOCATION).is_none(), "{who}: no URL");
            if want == StatusCode::UNAUTHORIZED {
                assert!(resp.headers().contains_key("www-authenticate"), "{who}");
            }
            let body = resp.text().await.unwrap();
            assert!(
                !body.contains("X-Amz") && !body.contains(&garage.endpoint),
                "{who}: the body names no URL: {body}"
            );
        }
    }

    let resp = bob.get(&path).await;
    let location = expect_redirect(resp, garage, &replica.config.storage.s3.prefix, &digest).await;
    let resp = fetch_anonymously(&location, HeaderMap::new()).await;
    let body = expect_status(resp, StatusCode::OK)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&body), digest);

    let following = Client::builder()
        .default_headers(as_user("bob", "bob-pw"))
        .build()
        .unwrap();
    let resp = following.get(format!("{base}{path}")).send().await.unwrap();
    let body = expect_status(resp, StatusCode::OK)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&body), digest, "bob following the redirect");
}
