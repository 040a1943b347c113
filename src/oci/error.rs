//! The spec's error codes (distribution-spec, "Error Codes") and the one error
//! type every layer returns. The http layer maps a code to its status and
//! renders `{"errors":[{"code","message","detail"}]}`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// Distribution's code for an unusable `n` in a paginated listing.
    PaginationNumberInvalid,
    /// Not a spec code: a `Range`/`Content-Range` the registry cannot honour.
    RangeInvalid,
    /// Not a spec code: a body larger than the registry accepts.
    TooLarge,
    /// Not a spec code: a query parameter of an extension endpoint that is
    /// malformed or contradicts another (the spec's codes have none).
    ParameterInvalid,
    /// `DENIED`, for a push or delete that would change an immutable tag.
    TagImmutable,
    /// Not a spec code: an extension endpoint asked to create what exists
    /// (a robot name taken). Sent as `DENIED` with status 409.
    AlreadyExists,
    /// Not a spec code: storage or another internal failure (details are logged, never sent).
    Internal,
    /// Not a spec code: the registry is shutting down or storage is unavailable.
    Unavailable,
    /// Storage has no room left (a full disk or quota). Sent as `UNKNOWN`,
    /// the spec's code for failures it does not name, with status 507 and a
    /// message saying what happened: the push can be retried once space is freed.
    StorageFull,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::TooLarge => "SIZE_INVALID",
            ErrorCode::ParameterInvalid => "PARAMETER_INVALID",
            ErrorCode::TagImmutable | ErrorCode::AlreadyExists => "DENIED",
            ErrorCode::Internal => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::StorageFull => "UNKNOWN",
        }
    }

    /// The spec's one-line description, used as the `message` field.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::TagImmutable => {
                "the tag is immutable: it cannot be moved to another image or deleted"
            }
            ErrorCode::AlreadyExists => "the name is taken",
            ErrorCode::PaginationNumberInvalid => "invalid number of results requested",
            ErrorCode::RangeInvalid => "requested range not satisfiable",
            ErrorCode::TooLarge => "request body too large",
            ErrorCode::ParameterInvalid => "invalid query parameter",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "service unavailable",
            ErrorCode::StorageFull => "insufficient storage: the registry's storage is full",
        }
    }
}

/// An error with a spec code and an optional human detail for the client.
#[derive(Debug, Clone)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub detail: Option<String>,
}

impl RegistryError {
    pub fn new(code: ErrorCode) -> RegistryError {
        RegistryError { code, detail: None }
    }

    pub fn with_detail(code: ErrorCode, detail: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            detail: Some(detail.into()),
        }
    }

    /// An internal failure. The cause is logged here, with context, and is
    /// never sent to the client (it may contain paths).
    pub fn internal(context: &str, cause: impl fmt::Display) -> RegistryError {
        tracing::error!(%cause, "{context}");
        RegistryError::new(ErrorCode::Internal)
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.code.as_str()),
            None => f.write_str(self.code.as_str()),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<ErrorCode> for RegistryError {
    fn from(code: ErrorCode) -> RegistryError {
        RegistryError::new(code)
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
