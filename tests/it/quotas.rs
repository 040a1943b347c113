//! `[[quotas]]`: bytes and tags per repository matching a pattern; pushes
//! past them refused with 403 `DENIED` and nothing of them kept; usage
//! through `GET /v2/<name>/_berth/usage`.

use berth::registry::{QuotaRule, QuotaScope};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

fn quota(pattern: &str, max_bytes: Option<u64>, max_tags: Option<u64>) -> QuotaRule {
    QuotaRule {
        repositories: berth::oci::RepositoryPattern::parse(pattern).unwrap(),
        max_bytes,
        max_tags,
        scope: QuotaScope::Repository,
    }
}

/// Pushes a one-layer image's blobs and then its manifest under `tag`; the
/// manifest PUT's response.
async fn push_image_response(
    registry: &TestRegistry,
    name: &str,
    tag: &str,
    layer: &[u8],
) -> (reqwest::Response, Vec<u8>) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = registry.push_blob(name, config).await;
    let layer_digest = registry.push_blob(name, layer).await;
    let manifest = image_manifest(&config_digest, config.len(), &[(layer_digest, layer.len())]);
    let resp = registry
        .put_manifest(name, tag, OCI_MANIFEST, &manifest)
        .await;
    (resp, manifest)
}

async fn usage(registry: &TestRegistry, name: &str) -> Value {
    let resp = get(registry, &format!("/v2/{name}/_berth/usage")).await;
    expect_status(resp, StatusCode::OK)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_of_a_tag_past_max_tags_is_refused_and_moving_a_tag_is_not() {
    let registry =
        TestRegistry::start_with(|c| c.quotas = vec![quota("team/*", None, Some(2))]).await;
    for tag in ["a", "b"] {
        registry
            .push_image("team/app", tag, &random_bytes(1000, 1))
            .await;
    }
    let (resp, _) = push_image_response(&registry, "team/app", "c", &random_bytes(1000, 2)).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let detail = body["errors"][0]["message"].as_str().unwrap().to_owned()
        + body["errors"][0]["detail"].to_string().as_str();
    assert!(detail.contains("quota"), "{body}");
    assert_eq!(registry.tags("team/app").await, ["a", "b"]);
    // Moving a tag adds none; another repository's tags are its own.
    let (resp, _) = push_image_response(&registry, "team/app", "a", &random_bytes(1000, 3)).await;
    expect_status(resp, StatusCode::CREATED).await;
    for tag in ["a", "b", "c"] {
        registry
            .push_image("other/app", tag, &random_bytes(1000, 4))
            .await;
    }
}

#[tokio::test]
async fn a_push_past_max_bytes_is_refused_and_the_usage_says_what_is_used() {
    let registry = TestRegistry::start_with(|c| {
        c.quotas = vec![quota("team/*", Some(60_000), None)];
    })
    .await;
    let first = random_bytes(40_000, 5);
    let (resp, manifest) = push_image_response(&registry, "team/app", "1", &first).await;
    expect_status(resp, StatusCode::CREATED).await;
    let used = usage(&registry, "team/app").await;
    let config_len = br#"{"architecture":"amd64","os":"linux"}"#.len();
    let expected = (manifest.len() + config_len + first.len()) as u64;
    assert_eq!(used["bytes"], expected);
    assert_eq!(used["manifests"], 1);
    assert_eq!(used["tags"], 1);
    assert_eq!(used["quota"]["repositories"], "team/*");
    assert_eq!(used["quota"]["max_bytes"], 60_000);

    // A second image with a new 40 kB layer would pass 60 kB: refused, and
    // the usage is unchanged.
    let (resp, _) = push_image_response(&registry, "team/app", "2", &random_bytes(40_000, 6)).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    assert_eq!(usage(&registry, "team/app").await["bytes"], expected);
    let resp = get(&registry, "/v2/team/app/manifests/2").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
    // The same image under another tag uses no more bytes.
    let (resp, _) = push_image_response(&registry, "team/app", "also-1", &first).await;
    expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(usage(&registry, "team/app").await["bytes"], expected);

    let resp = get(&registry, "/v2/team/none/_berth/usage").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

/// `scope = "pattern"`: the repositories under the pattern share the
/// limits (a team's namespace), a blob two of them share counted once; a
/// repository under another rule, or none, is not counted with them.
#[tokio::test]
async fn a_pattern_quota_bounds_its_repositories_together() {
    let registry = TestRegistry::start_with(|c| {
        c.quotas = vec![
            QuotaRule {
                scope: QuotaScope::Pattern,
                ..quota("team/*", Some(100_000), Some(3))
            },
            quota("*", Some(1_000_000), None),
        ];
    })
    .await;
    let shared = random_bytes(40_000, 7);
    let (resp, one) = push_image_response(&registry, "team/one", "1", &shared).await;
    expect_status(resp, StatusCode::CREATED).await;
    // The same image in a second repository costs nothing more: each
    // digest is counted once across the pattern.
    let (resp, two) = push_image_response(&registry, "team/two", "1", &shared).await;
    expect_status(resp, StatusCode::CREATED).await;
    assert_eq!(one, two);
    // Outside the pattern: not counted with the team.
    let (resp, _) =
        push_image_response(&registry, "other/app", "1", &random_bytes(90_000, 8)).await;
    expect_status(resp, StatusCode::CREATED).await;

    let config_len = br#"{"architecture":"amd64","os":"linux"}"#.len();
    let team_bytes = (one.len() + config_len + shared.len()) as u64;
    let used = usage(&registry, "team/two").await;
    assert_eq!(used["quota"]["scope"], "pattern");
    assert_eq!(used["counted"]["bytes"], team_bytes);
    assert_eq!(used["counted"]["tags"], 2);
    assert_eq!(used["counted"]["repositories"], 2);
    assert_eq!(
        used["bytes"],
        (two.len() + config_len + shared.len()) as u64
    );
    let other = usage(&registry, "other/app").await;
    assert_eq!(other["quota"]["scope"], "repository");
    assert_eq!(other["counted"]["repositories"], 1);

    // 70 kB more in a third repository would take the team past 100 kB,
    // though that repository alone would be far below it.
    let (resp, _) =
        push_image_response(&registry, "team/three", "1", &random_bytes(70_000, 9)).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let detail = body["errors"][0]["detail"].to_string();
    assert!(detail.contains("the repositories under team/*"), "{detail}");
    let resp = get(&registry, "/v2/team/three/manifests/1").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(
        usage(&registry, "team/one").await["counted"]["bytes"],
        team_bytes
    );

    // Tags count together too: a third fits, a fourth does not.
    let (resp, _) = push_image_response(&registry, "team/three", "1", &shared).await;
    expect_status(resp, StatusCode::CREATED).await;
    let (resp, _) = push_image_response(&registry, "team/one", "2", &shared).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let body: Value = resp.json().await.unwrap();
    let detail = body["errors"][0]["detail"].to_string();
    assert!(detail.contains("3 tags"), "{detail}");
}

#[tokio::test]
async fn the_usage_needs_pull_and_a_valid_name() {
    let registry = TestRegistry::start_one_with_auth(
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        r#"
        challenge = "basic"
        [[rules]]
        repositories = ["team/*"]
        users = { alice = ["pull", "push"] }
        "#,
    )
    .await;
    let as_user =
        |user: &str, password: &str| client_with_authorization(&basic_auth(user, password));
    let url = registry.url("/v2/team/app/_berth/usage");
    // Nobody anonymous, and no user without pull, learns anything of it.
    let resp = new_client().get(&url).send().await.unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let resp = as_user("bob", "bob-pw").get(&url).send().await.unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;
    // A name that is not one is refused before anything is read.
    let resp = as_user("alice", "alice-pw")
        .get(registry.url("/v2/Team/App/_berth/usage"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
}
