//! Registry errors as HTTP responses: the spec's status per code and the
//! `{"errors":[{"code","message","detail"}]}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::oci::{ErrorCode, RegistryError};

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BlobUnknown
        | ErrorCode::BlobUploadUnknown
        | ErrorCode::ManifestUnknown
        | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadInvalid
        | ErrorCode::DigestInvalid
        | ErrorCode::ManifestBlobUnknown
        | ErrorCode::ManifestInvalid
        | ErrorCode::NameInvalid
        | ErrorCode::SizeInvalid
        | ErrorCode::PaginationNumberInvalid
        | ErrorCode::ParameterInvalid => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Denied | ErrorCode::TagImmutable => StatusCode::FORBIDDEN,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// The response for a failed request.
pub struct ApiError(pub RegistryError);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        ApiError(e)
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> ApiError {
        ApiError(RegistryError::new(code))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let RegistryError { code, detail } = self.0;
        let body = json!({
            "errors": [{
                "code": code.as_str(),
                "message": code.message(),
                "detail": detail.unwrap_or_default(),
            }]
        });
        (status_of(code), axum::Json(body)).into_response()
    }
}

pub type ApiResult = Result<Response, ApiError>;
