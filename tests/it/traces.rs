//! OpenTelemetry traces from the real binary to an OTLP/HTTP (JSON)
//! receiver on loopback: request spans with the storage calls beneath them,
//! a caller's `traceparent` continued; and with `[traces]` unset, not one
//! request to a collector, even with the OTLP environment set.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// An OTLP/HTTP receiver: the JSON bodies posted to `/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).expect("OTLP JSON"));
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), bodies)
}

/// A span as the test reads it.
#[derive(Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Value,
}

fn spans(bodies: &[Value]) -> Vec<Span> {
    let mut found = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().unwrap() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some(Value::from("berth")));
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    found.push(Span {
                        name: span["name"].as_str().unwrap().to_owned(),
                        trace_id: span["traceId"].as_str().unwrap().to_owned(),
                        span_id: span["spanId"].as_str().unwrap().to_owned(),
                        parent: span["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        attributes: span["attributes"].clone(),
                    });
                }
            }
        }
    }
    found
}

fn config_file(dir: &std::path::Path, traces: &str) -> std::path::PathBuf {
    let path = dir.join("berth.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{traces}",
            dir.join("data")
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn requests_and_their_storage_calls_are_exported_as_one_trace_continuing_the_callers() {
    let (endpoint, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // An inventory soon after the start: background work to find a trace of.
    let config = config_file(
        dir.path(),
        &format!(
            "[traces]\notlp_endpoint = {endpoint:?}\n[metrics]\ninventory_interval = \"200ms\"\n"
        ),
    );
    let served = ServeProcess::start(&["--config", config.to_str().unwrap()], &[]);
    let client = new_client();
    let blob = random_bytes(5000, 1);
    let digest = sha256_digest(&blob);
    let resp = client
        .post(served.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    // A caller with a trace of its own.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = client
        .get(served.url(&format!("/v2/app/blobs/{digest}")))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), blob.len());
    // Once the first inventory has ended (it shows in the metrics)...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client.get(served.url("/metrics")).send().await.unwrap();
        if text
            .text()
            .await
            .unwrap()
            .contains("berth_storage_inventory_timestamp_seconds")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no inventory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...SIGTERM: the server sends what it still has batched as it stops.
    served.terminate();
    let mut served = served;
    let _ = tokio::task::spawn_blocking(move || served.child.wait()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = spans(&bodies.lock().unwrap());
    while !found.iter().any(|s| s.name == "GET blob") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = spans(&bodies.lock().unwrap());
    }
    let pull = found
        .iter()
        .find(|s| s.name == "GET blob")
        .unwrap_or_else(|| panic!("no GET blob span in {found:#?}"));
    assert_eq!(pull.trace_id, trace_id, "the caller's trace continued");
    assert_eq!(pull.parent, caller_span);
    assert!(
        pull.attributes
            .to_string()
            .contains("http.response.status_code"),
        "{}",
        pull.attributes
    );
    let push = found
        .iter()
        .find(|s| s.name == "POST upload")
        .expect("a POST upload span");
    // Storage calls are spans beneath their request's.
    let beneath = |request: &Span| {
        found
            .iter()
            .filter(|s| s.trace_id == request.trace_id && s.name.starts_with("storage."))
            .count()
    };
    assert!(beneath(push) >= 1, "{found:#?}");
    assert!(beneath(pull) >= 1, "{found:#?}");
    for request in [push, pull] {
        assert!(found
            .iter()
            .filter(|s| s.trace_id == request.trace_id && s.name.starts_with("storage."))
            .all(|s| !s.parent.is_empty()));
    }
    // Background work is a trace of its own, storage calls beneath it.
    let inventory = found
        .iter()
        .find(|s| s.name == "lifecycle.inventory")
        .expect("the inventory at the start");
    assert!(inventory.parent.is_empty());
    assert!(found
        .iter()
        .any(|s| s.trace_id == inventory.trace_id && s.name.starts_with("storage.list")));
    assert_ne!(push.trace_id, pull.trace_id);
    assert!(!push.span_id.is_empty());
}

#[tokio::test]
async fn without_a_traces_table_no_request_ever_goes_to_a_collector() {
    let (endpoint, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    // Even the standard OTLP variables do not turn it on.
    let served = ServeProcess::start(
        &["--config", config.to_str().unwrap()],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                endpoint.trim_end_matches("/v1/traces"),
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ],
    );
    let client = new_client();
    for _ in 0..5 {
        let resp = client.get(served.url("/v2/")).send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
    }
    served.terminate();
    let mut served = served;
    let _ = tokio::task::spawn_blocking(move || served.child.wait()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bodies.lock().unwrap().is_empty());
}
