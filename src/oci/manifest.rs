//! Manifest and index documents: media types, parsing and validation
//! (image-spec "Image Manifest", "Image Index"; distribution-spec "Pushing Manifests").
//!
//! The registry stores the exact bytes a client sent; this module only reads
//! them to decide whether they are acceptable and what they reference.
//!
//! [`Manifest::parse`] reads any manifest, pushed or stored, and refuses what
//! is not a manifest. [`Manifest::parse_pushed`] adds the bounds a push must
//! keep (nesting depth, numbers of descriptors and annotations, annotation
//! values): they decide what is accepted from now on, and a manifest stored
//! before them is still read (garbage collection must follow it).
//! What needs the store (that every descriptor's size is its content's) is
//! checked by the push path (`registry/manifests.rs`), over
//! [`Manifest::descriptors`].

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

/// How deep a pushed manifest's JSON may nest (objects and arrays, the
/// document itself being depth 1). The deepest real manifest is an index's
/// `manifests[i].platform.features[j]` at depth 5; 64 leaves room for
/// extension fields, keeps everything accepted within serde_json's own
/// recursion limit (128) for every reader in Berth, and far below Go's
/// (10,000: docker, containerd and Distribution stop there, so a deeper
/// document can be stored but never read by a client).
pub const MAX_NESTING: usize = 64;

/// How many descriptors one list (`layers`, `manifests`) may hold. Docker
/// runs images of at most 127 layers, and the largest public indexes list a
/// few dozen platforms (with their attestations); artifacts packed by ORAS
/// may hold more files, so the bound is generous: it only keeps one push
/// from asking storage for tens of thousands of touches and stats (a 4 MiB
/// manifest fits ~25,000 descriptors).
pub const MAX_DESCRIPTORS: usize = 1000;

/// How many annotations one map (the manifest's, or a descriptor's) may
/// hold. Real images carry a dozen (the `org.opencontainers.image.*` keys
/// and a builder's own), but the spec sets no bound and its conformance
/// suite pushes a manifest with 390 annotations of 10 kB each: bytes are
/// bounded by `max_manifest_bytes`; this bounds a map of many tiny entries
/// (4 MiB holds ~400,000), whose parse costs and which is copied into every
/// referrers listing of its subject.
pub const MAX_ANNOTATIONS: usize = 4096;

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
    /// The declared size, which must not be negative.
    fn size(&self) -> Result<u64> {
        u64::try_from(self.size).map_err(|_| {
            RegistryError::with_detail(
                ErrorCode::ManifestInvalid,
                format!("negative size for {}", self.digest),
            )
        })
    }

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

/// What [`Manifest::parse_pushed`] bounds beyond [`Document`]: the lists'
/// lengths and every annotation map.
#[derive(Debug, Deserialize)]
struct PushBounds {
    config: Option<Annotated>,
    layers: Option<Vec<Annotated>>,
    manifests: Option<Vec<Annotated>>,
    subject: Option<Annotated>,
    annotations: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct Annotated {
    annotations: Option<Map<String, Value>>,
}

/// A reference from a manifest to content the registry must already hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Blob(Digest),
    Manifest(Digest),
}

/// Where a descriptor sits in its manifest, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Config,
    Layer(usize),
    Manifest(usize),
    Subject,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Config => f.write_str("config"),
            Role::Layer(i) => write!(f, "layers[{i}]"),
            Role::Manifest(i) => write!(f, "manifests[{i}]"),
            Role::Subject => f.write_str("subject"),
        }
    }
}

/// One descriptor of a manifest: what it names and the size it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub role: Role,
    pub digest: Digest,
    pub size: u64,
    /// Whether the content must be in the repository for the manifest to be
    /// accepted (it is then among [`Manifest::requirements`]); false for
    /// non-distributable layers and the subject.
    pub required: bool,
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
    /// Every descriptor in the document (config, layers, child manifests,
    /// subject), in document order: the sizes they declare are checked
    /// against the store when the manifest is pushed.
    pub descriptors: Vec<Declared>,
}

impl Manifest {
    /// Parses a manifest a client is pushing: [`Manifest::parse`] within
    /// the bounds on what is accepted ([`MAX_NESTING`], [`MAX_DESCRIPTORS`],
    /// [`MAX_ANNOTATIONS`], annotation values that are strings).
    pub fn parse_pushed(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
        // JSON is UTF-8 (RFC 8259), and serde_json checks only the strings it
        // keeps: invalid bytes in a field nothing reads would be accepted
        // and stored. (Not in `parse`: a manifest stored before this check
        // must still be read by garbage collection.)
        std::str::from_utf8(body).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        check_nesting(body, MAX_NESTING)?;
        // Only here, within the depth bound, are the descriptors'
        // annotations read as values: a reader of stored manifests skips
        // them (serde_json's skipping is iterative), so a manifest stored
        // before these bounds still parses for garbage collection.
        let view: PushBounds =
            serde_json::from_slice(body).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
        for (field, list) in [("layers", &view.layers), ("manifests", &view.manifests)] {
            let len = list.as_ref().map_or(0, Vec::len);
            if len > MAX_DESCRIPTORS {
                return Err(invalid(format!(
                    "{len} {field}: at most {MAX_DESCRIPTORS} are accepted"
                )));
            }
        }
        check_annotations("the manifest", view.annotations.as_ref())?;
        let descriptors = view
            .config
            .iter()
            .map(|d| (Role::Config, d))
            .chain(
                view.layers
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, d)| (Role::Layer(i), d)),
            )
            .chain(
                view.manifests
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, d)| (Role::Manifest(i), d)),
            )
            .chain(view.subject.iter().map(|d| (Role::Subject, d)));
        for (role, descriptor) in descriptors {
            check_annotations(role, descriptor.annotations.as_ref())?;
        }
        Manifest::parse(body, content_type)
    }

    /// Parse and validate a manifest, pushed or stored. `content_type` is the
    /// request's `Content-Type` (parameters stripped), when it sent one.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
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
        let mut descriptors = Vec::new();
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
                let digest = config.digest()?;
                descriptors.push(Declared {
                    role: Role::Config,
                    size: config.size()?,
                    digest: digest.clone(),
                    required: true,
                });
                requirements.push(Requirement::Blob(digest));
                for (i, layer) in layers.iter().enumerate() {
                    let digest = layer.digest()?;
                    let required = !NON_DISTRIBUTABLE_LAYERS.contains(&layer.media_type.as_str());
                    descriptors.push(Declared {
                        role: Role::Layer(i),
                        size: layer.size()?,
                        digest: digest.clone(),
                        required,
                    });
                    if required {
                        requirements.push(Requirement::Blob(digest));
                    } else {
                        optional_blobs.push(digest);
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
                for (i, child) in manifests.iter().enumerate() {
                    let digest = child.digest()?;
                    descriptors.push(Declared {
                        role: Role::Manifest(i),
                        size: child.size()?,
                        digest: digest.clone(),
                        required: true,
                    });
                    requirements.push(Requirement::Manifest(digest));
                }
            }
        }

        // The subject need not exist yet (distribution-spec: "the registry
        // SHOULD accept the manifest" when the subject is unknown).
        let subject = doc.subject.as_ref().map(Descriptor::digest).transpose()?;
        if let (Some(declared), Some(digest)) = (&doc.subject, &subject) {
            descriptors.push(Declared {
                role: Role::Subject,
                size: declared.size()?,
                digest: digest.clone(),
                required: false,
            });
        }
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
            descriptors,
        })
    }
}

fn invalid(detail: String) -> RegistryError {
    RegistryError::with_detail(ErrorCode::ManifestInvalid, detail)
}

/// Refuses JSON that nests deeper than `limit` (objects and arrays).
///
/// serde_json bounds its recursion (128) only where it builds values; the
/// fields a manifest does not know are skipped by an iterative scanner with
/// no bound, so a 100,000-level array in an unknown field parses. serde_json
/// offers no depth setting for that path, and parsing into a `Value` to
/// measure would allocate the whole tree on every push: this counts brackets
/// outside strings in one pass instead. It is exact for valid JSON; invalid
/// JSON is refused by the parse that follows whatever this says.
fn check_nesting(body: &[u8], limit: usize) -> Result<()> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(invalid(format!("JSON nests deeper than {limit} levels")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Annotations are a map of strings to strings (image-spec "Annotations":
/// Go clients read them into `map[string]string` and fail on anything
/// else), of at most [`MAX_ANNOTATIONS`] entries.
fn check_annotations(
    whose: impl std::fmt::Display,
    annotations: Option<&Map<String, Value>>,
) -> Result<()> {
    let Some(annotations) = annotations else {
        return Ok(());
    };
    if annotations.len() > MAX_ANNOTATIONS {
        return Err(invalid(format!(
            "{whose} has {} annotations: at most {MAX_ANNOTATIONS} are accepted",
            annotations.len()
        )));
    }
    if let Some((key, _)) = annotations.iter().find(|(_, v)| !v.is_string()) {
        return Err(invalid(format!(
            "annotation {key:?} of {whose} is not a string"
        )));
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

    /// The detail of a `MANIFEST_INVALID` refusal (and fails on anything else).
    fn refusal(body: &serde_json::Value) -> String {
        let err = Manifest::parse_pushed(body.to_string().as_bytes(), None).expect_err("refused");
        assert_eq!(err.code, ErrorCode::ManifestInvalid, "{err}");
        err.detail.unwrap_or_default()
    }

    fn image(layers: usize) -> serde_json::Value {
        let layer = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest('b'), "size": 3});
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('a'), "size": 2},
            "layers": vec![layer; layers],
        })
    }

    /// `depth` nested arrays, as JSON text.
    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_bounded_for_the_whole_document_and_counted_outside_strings() {
        let with_extra = |extra: &str| {
            let mut text = image(1).to_string();
            text.pop();
            format!(r#"{text},"x-extension":{extra}}}"#)
        };
        // The document is depth 1, so an extension field may nest one less.
        let deepest = with_extra(&nested(MAX_NESTING - 1));
        assert!(Manifest::parse_pushed(deepest.as_bytes(), None).is_ok());
        let too_deep = with_extra(&nested(MAX_NESTING));
        let err = Manifest::parse_pushed(too_deep.as_bytes(), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::ManifestInvalid);
        assert!(err.detail.unwrap().contains("deeper than 64"));
        // The finding: serde_json alone skips an unknown field of any depth,
        // so the stored-manifest reader would take this; a push may not.
        let probe = with_extra(&nested(100_000));
        assert!(Manifest::parse(probe.as_bytes(), None).is_ok());
        assert!(Manifest::parse_pushed(probe.as_bytes(), None).is_err());
        // Brackets inside strings, escaped quotes included, are not nesting.
        let in_strings = with_extra(&serde_json::to_string(&format!("\"{}", nested(500))).unwrap());
        assert!(in_strings.contains(r#"\"[[["#));
        assert!(Manifest::parse_pushed(in_strings.as_bytes(), None).is_ok());
        // Annotations (typed, serde_json's own limit) are bounded the same way.
        let mut deep_annotation = image(1);
        deep_annotation["annotations"] =
            serde_json::from_str(&format!(r#"{{"a":{}}}"#, nested(100))).unwrap();
        assert!(refusal(&deep_annotation).contains("deeper than"));
    }

    #[test]
    fn descriptor_lists_are_bounded_for_images_and_indexes() {
        assert!(
            Manifest::parse_pushed(image(MAX_DESCRIPTORS).to_string().as_bytes(), None).is_ok()
        );
        assert!(refusal(&image(MAX_DESCRIPTORS + 1)).contains("1001 layers"));
        let child =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest('d'), "size": 10});
        let index = |n: usize| serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": vec![child.clone(); n]});
        assert!(
            Manifest::parse_pushed(index(MAX_DESCRIPTORS).to_string().as_bytes(), None).is_ok()
        );
        assert!(refusal(&index(MAX_DESCRIPTORS + 1)).contains("1001 manifests"));
        // What is stored already is still read (gc must follow it), even
        // past serde_json's own limit where a push is bounded.
        assert!(Manifest::parse(image(MAX_DESCRIPTORS + 1).to_string().as_bytes(), None).is_ok());
        let mut text = image(1).to_string();
        let layer_end = text.find(r#""size":3}"#).unwrap() + r#""size":3"#.len();
        text.insert_str(
            layer_end,
            &format!(r#","annotations":{{"a":{}}}"#, nested(200)),
        );
        assert!(Manifest::parse(text.as_bytes(), None).is_ok());
        assert!(Manifest::parse_pushed(text.as_bytes(), None).is_err());
    }

    #[test]
    fn annotations_are_bounded_strings_in_every_map() {
        let many = |n: usize| -> serde_json::Value {
            (0..n)
                .map(|i| (format!("k{i}"), serde_json::Value::from("v")))
                .collect::<Map<_, _>>()
                .into()
        };
        let subject =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest('e'), "size": 10});
        let mut base = image(2);
        base["subject"] = subject;
        type Place = fn(&mut serde_json::Value) -> &mut serde_json::Value;
        let places: [(&str, Place); 4] = [
            ("the manifest", |m| m),
            ("config", |m| &mut m["config"]),
            ("layers[1]", |m| &mut m["layers"][1]),
            ("subject", |m| &mut m["subject"]),
        ];
        for (whose, place) in places {
            let mut ok = base.clone();
            place(&mut ok)["annotations"] = many(MAX_ANNOTATIONS);
            assert!(
                Manifest::parse_pushed(ok.to_string().as_bytes(), None).is_ok(),
                "{whose}"
            );
            let mut over = base.clone();
            place(&mut over)["annotations"] = many(MAX_ANNOTATIONS + 1);
            let detail = refusal(&over);
            assert!(
                detail.starts_with(&format!("{whose} has {} annotations", MAX_ANNOTATIONS + 1)),
                "{detail}"
            );
            let mut not_string = base.clone();
            place(&mut not_string)["annotations"] = serde_json::json!({"a": "b", "n": 1});
            assert_eq!(
                refusal(&not_string),
                format!("annotation \"n\" of {whose} is not a string")
            );
        }
        let child = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest('d'), "size": 10, "annotations": {"x": ["y"]}});
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]});
        assert!(refusal(&index).contains("of manifests[0] is not a string"));
    }

    #[test]
    fn every_descriptor_is_declared_with_its_role_size_and_whether_required() {
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest('a'), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": digest('c'), "size": 4},
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest('b'), "size": 3}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest('e'), "size": 7}
        });
        let m = Manifest::parse_pushed(body.to_string().as_bytes(), None).unwrap();
        let declared: Vec<(String, char, u64, bool)> = m
            .descriptors
            .iter()
            .map(|d| {
                (
                    d.role.to_string(),
                    d.digest.to_string().chars().last().unwrap(),
                    d.size,
                    d.required,
                )
            })
            .collect();
        assert_eq!(
            declared,
            vec![
                ("config".into(), 'a', 2, true),
                ("layers[0]".into(), 'c', 4, false),
                ("layers[1]".into(), 'b', 3, true),
                ("subject".into(), 'e', 7, false),
            ]
        );
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest('d'), "size": 10}]
        });
        let m = Manifest::parse_pushed(index.to_string().as_bytes(), None).unwrap();
        assert_eq!(m.descriptors.len(), 1);
        assert_eq!(m.descriptors[0].role, Role::Manifest(0));
        assert!(m.descriptors[0].required);
        let mut negative = image(1);
        negative["layers"][0]["size"] = (-1).into();
        assert!(refusal(&negative).contains("negative size"));
    }
}
