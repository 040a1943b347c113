//! The authority a request names, over real sockets: HTTP/1.1 without
//! `Host`, with two, or with an invalid one is 400 on every route (JSON
//! where the route speaks it); HTTP/1.0 may omit it; an absolute-form target
//! and HTTP/2's `:authority` are validated the same way, and a `Host` beside
//! `:authority` must agree; a trusted proxy's forwarded host is used only
//! when valid. Whatever a client writes there, the token realm it gets back
//! is a URL of the host it named and nothing else. Raw requests, since
//! reqwest always sends one good `Host`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn start() -> TestRegistry {
    start_with_extra("").await
}

/// Bearer challenges (the realm is derived from the request), and `extra`
/// in the `[auth]` table.
async fn start_with_extra(extra: &str) -> TestRegistry {
    let table = format!("signing_key = \"{SIGNING_KEY}\"\n{extra}");
    TestRegistry::start_with_auth(&[("bob", "bob-pw")], &table).await
}

/// A response read off the wire.
struct Raw {
    status: u16,
    /// Status line and headers, as sent.
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` (which ends the connection: `Connection: close` or
/// HTTP/1.0) on a new connection and reads the response to the end.
async fn raw(addr: SocketAddr, request: &str) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET target HTTP/1.1` with the given `Host` lines.
fn get_with_hosts(target: &str, hosts: &[&str]) -> String {
    let hosts: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
    format!("GET {target} HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n")
}

const ROUTES: &[&str] = &[
    "/v2/",
    "/v2/team/app/tags/list",
    "/v2/team/app/blobs/uploads/",
    "/auth/token?service=berth",
    "/healthz",
    "/no/such/route",
];

/// 400 in the form of `target`'s route.
fn assert_refused(resp: &Raw, target: &str, what: &str) {
    assert_eq!(resp.status, 400, "{what} {target}: {}", resp.head);
    assert!(resp.header("www-authenticate").is_none(), "{what} {target}");
    if target.starts_with("/v2/") {
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(
            body["errors"][0]["code"], "PARAMETER_INVALID",
            "{what} {target}"
        );
    } else if target.starts_with("/auth/token") {
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["error"], "invalid_request", "{what} {target}");
    } else {
        assert!(resp.body.contains("Host"), "{what} {target}: {}", resp.body);
    }
}

#[tokio::test]
async fn http11_without_a_host_or_with_two_is_400_on_every_route() {
    let registry = start().await;
    let addr = registry.addr;
    for target in ROUTES {
        let missing = raw(addr, &get_with_hosts(target, &[])).await;
        assert_refused(&missing, target, "no Host");
        let two = raw(addr, &get_with_hosts(target, &["a.example", "a.example"])).await;
        assert_refused(&two, target, "two Hosts");
        let two = raw(addr, &get_with_hosts(target, &["a.example", "b.example"])).await;
        assert_refused(&two, target, "two different Hosts");
        // The same request with one Host is routed.
        let one = raw(addr, &get_with_hosts(target, &["registry.example"])).await;
        assert_ne!(one.status, 400, "one Host {target}: {}", one.head);
    }
}

/// Finding 7's cases and their kin: userinfo, a path, a quote, spaces, bad
/// ports, a broken IPv6 literal. None is answered with a challenge, so none
/// reaches a realm; a valid host does, exactly.
#[tokio::test]
async fn an_invalid_host_is_400_and_never_reaches_the_realm() {
    let registry = start().await;
    let addr = registry.addr;
    for host in [
        "registry.local@evil.example",
        "evil.example/steal?x=",
        "a\" b",
        "evil.example, registry.local",
        "evil.example:99999",
        "evil.example:",
        "[::1",
        "evil%2eexample",
    ] {
        for target in ROUTES {
            let resp = raw(addr, &get_with_hosts(target, &[host])).await;
            assert_refused(&resp, target, host);
            assert!(
                !resp.head.contains("evil"),
                "{host} {target}: {}",
                resp.head
            );
        }
    }
    for (host, realm) in [
        (
            "registry.local:5000",
            "http://registry.local:5000/auth/token",
        ),
        ("[::1]:5000", "http://[::1]:5000/auth/token"),
        ("10.1.2.3", "http://10.1.2.3/auth/token"),
    ] {
        let resp = raw(addr, &get_with_hosts("/v2/", &[host])).await;
        assert_eq!(resp.status, 401, "{host}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some(format!(r#"Bearer realm="{realm}",service="berth""#).as_str())
        );
    }
}

#[tokio::test]
async fn http10_may_omit_host_but_not_send_a_bad_one() {
    let registry = start().await;
    let addr = registry.addr;
    let resp = raw(addr, "GET /v2/ HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 401, "{}", resp.head);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Bearer realm="http://localhost/auth/token",service="berth""#)
    );
    let resp = raw(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    let resp = raw(addr, "GET /v2/ HTTP/1.0\r\nHost: a@evil.example\r\n\r\n").await;
    assert_refused(&resp, "/v2/", "HTTP/1.0 with a bad Host");
}

/// RFC 9112 §3.2.2: an absolute-form target's authority is the one used
/// (hyper hands it over in the URI); it is validated like `Host`, and
/// `Host` must still be there and valid.
#[tokio::test]
async fn an_absolute_form_target_names_the_authority_and_is_validated_too() {
    let registry = start().await;
    let addr = registry.addr;
    let resp = raw(
        addr,
        &get_with_hosts(
            "http://registry.example:5000/v2/",
            &["registry.example:5000"],
        ),
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.head);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Bearer realm="http://registry.example:5000/auth/token",service="berth""#)
    );
    let userinfo = "http://registry.local@evil.example/v2/";
    let resp = raw(addr, &get_with_hosts(userinfo, &["registry.local"])).await;
    assert_refused(&resp, "/v2/", "userinfo in the target");
    let resp = raw(addr, &get_with_hosts("http://registry.example/v2/", &[])).await;
    assert_refused(&resp, "/v2/", "absolute form without Host");
}

/// One HTTP/2 (h2c, prior knowledge) request with `uri` and, if given, a
/// `Host` header: its status and challenge, or `None` if the server reset
/// the stream instead of answering.
async fn h2_get(addr: SocketAddr, uri: &str, host: Option<&str>) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::get(uri);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let resp = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    resp.into_body().collect().await.unwrap();
    Some((status, challenge))
}

#[tokio::test]
async fn http2_authority_is_validated_and_a_host_beside_it_must_agree() {
    let registry = start().await;
    let addr = registry.addr;
    let challenge = r#"Bearer realm="http://registry.example/auth/token",service="berth""#;
    let ok = Some((401, challenge.to_owned()));
    assert_eq!(h2_get(addr, "http://registry.example/v2/", None).await, ok);
    let same = Some("REGISTRY.example");
    assert_eq!(h2_get(addr, "http://registry.example/v2/", same).await, ok);
    let other = Some("evil.example");
    let resp = h2_get(addr, "http://registry.example/v2/", other).await;
    assert_eq!(resp, Some((400, String::new())));
    // Userinfo in :authority (the h2 layer hands it over as it came).
    let userinfo = h2_get(addr, "http://registry.local@evil.example/v2/", None).await;
    assert_eq!(userinfo, Some((400, String::new())));
}

/// `X-Forwarded-Host` from a trusted proxy names the realm's host only when
/// valid; an invalid one is ignored (the request's own host is used).
#[tokio::test]
async fn a_trusted_proxys_forwarded_host_is_used_only_when_valid() {
    let registry = start_with_extra(r#"trusted_proxies = ["127.0.0.1"]"#).await;
    let client = reqwest::Client::new();
    let own = format!(
        r#"Bearer realm="http://{}/auth/token",service="berth""#,
        registry.addr
    );
    for forwarded in [
        "registry.local@evil.example",
        "evil.example/steal?x=",
        "a\" b",
    ] {
        let resp = client
            .get(registry.url("/v2/"))
            .header("x-forwarded-host", forwarded)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{forwarded}");
        assert_eq!(header_str(&resp, "www-authenticate"), own, "{forwarded}");
    }
    let resp = client
        .get(registry.url("/v2/"))
        .header("x-forwarded-host", "registry.example:8443")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_str(&resp, "www-authenticate"),
        r#"Bearer realm="https://registry.example:8443/auth/token",service="berth""#
    );
}

/// Without access control the check runs all the same.
#[tokio::test]
async fn the_check_runs_without_access_control_too() {
    let registry = TestRegistry::start().await;
    let addr = registry.addr;
    let resp = raw(addr, &get_with_hosts("/v2/", &[])).await;
    assert_refused(&resp, "/v2/", "no Host, no auth");
    let resp = raw(addr, &get_with_hosts("/v2/", &["registry.example"])).await;
    assert_eq!(resp.status, 200);
}
