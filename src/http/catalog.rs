//! `GET /v2/_catalog`: repository names, paginated like tags. With access
//! control on, a caller sees only the repositories it may pull: names are
//! filtered before they are counted, so `n`, `last` and the `Link` to the
//! next page are about what this caller sees.

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::json;

use super::auth::Caller;
use super::{next_page_link, pagination, query_pairs, ApiResult};
use crate::registry::Registry;

pub async fn list(registry: &Registry, caller: &Caller, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    let filter = caller.catalog_filter();
    let page = registry
        .catalog_visible(n, last.as_deref(), |name| filter.shows(name))
        .await?;
    let mut response = axum::Json(json!({ "repositories": page.entries })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.entries.last()) {
        response
            .headers_mut()
            .insert(header::LINK, next_page_link("/v2/_catalog", n, last));
    }
    Ok(response)
}
