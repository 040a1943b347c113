//! Tag history, rollbacks and immutable tags over real HTTP (issue 5):
//! `GET /v2/<name>/_berth/tags/<tag>/history`, `POST …/rollback`, the
//! `[lifecycle]` `immutable_tags` rules on pushes and deletes, and who may
//! read a history or roll a tag back when access control is on.

use crate::support::*;
use berth::Config;
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

async fn history(registry: &TestRegistry, name: &str, tag: &str) -> Value {
    let resp = get(registry, &format!("/v2/{name}/_berth/tags/{tag}/history")).await;
    let resp = expect_status(resp, StatusCode::OK).await;
    resp.json().await.unwrap()
}

/// The digests of a history, newest first (`None` for a deletion).
fn digests(history: &Value) -> Vec<Option<String>> {
    history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().map(str::to_owned))
        .collect()
}

async fn rollback(registry: &TestRegistry, name: &str, tag: &str, query: &str) -> Response {
    registry
        .client
        .post(registry.url(&format!("/v2/{name}/_berth/tags/{tag}/rollback{query}")))
        .send()
        .await
        .unwrap()
}

/// The bytes `name:reference` serves, and its digest header.
async fn pull(registry: &TestRegistry, name: &str, reference: &str) -> (Vec<u8>, String) {
    let resp = registry
        .client
        .get(registry.url(&format!("/v2/{name}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let resp = expect_status_of(resp, StatusCode::OK, &format!("pull {name}:{reference}")).await;
    let digest = header_str(&resp, "docker-content-digest").to_owned();
    (resp.bytes().await.unwrap().to_vec(), digest)
}

async fn detail(resp: Response) -> (String, String) {
    let body: Value = resp.json().await.unwrap();
    (
        body["errors"][0]["code"].as_str().unwrap().to_owned(),
        body["errors"][0]["detail"].as_str().unwrap().to_owned(),
    )
}

fn some(digest: &str) -> Option<String> {
    Some(digest.to_owned())
}

#[tokio::test]
async fn history_lists_changes_newest_first_with_times_and_deletions() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (a_bytes, a) = registry.push_image("app", "latest", b"a").await;
    let (_, b) = registry.push_image("app", "latest", b"b").await;
    let resp = registry
        .put_manifest("app", "latest", OCI_MANIFEST, &a_bytes)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    expect_status(
        registry.delete_manifest("app", "latest").await,
        StatusCode::ACCEPTED,
    )
    .await;

    let body = history(&registry, "app", "latest").await;
    assert_eq!(body["name"], "app");
    assert_eq!(body["tag"], "latest");
    assert_eq!(body["current"], Value::Null);
    assert_eq!(digests(&body), [None, some(&a), some(&b), some(&a)]);
    let entries = body["history"].as_array().unwrap();
    let deleted: Vec<bool> = entries
        .iter()
        .map(|e| e["deleted"].as_bool().unwrap())
        .collect();
    assert_eq!(deleted, [true, false, false, false]);
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    for time in &times {
        let parsed = humantime::parse_rfc3339(time).expect("RFC 3339");
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 600, "{time} is now-ish");
        assert!(
            time.ends_with('Z') && time.contains('.'),
            "{time}: UTC, fractional"
        );
    }
    // Fixed-width fractions sort as text: strictly newest first.
    assert!(times.windows(2).all(|w| w[0] > w[1]), "{times:?}");
}

#[tokio::test]
async fn history_shows_the_current_digest_and_honours_n() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "v", b"a").await;
    let (_, b) = registry.push_image("app", "v", b"b").await;
    let body = history(&registry, "app", "v").await;
    assert_eq!(body["current"], b.as_str());
    assert_eq!(digests(&body), [some(&b), some(&a)]);
    let resp = get(&registry, "/v2/app/_berth/tags/v/history?n=1").await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(digests(&body), [some(&b)]);
    let resp = get(&registry, "/v2/app/_berth/tags/v/history?n=x").await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test]
async fn history_survives_deleting_the_tag() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "latest", b"a").await;
    expect_status(
        registry.delete_manifest("app", "latest").await,
        StatusCode::ACCEPTED,
    )
    .await;
    let resp = get(&registry, "/v2/app/manifests/latest").await;
    expect_status_of(resp, StatusCode::NOT_FOUND, "the tag is gone").await;
    let body = history(&registry, "app", "latest").await;
    assert_eq!(digests(&body), [None, some(&a)]);
}

#[tokio::test]
async fn deleting_a_manifest_removes_its_history_entries() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "latest", b"a").await;
    let (_, b) = registry.push_image("app", "latest", b"b").await;
    expect_status(
        registry.delete_manifest("app", &a).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let body = history(&registry, "app", "latest").await;
    assert_eq!(digests(&body), [some(&b)]);
    // Deleting the current image deletes the tag too: what remains is that
    // deletion, with no image to roll back to.
    expect_status(
        registry.delete_manifest("app", &b).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let body = history(&registry, "app", "latest").await;
    assert_eq!(body["current"], Value::Null);
    assert_eq!(digests(&body), [None]);
}

#[tokio::test]
async fn history_of_an_unknown_tag_or_repository_is_404() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    registry.push_image("app", "latest", b"a").await;
    let resp = get(&registry, "/v2/app/_berth/tags/other/history").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = get(&registry, "/v2/nothing/_berth/tags/latest/history").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
    let resp = get(&registry, "/v2/app/_berth/tags/-bad/history").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = get(&registry, "/v2/App/_berth/tags/latest/history").await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
}

#[tokio::test]
async fn rollback_by_steps_serves_the_earlier_manifest_bytes_and_is_recorded() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (a_bytes, a) = registry.push_image("app", "latest", b"a").await;
    let (b_bytes, b) = registry.push_image("app", "latest", b"b").await;
    let (_, c) = registry.push_image("app", "latest", b"c").await;

    let resp = rollback(&registry, "app", "latest", "").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "docker-content-digest"), b);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["digest"], b.as_str());
    assert_eq!(body["previous"], c.as_str());
    assert_eq!(pull(&registry, "app", "latest").await, (b_bytes, b.clone()));
    let body = history(&registry, "app", "latest").await;
    assert_eq!(body["current"], b.as_str());
    assert_eq!(digests(&body)[0], some(&b), "the rollback is a change");

    // From b, the distinct earlier images are c, then a.
    let resp = rollback(&registry, "app", "latest", "?steps=2").await;
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(pull(&registry, "app", "latest").await, (a_bytes, a.clone()));
    assert_eq!(
        digests(&history(&registry, "app", "latest").await),
        [some(&a), some(&b), some(&c), some(&b), some(&a)]
    );
}

#[tokio::test]
async fn rollback_to_a_digest_from_the_history() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (a_bytes, a) = registry.push_image("app", "latest", b"a").await;
    registry.push_image("app", "latest", b"b").await;
    registry.push_image("app", "latest", b"c").await;
    let resp = rollback(&registry, "app", "latest", &format!("?to={a}")).await;
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(pull(&registry, "app", "latest").await, (a_bytes, a));
}

#[tokio::test]
async fn rollback_re_creates_a_deleted_tag() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "latest", b"a").await;
    let (b_bytes, b) = registry.push_image("app", "latest", b"b").await;
    registry.delete_manifest("app", "latest").await;

    let resp = rollback(&registry, "app", "latest", "").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["previous"], Value::Null);
    assert_eq!(body["digest"], b.as_str(), "the image it had when deleted");
    assert_eq!(pull(&registry, "app", "latest").await, (b_bytes, b.clone()));
    let tags: Value = get(&registry, "/v2/app/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    assert_eq!(
        digests(&history(&registry, "app", "latest").await),
        [some(&b), None, some(&b), some(&a)]
    );
}

#[tokio::test]
async fn rollback_refuses_a_digest_not_in_the_history() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "latest", b"a").await;
    let (_, b) = registry.push_image("app", "latest", b"b").await;
    // In the repository, but never under this tag.
    let (_, other) = registry.push_image("app", "other", b"o").await;
    let resp = rollback(&registry, "app", "latest", &format!("?to={other}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    let (code, detail) = detail(resp).await;
    assert_eq!(code, "MANIFEST_UNKNOWN");
    assert!(detail.contains("not an image in the history"), "{detail}");
    let resp = rollback(&registry, "app", "latest", "?to=sha256:beef").await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = rollback(&registry, "app", "latest", &format!("?to={a}&steps=1")).await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PARAMETER_INVALID");
    let resp = rollback(&registry, "app", "latest", "?steps=0").await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PARAMETER_INVALID");
    assert_eq!(pull(&registry, "app", "latest").await.1, b, "unchanged");
}

#[tokio::test]
async fn rollback_refuses_an_image_whose_manifest_was_deleted() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("app", "latest", b"a").await;
    let (_, b) = registry.push_image("app", "latest", b"b").await;
    registry.delete_manifest("app", &a).await;
    let resp = rollback(&registry, "app", "latest", &format!("?to={a}")).await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = rollback(&registry, "app", "latest", "").await;
    expect_status_of(resp, StatusCode::NOT_FOUND, "no earlier image left").await;
    assert_eq!(pull(&registry, "app", "latest").await.1, b);
}

#[tokio::test]
async fn rollback_beyond_the_history_says_how_far_it_goes() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    registry.push_image("app", "latest", b"a").await;
    let (_, b) = registry.push_image("app", "latest", b"b").await;
    let resp = rollback(&registry, "app", "latest", "?steps=2").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    let (code, detail) = detail(resp).await;
    assert_eq!(code, "MANIFEST_UNKNOWN");
    assert!(detail.contains("holds 1 earlier image"), "{detail}");
    assert_eq!(pull(&registry, "app", "latest").await.1, b);
    let resp = rollback(&registry, "app", "never", "").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
}

// Immutable tags: `v.*` in `prod/*`.

async fn start_immutable() -> TestRegistry {
    TestRegistry::start_with(|config: &mut Config| {
        uncached_on_s3(config);
        config.lifecycle = toml::from_str(
            r#"
            [[immutable_tags]]
            repositories = "prod/*"
            tags = "v.*"
            "#,
        )
        .unwrap();
    })
    .await
}

#[tokio::test]
async fn immutable_tag_takes_the_same_digest_again() {
    let registry = start_immutable().await;
    let (bytes, a) = registry.push_image("prod/app", "v1", b"a").await;
    let resp = registry
        .put_manifest("prod/app", "v1", OCI_MANIFEST, &bytes)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(
        digests(&history(&registry, "prod/app", "v1").await),
        [some(&a)],
        "no change recorded"
    );
}

#[tokio::test]
async fn immutable_tag_refuses_another_digest_and_keeps_serving_its_image() {
    let registry = start_immutable().await;
    let (bytes, a) = registry.push_image("prod/app", "v1", b"a").await;
    let (other, _) = registry.push_image("prod/app", "scratch", b"b").await;
    let resp = registry
        .put_manifest("prod/app", "v1", OCI_MANIFEST, &other)
        .await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let (code, detail) = detail(resp).await;
    assert_eq!(code, "DENIED");
    assert!(detail.contains("prod/app:v1"), "{detail}");
    assert_eq!(pull(&registry, "prod/app", "v1").await, (bytes, a));
}

#[tokio::test]
async fn immutable_tag_and_its_manifest_cannot_be_deleted() {
    let registry = start_immutable().await;
    let (bytes, a) = registry.push_image("prod/app", "v1", b"a").await;
    let resp = registry.delete_manifest("prod/app", "v1").await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = registry.delete_manifest("prod/app", &a).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    assert_eq!(pull(&registry, "prod/app", "v1").await, (bytes, a));
}

#[tokio::test]
async fn tags_the_rules_do_not_match_stay_mutable() {
    let registry = start_immutable().await;
    registry.push_image("prod/app", "latest", b"a").await;
    let (_, b) = registry.push_image("prod/app", "latest", b"b").await;
    assert_eq!(pull(&registry, "prod/app", "latest").await.1, b);
    registry.push_image("dev/app", "v1", b"a").await;
    let (_, b) = registry.push_image("dev/app", "v1", b"b").await;
    assert_eq!(pull(&registry, "dev/app", "v1").await.1, b);
    expect_status(
        registry.delete_manifest("dev/app", "v1").await,
        StatusCode::ACCEPTED,
    )
    .await;
}

#[tokio::test]
async fn extra_tags_of_a_push_are_checked_too() {
    let registry = start_immutable().await;
    let (_, a) = registry.push_image("prod/app", "v1", b"a").await;
    let (bytes_b, b) = registry.push_image("prod/app", "latest", b"b").await;
    let resp = registry
        .client
        .put(registry.url(&format!("/v2/prod/app/manifests/{b}?tag=v2&tag=v1")))
        .header("content-type", OCI_MANIFEST)
        .body(bytes_b)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    assert_eq!(pull(&registry, "prod/app", "v1").await.1, a);
    // Refused as a whole: the other tag of the push was not created either.
    let resp = get(&registry, "/v2/prod/app/manifests/v2").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn rollback_of_an_immutable_tag_is_refused() {
    let registry = start_immutable().await;
    let (_, a) = registry.push_image("prod/app", "v1", b"a").await;
    let resp = rollback(&registry, "prod/app", "v1", "").await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let (code, detail) = detail(resp).await;
    assert_eq!(code, "DENIED");
    assert!(detail.contains("prod/app:v1"), "{detail}");
    assert_eq!(pull(&registry, "prod/app", "v1").await.1, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_to_a_fresh_immutable_tag_have_exactly_one_winner() {
    let registry = start_immutable().await;
    // Distinct images whose blobs are in place, so the pushes race only on
    // the tag.
    let mut manifests = Vec::new();
    for i in 0..6u8 {
        let (bytes, digest) = registry
            .push_image("prod/app", &format!("seed{i}"), &[i; 16])
            .await;
        manifests.push((bytes, digest));
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(manifests.len()));
    let pushes = manifests.iter().cloned().map(|(bytes, digest)| {
        let url = registry.url("/v2/prod/app/manifests/v1");
        let start = start.clone();
        tokio::spawn(async move {
            start.wait().await;
            let resp = Client::new()
                .put(url)
                .header("content-type", OCI_MANIFEST)
                .body(bytes)
                .send()
                .await
                .unwrap();
            (resp.status(), digest)
        })
    });
    let outcomes = futures::future::join_all(pushes).await;
    let mut winners = Vec::new();
    for outcome in outcomes {
        let (status, digest) = outcome.unwrap();
        match status {
            StatusCode::CREATED => winners.push(digest),
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(pull(&registry, "prod/app", "v1").await.1, winners[0]);
    assert_eq!(
        digests(&history(&registry, "prod/app", "v1").await),
        [some(&winners[0])],
        "only the winner's change is history"
    );
}

// With access control: bob may pull and push app/*, erin also delete, dave
// only pull.

#[tokio::test]
async fn reading_a_history_needs_pull() {
    let mut registry = start_with_app_rules("").await;
    seed_app_web(&mut registry).await;
    let url = registry.url("/v2/app/web/_berth/tags/latest/history");
    let resp = Client::new().get(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert!(
        header_str(&resp, "www-authenticate").contains(r#"scope="repository:app/web:pull""#),
        "{:?}",
        resp.headers()
    );
    let dave = client_with_authorization(&basic_auth("dave", "dave-pw"));
    let resp = dave.get(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["history"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rolling_back_needs_push_and_delete() {
    let mut registry = start_with_app_rules("").await;
    let (a, b) = seed_app_web(&mut registry).await;
    let url = registry.url("/v2/app/web/_berth/tags/latest/rollback");

    let resp = Client::new().post(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert!(
        header_str(&resp, "www-authenticate")
            .contains(r#"scope="repository:app/web:pull,push,delete""#),
        "{:?}",
        resp.headers()
    );
    for user in ["bob", "dave"] {
        let client = client_with_authorization(&basic_auth(user, &format!("{user}-pw")));
        let resp = client.post(&url).send().await.unwrap();
        let resp = expect_status_of(resp, StatusCode::FORBIDDEN, user).await;
        assert_eq!(error_code(resp).await, "DENIED");
    }
    // bob's token is cut down to pull,push: not enough.
    let bob_token = token(
        &registry,
        Some(&basic_auth("bob", "bob-pw")),
        &["repository:app/web:pull,push,delete"],
    )
    .await;
    let resp = client_with_authorization(&format!("Bearer {bob_token}"))
        .post(&url)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert!(header_str(&resp, "www-authenticate").contains(r#"error="insufficient_scope""#));
    registry.client = client_with_authorization(&basic_auth("erin", "erin-pw"));
    assert_eq!(
        pull(&registry, "app/web", "latest").await.1,
        b,
        "refusals changed nothing"
    );

    let erin_token = token(
        &registry,
        Some(&basic_auth("erin", "erin-pw")),
        &["repository:app/web:pull,push,delete"],
    )
    .await;
    let resp = client_with_authorization(&format!("Bearer {erin_token}"))
        .post(&url)
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(pull(&registry, "app/web", "latest").await.1, a);
}
