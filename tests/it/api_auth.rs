//! Access control over real HTTP: challenges, the token endpoint, bearer and
//! basic credentials, the policy per repository, mounts, the catalog, robot
//! accounts, brute-force protection, what reaches the log, and the
//! `berth user` / `berth robot` commands. Users: alice (admin), bob (group
//! team-a: pull+push on team-a/*), carol (any user: pull+push on public/*),
//! dave (pull on team-a/*); anonymous clients may pull public/*.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth::auth::{Grant, RobotStore, TokenIssuer};
use reqwest::{Client, Response, StatusCode};

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
    ("dave", "dave-pw"),
];

fn auth_table(extra: &str) -> String {
    format!(
        r#"
        signing_key = "{SIGNING_KEY}"
        admins = ["alice"]
        {extra}
        [groups]
        team-a = ["bob"]
        [[rules]]
        repositories = ["public/*"]
        anonymous = ["pull"]
        authenticated = ["pull", "push"]
        [[rules]]
        repositories = ["team-a/*"]
        groups = {{ team-a = ["pull", "push"] }}
        users = {{ dave = ["pull"] }}
        [catalog]
        authenticated = true
        [login_limit]
        max_failures = 3
        "#
    )
}

async fn start() -> TestRegistry {
    TestRegistry::start_with_auth(USERS, &auth_table("")).await
}

/// One server, on either backend: for the login limiter, whose counts of
/// failed logins each process keeps for itself (behind a balancer, each
/// replica allows `max_failures` of its own).
async fn start_one() -> TestRegistry {
    TestRegistry::start_one_with_auth(USERS, &auth_table("")).await
}

fn password_of(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

fn basic(user: &str) -> String {
    basic_auth(user, password_of(user))
}

/// Makes `registry`'s helpers (push_image, …) act as `user` with Basic.
fn act_as(registry: &mut TestRegistry, user: &str) {
    registry.client = client_with_authorization(&basic(user));
}

async fn send(client: &Client, method: &str, url: &str) -> Response {
    client
        .request(method.parse().unwrap(), url)
        .send()
        .await
        .unwrap()
}

fn challenge(resp: &Response) -> String {
    header_str(resp, "www-authenticate").to_owned()
}

fn expected_challenge(registry: &TestRegistry, scope: Option<&str>, error: Option<&str>) -> String {
    let mut expected = format!(
        r#"Bearer realm="http://{}/auth/token",service="berth""#,
        registry.addr
    );
    if let Some(scope) = scope {
        expected.push_str(&format!(r#",scope="{scope}""#));
    }
    if let Some(error) = error {
        expected.push_str(&format!(r#",error="{error}""#));
    }
    expected
}

/// A token from `GET /auth/token` for `scopes`, as `user` (None: anonymous).
async fn token(registry: &TestRegistry, user: Option<&str>, scopes: &[&str]) -> String {
    crate::support::token(registry, user.map(basic).as_deref(), scopes).await
}

fn bearer(token: &str) -> Client {
    client_with_authorization(&format!("Bearer {token}"))
}

/// Pushes `layer` as an image into `name:latest` as alice (admin); the
/// registry's client is anonymous again afterwards.
async fn seed(registry: &mut TestRegistry, name: &str, layer: &[u8]) -> String {
    act_as(registry, "alice");
    let (_, digest) = registry.push_image(name, "latest", layer).await;
    registry.client = new_client();
    digest
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the server's key, with claims of our choosing.
fn crafted_token(exp: u64, access: serde_json::Value) -> String {
    let pem = std::fs::read(SIGNING_KEY).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
    let claims = serde_json::json!({
        "iss": "berth", "sub": "bob", "aud": "berth",
        "iat": exp - 300, "nbf": exp - 300, "exp": exp,
        "access": access,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn base_without_credentials_is_401_with_a_bearer_challenge() {
    let registry = start().await;
    let resp = get(&registry, "/v2/").await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(challenge(&resp), expected_challenge(&registry, None, None));
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");
}

#[tokio::test]
async fn base_with_valid_credentials_is_200_and_with_a_wrong_password_401() {
    let registry = start().await;
    let ok = send(
        &bearer(&token(&registry, Some("bob"), &[]).await),
        "GET",
        &registry.url("/v2/"),
    )
    .await;
    expect_status(ok, StatusCode::OK).await;
    let ok = send(
        &client_with_authorization(&basic("carol")),
        "GET",
        &registry.url("/v2/"),
    )
    .await;
    expect_status(ok, StatusCode::OK).await;
    let wrong = client_with_authorization(&basic_auth("carol", "nope"));
    let resp = send(&wrong, "GET", &registry.url("/v2/")).await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(challenge(&resp), expected_challenge(&registry, None, None));
}

#[tokio::test]
async fn a_refused_request_names_the_scope_it_needs_in_the_challenge() {
    let registry = start().await;
    let cases = [
        ("GET", "/v2/team-a/app/manifests/latest", "repository:team-a/app:pull"),
        ("HEAD", "/v2/team-a/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", "repository:team-a/app:pull"),
        ("GET", "/v2/team-a/app/tags/list", "repository:team-a/app:pull"),
        ("POST", "/v2/team-a/app/blobs/uploads/", "repository:team-a/app:pull,push"),
        ("PUT", "/v2/team-a/app/manifests/latest", "repository:team-a/app:pull,push"),
        ("DELETE", "/v2/team-a/app/manifests/latest", "repository:team-a/app:delete"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
    ];
    for (method, path, scope) in cases {
        let resp = send(&registry.client, method, &registry.url(path)).await;
        let resp =
            expect_status_of(resp, StatusCode::UNAUTHORIZED, &format!("{method} {path}")).await;
        assert_eq!(
            challenge(&resp),
            expected_challenge(&registry, Some(scope), None),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn basic_challenge_mode_asks_for_basic_credentials() {
    let mut registry =
        TestRegistry::start_with_auth(USERS, &auth_table("challenge = \"basic\"")).await;
    let resp = get(&registry, "/v2/team-a/app/tags/list").await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(challenge(&resp), r#"Basic realm="berth""#);
    act_as(&mut registry, "bob");
    registry.push_image("team-a/app", "v1", b"layer").await;
    let resp = send(
        &registry.client,
        "GET",
        &registry.url("/v2/team-a/app/tags/list"),
    )
    .await;
    expect_status(resp, StatusCode::OK).await;
}

#[tokio::test]
async fn a_token_from_the_token_endpoint_pulls_and_pushes() {
    let mut registry = start().await;
    let resp = Client::new()
        .get(
            registry
                .url("/auth/token?service=berth&scope=repository:team-a/app:pull,push&account=bob"),
        )
        .header("authorization", basic("bob"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(header_str(&resp, "cache-control"), "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));

    registry.client = bearer(&token);
    let (manifest, _) = registry.push_image("team-a/app", "v1", b"layer").await;
    let resp = send(
        &registry.client,
        "GET",
        &registry.url("/v2/team-a/app/manifests/v1"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap(), manifest);
}

#[tokio::test]
async fn the_oauth2_password_grant_issues_a_token_too() {
    let registry = start().await;
    let form = "grant_type=password&username=bob&password=bob-pw&service=berth&client_id=test&scope=repository%3Ateam-a%2Fapp%3Apull%2Cpush";
    let resp = Client::new()
        .post(registry.url("/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    let resp = send(
        &bearer(token),
        "POST",
        &registry.url("/v2/team-a/app/blobs/uploads/"),
    )
    .await;
    expect_status(resp, StatusCode::ACCEPTED).await;

    let wrong = Client::new()
        .post(registry.url("/auth/token"))
        .body("grant_type=password&username=bob&password=nope&service=berth")
        .send()
        .await
        .unwrap();
    expect_status(wrong, StatusCode::UNAUTHORIZED).await;
    let refresh = Client::new()
        .post(registry.url("/auth/token"))
        .body("grant_type=refresh_token&refresh_token=x&service=berth")
        .send()
        .await
        .unwrap();
    expect_status(refresh, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_credentials_and_bad_requests() {
    let registry = start().await;
    let resp = Client::new()
        .get(registry.url("/auth/token?service=berth&scope=repository:team-a/app:pull"))
        .header("authorization", basic_auth("bob", "wrong"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");
    let bad_scope = get(
        &registry,
        "/auth/token?service=berth&scope=repository:BAD:pull",
    )
    .await;
    expect_status(bad_scope, StatusCode::BAD_REQUEST).await;
    let other_service = get(&registry, "/auth/token?service=elsewhere").await;
    expect_status(other_service, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_anonymous_token_carries_only_what_anonymous_clients_may_do() {
    let mut registry = start().await;
    seed(&mut registry, "public/tool", b"public layer").await;
    seed(&mut registry, "team-a/app", b"private layer").await;
    let token = token(
        &registry,
        None,
        &[
            "repository:public/tool:pull,push",
            "repository:team-a/app:pull",
        ],
    )
    .await;
    let client = bearer(&token);
    let pull = send(
        &client,
        "GET",
        &registry.url("/v2/public/tool/manifests/latest"),
    )
    .await;
    expect_status(pull, StatusCode::OK).await;
    let push = send(
        &client,
        "POST",
        &registry.url("/v2/public/tool/blobs/uploads/"),
    )
    .await;
    expect_status(push, StatusCode::UNAUTHORIZED).await;
    let private = send(
        &client,
        "GET",
        &registry.url("/v2/team-a/app/manifests/latest"),
    )
    .await;
    expect_status(private, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_tampered_token_is_refused() {
    let registry = start().await;
    let token = token(&registry, Some("dave"), &["repository:team-a/app:pull"]).await;
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let widened = payload.replace(r#"["pull"]"#, r#"["pull","push"]"#);
    assert_ne!(widened, payload);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(widened),
        parts[2]
    );

    let resp = send(
        &bearer(&forged),
        "POST",
        &registry.url("/v2/team-a/app/blobs/uploads/"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        challenge(&resp),
        expected_challenge(
            &registry,
            Some("repository:team-a/app:pull,push"),
            Some("invalid_token")
        )
    );
    // The untouched token still pulls.
    let resp = send(
        &bearer(&token),
        "GET",
        &registry.url("/v2/team-a/app/tags/list"),
    )
    .await;
    expect_status_of(resp, StatusCode::NOT_FOUND, "authorised, nothing pushed").await;
}

#[tokio::test]
async fn a_token_used_again_keeps_exactly_its_grants() {
    let registry = start().await;
    let token = token(&registry, Some("dave"), &["repository:team-a/app:pull"]).await;
    let tags = registry.url("/v2/team-a/app/tags/list");
    let uploads = registry.url("/v2/team-a/app/blobs/uploads/");
    for _ in 0..2 {
        // Verified the first time, remembered the second: the same answers.
        let resp = send(&bearer(&token), "GET", &tags).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "authorised");
        let resp = send(&bearer(&token), "POST", &uploads).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge(&resp),
            expected_challenge(
                &registry,
                Some("repository:team-a/app:pull,push"),
                Some("insufficient_scope")
            )
        );
    }
    // A token one character away from the remembered one is not served
    // from the cache.
    // (In the signature's middle: the last character carries padding bits.)
    let at = token.len() - 10;
    let swapped = if &token[at..at + 1] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
    let resp = send(&bearer(&forged), "GET", &tags).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&resp).contains(r#"error="invalid_token""#));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let registry = start().await;
    let access =
        serde_json::json!([{"type": "repository", "name": "team-a/app", "actions": ["pull"]}]);
    let fresh = crafted_token(now_secs() + 300, access.clone());
    let resp = send(
        &bearer(&fresh),
        "GET",
        &registry.url("/v2/team-a/app/tags/list"),
    )
    .await;
    expect_status_of(
        resp,
        StatusCode::NOT_FOUND,
        "a valid crafted token is accepted",
    )
    .await;
    // Past the expiry and the 30 s allowed for clock skew.
    let expired = crafted_token(now_secs() - 120, access);
    let resp = send(
        &bearer(&expired),
        "GET",
        &registry.url("/v2/team-a/app/tags/list"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert!(challenge(&resp).ends_with(r#"error="invalid_token""#));
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let registry = start().await;
    let impostor = TokenIssuer::ephemeral("berth", "berth", Duration::from_secs(300)).unwrap();
    let scopes = berth::auth::parse_scopes(["repository:team-a/app:pull"]).unwrap();
    let token = impostor.issue("alice", &scopes).unwrap();
    let resp = send(
        &bearer(token.token.expose()),
        "GET",
        &registry.url("/v2/team-a/app/tags/list"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert!(challenge(&resp).ends_with(r#"error="invalid_token""#));
}

/// Insufficient scope is a 401 whose challenge says `insufficient_scope`
/// and names the scope needed, so clients fetch a token for it.
#[tokio::test]
async fn a_token_for_one_repository_does_not_open_another() {
    let mut registry = start().await;
    seed(&mut registry, "team-a/other", b"layer").await;
    let token = token(&registry, Some("bob"), &["repository:team-a/app:pull,push"]).await;
    let resp = send(
        &bearer(&token),
        "GET",
        &registry.url("/v2/team-a/other/manifests/latest"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        challenge(&resp),
        expected_challenge(
            &registry,
            Some("repository:team-a/other:pull"),
            Some("insufficient_scope")
        )
    );
}

#[tokio::test]
async fn anonymous_clients_pull_public_repositories_but_cannot_push() {
    let mut registry = start().await;
    let (manifest, _) = {
        act_as(&mut registry, "carol");
        registry.push_image("public/tool", "v1", b"layer").await
    };
    let anonymous = Client::new();
    let resp = send(
        &anonymous,
        "GET",
        &registry.url("/v2/public/tool/manifests/v1"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.bytes().await.unwrap(), manifest);
    let resp = send(
        &anonymous,
        "POST",
        &registry.url("/v2/public/tool/blobs/uploads/"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        challenge(&resp),
        expected_challenge(&registry, Some("repository:public/tool:pull,push"), None)
    );
}

#[tokio::test]
async fn a_user_without_push_is_denied_with_403() {
    let mut registry = start().await;
    seed(&mut registry, "team-a/app", b"layer").await;
    let dave = client_with_authorization(&basic("dave"));
    let pull = send(
        &dave,
        "GET",
        &registry.url("/v2/team-a/app/manifests/latest"),
    )
    .await;
    expect_status(pull, StatusCode::OK).await;
    let push = send(
        &dave,
        "POST",
        &registry.url("/v2/team-a/app/blobs/uploads/"),
    )
    .await;
    let push = expect_status(push, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(push).await, "DENIED");
    // A private repository of no rule: denied whether or not it exists.
    let other = send(&dave, "GET", &registry.url("/v2/team-b/x/manifests/latest")).await;
    expect_status(other, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn deleting_needs_the_delete_right() {
    let mut registry = start().await;
    let digest = seed(&mut registry, "team-a/app", b"layer").await;
    let path = format!("/v2/team-a/app/manifests/{digest}");
    let bob = client_with_authorization(&basic("bob"));
    let resp = send(&bob, "DELETE", &registry.url(&path)).await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(error_code(resp).await, "DENIED");
    let blob = sha256_digest(b"layer");
    let resp = send(
        &bob,
        "DELETE",
        &registry.url(&format!("/v2/team-a/app/blobs/{blob}")),
    )
    .await;
    expect_status(resp, StatusCode::FORBIDDEN).await;
    let alice = client_with_authorization(&basic("alice"));
    let resp = send(&alice, "DELETE", &registry.url(&path)).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
}

#[tokio::test]
async fn a_mount_from_a_repository_the_caller_cannot_pull_uploads_instead() {
    let mut registry = start().await;
    act_as(&mut registry, "alice");
    let secret = registry.push_blob("team-b/secret", b"secret layer").await;
    let shared = registry.push_blob("team-a/base", b"shared layer").await;
    let bob = client_with_authorization(&basic("bob"));
    let mount = |digest: &str, from: Option<&str>| {
        let mut path = format!("/v2/team-a/app/blobs/uploads/?mount={digest}");
        if let Some(from) = from {
            path.push_str(&format!("&from={from}"));
        }
        registry.url(&path)
    };

    let resp = send(&bob, "POST", &mount(&secret, Some("team-b/secret"))).await;
    let resp = expect_status_of(resp, StatusCode::ACCEPTED, "an upload, not a mount").await;
    assert!(header_str(&resp, "location").contains("/v2/team-a/app/blobs/uploads/"));
    let head = send(
        &bob,
        "HEAD",
        &registry.url(&format!("/v2/team-a/app/blobs/{secret}")),
    )
    .await;
    expect_status_of(head, StatusCode::NOT_FOUND, "nothing was mounted").await;

    // Without `from`, only admins mount: bob gets an upload too.
    let resp = send(&bob, "POST", &mount(&secret, None)).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    let head = send(
        &bob,
        "HEAD",
        &registry.url(&format!("/v2/team-a/app/blobs/{secret}")),
    )
    .await;
    expect_status(head, StatusCode::NOT_FOUND).await;

    // From a repository bob may pull, the mount happens.
    let resp = send(&bob, "POST", &mount(&shared, Some("team-a/base"))).await;
    expect_status(resp, StatusCode::CREATED).await;
    let head = send(
        &bob,
        "HEAD",
        &registry.url(&format!("/v2/team-a/app/blobs/{shared}")),
    )
    .await;
    expect_status(head, StatusCode::OK).await;

    let alice = client_with_authorization(&basic("alice"));
    let resp = send(&alice, "POST", &mount(&secret, None)).await;
    expect_status_of(resp, StatusCode::CREATED, "admins mount from anywhere").await;
}

/// Clients ask for the scopes a challenge names; the POST's names only the
/// target. A token holder who may pull the source is asked for both.
#[tokio::test]
async fn a_token_without_the_mount_sources_pull_is_challenged_for_both_scopes() {
    let mut registry = start().await;
    act_as(&mut registry, "alice");
    let shared = registry.push_blob("team-a/base", b"shared layer").await;
    let secret = registry.push_blob("team-b/secret", b"secret layer").await;
    let mount = |digest: &str, from: &str| {
        registry.url(&format!(
            "/v2/team-a/app/blobs/uploads/?mount={digest}&from={from}"
        ))
    };
    let target_only = token(&registry, Some("bob"), &["repository:team-a/app:pull,push"]).await;
    let resp = send(
        &bearer(&target_only),
        "POST",
        &mount(&shared, "team-a/base"),
    )
    .await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        challenge(&resp),
        expected_challenge(
            &registry,
            Some("repository:team-a/app:pull,push repository:team-a/base:pull"),
            Some("insufficient_scope")
        )
    );
    let both = token(
        &registry,
        Some("bob"),
        &[
            "repository:team-a/app:pull,push",
            "repository:team-a/base:pull",
        ],
    )
    .await;
    let resp = send(&bearer(&both), "POST", &mount(&shared, "team-a/base")).await;
    expect_status(resp, StatusCode::CREATED).await;
    // A source bob may not pull: no challenge, a plain upload.
    let resp = send(
        &bearer(&target_only),
        "POST",
        &mount(&secret, "team-b/secret"),
    )
    .await;
    expect_status(resp, StatusCode::ACCEPTED).await;
}

#[tokio::test]
async fn the_catalog_lists_what_each_caller_may_pull_and_paginates_that() {
    let mut registry = start().await;
    let all = ["public/a", "team-a/app", "team-a/tools", "team-b/secret"];
    for name in all {
        seed(&mut registry, name, name.as_bytes()).await;
    }
    let alice = client_with_authorization(&basic("alice"));
    catalog_settled(&registry, &alice, &all).await;
    let list = |user: &str, query: &'static str| {
        let client = client_with_authorization(&basic(user));
        let url = registry.url(&format!("/v2/_catalog{query}"));
        async move { send(&client, "GET", &url).await }
    };
    let names = |resp: Response| async move {
        let body: serde_json::Value = resp.json().await.unwrap();
        body["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(list("alice", "").await).await,
        ["public/a", "team-a/app", "team-a/tools", "team-b/secret"]
    );
    assert_eq!(
        names(list("bob", "").await).await,
        ["public/a", "team-a/app", "team-a/tools"]
    );
    assert_eq!(names(list("carol", "").await).await, ["public/a"]);

    let first = list("bob", "?n=2").await;
    assert_eq!(
        header_str(&first, "link"),
        "</v2/_catalog?n=2&last=team-a%2Fapp>; rel=\"next\""
    );
    assert_eq!(names(first).await, ["public/a", "team-a/app"]);
    let second = list("bob", "?n=2&last=team-a%2Fapp").await;
    assert!(
        second.headers().get("link").is_none(),
        "the last visible page"
    );
    assert_eq!(names(second).await, ["team-a/tools"]);

    // A token for the catalog shows the same as Basic.
    let token = token(&registry, Some("bob"), &["registry:catalog:*"]).await;
    let resp = send(&bearer(&token), "GET", &registry.url("/v2/_catalog")).await;
    assert_eq!(
        names(resp).await,
        ["public/a", "team-a/app", "team-a/tools"]
    );
    let anonymous = get(&registry, "/v2/_catalog").await;
    expect_status(anonymous, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn anonymous_clients_get_the_same_401_for_existing_and_missing_private_repositories() {
    let mut registry = start().await;
    seed(&mut registry, "team-b/secret", b"layer").await;
    for (existing, missing) in [
        (
            "/v2/team-b/secret/manifests/latest",
            "/v2/team-b/ghost/manifests/latest",
        ),
        ("/v2/team-b/secret/tags/list", "/v2/team-b/ghost/tags/list"),
        (
            &*format!("/v2/team-b/secret/blobs/{}", sha256_digest(b"layer")),
            &*format!("/v2/team-b/ghost/blobs/{}", sha256_digest(b"layer")),
        ),
    ] {
        let a = get(&registry, existing).await;
        let b = get(&registry, missing).await;
        let a = expect_status(a, StatusCode::UNAUTHORIZED).await;
        let b = expect_status(b, StatusCode::UNAUTHORIZED).await;
        assert_eq!(challenge(&a).replace("secret", "ghost"), challenge(&b));
        assert_eq!(a.text().await.unwrap(), b.text().await.unwrap());
    }
}

#[tokio::test]
async fn a_robot_logs_in_until_it_is_revoked() {
    let mut registry = start().await;
    // Created by "the CLI": another store over the server's file.
    let store = RobotStore::open(&registry.robots_path()).unwrap();
    let grants = vec![Grant::parse("team-a/*:pull,push").unwrap()];
    let secret = store.create("ci", grants, None).unwrap();
    let robot = client_with_authorization(&basic_auth("robot$ci", secret.expose()));
    registry.client = robot.clone();
    registry.push_image("team-a/app", "v1", b"layer").await;
    let resp = send(&robot, "GET", &registry.url("/v2/team-b/x/tags/list")).await;
    expect_status_of(resp, StatusCode::FORBIDDEN, "only its grants").await;
    let token = Client::new()
        .get(registry.url("/auth/token?service=berth&scope=repository:team-a/app:pull"))
        .header("authorization", basic_auth("robot$ci", secret.expose()))
        .send()
        .await
        .unwrap();
    expect_status(token, StatusCode::OK).await;

    store.revoke("ci").unwrap();
    let resp = send(&robot, "GET", &registry.url("/v2/team-a/app/tags/list")).await;
    expect_status_of(resp, StatusCode::UNAUTHORIZED, "refused at once").await;
}

#[tokio::test]
async fn an_expired_robot_is_refused() {
    let registry = start().await;
    let store = RobotStore::open(&registry.robots_path()).unwrap();
    let grants = vec![Grant::parse("team-a/*:pull").unwrap()];
    let expired = SystemTime::now() - Duration::from_secs(1);
    let secret = store.create("old", grants, Some(expired)).unwrap();
    let robot = client_with_authorization(&basic_auth("robot$old", secret.expose()));
    let resp = send(&robot, "GET", &registry.url("/v2/team-a/app/tags/list")).await;
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn repeated_failed_logins_are_answered_429_with_retry_after() {
    let registry = start_one().await;
    let wrong = client_with_authorization(&basic_auth("bob", "guess"));
    for _ in 0..3 {
        let resp = send(&wrong, "GET", &registry.url("/v2/")).await;
        expect_status(resp, StatusCode::UNAUTHORIZED).await;
    }
    // Blocked now, even with the right password, on /v2/ and the token endpoint.
    let right = client_with_authorization(&basic("bob"));
    let resp = send(&right, "GET", &registry.url("/v2/team-a/app/tags/list")).await;
    let resp = expect_status(resp, StatusCode::TOO_MANY_REQUESTS).await;
    let retry_after: u64 = header_str(&resp, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    let resp = send(&right, "GET", &registry.url("/auth/token?service=berth")).await;
    let resp = expect_status(resp, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(resp.headers().contains_key("retry-after"));
}

/// `count` requests sent at once (each on its own connection, as far as the
/// client's pool goes), and how many got each status.
async fn statuses_of_parallel(
    count: usize,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> std::collections::BTreeMap<u16, usize> {
    let responses = futures::future::join_all((0..count).map(|_| request().send())).await;
    let mut statuses = std::collections::BTreeMap::new();
    for resp in responses {
        *statuses.entry(resp.unwrap().status().as_u16()).or_insert(0) += 1;
    }
    statuses
}

/// The limit holds however the guesses are timed: 50 wrong passwords sent at
/// once get 3 password checks (401) and 47 refusals (429), on `/v2/` with
/// Basic, on the token endpoint (GET with Basic, POST with the OAuth2 form),
/// and for a robot; a login that was cached before the block stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_guesses_get_at_most_max_failures_password_checks() {
    let registry = start_one().await;
    let store = RobotStore::open(&registry.robots_path()).unwrap();
    let grants = vec![Grant::parse("team-a/*:pull").unwrap()];
    store.create("ci", grants, None).unwrap();
    // A costlier hash keeps each check running long enough for the guesses
    // to overlap (as with a production cost), whatever the machine.
    for user in ["bob", "carol", "dave"] {
        berth::auth::Htpasswd::add_or_update_user(
            &registry.htpasswd_path(),
            user,
            password_of(user),
            8,
        )
        .unwrap();
    }
    // bob's right password is in the login cache before the guessing starts.
    let right = client_with_authorization(&basic("bob"));
    expect_status(
        send(&right, "GET", &registry.url("/v2/")).await,
        StatusCode::OK,
    )
    .await;

    let client = Client::new();
    let v2 = registry.url("/v2/");
    let token_url = registry.url("/auth/token?service=berth");
    type Request<'a> = Box<dyn Fn() -> reqwest::RequestBuilder + 'a>;
    let cases: Vec<(&str, Request)> = vec![
        (
            "/v2/ Basic",
            Box::new(|| {
                client
                    .get(&v2)
                    .header("authorization", basic_auth("bob", "guess"))
            }),
        ),
        (
            "token GET",
            Box::new(|| {
                client
                    .get(&token_url)
                    .header("authorization", basic_auth("carol", "guess"))
            }),
        ),
        (
            "token POST",
            Box::new(|| {
                client
                    .post(registry.url("/auth/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("grant_type=password&username=dave&password=guess&service=berth")
            }),
        ),
        (
            "robot",
            Box::new(|| {
                client
                    .get(&v2)
                    .header("authorization", basic_auth("robot$ci", "guess"))
            }),
        ),
    ];
    for (what, request) in &cases {
        let statuses = statuses_of_parallel(50, request).await;
        let expected = std::collections::BTreeMap::from([(401, 3), (429, 47)]);
        assert_eq!(statuses, expected, "{what}");
    }
    let resp = send(&right, "GET", &registry.url("/v2/")).await;
    expect_status_of(resp, StatusCode::TOO_MANY_REQUESTS, "bob's cached login").await;
}

/// Attempts in flight fill the limit only for as long as they run: a burst
/// of parallel logins with the right password (CI jobs sharing an account
/// and an address) waits for places and is served, not refused, for a user
/// (whose first successes fill the login cache) and for a robot (never
/// cached: each login checks its secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_logins_with_the_right_password_all_succeed() {
    let registry = start().await;
    let store = RobotStore::open(&registry.robots_path()).unwrap();
    let grants = vec![Grant::parse("team-a/*:pull").unwrap()];
    let secret = store.create("ci", grants, None).unwrap();
    let client = Client::new();
    let v2 = registry.url("/v2/");
    let bob = basic("bob");
    let statuses = statuses_of_parallel(30, || client.get(&v2).header("authorization", &bob)).await;
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 30)]));
    let robot = basic_auth("robot$ci", secret.expose());
    let token_url = registry.url("/auth/token?service=berth&scope=repository:team-a/app:pull");
    let statuses = statuses_of_parallel(30, || {
        client.get(&token_url).header("authorization", &robot)
    })
    .await;
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 30)]));
}

/// A server that believes forwarding headers from `trusted` (a TOML list):
/// one, as [`start_one`], since these tests count failed logins.
async fn start_behind_proxies(trusted: &str) -> TestRegistry {
    let extra = format!("trusted_proxies = {trusted}");
    TestRegistry::start_one_with_auth(USERS, &auth_table(&extra)).await
}

/// `GET path` as `user` with `password`, forwarded for `client` with the
/// extra `headers`.
async fn forwarded_get(
    registry: &TestRegistry,
    path: &str,
    credentials: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = Client::new().get(registry.url(path));
    if let Some((user, password)) = credentials {
        request = request.header("authorization", basic_auth(user, password));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    // The test client (127.0.0.1) is not a trusted proxy here.
    let registry = start_behind_proxies(r#"["10.0.0.0/8"]"#).await;
    for spoofed in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let xff = [("x-forwarded-for", spoofed)];
        let resp = forwarded_get(&registry, "/v2/", Some(("bob", "guess")), &xff).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Rotating the spoofed address bought nothing: bob at the peer is blocked.
    let xff = [("x-forwarded-for", "198.51.100.4")];
    let resp = forwarded_get(&registry, "/v2/", Some(("bob", "bob-pw")), &xff).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // The realm is not steered by the client's forwarding headers either.
    let spoof = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ];
    let resp = forwarded_get(&registry, "/v2/", None, &spoof).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), expected_challenge(&registry, None, None));
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_the_scheme_it_used() {
    let registry = start_behind_proxies(r#"["127.0.0.1"]"#).await;
    let attacker = [("x-forwarded-for", "198.51.100.1")];
    for _ in 0..3 {
        let resp = forwarded_get(&registry, "/v2/", Some(("bob", "guess")), &attacker).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = forwarded_get(&registry, "/v2/", Some(("bob", "bob-pw")), &attacker).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // bob from another client address, through the same proxy, gets in; an
    // address the client wrote left of the proxy's own entry is not used.
    let elsewhere = [("x-forwarded-for", "198.51.100.1, 198.51.100.2")];
    let resp = forwarded_get(&registry, "/v2/", Some(("bob", "bob-pw")), &elsewhere).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "registry.example"),
    ];
    let resp = forwarded_get(&registry, "/v2/", None, &forwarded).await;
    assert_eq!(
        challenge(&resp),
        r#"Bearer realm="https://registry.example/auth/token",service="berth""#
    );
}

#[tokio::test]
async fn one_users_failed_logins_do_not_lock_out_another_behind_the_same_proxy() {
    let registry = start_behind_proxies(r#"["127.0.0.0/8"]"#).await;
    let client = [("x-forwarded-for", "198.51.100.1")];
    for _ in 0..3 {
        let resp = forwarded_get(&registry, "/v2/", Some(("bob", "guess")), &client).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = forwarded_get(&registry, "/v2/", Some(("bob", "bob-pw")), &client).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let resp = forwarded_get(&registry, "/v2/", Some(("carol", "carol-pw")), &client).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The same holds with no proxy at all (the peer address is shared).
    let direct = start_one().await;
    for _ in 0..3 {
        let resp = forwarded_get(&direct, "/v2/", Some(("bob", "guess")), &[]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = forwarded_get(&direct, "/v2/", Some(("carol", "carol-pw")), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_changed_password_applies_at_once_despite_the_login_cache() {
    let registry = start().await;
    let old = client_with_authorization(&basic("bob"));
    expect_status(
        send(&old, "GET", &registry.url("/v2/")).await,
        StatusCode::OK,
    )
    .await;
    expect_status(
        send(&old, "GET", &registry.url("/v2/")).await,
        StatusCode::OK,
    )
    .await;
    berth::auth::Htpasswd::add_or_update_user(
        &registry.htpasswd_path(),
        "bob",
        "new-pw",
        TEST_BCRYPT_COST,
    )
    .unwrap();
    expect_status(
        send(&old, "GET", &registry.url("/v2/")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let new = client_with_authorization(&basic_auth("bob", "new-pw"));
    expect_status(
        send(&new, "GET", &registry.url("/v2/")).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn without_auth_there_is_no_token_endpoint() {
    let registry = TestRegistry::start().await;
    expect_status(get(&registry, "/auth/token").await, StatusCode::NOT_FOUND).await;
    expect_status(get(&registry, "/v2/").await, StatusCode::OK).await;
}

fn htpasswd_with(dir: &std::path::Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    berth::auth::Htpasswd::add_or_update_user(&path, user, password, TEST_BCRYPT_COST).unwrap();
    path
}

#[tokio::test]
async fn serve_with_htpasswd_requires_login_and_lets_users_pull_and_push() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_with(dir.path(), "erin", "erin-pw");
    let served = ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
        &[],
    );
    let anonymous = Client::new();
    let resp = send(&anonymous, "GET", &served.url("/v2/app/tags/list")).await;
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let erin = client_with_authorization(&basic_auth("erin", "erin-pw"));
    let resp = send(&erin, "POST", &served.url("/v2/app/blobs/uploads/")).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    let resp = send(&erin, "DELETE", &served.url("/v2/app/manifests/latest")).await;
    expect_status_of(
        resp,
        StatusCode::FORBIDDEN,
        "the default policy: no deletes",
    )
    .await;
    served.stop();
}

#[tokio::test]
async fn passwords_and_tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let password = "pw-4a7c1e-do-not-log";
    let htpasswd = htpasswd_with(dir.path(), "erin", password);
    let served = ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ],
        &[],
    );
    let erin = client_with_authorization(&basic_auth("erin", password));
    expect_status(
        send(&erin, "GET", &served.url("/v2/")).await,
        StatusCode::OK,
    )
    .await;
    let resp = send(
        &erin,
        "GET",
        &served.url("/auth/token?service=berth&scope=repository:app:pull,push"),
    )
    .await;
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let resp = send(&bearer(&token), "GET", &served.url("/v2/app/tags/list")).await;
    expect_status(resp, StatusCode::NOT_FOUND).await;
    let wrong = client_with_authorization(&basic_auth("erin", "wrong-pw-9f3b"));
    expect_status(
        send(&wrong, "GET", &served.url("/v2/")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let encoded = basic_auth("erin", password);
    let log = served.stop();
    assert!(
        log.contains("\"status\":200"),
        "the requests were logged: {log}"
    );
    for secret in [password, "wrong-pw-9f3b", token.as_str(), &encoded[6..]] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature));
}

#[test]
fn user_add_reads_the_password_from_stdin_and_user_remove_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("conf/htpasswd");
    let mut child = Command::new(BERTH)
        .args(["user", "add", "erin", "--cost", "4", "--htpasswd"])
        .arg(&htpasswd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = berth::auth::Htpasswd::load(&htpasswd).unwrap();
    assert!(users.verify("erin", "s3cret pass"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));

    let out = Command::new(BERTH)
        .args(["user", "remove", "erin", "--htpasswd"])
        .arg(&htpasswd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!berth::auth::Htpasswd::load(&htpasswd)
        .unwrap()
        .contains("erin"));
    let again = Command::new(BERTH)
        .args(["user", "remove", "erin", "--htpasswd"])
        .arg(&htpasswd)
        .output()
        .unwrap();
    assert!(!again.status.success(), "removing a missing user fails");
}

#[test]
fn robot_create_list_and_revoke_work_on_the_data_dirs_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let robot = |args: &[&str]| {
        Command::new(BERTH)
            .arg("robot")
            .args(args)
            .args(["--data-dir", data])
            .output()
            .unwrap()
    };
    let out = robot(&[
        "create",
        "ci",
        "--allow",
        "team-a/*:pull,push",
        "--allow",
        "base:pull",
        "--expires",
        "90d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("robot$ci"), "{printed}");
    let secret = printed
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret is printed")
        .trim()
        .to_owned();
    let store = RobotStore::open(&dir.path().join("berth/robots.json")).unwrap();
    assert!(store.authenticate("robot$ci", &secret).is_some());

    let out = robot(&["list"]);
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("ci") && listed.contains("team-a/*:pull,push"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));

    let out = robot(&["create", "ci", "--allow", "x:pull"]);
    assert!(!out.status.success(), "names are unique");

    let out = robot(&["revoke", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.authenticate("robot$ci", &secret).is_none());
    let listed = String::from_utf8(robot(&["list"]).stdout).unwrap();
    assert!(!listed.contains("team-a"), "{listed}");
}
