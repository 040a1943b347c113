//! `GET /v2/<name>/tags/list` (end-8a, end-8b).

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::json;

use axum::response::Response;

use super::{next_page_link, pagination, query_pairs, ApiResult};
use crate::oci::RepositoryName;
use crate::registry::{paginate, Page, Registry};

pub async fn list(registry: &Registry, name: &RepositoryName, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    let page = registry.list_tags(name, n, last.as_deref()).await?;
    Ok(page_response(name, page, n))
}

/// The page of a whole sorted tag list that the request's `n` and `last`
/// ask for, under the name the client asked by (a mirror's tags).
pub fn list_of(all: &[String], asked: &RepositoryName, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    Ok(page_response(asked, paginate(all, n, last.as_deref()), n))
}

fn page_response(name: &RepositoryName, page: Page, n: Option<usize>) -> Response {
    let mut response =
        axum::Json(json!({ "name": name.as_str(), "tags": page.entries })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.entries.last()) {
        let link = next_page_link(&format!("/v2/{name}/tags/list"), n, last);
        response.headers_mut().insert(header::LINK, link);
    }
    response
}
