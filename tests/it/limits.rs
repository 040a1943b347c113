//! `[limits]`: a request rate per client and a cap on uploads received at
//! once, each answered 429 `TOOMANYREQUESTS` with `Retry-After`.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn get_from(
    registry: &TestRegistry,
    path: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = registry.client.get(registry.url(path));
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    request.send().await.unwrap()
}

async fn expect_too_many(resp: reqwest::Response) {
    let resp = expect_status(resp, StatusCode::TOO_MANY_REQUESTS).await;
    let retry_after: u64 = header_str(&resp, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
}

#[tokio::test]
async fn a_client_over_its_rate_is_answered_429_until_its_retry_after() {
    // One request a second, three at once: the fourth within the second is
    // over, however loaded the machine.
    let registry = TestRegistry::start_one_with(|c| {
        c.limits.requests_per_second = Some(1);
        c.limits.burst = Some(3);
    })
    .await;
    for _ in 0..3 {
        expect_status(get_from(&registry, "/v2/", None).await, StatusCode::OK).await;
    }
    expect_too_many(get_from(&registry, "/v2/", None).await).await;
    // A forwarding header from a peer nobody trusts changes nothing.
    expect_too_many(get_from(&registry, "/v2/", Some("10.1.2.3")).await).await;
    // Probes and scrapes are never limited.
    expect_status(get_from(&registry, "/healthz", None).await, StatusCode::OK).await;
    let metrics = scrape(&registry).await;
    assert_eq!(
        metrics.get("berth_rate_limited_total{reason=\"requests\"}"),
        2.0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_status(get_from(&registry, "/v2/", None).await, StatusCode::OK).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate() {
    let registry = TestRegistry::start_one_with_auth_and(
        |c| {
            c.limits.requests_per_second = Some(1);
            c.limits.burst = Some(2);
        },
        &[("alice", "alice-pw")],
        r#"
        challenge = "basic"
        trusted_proxies = ["127.0.0.1/32"]
        [[rules]]
        repositories = ["*"]
        anonymous = ["pull"]
        "#,
    )
    .await;
    let catalog = "/v2/app/tags/list";
    for _ in 0..2 {
        let resp = get_from(&registry, catalog, Some("10.0.0.1")).await;
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    expect_too_many(get_from(&registry, catalog, Some("10.0.0.1")).await).await;
    let other = get_from(&registry, catalog, Some("10.0.0.2")).await;
    assert_ne!(other.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn uploads_over_max_uploads_wait_their_turn_and_the_rest_is_served() {
    let registry = TestRegistry::start_one_with(|c| c.limits.max_uploads = Some(1)).await;
    let content = random_bytes(200_000, 5);
    let location = registry.start_upload("app").await;
    let path = location
        .trim_start_matches(&format!("http://{}", registry.addr))
        .to_owned();
    // One upload being received: its body half sent.
    let mut stream = TcpStream::connect(registry.addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        content.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&content[..100_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another upload: refused for now; anything else: served.
    let second = registry
        .client
        .post(registry.url("/v2/other/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    expect_too_many(second).await;
    expect_status(get_from(&registry, "/v2/", None).await, StatusCode::OK).await;
    // The first goes on and ends; then the next is taken.
    stream.write_all(&content[100_000..]).await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 202");
    drop(stream);
    let mut taken = false;
    for _ in 0..50 {
        let resp = registry
            .client
            .post(registry.url("/v2/other/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::ACCEPTED {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken, "the next upload was never taken");
    let metrics = scrape(&registry).await;
    assert_eq!(
        metrics.get("berth_rate_limited_total{reason=\"uploads\"}"),
        1.0
    );
}

/// Hundreds of slowloris connections (a head trickled a byte at a time,
/// never finished) and more arriving all the time, against a cap of 32
/// connections and a long header timeout: the cap sheds them, and a normal
/// client pushes and pulls all along.
#[tokio::test]
async fn a_slowloris_flood_does_not_keep_a_normal_client_out() {
    let registry = TestRegistry::start_one_with(|c| {
        c.server.max_connections = Some(32);
        c.server.header_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = registry.addr;
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..300 {
            if let Ok(mut stream) = TcpStream::connect(addr).await {
                let _ = stream.write_all(b"GET /v2/ HTTP/1.1\r\nX-Slow: ").await;
                held.push(stream);
            }
            // Every held connection trickles one more byte now and then.
            if i % 10 == 0 {
                for stream in &mut held {
                    let _ = stream.write_all(b"a").await;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let layer = random_bytes(10_000, 100 + round);
        let (_, digest) = registry
            .push_image("app", &format!("r{round}"), &layer)
            .await;
        let resp = get(&registry, &format!("/v2/app/manifests/{digest}")).await;
        expect_status(resp, StatusCode::OK).await;
    }
    assert!(
        !flood.is_finished(),
        "the flood ended before the client's work"
    );
    let held = flood.await.unwrap();
    assert!(
        held.len() > 32,
        "the flood opened {} connections",
        held.len()
    );
}
