//! Berth's tag history extension (issue 5, "Rollbacks"), under the
//! `/v2/<name>/_<ext>/…` paths the distribution-spec reserves for extensions:
//!
//! - `GET …/_berth/tags/<tag>/history[?n=N]`: 200
//!   `{"name","tag","current","history":[{"digest","time","deleted"}]}`,
//!   newest first, at most `n` entries. Entries whose manifest was deleted
//!   are left out; a deletion of the tag is an entry with `"digest": null`.
//!   A tag that never had a history is 404 `MANIFEST_UNKNOWN` (as a pull of
//!   an unknown tag), or `NAME_UNKNOWN` when the repository does not exist.
//! - `POST …/_berth/tags/<tag>/rollback[?to=<digest>|?steps=N]`: points the
//!   tag at an earlier image of its history (default `steps=1`, the image
//!   before the current one) and answers 200 `{"name","tag","digest",
//!   "previous"}` with `Docker-Content-Digest`. Refusals: an immutable tag
//!   (403 `DENIED`), a digest not in the history or whose manifest is gone,
//!   or more steps than the history holds (404 `MANIFEST_UNKNOWN`), a
//!   malformed query (400 `DIGEST_INVALID`, `PARAMETER_INVALID`).

use std::time::SystemTime;

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::{
    digest_param, location, query_pairs, query_value, ApiError, ApiResult, DOCKER_CONTENT_DIGEST,
};
use crate::oci::{ErrorCode, RegistryError, RepositoryName, Tag};
use crate::registry::{Registry, RollbackTarget};

pub async fn history(
    registry: &Registry,
    name: &RepositoryName,
    tag: &str,
    parts: &Parts,
) -> ApiResult {
    let tag = tag_param(tag)?;
    let pairs = query_pairs(parts);
    let limit = match query_value(&pairs, "n") {
        None | Some("") => None,
        Some(n) => Some(super::decimal::<usize>(n).ok_or(ErrorCode::PaginationNumberInvalid)?),
    };
    let history = registry.tag_history_view(name, &tag, limit).await?;
    let changes: Vec<_> = history
        .changes
        .iter()
        .map(|change| {
            json!({
                "digest": change.digest.as_ref().map(ToString::to_string),
                "time": rfc3339_nanos(change.time),
                "deleted": change.digest.is_none(),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "name": name.as_str(),
        "tag": tag.as_str(),
        "current": history.current.as_ref().map(ToString::to_string),
        "history": changes,
    }))
    .into_response())
}

pub async fn rollback(
    registry: &Registry,
    name: &RepositoryName,
    tag: &str,
    parts: &Parts,
) -> ApiResult {
    let tag = tag_param(tag)?;
    let target = rollback_target(&query_pairs(parts))?;
    let rollback = registry.rollback_tag(name, &tag, &target).await?;
    let digest = rollback.digest.to_string();
    Ok((
        StatusCode::OK,
        [(DOCKER_CONTENT_DIGEST, location(&digest))],
        axum::Json(json!({
            "name": name.as_str(),
            "tag": tag.as_str(),
            "digest": digest,
            "previous": rollback.previous.as_ref().map(ToString::to_string),
        })),
    )
        .into_response())
}

/// A tag in the path; one that cannot exist is unknown, as in a manifest
/// `GET` by an invalid tag.
fn tag_param(tag: &str) -> Result<Tag, ApiError> {
    Tag::parse(tag).ok_or_else(|| {
        RegistryError::with_detail(ErrorCode::ManifestUnknown, format!("invalid tag {tag:?}"))
            .into()
    })
}

/// `to=<digest>` or `steps=N` (N ≥ 1), not both; neither means `steps=1`.
fn rollback_target(pairs: &[(String, String)]) -> Result<RollbackTarget, ApiError> {
    let invalid = |detail: &str| {
        ApiError::from(RegistryError::with_detail(
            ErrorCode::ParameterInvalid,
            detail,
        ))
    };
    match (query_value(pairs, "to"), query_value(pairs, "steps")) {
        (Some(_), Some(_)) => Err(invalid("give either `to` or `steps`, not both")),
        (Some(to), None) => Ok(RollbackTarget::Digest(digest_param(to)?)),
        (None, None) => Ok(RollbackTarget::Steps(1)),
        (None, Some(steps)) => match super::decimal::<usize>(steps) {
            Some(steps) if steps >= 1 => Ok(RollbackTarget::Steps(steps)),
            _ => Err(invalid("`steps` must be a whole number of at least 1")),
        },
    }
}

/// RFC 3339 in UTC with nanoseconds: history entries of one push can be
/// microseconds apart, and their order must show.
fn rfc3339_nanos(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn rollback_targets_default_to_one_step_and_refuse_nonsense() {
        let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(
            rollback_target(&pairs("")).ok(),
            Some(RollbackTarget::Steps(1))
        );
        assert_eq!(
            rollback_target(&pairs("steps=3")).ok(),
            Some(RollbackTarget::Steps(3))
        );
        assert_eq!(
            rollback_target(&pairs(&format!("to={digest}"))).ok(),
            Some(RollbackTarget::Digest(digest.parse().unwrap()))
        );
        let code = |query: &str| rollback_target(&pairs(query)).err().map(|e| e.0.code);
        assert_eq!(code("steps=0"), Some(ErrorCode::ParameterInvalid));
        assert_eq!(code("steps=-1"), Some(ErrorCode::ParameterInvalid));
        assert_eq!(code("steps=x"), Some(ErrorCode::ParameterInvalid));
        assert_eq!(
            code(&format!("to={digest}&steps=1")),
            Some(ErrorCode::ParameterInvalid)
        );
        assert_eq!(code("to=latest"), Some(ErrorCode::DigestInvalid));
    }

    #[test]
    fn times_are_utc_with_nanoseconds() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::new(1_764_000_000, 123_456_789);
        assert_eq!(rfc3339_nanos(time), "2025-11-24T16:00:00.123456789Z");
    }
}
