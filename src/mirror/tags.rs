//! The tag list of a mirrored repository: the upstream's, as
//! `skopeo list-tags` or `crane ls` through the mirror expect, with the
//! tags pushed here where the entry takes pushes; the cached tags, with a
//! `Warning`, while the upstream cannot be asked (docs/design/mirror.md §3).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::upstream::Answer;
use super::{Mirror, Outcome, Warning};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::Registry;

/// The upstream tag lists a mirror keeps for `tag_ttl`, at most this many,
/// each of at most [`MAX_KEPT_TAGS`] tags: a client paging through a list
/// costs one upstream listing, and the memory stays small.
const MAX_KEPT_LISTS: usize = 64;
const MAX_KEPT_TAGS: usize = 10_000;

/// An upstream's tag list, sorted, and when it was read.
pub(super) type KeptList = (Instant, Arc<Vec<String>>);

/// A mirrored repository's tags, sorted, and the `Warning` to answer with
/// when they are the cached ones.
pub struct MirroredTags {
    pub tags: Arc<Vec<String>>,
    pub warning: Option<Warning>,
}

impl Mirror {
    /// The tags of the mirrored `name` (`None`: not a mirrored name). The
    /// upstream's list is trusted for the entry's `tag_ttl`; where the entry
    /// takes pushes, the tags here are added to it. An upstream that does
    /// not have the repository makes it `NAME_UNKNOWN` unless it has tags
    /// here that were pushed; an upstream that cannot be asked leaves the
    /// tags here, with a `Warning`, or its failure when there are none.
    pub async fn tags(
        &self,
        registry: &Registry,
        name: &RepositoryName,
    ) -> Outcome<Option<MirroredTags>> {
        let Some(mapped) = self.map(name) else {
            return Ok(None);
        };
        let entry = mapped.entry;
        let upstream = match self.kept_tag_list(name, entry.tag_ttl) {
            Some(tags) => Answer::Found(tags),
            None => {
                let path = format!("/v2/{}/tags/list", mapped.upstream_name);
                match self.upstream.tags(mapped.on(), &entry.base, &path).await {
                    Answer::Found(mut tags) => {
                        tags.sort_unstable();
                        tags.dedup();
                        let tags = Arc::new(tags);
                        self.keep_tag_list(name, &tags);
                        Answer::Found(tags)
                    }
                    Answer::NotFound => Answer::NotFound,
                    Answer::Failed(failure) => Answer::Failed(failure),
                }
            }
        };
        let here = || async {
            match registry.list_tags(name, None, None).await {
                Ok(page) => Ok(Some(page.entries)),
                Err(e) if e.code == ErrorCode::NameUnknown => Ok(None),
                Err(e) => Err(e),
            }
        };
        let merged = |upstream: &[String], here: Vec<String>| {
            let all: BTreeSet<String> = upstream.iter().cloned().chain(here).collect();
            Arc::new(all.into_iter().collect::<Vec<_>>())
        };
        match upstream {
            Answer::Found(tags) if !entry.allow_push => Ok(Some(MirroredTags {
                tags,
                warning: None,
            })),
            Answer::Found(tags) => Ok(Some(MirroredTags {
                tags: merged(&tags, here().await?.unwrap_or_default()),
                warning: None,
            })),
            Answer::NotFound => match (entry.allow_push, here().await?) {
                (true, Some(tags)) => Ok(Some(MirroredTags {
                    tags: Arc::new(tags),
                    warning: None,
                })),
                _ => Err(RegistryError::with_detail(
                    ErrorCode::NameUnknown,
                    format!("{} is not at {}", mapped.upstream_name, entry.base),
                )
                .into()),
            },
            Answer::Failed(failure) => match here().await? {
                Some(tags) => {
                    tracing::warn!(%name, upstream = %entry.base, why = %failure.why, "upstream unavailable: listing the cached tags");
                    Ok(Some(MirroredTags {
                        tags: Arc::new(tags),
                        warning: Some(format!(
                            "upstream {} {}: listing the tags cached here",
                            entry.base, failure.why
                        )),
                    }))
                }
                None => Err(mapped.failed(failure)),
            },
        }
    }

    fn kept_tag_list(
        &self,
        name: &RepositoryName,
        ttl: std::time::Duration,
    ) -> Option<Arc<Vec<String>>> {
        let lists = self.tag_lists.lock().expect("lock");
        let (at, tags) = lists.get(name.as_str())?;
        (at.elapsed() < ttl).then(|| tags.clone())
    }

    fn keep_tag_list(&self, name: &RepositoryName, tags: &Arc<Vec<String>>) {
        if tags.len() > MAX_KEPT_TAGS {
            return;
        }
        let mut lists = self.tag_lists.lock().expect("lock");
        if lists.len() >= MAX_KEPT_LISTS {
            lists.clear();
        }
        lists.insert(name.to_string(), (Instant::now(), tags.clone()));
    }
}
