//! Lifecycle rules (the `[lifecycle]` table): which tags are immutable, which
//! tags retention removes, how much tag history garbage collection keeps, and
//! when untagged manifests, unreferenced blobs and abandoned uploads go.
//!
//! Rules name repositories with a [`RepositoryPattern`] (`*` matches across
//! `/`) and tags with a regular expression that must match the whole tag
//! (`v.*` matches `v1.2` but not `dev-v1`).

use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer};

use crate::oci::{RepositoryName, RepositoryPattern, Tag};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Per tag, the images of this many most recent history entries are kept
    /// by garbage collection, so a rollback to them works (a tag retention
    /// removes loses its history with it).
    pub history_keep: usize,
    /// Tags that never move to another digest once pushed.
    pub immutable_tags: Vec<TagRule>,
    /// Tag retention rules; for each tag the first rule that matches decides.
    pub retention: Vec<RetentionRule>,
    /// What garbage collection does with manifests no tag reaches.
    pub untagged_manifests: UntaggedManifests,
    /// Objects written or referenced more recently than this are never
    /// collected: the margin that makes collection safe during pushes.
    #[serde(with = "humantime_serde")]
    pub gc_grace_period: Duration,
    /// Run garbage collection (with retention) inside `berth serve` this
    /// often; absent: only `berth gc` collects.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Option<Duration>,
    /// Upload sessions untouched for this long are abandoned: their data is
    /// removed and their id stops working.
    #[serde(with = "humantime_serde")]
    pub upload_expiry: Duration,
    /// Mirrored prefixes whose unused cached images go (from the
    /// `[[proxy]]` entries with `unused_for`, not from this table).
    #[serde(skip)]
    pub mirror_eviction: Vec<super::MirrorEviction>,
}

impl Default for LifecycleConfig {
    fn default() -> LifecycleConfig {
        LifecycleConfig {
            history_keep: 5,
            immutable_tags: Vec::new(),
            retention: Vec::new(),
            untagged_manifests: UntaggedManifests::Keep,
            gc_grace_period: Duration::from_secs(3600),
            gc_interval: None,
            upload_expiry: Duration::from_secs(24 * 3600),
            mirror_eviction: Vec::new(),
        }
    }
}

impl LifecycleConfig {
    /// Refuses values that would stop the lifecycle task or defeat its
    /// safety margin.
    pub fn validate(&self) -> Result<(), String> {
        if self.gc_interval.is_some_and(|i| i < Duration::from_secs(1)) {
            return Err("lifecycle.gc_interval must be at least 1s".to_owned());
        }
        if self.upload_expiry < Duration::from_secs(1) {
            return Err("lifecycle.upload_expiry must be at least 1s".to_owned());
        }
        Ok(())
    }

    /// Whether `tag` in `name` may not be moved to another digest or deleted.
    pub fn is_immutable(&self, name: &RepositoryName, tag: &Tag) -> bool {
        self.immutable_tags
            .iter()
            .any(|rule| rule.matches(name, tag))
    }

    /// The retention rule that decides about `tag` in `name`, if any.
    pub fn retention_rule(&self, name: &RepositoryName, tag: &Tag) -> Option<&RetentionRule> {
        self.retention
            .iter()
            .find(|rule| rule.tags.matches(name, tag))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UntaggedManifests {
    /// A manifest pushed by digest stays until it is deleted.
    Keep,
    /// A manifest that no tag, tag history entry, kept index or kept
    /// referrer subject reaches is collected once older than the grace period.
    Delete,
}

/// Repositories and tags a rule applies to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    pub repositories: RepositoryPattern,
    pub tags: TagPattern,
}

impl TagRule {
    pub fn matches(&self, name: &RepositoryName, tag: &Tag) -> bool {
        self.repositories.matches(name) && self.tags.matches(tag)
    }
}

/// A retention rule: among the tags it matches in one repository, the
/// `keep_newest` most recently changed are always kept; the others are
/// removed when older than `max_age`, or (without `max_age`) at once. A rule
/// with neither keeps its tags forever (e.g. `v.*` before a catch-all).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    #[serde(flatten)]
    pub tags: TagRule,
    pub keep_newest: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// A regular expression a whole tag must match.
#[derive(Debug, Clone)]
pub struct TagPattern(Regex);

impl TagPattern {
    pub fn parse(pattern: &str) -> Result<TagPattern, String> {
        Regex::new(&format!("^(?:{pattern})$"))
            .map(TagPattern)
            .map_err(|e| format!("invalid tag pattern {pattern:?}: {e}"))
    }

    pub fn matches(&self, tag: &Tag) -> bool {
        self.0.is_match(tag.as_str())
    }
}

impl<'de> Deserialize<'de> for TagPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TagPattern, D::Error> {
        let s = String::deserialize(deserializer)?;
        TagPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn tag(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    #[test]
    fn tag_patterns_match_the_whole_tag() {
        let pattern = TagPattern::parse("v.*").unwrap();
        assert!(pattern.matches(&tag("v1.2")));
        assert!(!pattern.matches(&tag("dev-v1")));
        assert!(TagPattern::parse("prod").unwrap().matches(&tag("prod")));
        assert!(!TagPattern::parse("prod").unwrap().matches(&tag("prod2")));
        assert!(TagPattern::parse("(").is_err());
    }

    #[test]
    fn rules_parse_from_toml_and_the_first_retention_rule_decides() {
        let config: LifecycleConfig = toml::from_str(
            r#"
            history_keep = 3
            untagged_manifests = "delete"
            gc_grace_period = "30m"
            gc_interval = "6h"
            upload_expiry = "2h"
            [[immutable_tags]]
            repositories = "prod/*"
            tags = "v.*|prod"
            [[retention]]
            repositories = "*"
            tags = "v.*"
            [[retention]]
            repositories = "*"
            tags = "dev-.*"
            keep_newest = 2
            max_age = "7d"
            "#,
        )
        .unwrap();
        assert_eq!(config.history_keep, 3);
        assert_eq!(config.untagged_manifests, UntaggedManifests::Delete);
        assert_eq!(config.gc_grace_period, Duration::from_secs(1800));
        assert_eq!(config.gc_interval, Some(Duration::from_secs(6 * 3600)));
        assert!(config.is_immutable(&name("prod/app"), &tag("v1")));
        assert!(config.is_immutable(&name("prod/app"), &tag("prod")));
        assert!(!config.is_immutable(&name("prod/app"), &tag("latest")));
        assert!(!config.is_immutable(&name("dev/app"), &tag("v1")));
        let keep = config.retention_rule(&name("a"), &tag("v2")).unwrap();
        assert!(keep.keep_newest.is_none() && keep.max_age.is_none());
        let dev = config.retention_rule(&name("a"), &tag("dev-x")).unwrap();
        assert_eq!(dev.keep_newest, Some(2));
        assert_eq!(dev.max_age, Some(Duration::from_secs(7 * 86400)));
        assert!(config.retention_rule(&name("a"), &tag("latest")).is_none());
        assert!(toml::from_str::<LifecycleConfig>("gc_grace = \"1h\"").is_err());
        config.validate().unwrap();
        let zero: LifecycleConfig = toml::from_str("gc_interval = \"0s\"").unwrap();
        assert!(
            zero.validate().is_err(),
            "a zero interval would stop the task"
        );
    }
}
