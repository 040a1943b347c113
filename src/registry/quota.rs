//! Storage quotas (`[[quotas]]`): per repository matching a pattern, the
//! bytes its images use and the number of its tags. A manifest push that
//! would take a repository past either is refused (403 `DENIED`, saying
//! which limit), before anything of it is written; the blobs it uploaded
//! stay unreferenced until garbage collection reclaims them.
//!
//! A repository's usage is what its manifests reference: each manifest's
//! bytes and each blob a manifest requires (config, layers), every digest
//! once however many images share it. Blobs uploaded but referenced by no
//! manifest do not count. It is counted from the repository's manifests
//! (read through the manifest cache) when a push needs it and for
//! `GET /v2/<name>/_berth/usage`. Two pushes into one repository at the
//! same moment may both pass a check that together they exceed: the bound
//! is exact for pushes one after another.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{digests_under, storage_error, Registry};
use crate::oci::manifest::Manifest;
use crate::oci::{
    Digest, ErrorCode, Reference, RegistryError, RepositoryName, RepositoryPattern, Result, Tag,
};
use crate::storage::layout;

/// One `[[quotas]]` entry: the first whose pattern matches a repository
/// applies to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub repositories: RepositoryPattern,
    /// Bytes a repository's images may use.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Tags a repository may have.
    #[serde(default)]
    pub max_tags: Option<u64>,
}

/// What a repository uses, and the rule that bounds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub repository: String,
    pub bytes: u64,
    pub manifests: u64,
    pub tags: u64,
    pub quota: Option<QuotaRule>,
}

impl Registry {
    fn quota_for(&self, name: &RepositoryName) -> Option<&QuotaRule> {
        self.limits
            .quotas
            .iter()
            .find(|rule| rule.repositories.matches(name))
    }

    /// What `name` uses, and its quota if one applies.
    pub async fn usage(&self, name: &RepositoryName) -> Result<Usage> {
        if !self.repository_exists(name).await? {
            return Err(ErrorCode::NameUnknown.into());
        }
        let (blobs, manifests) = self.referenced(name).await?;
        Ok(Usage {
            repository: name.to_string(),
            bytes: blobs.values().sum(),
            manifests,
            tags: self.tag_count(name).await?,
            quota: self.quota_for(name).cloned(),
        })
    }

    /// Every digest `name`'s manifests reference, with its size, and how
    /// many manifests it has.
    async fn referenced(&self, name: &RepositoryName) -> Result<(HashMap<Digest, u64>, u64)> {
        let revisions = digests_under(self.storage.as_ref(), &layout::revisions_dir(name))
            .await
            .map_err(storage_error)?;
        let mut blobs = HashMap::new();
        let mut manifests = 0;
        for digest in revisions.digests {
            let stored = match self
                .get_manifest(name, &Reference::Digest(digest.clone()))
                .await
            {
                Ok(stored) => stored,
                // Deleted meanwhile.
                Err(e) if e.code == ErrorCode::ManifestUnknown => continue,
                Err(e) => return Err(e),
            };
            manifests += 1;
            blobs.insert(digest, stored.body.len() as u64);
            // A stored manifest that no longer parses (an older Berth's)
            // counts for its own bytes.
            if let Ok(manifest) = Manifest::parse(&stored.body, None) {
                for declared in manifest.descriptors.iter().filter(|d| d.required) {
                    blobs.insert(declared.digest.clone(), declared.size);
                }
            }
        }
        Ok((blobs, manifests))
    }

    async fn tag_count(&self, name: &RepositoryName) -> Result<u64> {
        match self.list_tags(name, None, None).await {
            Ok(page) => Ok(page.entries.len() as u64),
            Err(e) if e.code == ErrorCode::NameUnknown => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Refuses a push of `manifest` (`size` bytes, `digest`) that sets
    /// `new_tags` (tags `name` does not have yet) when it would take `name`
    /// past its quota.
    pub(super) async fn check_quota(
        &self,
        name: &RepositoryName,
        manifest: &Manifest,
        digest: &Digest,
        size: u64,
        new_tags: &[&Tag],
    ) -> Result<()> {
        let Some(rule) = self.quota_for(name) else {
            return Ok(());
        };
        if let Some(max_tags) = rule.max_tags {
            if !new_tags.is_empty() {
                let tags = self.tag_count(name).await?;
                if tags + new_tags.len() as u64 > max_tags {
                    return Err(RegistryError::with_detail(
                        ErrorCode::Denied,
                        format!(
                            "quota: {name} has {tags} tags, and {} allows {max_tags} (a repository matching it)",
                            rule.repositories
                        ),
                    ));
                }
            }
        }
        if let Some(max_bytes) = rule.max_bytes {
            let exists = self.repository_exists(name).await?;
            let (mut blobs, _) = if exists {
                self.referenced(name).await?
            } else {
                Default::default()
            };
            let before: u64 = blobs.values().sum();
            blobs.insert(digest.clone(), size);
            for declared in manifest.descriptors.iter().filter(|d| d.required) {
                blobs.insert(declared.digest.clone(), declared.size);
            }
            let after: u64 = blobs.values().sum();
            if after > max_bytes {
                return Err(RegistryError::with_detail(
                    ErrorCode::Denied,
                    format!(
                        "quota: {name} uses {before} bytes; this push would make it {after}, and {} allows {max_bytes}",
                        rule.repositories
                    ),
                ));
            }
        }
        Ok(())
    }
}
