//! Repository settings and namespaces over real HTTP, with access control:
//! visibility (anonymous pulls allowed, then refused again), grants to
//! users, groups and robots adding to the configuration's rules, namespaces
//! admins hand to teams, the `manage` right, and refusals of malformed
//! settings. On S3 the requests alternate between two replicas, so every
//! change is checked on the replica that did not make it too.

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

pub const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

/// alice is an admin, bob is in group devs and may pull and push app/*;
/// carol has no rule of her own.
pub async fn start() -> TestRegistry {
    TestRegistry::start_with_auth_and(
        uncached_on_s3,
        USERS,
        &format!(
            r#"
            signing_key = "{SIGNING_KEY}"
            admins = ["alice"]
            [groups]
            devs = ["bob"]
            [[rules]]
            repositories = ["app/*"]
            users = {{ bob = ["pull", "push"] }}
            "#
        ),
    )
    .await
}

pub fn as_user(user: &str) -> Client {
    let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    client_with_authorization(&basic_auth(user, password))
}

async fn put_json(client: &Client, url: String, body: Value) -> Response {
    client.put(url).json(&body).send().await.unwrap()
}

/// Pushes a one-layer image as `client`'s user; asserts each step's status.
async fn push_as(registry: &mut TestRegistry, client: &Client, name: &str, tag: &str, seed: u64) {
    registry.client = client.clone();
    registry
        .push_image(name, tag, &random_bytes(2000, seed))
        .await;
    registry.client = new_client();
}

/// The status of an upload start as `client`: whether it may push.
pub async fn upload_start_status(
    registry: &TestRegistry,
    client: &Client,
    name: &str,
) -> StatusCode {
    client
        .post(registry.url(&format!("/v2/{name}/blobs/uploads/")))
        .send()
        .await
        .unwrap()
        .status()
}

async fn manifest_status(
    registry: &TestRegistry,
    client: &Client,
    name: &str,
    tag: &str,
) -> StatusCode {
    client
        .get(registry.url(&format!("/v2/{name}/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_public_repository_is_pulled_anonymously_until_it_is_private_again() {
    let mut registry = start().await;
    let (alice, bob, anonymous) = (as_user("alice"), as_user("bob"), new_client());
    push_as(&mut registry, &bob, "app/web", "1", 1).await;
    assert_eq!(
        manifest_status(&registry, &anonymous, "app/web", "1").await,
        StatusCode::UNAUTHORIZED
    );
    let settings_url = registry.url("/v2/app/web/_berth/settings");

    // bob may push but not manage: the change is refused, saying so.
    let resp = put_json(&bob, settings_url.clone(), json!({"visibility": "public"})).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");

    let resp = put_json(
        &alice,
        settings_url.clone(),
        json!({"visibility": "public", "description": "The web front end"}),
    )
    .await;
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["visibility"], "public");
    assert_eq!(shown["public"], true);
    assert_eq!(shown["description"], "The web front end");
    assert_eq!(shown["updated_by"], "alice");
    assert_eq!(
        shown["actions"],
        json!(["pull", "push", "delete", "manage"])
    );

    // Anonymous pulls work, directly and through the token flow.
    assert_eq!(
        manifest_status(&registry, &anonymous, "app/web", "1").await,
        StatusCode::OK
    );
    let token = token(&registry, None, &["repository:app/web:pull"]).await;
    let with_token = client_with_authorization(&format!("Bearer {token}"));
    assert_eq!(
        manifest_status(&registry, &with_token, "app/web", "1").await,
        StatusCode::OK
    );
    // Anyone may read the settings of a repository they may pull; what
    // they may do is theirs.
    let resp = anonymous.get(&settings_url).send().await.unwrap();
    let seen = json_of(resp, StatusCode::OK).await;
    assert_eq!(seen["actions"], json!(["pull"]));
    assert_eq!(seen["description"], "The web front end");
    // Pushes stay refused to anonymous clients.
    assert_eq!(
        upload_start_status(&registry, &anonymous, "app/web").await,
        StatusCode::UNAUTHORIZED
    );
    // Only this repository is public.
    push_as(&mut registry, &bob, "app/other", "1", 2).await;
    assert_eq!(
        manifest_status(&registry, &anonymous, "app/other", "1").await,
        StatusCode::UNAUTHORIZED
    );

    let resp = put_json(
        &alice,
        settings_url.clone(),
        json!({"visibility": "private"}),
    )
    .await;
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        manifest_status(&registry, &anonymous, "app/web", "1").await,
        StatusCode::UNAUTHORIZED
    );
    let resp = anonymous.get(&settings_url).send().await.unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;

    // Deleting the settings: back to the rules alone; a second delete finds none.
    let resp = alice.delete(&settings_url).send().await.unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;
    let resp = alice.delete(&settings_url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn namespaces_hand_repositories_to_teams_and_grants_add_to_the_rules() {
    let mut registry = start().await;
    let (alice, bob, carol) = (as_user("alice"), as_user("bob"), as_user("carol"));
    let namespace_url = registry.url("/v2/_berth/namespaces/team");
    assert_eq!(
        upload_start_status(&registry, &bob, "team/api").await,
        StatusCode::FORBIDDEN
    );

    // Only admins create namespaces.
    let team = json!({
        "description": "The team's images",
        "grants": [
            {"subject": "group:devs", "actions": ["pull", "push", "manage"]},
            {"subject": "user:carol", "actions": ["pull"]},
        ],
    });
    let resp = put_json(&bob, namespace_url.clone(), team.clone()).await;
    expect_status(resp, StatusCode::FORBIDDEN).await;
    let resp = put_json(&alice, namespace_url.clone(), team).await;
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["namespace"], "team");
    assert_eq!(shown["grants"][0]["subject"], "group:devs");

    // bob's group may now push anywhere under team/, carol only pull.
    push_as(&mut registry, &bob, "team/api", "1", 3).await;
    push_as(&mut registry, &bob, "team/tools/lint", "1", 4).await;
    assert_eq!(
        manifest_status(&registry, &carol, "team/api", "1").await,
        StatusCode::OK
    );
    assert_eq!(
        upload_start_status(&registry, &carol, "team/api").await,
        StatusCode::FORBIDDEN
    );
    // Not beyond the namespace: `teams/` is another name.
    assert_eq!(
        upload_start_status(&registry, &bob, "teams/api").await,
        StatusCode::FORBIDDEN
    );

    // bob manages team/api through the namespace: he lets carol push there.
    let resp = put_json(
        &bob,
        registry.url("/v2/team/api/_berth/settings"),
        json!({"grants": [{"subject": "user:carol", "actions": ["push"]}]}),
    )
    .await;
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["namespaces"][0]["namespace"], "team");
    assert_eq!(
        upload_start_status(&registry, &carol, "team/api").await,
        StatusCode::ACCEPTED
    );
    // A token carries what the settings grant.
    let carol_token = token(
        &registry,
        Some(&basic_auth("carol", "carol-pw")),
        &["repository:team/api:pull,push"],
    )
    .await;
    let with_token = client_with_authorization(&format!("Bearer {carol_token}"));
    assert_eq!(
        upload_start_status(&registry, &with_token, "team/api").await,
        StatusCode::ACCEPTED
    );

    // Admins list namespaces; others may not.
    let resp = alice
        .get(registry.url("/v2/_berth/namespaces"))
        .send()
        .await
        .unwrap();
    let listed = json_of(resp, StatusCode::OK).await;
    assert_eq!(listed["namespaces"][0]["namespace"], "team");
    let resp = bob
        .get(registry.url("/v2/_berth/namespaces"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;

    // Without the namespace, its grants are gone; the repository's own stay.
    let resp = alice.delete(&namespace_url).send().await.unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;
    assert_eq!(
        upload_start_status(&registry, &bob, "team/tools/lint").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        upload_start_status(&registry, &carol, "team/api").await,
        StatusCode::ACCEPTED
    );
    let resp = alice.get(&namespace_url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn malformed_settings_are_refused_and_change_nothing() {
    let registry = start().await;
    let alice = as_user("alice");
    let url = registry.url("/v2/app/web/_berth/settings");
    let resp = put_json(&alice, url.clone(), json!({"visibility": "public"})).await;
    expect_status(resp, StatusCode::OK).await;
    let refused = [
        json!({"visibility": "everyone"}),
        json!({"grants": [{"subject": "user:bob", "actions": ["fly"]}]}),
        json!({"grants": [{"subject": "bob", "actions": ["pull"]}]}),
        json!({"grants": [{"subject": "user:bob", "actions": []}]}),
        json!({"description": "x".repeat(5000)}),
        json!({"unknown": true}),
    ];
    for body in refused {
        let resp = put_json(&alice, url.clone(), body.clone()).await;
        let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(error_code(resp).await, "PARAMETER_INVALID", "{body}");
    }
    let resp = alice
        .put(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::BAD_REQUEST).await;
    let resp = alice
        .put(&url)
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::BAD_REQUEST).await;
    // Invalid names are refused before anything else.
    let resp = put_json(
        &alice,
        registry.url("/v2/App/_berth/settings"),
        json!({"visibility": "public"}),
    )
    .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    let resp = put_json(
        &alice,
        registry.url("/v2/_berth/namespaces/Team"),
        json!({}),
    )
    .await;
    expect_status(resp, StatusCode::BAD_REQUEST).await;

    // The settings stored before are intact.
    let resp = alice.get(&url).send().await.unwrap();
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["visibility"], "public");
    assert_eq!(shown["grants"], json!([]));
}

/// `[auth] public_repositories` bounds where settings may make a repository
/// public: a change outside it is refused, admins' too (that the bound also
/// retires public settings made before it is `auth/policy.rs`'s test).
#[tokio::test]
async fn public_repositories_bound_where_a_repository_may_be_public() {
    let rules = |bound: &str| {
        format!(
            r#"
            signing_key = "{SIGNING_KEY}"
            admins = ["alice"]
            {bound}
            [[rules]]
            repositories = ["app/*", "oss/*"]
            users = {{ bob = ["pull", "push", "manage"] }}
            "#
        )
    };
    let mut registry = TestRegistry::start_with_auth_and(
        uncached_on_s3,
        USERS,
        &rules(r#"public_repositories = ["oss/*"]"#),
    )
    .await;
    let bob = as_user("bob");
    push_as(&mut registry, &bob, "oss/lib", "1", 5).await;
    push_as(&mut registry, &bob, "app/web", "1", 6).await;
    let public = json!({"visibility": "public"});
    for (who, name) in [("bob", "app/web"), ("alice", "app/web")] {
        let url = registry.url(&format!("/v2/{name}/_berth/settings"));
        let resp = put_json(&as_user(who), url, public.clone()).await;
        let resp = expect_status_of(resp, StatusCode::FORBIDDEN, who).await;
        let body = resp.text().await.unwrap();
        assert!(body.contains("public_repositories"), "{body}");
    }
    assert_eq!(
        manifest_status(&registry, &new_client(), "app/web", "1").await,
        StatusCode::UNAUTHORIZED
    );
    let url = registry.url("/v2/oss/lib/_berth/settings");
    let resp = put_json(&bob, url, public.clone()).await;
    expect_status(resp, StatusCode::OK).await;
    // A namespace is public only where the bound covers all of it.
    let alice = as_user("alice");
    let resp = put_json(
        &alice,
        registry.url("/v2/_berth/namespaces/app"),
        public.clone(),
    )
    .await;
    expect_status(resp, StatusCode::FORBIDDEN).await;
    let resp = put_json(
        &alice,
        registry.url("/v2/_berth/namespaces/oss"),
        public.clone(),
    )
    .await;
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        manifest_status(&registry, &new_client(), "oss/lib", "1").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_access_control_settings_are_stored_and_everyone_may_do_everything() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let url = registry.url("/v2/free/app/_berth/settings");
    let resp = put_json(
        &registry.client,
        url.clone(),
        json!({"description": "no auth here"}),
    )
    .await;
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["public"], true);
    assert_eq!(shown["updated_by"], "");
    let resp = registry.client.get(&url).send().await.unwrap();
    let shown = json_of(resp, StatusCode::OK).await;
    assert_eq!(shown["description"], "no auth here");
}

/// `GET /v2/_berth/repositories`: what the caller may pull, searched and
/// paginated on the server, with repositories created by their settings
/// before a first push.
#[tokio::test]
async fn the_repository_list_shows_what_the_caller_may_pull_searched_and_paged() {
    let mut registry = start().await;
    let (alice, bob, carol, anonymous) = (
        as_user("alice"),
        as_user("bob"),
        as_user("carol"),
        new_client(),
    );
    for (i, name) in ["app/api", "app/web", "app/worker"].iter().enumerate() {
        push_as(&mut registry, &bob, name, "1", 10 + i as u64).await;
    }
    // Every replica's repository index has them (on S3 within its bound).
    catalog_settled(&registry, &alice, &["app/api", "app/web", "app/worker"]).await;
    // Created by its settings before any push, public, described.
    let resp = put_json(
        &alice,
        registry.url("/v2/app/docs/_berth/settings"),
        json!({"visibility": "public", "description": "Documentation site"}),
    )
    .await;
    expect_status(resp, StatusCode::OK).await;

    let list = |client: &Client, query: &str| {
        let url = registry.url(&format!("/v2/_berth/repositories{query}"));
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            let resp = expect_status(resp, StatusCode::OK).await;
            let link = resp
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = resp.json().await.unwrap();
            let names: Vec<String> = body["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            (names, body, link)
        }
    };
    let (names, body, _) = list(&bob, "").await;
    assert_eq!(names, ["app/api", "app/docs", "app/web", "app/worker"]);
    let docs = &body["repositories"][1];
    assert_eq!(docs["description"], "Documentation site");
    assert_eq!(docs["public"], true);
    assert_eq!(docs["empty"], true);
    assert_eq!(body["repositories"][0]["empty"], false);
    assert_eq!(body["more"], false);

    // Anonymous clients and carol see only the public one; no catalog
    // right is needed.
    assert_eq!(list(&anonymous, "").await.0, ["app/docs"]);
    assert_eq!(list(&carol, "").await.0, ["app/docs"]);

    // Search and pages, with a Link to the next that keeps the search.
    assert_eq!(list(&bob, "?q=w").await.0, ["app/web", "app/worker"]);
    let (first, body, link) = list(&bob, "?n=2&q=app").await;
    assert_eq!(first, ["app/api", "app/docs"]);
    assert_eq!(body["more"], true);
    let link = link.expect("a Link to the next page");
    assert!(link.contains("last=app%2Fdocs"), "{link}");
    assert!(link.contains("q=app"), "{link}");
    let (second, body, link) = list(&bob, "?n=2&q=app&last=app%2Fdocs").await;
    assert_eq!(second, ["app/web", "app/worker"]);
    assert_eq!(body["more"], false);
    assert_eq!(link, None);

    let resp = bob
        .get(registry.url("/v2/_berth/repositories?n=x"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PAGINATION_NUMBER_INVALID");
    let long = "x".repeat(300);
    let resp = bob
        .get(registry.url(&format!("/v2/_berth/repositories?q={long}")))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "PARAMETER_INVALID");
    // Bad credentials are refused, not taken for anonymous.
    let resp = client_with_authorization(&basic_auth("bob", "wrong"))
        .get(registry.url("/v2/_berth/repositories"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
}
