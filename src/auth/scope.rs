//! Scopes of the Docker registry token specification ("Token Scope
//! Documentation"): `resourcetype[(class)]:resourcename:action[,action]*`.
//!
//! Two resource types mean something here: `repository` (actions `pull`,
//! `push`, `delete`, and Berth's `manage`: change the repository's settings;
//! `*` means all four; a class such as
//! `repository(plugin)` is accepted and dropped) and `registry:catalog:*`.
//! Unknown actions are dropped, as the spec asks; a name that is not a valid
//! repository name is an error; other resource types are unsupported (list
//! parsing skips them). The name is everything between the first and the
//! last `:`, so a name with a colon (a host with a port) is seen whole and
//! then refused by the name grammar.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::oci::RepositoryName;

/// What a client may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
    /// Change the repository's settings (visibility, description, grants:
    /// `registry/settings.rs`); Berth's, not Docker's.
    Manage,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::Manage];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Manage => "manage",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "manage" => Some(Action::Manage),
            _ => None,
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
            Action::Manage => 8,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Action`]s. Displays as `pull,push,delete` (in that order);
/// deserializes from a list like `["pull", "push"]` (`"*"`: all), refusing
/// unknown names so a typo in the config is an error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(15);

    /// Just `action` (usable in constants, unlike `From`).
    pub const fn only(action: Action) -> Actions {
        Actions(action.bit())
    }

    /// These and `action`.
    pub const fn and(self, action: Action) -> Actions {
        Actions(self.0 | action.bit())
    }
    #[cfg(test)]
    pub(crate) const PULL_ONLY: Actions = Actions(1);

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn insert(&mut self, action: Action) {
        self.0 |= action.bit();
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersection(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Parses a comma-separated list, dropping unknown actions; `*` is all.
    pub fn parse_lenient(list: &str) -> Actions {
        let mut actions = Actions::NONE;
        for word in list.split(',').map(str::trim) {
            if word == "*" {
                return Actions::ALL;
            }
            if let Some(action) = Action::parse(word) {
                actions.insert(action);
            }
        }
        actions
    }

    /// Parses a comma-separated list, refusing unknown actions and an empty
    /// list; `*` is all.
    pub fn parse_strict(list: &str) -> Result<Actions, String> {
        let mut actions = Actions::NONE;
        for word in list.split(',').map(str::trim) {
            match (word, Action::parse(word)) {
                ("*", _) => actions = Actions::ALL,
                (_, Some(action)) => actions.insert(action),
                (_, None) => return Err(format!("unknown action {word:?}")),
            }
        }
        if actions.is_empty() {
            return Err("no actions".to_owned());
        }
        Ok(actions)
    }
}

impl From<Action> for Actions {
    fn from(action: Action) -> Actions {
        Actions(action.bit())
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Actions {
        let mut actions = Actions::NONE;
        for a in iter {
            actions.insert(a);
        }
        actions
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, action) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(action.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({self})")
    }
}

impl<'de> Deserialize<'de> for Actions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Actions, D::Error> {
        let words = Vec::<String>::deserialize(deserializer)?;
        let mut actions = Actions::NONE;
        for word in &words {
            match (word.as_str(), Action::parse(word)) {
                ("*", _) => actions = Actions::ALL,
                (_, Some(action)) => actions.insert(action),
                (_, None) => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown action {word:?} (expected pull, push, delete, manage or *)"
                    )))
                }
            }
        }
        Ok(actions)
    }
}

/// One resource and the actions wanted on (or granted for) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `repository:NAME:ACTIONS`
    Repository {
        name: RepositoryName,
        actions: Actions,
    },
    /// `registry:catalog:*`: listing `/v2/_catalog`.
    Catalog,
}

/// Why a scope string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("malformed scope {0:?}")]
    Malformed(String),
    #[error("invalid repository name in scope {0:?}")]
    InvalidName(String),
    /// A resource type (or registry resource) this registry does not know:
    /// ignored by [`parse_scopes`].
    #[error("unsupported scope {0:?}")]
    Unsupported(String),
}

impl Scope {
    pub fn repository(name: RepositoryName, actions: Actions) -> Scope {
        Scope::Repository { name, actions }
    }

    /// Parses one scope (see the module doc).
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let malformed = || ScopeError::Malformed(s.to_owned());
        let (resource_type, rest) = s.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let base_type = match resource_type.split_once('(') {
            Some((base, class)) => {
                let class = class.strip_suffix(')').ok_or_else(malformed)?;
                if class.is_empty() || !class.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(malformed());
                }
                base
            }
            None => resource_type,
        };
        match base_type {
            "repository" => {
                let name = RepositoryName::parse(name)
                    .ok_or_else(|| ScopeError::InvalidName(s.to_owned()))?;
                Ok(Scope::Repository {
                    name,
                    actions: Actions::parse_lenient(actions),
                })
            }
            "registry" if name == "catalog" && actions.split(',').any(|a| a == "*") => {
                Ok(Scope::Catalog)
            }
            "" => Err(malformed()),
            _ => Err(ScopeError::Unsupported(s.to_owned())),
        }
    }

    /// The resource type as it appears in a token's `access` claim.
    pub fn resource_type(&self) -> &'static str {
        match self {
            Scope::Repository { .. } => "repository",
            Scope::Catalog => "registry",
        }
    }

    /// The resource name as it appears in a token's `access` claim.
    pub fn resource_name(&self) -> &str {
        match self {
            Scope::Repository { name, .. } => name.as_str(),
            Scope::Catalog => "catalog",
        }
    }

    /// The actions as they appear in a token's `access` claim.
    pub fn action_names(&self) -> Vec<&'static str> {
        match self {
            Scope::Repository { actions, .. } => actions.iter().map(Action::as_str).collect(),
            Scope::Catalog => vec!["*"],
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Repository { name, actions } => write!(f, "repository:{name}:{actions}"),
            Scope::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        Scope::parse(s)
    }
}

/// Parses the `scope` parameters of a token request: each value may hold
/// several scopes separated by spaces (the OAuth2 form), and the parameter
/// may repeat (the GET form). Unsupported resource types are skipped;
/// malformed scopes and invalid names are errors (answer 400).
pub fn parse_scopes<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Scope>, ScopeError> {
    let mut scopes = Vec::new();
    for value in values {
        for s in value.split_whitespace() {
            match Scope::parse(s) {
                Ok(scope) => scopes.push(scope),
                Err(ScopeError::Unsupported(s)) => {
                    tracing::debug!(scope = %s, "ignoring unsupported scope");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(scopes)
}

/// Joins scopes for a challenge's `scope` parameter (space-separated).
pub fn format_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn repo(n: &str, actions: &[Action]) -> Scope {
        Scope::repository(name(n), actions.iter().copied().collect())
    }

    #[test]
    fn repository_scopes_parse_and_format_back() {
        let scope = Scope::parse("repository:team-a/app:pull,push").unwrap();
        assert_eq!(scope, repo("team-a/app", &[Action::Pull, Action::Push]));
        assert_eq!(scope.to_string(), "repository:team-a/app:pull,push");
        assert_eq!(
            Scope::parse("repository:a:delete").unwrap().to_string(),
            "repository:a:delete"
        );
    }

    #[test]
    fn actions_format_in_a_fixed_order() {
        let scope = Scope::parse("repository:a:delete,push,pull").unwrap();
        assert_eq!(scope.to_string(), "repository:a:pull,push,delete");
    }

    #[test]
    fn unknown_actions_are_dropped() {
        assert_eq!(
            Scope::parse("repository:a:pull,frobnicate").unwrap(),
            repo("a", &[Action::Pull])
        );
        assert_eq!(
            Scope::parse("repository:a:metadata-read").unwrap(),
            repo("a", &[])
        );
        assert_eq!(Scope::parse("repository:a:").unwrap(), repo("a", &[]));
    }

    #[test]
    fn star_means_every_repository_action() {
        assert_eq!(
            Scope::parse("repository:a:*").unwrap(),
            repo("a", &Action::ALL)
        );
    }

    #[test]
    fn a_resource_class_is_tolerated() {
        assert_eq!(
            Scope::parse("repository(plugin):vendor/plugin:pull").unwrap(),
            repo("vendor/plugin", &[Action::Pull])
        );
        for bad in [
            "repository(:a:pull",
            "repository():a:pull",
            "repository(x y):a:pull",
        ] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_catalog_scope_parses() {
        let scope = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(scope, Scope::Catalog);
        assert_eq!(scope.to_string(), "registry:catalog:*");
        assert!(matches!(
            Scope::parse("registry:catalog:pull"),
            Err(ScopeError::Unsupported(_))
        ));
        assert!(matches!(
            Scope::parse("registry:other:*"),
            Err(ScopeError::Unsupported(_))
        ));
    }

    #[test]
    fn names_are_checked_against_the_repository_grammar() {
        for bad in [
            "repository:UPPER:pull",
            "repository:../etc:pull",
            "repository:a//b:pull",
            "repository::pull",
            "repository:localhost:5000/a:pull",
        ] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_scopes_are_errors() {
        for bad in ["", "repository", "repository:a", ":a:pull"] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Scope::parse("plugin:a:pull"),
            Err(ScopeError::Unsupported(_))
        ));
    }

    #[test]
    fn scope_lists_split_on_spaces_and_skip_unsupported_types() {
        let scopes = parse_scopes([
            "repository:a:pull repository:b:push",
            "registry:catalog:*",
            "plugin:x:y",
            "  repository:c:pull  ",
        ])
        .unwrap();
        assert_eq!(
            scopes,
            [
                repo("a", &[Action::Pull]),
                repo("b", &[Action::Push]),
                Scope::Catalog,
                repo("c", &[Action::Pull]),
            ]
        );
        assert!(parse_scopes(["repository:a:pull repository:B:pull"]).is_err());
        assert_eq!(parse_scopes([""]).unwrap(), []);
        assert_eq!(
            format_scopes(&scopes[..2]),
            "repository:a:pull repository:b:push"
        );
    }

    #[test]
    fn strict_action_lists_refuse_unknown_and_empty() {
        assert_eq!(
            Actions::parse_strict("pull, push").unwrap(),
            Actions::from_iter([Action::Pull, Action::Push])
        );
        assert_eq!(Actions::parse_strict("*").unwrap(), Actions::ALL);
        assert!(Actions::parse_strict("pull,pus").is_err());
        assert!(Actions::parse_strict("").is_err());
    }

    #[test]
    fn action_sets_combine() {
        let pull_push = Actions::from_iter([Action::Pull, Action::Push]);
        let push_delete = Actions::from_iter([Action::Push, Action::Delete]);
        assert_eq!(pull_push.intersection(push_delete).to_string(), "push");
        assert_eq!(pull_push.union(push_delete).to_string(), "pull,push,delete");
        assert_eq!(
            pull_push.union(Action::Manage.into()).to_string(),
            "pull,push,manage"
        );
        assert!(Actions::NONE.is_empty());
        assert_eq!(format!("{:?}", pull_push), "Actions(pull,push)");
    }
}
