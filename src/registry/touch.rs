//! The write path's side of the touch-before-use protocol, on which online
//! garbage collection rests (`lifecycle/gc.rs`; the whole argument is in
//! `docs/design/gc.md`).
//!
//! A collection removes an object only if it was not written or touched
//! since its cutoff (`Storage::delete_if_untouched_since`). So whoever makes
//! an existing object reachable again (a manifest naming a blob, a mount, a
//! re-pushed upload or manifest) goes through these helpers: it touches the
//! object, or writes it (a write creates a new file or touches the one
//! found), and relies on it only if the touch found it. Then a collection
//! running meanwhile either spares the object or the operation learns it is
//! gone and is refused (`MANIFEST_BLOB_UNKNOWN`), never acknowledged
//! incomplete.

use bytes::Bytes;

use super::{storage_error, Registry};
use crate::oci::{Digest, Result};
use crate::storage::{layout, WriteMode};

impl Registry {
    /// Marks `key` as in use now; false when it does not exist (any more).
    pub(super) async fn touch(&self, key: &str) -> Result<bool> {
        self.storage.touch(key).await.map_err(storage_error)
    }

    /// Writes a link, or, when storage holds that link already, touches it
    /// (storage does both in one step): either way it is newer than any
    /// running collection's cutoff.
    pub(super) async fn write_link_fresh(&self, key: &str, digest: &Digest) -> Result<()> {
        self.write_link(key, digest).await.map(drop)
    }

    /// Stores content under its digest unless it is there, and touches it
    /// when it is: the content is newer than any running collection's
    /// cutoff. Returns whether it was written (hashed by us, then).
    pub(super) async fn put_content_fresh(&self, digest: &Digest, content: Bytes) -> Result<bool> {
        self.storage
            .put(
                &layout::blob_data(digest),
                content,
                WriteMode::CreateIfAbsent,
            )
            .await
            .map_err(storage_error)
    }

    /// [`Registry::put_content_fresh`], then the link naming the content in
    /// its repository, in that order (a reader that finds the link finds the
    /// content), as one chain of writes the storage may share work between.
    /// Returns whether the content was written (hashed by us, then).
    pub(super) async fn put_content_and_link_fresh(
        &self,
        digest: &Digest,
        content: Bytes,
        link: &str,
    ) -> Result<bool> {
        let written = self
            .storage
            .put_chain(vec![
                (
                    layout::blob_data(digest),
                    content,
                    WriteMode::CreateIfAbsent,
                ),
                (
                    link.to_owned(),
                    layout::link_body(digest),
                    WriteMode::Overwrite,
                ),
            ])
            .await
            .map_err(storage_error)?;
        self.caches.wrote_link(link, Some(digest.clone()));
        Ok(written[0])
    }
}
