//! Requests for mirrored names (`[[proxy]]` entries): the mirror makes a
//! manifest or blob local before the usual handler serves it
//! (docs/design/mirror.md §3).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::routes::{Resource, Route};
use super::{ApiError, DOCKER_CONTENT_DIGEST};
use crate::mirror::{Mirror, UpstreamBlob};
use crate::oci::RepositoryName;
use crate::registry::Registry;

/// Fetches what the request names when it is not here (or, for a tag, is
/// due for a check upstream). `None`: the route's handler answers as for
/// any repository; `Some`: the answer (an error, or a blob `HEAD` answered
/// from the upstream's size, nothing fetched).
pub(super) async fn prepare(
    mirror: &Arc<Mirror>,
    registry: &Arc<Registry>,
    route: &Route<'_>,
    name: &RepositoryName,
) -> Option<Response> {
    let method = &route.row.method;
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let outcome = match route.row.resource {
        Resource::Manifest => mirror
            .prepare_manifest(registry, name, route.last)
            .await
            .map(|()| None),
        Resource::Blob => {
            mirror
                .prepare_blob(registry, name, route.last, method == Method::GET)
                .await
        }
        _ => return None,
    };
    match outcome {
        Ok(None) => None,
        Ok(Some(UpstreamBlob { size })) => Some(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size)
                .header(DOCKER_CONTENT_DIGEST, route.last)
                .body(Body::empty())
                .expect("valid response"),
        ),
        Err(e) => Some(ApiError::from(e).into_response()),
    }
}
