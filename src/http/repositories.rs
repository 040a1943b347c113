//! `GET /v2/_berth/repositories?q=&n=&last=`: the repositories a caller may
//! pull, for browsing (the web UI's list), a page at a time and searched on
//! the server: those with manifests and those created by their settings
//! before a first push, each with its description and visibility. Unlike
//! `/v2/_catalog` it needs no catalog right: everyone sees what they may
//! pull, and nothing else.

use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{pagination, query_pairs, query_value, ApiResult};
use crate::auth::Action;
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::{Registry, Visibility};

/// A page's size when the client names none, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// The longest search text.
const MAX_QUERY: usize = 256;

pub async fn list(registry: &Registry, caller: &Caller, parts: &Parts) -> ApiResult {
    let pairs = query_pairs(parts);
    let (n, last) = pagination(&pairs)?;
    let n = n.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let query = query_value(&pairs, "q")
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    if query.len() > MAX_QUERY {
        return Err(RegistryError::with_detail(
            ErrorCode::ParameterInvalid,
            format!("q is longer than {MAX_QUERY} bytes"),
        )
        .into());
    }
    let page = registry
        .browse(n, last.as_deref(), |name| {
            name.as_str().contains(query.as_str()) && caller.may(name, Action::Pull)
        })
        .await?;
    let settings = registry.settings();
    let repositories: Vec<Value> = page
        .entries
        .iter()
        .map(|(name, has_manifests)| {
            let stored = settings.repositories.get(name);
            let public = RepositoryName::parse(name)
                .is_some_and(|name| caller.anyone_may(&name, Action::Pull));
            json!({
                "name": name,
                "description": stored.map_or("", |s| s.description.as_str()),
                "visibility": stored.map_or(Visibility::Private, |s| s.visibility),
                "public": public,
                "empty": !has_manifests,
            })
        })
        .collect();
    let mut response = axum::Json(json!({
        "repositories": repositories,
        "more": page.more,
    }))
    .into_response();
    if let (true, Some((last, _))) = (page.more, page.entries.last()) {
        let encode =
            |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
        let link = format!(
            "</v2/_berth/repositories?n={n}&last={}&q={}>; rel=\"next\"",
            encode(last),
            encode(&query)
        );
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).expect("encoded link is a valid header"),
        );
    }
    Ok(response)
}
