//! `GET /v2/_catalog`: repository names, paginated like tags.

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::json;

use super::{next_page_link, pagination, query_pairs, ApiResult};
use crate::registry::Registry;

pub async fn list(registry: &Registry, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    let page = registry.catalog(n, last.as_deref()).await?;
    let mut response = axum::Json(json!({ "repositories": page.entries })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.entries.last()) {
        response
            .headers_mut()
            .insert(header::LINK, next_page_link("/v2/_catalog", n, last));
    }
    Ok(response)
}
