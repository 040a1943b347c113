//! Pull-through mirroring of upstream registries (issue 14;
//! docs/design/mirror.md). A mirrored image is an ordinary local repository
//! under its entry's prefix (`hub/library/alpine` is `library/alpine`
//! upstream), stored in the layout of pushed content, so access control,
//! gc, fsck and both backends apply unchanged. The HTTP layer asks the
//! [`Mirror`] to make a manifest or blob local before it serves it as any
//! other; nothing fetched is visible before its digest checks out.
//!
//! Built so far: anonymous upstreams and logged-in ones (the token flow or
//! Basic; `username` with `password` or `password_file`, or a docker
//! `config.json`), entries by prefix, tags trusted for `tag_ttl` and then
//! revalidated by `HEAD` (a `GET` only when the digest changed), blobs
//! streamed to every client that asks while they are fetched (one fetch per
//! blob at a time in this process, its last byte held until the digest
//! checks out, committed only after), and a breaker per upstream (`health`)
//! with cached tags served under a `Warning`.

mod config;
mod health;
mod tags;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use tokio::sync::watch;

pub use config::ProxyConfig;
pub use tags::MirroredTags;

use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepositoryName, Tag};
use crate::registry::{spool, ByteStream, Registry, RequestBody};
use upstream::{Answer, Upstream};

/// At most this many tag check times are kept; past it they are forgotten
/// (each costs one `HEAD` upstream again, never a wrong answer).
const MAX_TAG_CHECKS: usize = 100_000;

struct Entry {
    prefix: String,
    /// The registries whose `?ns=` requests this entry serves, each as
    /// `config::registry_key` spells it.
    namespaces: Vec<String>,
    /// Hosts whose every request is for this entry (dockerd).
    hosts: Vec<String>,
    /// Pushes are taken; tags the mirror sets are recorded.
    allow_push: bool,
    /// Cached images unused this long are evicted: pulls are recorded.
    unused_for: Option<Duration>,
    /// Cached images beyond this size are evicted: pulls are recorded.
    max_bytes: Option<u64>,
    allow: Vec<crate::oci::RepositoryPattern>,
    deny: Vec<crate::oci::RepositoryPattern>,
    /// The upstream is Docker Hub, whose one-component names are
    /// `library/<name>`.
    docker_hub: bool,
    /// The upstream's base URL, no trailing `/`.
    base: String,
    tag_ttl: Duration,
    revalidate_timeout: Duration,
    access: upstream::Access,
    breaker: health::Breaker,
}

/// A local name under an entry: the entry and the upstream's name.
struct Mapped<'e, 'n> {
    entry: &'e Entry,
    upstream_name: &'n str,
    /// What a request for it needs upstream: `repository:<name>:pull`.
    scope: String,
}

impl Mapped<'_, '_> {
    fn on(&self) -> upstream::On<'_> {
        upstream::On {
            prefix: &self.entry.prefix,
            access: &self.entry.access,
            breaker: &self.entry.breaker,
            scope: &self.scope,
        }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}",
            self.entry.base, self.upstream_name
        )
    }

    fn failed(&self, failure: upstream::Failure) -> Refusal {
        let retry_after = failure.retry_after;
        Refusal {
            error: failure.into_error(&self.entry.base),
            retry_after,
        }
    }
}

type Flight = Shared<BoxFuture<'static, Outcome<Option<Warning>>>>;

/// The mirrored prefixes of one process, and what it is fetching.
pub struct Mirror {
    entries: Vec<Entry>,
    upstream: Upstream,
    /// Fetches in progress, by what they fetch: later requests for the same
    /// thing wait for the one fetch.
    flights: Mutex<HashMap<String, (u64, Flight)>>,
    next_flight: std::sync::atomic::AtomicU64,
    /// When this process last had a tag's digest confirmed by its upstream.
    tag_checks: Mutex<HashMap<String, Instant>>,
    /// Upstream tag lists, by local name, and when they were read.
    tag_lists: Mutex<HashMap<String, tags::KeptList>>,
    /// When this process last recorded a pull of a manifest (`name@digest`),
    /// for entries with `unused_for`.
    pulls: Mutex<HashMap<String, Instant>>,
    /// Blob fetches in progress, by local name and digest.
    blob_fetches: Mutex<HashMap<String, Arc<BlobFetch>>>,
    /// Where fetched blobs are spooled (`<data_dir>/mirror/spool`).
    spool_dir: std::path::PathBuf,
}

/// Where a request with `?ns=` goes ([`Mirror::namespace`]).
pub enum Namespace {
    /// To the name as it is.
    AsIs,
    /// To this local name, under the entry mirroring that registry.
    Mirrored(RepositoryName),
    /// Nowhere: the answer.
    Refused(RegistryError),
}

/// What a request for a mirrored blob gets.
pub enum PreparedBlob {
    /// The blob is here: served as any other.
    Local,
    /// A `HEAD` of a blob that is not here: the upstream's size (nothing is
    /// fetched).
    UpstreamSize(u64),
    /// The blob as it is fetched: `size` bytes, the last of them sent only
    /// once the digest checked out (a bad fetch ends `body` with an error).
    Following { size: u64, body: ByteStream },
}

/// A blob being fetched from upstream into a spool file that the clients
/// asking for it and the store's writer follow.
struct BlobFetch {
    digest: Digest,
    spool: Arc<spool::Spool>,
    /// Set when the fetch ends before there is a body to follow: the blob
    /// turned out to be here, or the upstream's refusal.
    before_the_body: OnceLock<BeforeTheBody>,
    /// The fetch's outcome, once it and the commit have ended.
    ended: watch::Receiver<Option<Outcome<()>>>,
    _file: SpoolFile,
}

enum BeforeTheBody {
    Here,
    Refused(Refusal),
}

impl BlobFetch {
    /// Waits for the fetch and its commit to end.
    async fn ended(&self) -> Outcome<()> {
        let mut ended = self.ended.clone();
        let outcome = ended
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RegistryError::internal("a mirror fetch stopped", "no outcome"))?;
        outcome.clone().expect("waited for")
    }
}

/// Removes a spool file when the last one who reads it is done (readers
/// that opened it keep reading it).
struct SpoolFile(std::path::PathBuf);

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why a mirrored request cannot be served: the error, and when the client
/// may try again (`Retry-After`) where the upstream is what failed.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub error: RegistryError,
    pub retry_after: Option<Duration>,
}

impl From<RegistryError> for Refusal {
    fn from(error: RegistryError) -> Refusal {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Refusal {
        RegistryError::from(code).into()
    }
}

type Outcome<T> = std::result::Result<T, Refusal>;

/// A `Warning` (RFC 9111's 299, as the distribution-spec asks): the manifest
/// is served, but as cached, because its upstream could not be asked.
pub type Warning = String;

impl Mirror {
    /// The mirror the `[[proxy]]` entries describe; `None` without entries.
    /// Blobs are spooled under `spool_dir` as they are fetched (created,
    /// and emptied of what an earlier run left).
    pub fn new(
        entries: &[ProxyConfig],
        spool_dir: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Option<Arc<Mirror>>, String> {
        if entries.is_empty() {
            return Ok(None);
        }
        ProxyConfig::validate_all(entries)?;
        let _ = std::fs::remove_dir_all(spool_dir);
        std::fs::create_dir_all(spool_dir).map_err(|e| {
            format!(
                "[[proxy]]: creating the spool directory {}: {e}",
                spool_dir.display()
            )
        })?;
        let entries = entries
            .iter()
            .map(|e| {
                let credentials = match (&e.username, &e.docker_config) {
                    (Some(username), _) => Some(upstream::Credentials::new(
                        username.clone(),
                        e.password.clone(),
                        e.password_file.clone(),
                    )),
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path).map_err(|err| {
                            format!(
                                "[[proxy]] {:?}: reading docker_config {}: {err}",
                                e.prefix,
                                path.display()
                            )
                        })?;
                        let (username, password) =
                            config::docker_config_credentials(&text, &e.upstream).map_err(
                                |err| {
                                    format!(
                                        "[[proxy]] {:?}: docker_config {}: {err}",
                                        e.prefix,
                                        path.display()
                                    )
                                },
                            )?;
                        Some(upstream::Credentials::new(username, Some(password), None))
                    }
                    (None, None) => None,
                };
                let base = config::upstream_base(&e.upstream)?;
                Ok(Entry {
                    docker_hub: config::is_docker_hub(&base),
                    prefix: e.prefix.clone(),
                    namespaces: e.namespaces(),
                    hosts: e.hosts.clone(),
                    allow_push: e.allow_push,
                    unused_for: e.unused_for,
                    max_bytes: e.max_bytes,
                    allow: e.allow.clone(),
                    deny: e.deny.clone(),
                    base,
                    tag_ttl: e.tag_ttl,
                    revalidate_timeout: e.revalidate_timeout,
                    access: upstream::Access::new(credentials),
                    breaker: health::Breaker::default(),
                })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Some(Arc::new(Mirror {
            entries,
            upstream: Upstream::new(metrics)?,
            flights: Mutex::default(),
            next_flight: Default::default(),
            tag_checks: Mutex::default(),
            tag_lists: Mutex::default(),
            blob_fetches: Mutex::default(),
            pulls: Mutex::default(),
            spool_dir: spool_dir.to_owned(),
        })))
    }

    fn map<'n>(&self, name: &'n RepositoryName) -> Option<Mapped<'_, 'n>> {
        let name = name.as_str();
        self.entries.iter().find_map(|entry| {
            let rest = name
                .strip_prefix(entry.prefix.as_str())?
                .strip_prefix('/')?;
            Some(Mapped {
                entry,
                upstream_name: rest,
                scope: format!("repository:{rest}:pull"),
            })
        })
    }

    /// The local repository a request for `name` sent to `authority` (its
    /// validated `Host`) names, when an entry lists that host: the whole
    /// name is the upstream's, under the entry's prefix. A host listed
    /// without a port matches on any port.
    pub fn by_host(
        &self,
        authority: &str,
        name: &RepositoryName,
    ) -> Option<Outcome<RepositoryName>> {
        let authority = authority.to_ascii_lowercase();
        // Configured hosts are names or IPv4 addresses (`config.rs`): the
        // port, if any, is what follows the last `:` (an IPv6 authority
        // matches no entry either way).
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(host, _)| host);
        let entry = self
            .entries
            .iter()
            .find(|e| e.hosts.iter().any(|h| *h == authority || *h == host))?;
        Some(
            RepositoryName::parse(&format!("{}/{name}", entry.prefix)).ok_or_else(|| {
                RegistryError::with_detail(
                    ErrorCode::NameInvalid,
                    format!("{name} under {} is not a valid name here", entry.prefix),
                )
                .into()
            }),
        )
    }

    /// Which local repository a request for `name` with `?ns=<ns>` names
    /// (docs/design/mirror.md §3): a name under an entry's prefix is that
    /// name (the path is explicit, and `ns` is ignored); else the entry
    /// that lists `ns` serves it under its prefix. A registry no entry
    /// mirrors is refused rather than answered from a local repository of
    /// the same name, which is not the image the client asked for (a
    /// containerd client then goes to its next host).
    pub fn namespace(&self, ns: &str, name: &RepositoryName) -> Namespace {
        if self.map(name).is_some() {
            return Namespace::AsIs;
        }
        let key = config::registry_key(ns);
        match self.entries.iter().find(|e| e.namespaces.contains(&key)) {
            Some(entry) => match RepositoryName::parse(&format!("{}/{name}", entry.prefix)) {
                Some(local) => Namespace::Mirrored(local),
                None => Namespace::Refused(RegistryError::with_detail(
                    ErrorCode::NameInvalid,
                    format!("{name} under {} is not a valid name here", entry.prefix),
                )),
            },
            None => Namespace::Refused(RegistryError::with_detail(
                ErrorCode::NameUnknown,
                format!("this registry does not mirror {ns}"),
            )),
        }
    }

    /// The name a mirrored `name` is cached under when it is not that
    /// name: on a Docker Hub entry a one-component upstream name is
    /// `library/<name>` (as docker spells `alpine`), so `hub/alpine` is
    /// `hub/library/alpine` and one image is cached once.
    pub fn canonical(&self, name: &RepositoryName) -> Option<RepositoryName> {
        let mapped = self.map(name)?;
        if !mapped.entry.docker_hub || mapped.upstream_name.contains('/') {
            return None;
        }
        RepositoryName::parse(&format!(
            "{}/library/{}",
            mapped.entry.prefix, mapped.upstream_name
        ))
    }

    /// Why a mirrored name may not be used at all, when its entry's `allow`
    /// and `deny` lists refuse its upstream name (403 `DENIED`, whether a
    /// copy is cached or not).
    pub fn refuses(&self, name: &RepositoryName) -> Option<RegistryError> {
        let mapped = self.map(name)?;
        let upstream = RepositoryName::parse(mapped.upstream_name)?;
        let entry = mapped.entry;
        let allowed = entry.allow.is_empty() || entry.allow.iter().any(|p| p.matches(&upstream));
        if allowed && !entry.deny.iter().any(|p| p.matches(&upstream)) {
            return None;
        }
        Some(RegistryError::with_detail(
            ErrorCode::Denied,
            format!(
                "{upstream} is not mirrored from {} here ([[proxy]] {:?} allow and deny)",
                entry.base, entry.prefix
            ),
        ))
    }

    /// Whether pushes into a mirrored name are taken (`allow_push`).
    pub fn takes_pushes(&self, name: &RepositoryName) -> bool {
        self.map(name).is_some_and(|m| m.entry.allow_push)
    }

    /// The upstream a local name is mirrored from, when it is.
    pub fn upstream_of(&self, name: &RepositoryName) -> Option<&str> {
        self.map(name).map(|m| m.entry.base.as_str())
    }

    /// Makes the manifest `reference` (as the client wrote it) of a mirrored
    /// `name` local, fetching it when it is missing or, for a tag, when its
    /// digest was last confirmed more than `tag_ttl` ago. A reference that
    /// does not parse is left to the handler to refuse. A cached tag whose
    /// upstream cannot be asked, or does not answer within
    /// `revalidate_timeout`, is served as cached, with a [`Warning`] (the
    /// check goes on and moves the tag for later pulls).
    pub async fn prepare_manifest(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        name: &RepositoryName,
        reference: &str,
    ) -> Outcome<Option<Warning>> {
        let prepared = self.prepare_manifest_now(registry, name, reference).await?;
        self.note_pull(registry, name, reference).await;
        Ok(prepared)
    }

    /// Records a pull of the manifest `reference` names, for eviction: on
    /// entries with `unused_for`, at most once per a tenth of it (at most an
    /// hour) per manifest in this process; on entries with only
    /// `max_bytes`, once per manifest in this process (its order is then
    /// about when images were fetched).
    async fn note_pull(&self, registry: &Registry, name: &RepositoryName, reference: &str) {
        let Some(entry) = self.map(name).map(|m| m.entry) else {
            return;
        };
        let period = match (entry.unused_for, entry.max_bytes) {
            (Some(unused_for), _) => (unused_for / 10).min(Duration::from_secs(3600)),
            (None, Some(_)) => Duration::MAX,
            (None, None) => return,
        };
        let reference = match reference.parse::<Digest>() {
            Ok(digest) => Reference::Digest(digest),
            Err(_) => match Reference::parse(reference) {
                Some(reference) => reference,
                None => return,
            },
        };
        let Ok(digest) = registry.resolve(name, &reference).await else {
            return;
        };
        let key = format!("{name}@{digest}");
        {
            let mut pulls = self.pulls.lock().expect("lock");
            if pulls.get(&key).is_some_and(|at| at.elapsed() < period) {
                return;
            }
            if pulls.len() >= MAX_TAG_CHECKS {
                pulls.clear();
            }
            pulls.insert(key, Instant::now());
        }
        if let Err(e) = registry.record_pull(name, &digest).await {
            tracing::warn!(%name, %digest, error = %e, "recording a mirrored manifest's pull failed");
        }
    }

    async fn prepare_manifest_now(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        name: &RepositoryName,
        reference: &str,
    ) -> Outcome<Option<Warning>> {
        let Some(mapped) = self.map(name) else {
            return Ok(None);
        };
        let reference = if reference.contains(':') {
            match reference.parse::<Digest>() {
                Ok(digest) => Reference::Digest(digest),
                Err(_) => return Ok(None),
            }
        } else {
            match Reference::parse(reference) {
                Some(reference) => reference,
                None => return Ok(None),
            }
        };
        match &reference {
            Reference::Digest(digest) => {
                if registry.resolve(name, &reference).await.is_ok() {
                    return Ok(None);
                }
                let key = format!("manifest {name}@{digest}");
                let url = mapped.url("manifests", &digest.to_string());
                let (mirror, registry, name) = (self.clone(), registry.clone(), name.clone());
                let digest = digest.clone();
                self.single_flight(key, async move {
                    // As for blobs (`fetch_blob`): fetched meanwhile?
                    if registry
                        .resolve(&name, &Reference::Digest(digest.clone()))
                        .await
                        .is_ok()
                    {
                        return Ok(None);
                    }
                    mirror
                        .fetch_manifest(&registry, &name, &url, None, &digest)
                        .await
                        .map(|()| None)
                })
                .await
            }
            Reference::Tag(tag) => {
                let check = format!("{name}:{tag}");
                let fresh = self
                    .tag_checks
                    .lock()
                    .expect("lock")
                    .get(&check)
                    .is_some_and(|at| at.elapsed() < mapped.entry.tag_ttl);
                let local = registry.resolve(name, &reference).await.ok();
                let cached = local.is_some();
                if fresh && cached {
                    return Ok(None);
                }
                // Where pushes are taken, a tag the mirror did not set last
                // was pushed here: it is served as it is.
                if let (true, Some(local)) = (mapped.entry.allow_push, &local) {
                    if registry.fetched_tag(name, tag).await?.as_ref() != Some(local) {
                        return Ok(None);
                    }
                }
                let key = format!("tag {check}");
                let (mirror, registry, owned, tag) =
                    (self.clone(), registry.clone(), name.clone(), tag.clone());
                let check = self.single_flight(key, async move {
                    mirror.revalidate_tag(&registry, &owned, &tag).await
                });
                if !cached {
                    return check.await;
                }
                let limit = mapped.entry.revalidate_timeout;
                match tokio::time::timeout(limit, check).await {
                    // The tag moved upstream but its new manifest could not
                    // be fetched: the cached one is still served.
                    Ok(Err(refusal))
                        if matches!(
                            refusal.error.code,
                            ErrorCode::Unavailable | ErrorCode::TooManyRequests
                        ) =>
                    {
                        Ok(Some(format!(
                            "{}: serving {name}:{} as cached",
                            refusal.error.detail.unwrap_or_default(),
                            reference_text(&reference),
                        )))
                    }
                    Ok(checked) => checked,
                    Err(_) => Ok(Some(format!(
                        "upstream {} did not answer within {} ms: serving {name}:{} as cached",
                        mapped.entry.base,
                        limit.as_millis(),
                        reference_text(&reference),
                    ))),
                }
            }
        }
    }

    /// Asks the upstream where a tag points (`HEAD`), and fetches the
    /// manifest only when that is not where the local tag points.
    async fn revalidate_tag(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Outcome<Option<Warning>> {
        let mapped = self.map(name).expect("a mirrored name");
        let reference = Reference::Tag(tag.clone());
        let local = registry.resolve(name, &reference).await.ok();
        let tag_url = mapped.url("manifests", tag.as_str());
        let upstream = match self.upstream.manifest_digest(mapped.on(), &tag_url).await {
            Answer::Found(digest) => digest,
            Answer::NotFound => {
                return Err(RegistryError::with_detail(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "{}:{tag} is not at {}",
                        mapped.upstream_name, mapped.entry.base
                    ),
                )
                .into())
            }
            Answer::Failed(failure) => {
                return match local {
                    // Served as cached: the upstream's answer is what is
                    // missing, not the image.
                    Some(_) => {
                        tracing::warn!(%name, %tag, upstream = %mapped.entry.base, why = %failure.why, "upstream unavailable: serving the cached tag");
                        Ok(Some(format!(
                            "upstream {} {}: serving {name}:{tag} as cached",
                            mapped.entry.base, failure.why
                        )))
                    }
                    None => Err(mapped.failed(failure)),
                };
            }
        };
        match upstream {
            Some(digest) if local.as_ref() == Some(&digest) => {}
            Some(digest) => {
                // The manifest the HEAD named, by digest: the content is
                // the one the tag pointed at when asked.
                let by_digest = Reference::Digest(digest.clone());
                if registry.resolve(name, &by_digest).await.is_ok() {
                    let stored = registry.get_manifest(name, &by_digest).await?;
                    registry
                        .store_fetched_manifest(
                            name,
                            &reference,
                            Some(&stored.media_type),
                            stored.body,
                        )
                        .await?;
                } else {
                    let url = mapped.url("manifests", &digest.to_string());
                    self.fetch_manifest(registry, name, &url, Some(tag), &digest)
                        .await?;
                }
            }
            None => self.fetch_tag_without_digest(registry, name, tag).await?,
        }
        // Written after the tag: a crash between the two leaves a tag that
        // looks pushed, served as the upstream last had it.
        if mapped.entry.allow_push {
            let set = registry.resolve(name, &reference).await?;
            registry.record_fetched_tag(name, tag, &set).await?;
        }
        let mut checks = self.tag_checks.lock().expect("lock");
        if checks.len() >= MAX_TAG_CHECKS {
            checks.clear();
        }
        checks.insert(format!("{name}:{tag}"), Instant::now());
        Ok(None)
    }

    /// An upstream that names no digest in its `HEAD`: the manifest by tag,
    /// named by the digest of its bytes.
    async fn fetch_tag_without_digest(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Outcome<()> {
        let mapped = self.map(name).expect("a mirrored name");
        let url = mapped.url("manifests", tag.as_str());
        let limit = registry.limits().max_manifest_bytes;
        let fetched = match self.upstream.manifest(mapped.on(), &url, limit).await {
            Answer::Found(fetched) => fetched,
            Answer::NotFound => return Err(ErrorCode::ManifestUnknown.into()),
            Answer::Failed(failure) => return Err(mapped.failed(failure)),
        };
        let digest = fetched
            .digest
            .clone()
            .unwrap_or_else(|| Digest::of(crate::oci::Algorithm::Sha256, &fetched.body));
        self.store_manifest(registry, name, Some(tag), &digest, fetched)
            .await
    }

    /// Fetches the manifest `digest` from `url`, checks it, and stores it
    /// (under `tag` too, when given).
    async fn fetch_manifest(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        url: &str,
        tag: Option<&Tag>,
        digest: &Digest,
    ) -> Outcome<()> {
        let mapped = self.map(name).expect("a mirrored name");
        let limit = registry.limits().max_manifest_bytes;
        match self.upstream.manifest(mapped.on(), url, limit).await {
            Answer::Found(fetched) => {
                self.store_manifest(registry, name, tag, digest, fetched)
                    .await
            }
            Answer::NotFound => Err(RegistryError::with_detail(
                ErrorCode::ManifestUnknown,
                format!(
                    "{}@{digest} is not at {}",
                    mapped.upstream_name, mapped.entry.base
                ),
            )
            .into()),
            Answer::Failed(failure) => Err(mapped.failed(failure)),
        }
    }

    /// Stores a fetched manifest if its bytes are `digest`'s; bad upstream
    /// data is refused (503) and nothing is stored.
    async fn store_manifest(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        tag: Option<&Tag>,
        digest: &Digest,
        fetched: upstream::FetchedManifest,
    ) -> Outcome<()> {
        let mapped = self.map(name).expect("a mirrored name");
        let actual = Digest::of(digest.algorithm(), &fetched.body);
        if &actual != digest {
            tracing::error!(%name, expected = %digest, %actual, upstream = %mapped.entry.base, "upstream sent a manifest that does not match its digest: not stored");
            return Err(RegistryError::with_detail(
                ErrorCode::Unavailable,
                format!(
                    "upstream {} sent a manifest whose digest is {actual}, not {digest}",
                    mapped.entry.base
                ),
            )
            .into());
        }
        let reference = match tag {
            Some(tag) => Reference::Tag(tag.clone()),
            None => Reference::Digest(digest.clone()),
        };
        registry
            .store_fetched_manifest(
                name,
                &reference,
                fetched.content_type.as_deref(),
                fetched.body,
            )
            .await
            .map_err(|e| {
                if e.code == ErrorCode::ManifestInvalid || e.code == ErrorCode::TooLarge {
                    RegistryError::with_detail(
                        ErrorCode::Unavailable,
                        format!(
                            "upstream {} sent a manifest Berth cannot store: {}",
                            mapped.entry.base,
                            e.detail.unwrap_or_default()
                        ),
                    )
                } else {
                    e
                }
                .into()
            })
            .map(|_| ())
    }

    /// Makes the blob `digest` of a mirrored `name` local, or streams it
    /// while it is fetched: a `GET` of a missing blob joins the fetch of it
    /// in progress, or starts one, and follows the fetch's spool as it grows
    /// (the last byte held until the digest checks out); the blob is
    /// committed under its digest only after that. A `GET` with a `Range`
    /// (`whole` false) waits for the fetch to end and is then served
    /// locally. For a `HEAD` (`with_body` false) of a missing blob, the
    /// upstream's size is returned and nothing fetched.
    pub async fn prepare_blob(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        name: &RepositoryName,
        digest: &str,
        with_body: bool,
        whole: bool,
    ) -> Outcome<PreparedBlob> {
        let Some(mapped) = self.map(name) else {
            return Ok(PreparedBlob::Local);
        };
        let Ok(digest) = digest.parse::<Digest>() else {
            return Ok(PreparedBlob::Local);
        };
        if registry.open_blob(name, &digest).await.is_ok() {
            return Ok(PreparedBlob::Local);
        }
        let url = mapped.url("blobs", &digest.to_string());
        if !with_body {
            return match self.upstream.blob_size(mapped.on(), &url).await {
                Answer::Found(size) => Ok(PreparedBlob::UpstreamSize(size)),
                Answer::NotFound => Err(ErrorCode::BlobUnknown.into()),
                Answer::Failed(failure) => Err(mapped.failed(failure)),
            };
        }
        let fetch = self.blob_fetch(registry, name, url, digest);
        if !whole {
            return fetch.ended().await.map(|()| PreparedBlob::Local);
        }
        let read = spool::follow(fetch.spool.clone(), None).await;
        match (read, fetch.before_the_body.get()) {
            (Ok(Some(read)), _) => {
                // The spool file stays while a client reads it.
                let following = fetch.clone();
                let body = read.stream.inspect(move |_| {
                    let _ = &following;
                });
                Ok(PreparedBlob::Following {
                    size: read.size,
                    body: Box::pin(body),
                })
            }
            (_, Some(BeforeTheBody::Here)) => Ok(PreparedBlob::Local),
            (_, Some(BeforeTheBody::Refused(refusal))) => Err(refusal.clone()),
            (Ok(None), None) => Err(ErrorCode::BlobUnknown.into()),
            (Err(e), None) => Err(RegistryError::with_detail(
                ErrorCode::Unavailable,
                format!(
                    "fetching {} from upstream {} failed: {e}",
                    fetch.digest, mapped.entry.base
                ),
            )
            .into()),
        }
    }

    /// The fetch of `digest` into `name` in progress, or a new one.
    fn blob_fetch(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        name: &RepositoryName,
        url: String,
        digest: Digest,
    ) -> Arc<BlobFetch> {
        let key = format!("{name}@{digest}");
        let mut fetches = self.blob_fetches.lock().expect("lock");
        if let Some(fetch) = fetches.get(&key) {
            return fetch.clone();
        }
        // On the filesystem the spool is the content file of an upload,
        // committed by a rename once checked: the bytes are written once.
        // Elsewhere it is a file of its own that the store's writer follows.
        let id = uuid::Uuid::new_v4().to_string();
        let (partial, finished, in_place) = match registry.fetched_upload_paths(name, &id, &digest)
        {
            Some((upload, blob)) => (upload, blob, Some(id)),
            None => {
                let spooled = self.spool_dir.join(format!(
                    "{}.{id}.partial",
                    digest.to_string().replace(':', "-")
                ));
                (spooled.clone(), spooled, None)
            }
        };
        let (progress, spool) = spool::Spool::starting(partial.clone(), finished, true);
        let (end, ended) = watch::channel(None);
        let fetch = Arc::new(BlobFetch {
            digest: digest.clone(),
            spool,
            before_the_body: OnceLock::new(),
            ended,
            _file: SpoolFile(partial.clone()),
        });
        fetches.insert(key.clone(), fetch.clone());
        let (mirror, registry, name, running) =
            (self.clone(), registry.clone(), name.clone(), fetch.clone());
        tokio::spawn(async move {
            let outcome = mirror
                .fetch_blob(
                    &registry,
                    &name,
                    &url,
                    &running,
                    (&partial, in_place),
                    progress,
                )
                .await;
            let mut fetches = mirror.blob_fetches.lock().expect("lock");
            if fetches
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(current, &running))
            {
                fetches.remove(&key);
            }
            drop(fetches);
            let _ = end.send(Some(outcome));
        });
        fetch
    }

    /// Fetches a blob into its spool and commits it under its digest once
    /// the spool's writer has checked it: the spool is the content of the
    /// upload `in_place` names, or the store's writer follows it into an
    /// upload of its own. Before the upstream's body, an outcome that
    /// leaves the spool empty is told in `fetch.before_the_body`.
    async fn fetch_blob(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        url: &str,
        fetch: &Arc<BlobFetch>,
        (partial, in_place): (&std::path::Path, Option<String>),
        progress: watch::Sender<spool::Progress>,
    ) -> Outcome<()> {
        let mapped = self.map(name).expect("a mirrored name");
        let digest = &fetch.digest;
        let no_body = |before: BeforeTheBody| {
            let outcome = match &before {
                BeforeTheBody::Here => Ok(()),
                BeforeTheBody::Refused(refusal) => Err(refusal.clone()),
            };
            let _ = fetch.before_the_body.set(before);
            // Followers waiting for the size learn there is none.
            progress.send_replace(spool::Progress::Failed(
                std::io::ErrorKind::NotFound,
                "no body".to_owned(),
            ));
            outcome
        };
        // A request that found it missing just before the last fetch of it
        // ended starts a fetch of its own: there is nothing left to do.
        if registry.open_blob(name, digest).await.is_ok() {
            return no_body(BeforeTheBody::Here);
        }
        let fetched = match self.upstream.blob(mapped.on(), url).await {
            Answer::Found(fetched) => fetched,
            Answer::NotFound => {
                return no_body(BeforeTheBody::Refused(ErrorCode::BlobUnknown.into()))
            }
            Answer::Failed(failure) => {
                return no_body(BeforeTheBody::Refused(mapped.failed(failure)))
            }
        };
        let Some(size) = fetched.length else {
            let refusal = RegistryError::with_detail(
                ErrorCode::Unavailable,
                format!(
                    "upstream {} sent {digest} without a Content-Length",
                    mapped.entry.base
                ),
            );
            return no_body(BeforeTheBody::Refused(refusal.into()));
        };
        if in_place.is_some() {
            let dir = partial
                .parent()
                .expect("an upload's file is in its directory");
            if let Err(e) = tokio::fs::create_dir_all(dir).await {
                let error = RegistryError::internal("creating an upload directory", e);
                return no_body(BeforeTheBody::Refused(error.into()));
            }
        }
        // The spool's writer, then its verdict for every follower.
        let spooling = async {
            let written =
                spool::fill(fetched.body, size, Some(digest.clone()), partial, &progress).await;
            progress.send_replace(match &written {
                Ok(size) => spool::Progress::Done { size: *size },
                Err(e) => spool::Progress::Failed(e.kind(), e.to_string()),
            });
            written
        };
        // The store's writer follows the spool: its upload ends only after
        // the verdict, and a bad one fails it, so nothing is committed.
        let storing = async {
            let read = spool::follow(fetch.spool.clone(), None)
                .await
                .map_err(|e| RegistryError::with_detail(ErrorCode::Unavailable, e.to_string()))?
                .ok_or(ErrorCode::BlobUnknown)?;
            let body = RequestBody {
                stream: read.stream,
                length: Some(read.size),
            };
            registry.upload_whole(name, digest, body).await
        };
        let (written, stored) = match &in_place {
            Some(id) => {
                let written = spooling.await;
                let stored = match &written {
                    Ok(size) => {
                        registry
                            .commit_fetched_upload(name, id, *size, digest)
                            .await
                    }
                    Err(_) => {
                        registry.discard_fetched_upload(name, id).await;
                        Ok(())
                    }
                };
                (written, stored)
            }
            None => tokio::join!(spooling, storing),
        };
        if let Err(e) = written {
            tracing::error!(%name, %digest, upstream = %mapped.entry.base, error = %e, "fetching a blob from upstream failed: nothing stored");
            let what = if e.kind() == std::io::ErrorKind::InvalidData {
                format!("the upstream's bytes do not match: {e}")
            } else {
                e.to_string()
            };
            return Err(RegistryError::with_detail(
                ErrorCode::Unavailable,
                format!(
                    "fetching {digest} from upstream {} failed: {what}",
                    mapped.entry.base
                ),
            )
            .into());
        }
        stored.map_err(|e| {
            tracing::error!(%name, %digest, error = %e, "storing a blob fetched from upstream failed");
            e.into()
        })
    }

    /// Runs `work` once for every caller that asks for `key` while it runs,
    /// as a task of its own: a client that goes away does not stop a fetch
    /// other clients (or the next pull) are waiting for. The task takes its
    /// key off the map when it ends, so an outcome (a failure included) is
    /// never handed to a later request.
    async fn single_flight(
        self: &Arc<Self>,
        key: String,
        work: impl std::future::Future<Output = Outcome<Option<Warning>>> + Send + 'static,
    ) -> Outcome<Option<Warning>> {
        let flight = {
            let mut flights = self.flights.lock().expect("lock");
            match flights.get(&key) {
                Some((_, flight)) => flight.clone(),
                None => {
                    let id = self
                        .next_flight
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mirror = self.clone();
                    let done = key.clone();
                    let task = tokio::spawn(async move {
                        let outcome = work.await;
                        let mut flights = mirror.flights.lock().expect("lock");
                        if flights
                            .get(&done)
                            .is_some_and(|(current, _)| *current == id)
                        {
                            flights.remove(&done);
                        }
                        outcome
                    });
                    let flight: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(RegistryError::internal("a mirror fetch failed", e).into())
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, (id, flight.clone()));
                    flight
                }
            }
        };
        flight.await
    }
}

/// A reference as a client writes it after the name (`:tag`, `@digest`).
fn reference_text(reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => tag.as_str().to_owned(),
        Reference::Digest(digest) => digest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_component_names_of_a_docker_hub_entry_are_library_names() {
        let spool = tempfile::tempdir().unwrap();
        let entries = [
            ProxyConfig::new("hub", "https://registry-1.docker.io"),
            ProxyConfig::new("ghcr", "https://ghcr.io"),
        ];
        let mirror = Mirror::new(&entries, spool.path(), Arc::default())
            .unwrap()
            .unwrap();
        let canonical = |name: &str| {
            mirror
                .canonical(&RepositoryName::parse(name).unwrap())
                .map(|n| n.to_string())
        };
        assert_eq!(
            canonical("hub/alpine").as_deref(),
            Some("hub/library/alpine")
        );
        assert_eq!(canonical("hub/library/alpine"), None);
        assert_eq!(canonical("hub/bitnami/redis"), None);
        assert_eq!(canonical("ghcr/alpine"), None, "not Docker Hub");
        assert_eq!(canonical("alpine"), None, "not mirrored");
    }
}
