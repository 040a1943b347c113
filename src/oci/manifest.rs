//! Manifest and index documents: media types, parsing and validation
//! (image-spec "Image Manifest", "Image Index"; distribution-spec "Pushing Manifests").
//!
//! The registry stores the exact bytes a client sent; this module only reads
//! them to decide whether they are acceptable and what they reference.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::digest::Digest;
use super::error::{ErrorCode, RegistryError, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers that registries are not expected to hold (image-spec
/// "non-distributable layers", Docker "foreign layers" used by Windows images).
const NON_DISTRIBUTABLE_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image (or artifact) manifest: references a config and layers (blobs).
    Image,
    /// An index or manifest list: references other manifests.
    Index,
}

pub fn kind_of_media_type(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    fn digest(&self) -> Result<Digest> {
        self.digest.parse().map_err(|_| {
            RegistryError::with_detail(
                ErrorCode::ManifestInvalid,
                format!("invalid descriptor digest {:?}", self.digest),
            )
        })
    }
}

/// Only the fields validation needs; unknown fields are allowed and kept (the
/// bytes are stored verbatim).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<Map<String, Value>>,
}

/// A reference from a manifest to content the registry must already hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Blob(Digest),
    Manifest(Digest),
}

/// A validated manifest, with what the registry needs to store and index it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub requirements: Vec<Requirement>,
    /// Blobs the manifest names but does not require to be pushed
    /// (non-distributable layers): kept if a client pushed them anyway.
    pub optional_blobs: Vec<Digest>,
    pub subject: Option<Digest>,
    /// The value the referrers API reports: `artifactType`, else (for an image
    /// manifest) the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

impl Manifest {
    /// Parse and validate a pushed manifest. `content_type` is the request's
    /// `Content-Type` (parameters stripped), when it sent one.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
        let invalid =
            |detail: String| RegistryError::with_detail(ErrorCode::ManifestInvalid, detail);
        // JSON is UTF-8 (RFC 8259), and serde_json checks only the strings it
        // keeps: invalid bytes in a field we skip would be accepted and stored.
        let text = std::str::from_utf8(body).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let doc: Document =
            serde_json::from_str(text).map_err(|e| invalid(format!("malformed JSON: {e}")))?;

        let media_type = match (&doc.media_type, content_type) {
            (Some(declared), Some(sent)) if declared != sent => {
                return Err(invalid(format!(
                    "mediaType {declared:?} does not match Content-Type {sent:?}"
                )))
            }
            (Some(declared), _) => declared.clone(),
            // Docker's schemas require the field, and without it the stored
            // bytes could only be served back as OCI (Distribution refuses too).
            (None, Some(sent @ (DOCKER_MANIFEST | DOCKER_MANIFEST_LIST))) => {
                return Err(invalid(format!("a {sent} must declare its mediaType")))
            }
            (None, Some(sent)) if kind_of_media_type(sent).is_some() => sent.to_owned(),
            (None, _) => sniff_media_type(&doc).to_owned(),
        };
        let kind = kind_of_media_type(&media_type)
            .ok_or_else(|| invalid(format!("unsupported manifest media type {media_type:?}")))?;
        if doc.schema_version != Some(2) {
            return Err(invalid("schemaVersion must be 2".into()));
        }

        let mut requirements = Vec::new();
        let mut optional_blobs = Vec::new();
        match kind {
            ManifestKind::Image => {
                if doc.manifests.is_some() {
                    return Err(invalid("an image manifest has no \"manifests\"".into()));
                }
                let config = doc
                    .config
                    .as_ref()
                    .ok_or_else(|| invalid("missing config".into()))?;
                let layers = doc
                    .layers
                    .as_deref()
                    .ok_or_else(|| invalid("missing layers".into()))?;
                check_size(config)?;
                requirements.push(Requirement::Blob(config.digest()?));
                for layer in layers {
                    check_size(layer)?;
                    let digest = layer.digest()?;
                    if NON_DISTRIBUTABLE_LAYERS.contains(&layer.media_type.as_str()) {
                        optional_blobs.push(digest);
                    } else {
                        requirements.push(Requirement::Blob(digest));
                    }
                }
            }
            ManifestKind::Index => {
                if doc.layers.is_some() || doc.config.is_some() {
                    return Err(invalid("an index has no \"config\" or \"layers\"".into()));
                }
                let manifests = doc
                    .manifests
                    .as_deref()
                    .ok_or_else(|| invalid("missing manifests".into()))?;
                for child in manifests {
                    check_size(child)?;
                    requirements.push(Requirement::Manifest(child.digest()?));
                }
            }
        }

        // The subject need not exist yet (distribution-spec: "the registry
        // SHOULD accept the manifest" when the subject is unknown).
        let subject = doc.subject.as_ref().map(Descriptor::digest).transpose()?;
        let artifact_type = doc.artifact_type.clone().or_else(|| match kind {
            ManifestKind::Image => doc.config.as_ref().map(|c| c.media_type.clone()),
            ManifestKind::Index => None,
        });
        Ok(Manifest {
            media_type,
            kind,
            requirements,
            optional_blobs,
            subject,
            artifact_type,
            annotations: doc.annotations,
        })
    }
}

fn check_size(descriptor: &Descriptor) -> Result<()> {
    if descriptor.size < 0 {
        return Err(RegistryError::with_detail(
            ErrorCode::ManifestInvalid,
            format!("negative size for {}", descriptor.digest),
        ));
    }
    Ok(())
}

fn sniff_media_type(doc: &Document) -> &'static str {
    if doc.manifests.is_some() {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
}

/// The media type of stored manifest bytes: their `mediaType` field, or, for
/// OCI documents that omit it, what their shape says they are.
pub fn stored_media_type(body: &[u8]) -> String {
    match serde_json::from_slice::<Document>(body) {
        Ok(doc) => doc
            .media_type
            .clone()
            .unwrap_or_else(|| sniff_media_type(&doc).to_owned()),
        Err(_) => OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_requires_config_and_layers_but_not_foreign_layers() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('a'), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('b'), "size": 3},
                {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": digest('c'), "size": 4}
            ]
        });
        let m = Manifest::parse(body.to_string().as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.requirements.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn rejects_mismatched_media_type_bad_json_and_bad_digests() {
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        assert!(Manifest::parse(index.to_string().as_bytes(), Some(OCI_MANIFEST)).is_err());
        assert!(Manifest::parse(b"{not json", Some(OCI_MANIFEST)).is_err());
        let bad_digest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": "sha256:nothex", "size": 1}, "layers": []
        });
        assert!(Manifest::parse(bad_digest.to_string().as_bytes(), None).is_err());
        let no_config =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []});
        assert!(Manifest::parse(no_config.to_string().as_bytes(), None).is_err());
    }

    #[test]
    fn index_children_are_manifest_requirements_and_subject_is_read() {
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/x-sig",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest('d'), "size": 10}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest('e'), "size": 10}
        });
        let m = Manifest::parse(index.to_string().as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(
            m.requirements,
            vec![Requirement::Manifest(digest('d').parse().unwrap())]
        );
        assert_eq!(m.subject, Some(digest('e').parse().unwrap()));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
    }
}
