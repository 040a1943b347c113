//! Manifests and tags (distribution-spec "Pushing Manifests", "Pulling
//! manifests", "Deleting tags", "Deleting Manifests").
//!
//! A manifest is stored as the exact bytes received, in the shared blob store
//! under the digest of those bytes, and linked into its repository by a
//! revision link; a tag is a link to a digest plus the history of every digest
//! it has pointed at. Writes go content first, then revision, then tag, so a
//! reader that sees a tag always finds what it names.

use bytes::Bytes;

use super::{storage_error, Registry};
use crate::oci::manifest::stored_media_type;
use crate::oci::{
    Algorithm, Digest, ErrorCode, Manifest, Reference, RegistryError, RepositoryName, Requirement,
    Result, Tag,
};
use crate::storage::{layout, WriteMode};

/// A manifest as read back.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
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
        if body.len() > self.limits.max_manifest_bytes {
            return Err(ErrorCode::TooLarge.into());
        }
        let manifest = Manifest::parse(&body, content_type)?;
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
        self.check_requirements(name, &manifest).await?;

        let put = |key: String, data: Bytes, mode| async move {
            self.storage
                .put(&key, data, mode)
                .await
                .map_err(storage_error)
        };
        put(layout::blob_data(&digest), body, WriteMode::CreateIfAbsent).await?;
        put(
            layout::revision_link(name, &digest),
            layout::link_body(&digest),
            WriteMode::Overwrite,
        )
        .await?;
        if let Some(subject) = &manifest.subject {
            let key = layout::referrer_link(name, subject, &digest);
            put(key, layout::link_body(&digest), WriteMode::Overwrite).await?;
        }
        let tags = match reference {
            Reference::Tag(tag) => std::slice::from_ref(tag).iter().chain(extra_tags),
            Reference::Digest(_) => [].iter().chain(extra_tags),
        };
        for tag in tags {
            let history = layout::tag_index_link(name, tag, &digest);
            put(history, layout::link_body(&digest), WriteMode::Overwrite).await?;
            let current = layout::tag_current_link(name, tag);
            put(current, layout::link_body(&digest), WriteMode::Overwrite).await?;
        }
        Ok(ManifestPut {
            digest,
            subject: manifest.subject,
        })
    }

    /// Every blob and child manifest must already be in this repository.
    async fn check_requirements(&self, name: &RepositoryName, manifest: &Manifest) -> Result<()> {
        for requirement in &manifest.requirements {
            let (present, digest) = match requirement {
                Requirement::Blob(d) => (self.blob_size(name, d).await.is_ok(), d),
                Requirement::Manifest(d) => (self.has_manifest(name, d).await?, d),
            };
            if !present {
                return Err(RegistryError::with_detail(
                    ErrorCode::ManifestBlobUnknown,
                    format!("{digest} is not in repository {name}"),
                ));
            }
        }
        Ok(())
    }

    async fn has_manifest(&self, name: &RepositoryName, digest: &Digest) -> Result<bool> {
        Ok(self.exists(&layout::revision_link(name, digest)).await?
            && self.exists(&layout::blob_data(digest)).await?)
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
        if !self.exists(&layout::revision_link(name, &digest)).await? {
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
        let body = self
            .storage
            .get(&layout::blob_data(&digest))
            .await
            .map_err(storage_error)?
            .ok_or(ErrorCode::ManifestUnknown)?;
        Ok(StoredManifest {
            media_type: stored_media_type(&body),
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
                if !self.exists(&layout::tag_current_link(name, tag)).await? {
                    return Err(ErrorCode::ManifestUnknown.into());
                }
                self.delete_tag(name, tag).await
            }
            Reference::Digest(digest) => {
                let stored = self.get_manifest(name, reference).await?;
                for tag in self.all_tags(name).await? {
                    let Some(tag) = Tag::parse(&tag) else {
                        continue;
                    };
                    if self
                        .read_link(&layout::tag_current_link(name, &tag))
                        .await?
                        .as_ref()
                        == Some(digest)
                    {
                        self.delete_tag(name, &tag).await?;
                    }
                }
                if let Ok(manifest) = Manifest::parse(&stored.body, None) {
                    if let Some(subject) = manifest.subject {
                        let key = layout::referrer_link(name, &subject, digest);
                        self.storage.delete(&key).await.map_err(storage_error)?;
                    }
                }
                self.storage
                    .delete(&layout::revision_link(name, digest))
                    .await
                    .map_err(storage_error)?;
                Ok(())
            }
        }
    }

    async fn delete_tag(&self, name: &RepositoryName, tag: &Tag) -> Result<()> {
        self.storage
            .delete_all(&layout::tag_dir(name, tag))
            .await
            .map_err(storage_error)
    }
}
