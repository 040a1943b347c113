//! `GET /v2/_catalog`: repository names, paginated like tags. With access
//! control on, a caller sees only the repositories it may pull: the whole
//! list is filtered first and then paginated, so `n`, `last` and the `Link`
//! to the next page are about what this caller sees.

use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::json;

use super::auth::{Caller, CatalogFilter};
use super::{next_page_link, pagination, query_pairs, ApiResult};
use crate::oci::RepositoryName;
use crate::registry::{paginate, Registry};

pub async fn list(registry: &Registry, caller: &Caller, parts: &Parts) -> ApiResult {
    let (n, last) = pagination(&query_pairs(parts))?;
    let page = match caller.catalog_filter() {
        CatalogFilter::Everything => registry.catalog(n, last.as_deref()).await?,
        filter => {
            let all = registry.catalog(None, None).await?.entries;
            let visible: Vec<String> = all
                .into_iter()
                .filter(|name| RepositoryName::parse(name).is_some_and(|name| filter.shows(&name)))
                .collect();
            paginate(&visible, n, last.as_deref())
        }
    };
    let mut response = axum::Json(json!({ "repositories": page.entries })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.entries.last()) {
        response
            .headers_mut()
            .insert(header::LINK, next_page_link("/v2/_catalog", n, last));
    }
    Ok(response)
}
