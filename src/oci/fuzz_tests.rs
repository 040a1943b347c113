//! Fuzz tests of the spec's parsers (issue 12): names, tags, references,
//! digests and manifests, each against an oracle written from the spec's own
//! text (its regular expressions, through the `regex` crate) rather than from
//! the code under test. The harness and how to run longer: [`super::fuzzing`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::prelude::*;
use regex::Regex;
use serde_json::Value;

use super::fuzzing::{bytes, config, text};
use super::manifest::{
    kind_of_media_type, stored_media_type, Declared, Role, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    OCI_INDEX, OCI_MANIFEST,
};
use super::{
    Digest, ErrorCode, Manifest, ManifestKind, Reference, RepositoryName, Requirement, Tag,
};

/// distribution-spec, "Pulling manifests": `<name>`.
const NAME_GRAMMAR: &str =
    r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*";
/// [`NAME_GRAMMAR`] with its repetitions bounded, to generate names: proptest
/// repeats each `*` and `+` up to 32 times, nested three deep here, which
/// makes names of many kilobytes (the 255-character edge is in the corpus).
const NAME_GENERATOR: &str = r"[a-z0-9]{1,6}((\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}(\/[a-z0-9]{1,6}((\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}){0,5}";
/// distribution-spec, "Pulling manifests": a tag.
const TAG_GRAMMAR: &str = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";
/// image-spec, "Digests": the general grammar, and the two registered
/// algorithms' encodings (the ones Berth verifies).
const DIGEST_GRAMMAR: &str = r"[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+";
const REGISTERED_DIGEST: &str = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}";

/// `grammar` matching a whole string (compiled once per grammar: in a debug
/// build compiling costs more than matching).
fn whole(grammar: &'static str) -> Regex {
    compiled(grammar, |g| format!(r"\A(?:{g})\z"))
}

/// `pattern` anywhere in a string.
fn anywhere(pattern: &'static str) -> Regex {
    compiled(pattern, str::to_owned)
}

fn compiled(pattern: &'static str, regex: impl Fn(&str) -> String) -> Regex {
    static COMPILED: Mutex<BTreeMap<String, Regex>> = Mutex::new(BTreeMap::new());
    let source = regex(pattern);
    let mut compiled = COMPILED.lock().expect("regex cache");
    compiled
        .entry(source.clone())
        .or_insert_with(|| Regex::new(&source).expect("the pattern compiles"))
        .clone()
}

/// Inputs for a grammar's parser: fuzzed seeds, and strings the grammar
/// itself generates (random text almost never matches it, so the "accepts
/// everything the spec allows" half needs these).
fn grammar_or_fuzz(target: &'static str, grammar: &'static str) -> BoxedStrategy<String> {
    prop_oneof![
        3 => text(target),
        1 => proptest::string::string_regex(grammar).expect("the spec's grammar is a strategy"),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn names_are_accepted_exactly_as_the_spec_grammar_says(name in grammar_or_fuzz("name", NAME_GENERATOR)) {
        check_name(&name)?;
    }

    #[test]
    fn tags_are_accepted_exactly_as_the_spec_grammar_says(tag in grammar_or_fuzz("tag", TAG_GRAMMAR)) {
        check_tag(&tag)?;
    }

    #[test]
    fn digests_are_the_registered_algorithms_in_canonical_form(digest in grammar_or_fuzz("digest", REGISTERED_DIGEST)) {
        check_digest(&digest)?;
    }

    #[test]
    fn references_are_a_tag_or_a_digest_and_round_trip(reference in prop_oneof![text("tag"), text("digest")]) {
        check_reference(&reference)?;
    }

    #[test]
    fn manifests_are_refused_as_invalid_or_described_as_they_are(
        body in bytes("manifest"),
        content_type in prop_oneof![
            Just(None),
            proptest::sample::select(&CONTENT_TYPES[..]).prop_map(Some),
        ],
    ) {
        check_manifest(&body, content_type)?;
    }
}

const CONTENT_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    "application/json",
    "",
];

/// Every seed as it is, through every property of its target: the
/// regression seeds replay on each run whatever the random cases are.
#[test]
fn every_seed_satisfies_its_property() {
    let seeds = |target| {
        super::fuzzing::corpus(target)
            .into_iter()
            .map(|seed| String::from_utf8_lossy(&seed).into_owned())
    };
    for name in seeds("name") {
        check_name(&name).unwrap();
    }
    for tag in seeds("tag") {
        check_tag(&tag).unwrap();
        check_reference(&tag).unwrap();
    }
    for digest in seeds("digest") {
        check_digest(&digest).unwrap();
        check_reference(&digest).unwrap();
    }
    let mut accepted = 0;
    for body in super::fuzzing::corpus("manifest") {
        for content_type in CONTENT_TYPES.iter().copied().map(Some).chain([None]) {
            check_manifest(&body, content_type)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        }
        accepted += usize::from(Manifest::parse(&body, None).is_ok());
    }
    // The image-spec's examples are valid: the accepting side is exercised
    // too (the distribution-spec's referrers examples elide their digests).
    assert!(accepted >= 8, "only {accepted} seeds parse");
}

/// A name is accepted exactly when the spec's regular expression matches it
/// whole and it is at most 255 characters; an accepted name displays as it
/// was given (it becomes a storage key).
fn check_name(name: &str) -> Result<(), TestCaseError> {
    let spec = whole(NAME_GRAMMAR).is_match(name) && name.len() <= 255;
    let parsed = RepositoryName::parse(name);
    prop_assert_eq!(parsed.is_some(), spec, "{:?}", name);
    if let Some(parsed) = parsed {
        prop_assert_eq!(parsed.as_str(), name);
        prop_assert_eq!(parsed.to_string(), name);
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), TestCaseError> {
    let parsed = Tag::parse(tag);
    prop_assert_eq!(
        parsed.is_some(),
        whole(TAG_GRAMMAR).is_match(tag),
        "{:?}",
        tag
    );
    if let Some(parsed) = parsed {
        prop_assert_eq!(parsed.to_string(), tag);
    }
    Ok(())
}

/// Only sha256 and sha512 with their exact lowercase hex are accepted, which
/// the general grammar also allows; the canonical form is the input.
fn check_digest(digest: &str) -> Result<(), TestCaseError> {
    let parsed = digest.parse::<Digest>();
    prop_assert_eq!(
        parsed.is_ok(),
        whole(REGISTERED_DIGEST).is_match(digest),
        "{:?}",
        digest
    );
    if let Ok(parsed) = parsed {
        prop_assert!(whole(DIGEST_GRAMMAR).is_match(digest));
        prop_assert_eq!(parsed.to_string(), digest);
        prop_assert_eq!(
            format!("{}:{}", parsed.algorithm().as_str(), parsed.hex()),
            digest
        );
    }
    Ok(())
}

/// A reference with a `:` is a digest or nothing; without, a tag or nothing;
/// either way it displays as given.
fn check_reference(reference: &str) -> Result<(), TestCaseError> {
    let parsed = Reference::parse(reference);
    let as_digest = reference.parse::<Digest>().is_ok();
    let as_tag = whole(TAG_GRAMMAR).is_match(reference);
    match &parsed {
        Some(Reference::Digest(_)) => prop_assert!(as_digest),
        Some(Reference::Tag(_)) => prop_assert!(as_tag && !reference.contains(':')),
        None => prop_assert!(!as_digest && !as_tag, "{:?} refused", reference),
    }
    if let Some(parsed) = parsed {
        prop_assert_eq!(parsed.to_string(), reference);
    }
    Ok(())
}

/// Whatever the bytes and `Content-Type`, through both readers (the push
/// path's [`Manifest::parse_pushed`] and [`Manifest::parse`], which reads
/// stored manifests): no panic; a refusal is `MANIFEST_INVALID`; an accepted
/// document is JSON with schemaVersion 2 whose media type, kind,
/// requirements, optional (non-distributable) blobs, descriptors and subject
/// are what the document itself says (read here with `serde_json::Value`,
/// not the parser's types), and whose stored media type (what a pull serves
/// it as) is the one it was validated as. A pushed one is also UTF-8 (RFC
/// 8259), and what a push accepts the stored reader reads the same.
fn check_manifest(body: &[u8], content_type: Option<&str>) -> Result<(), TestCaseError> {
    let _ = stored_media_type(body);
    let stored = Manifest::parse(body, content_type);
    match &stored {
        Err(e) => prop_assert_eq!(e.code, ErrorCode::ManifestInvalid),
        Ok(manifest) => check_accepted_manifest(body, content_type, manifest, false)?,
    }
    match Manifest::parse_pushed(body, content_type) {
        Err(e) => prop_assert_eq!(e.code, ErrorCode::ManifestInvalid),
        Ok(pushed) => {
            check_accepted_manifest(body, content_type, &pushed, true)?;
            let stored =
                stored.map_err(|e| TestCaseError::fail(format!("pushed, unreadable: {e}")))?;
            prop_assert_eq!(&stored.requirements, &pushed.requirements);
            prop_assert_eq!(&stored.descriptors, &pushed.descriptors);
        }
    }
    Ok(())
}

fn digest_of(descriptor: &Value) -> Result<Digest, TestCaseError> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or_else(|| TestCaseError::fail("descriptor without a digest"))?;
    prop_assert!(
        descriptor["size"].as_i64().is_some_and(|size| size >= 0),
        "size of {}",
        descriptor
    );
    digest
        .parse()
        .map_err(|_| TestCaseError::fail(format!("accepted digest {digest:?}")))
}

fn check_accepted_manifest(
    body: &[u8],
    content_type: Option<&str>,
    manifest: &Manifest,
    pushed: bool,
) -> Result<(), TestCaseError> {
    // A stored manifest from before the UTF-8 check is still read: the
    // oracle reads invalid bytes as U+FFFD, which keeps it JSON.
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) if pushed => return Err(TestCaseError::fail(format!("pushed non-UTF-8: {e}"))),
        Err(_) => String::from_utf8_lossy(body),
    };
    // RFC 8259's grammar allows an unpaired surrogate escape (`"\ud800"`),
    // and so do Go's decoder and Berth (in fields it skips); serde_json's
    // `Value` does not, so the oracle reads them as a space.
    let surrogate = anywhere(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}");
    let text = surrogate.replace_all(&text, r"\u0020");
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("accepted non-JSON: {e}")))?;
    prop_assert_eq!(doc["schemaVersion"].as_i64(), Some(2));
    let declared = doc["mediaType"].as_str();
    if let (Some(declared), Some(sent)) = (declared, content_type) {
        prop_assert_eq!(declared, sent, "mediaType and Content-Type disagree");
    }
    if let Some(declared) = declared {
        prop_assert_eq!(manifest.media_type.as_str(), declared);
    }
    prop_assert_eq!(
        Some(manifest.kind),
        kind_of_media_type(&manifest.media_type)
    );
    let list = |key: &str| doc[key].as_array().cloned();
    // image-spec's non-distributable layer types and Docker's foreign layer.
    let non_distributable = |descriptor: &Value| {
        descriptor["mediaType"].as_str().is_some_and(|t| {
            [
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            ]
            .contains(&t)
        })
    };
    let (mut required, mut optional, mut declared) = (Vec::new(), Vec::new(), Vec::new());
    let mut declare = |role, descriptor: &Value, is_required| -> Result<Digest, TestCaseError> {
        let digest = digest_of(descriptor)?;
        declared.push(Declared {
            role,
            digest: digest.clone(),
            size: descriptor["size"].as_u64().expect("checked by digest_of"),
            required: is_required,
        });
        Ok(digest)
    };
    match manifest.kind {
        ManifestKind::Image => {
            prop_assert!(
                doc["manifests"].is_null(),
                "an image manifest with manifests"
            );
            required.push(Requirement::Blob(declare(
                Role::Config,
                &doc["config"],
                true,
            )?));
            let layers = list("layers").ok_or_else(|| TestCaseError::fail("no layers"))?;
            for (i, layer) in layers.iter().enumerate() {
                let distributable = !non_distributable(layer);
                let digest = declare(Role::Layer(i), layer, distributable)?;
                if distributable {
                    required.push(Requirement::Blob(digest));
                } else {
                    optional.push(digest);
                }
            }
        }
        ManifestKind::Index => {
            prop_assert!(
                doc["config"].is_null() && doc["layers"].is_null(),
                "an index with config or layers"
            );
            let children = list("manifests").ok_or_else(|| TestCaseError::fail("no manifests"))?;
            for (i, child) in children.iter().enumerate() {
                required.push(Requirement::Manifest(declare(
                    Role::Manifest(i),
                    child,
                    true,
                )?));
            }
        }
    }
    let subject = match &doc["subject"] {
        Value::Null => None,
        subject => Some(declare(Role::Subject, subject, false)?),
    };
    prop_assert_eq!(&manifest.requirements, &required);
    prop_assert_eq!(&manifest.optional_blobs, &optional);
    prop_assert_eq!(&manifest.descriptors, &declared);
    prop_assert_eq!(&manifest.subject, &subject);
    prop_assert_eq!(stored_media_type(body), manifest.media_type.clone());
    Ok(())
}
