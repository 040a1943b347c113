//! `GET /v2/<name>/tags/list` (end-8a, end-8b), and Berth's tag list with
//! details, `GET /v2/<name>/_berth/tags`.

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use axum::response::Response;

use super::{next_page_link, pagination, query_pairs, query_value, ApiResult};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::{paginate, Page, Registry, TagOrder, TagQuery, MAX_TAG_DETAILS};

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

/// `GET /v2/<name>/_berth/tags?sort=name|newest&q=&n=&last=`: a page of
/// tags with their digest, size, platforms and date (the web UI's tag
/// list), `next` the `last` of the next page.
pub async fn details(registry: &Registry, name: &RepositoryName, parts: &Parts) -> ApiResult {
    let pairs = query_pairs(parts);
    let invalid = |detail: String| RegistryError::with_detail(ErrorCode::ParameterInvalid, detail);
    let order = match query_value(&pairs, "sort") {
        None | Some("name") => TagOrder::Name,
        Some("newest") => TagOrder::Newest,
        Some(other) => return Err(invalid(format!("sort is name or newest, not {other:?}")).into()),
    };
    let limit = match query_value(&pairs, "n") {
        None => DEFAULT_DETAILS,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TAG_DETAILS).contains(n))
            .ok_or_else(|| invalid(format!("n is a number from 1 to {MAX_TAG_DETAILS}")))?,
    };
    let filter = query_value(&pairs, "q").filter(|q| !q.is_empty());
    if filter.is_some_and(|q| q.len() > 128) {
        return Err(invalid("q is longer than a tag (128 bytes)".to_owned()).into());
    }
    let query = TagQuery {
        order,
        filter: filter.map(str::to_owned),
        limit,
        after: query_value(&pairs, "last").map(str::to_owned),
    };
    let page = registry.tag_details(name, &query).await?;
    let tags: Vec<Value> = page
        .tags
        .iter()
        .map(|tag| {
            json!({
                "tag": tag.tag,
                "digest": tag.digest.as_ref().map(ToString::to_string),
                "media_type": tag.media_type,
                "size": tag.size,
                "platforms": tag.platforms,
                "updated_at": tag.updated.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "name": name.as_str(),
        "tags": tags,
        "total": page.total,
        "next": page.next,
    }))
    .into_response())
}

/// A page of details when the client names no size.
const DEFAULT_DETAILS: usize = 30;
