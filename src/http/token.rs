//! The built-in token endpoint (Docker registry token specification), at
//! [`TOKEN_PATH`]:
//!
//! - `GET ?service=…&scope=…&scope=…&account=…` with `Authorization: Basic`
//!   (docker, podman, skopeo, oras, helm), or without credentials for an
//!   anonymous token;
//! - `POST` with an OAuth2 form (`grant_type=password&username=…&password=…
//!   &service=…&scope=…`; containerd). We issue no refresh tokens, so
//!   `grant_type=refresh_token` is refused and clients log in again.
//!
//! The answer is `{"token", "access_token", "expires_in", "issued_at"}`: a
//! signed token carrying the requested scopes cut down to what the policy
//! grants, possibly none (the spec asks for a token all the same; the
//! registry then refuses what it does not carry). Bad credentials get 401,
//! a client blocked after failed logins 429 with `Retry-After`, a malformed
//! request 400 in the OAuth2 error form.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::AccessControl;
use super::{not_found, AppState};
use crate::auth::header::{basic_credentials, TokenRequest};
use crate::auth::{Identity, Secret};

pub use super::auth::TOKEN_PATH;

/// A token request form is a few hundred bytes; anything this big is not one.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// `GET /auth/token`.
pub async fn get(State(state): State<AppState>, request: Request) -> Response {
    let Some(access) = state.access.clone() else {
        return not_found().await;
    };
    let (parts, _) = request.into_parts();
    let form = parts.uri.query().unwrap_or_default();
    let token_request = match TokenRequest::parse(form) {
        Ok(r) => r,
        Err(e) => return oauth_error("invalid_scope", &e.to_string()),
    };
    // Current settings before the login: they hold the robots made through
    // the API (one revoked on another replica must not log in here) and
    // grant rights.
    state.registry.fresh_settings().await;
    let identity = match basic_header(&parts) {
        Some((user, password)) => match access.token_login(&parts, user.clone(), password).await {
            Ok(identity) => identity,
            Err(response) => return refused_login(&state, &access, &parts, &user, response),
        },
        None => Identity::Anonymous,
    };
    issue(&access, &identity, &token_request)
}

/// `POST /auth/token` (OAuth2 password grant).
pub async fn post(State(state): State<AppState>, request: Request) -> Response {
    let Some(access) = state.access.clone() else {
        return not_found().await;
    };
    let (parts, body) = request.into_parts();
    let form = match read_form(body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let token_request = match TokenRequest::parse(&form) {
        Ok(r) => r,
        Err(e) => return oauth_error("invalid_scope", &e.to_string()),
    };
    // Current settings before the login, as for `GET`.
    state.registry.fresh_settings().await;
    let identity = match token_request.grant_type.as_deref() {
        Some("password") => {
            let (Some(user), Some(password)) = (
                token_request.username.clone(),
                token_request.password.clone(),
            ) else {
                return oauth_error("invalid_request", "username and password are required");
            };
            match access.token_login(&parts, user.clone(), password).await {
                Ok(identity) => identity,
                Err(response) => return refused_login(&state, &access, &parts, &user, response),
            }
        }
        Some(other) => {
            return oauth_error(
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported; use password"),
            )
        }
        None => return oauth_error("invalid_request", "grant_type is required"),
    };
    issue(&access, &identity, &token_request)
}

/// A login the token endpoint refused, recorded in the audit log.
pub(super) fn refused_login(
    state: &AppState,
    access: &AccessControl,
    parts: &Parts,
    user: &str,
    response: Response,
) -> Response {
    if let Some(audit) = &state.audit {
        audit.record_login(
            user,
            access.client_addr(parts),
            &parts.method,
            response.status(),
        );
    }
    response
}

fn basic_header(parts: &Parts) -> Option<(String, Secret)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    basic_credentials(value)
}

async fn read_form(body: Body) -> Result<String, Response> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| oauth_error("invalid_request", "the form is too large or unreadable"))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| oauth_error("invalid_request", "the form is not UTF-8"))
}

fn issue(access: &Arc<AccessControl>, identity: &Identity, request: &TokenRequest) -> Response {
    let auth = access.auth();
    if let Some(service) = &request.service {
        if service != auth.issuer().service() {
            return oauth_error(
                "invalid_request",
                &format!(
                    "this endpoint issues tokens for service {:?}",
                    auth.issuer().service()
                ),
            );
        }
    }
    match auth.issue_token(identity, &request.scopes) {
        Ok(issued) => {
            tracing::debug!(
                subject = %identity.subject(),
                requested = request.scopes.len(),
                "issued a token"
            );
            let mut response = axum::Json(&issued).into_response();
            // RFC 6749 5.1: token responses must not be cached.
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "could not sign a token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "server_error"})),
            )
                .into_response()
        }
    }
}

/// 400 with an RFC 6749 5.2 error body, which docker and containerd print.
pub(super) fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}
