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
//! fetched whole into an upload and committed under their digest before they
//! are served, one fetch per thing at a time in this process, and a breaker
//! per upstream (`health`) with cached tags served under a `Warning`.

mod config;
mod health;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

pub use config::ProxyConfig;

use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepositoryName, Tag};
use crate::registry::{Registry, RequestBody};
use upstream::{Answer, Upstream};

/// At most this many tag check times are kept; past it they are forgotten
/// (each costs one `HEAD` upstream again, never a wrong answer).
const MAX_TAG_CHECKS: usize = 100_000;

struct Entry {
    prefix: String,
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
}

/// What a client's blob `HEAD` of a mirrored name gets when the blob is not
/// here yet: the upstream's size, and nothing is fetched.
pub struct UpstreamBlob {
    pub size: u64,
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
    pub fn new(entries: &[ProxyConfig]) -> std::result::Result<Option<Arc<Mirror>>, String> {
        if entries.is_empty() {
            return Ok(None);
        }
        ProxyConfig::validate_all(entries)?;
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
                Ok(Entry {
                    prefix: e.prefix.clone(),
                    base: config::upstream_base(&e.upstream)?,
                    tag_ttl: e.tag_ttl,
                    revalidate_timeout: e.revalidate_timeout,
                    access: upstream::Access::new(credentials),
                    breaker: health::Breaker::default(),
                })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Some(Arc::new(Mirror {
            entries,
            upstream: Upstream::new()?,
            flights: Mutex::default(),
            next_flight: Default::default(),
            tag_checks: Mutex::default(),
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
                let cached = registry.resolve(name, &reference).await.is_ok();
                if fresh && cached {
                    return Ok(None);
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

    /// Makes the blob `digest` of a mirrored `name` local, fetching it when
    /// it is missing: whole, checked against its digest and committed
    /// before anything is served. For a `HEAD` (`with_body` false) of a
    /// missing blob, the upstream's size is returned and nothing fetched.
    pub async fn prepare_blob(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        name: &RepositoryName,
        digest: &str,
        with_body: bool,
    ) -> Outcome<Option<UpstreamBlob>> {
        let Some(mapped) = self.map(name) else {
            return Ok(None);
        };
        let Ok(digest) = digest.parse::<Digest>() else {
            return Ok(None);
        };
        if registry.open_blob(name, &digest).await.is_ok() {
            return Ok(None);
        }
        let url = mapped.url("blobs", &digest.to_string());
        if !with_body {
            return match self.upstream.blob_size(mapped.on(), &url).await {
                Answer::Found(size) => Ok(Some(UpstreamBlob { size })),
                Answer::NotFound => Err(ErrorCode::BlobUnknown.into()),
                Answer::Failed(failure) => Err(mapped.failed(failure)),
            };
        }
        let key = format!("blob {name}@{digest}");
        let (mirror, registry, name) = (self.clone(), registry.clone(), name.clone());
        self.single_flight(key, async move {
            mirror
                .fetch_blob(&registry, &name, &url, &digest)
                .await
                .map(|()| None)
        })
        .await?;
        Ok(None)
    }

    async fn fetch_blob(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        url: &str,
        digest: &Digest,
    ) -> Outcome<()> {
        let mapped = self.map(name).expect("a mirrored name");
        // A request that found it missing just before the last fetch of it
        // ended starts a fetch of its own: there is nothing left to do.
        if registry.open_blob(name, digest).await.is_ok() {
            return Ok(());
        }
        let fetched = match self.upstream.blob(mapped.on(), url).await {
            Answer::Found(fetched) => fetched,
            Answer::NotFound => return Err(ErrorCode::BlobUnknown.into()),
            Answer::Failed(failure) => return Err(mapped.failed(failure)),
        };
        let body = RequestBody {
            stream: fetched.body,
            length: fetched.length,
        };
        // Hashed as it is written; committed under the digest only if it
        // matches, else the upload is dropped and nothing is visible.
        registry
            .upload_whole(name, digest, body)
            .await
            .map_err(|e| {
                tracing::error!(%name, %digest, upstream = %mapped.entry.base, error = %e, "fetching a blob from upstream failed: nothing stored");
                RegistryError::with_detail(
                    ErrorCode::Unavailable,
                    format!(
                        "fetching {digest} from upstream {} failed: {}",
                        mapped.entry.base,
                        e.detail.unwrap_or_else(|| e.code.message().to_owned())
                    ),
                )
                .into()
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
