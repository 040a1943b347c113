//! Manifests and tags (distribution-spec "Pushing Manifests", "Pulling
//! manifests", "Deleting tags", "Deleting Manifests").
//!
//! A manifest is stored as the exact bytes received, in the shared blob store
//! under the digest of those bytes, and linked into its repository by a
//! revision link; a tag is a link to a digest plus the history of every digest
//! it has pointed at. Writes go content first, then revision, then tag, so a
//! reader that sees a tag always finds what it names.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use super::cache::CachedManifest;
use super::{storage_error, Registry};
use crate::oci::manifest::{stored_media_type, Role};
use crate::oci::{
    Algorithm, Digest, ErrorCode, Manifest, Reference, RegistryError, RepositoryName, Requirement,
    Result, Tag,
};
use crate::storage::layout;

/// A manifest as read back.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// What touching a manifest's requirements found.
struct Touched {
    /// The first requirement not wholly there (its link or its content).
    missing: Option<Digest>,
    /// The size of each requirement's content, in order (complete when
    /// nothing is missing).
    sizes: Vec<u64>,
    /// The size of each extra key touched, `None` where it was not there.
    extra: Vec<Option<u64>>,
}

/// Where a manifest being stored comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A client pushed it: what it references must be in the repository.
    Pushed,
    /// A mirror fetched it from its upstream: what it references is
    /// fetched on demand.
    Fetched,
}

/// What a manifest push stored.
pub struct ManifestPut {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Registry {
    /// Validates and stores a manifest under `reference` and any extra `tags`
    /// (`PUT …/manifests/<digest>?tag=…`).
    pub async fn put_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        extra_tags: &[Tag],
    ) -> Result<ManifestPut> {
        self.store_manifest(
            name,
            reference,
            content_type,
            body,
            extra_tags,
            Origin::Pushed,
        )
        .await
    }

    /// Stores a manifest fetched from an upstream registry (a pull-through
    /// mirror) under `reference`: checked and written as a push is, but its
    /// blobs need not be here (they are fetched when pulled).
    pub async fn store_fetched_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPut> {
        self.store_manifest(name, reference, content_type, body, &[], Origin::Fetched)
            .await
    }

    /// Records that a mirror set `tag` to `digest` from its upstream, so
    /// that a later push of the tag is told apart ([`Registry::fetched_tag`]).
    pub async fn record_fetched_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<()> {
        self.write_link(&layout::mirror_tag_record(name, tag), digest)
            .await
            .map(|_| ())
    }

    /// The digest a mirror last set `tag` to ([`Registry::record_fetched_tag`]).
    pub async fn fetched_tag(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<Digest>> {
        self.read_link_uncached(&layout::mirror_tag_record(name, tag))
            .await
    }

    async fn store_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        extra_tags: &[Tag],
        origin: Origin,
    ) -> Result<ManifestPut> {
        if body.len() > self.limits.max_manifest_bytes {
            return Err(ErrorCode::TooLarge.into());
        }
        let manifest = Manifest::parse_pushed(&body, content_type)?;
        let requirements: &[Requirement] = match origin {
            Origin::Pushed => &manifest.requirements,
            Origin::Fetched => &[],
        };
        let digest = match reference {
            Reference::Digest(claimed) => {
                let actual = Digest::of(claimed.algorithm(), &body);
                if &actual != claimed {
                    return Err(RegistryError::with_detail(
                        ErrorCode::DigestInvalid,
                        format!("manifest digest is {actual}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
        };
        let mut tags: Vec<&Tag> = Vec::new();
        let named = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        for tag in named.into_iter().chain(extra_tags) {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        // The tags' locks are held for the whole push (taken in one order, so
        // that two pushes naming the same tags cannot deadlock): where each
        // tag points is read beside the touches below, not after them, and
        // is still where it points when this push moves it; each history
        // entry is named now, in the order of the changes, and touched with
        // the rest when they are touched (on an object store that touch
        // covers its write).
        let mut lock_keys: Vec<String> = tags
            .iter()
            .map(|tag| layout::tag_current_link(name, tag))
            .collect();
        lock_keys.sort_unstable();
        let mut _serialised = Vec::with_capacity(lock_keys.len());
        for key in &lock_keys {
            _serialised.push(self.tag_locks.lock(key).await);
        }
        let entries: Vec<String> = self.tag_change_entries(name, &tags, Some(&digest));
        // The manifest's own content and revision link are touched with its
        // requirements: a push of a stored manifest (a new tag for an image)
        // writes neither, and costs one storage call less for each.
        // The history entries go into that touch too, unless the storage
        // answers it from a touch of its own a moment ago (a CI job tagging
        // one image several times in a row): then they are written as
        // collectable keys are, without one.
        let stored_keys = vec![
            layout::blob_data(&digest),
            layout::revision_link(name, &digest),
        ];
        let currents = futures::future::try_join_all(
            tags.iter()
                .map(|tag| self.read_link_uncached_owned(layout::tag_current_link(name, tag))),
        );
        let (touched, currents) = futures::try_join!(
            self.touch_requirements_and(name, requirements, stored_keys, entries.clone()),
            currents
        )?;
        if let Some(missing) = touched.missing {
            return Err(RegistryError::with_detail(
                ErrorCode::ManifestBlobUnknown,
                format!("{missing} is not in repository {name}"),
            ));
        }
        if let Origin::Pushed = origin {
            let new_tags: Vec<&Tag> = tags
                .iter()
                .zip(&currents)
                .filter(|(_, current)| current.is_none())
                .map(|(tag, _)| *tag)
                .collect();
            self.check_quota(name, &manifest, &digest, body.len() as u64, &new_tags)
                .await?;
        }
        let [content_stored, revision_stored, ..] = touched.extra[..] else {
            return Err(RegistryError::internal(
                "storage answered a different number of touches",
                format!("{} of 2", touched.extra.len()),
            ));
        };
        let (content_stored, revision_stored) =
            (content_stored.is_some(), revision_stored.is_some());
        if origin == Origin::Pushed {
            self.check_declared_sizes(name, &manifest, &touched.sizes)
                .await?;
        }

        // A push that would move one immutable tag is refused before it
        // changes any of its tags.
        for (tag, current) in tags.iter().zip(&currents) {
            if let Some(current) = current.as_ref().filter(|c| **c != digest) {
                if self.lifecycle.is_immutable(name, tag) {
                    return Err(RegistryError::with_detail(
                        ErrorCode::TagImmutable,
                        format!("{name}:{tag} points at {current}"),
                    ));
                }
            }
        }
        // Content first, then the revision link, then the tags: a reader that
        // finds a link finds what it names. What the touches found stored is
        // not written again, and, touched, a running garbage collection
        // does not remove it (touch.rs; docs/design/gc.md).
        self.store_manifest_content(&digest, body, content_stored)
            .await?;
        let revision = layout::revision_link(name, &digest);
        let mut found_only = content_stored && revision_stored;
        if found_only {
            self.caches.wrote_link(&revision, Some(digest.clone()));
        } else {
            self.write_link_fresh(&revision, &digest).await?;
        }
        self.repository_index.added(name);
        if let Some(subject) = &manifest.subject {
            let key = layout::referrer_link(name, subject, &digest);
            self.write_link_fresh(&key, &digest).await?;
            found_only = false;
        }
        for ((tag, current), entry) in tags.iter().zip(currents).zip(entries) {
            if self
                .change_tag(name, tag, current, &digest, Some(entry))
                .await?
            {
                found_only = false;
            }
        }
        if found_only {
            // Nothing written: what the touches found may be another push's,
            // placed but not yet durable; acknowledged only once it is.
            if let Some(deferred) = self.storage.deferred_durability() {
                deferred.barrier().await.map_err(storage_error)?;
            }
        }
        Ok(ManifestPut {
            digest,
            subject: manifest.subject,
        })
    }

    /// Refuses a manifest a descriptor of which declares a size other than
    /// its content's: a verifying client (containerd) cannot pull such an
    /// image, and `berth fsck` would report it. `found` holds the size of
    /// each requirement's content as its touch found it (in
    /// `manifest.requirements` order), so the required descriptors cost no
    /// storage call. The others are checked when their content is in the
    /// repository: a non-distributable layer a client pushed anyway, and the
    /// subject (which may arrive later, unchecked then: the spec has
    /// referrers pushed in either order). The answer is `MANIFEST_INVALID`:
    /// the content named exists, the manifest misdescribes it
    /// (`MANIFEST_BLOB_UNKNOWN` is the spec's answer for content that does
    /// not exist).
    async fn check_declared_sizes(
        &self,
        name: &RepositoryName,
        manifest: &Manifest,
        found: &[u64],
    ) -> Result<()> {
        let required: HashMap<&Digest, u64> = manifest
            .requirements
            .iter()
            .map(|requirement| match requirement {
                Requirement::Blob(d) | Requirement::Manifest(d) => d,
            })
            .zip(found.iter().copied())
            .collect();
        for declared in &manifest.descriptors {
            let actual = match required.get(&declared.digest) {
                Some(size) => Some(*size),
                None => {
                    let link = match declared.role {
                        Role::Subject => layout::revision_link(name, &declared.digest),
                        _ => layout::layer_link(name, &declared.digest),
                    };
                    self.size_in_repository(&link, &declared.digest).await?
                }
            };
            match actual {
                Some(actual) if actual != declared.size => {
                    return Err(RegistryError::with_detail(
                        ErrorCode::ManifestInvalid,
                        format!(
                            "{} declares size {} for {}, whose content is {actual} bytes",
                            declared.role, declared.size, declared.digest
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The size of `digest`'s content when `link` (its link in a repository)
    /// is there; `None` when either is not. Looked up through the link first
    /// so that a push learns nothing of other repositories' content.
    async fn size_in_repository(&self, link: &str, digest: &Digest) -> Result<Option<u64>> {
        if self.read_link(link).await?.as_ref() != Some(digest) {
            return Ok(None);
        }
        self.storage
            .size(&layout::blob_data(digest))
            .await
            .map_err(storage_error)
    }

    /// Stores manifest bytes under their digest unless they are there
    /// already (`stored`: a touch just found them), and keeps them in memory
    /// for reads.
    async fn store_manifest_content(
        &self,
        digest: &Digest,
        body: Bytes,
        stored: bool,
    ) -> Result<()> {
        if !stored && self.put_content_fresh(digest, body.clone()).await? {
            self.caches.verified(digest);
        }
        self.caches.wrote_blob(digest, body.len() as u64);
        self.caches.keep_manifest(
            digest,
            Arc::new(CachedManifest {
                media_type: stored_media_type(&body),
                body,
            }),
        );
        Ok(())
    }

    /// Touches a requirement's link and content; whether both were there.
    pub(super) async fn touch_requirement(
        &self,
        name: &RepositoryName,
        requirement: &Requirement,
    ) -> Result<bool> {
        let missing = self
            .touch_requirements(name, std::slice::from_ref(requirement))
            .await?;
        Ok(missing.is_none())
    }

    /// Touches each requirement's link and content, and returns the first
    /// requirement not wholly there, if any. A child manifest's own
    /// requirements are touched too: they may be old and kept by nothing but
    /// that child, and a collection running now must keep the whole child.
    async fn touch_requirements(
        &self,
        name: &RepositoryName,
        requirements: &[Requirement],
    ) -> Result<Option<Digest>> {
        let touched = self
            .touch_requirements_and(name, requirements, Vec::new(), Vec::new())
            .await?;
        Ok(touched.missing)
    }

    /// [`Registry::touch_requirements`], touching `extra` keys in the same
    /// storage calls: returns the first requirement missing, the size of each
    /// requirement's content, and the size of each extra key found. `fresh`
    /// keys (new ones the caller writes next) are touched with the rest, but
    /// only when the rest needs a touch: when the storage answers the rest
    /// from a touch of its own within the caches' staleness bound
    /// ([`Storage::touched_within`]), nothing is touched, and the caller's
    /// writes of `fresh` keys look at the collections themselves.
    ///
    /// [`Storage::touched_within`]: crate::storage::Storage::touched_within
    ///
    /// A manifest push relies on this: every blob and child manifest must
    /// already be in the repository, and each is touched, link and content,
    /// on storage. Another process's garbage collection may have removed it
    /// whatever a cache says, and the touch keeps a collection running now
    /// from removing it (touch before use: touch.rs, docs/design/gc.md). The push relies only on
    /// what its touches found.
    fn touch_requirements_and<'a>(
        &'a self,
        name: &'a RepositoryName,
        requirements: &'a [Requirement],
        extra: Vec<String>,
        fresh: Vec<String>,
    ) -> BoxFuture<'a, Result<Touched>> {
        // Boxed with its Send bound spelled out: it recurses through child
        // manifests, and the compiler cannot infer Send through the cycle.
        Box::pin(async move {
            // Storage calls of a few dozen touches each, side by side: one
            // blocking-pool hand-off per call, not per object.
            const TOUCHES_PER_CALL: usize = 32;
            let extras = extra.len();
            let keys: Vec<String> = requirements
                .iter()
                .flat_map(|requirement| {
                    let (link, digest) = match requirement {
                        Requirement::Blob(d) => (layout::layer_link(name, d), d),
                        Requirement::Manifest(d) => (layout::revision_link(name, d), d),
                    };
                    [link, layout::blob_data(digest)]
                })
                .chain(extra)
                .collect();
            // A few calls at a time, so that one huge manifest cannot fill the
            // blocking pool that every other request's storage work needs.
            const CALLS_AT_ONCE: usize = 4;
            let mut found: Vec<Option<u64>> =
                match self.storage.touched_within(&keys, self.caches.ttl()) {
                    // A link a DELETE through the API removed since that
                    // touch is not found here: such a removal is acknowledged
                    // only once every touch answered from memory postdates it
                    // (`remove_link`). Content only a collection removes, and
                    // the touch this answer stands for still protects it.
                    Some(sizes) => sizes.into_iter().map(Some).collect(),
                    None => {
                        let fresh_count = fresh.len();
                        let mut keys = keys.clone();
                        keys.extend(fresh);
                        let calls: Vec<_> = keys
                            .chunks(TOUCHES_PER_CALL)
                            .map(|keys| self.storage.touch_all(keys.to_vec()))
                            .collect();
                        let mut found: Vec<Option<u64>> = futures::stream::iter(calls)
                            .buffered(CALLS_AT_ONCE)
                            .try_concat()
                            .await
                            .map_err(storage_error)?;
                        found.truncate(found.len().saturating_sub(fresh_count));
                        found
                    }
                };
            if found.len() != keys.len() {
                return Err(RegistryError::internal(
                    "storage answered a different number of touches",
                    format!("{} of {}", found.len(), keys.len()),
                ));
            }
            let extra = found.split_off(found.len() - extras);
            let mut children = Vec::new();
            let mut sizes = Vec::with_capacity(requirements.len());
            for (requirement, pair) in requirements.iter().zip(found.chunks(2)) {
                let digest = match requirement {
                    Requirement::Blob(d) | Requirement::Manifest(d) => d,
                };
                let [Some(_link), Some(content)] = pair[..] else {
                    return Ok(Touched {
                        missing: Some(digest.clone()),
                        sizes,
                        extra,
                    });
                };
                sizes.push(content);
                if let Requirement::Manifest(d) = requirement {
                    children.push(d);
                }
            }
            let checks: Vec<BoxFuture<'_, Result<bool>>> = children
                .iter()
                .map(|child| {
                    Box::pin(self.touch_manifest_requirements(name, child)) as BoxFuture<'_, _>
                })
                .collect();
            let wholes: Vec<bool> = futures::stream::iter(checks)
                .buffered(CALLS_AT_ONCE)
                .try_collect()
                .await?;
            let missing = children
                .into_iter()
                .zip(wholes)
                .find(|(_, whole)| !whole)
                .map(|(child, _)| child.clone());
            Ok(Touched {
                missing,
                sizes,
                extra,
            })
        })
    }

    /// Touches what a stored manifest requires; whether it was all there.
    async fn touch_manifest_requirements(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool> {
        let Some(body) = self
            .storage
            .get(&layout::blob_data(digest))
            .await
            .map_err(storage_error)?
        else {
            return Ok(false);
        };
        // Stored manifests were validated when pushed; one that no longer
        // parses (a newer schema) has nothing this code could follow.
        let Ok(manifest) = Manifest::parse(&body, None) else {
            return Ok(true);
        };
        Ok(self
            .touch_requirements(name, &manifest.requirements)
            .await?
            .is_none())
    }

    /// The digest a reference names in `name`, or `MANIFEST_UNKNOWN`.
    pub async fn resolve(&self, name: &RepositoryName, reference: &Reference) -> Result<Digest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => self
                .read_link(&layout::tag_current_link(name, tag))
                .await?
                .ok_or(ErrorCode::ManifestUnknown)?,
        };
        if self
            .read_link(&layout::revision_link(name, &digest))
            .await?
            .is_none()
        {
            return Err(ErrorCode::ManifestUnknown.into());
        }
        Ok(digest)
    }

    pub async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let digest = self.resolve(name, reference).await?;
        if let Some(cached) = self.caches.manifest(&digest) {
            return Ok(StoredManifest {
                digest,
                media_type: cached.media_type.clone(),
                body: cached.body.clone(),
            });
        }
        let body = self
            .storage
            .get(&layout::blob_data(&digest))
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::ManifestUnknown)?;
        // Manifests are small: always hashed before they are served or cached.
        if !self.verify_content(&digest, &body).await {
            return Err(ErrorCode::ManifestUnknown.into());
        }
        let media_type = stored_media_type(&body);
        self.caches.keep_manifest(
            &digest,
            Arc::new(CachedManifest {
                body: body.clone(),
                media_type: media_type.clone(),
            }),
        );
        Ok(StoredManifest {
            media_type,
            digest,
            body,
        })
    }

    /// Deletes a tag (the manifest stays), or a manifest by digest together
    /// with every tag that points at it and its place in the referrers index.
    pub async fn delete_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<()> {
        match reference {
            Reference::Tag(tag) => {
                let current = layout::tag_current_link(name, tag);
                if self.read_link_uncached(&current).await?.is_none() {
                    return Err(ErrorCode::ManifestUnknown.into());
                }
                if self.lifecycle.is_immutable(name, tag) {
                    return Err(RegistryError::with_detail(
                        ErrorCode::TagImmutable,
                        format!("{name}:{tag}"),
                    ));
                }
                self.delete_tag(name, tag).await
            }
            Reference::Digest(digest) => {
                let stored = self.get_manifest(name, reference).await?;
                let mut pointing = Vec::new();
                let mut tags = self.tags(name);
                while let Some(tag) = tags.next().await.map_err(storage_error)? {
                    let Some(tag) = Tag::parse(&tag) else {
                        continue;
                    };
                    if self
                        .read_link_uncached(&layout::tag_current_link(name, &tag))
                        .await?
                        .as_ref()
                        == Some(digest)
                    {
                        if self.lifecycle.is_immutable(name, &tag) {
                            return Err(RegistryError::with_detail(
                                ErrorCode::TagImmutable,
                                format!("{name}:{tag} points at {digest}"),
                            ));
                        }
                        pointing.push(tag);
                    }
                }
                for tag in &pointing {
                    self.delete_tag(name, tag).await?;
                }
                self.remove_revision(name, digest, &stored.body).await
            }
        }
    }

    /// Removes a manifest's revision link, what links to it as a referrer
    /// and the history entries naming it; `body` is its content.
    pub(super) async fn remove_revision(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        body: &[u8],
    ) -> Result<()> {
        self.forget_in_history(name, digest).await?;
        if let Ok(manifest) = Manifest::parse(body, None) {
            if let Some(subject) = manifest.subject {
                let key = layout::referrer_link(name, &subject, digest);
                self.storage.delete(&key).await.map_err(storage_error)?;
            }
        }
        self.remove_link(&layout::revision_link(name, digest))
            .await?;
        self.recheck_repository(name).await
    }

    /// Removes a tag; its history stays (with the deletion recorded) so it
    /// can be rolled back.
    async fn delete_tag(&self, name: &RepositoryName, tag: &Tag) -> Result<()> {
        let current = layout::tag_current_link(name, tag);
        let _serialised = self.tag_locks.lock(&current).await;
        self.remove_tag_locked(name, tag).await
    }

    /// Deletes a tag and its whole history, only if it still points at
    /// `expected` (retention's judgement), deciding under the tag's lock so
    /// that a push landing meanwhile wins. Returns the number of history
    /// entries removed with it, or `None` when the tag stays.
    pub(super) async fn delete_tag_and_history_if(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        expected: &Digest,
    ) -> Result<Option<usize>> {
        let current = layout::tag_current_link(name, tag);
        let _serialised = self.tag_locks.lock(&current).await;
        if self.read_link_uncached(&current).await?.as_ref() != Some(expected)
            || self.lifecycle.is_immutable(name, tag)
        {
            return Ok(None);
        }
        self.remove_tag_directory(name, tag).await?;
        let entries = self.history_entries(name, tag).await?.len();
        self.storage
            .delete_all(&layout::tag_history_dir(name, tag))
            .await
            .map_err(storage_error)?;
        Ok(Some(entries))
    }

    /// Removes a tag whose lock the caller holds.
    async fn remove_tag_locked(&self, name: &RepositoryName, tag: &Tag) -> Result<()> {
        self.remove_tag_directory(name, tag).await?;
        self.record_tag_change(name, tag, None).await
    }

    /// Deletes a tag's directory (its link) and forgets it in the caches;
    /// the caller holds the tag's lock.
    async fn remove_tag_directory(&self, name: &RepositoryName, tag: &Tag) -> Result<()> {
        self.storage
            .delete_all(&layout::tag_dir(name, tag))
            .await
            .map_err(storage_error)?;
        self.caches
            .wrote_link(&layout::tag_current_link(name, tag), None);
        self.caches.wrote_tags(name);
        Ok(())
    }
}
