//! HTTPS: Berth with `tls_cert`/`tls_key` serves the API over TLS, HTTP/1.1
//! and HTTP/2 by ALPN, to a real client (curl) that trusts the test CA.

use std::process::Command;

use crate::support::{testdata, TestRegistry};

async fn start_tls() -> TestRegistry {
    TestRegistry::start_with(|config| {
        config.tls_cert = Some(testdata("server.crt"));
        config.tls_key = Some(testdata("server.key"));
    })
    .await
}

/// `curl` over HTTPS trusting only the test CA; returns (HTTP version, status,
/// body). It blocks its thread, so the tests run on a multi-threaded runtime.
fn curl(registry: &TestRegistry, args: &[&str], path: &str) -> (String, String, String) {
    let url = format!("https://localhost:{}{path}", registry.addr.port());
    let out = Command::new("curl")
        .args(["-sS", "-m", "20", "--cacert"])
        .arg(testdata("test-ca.crt"))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", registry.addr.port()),
        ])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status_line) = text.rsplit_once('\n').unwrap();
    let (version, status) = status_line.split_once(' ').unwrap();
    (version.to_owned(), status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_served_over_https_with_http2_negotiated() {
    let registry = start_tls().await;
    let (version, status, body) = curl(&registry, &["--http2"], "/v2/");
    assert_eq!(
        (version.as_str(), status.as_str(), body.as_str()),
        ("2", "200", "{}")
    );
    let (version, status, _) = curl(&registry, &["--http1.1"], "/v2/");
    assert_eq!((version.as_str(), status.as_str()), ("1.1", "200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_pushed_over_https_reads_back() {
    let registry = start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("blob");
    std::fs::write(&content, b"over tls").unwrap();
    let digest = crate::support::sha256_digest(b"over tls");
    let path = format!("/v2/secure/app/blobs/uploads/?digest={digest}");
    let (_, status, _) = curl(
        &registry,
        &[
            "--http2",
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", content.display()),
        ],
        &path,
    );
    assert_eq!(status, "201");
    let (_, status, body) = curl(
        &registry,
        &["--http2"],
        &format!("/v2/secure/app/blobs/{digest}"),
    );
    assert_eq!((status.as_str(), body.as_str()), ("200", "over tls"));
}

/// Plain HTTP to the TLS port is not a TLS record: the server answers with
/// a fatal TLS alert (`decode_error`) and closes, never with HTTP. A server
/// that is down fails this (the connection is refused).
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_tls_port_gets_a_tls_alert_and_no_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let registry = start_tls().await;
    let mut stream = tokio::net::TcpStream::connect(registry.addr)
        .await
        .expect("the TLS server accepts connections");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut reply),
    )
    .await
    .expect("the server closes the connection")
    .unwrap();
    // Content type 21 (alert), TLS 1.2 record version, length 2, level 2
    // (fatal), description 50 (decode_error).
    assert_eq!(reply, [21, 3, 3, 0, 2, 2, 50], "{reply:?}");
}

#[test]
fn a_certificate_without_its_key_is_refused_with_a_message() {
    let config = berth::Config {
        tls_cert: Some(testdata("server.crt")),
        ..berth::Config::default()
    };
    let err = berth::tls_acceptor_config(&config)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("together"), "{err}");
    let config = berth::Config {
        tls_cert: Some(testdata("server.crt")),
        tls_key: Some(testdata("test-ca.crt")),
        ..berth::Config::default()
    };
    let err = berth::tls_acceptor_config(&config)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("test-ca.crt"),
        "names the file at fault: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_realm_offered_over_https_is_https() {
    let registry = TestRegistry::start_with(|config| {
        config.tls_cert = Some(testdata("server.crt"));
        config.tls_key = Some(testdata("server.key"));
        let htpasswd = config.data_dir.join("htpasswd");
        berth::auth::Htpasswd::add_or_update_user(
            &htpasswd,
            "alice",
            "pw",
            crate::support::TEST_BCRYPT_COST,
        )
        .unwrap();
        config.auth = Some(berth::auth::AuthConfig {
            htpasswd: Some(htpasswd),
            ..Default::default()
        });
    })
    .await;
    // Clients follow the realm for their token: an http:// realm on a TLS
    // port would send them to speak plain HTTP to it.
    let (_, status, _) = curl(&registry, &[], "/v2/");
    assert_eq!(status, "401");
    let url = format!("https://localhost:{}/v2/", registry.addr.port());
    let out = Command::new("curl")
        .args(["-sS", "-m", "20", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(testdata("test-ca.crt"))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", registry.addr.port()),
        ])
        .arg(&url)
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let realm = format!(
        "bearer realm=\"https://localhost:{}/auth/token\"",
        registry.addr.port()
    );
    assert!(headers.contains(&realm), "{headers}");
}
