//! `GET /v2/<name>/_berth/usage`: what a repository uses (bytes its images
//! reference, manifests, tags) and the `[[quotas]]` rule that bounds it.

use axum::response::IntoResponse;

use super::ApiResult;
use crate::oci::RepositoryName;
use crate::registry::Registry;

pub async fn get(registry: &Registry, name: &RepositoryName) -> ApiResult {
    Ok(axum::Json(registry.usage(name).await?).into_response())
}
