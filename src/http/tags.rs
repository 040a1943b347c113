//! `GET /v2/<name>/tags/list` (end-8a, end-8b).

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::json;

use super::{next_page_link, pagination, query_pairs, ApiResult};
use crate::oci::RepositoryName;
use crate::registry::Registry;

pub async fn list(registry: &Registry, name: &RepositoryName, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    let page = registry.list_tags(name, n, last.as_deref()).await?;
    let mut response =
        axum::Json(json!({ "name": name.as_str(), "tags": page.entries })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.entries.last()) {
        let link = next_page_link(&format!("/v2/{name}/tags/list"), n, last);
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}
