//! CI/CD events: a real HTTP receiver on loopback gets CloudEvents for
//! pushes, tags, deletes and pulls; one that fails for a while gets them
//! again; one that hangs slows no push; a restart with events queued
//! delivers each once, none invented.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use berth::events::{EndpointConfig, EventKind};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Accept,
    /// 503 to every request.
    Fail,
    /// Never answers.
    Hang,
}

/// An event receiver: what it was sent, and how it answers.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// The bytes of each received event, as sent (what a signature covers).
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let receiver = Receiver {
            addr: "127.0.0.1:0".parse().unwrap(),
            received: Arc::default(),
            bodies: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    *state.requests.lock().unwrap() += 1;
                    let behaviour = *state.behaviour.lock().unwrap();
                    match behaviour {
                        Behaviour::Accept => {
                            let event = serde_json::from_slice(&body).expect("a JSON event");
                            state.received.lock().unwrap().push((headers, event));
                            state.bodies.lock().unwrap().push(body.to_vec());
                            AxumStatus::NO_CONTENT
                        }
                        Behaviour::Fail => AxumStatus::SERVICE_UNAVAILABLE,
                        Behaviour::Hang => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, ..receiver }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn events(&self) -> Vec<(HeaderMap, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// The events received, once there are `n` (or after 30 s).
    async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.events().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events()
    }
}

fn endpoint(receiver: &Receiver, toml_extra: &str) -> EndpointConfig {
    toml::from_str(&format!("url = \"{}\"\n{toml_extra}", receiver.url())).unwrap()
}

fn kind_and_subject(event: &Value) -> (String, String) {
    (
        event["type"].as_str().unwrap().to_owned(),
        event["subject"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_push_a_tag_and_a_delete_arrive_in_order_as_signed_cloudevents() {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let config = endpoint(
        &receiver,
        "secret = \"hook-secret\"\nheaders = { X-Team = \"ci\" }",
    );
    let registry = TestRegistry::start_one_with(|c| {
        c.events.source = "https://registry.example".into();
        c.events.endpoints = vec![config];
    })
    .await;
    let (manifest, digest) = registry
        .push_image("team/app", "1.0", &random_bytes(10_000, 1))
        .await;
    // Pulls are not sent unless asked for.
    expect_status(
        get(&registry, "/v2/team/app/manifests/1.0").await,
        StatusCode::OK,
    )
    .await;
    let resp = registry.delete_manifest("team/app", &digest).await;
    expect_status(resp, StatusCode::ACCEPTED).await;

    let events = receiver.wait_for(3).await;
    let kinds: Vec<_> = events.iter().map(|(_, e)| kind_and_subject(e)).collect();
    assert_eq!(
        kinds,
        vec![
            ("dev.berth.manifest.pushed".into(), "team/app:1.0".into()),
            ("dev.berth.tag.updated".into(), "team/app:1.0".into()),
            (
                "dev.berth.manifest.deleted".into(),
                format!("team/app@{digest}")
            ),
        ]
    );
    let (headers, push) = &events[0];
    assert_eq!(push["specversion"], "1.0");
    assert_eq!(push["source"], "https://registry.example");
    assert_eq!(push["data"]["repository"], "team/app");
    assert_eq!(push["data"]["digest"], digest.as_str());
    assert_eq!(push["data"]["tag"], "1.0");
    assert_eq!(
        push["data"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(manifest.len() > 100);
    assert_eq!(headers["x-team"], "ci");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    let ids: std::collections::HashSet<_> = events.iter().map(|(_, e)| e["id"].clone()).collect();
    assert_eq!(ids.len(), 3, "each event its own id");
    // The signature, checked as a receiver would: HMAC-SHA256 of
    // "<t>.<body>" under the shared secret.
    let bodies = receiver.bodies.lock().unwrap().clone();
    for ((headers, _), body) in events.iter().zip(&bodies) {
        let signature = headers["berth-signature"].to_str().unwrap();
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=...,v1=...");
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
    }
}

#[tokio::test]
async fn an_endpoint_gets_the_events_and_repositories_it_asked_for() {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let config = endpoint(&receiver, "events = [\"pull\"]\nrepositories = \"team/*\"");
    assert_eq!(config.events, vec![EventKind::Pull]);
    let registry = TestRegistry::start_one_with(|c| c.events.endpoints = vec![config]).await;
    registry
        .push_image("team/app", "1", &random_bytes(1000, 2))
        .await;
    registry
        .push_image("other/app", "1", &random_bytes(1000, 3))
        .await;
    for name in ["other/app", "team/app", "team/app"] {
        let resp = get(&registry, &format!("/v2/{name}/manifests/1")).await;
        expect_status(resp, StatusCode::OK).await;
    }
    let events = receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kinds: Vec<_> = receiver
        .events()
        .iter()
        .map(|(_, e)| kind_and_subject(e))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("dev.berth.manifest.pulled".into(), "team/app:1".into()),
            ("dev.berth.manifest.pulled".into(), "team/app:1".into()),
        ]
    );
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn an_endpoint_that_fails_for_a_while_gets_each_event_once_it_is_back() {
    let receiver = Receiver::start(Behaviour::Fail).await;
    let config = endpoint(&receiver, "");
    let registry = TestRegistry::start_one_with(|c| c.events.endpoints = vec![config]).await;
    registry
        .push_image("app", "1", &random_bytes(1000, 4))
        .await;
    // Tried and refused at least twice (1 s apart), then taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    while *receiver.requests.lock().unwrap() < 2 {
        assert!(Instant::now() < deadline, "never tried again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.set(Behaviour::Accept);
    let events = receiver.wait_for(2).await;
    let kinds: Vec<_> = events.iter().map(|(_, e)| kind_and_subject(e).0).collect();
    assert_eq!(
        kinds,
        vec!["dev.berth.manifest.pushed", "dev.berth.tag.updated"]
    );
    let metrics = scrape(&registry).await;
    let errors: f64 = metrics.sum_of("berth_events_sent_total", "result=\"error\"");
    assert!(errors >= 2.0, "{errors}");
}

#[tokio::test]
async fn an_endpoint_that_hangs_slows_no_push_and_its_events_wait_in_the_queue() {
    let receiver = Receiver::start(Behaviour::Hang).await;
    let config = endpoint(&receiver, "timeout = \"60s\"");
    let registry = TestRegistry::start_one_with(|c| c.events.endpoints = vec![config]).await;
    // With delivery waiting on the hung endpoint, pushes go on.
    for round in 0..5 {
        let (tag, layer) = (format!("{round}"), random_bytes(1000, round));
        let push = registry.push_image("app", &tag, &layer);
        tokio::time::timeout(Duration::from_secs(20), push)
            .await
            .expect("a push waited for the hung endpoint");
    }
    let metrics = scrape(&registry).await;
    assert_eq!(metrics.sum_of("berth_events_queued", ""), 10.0);
}

#[tokio::test]
async fn events_queued_at_a_restart_are_delivered_after_it_each_once() {
    let receiver = Receiver::start(Behaviour::Fail).await;
    let queue_dir = tempfile::tempdir().unwrap();
    let config = endpoint(&receiver, "");
    let queue = queue_dir.path().to_path_buf();
    let registry = TestRegistry::start_one_with(|c| {
        c.events.endpoints = vec![config];
        c.events.queue_dir = Some(queue);
    })
    .await;
    let mut digests = Vec::new();
    for round in 0..3 {
        let (_, digest) = registry
            .push_image("app", &format!("v{round}"), &random_bytes(1000, 10 + round))
            .await;
        digests.push(digest);
    }
    // The receiver refused everything so far; the registry stops with six
    // events queued and starts again over the same queue.
    let registry = registry.restart().await;
    receiver.set(Behaviour::Accept);
    let events = receiver.wait_for(6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.events().len(), 6, "none invented");
    let mut by_digest: HashMap<String, Vec<String>> = HashMap::new();
    for (_, event) in &events {
        by_digest
            .entry(event["data"]["digest"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["type"].as_str().unwrap().to_owned());
    }
    for digest in &digests {
        assert_eq!(
            by_digest[digest],
            vec!["dev.berth.manifest.pushed", "dev.berth.tag.updated"],
            "{digest}"
        );
    }
    // In the order they happened.
    let tags: Vec<_> = events
        .iter()
        .map(|(_, e)| e["data"]["tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["v0", "v0", "v1", "v1", "v2", "v2"]);
    drop(registry);
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_events_and_counts_them() {
    let receiver = Receiver::start(Behaviour::Fail).await;
    let config = endpoint(&receiver, "events = [\"push\"]");
    let registry = TestRegistry::start_one_with(|c| {
        c.events.endpoints = vec![config];
        c.events.max_queued = 2;
    })
    .await;
    for round in 0..5 {
        registry
            .push_image("app", &format!("v{round}"), &random_bytes(1000, 20 + round))
            .await;
    }
    let metrics = scrape(&registry).await;
    assert_eq!(metrics.sum_of("berth_events_dropped_total", ""), 3.0);
    assert_eq!(metrics.sum_of("berth_events_queued", ""), 2.0);
    receiver.set(Behaviour::Accept);
    let events = receiver.wait_for(2).await;
    let tags: Vec<_> = events
        .iter()
        .map(|(_, e)| e["data"]["tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["v3", "v4"], "the newest kept");
}

#[tokio::test]
async fn a_rollback_is_an_event_naming_the_tag_and_the_digest_it_went_back_to() {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let config = endpoint(&receiver, "events = [\"rollback\"]");
    let registry = TestRegistry::start_one_with(|c| c.events.endpoints = vec![config]).await;
    let (_, first) = registry
        .push_image("app", "prod", &random_bytes(1000, 30))
        .await;
    registry
        .push_image("app", "prod", &random_bytes(1000, 31))
        .await;
    let resp = registry
        .client
        .post(registry.url("/v2/app/_berth/tags/prod/rollback"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
    let events = receiver.wait_for(1).await;
    assert_eq!(events.len(), 1);
    let (_, event) = &events[0];
    assert_eq!(event["type"], "dev.berth.tag.rolledback");
    assert_eq!(event["subject"], "app:prod");
    assert_eq!(event["data"]["digest"], first.as_str());
}
