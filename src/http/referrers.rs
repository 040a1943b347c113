//! `GET /v2/<name>/referrers/<digest>` (end-12a, end-12b): always an OCI
//! index, empty when nothing refers to the digest.

use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use serde_json::json;

use super::{digest_param, query_pairs, query_value, ApiResult};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::RepositoryName;
use crate::registry::Registry;

const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub async fn list(
    registry: &Registry,
    name: &RepositoryName,
    digest: &str,
    parts: &Parts,
) -> ApiResult {
    let digest = digest_param(digest)?;
    let pairs = query_pairs(parts);
    let artifact_type = query_value(&pairs, "artifactType").filter(|t| !t.is_empty());
    let manifests = registry.referrers(name, &digest, artifact_type).await?;
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut response = axum::Json(index).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if artifact_type.is_some() {
        headers.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
