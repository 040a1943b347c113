//! Repository name patterns, shared by access rules and lifecycle rules.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::RepositoryName;

/// A repository name pattern: `*` matches any run of characters, `/`
/// included, or none (`team-a/*` matches `team-a/app` and
/// `team-a/tools/app` but not `team-a`); a pattern without `*` is an exact
/// name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepositoryPattern(String);

impl RepositoryPattern {
    /// Accepts a repository name in which any part may be `*`: with every
    /// `*` replaced by a letter, it must be a valid repository name (so a
    /// pattern that can match no name, like `a//*` or `Team/*`, is refused).
    pub fn parse(pattern: &str) -> Result<RepositoryPattern, String> {
        let example = pattern.replace('*', "x");
        if RepositoryName::parse(&example).is_none() {
            return Err(format!("invalid repository pattern {pattern:?}"));
        }
        Ok(RepositoryPattern(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &RepositoryName) -> bool {
        glob_match(self.0.as_bytes(), name.as_str().as_bytes())
    }

    /// Whether the pattern matches every name below `namespace` (`team/*`,
    /// `team*` and `*` cover `team`): a literal prefix of `namespace/` and
    /// one `*` at the end. Other shapes are not recognised, so the answer
    /// errs toward "no", which is what an access decision wants.
    pub fn covers_namespace(&self, namespace: &RepositoryName) -> bool {
        self.0.strip_suffix('*').is_some_and(|prefix| {
            !prefix.contains('*') && format!("{namespace}/").starts_with(prefix)
        })
    }

    /// Whether every name the pattern matches lies below `namespace`: its
    /// text starts with `namespace/` (a `*` can only come after that).
    pub fn lies_under(&self, namespace: &RepositoryName) -> bool {
        super::name::lies_below(&self.0, namespace.as_str())
    }
}

/// `*` matches any run of bytes (including `/`); everything else literally.
/// Greedy with one backtrack point: linear in practice, O(n·m) at worst.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Written as it was given (a quota in `GET .../_berth/usage`).
impl serde::Serialize for RepositoryPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for RepositoryPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RepositoryPattern, D::Error> {
        let s = String::deserialize(deserializer)?;
        RepositoryPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> RepositoryPattern {
        RepositoryPattern::parse(s).unwrap()
    }

    #[test]
    fn a_pattern_covers_a_namespace_only_when_it_matches_every_name_below_it() {
        let team = RepositoryName::parse("team").unwrap();
        for covering in ["*", "team/*", "team*", "te*"] {
            assert!(pattern(covering).covers_namespace(&team), "{covering}");
        }
        for partial in [
            "team", "team/app", "team/*/x", "*/team/*", "teams/*", "team/a*",
        ] {
            assert!(!pattern(partial).covers_namespace(&team), "{partial}");
        }
        let nested = RepositoryName::parse("team/tools").unwrap();
        assert!(pattern("team/*").covers_namespace(&nested));
    }

    #[test]
    fn a_pattern_lies_under_a_namespace_when_it_starts_with_it_and_a_slash() {
        let team = RepositoryName::parse("team").unwrap();
        for inside in ["team/*", "team/app", "team/tools/*", "team/*/x"] {
            assert!(pattern(inside).lies_under(&team), "{inside}");
        }
        for outside in ["team", "teams/*", "team*", "*", "*/team/x", "other/team/x"] {
            assert!(!pattern(outside).lies_under(&team), "{outside}");
        }
    }
}
