//! The S3 backend: the core of [`Storage`] over any S3-compatible object
//! store (AWS S3, Garage, MinIO, Ceph RGW) through the `object_store` crate,
//! under the same keys as CNCF Distribution's `s3` driver
//! (`<prefix>/docker/registry/v2/...`), so that a bucket written by either is
//! served by the other. The design, with the facts it rests on, is
//! `docs/design/s3.md`.
//!
//! Everything a replica needs lives in the bucket: several Berth processes
//! over one bucket are one registry. Uploads are S3 multipart uploads whose
//! id and parts travel in the session record ([`Storage::append_upload`]'s
//! state), so any replica continues one; bytes are streamed into parts of
//! [`S3Config::part_size`] (`parts.rs`), and a chunk's short end (under S3's 5 MiB part
//! minimum) is carried over as a small object of its own until the next
//! chunk or the commit.
//!
//! Listing is the one place where S3 and the trait disagree: S3 orders a
//! sub-prefix by its name *with* the trailing `/`, so `v1.0/` comes before
//! `v1/`, while the trait promises byte order (`v1` < `v1.0`). [`S3Storage::list`]
//! restores byte order exactly (see [`missing_prefixes`]).

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use crate::metrics::StoreRequests;

use super::{
    layout, ByteSource, ContentRead, ListPage, LocalFile, LocalFiles, ObjectInfo, Storage,
    TreeObject, TreePage, WriteMode,
};

mod blob_cache;
mod collection;
mod counted;
mod parts;
mod records;

/// What the backend needs of an object store client: objects, multipart
/// uploads that any process continues by id, listings paged by
/// `start_after`, and signed URLs (`redirect`). object_store's S3 client
/// has all four, and so has its Google Cloud Storage client (`backend =
/// "gcs"`, untested: no GCS or emulator runs here); its Azure client lacks
/// the multipart and paged-listing interfaces, so Azure is not offered.
pub(crate) trait Bucket: ObjectStore + MultipartStore + PaginatedListStore + Signer {}

impl<T: ObjectStore + MultipartStore + PaginatedListStore + Signer> Bucket for T {}

/// Parts of one upload in flight at most (each of `part_size` bytes in
/// memory until sent), while [`EXTRA_PARTS`] allows.
const PARTS_IN_FLIGHT: usize = 4;

/// Parts in flight beyond one per upload, for all uploads of a process:
/// with 8 MiB parts, at most 128 MiB more than one part per upload.
const EXTRA_PARTS: usize = 16;

/// S3's smallest part but the last (AWS, MinIO; Garage does not check):
/// a chunk that ends with fewer bytes than this is carried over.
pub const MIN_PART: usize = 5 * 1024 * 1024;

/// Requests that move at most a few KiB (documents, HEADs, listings) must
/// finish within this, retries included: a store that does not answer
/// becomes a clean 503, never a hung request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// A transfer (a part, a blob read) may take long, but not stall this long
/// between two reads.
const TRANSFER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How many requests one batch operation (a manifest's touches, a listing's
/// probes) has in flight at once.
const CONCURRENT_REQUESTS: usize = 32;

/// How long a redirect's signed URL stays valid: long enough for a slow
/// client to start (a ranged retry gets a fresh one).
pub const REDIRECT_VALIDITY: Duration = Duration::from_secs(20 * 60);

/// The `[storage.s3]` table (and the `--s3-*` flags).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// The store's URL, for anything but AWS (Garage, MinIO, Ceph RGW):
    /// requests are then path-style, and `http://` is allowed.
    pub endpoint: Option<String>,
    pub region: String,
    /// Distribution's `rootdirectory`: keys live under
    /// `<prefix>/docker/registry/v2/`.
    pub prefix: String,
    /// Credentials; absent: the standard `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` variables (and the
    /// rest of the AWS environment: instance metadata, web identity).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Virtual-hosted-style requests (`bucket.host`); absent: on for AWS,
    /// off when `endpoint` is given.
    pub virtual_hosted: Option<bool>,
    /// The size of the parts an upload is sent in (at least 5 MiB); each
    /// upload in flight holds up to five parts in memory (four being sent,
    /// one filling) while a process-wide budget of 16 extra parts lasts,
    /// else two.
    pub part_size: usize,
    /// Blob GETs answer 307 to a signed URL of the object, valid for
    /// [`REDIRECT_VALIDITY`], so bytes flow from the store. Off by default:
    /// clients must reach the bucket, and they, not Berth, check the digest.
    pub redirect: bool,
    /// Disk for blob content read from the bucket, under
    /// `<data_dir>/s3-cache/`: each blob is read from the bucket once per
    /// replica while it stays in the cache (0 turns it off).
    pub cache_bytes: u64,
    /// The largest object the store copies in one request (`CopyObject`:
    /// AWS refuses more than 5 GiB). A blob's commit copies its completed
    /// upload to the blob's key; above this size the replica streams the
    /// copy through itself instead (a GET and a multipart upload, parts of
    /// `part_size` in memory), as object_store offers no ranged
    /// `UploadPartCopy`.
    pub copy_limit: u64,
}

impl Default for S3Config {
    fn default() -> S3Config {
        S3Config {
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted: None,
            part_size: 8 * 1024 * 1024,
            redirect: false,
            cache_bytes: 1 << 30,
            copy_limit: 5 << 30,
        }
    }
}

/// Secrets stay out of logs and error messages.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("virtual_hosted", &self.virtual_hosted)
            .field("part_size", &self.part_size)
            .field("redirect", &self.redirect)
            .field("cache_bytes", &self.cache_bytes)
            .field("copy_limit", &self.copy_limit)
            .finish()
    }
}

impl S3Config {
    /// Whether the endpoint is plain `http://` (Garage, MinIO on a private
    /// network), which the clients must then allow.
    fn plain_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("storage.s3.bucket is required".to_owned());
        }
        if self.part_size < MIN_PART {
            return Err(format!(
                "storage.s3.part_size must be at least {MIN_PART} (S3's smallest part)"
            ));
        }
        if self.prefix.split('/').any(|s| s == "." || s == "..") {
            return Err("storage.s3.prefix must not contain . or .. segments".to_owned());
        }
        Ok(())
    }
}

/// The `[storage.gcs]` table: a Google Cloud Storage bucket, through the
/// same backend as S3 (object_store's GCS client). Untested: no GCS runs
/// where Berth is tested (docs/design/s3.md says what would need checking).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GcsConfig {
    pub bucket: String,
    /// Distribution's `rootdirectory`, as for S3.
    pub prefix: String,
    /// A service account key file; absent: `GOOGLE_SERVICE_ACCOUNT` (or
    /// `GOOGLE_APPLICATION_CREDENTIALS`) and the rest of the Google
    /// environment (application default credentials, the metadata server).
    pub service_account_path: Option<String>,
    /// As for S3 (GCS's XML multipart upload has the same 5 MiB rule).
    pub part_size: usize,
    pub redirect: bool,
    pub cache_bytes: u64,
}

impl Default for GcsConfig {
    fn default() -> GcsConfig {
        let s3 = S3Config::default();
        GcsConfig {
            bucket: String::new(),
            prefix: String::new(),
            service_account_path: None,
            part_size: s3.part_size,
            redirect: s3.redirect,
            cache_bytes: s3.cache_bytes,
        }
    }
}

impl GcsConfig {
    pub fn validate(&self) -> Result<(), String> {
        S3Config {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            part_size: self.part_size,
            ..S3Config::default()
        }
        .validate()
        .map_err(|e| e.replace("storage.s3.", "storage.gcs."))
    }
}

/// In what order [`S3Storage::write_all_guarded`] writes its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Side by side.
    Any,
    /// One after another, as given.
    Given,
}

/// What the start-up probe found the store to do with conditional writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// `If-None-Match: *` and `If-Match` on PUT are honoured (AWS since
    /// 2024, MinIO): the store decides races on a key.
    Honoured,
    /// The store ignores them (Garage 2.5): a create-if-absent is a HEAD then
    /// a PUT, and two replicas racing on one key both succeed, the last
    /// writer's bytes winning.
    Ignored,
}

pub struct S3Storage {
    /// For documents, HEADs, listings, deletes: bounded in total.
    meta: Arc<dyn Bucket>,
    /// For part uploads and blob reads: bounded between reads only, so a
    /// large blob streamed to a slow client is not cut.
    transfer: Arc<dyn Bucket>,
    /// `<prefix>/docker/registry/v2`, without a trailing `/`.
    root: String,
    part_size: usize,
    conditional: ConditionalWrites,
    /// The touch-before-use protocol's objects read so far.
    collection: collection::CollectionCache,
    /// Blob content on local disk, when there is a place for it.
    blob_cache: Option<Arc<blob_cache::BlobCache>>,
    redirect: bool,
    copy_limit: u64,
    /// Parts beyond one per upload that may be in flight at once, process
    /// wide: what bounds the memory uploads hold.
    part_budget: Arc<tokio::sync::Semaphore>,
    /// Sends a part as its bytes arrive (S3); without it (GCS, untested) a
    /// part is sent once whole.
    part_streamer: Option<parts::PartStreamer>,
    /// Upload session records, read back by a conditional GET.
    session_records: records::SessionRecords,
    /// Every request sent to the store, counted and timed (`counted.rs`).
    requests: StoreRequests,
}

impl S3Storage {
    /// Connects to the bucket, checks that it can be read and written, and
    /// probes how it handles conditional writes. Blob content read is cached
    /// in `cache_dir` when one is given.
    pub async fn open(
        config: &S3Config,
        cache_dir: Option<&std::path::Path>,
    ) -> io::Result<S3Storage> {
        config.validate().map_err(io::Error::other)?;
        let requests = StoreRequests::default();
        let meta = Arc::new(build(
            config,
            metadata_client(),
            Payload::Signed,
            &requests,
        )?);
        let transfer = Arc::new(build(
            config,
            transfer_client(),
            Payload::Unsigned,
            &requests,
        )?);
        let settings = Settings {
            prefix: &config.prefix,
            part_size: config.part_size,
            redirect: config.redirect,
            cache_bytes: config.cache_bytes,
            copy_limit: config.copy_limit,
            part_streamer: Some(parts::PartStreamer::new(
                config.plain_http(),
                requests.clone(),
            )?),
            requests,
        };
        S3Storage::open_on(meta, transfer, settings, cache_dir).await
    }

    /// [`S3Storage::open`] for a Google Cloud Storage bucket (`backend =
    /// "gcs"`): the same keys, protocol and caches through object_store's
    /// GCS client. Untested: no GCS (or emulator of its XML multipart API)
    /// runs where Berth is tested.
    pub async fn open_gcs(
        config: &GcsConfig,
        cache_dir: Option<&std::path::Path>,
    ) -> io::Result<S3Storage> {
        config.validate().map_err(io::Error::other)?;
        let requests = StoreRequests::default();
        let meta = Arc::new(build_gcs(config, metadata_client(), &requests)?);
        let transfer = Arc::new(build_gcs(config, transfer_client(), &requests)?);
        let settings = Settings {
            prefix: &config.prefix,
            part_size: config.part_size,
            redirect: config.redirect,
            cache_bytes: config.cache_bytes,
            // GCS copies an object of any size in one request.
            copy_limit: u64::MAX,
            // Each part sent once whole: streaming one to a signed URL is
            // untested on GCS.
            part_streamer: None,
            requests,
        };
        S3Storage::open_on(meta, transfer, settings, cache_dir).await
    }

    async fn open_on(
        meta: Arc<dyn Bucket>,
        transfer: Arc<dyn Bucket>,
        settings: Settings<'_>,
        cache_dir: Option<&std::path::Path>,
    ) -> io::Result<S3Storage> {
        let prefix = settings.prefix.trim_matches('/');
        let root = match prefix {
            "" => "docker/registry/v2".to_owned(),
            prefix => format!("{prefix}/docker/registry/v2"),
        };
        let mut storage = S3Storage {
            meta,
            transfer,
            root,
            part_size: settings.part_size,
            conditional: ConditionalWrites::Ignored,
            collection: collection::CollectionCache::default(),
            blob_cache: None,
            redirect: settings.redirect,
            copy_limit: settings.copy_limit,
            part_budget: Arc::new(tokio::sync::Semaphore::new(EXTRA_PARTS)),
            part_streamer: settings.part_streamer,
            session_records: records::SessionRecords::default(),
            requests: settings.requests,
        };
        if let Some(dir) = cache_dir.filter(|_| settings.cache_bytes > 0) {
            match blob_cache::BlobCache::open(dir, settings.cache_bytes) {
                Ok(cache) => storage.blob_cache = Some(Arc::new(cache)),
                Err(e) => tracing::warn!(
                    error = %e,
                    dir = %dir.display(),
                    "no blob cache: every pull reads the bucket"
                ),
            }
        }
        storage.conditional = storage.probe_conditional_writes().await?;
        Ok(storage)
    }

    /// What the probe found at start.
    pub fn conditional_writes(&self) -> ConditionalWrites {
        self.conditional
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}/{key}", self.root))
    }

    /// Writes a probe object twice with `If-None-Match: *` and once with a
    /// wrong `If-Match`: a store that honours both refuses the second and
    /// the third. Stores that ignore the headers (Garage) answer 200 to all
    /// three, and object_store cannot tell without trying.
    async fn probe_conditional_writes(&self) -> io::Result<ConditionalWrites> {
        let key = self.path(&format!("_berth/probe/{}", uuid::Uuid::new_v4()));
        let create = || PutOptions::from(PutMode::Create);
        self.meta
            .put_opts(&key, PutPayload::from_static(b"1"), create())
            .await
            .map_err(io_error)?;
        let second = self
            .meta
            .put_opts(&key, PutPayload::from_static(b"2"), create())
            .await;
        let wrong_match = self
            .meta
            .put_opts(
                &key,
                PutPayload::from_static(b"3"),
                PutOptions::from(PutMode::Update(UpdateVersion {
                    e_tag: Some("\"berth-probe-no-such-etag\"".to_owned()),
                    version: None,
                })),
            )
            .await;
        let _ = self.meta.delete(&key).await;
        let outcome = match (second, wrong_match) {
            (
                Err(object_store::Error::AlreadyExists { .. }),
                Err(object_store::Error::Precondition { .. }),
            ) => ConditionalWrites::Honoured,
            (Ok(_), _) | (_, Ok(_)) => ConditionalWrites::Ignored,
            // A failure that is not the refusal asked for.
            (Err(object_store::Error::AlreadyExists { .. }), Err(e)) | (Err(e), _) => {
                return Err(io_error(e))
            }
        };
        match outcome {
            ConditionalWrites::Honoured => {
                tracing::info!("the object store honours conditional writes")
            }
            ConditionalWrites::Ignored => tracing::warn!(
                "the object store ignores conditional writes (If-None-Match, If-Match): \
                 a create-if-absent is a check then a write, and two replicas racing on \
                 one key both succeed, the last write winning (docs/design/s3.md)"
            ),
        }
        Ok(outcome)
    }

    async fn head(&self, key: &str) -> io::Result<Option<object_store::ObjectMeta>> {
        match self.meta.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Drops this replica's cached copy of `key`, which is being written or
    /// removed.
    fn forget(&self, key: &str) {
        if let Some(cache) = &self.blob_cache {
            cache.forget(key);
        }
        self.session_records.forget(key);
    }

    async fn put_overwrite(&self, key: &str, data: Bytes) -> io::Result<()> {
        self.forget(key);
        let size = data.len() as u64;
        let written = self
            .meta
            .put(&self.path(key), PutPayload::from_bytes(data.clone()))
            .await
            .map_err(io_error)?;
        if layout::is_upload_session(key) {
            self.session_records.keep(key, written.e_tag, data);
        }
        self.collection.written(key, size);
        Ok(())
    }

    /// A session record, by a conditional GET when this replica has a copy.
    async fn get_session_record(&self, key: &str) -> io::Result<Option<Bytes>> {
        let copy = self.session_records.get(key);
        let options = GetOptions {
            if_none_match: copy.as_ref().map(|copy| copy.etag.clone()),
            ..GetOptions::default()
        };
        match self.meta.get_opts(&self.path(key), options).await {
            Ok(result) => {
                let etag = result.meta.e_tag.clone();
                let body = result.bytes().await.map_err(io_error)?;
                self.session_records.keep(key, etag, body.clone());
                Ok(Some(body))
            }
            Err(object_store::Error::NotModified { .. }) if copy.is_some() => {
                Ok(copy.map(|copy| copy.body))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.session_records.forget(key);
                Ok(None)
            }
            Err(e) => Err(io_error(e)),
        }
    }

    /// Whether [`Storage::put`] in `mode` writes `key` as it is (a PUT, then
    /// the look at the collections after it) rather than touching it first
    /// and creating it if absent. Overwrites always (a PUT is durable when it
    /// returns, and comparing first would cost a GET). So is blob content,
    /// which is named by its digest (the registry writes only bytes it hashed
    /// to that digest): writing it where it is already leaves the same
    /// object, a marker PUT and a round trip less for a small blob's push,
    /// and content the store holds damaged is replaced; unless a touch of
    /// this process just marked it, which answers a create from memory.
    fn writes_plainly(&self, key: &str, mode: WriteMode) -> bool {
        match mode {
            WriteMode::Overwrite | WriteMode::Scratch => true,
            WriteMode::CreateIfAbsent => {
                layout::blob_digest_of(key).is_some()
                    && self.collection.marked_recently(key).is_none()
            }
            WriteMode::Record => false,
        }
    }

    /// Writes `data` at `key`, and, for a key a collection may remove,
    /// makes sure no collection deciding meanwhile removed it after all (the
    /// write is its own touch marker: collection.rs), unless this process
    /// marked the key just now, which covers the write.
    async fn put_guarded(&self, key: &str, data: Bytes) -> io::Result<()> {
        self.write_all_guarded(vec![(key.to_owned(), data)], Order::Any)
            .await
    }

    /// [`S3Storage::put_guarded`] for several documents: written side by
    /// side (or one after another, in `order`), then one look at the
    /// collections for all of them. A look after the last write comes after
    /// each of them, which is all the handshake asks of a writer.
    async fn write_all_guarded(&self, docs: Vec<(String, Bytes)>, order: Order) -> io::Result<()> {
        let mut pending = docs;
        let in_flight = match order {
            Order::Any => CONCURRENT_REQUESTS,
            Order::Given => 1,
        };
        for _ in 0..3 {
            futures::stream::iter(pending.clone())
                .map(|(key, data)| async move { self.put_overwrite(&key, data).await })
                .buffered(in_flight)
                .try_collect::<Vec<()>>()
                .await?;
            let unmarked: Vec<&str> = pending
                .iter()
                .map(|(key, _)| key.as_str())
                .filter(|key| self.collection.marked_recently(key).is_none())
                .collect();
            let named = self.await_collections(&unmarked).await?;
            if named.is_empty() {
                return Ok(());
            }
            // A collection named some of them: those it removed meanwhile are
            // written again.
            let named: Vec<(String, Bytes)> = pending
                .into_iter()
                .filter(|(key, _)| named.contains(key))
                .collect();
            let keys: Vec<String> = named.iter().map(|(key, _)| key.clone()).collect();
            let gone: Vec<bool> = futures::stream::iter(keys)
                .map(|key| async move { Ok::<_, io::Error>(self.head(&key).await?.is_none()) })
                .buffered(CONCURRENT_REQUESTS)
                .try_collect()
                .await?;
            pending = named
                .into_iter()
                .zip(gone)
                .filter(|(_, gone)| *gone)
                .map(|(doc, _)| doc)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::HostUnreachable,
            format!(
                "{}: removed by a collection three times while being written",
                pending[0].0
            ),
        ))
    }

    /// Copies `from` (a full path, an object of `size` bytes) to the
    /// collectable key `dest` in the store, looking at the collections after
    /// it as a write does ([`S3Storage::put_guarded`]).
    async fn copy_guarded(&self, from: &Path, size: u64, dest: &str) -> io::Result<()> {
        self.forget(dest);
        for _ in 0..3 {
            if size <= self.copy_limit {
                self.transfer
                    .copy(from, &self.path(dest))
                    .await
                    .map_err(io_error)?;
            } else {
                self.copy_streamed(from, &self.path(dest)).await?;
            }
            self.collection.written(dest, size);
            if self.collection.marked_recently(dest).is_some()
                || !self.await_collections(&[dest]).await?.contains(dest)
                || self.head(dest).await?.is_some()
            {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::HostUnreachable,
            format!("{dest}: removed by a collection three times while being written"),
        ))
    }

    /// Copies `from` to `to` through this replica: a GET streamed into a
    /// multipart upload, at most two parts in memory. For objects above the
    /// store's copy limit; `to` appears only when the upload completes.
    async fn copy_streamed(&self, from: &Path, to: &Path) -> io::Result<()> {
        let source = self.transfer.get(from).await.map_err(io_error)?;
        let upload = self.transfer.put_multipart(to).await.map_err(io_error)?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut stream = source.into_stream();
        let copied = async {
            while let Some(chunk) = stream.next().await {
                writer.wait_for_capacity(1).await?;
                writer.write(&chunk?);
            }
            Ok::<_, object_store::Error>(())
        }
        .await;
        match copied {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(io_error),
            Err(e) => {
                let _ = writer.abort().await;
                Err(io_error(e))
            }
        }
    }

    /// Marks `keys` in use and says which exist (with their sizes): the
    /// toucher's side of the protocol (collection.rs). Keys no collection
    /// was at work on are remembered as marked, for the writes that follow.
    async fn touch_keys(&self, keys: &[&str]) -> io::Result<Vec<Option<u64>>> {
        let marked_at = Instant::now();
        self.mark_used(keys).await?;
        let protected = keys.iter().any(|key| collection::is_protected(key));
        // The HEADs beside the look at the flag (collection.rs says why that
        // is enough while no collection runs).
        let (may_run, mut sizes) = futures::try_join!(
            async {
                if protected {
                    self.collection_may_run().await
                } else {
                    Ok(false)
                }
            },
            self.sizes_of(keys)
        )?;
        let mut named = std::collections::HashSet::new();
        if may_run {
            named = self.await_intents(keys).await?;
            sizes = self.sizes_of(keys).await?;
        }
        let (clean, clean_sizes): (Vec<&str>, Vec<Option<u64>>) = keys
            .iter()
            .zip(&sizes)
            .filter(|(key, _)| !named.contains(**key))
            .map(|(key, size)| (*key, *size))
            .unzip();
        self.collection.marked(marked_at, &clean, &clean_sizes);
        Ok(sizes)
    }

    /// HEADs `keys` side by side: the size of each, `None` where absent.
    async fn sizes_of(&self, keys: &[&str]) -> io::Result<Vec<Option<u64>>> {
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        futures::stream::iter(owned)
            .map(|key| async move { Ok::<_, io::Error>(self.head(&key).await?.map(|m| m.size)) })
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await
    }

    /// Creates a document that a touch just found absent: the touch's marker
    /// covers the write, so it needs no look at the collections. Where the
    /// store honours conditional writes it decides a race; elsewhere the
    /// last writer wins (docs/design/s3.md §6). Returns whether it wrote.
    async fn create_touched(&self, key: &str, data: Bytes) -> io::Result<bool> {
        self.forget(key);
        // The other writer's, when it was first, is the same document: the
        // key names its content (a digest) or is a link to one.
        let size = data.len() as u64;
        let mode = match self.conditional {
            ConditionalWrites::Honoured => PutMode::Create,
            ConditionalWrites::Ignored => PutMode::Overwrite,
        };
        let written = match self
            .meta
            .put_opts(&self.path(key), PutPayload::from_bytes(data), mode.into())
            .await
        {
            Ok(_) => true,
            // Another writer was first, after the touch: theirs is new.
            Err(object_store::Error::AlreadyExists { .. }) => false,
            Err(e) => return Err(io_error(e)),
        };
        self.collection.written(key, size);
        Ok(written)
    }

    /// Writes documents to create only if absent (`CreateIfAbsent`,
    /// `Record`): those this process marked just now are settled by what
    /// that touch found; the others are touched in one batch (one marker,
    /// one look at the collections) and created where absent.
    async fn create_all(&self, docs: Vec<(String, Bytes)>) -> io::Result<Vec<bool>> {
        let known: Vec<Option<bool>> = docs
            .iter()
            .map(|(key, _)| self.collection.marked_recently(key))
            .collect();
        let unknown: Vec<&str> = docs
            .iter()
            .zip(&known)
            .filter(|(_, known)| known.is_none())
            .map(|((key, _), _)| key.as_str())
            .collect();
        let mut touched = if unknown.is_empty() {
            Vec::new()
        } else {
            self.touch_keys(&unknown).await?
        }
        .into_iter();
        let found: Vec<bool> = known
            .into_iter()
            .map(|known| known.unwrap_or_else(|| touched.next().flatten().is_some()))
            .collect();
        futures::stream::iter(docs.into_iter().zip(found))
            .map(|((key, data), found)| async move {
                if found {
                    // Found in place: marked in use by the touch.
                    return Ok(false);
                }
                self.create_touched(&key, data).await
            })
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await
    }

    /// Reads the whole of a small object (a carried-over tail), or its first
    /// `len` bytes.
    async fn read_small(&self, key: &str, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..len as u64)),
            ..GetOptions::default()
        };
        let bytes = self
            .transfer
            .get_opts(&self.path(key), options)
            .await
            .map_err(io_error)?
            .bytes()
            .await
            .map_err(io_error)?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{key}: {} bytes, expected {len}", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// One S3 listing request of `dir`'s children after `offset` (a full
    /// key), as names, and the continuation token when it was cut short.
    async fn list_request(
        &self,
        dir: &str,
        offset: Option<String>,
        page_token: Option<String>,
        limit: usize,
    ) -> io::Result<(Vec<(String, bool)>, Option<String>)> {
        let page = self
            .meta
            .list_paginated(
                Some(dir),
                PaginatedListOptions {
                    offset,
                    delimiter: Some("/".into()),
                    max_keys: Some(limit.clamp(1, 1000)),
                    page_token,
                    ..PaginatedListOptions::default()
                },
            )
            .await
            .map_err(io_error)?;
        let child = |path: &Path| path.as_ref().strip_prefix(dir).map(str::to_owned);
        let mut names = Vec::new();
        for prefix in &page.result.common_prefixes {
            names.extend(child(prefix).map(|name| (name, true)));
        }
        for object in &page.result.objects {
            names.extend(child(&object.location).map(|name| (name, false)));
        }
        Ok((names, page.page_token))
    }

    /// Whether `dir` + `name` + `/` has any object under it.
    async fn prefix_exists(&self, dir: &str, name: &str) -> io::Result<bool> {
        let page = self
            .meta
            .list_paginated(
                Some(&format!("{dir}{name}/")),
                PaginatedListOptions {
                    max_keys: Some(1),
                    ..PaginatedListOptions::default()
                },
            )
            .await
            .map_err(io_error)?;
        Ok(!page.result.objects.is_empty())
    }
}

/// What [`S3Storage::open_on`] takes from either table.
struct Settings<'a> {
    prefix: &'a str,
    part_size: usize,
    redirect: bool,
    cache_bytes: u64,
    copy_limit: u64,
    part_streamer: Option<parts::PartStreamer>,
    requests: StoreRequests,
}

/// The client for documents, HEADs, listings and deletes: bounded in total.
fn metadata_client() -> ClientOptions {
    ClientOptions::new().with_timeout(METADATA_TIMEOUT)
}

/// The client for parts and blob reads: bounded between reads only.
fn transfer_client() -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_read_timeout(TRANSFER_READ_TIMEOUT)
}

/// Retries of a failed request, within the metadata bound.
fn retries() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: METADATA_TIMEOUT,
        ..RetryConfig::default()
    }
}

fn build_gcs(
    config: &GcsConfig,
    options: ClientOptions,
    requests: &StoreRequests,
) -> io::Result<object_store::gcp::GoogleCloudStorage> {
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&config.bucket)
        .with_http_connector(counted::CountingConnector {
            requests: requests.clone(),
        })
        .with_retry(retries())
        .with_client_options(options);
    if let Some(path) = &config.service_account_path {
        builder = builder.with_service_account_path(path);
    }
    builder.build().map_err(io_error)
}

/// Whether a client's requests sign the SHA-256 of their bodies (SigV4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Documents (links, session records, markers, manifests, small blobs):
    /// the store refuses a body altered on the way.
    Signed,
    /// Blob content in transfer (parts, upload tails): signing it would hash
    /// every pushed byte a second time (as much CPU again as the digest
    /// itself), and content is named by its digest and checked against it
    /// when a replica first reads it, so altered bytes are never served.
    /// Over plain `http://` an on-path attacker could still spoil an upload
    /// (found at its first read); use HTTPS across untrusted networks.
    Unsigned,
}

fn build(
    config: &S3Config,
    options: ClientOptions,
    payload: Payload,
    requests: &StoreRequests,
) -> io::Result<object_store::aws::AmazonS3> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_http_connector(counted::CountingConnector {
            requests: requests.clone(),
        })
        .with_region(&config.region)
        .with_retry(retries())
        .with_unsigned_payload(payload == Payload::Unsigned);
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(config.plain_http())
            .with_virtual_hosted_style_request(config.virtual_hosted.unwrap_or(false));
    } else if let Some(virtual_hosted) = config.virtual_hosted {
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token);
    }
    builder
        .with_client_options(options.with_allow_http(config.plain_http()))
        .build()
        .map_err(io_error)
}

/// An object store failure as an I/O error: a missing object is `NotFound`;
/// anything else means the store could not do what was asked (unreachable,
/// timed out, refused), which the registry answers with 503.
fn io_error(e: object_store::Error) -> io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::HostUnreachable,
    };
    io::Error::new(kind, e)
}

/// The names `page` (all of a directory's children in S3's order up to the
/// key `last`, after `start_after`) may lack in byte order: S3 sorts a
/// sub-prefix as `name/`, so a name that is a proper prefix of another name
/// on the page, cut before a byte below `/` (`-` or `.` in registry names:
/// `v1` of `v1.0`), sorts before it by bytes but after it in S3, and may lie
/// beyond `last`. Every name missing from a byte-ordered page is of this
/// kind (two names that differ at some byte sort the same way in both
/// orders), so probing these few candidates restores byte order exactly.
fn missing_prefixes(
    page: &BTreeSet<String>,
    dir: &str,
    last: &str,
    start_after: Option<&str>,
) -> BTreeSet<String> {
    let mut candidates = BTreeSet::new();
    for name in page {
        for (at, byte) in name.bytes().enumerate() {
            if at == 0 || byte >= b'/' {
                continue;
            }
            let prefix = &name[..at];
            if page.contains(prefix) || start_after.is_some_and(|after| prefix <= after) {
                continue;
            }
            // Not yet listed by S3, which reaches `prefix/` after `last`.
            if format!("{dir}{prefix}/").as_str() > last {
                candidates.insert(prefix.to_owned());
            }
        }
    }
    candidates
}

/// How long [`S3Storage::create_exclusive`] waits on a store that ignores
/// conditional writes before reading back which create won: long enough for
/// a racing write that took as long as this one to land.
fn create_settle(write_took: Duration) -> Duration {
    (write_took * 4).max(Duration::from_millis(250))
}

/// The backend's account of an upload, kept in the session record.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UploadState {
    /// The S3 multipart upload, once its first part was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The parts sent, in order: their ETags and sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<Part>,
    /// Bytes after the parts, too few for a part, kept as an object of their
    /// own (see [`tail_key`]) until the next append or the commit.
    #[serde(default, skip_serializing_if = "is_zero")]
    tail: u64,
    /// The name the append that wrote the tail gave its object, new at each
    /// append (empty in states written before tails had one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tail_id: String,
    /// The multipart upload was completed under the upload's key (to read it
    /// back, see [`Storage::read_upload`]): it can be committed, not
    /// appended to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    completed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    etag: String,
    size: u64,
}

impl UploadState {
    fn parse(state: &str) -> io::Result<UploadState> {
        if state.is_empty() {
            return Ok(UploadState::default());
        }
        serde_json::from_str(state).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upload state is corrupt: {e}"),
            )
        })
    }

    fn parts_size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Cuts the state back to `offset` bytes, which the session record says
    /// were received: parts and tail written by a failed later attempt are
    /// forgotten (S3 completes only the parts it is given). The offset lies
    /// on a part boundary or within the tail, since every append ends on one.
    fn cut_to(&mut self, offset: u64) -> io::Result<()> {
        let mut end = 0;
        for (count, part) in self.parts.iter().enumerate() {
            if end == offset {
                self.parts.truncate(count);
                self.tail = 0;
                self.tail_id.clear();
                return Ok(());
            }
            end += part.size;
        }
        if offset >= end && offset <= end + self.tail {
            self.tail = offset - end;
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upload offset {offset} is not on a boundary of its parts"),
        ))
    }
}

/// Where an upload's carried-over bytes (starting at `start`) are kept:
/// beside the upload's data key, named by where they start and by the id the
/// append that wrote them chose, so that no other append ever overwrites
/// bytes a saved state counts on: not a later attempt, and not one racing on
/// another replica with the same offset and length (whose session record
/// may lose the race while its tail wins, which would commit one chunk's
/// bytes under the other's digest). A state without an id (written before
/// tails had one) names its tail by its length.
fn tail_key(key: &str, start: u64, upload: &UploadState) -> String {
    if upload.tail_id.is_empty() {
        format!("{key}.tail.{start}.{}", upload.tail)
    } else {
        format!("{key}.tail.{start}.{}", upload.tail_id)
    }
}

/// The part size for part number `index` (from 0): the configured size for
/// the first thousand parts, then doubling each thousand up to 64 MiB, so
/// S3's 10,000 parts hold ~0.5 TB while memory per upload stays bounded.
fn part_size_at(base: usize, index: usize) -> usize {
    let doublings = (index / 1000).min(3) as u32;
    (base << doublings)
        .max(base)
        .min(base.max(64 * 1024 * 1024))
}

impl S3Storage {
    /// Completes an upload's multipart upload under its key, its tail sent
    /// as the last part (which may be short). Nothing when done already.
    async fn complete(&self, key: &str, upload: &mut UploadState) -> io::Result<()> {
        if upload.completed {
            return Ok(());
        }
        let id = upload.id.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "no multipart upload to complete",
            )
        })?;
        let path = self.path(key);
        let start = upload.parts_size();
        if upload.tail > 0 {
            let tail = self
                .read_small(&tail_key(key, start, upload), upload.tail as usize)
                .await?;
            let part = parts::put_part(
                &*self.transfer,
                &path,
                &id,
                upload.parts.len(),
                PutPayload::from_bytes(tail),
            )
            .await?;
            upload.parts.push(part);
            upload.tail = 0;
            upload.tail_id.clear();
        }
        let parts = upload
            .parts
            .iter()
            .map(|part| PartId {
                content_id: part.etag.clone(),
            })
            .collect();
        self.transfer
            .complete_multipart(&path, &id, parts)
            .await
            .map_err(io_error)?;
        upload.completed = true;
        Ok(())
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn store_requests(&self) -> Option<&StoreRequests> {
        Some(&self.requests)
    }

    #[tracing::instrument(level = "debug", name = "storage.get", skip_all, fields(key = %key))]
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        if layout::is_upload_session(key) {
            return self.get_session_record(key).await;
        }
        match self.meta.get(&self.path(key)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(io_error)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.put", skip_all, fields(key = %key))]
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> io::Result<bool> {
        if self.writes_plainly(key, mode) {
            self.put_guarded(key, data).await?;
            return Ok(true);
        }
        Ok(self.create_all(vec![(key.to_owned(), data)]).await?[0])
    }

    async fn put_chain(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        // Plain writes share one look at the collections after the last: a
        // small blob's content and its link cost their two PUTs and one flag
        // GET, not two.
        if !docs
            .iter()
            .all(|(key, _, mode)| self.writes_plainly(key, *mode))
        {
            return crate::storage::put_each(self, docs).await;
        }
        let count = docs.len();
        let docs = docs.into_iter().map(|(key, data, _)| (key, data)).collect();
        self.write_all_guarded(docs, Order::Given).await?;
        Ok(vec![true; count])
    }

    async fn create_exclusive(&self, key: &str, data: Bytes) -> io::Result<bool> {
        if self.conditional == ConditionalWrites::Honoured {
            return self.put(key, data, WriteMode::CreateIfAbsent).await;
        }
        // The store cannot refuse a second create: after a check and a write,
        // wait until any create racing with this one has landed too, then
        // read back which one the store kept (its last writer). Every racer
        // reads the same winner, unless a write stalled longer than the wait.
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        let started = Instant::now();
        self.put_guarded(key, data.clone()).await?;
        tokio::time::sleep(create_settle(started.elapsed())).await;
        Ok(self.get(key).await?.is_some_and(|kept| kept == data))
    }

    #[tracing::instrument(level = "debug", name = "storage.put_all", skip_all)]
    async fn put_all(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        // Independent documents: those to create if absent (touched in one
        // batch) beside those to write (one look at the collections). A
        // record (a tag's history entry) that no touch of this process just
        // marked is a plain PUT, with no look at the collections before or
        // after it: its name carries the time of the change, so it is a new
        // key, which no collector deciding now listed (an intent names only
        // keys its collector listed), and a collector that lists it later
        // removes an entry only with the manifest it names, which the push
        // writing the entry protects (docs/design/s3.md §5). Two round trips
        // less when a push relies on keys an earlier touch still covers.
        let creates = |key: &str, mode: &WriteMode| match mode {
            WriteMode::Overwrite | WriteMode::Scratch => false,
            WriteMode::CreateIfAbsent => true,
            WriteMode::Record => self.collection.marked_recently(key).is_some(),
        };
        let creates: Vec<bool> = docs
            .iter()
            .map(|(key, _, mode)| creates(key, mode))
            .collect();
        let creating: Vec<(String, Bytes)> = docs
            .iter()
            .zip(&creates)
            .filter(|(_, creates)| **creates)
            .map(|((key, data, _), _)| (key.clone(), data.clone()))
            .collect();
        let writing: Vec<(String, Bytes)> = docs
            .iter()
            .zip(&creates)
            .filter(|((_, _, mode), creates)| !**creates && *mode != WriteMode::Record)
            .map(|((key, data, _), _)| (key.clone(), data.clone()))
            .collect();
        let recording: Vec<(String, Bytes)> = docs
            .iter()
            .zip(&creates)
            .filter(|((_, _, mode), creates)| !**creates && *mode == WriteMode::Record)
            .map(|((key, data, _), _)| (key.clone(), data.clone()))
            .collect();
        let (created, (), ()) = futures::try_join!(
            async {
                if creating.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.create_all(creating).await
                }
            },
            async {
                if writing.is_empty() {
                    Ok(())
                } else {
                    self.write_all_guarded(writing, Order::Any).await
                }
            },
            async {
                futures::stream::iter(recording)
                    .map(|(key, data)| async move { self.put_overwrite(&key, data).await })
                    .buffer_unordered(CONCURRENT_REQUESTS)
                    .try_collect::<Vec<()>>()
                    .await
                    .map(|_| ())
            },
        )?;
        let mut created = created.into_iter();
        Ok(creates
            .iter()
            .map(|creates| !creates || created.next().unwrap_or(false))
            .collect())
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        Ok(self.head(key).await?.map(|meta| meta.size))
    }

    #[tracing::instrument(level = "debug", name = "storage.stat", skip_all, fields(key = %key))]
    async fn stat(&self, key: &str) -> io::Result<Option<ObjectInfo>> {
        Ok(self.head(key).await?.map(|meta| ObjectInfo {
            size: meta.size,
            modified: SystemTime::from(meta.last_modified),
        }))
    }

    async fn touch(&self, key: &str) -> io::Result<bool> {
        Ok(self.touch_keys(&[key]).await?[0].is_some())
    }

    #[tracing::instrument(level = "debug", name = "storage.touch_all", skip_all)]
    async fn touch_all(&self, keys: Vec<String>) -> io::Result<Vec<Option<u64>>> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.touch_keys(&keys).await
    }

    fn touched_within(&self, keys: &[String], within: Duration) -> Option<Vec<u64>> {
        // Half of MARKED_FOR at most: the rest is the operation's time to
        // land the writes that make them reachable (§5 states the condition).
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if keys.is_empty() || !keys.iter().all(|key| collection::is_protected(key)) {
            return None;
        }
        self.collection
            .present_within(&keys, within.min(self.touch_memory()))
    }

    fn touch_memory(&self) -> Duration {
        collection::MARKED_FOR / 2
    }

    async fn delete_if_untouched_since(&self, key: &str, cutoff: SystemTime) -> io::Result<bool> {
        Ok(self
            .delete_all_if_untouched_since(vec![key.to_owned()], cutoff)
            .await?[0])
    }

    async fn delete_all_if_untouched_since(
        &self,
        keys: Vec<String>,
        cutoff: SystemTime,
    ) -> io::Result<Vec<bool>> {
        if keys.iter().any(|key| layout::is_collectable(key)) {
            return self.remove_untouched(&keys, cutoff).await;
        }
        // Uploads: no toucher relies on them (layout::is_collectable).
        futures::stream::iter(keys)
            .map(|key| async move {
                let Some(meta) = self.head(&key).await? else {
                    return Ok(false);
                };
                if !collection::older_than(meta.last_modified.into(), cutoff) {
                    return Ok(false);
                }
                self.meta.delete(&self.path(&key)).await.map_err(io_error)?;
                Ok(true)
            })
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<bool> {
        self.forget(from);
        self.forget(to);
        self.collection.removed(from);
        match self.meta.copy(&self.path(from), &self.path(to)).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(io_error(e)),
        }
        self.meta.delete(&self.path(from)).await.map_err(io_error)?;
        Ok(true)
    }

    #[tracing::instrument(level = "debug", name = "storage.read", skip_all, fields(key = %key))]
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<Option<ContentRead>> {
        // S3 cannot answer an empty range: the size comes from a HEAD.
        if range.as_ref().is_some_and(|r| r.is_empty()) {
            return Ok(self.head(key).await?.map(|meta| ContentRead {
                size: meta.size,
                stream: Box::pin(futures::stream::empty()),
                verified: false,
            }));
        }
        if let Some(cache) = self
            .blob_cache
            .as_ref()
            .filter(|_| key.starts_with("blobs/"))
        {
            return cache.read(&self.transfer, self.path(key), key, range).await;
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = match self.transfer.get_opts(&self.path(key), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let size = result.meta.size;
        let stream = result.into_stream().map_err(io_error);
        Ok(Some(ContentRead {
            size,
            stream: Box::pin(stream),
            verified: false,
        }))
    }

    #[tracing::instrument(level = "debug", name = "storage.delete", skip_all, fields(key = %key))]
    async fn delete(&self, key: &str) -> io::Result<bool> {
        self.forget(key);
        self.collection.removed(key);
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        self.meta.delete(&self.path(key)).await.map_err(io_error)?;
        Ok(true)
    }

    async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        self.collection.removed_under(&format!("{prefix}/"));
        self.session_records.forget_under(&format!("{prefix}/"));
        let prefix = self.path(prefix);
        let keys = self.meta.list(Some(&prefix)).map_ok(|meta| meta.location);
        self.meta
            .delete_stream(Box::pin(keys))
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(io_error)
    }

    async fn delete_all_of(&self, prefix: &str, keys: &[String]) -> io::Result<()> {
        // A delete request per key (object_store sends each as a one-key
        // DeleteObjects; a missing key is no error): no LIST first.
        self.collection.removed_under(&format!("{prefix}/"));
        self.session_records.forget_under(&format!("{prefix}/"));
        let keys: Vec<String> = keys.to_vec();
        futures::stream::iter(keys)
            .map(|key| async move {
                debug_assert!(key.starts_with(&format!("{prefix}/")));
                self.forget(&key);
                match self.meta.delete(&self.path(&key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(io_error(e)),
                }
            })
            .buffer_unordered(CONCURRENT_REQUESTS)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    #[tracing::instrument(level = "debug", name = "storage.list", skip_all, fields(prefix = %prefix))]
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> io::Result<ListPage> {
        let dir = format!("{}/{prefix}/", self.root);
        let mut names = BTreeSet::new();
        let mut offset = start_after.map(|after| format!("{dir}{after}"));
        let mut token = None;
        let mut last = String::new();
        // One name more than asked for: S3 starts after `start_after`'s own
        // key, so its subtree (`after/`) usually comes first and is dropped
        // below, and the page should still hold `limit` names.
        let asked = limit.saturating_add(1);
        let more = loop {
            let (page, next) = self
                .list_request(&dir, offset.take(), token.take(), asked)
                .await?;
            for (name, is_prefix) in page {
                let key = format!("{dir}{name}{}", if is_prefix { "/" } else { "" });
                last = last.max(key);
                // S3 starts after a key, which may lie inside the subtree of
                // `start_after` itself or of a shorter name (`v1/` after `v1.0`).
                if start_after.is_none_or(|after| name.as_str() > after) {
                    names.insert(name);
                }
            }
            match next {
                // A page left empty by that filter: read on.
                Some(next) if names.is_empty() => token = Some(next),
                next => break next.is_some(),
            }
        };
        if more {
            let candidates: Vec<String> = missing_prefixes(&names, &dir, &last, start_after)
                .into_iter()
                .collect();
            let found: Vec<(String, bool)> = futures::stream::iter(candidates)
                .map(|name| {
                    let dir = dir.as_str();
                    async move {
                        let exists = self.prefix_exists(dir, &name).await?;
                        Ok::<_, io::Error>((name, exists))
                    }
                })
                .buffered(CONCURRENT_REQUESTS)
                .try_collect()
                .await?;
            names.extend(found.into_iter().filter(|(_, e)| *e).map(|(n, _)| n));
        }
        let mut names: Vec<String> = names.into_iter().collect();
        let cut = names.len() > limit;
        names.truncate(limit);
        Ok(ListPage {
            names,
            more: more || cut,
        })
    }

    #[tracing::instrument(level = "debug", name = "storage.list_tree", skip_all, fields(prefix = %prefix))]
    async fn list_tree(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> io::Result<Option<TreePage>> {
        // Without a delimiter, S3 lists whole keys in byte order: no
        // directory to repair as in `list`, one request a page.
        let dir = format!("{}/{prefix}/", self.root);
        let page = self
            .meta
            .list_paginated(
                Some(&dir),
                PaginatedListOptions {
                    offset: start_after.map(|after| format!("{dir}{after}")),
                    max_keys: Some(limit.clamp(1, 1000)),
                    ..PaginatedListOptions::default()
                },
            )
            .await
            .map_err(io_error)?;
        let objects = page
            .result
            .objects
            .into_iter()
            .filter_map(|o| {
                let name = o.location.as_ref().strip_prefix(&dir)?.to_owned();
                Some(TreeObject {
                    name,
                    size: o.size,
                    modified: o.last_modified.into(),
                })
            })
            .collect();
        Ok(Some(TreePage {
            objects,
            more: page.page_token.is_some(),
        }))
    }

    #[tracing::instrument(level = "debug", name = "storage.append_upload", skip_all, fields(key = %key))]
    async fn append_upload(
        &self,
        key: &str,
        offset: u64,
        data: &mut ByteSource<'_>,
        length: Option<u64>,
        state: &mut String,
    ) -> io::Result<u64> {
        let mut upload = UploadState::parse(state)?;
        if upload.completed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the upload was finished to check its digest and takes no more chunks",
            ));
        }
        upload.cut_to(offset)?;
        let path = self.path(key);
        let start = upload.parts_size();
        let carried = match upload.tail {
            0 => None,
            len => Some(
                self.read_small(&tail_key(key, start, &upload), len as usize)
                    .await?,
            ),
        };
        let to_come = length.map(|n| n + upload.tail);
        let mut appender = parts::Appender::new(self, path.clone(), &mut upload, to_come);
        if let Some(carried) = carried {
            appender.push(carried).await?;
        }
        let mut received = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            appender.push(chunk).await?;
        }
        // The end of this chunk: a part if it is large enough, else carried
        // over. Never an empty part.
        let rest = appender.finish().await?;
        let start = upload.parts_size();
        upload.tail = 0;
        upload.tail_id.clear();
        if rest.content_length() >= MIN_PART {
            if upload.id.is_none() {
                upload.id = Some(
                    self.transfer
                        .create_multipart(&path)
                        .await
                        .map_err(io_error)?,
                );
            }
            let id = upload.id.clone().expect("created");
            let part =
                parts::put_part(&*self.transfer, &path, &id, upload.parts.len(), rest).await?;
            upload.parts.push(part);
        } else if rest.content_length() > 0 {
            upload.tail = rest.content_length() as u64;
            upload.tail_id = uuid::Uuid::new_v4().simple().to_string();
            self.transfer
                .put(&self.path(&tail_key(key, start, &upload)), rest)
                .await
                .map_err(io_error)?;
        }
        *state = serde_json::to_string(&upload).expect("upload state serializes");
        Ok(received)
    }

    #[tracing::instrument(level = "debug", name = "storage.commit_upload", skip_all, fields(key = %key))]
    async fn commit_upload(&self, key: &str, size: u64, dest: &str, state: &str) -> io::Result<()> {
        let mut upload = UploadState::parse(state)?;
        // The tail object holds what the append that wrote it counted.
        let tail_written = upload.tail;
        upload.cut_to(size)?;
        let start = upload.parts_size();
        if start + upload.tail != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "upload content has {} bytes, expected {size}",
                    start + upload.tail
                ),
            ));
        }
        if upload.id.is_none() {
            if upload.tail != tail_written {
                // Cut back: only the first bytes of the tail object count.
                let tail = self
                    .read_small(&tail_key(key, start, &upload), upload.tail as usize)
                    .await?;
                return self.put_guarded(dest, tail).await;
            }
            if upload.tail == 0 {
                // Zero bytes: there is no tail object.
                return self.put_guarded(dest, Bytes::new()).await;
            }
            // A blob smaller than a part: its tail object copied to its key,
            // in the store (on Garage the copy shares the blocks), not read
            // back and sent again.
            return self
                .copy_guarded(&self.path(&tail_key(key, start, &upload)), size, dest)
                .await;
        }
        let path = self.path(key);
        self.complete(key, &mut upload).await?;
        // Completed under the upload's key, then copied: the digest was not
        // known when the upload began. A copy is server-side (on Garage it
        // shares the blocks). A crash between the two leaves the upload's
        // object for upload expiry.
        self.copy_guarded(&path, size, dest).await?;
        self.meta.delete(&path).await.map_err(io_error)
    }

    async fn read_upload(
        &self,
        key: &str,
        size: u64,
        state: &mut String,
    ) -> io::Result<Option<ContentRead>> {
        let mut upload = UploadState::parse(state)?;
        upload.cut_to(size)?;
        if upload.id.is_none() {
            let start = upload.parts_size();
            return self
                .read(&tail_key(key, start, &upload), Some(0..upload.tail))
                .await;
        }
        // Parts cannot be read before their upload completes.
        self.complete(key, &mut upload).await?;
        *state = serde_json::to_string(&upload).expect("upload state serializes");
        self.read(key, Some(0..size)).await
    }

    async fn abort_upload(&self, key: &str, state: &str) -> io::Result<()> {
        let upload = UploadState::parse(state)?;
        let Some(id) = upload.id.filter(|_| !upload.completed) else {
            return Ok(());
        };
        match self.transfer.abort_multipart(&self.path(key), &id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn redirect_url(&self, key: &str) -> io::Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        let url = self
            .meta
            .signed_url(http::Method::GET, &self.path(key), REDIRECT_VALIDITY)
            .await
            .map_err(io_error)?;
        Ok(Some(url.to_string()))
    }

    fn local_files(&self) -> Option<&dyn LocalFiles> {
        self.blob_cache.as_ref().map(|_| self as &dyn LocalFiles)
    }

    fn upload_chunk_min_length(&self) -> Option<u64> {
        Some(MIN_PART as u64)
    }

    async fn check_writable(&self) -> io::Result<()> {
        let key = format!("_berth/ready/{}", uuid::Uuid::new_v4());
        self.put_overwrite(&key, Bytes::from_static(b"ready"))
            .await?;
        self.meta.delete(&self.path(&key)).await.map_err(io_error)
    }
}

/// Blobs this replica has cached whole are local files: sent by the kernel.
#[async_trait]
impl LocalFiles for S3Storage {
    async fn local_file(&self, key: &str) -> io::Result<Option<LocalFile>> {
        Ok(self
            .blob_cache
            .as_ref()
            .and_then(|cache| cache.open_file(key))
            .map(|(file, size)| LocalFile { file, size }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_name_cut_before_a_byte_below_the_slash_is_a_candidate_once_s3_has_not_reached_it() {
        let dir = "r/tags/";
        // S3 order: v1.0/ < v1/ ; a page that ends at v1.0/ has not reached v1/.
        let page = set(&["v1.0"]);
        assert_eq!(
            missing_prefixes(&page, dir, "r/tags/v1.0/", None),
            set(&["v1"])
        );
        // Once S3 listed past v1/, v1 would be on the page if it existed.
        assert!(missing_prefixes(&page, dir, "r/tags/v1/", None).is_empty());
        // Names at or before start_after are not wanted.
        assert!(missing_prefixes(&page, dir, "r/tags/v1.0/", Some("v1")).is_empty());
        // Every cut: 1.2.3-alpine may hide 1, 1.2 and 1.2.3.
        let page = set(&["1.2.3-alpine"]);
        assert_eq!(
            missing_prefixes(&page, dir, "r/tags/1.2.3-alpine/", None),
            set(&["1", "1.2", "1.2.3"])
        );
        // A name with no such byte hides nothing.
        assert!(missing_prefixes(&set(&["latest"]), dir, "r/tags/latest/", None).is_empty());
    }

    #[test]
    fn an_upload_state_is_cut_back_to_a_recorded_offset_on_a_boundary() {
        let part = |size| Part {
            etag: format!("e{size}"),
            size,
        };
        let full = UploadState {
            id: Some("u".into()),
            parts: vec![part(10), part(20)],
            tail: 5,
            tail_id: "t".into(),
            completed: false,
        };
        let mut state = full.clone();
        state.cut_to(35).unwrap();
        assert_eq!(state, full);
        let mut state = full.clone();
        state.cut_to(32).unwrap();
        assert_eq!((state.parts.len(), state.tail), (2, 2));
        let mut state = full.clone();
        state.cut_to(10).unwrap();
        assert_eq!((state.parts.len(), state.tail), (1, 0));
        let mut state = full.clone();
        state.cut_to(0).unwrap();
        assert_eq!((state.parts.len(), state.tail), (0, 0));
        // Inside a part: the state and the record disagree.
        assert!(full.clone().cut_to(15).is_err());
        assert!(full.clone().cut_to(36).is_err());
    }

    #[test]
    fn racing_appends_of_one_length_name_their_tails_apart() {
        let tail = |id: &str| UploadState {
            tail: 1024,
            tail_id: id.into(),
            ..UploadState::default()
        };
        let key = "repositories/a/_uploads/u/data";
        assert_ne!(tail_key(key, 0, &tail("x")), tail_key(key, 0, &tail("y")));
        // A state saved before tails had ids still finds its tail.
        assert_eq!(tail_key(key, 0, &tail("")), format!("{key}.tail.0.1024"));
        let old: UploadState = serde_json::from_str(r#"{"tail":1024}"#).unwrap();
        assert_eq!(old, tail(""));
    }

    #[test]
    fn parts_grow_after_each_thousand_and_stop_at_64_mib() {
        let base = 8 * 1024 * 1024;
        assert_eq!(part_size_at(base, 0), base);
        assert_eq!(part_size_at(base, 999), base);
        assert_eq!(part_size_at(base, 1000), 2 * base);
        assert_eq!(part_size_at(base, 2000), 4 * base);
        assert_eq!(part_size_at(base, 3000), 8 * base);
        assert_eq!(part_size_at(base, 9999), 8 * base);
        // A configured size above 64 MiB is kept.
        assert_eq!(part_size_at(100 << 20, 5000), 100 << 20);
    }

    #[test]
    fn a_config_without_a_bucket_with_tiny_parts_or_an_escaping_prefix_is_refused() {
        let ok = S3Config {
            bucket: "b".into(),
            ..S3Config::default()
        };
        assert!(ok.validate().is_ok());
        assert!(S3Config::default().validate().is_err(), "no bucket");
        let tiny = S3Config {
            part_size: MIN_PART - 1,
            ..ok.clone()
        };
        assert!(tiny.validate().is_err());
        for prefix in ["..", "a/../b", "./x"] {
            let escaping = S3Config {
                prefix: prefix.into(),
                ..ok.clone()
            };
            assert!(escaping.validate().is_err(), "{prefix}");
        }
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let config = S3Config {
            bucket: "b".into(),
            secret_access_key: Some("very-secret".into()),
            session_token: Some("token-secret".into()),
            ..S3Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("token-secret"));
        assert!(shown.contains("<redacted>"));
    }
}
