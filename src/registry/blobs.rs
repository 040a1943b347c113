//! Blobs as a repository sees them (distribution-spec "Pulling blobs",
//! "Deleting blobs", "Mounting a blob from another repository").
//!
//! Content is shared by digest across the store, but a repository can read a
//! blob only through its own `_layers` link: holding a digest is not enough to
//! read another repository's content.

use std::ops::Range;

use super::{storage_error, Registry};
use crate::oci::{Digest, ErrorCode, RepositoryName, Result};
use crate::storage::{layout, ByteStream, WriteMode};

/// A blob being read: its full size and the requested bytes.
pub struct BlobRead {
    pub size: u64,
    pub stream: ByteStream,
}

impl Registry {
    /// The size of a blob linked into `name`, or `BLOB_UNKNOWN`.
    pub async fn blob_size(&self, name: &RepositoryName, digest: &Digest) -> Result<u64> {
        if !self.exists(&layout::layer_link(name, digest)).await? {
            return Err(ErrorCode::BlobUnknown.into());
        }
        self.storage
            .size(&layout::blob_data(digest))
            .await
            .map_err(storage_error)?
            .ok_or_else(|| ErrorCode::BlobUnknown.into())
    }

    /// Streams a blob, or the `range` of it; the range must have been checked
    /// against [`Registry::blob_size`].
    pub async fn read_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        if !self.exists(&layout::layer_link(name, digest)).await? {
            return Err(ErrorCode::BlobUnknown.into());
        }
        let read = self
            .storage
            .read(&layout::blob_data(digest), range)
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::BlobUnknown)?;
        Ok(BlobRead {
            size: read.size,
            stream: read.stream,
        })
    }

    /// Unlinks a blob from one repository. The content stays for others; the
    /// garbage collector reclaims it when nothing links it.
    pub async fn delete_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        let removed = self
            .storage
            .delete(&layout::layer_link(name, digest))
            .await
            .map_err(storage_error)?;
        if removed {
            Ok(())
        } else {
            Err(ErrorCode::BlobUnknown.into())
        }
    }

    /// Links an existing blob into `name` without an upload. With `from`, the
    /// blob must be linked in that repository; without, it must exist in the
    /// store. Returns false (the client then uploads) when it cannot be mounted.
    pub async fn mount_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<bool> {
        let available = match from {
            Some(source) => self.blob_size(source, digest).await.is_ok(),
            None => self.exists(&layout::blob_data(digest)).await?,
        };
        if available {
            self.link_blob(name, digest).await?;
        }
        Ok(available)
    }

    pub(super) async fn link_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        self.storage
            .put(
                &layout::layer_link(name, digest),
                layout::link_body(digest),
                WriteMode::Overwrite,
            )
            .await
            .map_err(storage_error)?;
        Ok(())
    }
}
