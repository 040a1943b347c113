//! The whole server under fuzzed requests (issue 12): arbitrary methods,
//! `/v2/` paths, queries, headers (`Range`, `Content-Range`, `Content-Type`,
//! `Authorization`) and bodies, written as raw HTTP/1.1 on a real loopback
//! socket, so hyper, the router, access control and the handlers all see
//! them. A request never gets a 5xx or a dropped connection (a panicking
//! handler), every JSON error names a spec code, and, with access control
//! on, a client without valid credentials changes nothing: the image pushed
//! before reads back the same afterwards.
//!
//! The seeds, mutations and `BERTH_FUZZ_CASES` are the unit fuzz tests'
//! (`src/oci/fuzzing.rs`, included here as a module); the path seeds are
//! `tests/fuzz/corpus/route/` plus the paths of what the set-up pushed.

#[path = "../../src/oci/fuzzing.rs"]
#[allow(dead_code)]
mod fuzzing;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::*;

/// The spec's error codes and Berth's own (`src/oci/error.rs`).
const CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "RANGE_INVALID",
    "PAGINATION_NUMBER_INVALID",
    "PARAMETER_INVALID",
];

const ADMIN: &str = "fuzz-admin";
/// Not in the corpus: the fuzzer never holds valid credentials.
const ADMIN_PASSWORD: &str = "b0c8e1f5-not-a-seed";

/// One fuzzed request.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query, escaped only where HTTP/1.1's request line must be.
    target: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }
}

/// A response: status, headers (names lowercased), body.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// A raw HTTP/1.1 exchange on a fresh connection: the status and, when the
/// response says its length, the body. `None` when the server closed the
/// connection without an answer.
fn exchange(addr: SocketAddr, request: &Request) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n",
        request.method, request.target
    )
    .into_bytes();
    for (name, value) in &request.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        // Controls other than tab end the request at hyper (400), before
        // the application; what is left is any value a client can send.
        head.extend(
            value
                .iter()
                .filter(|&&b| b == b'\t' || !b.is_ascii_control()),
        );
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", request.body.len()).as_bytes());
    // The server may answer (and close) before reading a refused body.
    let _ = stream
        .write_all(&head)
        .and_then(|()| stream.write_all(&request.body));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, response[split + 4..].to_vec()))
}

/// Percent-encodes what a URI cannot carry (RFC 3986: controls, spaces,
/// non-ASCII, `#`, `"`, `<`, `\`, …), keeping the rest, `%` and `..`
/// included: hyper refuses the others before any handler runs.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(&["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"][..]).prop_map(str::to_owned),
        1 => proptest::sample::select(&["OPTIONS", "TRACE", "PROPFIND", "get", "CONNECT"][..]).prop_map(str::to_owned),
    ]
}

fn header_value(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    fuzzing::bytes(target)
}

fn request(
    paths: Vec<String>,
    authorization: BoxedStrategy<Vec<u8>>,
) -> impl Strategy<Value = Request> {
    let known = proptest::sample::select(paths.clone());
    let path = prop_oneof![
        3 => fuzzing::bytes("route").prop_map(|rest| format!("/v2/{}", escape(&rest))),
        2 => known.clone(),
        3 => proptest::sample::select(paths.clone())
            .prop_flat_map(|p| fuzzing::mutated(p.into_bytes()))
            .prop_map(|p| escape(&p)),
        1 => (proptest::sample::select(paths), any::<proptest::sample::Index>(), fuzzing::bytes("route"))
            .prop_map(|(p, at, tail)| { let cut = at.index(p.len() + 1); format!("{}{}", &p[..cut], escape(&tail)) }),
    ];
    let query = proptest::option::of(fuzzing::bytes("query").prop_map(|q| escape(&q)));
    let content_type = prop_oneof![
        proptest::sample::select(
            &[
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                DOCKER_MANIFEST_LIST,
                "application/octet-stream",
                "application/json"
            ][..]
        )
        .prop_map(|t| t.as_bytes().to_vec()),
        header_value("manifest"),
    ];
    let headers = (
        proptest::option::of(header_value("range")),
        proptest::option::of(header_value("content_range")),
        proptest::option::of(content_type),
        proptest::option::of(authorization),
    )
        .prop_map(|(range, content_range, content_type, authorization)| {
            [
                ("Range", range),
                ("Content-Range", content_range),
                ("Content-Type", content_type),
                ("Authorization", authorization),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect::<Vec<_>>()
        });
    let body = prop_oneof![
        Just(Vec::new()),
        fuzzing::bytes("manifest"),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    (method(), path, query, headers, body).prop_map(|(method, path, query, headers, body)| {
        Request {
            method,
            target: match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            },
            headers,
            body,
        }
    })
}

/// No 5xx, an answer to every request, JSON errors with known codes.
fn check_response(request: &Request, response: Option<Response>) -> Result<u16, TestCaseError> {
    let (status, headers, body) =
        response.ok_or_else(|| TestCaseError::fail("no response (did a handler panic?)"))?;
    prop_assert!(status < 500, "{} for {:?}", status, request);
    let json = headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("application/json"));
    // The token endpoint answers in OAuth2's error format, not the registry's.
    let registry_api = request.target.starts_with("/v2");
    if json && registry_api && status >= 400 && request.method != "HEAD" {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("error body is not JSON: {e}")))?;
        let code = value["errors"][0]["code"].as_str().unwrap_or_default();
        prop_assert!(CODES.contains(&code), "code {:?} for {:?}", code, request);
    }
    Ok(status)
}

/// The paths of a pushed image and an open upload session, for the fuzzer to
/// start from (random paths rarely name anything that exists).
fn known_paths(
    name: &str,
    manifest_digest: &str,
    layer_digest: &str,
    session: &str,
) -> Vec<String> {
    vec![
        "/v2/".to_owned(),
        "/v2/_catalog".to_owned(),
        format!("/v2/{name}/manifests/latest"),
        format!("/v2/{name}/manifests/{manifest_digest}"),
        format!("/v2/{name}/blobs/{layer_digest}"),
        format!("/v2/{name}/blobs/uploads/"),
        session.to_owned(),
        format!("/v2/{name}/tags/list"),
        format!("/v2/{name}/referrers/{manifest_digest}"),
        format!("/v2/{name}/_berth/tags/latest/history"),
        format!("/v2/{name}/_berth/tags/latest/rollback"),
        "/auth/token".to_owned(),
    ]
}

/// 400 requests per server by default. A runner outside `proptest!` knows
/// its source file only if told, and without it persists no failure.
fn runner() -> TestRunner {
    let mut config = fuzzing::config(400);
    config.source_file = Some(file!());
    TestRunner::new(config)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The layer of the image the fuzz tests push first.
const LAYER: &[u8] = b"fuzz layer";

/// Pushes the image `fuzz/app:latest` (of [`LAYER`]) and opens an upload session: the
/// paths of what exists, for the fuzzer to mutate, with the manifest.
fn seed_image(rt: &tokio::runtime::Runtime, registry: &TestRegistry) -> (Vec<u8>, Vec<String>) {
    let (manifest, manifest_digest) = rt.block_on(registry.push_image("fuzz/app", "latest", LAYER));
    let session = rt.block_on(registry.start_upload("fuzz/app"));
    let session = session
        .trim_start_matches(&format!("http://{}", registry.addr))
        .to_owned();
    let paths = known_paths(
        "fuzz/app",
        &manifest_digest,
        &sha256_digest(LAYER),
        &session,
    );
    (manifest, paths)
}

#[test]
fn fuzzed_requests_never_get_a_server_error() {
    let rt = runtime();
    let registry = rt.block_on(TestRegistry::start());
    let (_, paths) = seed_image(&rt, &registry);
    let authorization = header_value("authorization").boxed();
    let addr = registry.addr;
    let mut runner = runner();
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let outcome = runner.run(&request(paths, authorization), |request| {
        let status = check_response(&request, exchange(addr, &request))?;
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The requests reached the handlers, not only the router's refusals.
    let statuses = statuses.into_inner().unwrap();
    let served = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum::<u32>();
    assert!(served > 0, "no request succeeded: {statuses:?}");
    eprintln!(
        "statuses of {} fuzzed requests: {statuses:?}",
        statuses.values().sum::<u32>()
    );
    // And the server still serves.
    let (status, _, _) = exchange(
        addr,
        &Request {
            method: "GET".into(),
            target: "/v2/".into(),
            headers: vec![],
            body: vec![],
        },
    )
    .expect("an answer");
    assert_eq!(status, 200);
    rt.block_on(registry.shutdown()).unwrap();
}

#[test]
fn fuzzed_requests_without_valid_credentials_change_nothing() {
    let rt = runtime();
    let auth = format!("signing_key = \"{SIGNING_KEY}\"\nadmins = [\"{ADMIN}\"]\n[login_limit]\nmax_failures = 1000000\n");
    let mut registry = rt.block_on(TestRegistry::start_with_auth(
        &[(ADMIN, ADMIN_PASSWORD)],
        &auth,
    ));
    registry.client = client_with_authorization(&basic_auth(ADMIN, ADMIN_PASSWORD));
    let (manifest, paths) = seed_image(&rt, &registry);

    // Credentials that are wrong in every way: fuzzed headers, the admin's
    // name with fuzzed passwords, and bearer tokens that are not ours.
    let authorization = prop_oneof![
        header_value("authorization"),
        fuzzing::bytes("authorization").prop_map(|p| basic_auth(
            ADMIN,
            &String::from_utf8_lossy(&p)
        )
        .into_bytes()),
        fuzzing::bytes("token_claims").prop_map(|claims| {
            use base64::Engine;
            let part = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("Bearer eyJhbGciOiJFUzI1NiJ9.{part}.c2ln").into_bytes()
        }),
    ]
    .boxed();
    let addr = registry.addr;
    let mut runner = runner();
    let outcome = runner.run(&request(paths, authorization), |request| {
        let status = check_response(&request, exchange(addr, &request))?;
        if request.is_write() && !request.target.starts_with("/auth/") {
            prop_assert!(
                !(200..300).contains(&status),
                "{} for {:?}",
                status,
                request
            );
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // What the admin pushed is all there, unchanged.
    let resp = rt.block_on(get(&registry, "/v2/fuzz/app/manifests/latest"));
    let resp = rt.block_on(expect_status(resp, reqwest::StatusCode::OK));
    assert_eq!(
        rt.block_on(resp.bytes()).unwrap().as_ref(),
        manifest.as_slice()
    );
    assert_eq!(rt.block_on(registry.tags("fuzz/app")), ["latest"]);
    let resp = rt.block_on(get(
        &registry,
        &format!("/v2/fuzz/app/blobs/{}", sha256_digest(LAYER)),
    ));
    let resp = rt.block_on(expect_status(resp, reqwest::StatusCode::OK));
    assert_eq!(rt.block_on(resp.bytes()).unwrap().as_ref(), LAYER);
    rt.block_on(catalog_settled(&registry, &registry.client, &["fuzz/app"]));
    rt.block_on(registry.shutdown()).unwrap();
}

/// What the fuzzing found, over HTTP: each input now gets the spec's status
/// and error code (before: a stored non-JSON manifest, a dropped connection,
/// a 206 for a header RFC 9110 says to ignore, a number with a `+`).
#[tokio::test]
async fn what_the_fuzzing_found_gets_the_spec_answers() {
    let registry = TestRegistry::start().await;
    let layer = b"fuzz layer".to_vec();
    let (_, _) = registry.push_image("fuzz/app", "latest", &layer).await;

    // Invalid UTF-8 in a field nothing reads: not JSON, refused.
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/manifest");
    let body = std::fs::read(corpus.join("regression-invalid-utf8-in-unknown-field.json")).unwrap();
    let resp = registry
        .put_manifest("fuzz/app", "bad", OCI_INDEX, &body)
        .await;
    let resp = expect_status(resp, reqwest::StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");

    // A chunk whose length no u64 holds (its Content-Length is 1): 416, not
    // a dropped connection.
    let session = registry.start_upload("fuzz/app").await;
    let resp = registry
        .client
        .patch(&session)
        .header("Content-Range", "0-18446744073709551615")
        .body(vec![1u8])
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, reqwest::StatusCode::RANGE_NOT_SATISFIABLE).await;
    assert_eq!(error_code(resp).await, "RANGE_INVALID");
    let resp = registry
        .client
        .patch(&session)
        .header("Content-Range", "+0-0")
        .body(vec![1u8])
        .send()
        .await
        .unwrap();
    expect_status(resp, reqwest::StatusCode::RANGE_NOT_SATISFIABLE).await;

    // `bytes=+1-0` is not RFC 9110's syntax: ignored, the whole blob.
    let resp = registry
        .client
        .get(registry.url(&format!("/v2/fuzz/app/blobs/{}", sha256_digest(&layer))))
        .header("Range", "bytes=+1-0")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, reqwest::StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), layer.as_slice());

    // `n=+5` is not a number of the spec's.
    let resp = get(&registry, "/v2/fuzz/app/tags/list?n=%2B5").await;
    let resp = expect_status(resp, reqwest::StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PAGINATION_NUMBER_INVALID");
    let resp = get(&registry, "/v2/fuzz/app/tags/list?n=5").await;
    expect_status(resp, reqwest::StatusCode::OK).await;
}
