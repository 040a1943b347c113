//! The object store's request metrics (`berth_s3_requests_total`,
//! `berth_s3_request_duration_seconds`) checked against what a real Garage
//! was sent. In a `garage_` module, as every test that needs Garage is:
//! `tests/run.sh` runs those once its Garage build is done.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::garage_s3::{s3_config, Replica};
use crate::support::garage::{garage_or_skip, Garage};
use crate::support::{random_bytes, scrape_at, Scrape};

/// The S3 request a proxy saw, named as `berth_s3_requests_total` names
/// its operation and result (told apart here from the proxy's log, on its
/// own terms: method, query, copy header, presigned URL, status).
fn s3_series(request: &crate::fault_proxy::Logged) -> (String, &'static str) {
    let has = |key: &str| {
        request
            .query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    };
    let operation = match request.method.as_str() {
        "HEAD" => "head",
        "GET" if has("list-type") => "list",
        "GET" => "get",
        "PUT" if has("partNumber") && request.presigned => "upload_part_streamed",
        "PUT" if has("partNumber") => "upload_part",
        "PUT" if request.copy => "copy",
        "PUT" => "put",
        "POST" if has("uploads") => "create_multipart",
        "POST" if has("uploadId") => "complete_multipart",
        "POST" if has("delete") => "delete",
        "DELETE" if has("uploadId") => "abort_multipart",
        "DELETE" => "delete",
        other => panic!(
            "an S3 request Berth does not send: {other} ?{}",
            request.query
        ),
    };
    let result = match request.status.expect("answered") {
        200..=399 => "ok",
        404 => "not_found",
        409 | 412 => "conflict",
        400..=499 => "client_error",
        _ => "server_error",
    };
    (operation.to_owned(), result)
}

/// Every request a replica sent to the store since it started, counted by a
/// proxy between it and Garage, is in `berth_s3_requests_total` under its
/// operation and result, and timed: a workload of pushes (a small blob, a
/// 12 MiB one whose parts are streamed, a chunked one), pulls and misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_by_operation_and_result() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let proxy = crate::fault_proxy::FaultProxy::start(&garage.endpoint).await;
    let s3 = s3_config(garage, &proxy.endpoint(), &garage.prefix());
    let replica = Replica::start(&s3, |_| {}).await;
    let api = &replica.api;
    let name = "counted/app";
    api.push_blob(name, b"small").await;
    let big = random_bytes(12 * 1024 * 1024, 3);
    let big_digest = api.push_blob(name, &big).await;
    let (_, pulled) = api
        .get_bytes(&format!("/v2/{name}/blobs/{big_digest}"))
        .await;
    assert_eq!(pulled.len(), big.len());
    let (status, _) = api
        .get_bytes(&format!("/v2/{name}/manifests/missing"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let image = crate::garage_s3::TestImage::new("counted", &[&random_bytes(100_000, 4)]);
    api.push_image(name, "1", &image).await;
    let (status, _) = api.get_bytes(&format!("/v2/{name}/manifests/1")).await;
    assert_eq!(status, StatusCode::OK);

    // The proxy logs a request when it arrives and its status when Garage
    // answers; Berth counts it once the answer is back in the replica, a
    // moment later, and the replica's background work (its repository index,
    // the inventory) may send more at any time. So read both until they
    // agree with nothing in flight, and show the difference if they never do.
    let counted = |seen: &[crate::fault_proxy::Logged]| {
        let mut expected: BTreeMap<(String, &'static str), f64> = BTreeMap::new();
        for request in seen {
            *expected.entry(s3_series(request)).or_default() += 1.0;
        }
        expected
    };
    let disagreement = |expected: &BTreeMap<(String, &str), f64>, m: &Scrape| {
        let mut differences = Vec::new();
        for ((operation, result), count) in expected {
            let labels = format!("{{operation=\"{operation}\",result=\"{result}\"}}");
            let total = m.get(&format!("berth_s3_requests_total{labels}"));
            let timed = m.get(&format!("berth_s3_request_duration_seconds_count{labels}"));
            if total != *count || timed != *count {
                differences.push(format!(
                    "{operation} {result}: the store saw {count}, counted {total}, timed {timed}"
                ));
            }
        }
        let all = m.sum_of("berth_s3_requests_total", "");
        let seen: f64 = expected.values().sum();
        if all != seen {
            differences.push(format!(
                "the store saw {seen} requests in all, counted {all}"
            ));
        }
        differences
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = loop {
        let before = proxy.requests();
        let m = scrape_at(&api.client, replica.server.addr).await;
        let after = proxy.requests();
        let quiet = before.len() == after.len() && after.iter().all(|r| r.status.is_some());
        let expected = counted(&after);
        let differences = if quiet {
            disagreement(&expected, &m)
        } else {
            vec!["requests still in flight".to_owned()]
        };
        if differences.is_empty() {
            break expected;
        }
        assert!(
            Instant::now() < deadline,
            "the replica's count never agreed with the store's: {differences:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The workload's kinds of request all happened (so each was checked).
    for kind in [
        "put",
        "get",
        "head",
        "list",
        "upload_part_streamed",
        "complete_multipart",
    ] {
        assert!(
            expected.keys().any(|(operation, _)| operation == kind),
            "no {kind} in {expected:?}"
        );
    }
    assert!(expected.keys().any(|(_, result)| *result == "not_found"));
}
