//! Storage quotas (`[[quotas]]`): the bytes images use and the number of
//! tags, per repository matching a pattern (`scope = "repository"`, the
//! default) or for all of them together (`scope = "pattern"`: a team's
//! namespace, as Harbor's project quotas). A manifest push that would take
//! what its rule counts past either limit is refused (403 `DENIED`, saying
//! which limit), before anything of it is written; the blobs it uploaded
//! stay unreferenced until garbage collection reclaims them.
//!
//! A repository's usage is what its manifests reference: each manifest's
//! bytes and each blob a manifest requires (config, layers), every digest
//! once however many images share it. Blobs uploaded but referenced by no
//! manifest do not count. It is counted from the repository's manifests
//! (read through the manifest cache) when a push needs it and for
//! `GET /v2/<name>/_berth/usage`; a pattern's usage is the union over the
//! repositories a walk of the store finds under it (a digest two of them
//! share counts once), and tags are listed from the store, not the cache. Two pushes at the same moment may both pass a check that
//! together they exceed: the bound is exact for pushes one after another.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{digests_under, storage_error, Registry, RepositoryWalk};
use crate::oci::manifest::Manifest;
use crate::oci::{
    Digest, ErrorCode, Reference, RegistryError, RepositoryName, RepositoryPattern, Result, Tag,
};
use crate::storage::{layout, Listing};

/// One `[[quotas]]` entry: the first whose pattern matches a repository
/// applies to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub repositories: RepositoryPattern,
    /// Bytes the images may use (of each repository, or of all of them
    /// together with `scope = "pattern"`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Tags there may be (per repository, or in all, as `max_bytes`).
    #[serde(default)]
    pub max_tags: Option<u64>,
    /// What the limits bound: each matching repository, or all of them
    /// together.
    #[serde(default)]
    pub scope: QuotaScope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaScope {
    /// Each repository matching the pattern has the limits to itself.
    #[default]
    Repository,
    /// The repositories matching the pattern share the limits.
    Pattern,
}

/// What a quota counts against its limits: one repository's usage, or a
/// pattern's (every repository under it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub bytes: u64,
    pub tags: u64,
    pub repositories: u64,
}

/// What a repository uses, and the rule that bounds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub repository: String,
    pub bytes: u64,
    pub manifests: u64,
    pub tags: u64,
    pub quota: Option<QuotaRule>,
    /// What the quota counts, when one applies: this repository's usage,
    /// or with `scope = "pattern"` that of every repository under it.
    pub counted: Option<Counted>,
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
        let bytes = blobs.values().sum();
        let tags = self.tag_count(name).await?;
        let quota = self.quota_for(name).cloned();
        let counted = match &quota {
            None => None,
            Some(rule) if rule.scope == QuotaScope::Pattern => {
                let (blobs, tags, repositories) = self.pattern_usage(rule, name).await?;
                Some(Counted {
                    bytes: blobs.values().sum(),
                    tags,
                    repositories,
                })
            }
            Some(_) => Some(Counted {
                bytes,
                tags,
                repositories: 1,
            }),
        };
        Ok(Usage {
            repository: name.to_string(),
            bytes,
            manifests,
            tags,
            quota,
            counted,
        })
    }

    /// The repositories `rule` counts together with `name` (which need not
    /// exist yet): a walk of the store below the pattern's literal
    /// directory (`team/` for `team/*`), not the catalog's index, which may
    /// not yet show a repository another replica just created.
    async fn repositories_under(
        &self,
        rule: &QuotaRule,
        name: &RepositoryName,
    ) -> Result<Vec<RepositoryName>> {
        let mut names = Vec::new();
        let mut walk =
            RepositoryWalk::under(self.storage.as_ref(), literal_dir(&rule.repositories));
        while let Some(dir) = walk.next().await.map_err(storage_error)? {
            if !dir.is_repository() {
                continue;
            }
            if let Some(found) = RepositoryName::parse(&dir.path) {
                if rule.repositories.matches(&found) {
                    names.push(found);
                }
            }
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
        Ok(names)
    }

    /// Every digest the repositories under `rule`'s pattern reference (each
    /// once), their tags, and how many repositories that is.
    async fn pattern_usage(
        &self,
        rule: &QuotaRule,
        name: &RepositoryName,
    ) -> Result<(HashMap<Digest, u64>, u64, u64)> {
        let mut blobs = HashMap::new();
        let mut tags = 0;
        let mut repositories = 0;
        for repository in self.repositories_under(rule, name).await? {
            if !self.repository_exists(&repository).await? {
                continue;
            }
            repositories += 1;
            blobs.extend(self.referenced(&repository).await?.0);
            tags += self.tag_count(&repository).await?;
        }
        Ok((blobs, tags, repositories))
    }

    /// What `rule` counts for a push into `name`: the digests referenced and
    /// the tags, of the repository or of the pattern.
    async fn counted_for(
        &self,
        rule: &QuotaRule,
        name: &RepositoryName,
    ) -> Result<(HashMap<Digest, u64>, u64)> {
        if rule.scope == QuotaScope::Pattern {
            let (blobs, tags, _) = self.pattern_usage(rule, name).await?;
            return Ok((blobs, tags));
        }
        let blobs = if self.repository_exists(name).await? {
            self.referenced(name).await?.0
        } else {
            HashMap::new()
        };
        Ok((blobs, self.tag_count(name).await?))
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

    /// How many tags `name` has, read from the store, not the tag list
    /// cache: another replica's new tag counts at once (a listing request
    /// per thousand tags on an object store).
    async fn tag_count(&self, name: &RepositoryName) -> Result<u64> {
        let mut tags = Listing::new(self.storage.as_ref(), layout::tags_dir(name));
        let mut count = 0;
        while tags.next().await.map_err(storage_error)?.is_some() {
            count += 1;
        }
        Ok(count)
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
        let adds_tags = rule.max_tags.is_some() && !new_tags.is_empty();
        if !adds_tags && rule.max_bytes.is_none() {
            return Ok(());
        }
        let (mut blobs, tags) = self.counted_for(rule, name).await?;
        // Who is counted, with the verbs that agree with it.
        let (what, has, uses, allows) = match rule.scope {
            QuotaScope::Repository => (
                name.to_string(),
                "has",
                "uses",
                format!("{} allows a repository", rule.repositories),
            ),
            QuotaScope::Pattern => (
                format!("the repositories under {}", rule.repositories),
                "have",
                "use",
                format!("{} allows them together", rule.repositories),
            ),
        };
        if let Some(max_tags) = rule.max_tags.filter(|_| adds_tags) {
            if tags + new_tags.len() as u64 > max_tags {
                return Err(RegistryError::with_detail(
                    ErrorCode::Denied,
                    format!("quota: {what} {has} {tags} tags, and {allows} {max_tags}"),
                ));
            }
        }
        if let Some(max_bytes) = rule.max_bytes {
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
                        "quota: {what} {uses} {before} bytes; this push would make it {after}, and {allows} {max_bytes}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The directory every name `pattern` matches lies in: its text before the
/// first `*`, up to the last `/` (`team/` of `team/*`, `` of `*-dev`).
fn literal_dir(pattern: &RepositoryPattern) -> &str {
    let pattern = pattern.as_str();
    let literal = pattern.split('*').next().unwrap_or_default();
    if literal.len() == pattern.len() {
        // No `*`: the name itself, which a walk from it includes.
        return pattern;
    }
    literal.rfind('/').map_or("", |at| &literal[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_walked_from_the_directory_its_literal_part_names() {
        let dir = |p: &str| literal_dir(&RepositoryPattern::parse(p).unwrap()).to_owned();
        assert_eq!(dir("team/*"), "team");
        assert_eq!(dir("org/team/*/app"), "org/team");
        assert_eq!(dir("team-*"), "");
        assert_eq!(dir("*"), "");
        assert_eq!(dir("team/app"), "team/app");
    }
}
