//! How an append's bytes become the parts of the upload's multipart upload
//! ([`Storage::append_upload`](crate::storage::Storage::append_upload) on S3).
//!
//! A chunk whose length the client declared is cut into parts before its
//! bytes arrive, and each part is **streamed** to the store as they come in
//! (an `UploadPart` to a presigned URL, its body fed from the request body):
//! when the chunk's last byte arrives, its last part is all but stored, so
//! the chunk is answered at once and the store never waits for a part to
//! fill. A chunk of unknown length (chunked transfer encoding) fills each
//! part in memory and sends it whole, the next filling meanwhile. Either way
//! a chunk's end shorter than S3's smallest part is carried over as the tail.
//!
//! Every part keeps its bytes until it is stored (what bounds memory, see
//! [`PARTS_IN_FLIGHT`] and [`EXTRA_PARTS`]): a streamed part that fails is
//! sent again whole through object_store, with its retries.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::signer::SignedUrlOptions;
use object_store::{PutPayload, PutPayloadMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::metrics::StoreRequests;

#[cfg(doc)]
use super::EXTRA_PARTS;
use super::{
    io_error, part_size_at, Bucket, Part, S3Storage, UploadState, MIN_PART, PARTS_IN_FLIGHT,
    TRANSFER_READ_TIMEOUT,
};

/// How long a part's presigned URL stays valid: the store checks it when the
/// request starts, which is at once.
const PART_URL_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// A streamed part goes to the store in pieces of at least this many bytes:
/// handed on as received (pieces of a few KiB), a 512 MiB push cost Garage
/// about 0.4 s more CPU than the same parts sent whole, which on a machine
/// it shares with the registry cost more than streaming gained.
const STREAM_WRITE: usize = 1024 * 1024;

/// The operation a streamed part is counted as: apart from `upload_part`,
/// as its duration includes the pace of the client sending it.
const STREAMED_PART: &str = "upload_part_streamed";

/// Sends parts as their bytes arrive: an HTTP client of its own, since
/// object_store sends only bodies it holds whole.
pub(super) struct PartStreamer {
    http: reqwest::Client,
    /// Its requests are counted with the object_store clients'.
    requests: StoreRequests,
}

impl PartStreamer {
    pub(super) fn new(allow_http: bool, requests: StoreRequests) -> io::Result<PartStreamer> {
        // No read timeout: reqwest's runs from the request's start to the
        // answer, which a part streamed from a slow client can outlast; the
        // answer's bound starts once the part's bytes are in (`stream_part`).
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .https_only(!allow_http)
            .build()
            .map_err(io::Error::other)?;
        Ok(PartStreamer { http, requests })
    }
}

/// One append's parts: the one filling and those on their way.
pub(super) struct Appender<'a> {
    storage: &'a S3Storage,
    path: Path,
    upload: &'a mut UploadState,
    /// Parts being sent, oldest first, not yet in `upload.parts`.
    sending: VecDeque<JoinHandle<io::Result<Part>>>,
    filling: Filling,
    /// Bytes still to come (the carried tail's and the body's), when the
    /// client declared its body's length.
    to_come: Option<u64>,
}

enum Filling {
    /// Between parts.
    Nothing,
    /// A part of a declared length, on its way as it fills.
    Streamed(PartFeed),
    /// A part filled in memory up to `size`, then sent whole.
    Buffered(PutPayloadMut, usize),
    /// The declared bytes left are too few for a part: they will be the tail.
    Tail(PutPayloadMut),
}

impl<'a> Appender<'a> {
    pub(super) fn new(
        storage: &'a S3Storage,
        path: Path,
        upload: &'a mut UploadState,
        to_come: Option<u64>,
    ) -> Appender<'a> {
        Appender {
            storage,
            path,
            upload,
            sending: VecDeque::new(),
            filling: Filling::Nothing,
            to_come,
        }
    }

    /// Takes the next bytes of the append.
    pub(super) async fn push(&mut self, mut bytes: Bytes) -> io::Result<()> {
        if self.to_come.is_some_and(|n| n < bytes.len() as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the body is longer than its declared length",
            ));
        }
        while !bytes.is_empty() {
            if matches!(self.filling, Filling::Nothing) {
                self.begin_part().await?;
            }
            let taken = match &mut self.filling {
                Filling::Nothing => unreachable!("a part was begun"),
                Filling::Streamed(feed) => {
                    let piece = bytes.split_to(bytes.len().min(feed.room));
                    let taken = piece.len();
                    feed.push(piece);
                    if feed.room == 0 {
                        let Filling::Streamed(feed) =
                            std::mem::replace(&mut self.filling, Filling::Nothing)
                        else {
                            unreachable!("streamed")
                        };
                        feed.finish();
                    }
                    taken
                }
                Filling::Buffered(buffer, size) => {
                    let piece = bytes.split_to(bytes.len().min(*size - buffer.content_length()));
                    let taken = piece.len();
                    buffer.push(piece);
                    if buffer.content_length() == *size {
                        let Filling::Buffered(buffer, _) =
                            std::mem::replace(&mut self.filling, Filling::Nothing)
                        else {
                            unreachable!("buffered")
                        };
                        self.send_whole(buffer.freeze()).await?;
                    }
                    taken
                }
                Filling::Tail(buffer) => {
                    let taken = bytes.len();
                    buffer.push(std::mem::take(&mut bytes));
                    taken
                }
            };
            if let Some(to_come) = &mut self.to_come {
                *to_come -= taken as u64;
            }
        }
        Ok(())
    }

    /// Waits for every part to be stored and records them; returns the bytes
    /// after the last part (the tail to carry over, or a last part to send).
    pub(super) async fn finish(mut self) -> io::Result<PutPayload> {
        if self.to_come.is_some_and(|n| n > 0) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body ended before its declared length",
            ));
        }
        let rest = match std::mem::replace(&mut self.filling, Filling::Nothing) {
            Filling::Nothing => PutPayload::default(),
            Filling::Buffered(buffer, _) | Filling::Tail(buffer) => buffer.freeze(),
            Filling::Streamed(_) => unreachable!("a streamed part is fed to its length"),
        };
        while let Some(oldest) = self.sending.pop_front() {
            self.upload
                .parts
                .push(oldest.await.map_err(io::Error::other)??);
        }
        Ok(rest)
    }

    /// The index the next part will have.
    fn next_index(&self) -> usize {
        self.upload.parts.len() + self.sending.len()
    }

    async fn begin_part(&mut self) -> io::Result<()> {
        let size = part_size_at(self.storage.part_size, self.next_index());
        let streamer = self.storage.part_streamer.as_ref();
        self.filling = match (self.to_come.map(|n| next_part(n, size)), streamer) {
            (None, _) => Filling::Buffered(PutPayloadMut::new(), size),
            (Some(None), _) => Filling::Tail(PutPayloadMut::new()),
            (Some(Some(len)), None) => Filling::Buffered(PutPayloadMut::new(), len),
            (Some(Some(len)), Some(streamer)) => {
                let extra = self.make_room().await?;
                let id = self.multipart_id().await?;
                let (feed, sent) = stream_part(
                    streamer,
                    self.storage.transfer.clone(),
                    self.path.clone(),
                    id,
                    self.next_index(),
                    len,
                    extra,
                );
                self.sending.push_back(sent);
                Filling::Streamed(feed)
            }
        };
        Ok(())
    }

    /// Sends a full part in the background.
    async fn send_whole(&mut self, part: PutPayload) -> io::Result<()> {
        let extra = self.make_room().await?;
        let id = self.multipart_id().await?;
        let store = self.storage.transfer.clone();
        let (path, index) = (self.path.clone(), self.next_index());
        self.sending.push_back(tokio::spawn(async move {
            // Held until the part is sent.
            let _extra = extra;
            put_part(&*store, &path, &id, index, part).await
        }));
        Ok(())
    }

    /// Before another part goes out: one part of its own in flight per
    /// upload, and up to [`PARTS_IN_FLIGHT`] while the process-wide budget of
    /// extra parts lasts (one PUT stream is slower than the store: see the
    /// S3 benchmark's Garage limits, one PUT against four parts); else the
    /// oldest must be stored first. Returns the extra permit taken, if any.
    async fn make_room(&mut self) -> io::Result<Option<OwnedSemaphorePermit>> {
        if self.sending.is_empty() {
            return Ok(None);
        }
        if self.sending.len() < PARTS_IN_FLIGHT {
            if let Ok(extra) = self.storage.part_budget.clone().try_acquire_owned() {
                return Ok(Some(extra));
            }
        }
        let oldest = self.sending.pop_front().expect("not empty");
        self.upload
            .parts
            .push(oldest.await.map_err(io::Error::other)??);
        Ok(None)
    }

    /// The upload's multipart upload, created at its first part.
    async fn multipart_id(&mut self) -> io::Result<String> {
        if self.upload.id.is_none() {
            let id = self
                .storage
                .transfer
                .create_multipart(&self.path)
                .await
                .map_err(io_error)?;
            self.upload.id = Some(id);
        }
        Ok(self.upload.id.clone().expect("created"))
    }
}

/// The length of the next part when `to_come` bytes are still to come and
/// parts are `size` bytes: `size` while at least another part's minimum
/// follows, else all of them; `None` when they are too few for a part (the
/// tail).
fn next_part(to_come: u64, size: usize) -> Option<usize> {
    if to_come < MIN_PART as u64 {
        None
    } else if to_come >= (size + MIN_PART) as u64 {
        Some(size)
    } else {
        Some(to_come as usize)
    }
}

/// Sends one part whole.
pub(super) async fn put_part(
    store: &dyn Bucket,
    path: &Path,
    id: &str,
    index: usize,
    data: PutPayload,
) -> io::Result<Part> {
    let size = data.content_length() as u64;
    let PartId { content_id } = store
        .put_part(path, &id.to_owned(), index, data)
        .await
        .map_err(io_error)?;
    Ok(Part {
        etag: content_id,
        size,
    })
}

/// The bytes of a streamed part, as they arrive.
struct PartFeed {
    to_store: mpsc::UnboundedSender<io::Result<Bytes>>,
    /// Every byte fed so far, for sending the part again whole.
    kept: PutPayloadMut,
    /// Bytes still to feed.
    room: usize,
    /// Fed, not yet handed to the stream: less than [`STREAM_WRITE`].
    pending: BytesMut,
    whole: oneshot::Sender<PutPayload>,
}

impl PartFeed {
    fn push(&mut self, bytes: Bytes) {
        self.room -= bytes.len();
        self.kept.push(bytes.clone());
        self.pending.extend_from_slice(&bytes);
        if self.pending.len() >= STREAM_WRITE || self.room == 0 {
            let next = BytesMut::with_capacity(STREAM_WRITE.min(self.room));
            let out = std::mem::replace(&mut self.pending, next).freeze();
            // A stream that failed has dropped its end: the part goes again
            // whole once all its bytes are here.
            let _ = self.to_store.unbounded_send(Ok(out));
        }
    }

    /// All the part's bytes were fed: hands them to the sender for a retry.
    /// A feed dropped before this (the request body failed) fails the part.
    fn finish(self) {
        let _ = self.whole.send(self.kept.freeze());
    }
}

/// Starts sending part `index` (`len` bytes) of upload `id` at `path`; its
/// bytes go out as they are fed.
fn stream_part(
    streamer: &PartStreamer,
    store: Arc<dyn Bucket>,
    path: Path,
    id: String,
    index: usize,
    len: usize,
    extra: Option<OwnedSemaphorePermit>,
) -> (PartFeed, JoinHandle<io::Result<Part>>) {
    let (to_store, from_feed) = mpsc::unbounded();
    let (whole, whole_bytes) = oneshot::channel();
    let http = streamer.http.clone();
    let requests = streamer.requests.clone();
    let sent = tokio::spawn(async move {
        // Held until the part is stored.
        let _extra = extra;
        let streamed = async {
            let part_number = (index + 1).to_string();
            let options = SignedUrlOptions::default().with_query([
                ("partNumber", part_number.as_str()),
                ("uploadId", id.as_str()),
            ]);
            let url = store
                .signed_url_opts(http::Method::PUT, &path, PART_URL_VALIDITY, &options)
                .await
                .map_err(io_error)?;
            let started = std::time::Instant::now();
            let response = http
                .put(url)
                .header(http::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(from_feed))
                .send()
                .await
                // The URL carries the part's signature: never in a log.
                .map_err(|e| {
                    requests.record(STREAMED_PART, "error", None);
                    io::Error::other(e.without_url())
                })?;
            let status = response.status();
            requests.record(
                STREAMED_PART,
                StoreRequests::result_of(status.as_u16()),
                Some(started.elapsed()),
            );
            if !status.is_success() {
                let answer = response.text().await.unwrap_or_default();
                let answer: String = answer.chars().take(500).collect();
                return Err(io::Error::other(format!(
                    "the store answered a part with {status}: {answer}"
                )));
            }
            let etag = response
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| io::Error::other("the store answered a part without an ETag"))?;
            Ok(Part {
                etag: etag.to_owned(),
                size: len as u64,
            })
        };
        tokio::pin!(streamed);
        let mut whole_bytes = whole_bytes;
        // The store's answer is awaited without a bound while the part's
        // bytes still arrive (as slowly as the client sends them), then for
        // TRANSFER_READ_TIMEOUT at most.
        let (outcome, mut whole) = tokio::select! {
            outcome = &mut streamed => (outcome, None),
            fed = &mut whole_bytes => match fed {
                Ok(whole) => {
                    let outcome = tokio::time::timeout(TRANSFER_READ_TIMEOUT, &mut streamed)
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the store did not answer a part",
                            ))
                        });
                    (outcome, Some(whole))
                }
                // The request body failed before the part was whole: so
                // does the append.
                Err(_) => return Err(io::Error::other("the part's bytes stopped coming")),
            },
        };
        match outcome {
            Ok(part) => Ok(part),
            Err(e) => {
                if whole.is_none() {
                    whole = whole_bytes.await.ok();
                }
                let Some(whole) = whole else {
                    return Err(e);
                };
                tracing::debug!(error = %e, part = index + 1, "a streamed part failed: sending it whole");
                put_part(&*store, &path, &id, index, whole).await
            }
        }
    });
    let feed = PartFeed {
        to_store,
        kept: PutPayloadMut::new(),
        room: len,
        pending: BytesMut::with_capacity(STREAM_WRITE.min(len)),
        whole,
    };
    (feed, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// The parts a declared length is cut into, and the tail left.
    fn cut(mut to_come: u64, size: usize) -> (Vec<u64>, u64) {
        let mut parts = Vec::new();
        while let Some(len) = next_part(to_come, size) {
            parts.push(len as u64);
            to_come -= len as u64;
        }
        (parts, to_come)
    }

    #[test]
    fn a_declared_length_is_cut_into_parts_of_at_least_5_mib_and_a_short_tail() {
        let size = 8 * MIB as usize;
        assert_eq!(cut(16 * MIB, size), (vec![8 * MIB, 8 * MIB], 0));
        // Too few bytes after one part for another: one longer part.
        assert_eq!(cut(12 * MIB, size), (vec![12 * MIB], 0));
        assert_eq!(cut(13 * MIB, size), (vec![8 * MIB, 5 * MIB], 0));
        assert_eq!(cut(13 * MIB - 1, size), (vec![13 * MIB - 1], 0));
        assert_eq!(cut(5 * MIB, size), (vec![5 * MIB], 0));
        // Under a part: all of it the tail.
        assert_eq!(cut(5 * MIB - 1, size), (vec![], 5 * MIB - 1));
        assert_eq!(cut(0, size), (vec![], 0));
        for total in [21 * MIB + 7, 40 * MIB, 6 * MIB + 1] {
            let (parts, tail) = cut(total, size);
            assert_eq!(parts.iter().sum::<u64>() + tail, total);
            assert!(parts.iter().all(|&p| p >= 5 * MIB), "{parts:?}");
            assert_eq!(tail, 0, "{total}: a part takes the rest");
        }
    }
}
