//! Blobs as a repository sees them (distribution-spec "Pulling blobs",
//! "Deleting blobs", "Mounting a blob from another repository").
//!
//! Content is shared by digest across the store, but a repository can read a
//! blob only through its own `_layers` link: holding a digest is not enough to
//! read another repository's content.

use std::ops::Range;

use bytes::Bytes;
use futures::stream;

use super::cache::SMALL_BLOB_BYTES;
use super::{storage_error, Registry};
use crate::oci::{Digest, ErrorCode, RegistryError, RepositoryName, Result};
use crate::storage::{layout, ByteStream, LocalFile};

/// A blob found in a repository (its link checked): what can be read.
pub struct Blob {
    digest: Digest,
    pub size: u64,
}

impl Registry {
    /// The blob `digest` as repository `name` holds it, or `BLOB_UNKNOWN`.
    pub async fn open_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<Blob> {
        // The link and the size side by side (one round trip on an object
        // store, not two); the size is answered only through the link.
        let link = layout::layer_link(name, digest);
        let (linked, size) = futures::try_join!(self.read_link(&link), self.content_size(digest))?;
        if linked.is_none() {
            return Err(ErrorCode::BlobUnknown.into());
        }
        let size = size.ok_or(ErrorCode::BlobUnknown)?;
        // An empty body is served without reading: check it here.
        if size == 0 && !self.verify_content(digest, &[]).await {
            return Err(ErrorCode::BlobUnknown.into());
        }
        Ok(Blob {
            digest: digest.clone(),
            size,
        })
    }

    /// Streams an opened blob, or the `range` of it (which must lie within
    /// its size). Small blobs are served from memory. Content not verified
    /// yet in this process is checked against its digest first (see
    /// `integrity.rs`): a range after reading the whole blob, a whole blob
    /// while it streams.
    pub async fn read_blob(&self, blob: &Blob, range: Option<Range<u64>>) -> Result<ByteStream> {
        let Blob { digest, size } = blob;
        if *size <= SMALL_BLOB_BYTES {
            let content = self.small_blob(digest).await?;
            if content.len() as u64 != *size {
                return Err(RegistryError::internal("blob content changed size", digest));
            }
            let part = match range {
                Some(r) => content.slice(r.start as usize..r.end as usize),
                None => content,
            };
            return Ok(Box::pin(stream::once(async move { Ok(part) })));
        }
        let verified = self.caches.is_verified(digest);
        if !verified && range.is_some() {
            self.verify_blob(digest).await?;
        }
        let read = self
            .storage
            .read(&layout::blob_data(digest), range.clone())
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::BlobUnknown)?;
        if verified || range.is_some() {
            Ok(read.stream)
        } else if read.verified {
            Ok(self.vouched(digest, read.stream))
        } else {
            Ok(self.verifying(digest, read.size, read.stream))
        }
    }

    /// An opened blob as a local file, for sending without copying, where
    /// that is safe: its content is verified, and the store has local
    /// files. None means: read it with [`Registry::read_blob`]. Small blobs
    /// are None too, as they are served from memory.
    pub async fn blob_file(&self, blob: &Blob) -> Result<Option<LocalFile>> {
        if blob.size <= SMALL_BLOB_BYTES || !self.caches.is_verified(&blob.digest) {
            return Ok(None);
        }
        let Some(files) = self.storage.local_files() else {
            return Ok(None);
        };
        let local = files
            .local_file(&layout::blob_data(&blob.digest))
            .await
            .map_err(storage_error)?;
        match local {
            Some(local) if local.size != blob.size => Err(RegistryError::internal(
                "blob content changed size",
                &blob.digest,
            )),
            local => Ok(local),
        }
    }

    /// Where a client may fetch an opened blob straight from the store (a
    /// signed URL), when the store is configured to redirect; the client then
    /// checks the digest itself (docker, containerd and skopeo do).
    pub async fn blob_redirect(&self, blob: &Blob) -> Result<Option<String>> {
        self.storage
            .redirect_url(&layout::blob_data(&blob.digest))
            .await
            .map_err(storage_error)
    }

    async fn small_blob(&self, digest: &Digest) -> Result<Bytes> {
        if let Some(content) = self.caches.small_blob(digest) {
            return Ok(content);
        }
        let content = self
            .storage
            .get(&layout::blob_data(digest))
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::BlobUnknown)?;
        if !self.caches.is_verified(digest) && !self.verify_content(digest, &content).await {
            return Err(ErrorCode::BlobUnknown.into());
        }
        self.caches.keep_small_blob(digest, content.clone());
        Ok(content)
    }

    /// Unlinks a blob from one repository. The content stays for others; the
    /// garbage collector reclaims it when nothing links it.
    pub async fn delete_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        if self.remove_link(&layout::layer_link(name, digest)).await? {
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
            Some(source) => self.open_blob(source, digest).await.is_ok(),
            None => self.content_size(digest).await?.is_some(),
        };
        // Touch before use: the content may be being collected (the source's
        // link, read from a cache, may be older than a collection). Only
        // content the touch found, and so protected, is linked.
        if !available || !self.touch(&layout::blob_data(digest)).await? {
            return Ok(false);
        }
        self.write_link_fresh(&layout::layer_link(name, digest), digest)
            .await?;
        Ok(true)
    }
}
