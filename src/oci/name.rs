//! Repository names and tags (distribution-spec, "Pulling manifests").
//!
//! A name is `<component>(/<component>)*` where each component matches
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; a tag matches
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Both become storage path segments, so
//! these checks are also what keeps `..`, empty segments and absolute paths
//! out of the store.

use std::fmt;

use super::digest::Digest;

/// Distribution and most clients cap the whole name at 255 characters.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(name: &str) -> Option<RepositoryName> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return None;
        }
        if name.split('/').all(is_path_component) {
            Some(RepositoryName(name.to_owned()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespaces the name lies in, outermost first: `a`, `a/b` for
    /// `a/b/c`.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(at, _)| &self.0[..at])
    }
}

/// Whether `name` lies below `namespace` (`namespace/...`), as a name's
/// text: `team/app` below `team`, not `team-b/app` nor `team` itself.
pub fn lies_below(name: &str, namespace: &str) -> bool {
    name.strip_prefix(namespace)
        .is_some_and(|rest| rest.starts_with('/'))
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let separator_len = match bytes[i] {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&b| b == b'-').count(),
            _ => return false,
        };
        i += separator_len;
        expect_alnum = true;
    }
    !expect_alnum
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(tag: &str) -> Option<Tag> {
        let bytes = tag.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = bytes[1.min(bytes.len())..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        (first_ok && rest_ok && bytes.len() <= 128).then(|| Tag(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference containing `:` must be a digest; anything else must be a tag.
    pub fn parse(reference: &str) -> Option<Reference> {
        if reference.contains(':') {
            reference.parse().ok().map(Reference::Digest)
        } else {
            Tag::parse(reference).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_the_grammar_allows() {
        for good in [
            "a",
            "library/ubuntu",
            "my-org/my--app",
            "a.b_c__d/e-f",
            "0/1/2/3",
            &"a".repeat(255),
        ] {
            assert!(RepositoryName::parse(good).is_some(), "{good} rejected");
        }
    }

    #[test]
    fn rejects_names_the_grammar_forbids() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "../x",
            "x/..",
            "/abs",
            "trailing/",
            "a___b",
            "-lead",
            "trail-",
            "a..b",
            "a/_b",
            "sp ace",
            "a%2fb",
            &"a".repeat(256),
        ] {
            assert!(RepositoryName::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(Tag::parse("v1.0.0-rc_1").is_some());
        assert!(Tag::parse("_x").is_some());
        assert!(Tag::parse(&"a".repeat(128)).is_some());
        for bad in ["", ".hidden", "-x", "a/b", "..", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(
            Reference::parse("latest"),
            Some(Reference::Tag(_))
        ));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            Reference::parse(&digest),
            Some(Reference::Digest(_))
        ));
        assert!(Reference::parse("sha256:short").is_none());
    }

    #[test]
    fn a_name_lies_below_its_namespaces_only() {
        assert!(lies_below("team/app", "team"));
        assert!(lies_below("team/a/b", "team/a"));
        assert!(!lies_below("team", "team"));
        assert!(!lies_below("team-b/app", "team"));
        assert!(!lies_below("teamx", "team"));
        let name = RepositoryName::parse("a/b/c").unwrap();
        assert_eq!(name.namespaces().collect::<Vec<_>>(), ["a", "a/b"]);
        let top = RepositoryName::parse("a").unwrap();
        assert_eq!(top.namespaces().count(), 0);
    }
}
