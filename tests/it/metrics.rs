//! `GET /metrics`: a scripted session against a real server, then a scrape
//! over its socket, checked series by series.

use std::time::{Duration, Instant};

use berth::registry::lifecycle::UntaggedManifests;
use berth::registry::LifecycleConfig;
use reqwest::StatusCode;

use crate::support::*;

#[tokio::test]
async fn a_scripted_session_is_counted_by_method_route_status_and_bytes() {
    let registry = TestRegistry::start_one_with(|_| {}).await;
    let layer = random_bytes(300_000, 1);
    let (manifest, _) = registry.push_image("team/app", "1", &layer).await;
    let config_size = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["config"]
        ["size"]
        .as_u64()
        .unwrap();
    let layer_digest = sha256_digest(&layer);
    for _ in 0..2 {
        expect_status(
            get(&registry, "/v2/team/app/manifests/1").await,
            StatusCode::OK,
        )
        .await;
    }
    let resp = get(&registry, "/v2/team/app/manifests/missing").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
    let resp = get(&registry, &format!("/v2/team/app/blobs/{layer_digest}")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap().len(), layer.len());

    let m = scrape(&registry).await;
    let requests = |method: &str, route: &str, status: u16| {
        m.get(&format!(
            "berth_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(requests("GET", "manifest", 200), 2.0);
    assert_eq!(requests("GET", "manifest", 404), 1.0);
    assert_eq!(requests("PUT", "manifest", 201), 1.0);
    assert_eq!(requests("POST", "upload", 202), 2.0);
    assert_eq!(requests("PUT", "upload", 201), 2.0);
    assert_eq!(requests("GET", "blob", 200), 1.0);
    let bytes = |family: &str, method: &str, route: &str| {
        m.get(&format!(
            "berth_http_{family}_bytes_total{{method=\"{method}\",route=\"{route}\"}}"
        ))
    };
    // Every body byte, each way: the blob sent (by sendfile on the
    // filesystem: its frames are counted as they pass), the blobs and the
    // manifest received.
    assert_eq!(bytes("sent", "GET", "blob"), layer.len() as f64);
    assert_eq!(
        bytes("received", "PUT", "upload"),
        (layer.len() as u64 + config_size) as f64
    );
    assert_eq!(bytes("received", "PUT", "manifest"), manifest.len() as f64);
    assert_eq!(
        m.get("berth_http_request_duration_seconds_count{method=\"GET\",route=\"manifest\"}"),
        3.0
    );
    assert_eq!(m.get("berth_uploads_in_progress"), 0.0);
    // On the filesystem the push's documents went through the journal.
    let syncs = m.get("berth_journal_syncs_total");
    if crate::support::backend::on_s3() {
        assert_eq!(syncs, 0.0, "no journal on S3");
    } else {
        assert!(syncs >= 1.0, "{syncs}");
        assert!(m.get("berth_journal_records_total") >= syncs);
    }
    // The second pull by tag found the tag's link in the cache.
    assert!(m.get("berth_cache_lookups_total{cache=\"link\",result=\"hit\"}") >= 1.0);
    // A request is counted once its response is ready: the next scrape
    // shows the first.
    let again = scrape(&registry).await;
    assert_eq!(
        again.get("berth_http_requests_total{method=\"GET\",route=\"metrics\",status=\"200\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_lifecycle_run_is_counted_with_what_it_removed() {
    let registry = TestRegistry::start_one_with(|c| {
        c.lifecycle = LifecycleConfig {
            untagged_manifests: UntaggedManifests::Delete,
            history_keep: 0,
            gc_interval: Some(Duration::from_millis(300)),
            gc_grace_period: Duration::from_secs(1),
            ..LifecycleConfig::default()
        }
    })
    .await;
    let layer = random_bytes(100_000, 2);
    let (_, digest) = registry.push_image("app", "old", &layer).await;
    let resp = registry.delete_manifest("app", &digest).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    // The manifest, its config and its layer go once the grace is over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&registry).await;
        if m.get("berth_gc_removed_blobs_total") >= 3.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "never collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m.get("berth_gc_removed_blobs_total"), 3.0);
    assert!(m.get("berth_gc_removed_bytes_total") > layer.len() as f64);
    assert!(m.get("berth_gc_runs_total{result=\"ok\"}") >= 1.0);
    assert_eq!(m.get("berth_gc_runs_total{result=\"error\"}"), 0.0);
    assert!(m.get("berth_gc_duration_seconds_count") >= 1.0);
}

#[tokio::test]
async fn refusals_are_counted_by_reason_and_the_scrape_needs_no_credentials() {
    let registry = TestRegistry::start_one_with_auth(
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        r#"
        challenge = "basic"
        [[rules]]
        repositories = ["team/*"]
        users = { alice = ["pull", "push"], bob = ["pull"] }
        "#,
    )
    .await;
    let anonymous = registry
        .client
        .get(registry.url("/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap();
    expect_status(anonymous, StatusCode::UNAUTHORIZED).await;
    let wrong = registry
        .client
        .get(registry.url("/v2/team/app/tags/list"))
        .basic_auth("alice", Some("not-her-password"))
        .send()
        .await
        .unwrap();
    expect_status(wrong, StatusCode::UNAUTHORIZED).await;
    let denied = registry
        .client
        .post(registry.url("/v2/team/app/blobs/uploads/"))
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    expect_status(denied, StatusCode::FORBIDDEN).await;

    // Scraped without credentials, like `/healthz`.
    let m = scrape(&registry).await;
    let failures =
        |reason: &str| m.get(&format!("berth_auth_failures_total{{reason=\"{reason}\"}}"));
    assert_eq!(failures("anonymous"), 1.0);
    assert_eq!(failures("bad_credentials"), 1.0);
    assert_eq!(failures("denied"), 1.0);
}

#[tokio::test]
async fn metrics_on_a_listener_of_their_own_are_not_served_on_the_main_one() {
    let registry = TestRegistry::start_one_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    expect_status(get(&registry, "/v2/").await, StatusCode::OK).await;
    expect_status(get(&registry, "/metrics").await, StatusCode::NOT_FOUND).await;
    let addr = registry.servers[0]
        .metrics_addr
        .expect("a metrics listener");
    let m = scrape_at(&registry.client, addr).await;
    assert_eq!(
        m.get("berth_http_requests_total{method=\"GET\",route=\"base\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        m.get("berth_http_requests_total{method=\"GET\",route=\"metrics\",status=\"404\"}"),
        1.0
    );

    let off = TestRegistry::start_one_with(|c| c.metrics.enabled = false).await;
    expect_status(get(&off, "/metrics").await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn with_a_token_file_a_scrape_needs_that_bearer_token_on_either_listener() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "s3cr3t-scrape-token\n").unwrap();
    for separate in [false, true] {
        let registry = TestRegistry::start_one_with(|c| {
            c.metrics.token_file = Some(token_file.clone());
            if separate {
                c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
            }
        })
        .await;
        let addr = registry.servers[0].metrics_addr.unwrap_or(registry.addr);
        let url = format!("http://{addr}/metrics");
        let scrape_with = |authorization: Option<&'static str>| {
            let mut request = registry.client.get(&url);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            request.send()
        };
        for refused in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cr3t-scrape-toke"),
            Some("Basic czNjcjN0LXNjcmFwZS10b2tlbg=="),
        ] {
            let resp = scrape_with(refused).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
            assert_eq!(
                header_str(&resp, "www-authenticate"),
                "Bearer realm=\"metrics\""
            );
            assert!(!resp.text().await.unwrap().contains("berth_"));
        }
        let resp = scrape_with(Some("Bearer s3cr3t-scrape-token"))
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::OK).await;
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("berth_auth_failures_total{reason=\"metrics_token\"} 4"),
            "{text}"
        );
        // The registry's own API is as open as before.
        expect_status(get(&registry, "/v2/").await, StatusCode::OK).await;
    }

    // An empty token file is a configuration error, not "no token".
    std::fs::write(&token_file, "\n").unwrap();
    let mut config = berth::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.metrics.token_file = Some(token_file);
    let refused = berth::build_app(&config).await.err().expect("refused");
    assert!(refused.to_string().contains("is empty"), "{refused}");
}

#[tokio::test]
async fn the_stored_gauges_are_an_inventory_of_the_store_taken_in_the_background() {
    let registry = TestRegistry::start_one_with(|c| {
        c.metrics.inventory_interval = Duration::from_millis(200);
    })
    .await;
    let mut bytes = 0;
    for (name, seed) in [("team/app", 3), ("team/other", 4)] {
        let layer = random_bytes(50_000 + seed as usize, seed);
        let (manifest, _) = registry.push_image(name, "1", &layer).await;
        let config_size = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["config"]
            ["size"]
            .as_u64()
            .unwrap();
        bytes += manifest.len() as u64 + config_size + layer.len() as u64;
    }
    // Counted within a few intervals, never on the scrape itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&registry).await;
        if m.get("berth_storage_blobs") == 6.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m.get("berth_storage_blobs_bytes"), bytes as f64);
    assert_eq!(m.get("berth_storage_repositories"), 2.0);
    assert_eq!(m.get("berth_storage_manifests"), 2.0);
    assert!(m.get("berth_storage_inventory_timestamp_seconds") > 1.7e9);
}
