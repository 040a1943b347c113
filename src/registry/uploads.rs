//! Blob uploads (distribution-spec "Pushing blobs"): monolithic, chunked and
//! streamed, resumable, cancellable.
//!
//! An upload session is a record, not an open file: its id, start time, the
//! offset received so far and the running hash state. The record is saved
//! after every chunk, once the chunk's bytes are stored, so any request (or
//! any Berth process sharing the store) can continue the upload, and the final
//! PUT never re-reads the content to hash it. Bytes are hashed as they arrive.
//! Nothing is fsynced until the final PUT commits the blob: a session from
//! before a machine crash is refused (its storage generation differs), so a
//! session never vouches for bytes that were lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::{storage_error, Registry};
use crate::oci::{Algorithm, Digest, ErrorCode, Hasher, RegistryError, RepositoryName, Result};
use crate::storage::{layout, ByteStream, RequestBody, WriteMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadSession {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Bytes received so far; the next chunk must start here.
    pub offset: u64,
    pub algorithm: String,
    /// The running hash over `offset` bytes (see [`Hasher::save_state`]).
    pub hash_state: String,
    /// The storage's upload generation when the session started: content
    /// appended under another generation may be gone (see
    /// [`crate::storage::Storage::upload_generation`]).
    pub generation: String,
    /// The storage backend's account of the content so far (an object
    /// store's multipart upload and parts), saved with `offset` so the two
    /// never disagree (see [`crate::storage::Storage::append_upload`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_state: String,
}

/// What starting an upload produced.
pub enum UploadStart {
    /// The blob was mounted from another repository; no upload is needed.
    Mounted,
    /// A new session to send the content to.
    Session(UploadSession),
}

impl UploadSession {
    /// Chunks arrive strictly in order: a `Content-Range` start other than
    /// the current offset is refused (416) and the session is left unchanged.
    fn check_chunk_start(&self, start: Option<u64>) -> Result<()> {
        match start {
            Some(start) if start != self.offset => Err(RegistryError::with_detail(
                ErrorCode::RangeInvalid,
                format!("chunk must start at offset {}", self.offset),
            )),
            _ => Ok(()),
        }
    }

    fn hasher(&self) -> Result<Hasher> {
        Algorithm::parse(&self.algorithm)
            .and_then(|alg| Hasher::restore_state(alg, &self.hash_state))
            .ok_or_else(|| RegistryError::internal("corrupt upload session", &self.id))
    }
}

/// Hashes and counts the bytes a storage backend pulls through it.
struct HashingSource {
    inner: ByteStream,
    hasher: Hasher,
    received: u64,
}

impl Stream for HashingSource {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = this.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            this.hasher.update(chunk);
            this.received += chunk.len() as u64;
        }
        next
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Registry {
    /// Starts an upload session. `algorithm` is the one the client's final
    /// digest will most likely use (known when it sent `?digest=`).
    pub async fn start_upload(
        &self,
        name: &RepositoryName,
        algorithm: Algorithm,
    ) -> Result<UploadSession> {
        let session = UploadSession {
            id: uuid::Uuid::new_v4().to_string(),
            started_at: now_secs(),
            offset: 0,
            algorithm: algorithm.as_str().to_owned(),
            hash_state: Hasher::new(algorithm).save_state(),
            generation: self
                .storage
                .upload_generation()
                .unwrap_or_default()
                .to_owned(),
            storage_state: String::new(),
        };
        self.save_session(name, &session).await?;
        Ok(session)
    }

    /// Mounts the blob when it can, else starts a session.
    pub async fn start_upload_with_mount(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<UploadStart> {
        if self.mount_blob(name, digest, from).await? {
            return Ok(UploadStart::Mounted);
        }
        Ok(UploadStart::Session(
            self.start_upload(name, digest.algorithm()).await?,
        ))
    }

    pub async fn upload_status(&self, name: &RepositoryName, id: &str) -> Result<UploadSession> {
        self.load_session(name, id).await
    }

    /// Appends a chunk. `start`, when the client sent `Content-Range`, must be
    /// the current offset (else `RangeInvalid`, and the session is unchanged).
    pub async fn append_chunk(
        &self,
        name: &RepositoryName,
        id: &str,
        start: Option<u64>,
        body: RequestBody,
    ) -> Result<UploadSession> {
        let _guard = self.upload_locks.lock(id).await;
        let mut session = self.load_session(name, id).await?;
        session.check_chunk_start(start)?;
        self.append_to_session(name, &mut session, body).await?;
        self.save_session(name, &session).await?;
        Ok(session)
    }

    /// Completes an upload: appends the final chunk (if any), checks the
    /// content against `digest`, and makes the blob visible in `name`. On a
    /// mismatch nothing is committed and the session stays as it was.
    pub async fn finish_upload(
        &self,
        name: &RepositoryName,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        body: Option<RequestBody>,
    ) -> Result<()> {
        let _guard = self.upload_locks.lock(id).await;
        let mut session = self.load_session(name, id).await?;
        session.check_chunk_start(start)?;
        let mut body = body;
        if session.offset == 0 {
            if let Some(whole) = body.take() {
                match receive_small(whole).await.map_err(body_error)? {
                    Received::Whole(content) => {
                        self.store_whole(name, digest, content).await?;
                        if session.storage_state.is_empty() {
                            // Nothing was appended: the record is all the
                            // upload stored.
                            self.discard_session_record(name, id).await;
                        } else {
                            self.discard_upload(name, id).await;
                        }
                        return Ok(());
                    }
                    Received::Streaming(rest) => body = Some(rest),
                }
            }
        }
        // The final chunk is not saved into the session record: on success the
        // session ends, and on a mismatch the record keeps its earlier state.
        if let Some(body) = body {
            self.append_to_session(name, &mut session, body).await?;
        }
        let received = if session.algorithm == digest.algorithm().as_str() {
            session.hasher()?.finish()
        } else {
            let before = session.storage_state.clone();
            let received = self
                .rehash_upload(name, &mut session, digest.algorithm())
                .await?;
            if &received != digest && session.storage_state != before {
                // The storage had to finish the upload to read it back (an
                // object store): it cannot take more chunks.
                self.abort_upload(name, id, &session.storage_state).await;
                return Err(RegistryError::with_detail(
                    ErrorCode::DigestInvalid,
                    format!("content digest is {received}; start the upload again"),
                ));
            }
            received
        };
        if &received != digest {
            // The client can still correct its mistake; the final chunk is dropped.
            return Err(RegistryError::with_detail(
                ErrorCode::DigestInvalid,
                format!("content digest is {received}"),
            ));
        }
        self.commit(name, id, session.offset, digest, &session.storage_state)
            .await
    }

    /// A single-request upload (`POST ?digest=` with the content): no session
    /// record is written; a crash leaves only an orphaned upload directory
    /// that upload expiry removes.
    pub async fn upload_whole(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        body: RequestBody,
    ) -> Result<()> {
        let body = match receive_small(body).await.map_err(body_error)? {
            Received::Whole(content) => return self.store_whole(name, digest, content).await,
            Received::Streaming(body) => body,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let mut source = HashingSource {
            inner: body.stream,
            hasher: Hasher::new(digest.algorithm()),
            received: 0,
        };
        let data_key = layout::upload_data(name, &id);
        let mut state = String::new();
        let outcome = async {
            let size = self
                .storage
                .append_upload(&data_key, 0, &mut source, body.length, &mut state)
                .await
                .map_err(body_error)?;
            let received = source.hasher.clone().finish();
            if &received != digest {
                return Err(RegistryError::with_detail(
                    ErrorCode::DigestInvalid,
                    format!("content digest is {received}"),
                ));
            }
            Ok(size)
        }
        .await;
        match outcome {
            Ok(size) => self.commit(name, &id, size, digest, &state).await,
            Err(e) => {
                self.abort_upload(name, &id, &state).await;
                Err(e)
            }
        }
    }

    /// Stores a whole blob received in memory straight under its digest, if
    /// it matches `digest`: one durable write, and none when the store
    /// already has the content.
    async fn store_whole(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        content: Bytes,
    ) -> Result<()> {
        let received = Digest::of(digest.algorithm(), &content);
        if &received != digest {
            return Err(RegistryError::with_detail(
                ErrorCode::DigestInvalid,
                format!("content digest is {received}"),
            ));
        }
        let size = content.len() as u64;
        // Content already stored is touched instead of written, and so is an
        // existing link: a running garbage collection spares both (touch.rs; docs/design/gc.md).
        // Content found already in place was not hashed by us.
        let link = layout::layer_link(name, digest);
        if self
            .put_content_and_link_fresh(digest, content, &link)
            .await?
        {
            self.caches.verified(digest);
        }
        self.caches.wrote_blob(digest, size);
        Ok(())
    }

    pub async fn cancel_upload(&self, name: &RepositoryName, id: &str) -> Result<()> {
        let _guard = self.upload_locks.lock(id).await;
        let session = self.load_session(name, id).await?;
        self.storage
            .abort_upload(&layout::upload_data(name, id), &session.storage_state)
            .await
            .map_err(storage_error)?;
        self.storage
            .delete_all(&layout::upload_dir(name, id))
            .await
            .map_err(storage_error)
    }

    async fn append_to_session(
        &self,
        name: &RepositoryName,
        session: &mut UploadSession,
        body: RequestBody,
    ) -> Result<()> {
        let mut source = HashingSource {
            inner: body.stream,
            hasher: session.hasher()?,
            received: 0,
        };
        let written = self
            .storage
            .append_upload(
                &layout::upload_data(name, &session.id),
                session.offset,
                &mut source,
                body.length,
                &mut session.storage_state,
            )
            .await
            .map_err(body_error)?;
        debug_assert_eq!(written, source.received);
        session.offset += written;
        session.hash_state = source.hasher.save_state();
        Ok(())
    }

    /// Hashes an upload's content again with another algorithm: only when the
    /// client's final digest uses a different one than the session hashed.
    async fn rehash_upload(
        &self,
        name: &RepositoryName,
        session: &mut UploadSession,
        algorithm: Algorithm,
    ) -> Result<Digest> {
        use futures::StreamExt;
        let mut hasher = Hasher::new(algorithm);
        if session.offset == 0 {
            return Ok(hasher.finish());
        }
        // Only the bytes the session counts: a failed chunk may have left more.
        if let Some(mut read) = self
            .storage
            .read_upload(
                &layout::upload_data(name, &session.id),
                session.offset,
                &mut session.storage_state,
            )
            .await
            .map_err(storage_error)?
        {
            while let Some(chunk) = read.stream.next().await {
                hasher.update(&chunk.map_err(storage_error)?);
            }
        }
        Ok(hasher.finish())
    }

    async fn commit(
        &self,
        name: &RepositoryName,
        id: &str,
        size: u64,
        digest: &Digest,
        storage_state: &str,
    ) -> Result<()> {
        let data_key = layout::upload_data(name, id);
        if size == 0 {
            // Nothing was appended, so there may be no content object yet.
            if self.put_content_fresh(digest, bytes::Bytes::new()).await? {
                self.caches.verified(digest);
            }
        } else {
            // The content keeps its time through the commit, and that of a
            // chunked upload's last chunk can be older than a running garbage
            // collection's cutoff: touched now, the blob is spared (touch.rs; docs/design/gc.md).
            self.touch(&data_key).await?;
            self.storage
                .commit_upload(&data_key, size, &layout::blob_data(digest), storage_state)
                .await
                .map_err(storage_error)?;
            // The hashed bytes replaced whatever was there.
            self.caches.verified(digest);
        }
        self.caches.wrote_blob(digest, size);
        self.write_link_fresh(&layout::layer_link(name, digest), digest)
            .await?;
        self.discard_upload(name, id).await;
        Ok(())
    }

    /// Where a blob fetched into `name` can be written in place, when the
    /// store keeps every object as a local file: the content file of a new
    /// upload `id` (its directory not made yet), and the file the blob is
    /// once [`Registry::commit_fetched_upload`] moved it there. The writer
    /// must have checked the content against `digest` before the commit.
    pub fn fetched_upload_paths(
        &self,
        name: &RepositoryName,
        id: &str,
        digest: &Digest,
    ) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let files = self.storage.local_files()?;
        Some((
            files.local_path(&layout::upload_data(name, id))?,
            files.local_path(&layout::blob_data(digest))?,
        ))
    }

    /// Commits the upload `id` whose content file a fetch filled in place
    /// ([`Registry::fetched_upload_paths`]) and checked against `digest`:
    /// the blob, then its link in `name`. As for any upload, a crash before
    /// the commit leaves an upload directory that upload expiry removes.
    pub async fn commit_fetched_upload(
        &self,
        name: &RepositoryName,
        id: &str,
        size: u64,
        digest: &Digest,
    ) -> Result<()> {
        self.commit(name, id, size, digest, "").await
    }

    /// Removes a fetched upload that failed.
    pub async fn discard_fetched_upload(&self, name: &RepositoryName, id: &str) {
        self.abort_upload(name, id, "").await
    }

    /// Gives up an upload that never reached a session record: what the
    /// storage holds for it outside its objects, then its objects.
    async fn abort_upload(&self, name: &RepositoryName, id: &str, storage_state: &str) {
        if let Err(e) = self
            .storage
            .abort_upload(&layout::upload_data(name, id), storage_state)
            .await
        {
            tracing::warn!(error = %e, upload = id, "could not abort the upload's storage state");
        }
        self.discard_upload(name, id).await;
    }

    async fn discard_upload(&self, name: &RepositoryName, id: &str) {
        if let Err(e) = self.storage.delete_all(&layout::upload_dir(name, id)).await {
            tracing::warn!(error = %e, upload = id, "could not remove upload data; expiry will");
        }
    }

    /// [`Registry::discard_upload`] for an upload that stored nothing but
    /// its session record.
    async fn discard_session_record(&self, name: &RepositoryName, id: &str) {
        let record = layout::upload_session(name, id);
        if let Err(e) = self
            .storage
            .delete_all_of(&layout::upload_dir(name, id), &[record])
            .await
        {
            tracing::warn!(error = %e, upload = id, "could not remove upload data; expiry will");
        }
    }

    async fn load_session(&self, name: &RepositoryName, id: &str) -> Result<UploadSession> {
        if !layout::is_upload_id(id) {
            return Err(ErrorCode::BlobUploadUnknown.into());
        }
        let body = self
            .storage
            .get(&layout::upload_session(name, id))
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::BlobUploadUnknown)?;
        let session: UploadSession = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::internal("corrupt upload session", e))?;
        if session.generation != self.storage.upload_generation().unwrap_or_default() {
            return Err(RegistryError::with_detail(
                ErrorCode::BlobUploadUnknown,
                "the upload was interrupted by a restart of the machine; start it again",
            ));
        }
        Ok(session)
    }

    async fn save_session(&self, name: &RepositoryName, session: &UploadSession) -> Result<()> {
        let body = serde_json::to_vec(session).expect("session serializes");
        self.storage
            .put(
                &layout::upload_session(name, &session.id),
                body.into(),
                WriteMode::Scratch,
            )
            .await
            .map_err(storage_error)?;
        Ok(())
    }
}

/// The storage state a session record holds (for expiry, which releases it
/// after removing the record); `None` when the record is unreadable.
pub(crate) fn storage_state_of(record: &[u8]) -> Option<String> {
    serde_json::from_slice::<UploadSession>(record)
        .ok()
        .map(|session| session.storage_state)
}

/// The bytes a session record counts (for expiry's report); `None` when the
/// record is unreadable.
pub(crate) fn session_offset_of(record: &[u8]) -> Option<u64> {
    serde_json::from_slice::<UploadSession>(record)
        .ok()
        .map(|session| session.offset)
}

/// Blobs received whole in one request up to this size are held in memory
/// and written straight to their final key: one durable write instead of an
/// upload file, a rename and their hand-offs.
const DIRECT_WRITE_BYTES: usize = 256 * 1024;

enum Received {
    Whole(Bytes),
    /// Too large to hold: what was read so far, followed by the rest.
    Streaming(RequestBody),
}

async fn receive_small(body: RequestBody) -> io::Result<Received> {
    use futures::StreamExt;
    let RequestBody {
        stream: mut body,
        length,
    } = body;
    let mut chunks = Vec::new();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        len += chunk.len();
        chunks.push(chunk);
        if len > DIRECT_WRITE_BYTES {
            let head = futures::stream::iter(chunks.into_iter().map(Ok));
            return Ok(Received::Streaming(RequestBody {
                stream: Box::pin(head.chain(body)),
                length,
            }));
        }
    }
    Ok(Received::Whole(match chunks.len() {
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| whole.extend_from_slice(c));
            whole.freeze()
        }
    }))
}

/// A failure while receiving a body: the client's stream broke, or storage
/// could not take the bytes. Either way this chunk was not accepted.
fn body_error(e: io::Error) -> RegistryError {
    if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::UnexpectedEof {
        RegistryError::with_detail(ErrorCode::BlobUploadInvalid, format!("upload body: {e}"))
    } else {
        storage_error(e)
    }
}
