//! `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<reference>` (end-3, end-7,
//! end-9). The body is stored byte for byte; `Content-Type` on the way out is
//! the stored media type.

use axum::body::Body;
use axum::body::Body as RequestBody;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use super::{
    digest_param, header_str, location, query_pairs, ApiError, ApiResult, DOCKER_CONTENT_DIGEST,
};
use crate::oci::manifest::kind_of_media_type;
use crate::oci::{ErrorCode, Reference, RegistryError, RepositoryName, Tag};
use crate::registry::Registry;

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");

fn reference_param(reference: &str, unknown: ErrorCode) -> Result<Reference, ApiError> {
    if reference.contains(':') {
        return Ok(Reference::Digest(digest_param(reference)?));
    }
    Reference::parse(reference).ok_or_else(|| {
        RegistryError::with_detail(unknown, format!("invalid tag {reference:?}")).into()
    })
}

pub async fn get(
    registry: &Registry,
    name: &RepositoryName,
    reference: &str,
    parts: &Parts,
    with_body: bool,
) -> ApiResult {
    let reference = reference_param(reference, ErrorCode::ManifestUnknown)?;
    let manifest = registry.get_manifest(name, &reference).await?;
    if !accepts(&parts.headers, &manifest.media_type) {
        return Err(RegistryError::with_detail(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest is {}, which the Accept header excludes",
                manifest.media_type
            ),
        )
        .into());
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, manifest.body.len())
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", manifest.digest));
    let body = if with_body {
        Body::from(manifest.body)
    } else {
        Body::empty()
    };
    Ok(response.body(body).expect("valid response"))
}

/// Whether the client's `Accept` allows `media_type`. Clients that name no
/// manifest type at all (or a wildcard) accept whatever is stored.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let accepted: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or_default().trim())
        .collect();
    let names_manifest_types = accepted.iter().any(|t| kind_of_media_type(t).is_some());
    !names_manifest_types || accepted.iter().any(|&t| t == media_type || t == "*/*")
}

pub async fn put(
    registry: &Registry,
    name: &RepositoryName,
    reference: &str,
    parts: &Parts,
    body: RequestBody,
) -> ApiResult {
    let reference = reference_param(reference, ErrorCode::ManifestInvalid)?;
    let mut extra_tags = Vec::new();
    for (key, value) in query_pairs(parts) {
        if key == "tag" {
            let tag = Tag::parse(&value).ok_or_else(|| {
                RegistryError::with_detail(
                    ErrorCode::ManifestInvalid,
                    format!("invalid tag {value:?}"),
                )
            })?;
            extra_tags.push(tag);
        }
    }
    let content_type = header_str(&parts.headers, header::CONTENT_TYPE)
        .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned());
    let limit = registry.limits().max_manifest_bytes;
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                RegistryError::with_detail(
                    ErrorCode::TooLarge,
                    format!("manifests are limited to {limit} bytes"),
                )
            } else {
                RegistryError::with_detail(
                    ErrorCode::ManifestInvalid,
                    format!("reading the body: {e}"),
                )
            }
        })?
        .to_bytes();

    let put = registry
        .put_manifest(name, &reference, content_type.as_deref(), body, &extra_tags)
        .await?;
    let mut response = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                location(&format!("/v2/{name}/manifests/{}", put.digest)),
            ),
            (DOCKER_CONTENT_DIGEST, location(&put.digest.to_string())),
            (header::CONTENT_LENGTH, location("0")),
        ],
    )
        .into_response();
    for tag in &extra_tags {
        response
            .headers_mut()
            .append(OCI_TAG, location(tag.as_str()));
    }
    if let Some(subject) = put.subject {
        response
            .headers_mut()
            .insert(OCI_SUBJECT, location(&subject.to_string()));
    }
    Ok(response)
}

pub async fn delete(registry: &Registry, name: &RepositoryName, reference: &str) -> ApiResult {
    let reference = reference_param(reference, ErrorCode::ManifestUnknown)?;
    registry.delete_manifest(name, &reference).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
