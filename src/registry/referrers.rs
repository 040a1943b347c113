//! The referrers index (distribution-spec "Listing Referrers"): the manifests
//! in a repository whose `subject` is a given digest, as descriptors.

use serde_json::{json, Value};

use super::{storage_error, Registry};
use crate::oci::{Digest, Manifest, RepositoryName, Result};
use crate::storage::layout;

impl Registry {
    /// Descriptors of the referrers of `subject`, sorted by digest, keeping
    /// only those of `artifact_type` when given. Unknown subjects and
    /// repositories have no referrers (an empty list, not an error).
    pub async fn referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>> {
        let prefix = layout::referrers_of(name, subject);
        // The answer lists every referrer, so they are all read anyway.
        let mut digests = super::digests_under(self.storage.as_ref(), &prefix)
            .await
            .map_err(storage_error)?
            .digests;
        digests.sort();

        let mut descriptors = Vec::with_capacity(digests.len());
        for digest in digests {
            // A referrer whose manifest was deleted meanwhile is skipped.
            let Ok(stored) = self
                .get_manifest(name, &crate::oci::Reference::Digest(digest))
                .await
            else {
                continue;
            };
            let Ok(manifest) = Manifest::parse(&stored.body, None) else {
                continue;
            };
            if artifact_type.is_some_and(|wanted| manifest.artifact_type.as_deref() != Some(wanted))
            {
                continue;
            }
            let mut descriptor = json!({
                "mediaType": stored.media_type,
                "digest": stored.digest.to_string(),
                "size": stored.body.len(),
            });
            if let Some(artifact_type) = manifest.artifact_type {
                descriptor["artifactType"] = Value::String(artifact_type);
            }
            if let Some(annotations) = manifest.annotations {
                descriptor["annotations"] = Value::Object(annotations);
            }
            descriptors.push(descriptor);
        }
        Ok(descriptors)
    }
}
