//! The web UI's server side over real HTTP: the pages (embedded, with a
//! strict CSP), a browser's visit to `/`, and the login session: the
//! cookie's flags, its header requirement (CSRF), what it may do, that it is
//! never a bearer token, and that it ends with logout or its user.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

async fn start() -> TestRegistry {
    TestRegistry::start_with_auth_and(
        uncached_on_s3,
        USERS,
        &format!(
            r#"
            signing_key = "{SIGNING_KEY}"
            admins = ["alice"]
            [[rules]]
            repositories = ["app/*"]
            users = {{ bob = ["pull", "push"] }}
            "#
        ),
    )
    .await
}

/// A client that keeps no cookies of its own: tests pass the session on.
fn plain() -> Client {
    new_client()
}

pub async fn login(registry: &TestRegistry, user: &str, password: &str) -> reqwest::Response {
    plain()
        .post(registry.url("/ui/api/session"))
        .header("x-berth-ui", "1")
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The session token a successful login set.
pub fn session_of(resp: &reqwest::Response) -> String {
    let cookie = header_str(resp, "set-cookie");
    let value = cookie
        .strip_prefix("berth_session=")
        .expect("the session cookie");
    value.split(';').next().unwrap().to_owned()
}

/// A client sending `token` as the session cookie, with the UI's header or
/// without (as another site's form would).
pub fn cookie_client(token: &str, ui_header: bool) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", format!("berth_session={token}").parse().unwrap());
    if ui_header {
        headers.insert("x-berth-ui", "1".parse().unwrap());
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_pages_are_served_embedded_with_a_strict_policy_and_a_browser_lands_there() {
    let registry = start().await;
    let client = plain();
    let resp = client
        .get(registry.url("/"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "followed to the UI");
    assert_eq!(resp.url().path(), "/ui/");
    // An API client asking for / gets what it always got.
    let resp = client.get(registry.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    for path in ["/ui/", "/ui/r/app/web", "/ui/login"] {
        let resp = client.get(registry.url(path)).send().await.unwrap();
        let resp = expect_status(resp, StatusCode::OK).await;
        assert!(header_str(&resp, "content-type").starts_with("text/html"));
        let csp = header_str(&resp, "content-security-policy").to_owned();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = resp.text().await.unwrap();
        assert!(page.contains(r#"<script type="module" src="/ui/assets/app.js">"#));
        assert!(!page.contains("<script>"), "no inline script");
    }
    let resp = client
        .get(registry.url("/ui/assets/app.js"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(header_str(&resp, "content-type").starts_with("text/javascript"));
    let etag = header_str(&resp, "etag").to_owned();
    let resp = client
        .get(registry.url("/ui/assets/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = client
        .get(registry.url("/ui/assets/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let off = TestRegistry::start_with(|c| c.ui.enabled = false).await;
    let resp = plain().get(off.url("/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_login_sets_an_http_only_session_that_counts_only_with_the_ui_header() {
    let registry = start().await;
    // Wrong password: 401, no cookie.
    let resp = login(&registry, "bob", "wrong").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
    // Without the UI's header a login is refused (login CSRF).
    let resp = plain()
        .post(registry.url("/ui/api/session"))
        .json(&json!({"username": "bob", "password": "bob-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // A body that is no login, or far too big for one: refused, no cookie.
    for (body, status) in [
        (b"{not json".to_vec(), StatusCode::BAD_REQUEST),
        (br#"{"username": "bob"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (vec![b' '; 64 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let resp = plain()
            .post(registry.url("/ui/api/session"))
            .header("x-berth-ui", "1")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
        assert!(resp.headers().get("set-cookie").is_none());
    }
    // A cookie that holds no token is refused, not taken for anonymous.
    let resp = cookie_client("not-a-token", true)
        .get(registry.url("/v2/_berth/repositories"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = login(&registry, "bob", "bob-pw").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let cookie = header_str(&resp, "set-cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    let session = session_of(&resp);
    let shown: Value = resp.json().await.unwrap();
    assert_eq!(shown, json!({"auth": true, "user": "bob", "admin": false}));

    let with_session = |header: bool| cookie_client(&session, header);
    // With the header, the session is bob: he may start an upload.
    let resp = with_session(true)
        .post(registry.url("/v2/app/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = with_session(true)
        .get(registry.url("/ui/api/session"))
        .send()
        .await
        .unwrap();
    let who = json_of(resp, StatusCode::OK).await;
    assert_eq!(who["user"], "bob");
    // The cookie alone (what another site's form would send) is anonymous.
    let resp = with_session(false)
        .post(registry.url("/v2/app/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The session's token is no bearer token.
    let resp = client_with_authorization(&format!("Bearer {session}"))
        .get(registry.url("/v2/_berth/repositories"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A token from the token endpoint is no session.
    let api_token = token(
        &registry,
        Some(&basic_auth("bob", "bob-pw")),
        &["repository:app/web:pull,push"],
    )
    .await;
    let forged = cookie_client(&api_token, true);
    let resp = forged
        .post(registry.url("/v2/app/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Logout clears the cookie.
    let resp = with_session(true)
        .delete(registry.url("/ui/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(header_str(&resp, "set-cookie").contains("Max-Age=0"));

    // A user removed from the htpasswd file loses the session at once.
    let htpasswd = registry.data.path().join("htpasswd");
    berth::auth::Htpasswd::remove_user(&htpasswd, "bob").unwrap();
    let resp = with_session(true)
        .post(registry.url("/v2/app/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The UI's login is the API's: its failures count toward the same limit,
/// and a locked-out login says so (429 with `Retry-After`), not "wrong
/// password".
#[tokio::test]
async fn failed_ui_logins_meet_the_same_limit_as_the_api() {
    let registry = TestRegistry::start_one_with_auth(
        USERS,
        &format!(
            r#"
            signing_key = "{SIGNING_KEY}"
            [login_limit]
            max_failures = 3
            "#
        ),
    )
    .await;
    for _ in 0..3 {
        let resp = login(&registry, "bob", "wrong").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = login(&registry, "bob", "bob-pw").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn an_admin_session_is_an_admin_and_without_access_control_there_is_no_login() {
    let registry = start().await;
    let resp = login(&registry, "alice", "alice-pw").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let shown: Value = resp.json().await.unwrap();
    assert_eq!(shown["admin"], true);

    let open = TestRegistry::start_with(|_| {}).await;
    let resp = plain()
        .get(open.url("/ui/api/session"))
        .send()
        .await
        .unwrap();
    let who = json_of(resp, StatusCode::OK).await;
    assert_eq!(who["auth"], false);
    let resp = login(&open, "alice", "alice-pw").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
