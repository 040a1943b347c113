//! Never serving content that does not match its digest.
//!
//! Content is addressed by digest, so a client checks what it pulls, but it
//! can only refuse a wrong body after receiving it whole, and some tools cache
//! what they received before checking. So the registry checks first: the
//! first full read in this process of any blob it did not commit itself is
//! hashed while it streams, and the chunk that completes it is held back until
//! the digest checks out. On a mismatch the response is cut short (the client
//! sees a failed transfer, never a complete wrong body), the content is moved
//! to quarantine and an error is logged; later reads find no blob.
//!
//! Content this process committed was hashed while it arrived, so it counts as
//! verified from the start: a push followed by pulls pays nothing extra. A
//! store that checks content itself as it reads it, once for all readers
//! (`ContentRead::verified`: the S3 blob cache, whose download a pull storm's
//! readers all follow), is not checked again: its stream fails before its
//! last byte on a mismatch, which quarantines the blob here all the same.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::cache::Caches;
use super::{storage_error, Registry};
use crate::oci::{Digest, ErrorCode, Hasher, Result};
use crate::storage::{layout, ByteStream, Storage};

impl Registry {
    /// Moves content that does not match `digest` out of the store.
    pub(super) async fn quarantine(&self, digest: &Digest) {
        quarantine(self.storage.clone(), self.caches.clone(), digest.clone()).await;
    }

    /// Reads a whole blob of `size` bytes and checks it against its digest
    /// (before a ranged read of content not verified yet). A mismatch
    /// quarantines it and reads as `BLOB_UNKNOWN`.
    pub(super) async fn verify_blob(&self, digest: &Digest) -> Result<()> {
        let read = self
            .storage
            .read(&layout::blob_data(digest), None)
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::BlobUnknown)?;
        let mut stream = read.stream;
        let mut hasher = (!read.verified).then(|| Hasher::new(digest.algorithm()));
        let mut seen = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) if read.verified && e.kind() == io::ErrorKind::InvalidData => {
                    self.quarantine(digest).await;
                    return Err(ErrorCode::BlobUnknown.into());
                }
                Err(e) => return Err(storage_error(e)),
            };
            seen += chunk.len() as u64;
            if let Some(hasher) = &mut hasher {
                hasher.update(&chunk);
            }
        }
        let matches = hasher.is_none_or(|hasher| &hasher.finish() == digest);
        if seen == read.size && matches {
            self.caches.verified(digest);
            Ok(())
        } else {
            self.quarantine(digest).await;
            Err(ErrorCode::BlobUnknown.into())
        }
    }

    /// Checks whole content held in memory; a mismatch quarantines it.
    pub(super) async fn verify_content(&self, digest: &Digest, content: &[u8]) -> bool {
        if &Digest::of(digest.algorithm(), content) == digest {
            self.caches.verified(digest);
            true
        } else {
            self.quarantine(digest).await;
            false
        }
    }

    /// Streams a whole blob the store checks as it reads it
    /// (`ContentRead::verified`): verified here once it ends whole, and
    /// quarantined if the store found it does not match.
    pub(super) fn vouched(&self, digest: &Digest, inner: ByteStream) -> ByteStream {
        let state = (
            inner,
            self.storage.clone(),
            self.caches.clone(),
            digest.clone(),
        );
        Box::pin(futures::stream::unfold(Some(state), |state| async move {
            let (mut inner, storage, caches, digest) = state?;
            match inner.next().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some((inner, storage, caches, digest)))),
                Some(Err(e)) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        // On a task of its own, so that it finishes even if
                        // the response is dropped; the client sees the
                        // failure after it, as with `Verifying`.
                        let _ = tokio::spawn(quarantine(storage, caches, digest)).await;
                    }
                    Some((Err(e), None))
                }
                None => {
                    caches.verified(&digest);
                    None
                }
            }
        }))
    }

    /// Streams the whole blob `read` (of `size` bytes), checking it against
    /// `digest` on the way (see the module comment).
    pub(super) fn verifying(&self, digest: &Digest, size: u64, inner: ByteStream) -> ByteStream {
        Box::pin(Verifying {
            inner,
            hasher: Some(Hasher::new(digest.algorithm())),
            digest: digest.clone(),
            size,
            seen: 0,
            storage: self.storage.clone(),
            caches: self.caches.clone(),
            failing: None,
            done: false,
        })
    }
}

async fn quarantine(storage: Arc<dyn Storage>, caches: Arc<Caches>, digest: Digest) {
    // A push that committed good content since this read began has replaced
    // the bad copy: that one must stay.
    if caches.is_verified(&digest) {
        return;
    }
    caches.lost_blob(&digest);
    let to = layout::quarantined_blob(&digest);
    match storage.rename(&layout::blob_data(&digest), &to).await {
        Ok(true) => tracing::error!(
            %digest,
            quarantine = to,
            "blob content does not match its digest: moved to quarantine, no longer served"
        ),
        Ok(false) => {}
        Err(e) => tracing::error!(
            %digest,
            error = %e,
            "blob content does not match its digest, and moving it to quarantine failed"
        ),
    }
    // A reader that looked the size up between the first forgetting and the
    // move may have cached it again.
    caches.lost_blob(&digest);
}

/// A blob's stream that withholds its last chunk until the whole content has
/// hashed to the digest.
struct Verifying {
    inner: ByteStream,
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    seen: u64,
    storage: Arc<dyn Storage>,
    caches: Arc<Caches>,
    /// The quarantine in progress; spawned so that it completes even if the
    /// client goes away meanwhile.
    failing: Option<tokio::task::JoinHandle<()>>,
    done: bool,
}

impl Verifying {
    fn fail(&mut self) {
        self.hasher = None;
        self.failing = Some(tokio::spawn(quarantine(
            self.storage.clone(),
            self.caches.clone(),
            self.digest.clone(),
        )));
    }
}

impl Stream for Verifying {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(task) = this.failing.as_mut() {
                if Pin::new(task).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.failing = None;
                this.done = true;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} does not match its digest", this.digest),
                ))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(hasher) = this.hasher.as_mut() else {
                this.done = true;
                continue;
            };
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    hasher.update(&chunk);
                    this.seen += chunk.len() as u64;
                    if this.seen < this.size {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    let actual = this.hasher.take().expect("hashing").finish();
                    if this.seen == this.size && actual == this.digest {
                        this.caches.verified(&this.digest);
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    this.fail();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                // Shorter than its size: nothing completes the body, so the
                // client cannot take it for whole; it will be checked again.
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob {} ended before its size", this.digest),
                    ))));
                }
            }
        }
    }
}
