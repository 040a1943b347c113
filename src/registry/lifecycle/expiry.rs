//! Upload expiry: an upload whose session record, data and start time have
//! all been left alone for `upload_expiry` is abandoned, and its directory
//! removed. Directories without a session record (a single-request upload
//! interrupted by a crash, or Distribution's own uploads) expire the same way.
//!
//! Each file goes through [`Storage::delete_if_untouched_since`], so a chunk
//! that arrives while the upload is being expired keeps it; once its session
//! record is gone, the upload's id answers `BLOB_UPLOAD_UNKNOWN`.
//!
//! [`Storage::delete_if_untouched_since`]: crate::storage::Storage::delete_if_untouched_since

use std::time::SystemTime;

use crate::oci::{RepositoryName, Result};
use crate::registry::{storage_error, Registry, RepositoryWalk};
use crate::storage::{layout, Listing};

/// What upload expiry removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub dry_run: bool,
    pub expired: usize,
    /// Upload content removed.
    pub bytes_removed: u64,
    /// Uploads that became active again while they were being expired.
    pub spared: usize,
    pub problems: Vec<String>,
}

impl Registry {
    /// Removes abandoned uploads in every repository.
    pub async fn expire_uploads(&self, dry_run: bool) -> Result<ExpiryReport> {
        let mut report = ExpiryReport {
            dry_run,
            ..ExpiryReport::default()
        };
        let cutoff = SystemTime::now()
            .checked_sub(self.lifecycle.upload_expiry)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut walk = RepositoryWalk::new(self.storage.as_ref());
        while let Some((name, children)) =
            super::next_repository_dir(&mut walk, &mut report.problems).await?
        {
            // No `_uploads` when the walk listed the repository: no upload
            // old enough to expire (one started since is new). On an object
            // store this spares a request per repository.
            if !children.iter().any(|c| c == "_uploads") {
                continue;
            }
            let uploads = layout::uploads_dir(&name);
            let mut ids = Listing::new(self.storage.as_ref(), uploads.as_str());
            while let Some(id) = ids.next().await.map_err(storage_error)? {
                if !layout::is_upload_id(&id) {
                    report
                        .problems
                        .push(format!("{uploads}/{id}: not an upload id, skipped"));
                    continue;
                }
                self.expire_upload(&name, &id, cutoff, &mut report).await?;
            }
        }
        Ok(report)
    }

    async fn expire_upload(
        &self,
        name: &RepositoryName,
        id: &str,
        cutoff: SystemTime,
        report: &mut ExpiryReport,
    ) -> Result<()> {
        // In this process, a request on the upload finishes first.
        let _serialised = self.upload_locks.lock(id).await;
        let files = [
            layout::upload_session(name, id),
            layout::upload_data(name, id),
            layout::upload_started_at(name, id),
        ];
        let mut newest = None;
        let mut size = 0;
        for key in &files {
            if let Some(info) = self.storage.stat(key).await.map_err(storage_error)? {
                newest = newest.max(Some(info.modified));
                if *key == files[1] {
                    size = info.size;
                }
            }
        }
        if newest.is_some_and(|t| t >= cutoff) {
            return Ok(());
        }
        // Read before the record goes: an object store's multipart upload is
        // found only through it, and so is its size (no `data` object holds
        // its bytes until it completes).
        let session = self.storage.get(&files[0]).await.map_err(storage_error)?;
        let recorded = session
            .as_deref()
            .and_then(super::super::uploads::session_offset_of)
            .unwrap_or(0);
        let size = size.max(recorded);
        if report.dry_run {
            report.expired += 1;
            report.bytes_removed += size;
            return Ok(());
        }
        for key in &files {
            let exists = self.storage.stat(key).await.map_err(storage_error)?;
            if exists.is_some()
                && !self
                    .storage
                    .delete_if_untouched_since(key, cutoff)
                    .await
                    .map_err(storage_error)?
            {
                // Written to since we looked: the upload is alive again. (If
                // its record went already, the client learns the id is
                // unknown and starts over.)
                report.spared += 1;
                return Ok(());
            }
        }
        // An object store's multipart upload, found only through the record.
        if let Some(state) = session
            .as_deref()
            .and_then(super::super::uploads::storage_state_of)
        {
            self.storage
                .abort_upload(&files[1], &state)
                .await
                .map_err(storage_error)?;
        }
        // What else is left (Distribution's hash states, temp files).
        self.storage
            .delete_all(&layout::upload_dir(name, id))
            .await
            .map_err(storage_error)?;
        report.expired += 1;
        report.bytes_removed += size;
        Ok(())
    }
}
