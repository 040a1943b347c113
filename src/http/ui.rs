//! The web UI: its pages (embedded assets under `/ui/`, every page path
//! answered with the same document, which routes in the browser), a
//! browser's visit to `/` sent there, and its login session
//! (`/ui/api/session`). The pages read the registry through the same API
//! as every client (`/v2/...`, `/v2/_berth/...`), with the session cookie
//! and the UI's header instead of `Authorization` (`auth.rs`:
//! [`SESSION_COOKIE`], [`UI_HEADER`]). Design: `docs/design/ui.md`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::{session_cookie, AccessControl, SESSION_COOKIE, UI_HEADER};
use super::AppState;
use crate::auth::{Identity, Secret};

/// The assets, built into the binary: the running server fetches nothing.
const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// No script, style, image or connection from anywhere but Berth itself;
/// no inline script; not framed by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The most a login body may hold.
const MAX_LOGIN_BYTES: usize = 8 * 1024;

/// What the UI's routes need beside the application state.
#[derive(Clone, Copy, Debug)]
pub struct UiOptions {
    pub session_ttl: Duration,
}

/// `GET /ui/assets/<file>`, and the page document for every other `/ui/`
/// path.
pub async fn asset(request: Request) -> Response {
    let path = request.uri().path();
    let (body, content_type) = match path.strip_prefix("/ui/assets/") {
        Some("app.js") => (APP_JS, "text/javascript; charset=utf-8"),
        Some("app.css") => (APP_CSS, "text/css; charset=utf-8"),
        Some(_) => return StatusCode::NOT_FOUND.into_response(),
        None => (INDEX_HTML, "text/html; charset=utf-8"),
    };
    let etag = etag_of(body);
    let mut response = if request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    // Revalidated on each load (an upgrade shows at once), cheap with the ETag.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn etag_of(body: &str) -> String {
    format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(body.as_bytes()))[..16]
    )
}

/// `GET /`: a browser (it prefers HTML) goes to the UI; anything else gets
/// the 404 it always got.
pub async fn root(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]).into_response();
    }
    super::not_found_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

/// `GET /ui/api/session`: who the session is (`user: null` without one),
/// whether access control is on, whether the user is an admin.
pub async fn whoami(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let Some(access) = &state.access else {
        return axum::Json(json!({ "auth": false, "user": null, "admin": true })).into_response();
    };
    // A robot revoked on another replica is gone here too (within cache_ttl).
    state.registry.fresh_settings().await;
    let identity = session_cookie(&parts).and_then(|token| access.session_identity(&token));
    axum::Json(session_view(access, identity.as_ref())).into_response()
}

fn session_view(access: &AccessControl, identity: Option<&Identity>) -> serde_json::Value {
    let user = identity.map(Identity::subject).filter(|s| !s.is_empty());
    let admin = identity.is_some_and(|i| access.auth().policy().is_admin(i));
    json!({ "auth": true, "user": user, "admin": admin })
}

/// `POST /ui/api/session` with `{"username", "password"}`: the login every
/// client gets (htpasswd or robot store, the failure limiter, the audit
/// line), answered with the session cookie.
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(options) = state.ui else {
        return super::not_found_response();
    };
    let Some(access) = state.access.clone() else {
        return ui_error(
            StatusCode::NOT_FOUND,
            "access control is off: there is no login",
        );
    };
    // Logging in from another site's page would plant that site's choice
    // of account in this browser (login CSRF).
    if parts.headers.get(UI_HEADER).is_none() {
        return ui_error(
            StatusCode::FORBIDDEN,
            "a login needs the UI's X-Berth-UI header",
        );
    }
    let login = match read_login(body).await {
        Ok(login) => login,
        Err(response) => return response,
    };
    let user = login.username.clone();
    // A robot made on another replica logs in here too.
    state.registry.fresh_settings().await;
    let identity = match access
        .token_login(&parts, login.username, Secret::new(login.password))
        .await
    {
        Ok(Identity::Anonymous) => {
            let refused = ui_error(StatusCode::UNAUTHORIZED, "wrong user name or password");
            return super::token::refused_login(&state, &access, &parts, &user, refused);
        }
        // Bad credentials; anything else (429 with Retry-After once the
        // failure limiter steps in) is answered as the API answers it.
        Err(refused) => {
            let refused = if refused.status() == StatusCode::UNAUTHORIZED {
                ui_error(StatusCode::UNAUTHORIZED, "wrong user name or password")
            } else {
                refused
            };
            return super::token::refused_login(&state, &access, &parts, &user, refused);
        }
        Ok(identity) => identity,
    };
    let token = match access
        .auth()
        .issuer()
        .issue_session(&identity.subject(), options.session_ttl)
    {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "signing a session token failed");
            return ui_error(StatusCode::INTERNAL_SERVER_ERROR, "the login failed");
        }
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        token.token.expose(),
        options.session_ttl.as_secs(),
        if secure(&access, &parts) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = axum::Json(session_view(&access, Some(&identity))).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a token is header-safe"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `DELETE /ui/api/session`: forgets the cookie.
pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if parts.headers.get(UI_HEADER).is_none() {
        return ui_error(
            StatusCode::FORBIDDEN,
            "a logout needs the UI's X-Berth-UI header",
        );
    }
    let secure = state.access.as_ref().is_some_and(|a| secure(a, &parts));
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("ascii"),
        )],
    )
        .into_response()
}

/// Whether the browser reached Berth over HTTPS (its own TLS, or a trusted
/// proxy's): the cookie is then never sent over plain HTTP.
fn secure(access: &AccessControl, parts: &Parts) -> bool {
    parts.extensions.get::<super::OverTls>().is_some()
        || access
            .client_proto(parts)
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

async fn read_login(body: Body) -> Result<Login, Response> {
    let bytes = axum::body::to_bytes(body, MAX_LOGIN_BYTES)
        .await
        .map_err(|_| ui_error(StatusCode::PAYLOAD_TOO_LARGE, "the login is too large"))?;
    serde_json::from_slice(&bytes).map_err(|_| {
        ui_error(
            StatusCode::BAD_REQUEST,
            "a login is {\"username\": ..., \"password\": ...}",
        )
    })
}

fn ui_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}
