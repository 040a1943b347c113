//! Who may do what: rules per repository pattern, groups and admins.
//!
//! **Evaluation.** Grants add up and nothing denies. For a repository, an
//! identity may do the union of:
//! - everything, if it is an admin (a user in `admins` or a member of a group
//!   in `admin_groups`);
//! - each matching rule's `anonymous` actions (everyone gets these, so a
//!   logged-in client can pull what anonymous clients can);
//! - for an htpasswd user: each matching rule's `authenticated` actions, its
//!   `users` entry for the user and its `groups` entries for the user's
//!   groups;
//! - for a robot: its own grants. Robots are not "authenticated users": a
//!   robot may do what its grants and the anonymous rules say, nothing more.
//!
//! With no rules configured, the default is one rule: authenticated users may
//! pull and push everything; anonymous clients nothing.
//!
//! **Repository settings** (a [`GrantSource`]: visibility and grants kept in
//! the registry, changed through its API) add to all of this, as one more
//! rule would: a setting can give rights the configuration does not, and
//! can never take away one it gives (a repository the rules make public
//! stays public whatever its visibility setting says). A public visibility
//! setting counts only where `public_repositories` allows, when it is set.
//!
//! **Catalog.** Listing `/v2/_catalog` (`registry:catalog:*`) is for admins
//! and whoever `[auth.catalog]` names. It is all or nothing: the http layer
//! may further filter the list by [`Policy::allowed`] for pull.
//!
//! **Patterns.** A pattern is a repository name in which `*` matches any
//! sequence of characters, `/` included, or none: `team-a/*` matches
//! `team-a/app` and `team-a/tools/app` but not `team-a` itself; `*` matches
//! everything; `*/base` matches `base` images one or more levels down;
//! a pattern without `*` is an exact name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::identity::Identity;

use super::config::{AuthConfig, CatalogConfig};
use super::scope::{Action, Actions, Scope};
use super::AuthError;
use crate::oci::{RepositoryName, RepositoryPattern};

/// A compiled `[[auth.rules]]` entry.
#[derive(Debug, Clone)]
struct Rule {
    repositories: Vec<RepositoryPattern>,
    anonymous: Actions,
    authenticated: Actions,
    users: BTreeMap<String, Actions>,
    groups: BTreeMap<String, Actions>,
}

impl Rule {
    fn matches(&self, name: &RepositoryName) -> bool {
        self.repositories.iter().any(|p| p.matches(name))
    }

    /// What the rule gives `identity` where it applies (robots: nothing,
    /// their grants decide).
    fn actions_for(&self, identity: &Identity) -> Actions {
        let mut actions = self.anonymous;
        if let Identity::User { name, groups } = identity {
            actions = actions.union(self.authenticated);
            if let Some(a) = self.users.get(name) {
                actions = actions.union(*a);
            }
            for group in groups {
                if let Some(a) = self.groups.get(group) {
                    actions = actions.union(*a);
                }
            }
        }
        actions
    }
}

/// Grants kept outside the configuration, added to its rules' (see the
/// module): what repository settings give `identity` on `name`.
pub trait GrantSource: Send + Sync + std::fmt::Debug {
    /// What the source's grants give `identity` on `name`.
    fn actions(&self, identity: &Identity, name: &RepositoryName) -> Actions;
    /// Whether the source makes `name` public (anyone may pull), which the
    /// policy honours where `[auth] public_repositories` allows.
    fn public(&self, name: &RepositoryName) -> bool;
    /// What the source gives `identity` over every repository below
    /// `namespace` at once (a namespace's grants, its parents' included).
    fn namespace_actions(&self, identity: &Identity, namespace: &RepositoryName) -> Actions;
}

/// The access policy, built from the `[auth]` table.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Repository settings' grants, when the registry keeps any.
    extra: Option<Arc<dyn GrantSource>>,
    admins: BTreeSet<String>,
    admin_groups: BTreeSet<String>,
    /// user → the groups it belongs to
    memberships: BTreeMap<String, Vec<String>>,
    rules: Vec<Rule>,
    catalog: CatalogConfig,
    /// `[auth] public_repositories`.
    public_repositories: Option<Vec<RepositoryPattern>>,
}

impl Policy {
    pub fn from_config(config: &AuthConfig) -> Result<Policy, AuthError> {
        config.validate()?;
        let mut memberships: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (group, members) in &config.groups {
            for user in members {
                memberships
                    .entry(user.clone())
                    .or_default()
                    .push(group.clone());
            }
        }
        let rules = if config.rules.is_empty() {
            vec![Rule {
                repositories: vec![RepositoryPattern::parse("*").expect("a valid pattern")],
                anonymous: Actions::NONE,
                authenticated: Actions::from_iter([Action::Pull, Action::Push]),
                users: BTreeMap::new(),
                groups: BTreeMap::new(),
            }]
        } else {
            config
                .rules
                .iter()
                .map(|r| Rule {
                    repositories: r.repositories.clone(),
                    anonymous: r.anonymous,
                    authenticated: r.authenticated,
                    users: r.users.clone(),
                    groups: r.groups.clone(),
                })
                .collect()
        };
        Ok(Policy {
            extra: None,
            admins: config.admins.iter().cloned().collect(),
            admin_groups: config.admin_groups.iter().cloned().collect(),
            memberships,
            rules,
            catalog: config.catalog.clone(),
            public_repositories: config.public_repositories.clone(),
        })
    }

    /// This policy with `source`'s grants added to its rules'.
    pub fn with_grant_source(mut self, source: Arc<dyn GrantSource>) -> Policy {
        self.extra = Some(source);
        self
    }

    /// Whether repository settings may make `name` public: anywhere
    /// without `[auth] public_repositories`, else where one of its patterns
    /// matches.
    pub fn public_allowed(&self, name: &RepositoryName) -> bool {
        self.public_repositories
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(name)))
    }

    /// Whether a namespace's settings may make every repository below
    /// `namespace` public: one of the patterns covers it all.
    pub fn public_allowed_below(&self, namespace: &RepositoryName) -> bool {
        self.public_repositories
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.covers_namespace(namespace)))
    }

    /// The identity of an authenticated htpasswd user, with its groups.
    pub fn user(&self, name: &str) -> Identity {
        Identity::User {
            name: name.to_owned(),
            groups: self.memberships.get(name).cloned().unwrap_or_default(),
        }
    }

    pub fn is_admin(&self, identity: &Identity) -> bool {
        match identity {
            Identity::User { name, groups } => {
                self.admins.contains(name) || groups.iter().any(|g| self.admin_groups.contains(g))
            }
            Identity::Anonymous | Identity::Robot { .. } => false,
        }
    }

    /// Everything `identity` may do to `name`.
    pub fn actions(&self, identity: &Identity, name: &RepositoryName) -> Actions {
        if self.is_admin(identity) {
            return Actions::ALL;
        }
        let mut actions = Actions::NONE;
        for rule in self.rules.iter().filter(|r| r.matches(name)) {
            actions = actions.union(rule.actions_for(identity));
        }
        if let Identity::Robot { grants, .. } = identity {
            for grant in grants.iter().filter(|g| g.repositories.matches(name)) {
                actions = actions.union(grant.actions);
            }
        }
        if let Some(extra) = &self.extra {
            actions = actions.union(extra.actions(identity, name));
            if self.public_allowed(name) && extra.public(name) {
                actions.insert(Action::Pull);
            }
        }
        actions
    }

    /// What `identity` may do to every repository below `namespace`, as
    /// one: what rules and grants whose patterns cover the whole namespace
    /// give it ([`RepositoryPattern::covers_namespace`]), and the
    /// namespace's settings. Managing a namespace (its robots) needs
    /// `manage` here.
    pub fn namespace_actions(&self, identity: &Identity, namespace: &RepositoryName) -> Actions {
        if self.is_admin(identity) {
            return Actions::ALL;
        }
        let mut actions = Actions::NONE;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.repositories.iter().any(|p| p.covers_namespace(namespace)))
        {
            actions = actions.union(rule.actions_for(identity));
        }
        if let Identity::Robot { grants, .. } = identity {
            for grant in grants
                .iter()
                .filter(|g| g.repositories.covers_namespace(namespace))
            {
                actions = actions.union(grant.actions);
            }
        }
        if let Some(extra) = &self.extra {
            actions = actions.union(extra.namespace_actions(identity, namespace));
        }
        actions
    }

    pub fn allowed(&self, identity: &Identity, name: &RepositoryName, action: Action) -> bool {
        self.actions(identity, name).contains(action)
    }

    /// May `identity` list the catalog?
    pub fn catalog_allowed(&self, identity: &Identity) -> bool {
        if self.is_admin(identity) || self.catalog.anonymous {
            return true;
        }
        match identity {
            Identity::User { name, groups } => {
                self.catalog.authenticated
                    || self.catalog.users.contains(name)
                    || groups.iter().any(|g| self.catalog.groups.contains(g))
            }
            Identity::Anonymous | Identity::Robot { .. } => false,
        }
    }

    /// What a token for `identity` may carry of the `requested` scopes: each
    /// requested scope cut down to the allowed actions, scopes for the same
    /// repository merged (in the order first requested), and scopes left
    /// with no action dropped.
    pub fn grant(&self, identity: &Identity, requested: &[Scope]) -> Vec<Scope> {
        let mut granted: Vec<Scope> = Vec::new();
        for scope in requested {
            match scope {
                Scope::Repository { name, actions } => {
                    let allowed = actions.intersection(self.actions(identity, name));
                    if allowed.is_empty() {
                        continue;
                    }
                    let existing = granted.iter_mut().find_map(|g| match g {
                        Scope::Repository { name: n, actions } if n == name => Some(actions),
                        _ => None,
                    });
                    match existing {
                        Some(actions) => *actions = actions.union(allowed),
                        None => granted.push(Scope::repository(name.clone(), allowed)),
                    }
                }
                Scope::Catalog => {
                    if !granted.contains(&Scope::Catalog) && self.catalog_allowed(identity) {
                        granted.push(Scope::Catalog);
                    }
                }
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grant;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn pattern(s: &str) -> RepositoryPattern {
        RepositoryPattern::parse(s).unwrap()
    }

    fn policy(toml_text: &str) -> Policy {
        let config: AuthConfig = toml::from_str(toml_text).unwrap();
        Policy::from_config(&config).unwrap()
    }

    const EXAMPLE: &str = r#"
        admins = ["alice"]
        admin_groups = ["ops"]
        [groups]
        team-a = ["bob", "carol"]
        ops = ["erin"]
        [[rules]]
        repositories = ["public/*"]
        anonymous = ["pull"]
        authenticated = ["pull"]
        [[rules]]
        repositories = ["team-a/*"]
        groups = { team-a = ["pull", "push"] }
        users = { dave = ["pull"] }
        [[rules]]
        repositories = ["team-a/releases/*"]
        users = { carol = ["delete"] }
    "#;

    const PULL: Actions = Actions::PULL_ONLY;

    #[test]
    fn star_matches_any_characters_including_slashes() {
        let p = pattern("team-a/*");
        assert!(p.matches(&name("team-a/app")));
        assert!(p.matches(&name("team-a/tools/app")));
        assert!(!p.matches(&name("team-a")));
        assert!(!p.matches(&name("team-ab/app")));
        assert!(!p.matches(&name("x/team-a/app")));
        assert!(pattern("*").matches(&name("anything/at/all")));
        assert!(pattern("*/base").matches(&name("org/base")));
        assert!(pattern("*/base").matches(&name("org/sub/base")));
        assert!(!pattern("*/base").matches(&name("org/base2")));
        assert!(pattern("team-*-ci/*").matches(&name("team-a-ci/x")));
        assert!(pattern("a*b*c").matches(&name("axxbyybc")));
        assert!(!pattern("a*b*c").matches(&name("axxbyybcd")));
    }

    #[test]
    fn a_pattern_without_star_is_an_exact_name() {
        let p = pattern("library/ubuntu");
        assert!(p.matches(&name("library/ubuntu")));
        assert!(!p.matches(&name("library/ubuntu2")));
        assert!(!p.matches(&name("library")));
    }

    #[test]
    fn patterns_that_can_match_no_name_are_refused() {
        for bad in ["", "Team/*", "a//*", "/*", "a/*/", "a b", "a?b", "*:*"] {
            assert!(RepositoryPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn without_rules_authenticated_users_pull_and_push_and_anonymous_nothing() {
        let p = policy("");
        let bob = p.user("bob");
        let repo = name("any/repo");
        assert!(p.allowed(&bob, &repo, Action::Pull));
        assert!(p.allowed(&bob, &repo, Action::Push));
        assert!(!p.allowed(&bob, &repo, Action::Delete));
        assert_eq!(p.actions(&Identity::Anonymous, &repo), Actions::NONE);
        assert!(!p.catalog_allowed(&bob));
    }

    #[test]
    fn anonymous_clients_get_public_pull_only() {
        let p = policy(EXAMPLE);
        let anon = Identity::Anonymous;
        assert_eq!(p.actions(&anon, &name("public/nginx")), PULL);
        assert_eq!(p.actions(&anon, &name("team-a/app")), Actions::NONE);
        assert_eq!(p.actions(&anon, &name("public")), Actions::NONE);
    }

    /// Settings that make everything public and grant nothing.
    #[derive(Debug)]
    struct EverythingPublic;

    impl GrantSource for EverythingPublic {
        fn actions(&self, _: &Identity, _: &RepositoryName) -> Actions {
            Actions::NONE
        }
        fn public(&self, _: &RepositoryName) -> bool {
            true
        }
        fn namespace_actions(&self, _: &Identity, _: &RepositoryName) -> Actions {
            Actions::NONE
        }
    }

    #[test]
    fn public_settings_count_only_where_public_repositories_allows() {
        let anyone = Identity::Anonymous;
        let open = policy("").with_grant_source(Arc::new(EverythingPublic));
        assert_eq!(open.actions(&anyone, &name("app/web")), PULL);
        let bounded = policy(r#"public_repositories = ["oss/*"]"#)
            .with_grant_source(Arc::new(EverythingPublic));
        assert_eq!(bounded.actions(&anyone, &name("oss/lib")), PULL);
        assert_eq!(bounded.actions(&anyone, &name("app/web")), Actions::NONE);
        assert!(!bounded.public_allowed(&name("app/web")));
        assert!(bounded.public_allowed_below(&name("oss")));
        assert!(!bounded.public_allowed_below(&name("app")));
        let closed =
            policy("public_repositories = []").with_grant_source(Arc::new(EverythingPublic));
        assert_eq!(closed.actions(&anyone, &name("oss/lib")), Actions::NONE);
    }

    #[test]
    fn over_a_namespace_only_rules_covering_all_of_it_count() {
        let p = policy(EXAMPLE);
        let (bob, carol) = (p.user("bob"), p.user("carol"));
        assert_eq!(
            p.namespace_actions(&bob, &name("team-a")).to_string(),
            "pull,push"
        );
        // carol's delete is for team-a/releases/* only.
        assert_eq!(
            p.namespace_actions(&carol, &name("team-a")).to_string(),
            "pull,push"
        );
        assert_eq!(
            p.namespace_actions(&carol, &name("team-a/releases"))
                .to_string(),
            "pull,push,delete"
        );
        assert_eq!(
            p.namespace_actions(&Identity::Anonymous, &name("public")),
            PULL
        );
        assert_eq!(p.namespace_actions(&bob, &name("team-b")), Actions::NONE);
        assert_eq!(
            p.namespace_actions(&p.user("alice"), &name("x")),
            Actions::ALL
        );
        let robot = Identity::Robot {
            name: "ci".into(),
            grants: vec![Grant::parse("team-a/*:push").unwrap()],
        };
        assert_eq!(
            p.namespace_actions(&robot, &name("team-a")).to_string(),
            "push"
        );
    }

    #[test]
    fn groups_grant_their_members() {
        let p = policy(EXAMPLE);
        let bob = p.user("bob");
        assert_eq!(
            bob,
            Identity::User {
                name: "bob".into(),
                groups: vec!["team-a".into()]
            }
        );
        assert!(p.allowed(&bob, &name("team-a/app"), Action::Push));
        assert!(p.allowed(&bob, &name("team-a/deep/app"), Action::Pull));
        assert!(!p.allowed(&bob, &name("team-a/app"), Action::Delete));
        assert!(!p.allowed(&bob, &name("team-b/app"), Action::Pull));
        // Not a member: only the authenticated rights of public/*.
        let frank = p.user("frank");
        assert_eq!(p.actions(&frank, &name("team-a/app")), Actions::NONE);
        assert_eq!(p.actions(&frank, &name("public/x")), PULL);
    }

    #[test]
    fn user_entries_and_overlapping_rules_add_up() {
        let p = policy(EXAMPLE);
        assert_eq!(p.actions(&p.user("dave"), &name("team-a/app")), PULL);
        let carol = p.user("carol");
        assert_eq!(
            p.actions(&carol, &name("team-a/releases/v1")),
            Actions::from_iter([Action::Pull, Action::Push, Action::Delete])
        );
        assert!(!p.allowed(&carol, &name("team-a/app"), Action::Delete));
    }

    #[test]
    fn admins_may_do_everything() {
        let p = policy(EXAMPLE);
        for admin in [p.user("alice"), p.user("erin")] {
            assert!(p.is_admin(&admin));
            assert_eq!(p.actions(&admin, &name("team-z/secret")), Actions::ALL);
            assert!(p.catalog_allowed(&admin));
        }
        assert!(!p.is_admin(&p.user("bob")));
        // A user claiming a group it is not in gets nothing from it.
        let forged = Identity::User {
            name: "mallory".into(),
            groups: vec![],
        };
        assert!(!p.is_admin(&forged));
    }

    #[test]
    fn robots_get_their_grants_and_public_access_only() {
        let p = policy(EXAMPLE);
        let robot = Identity::Robot {
            name: "ci".into(),
            grants: vec![Grant::parse("team-b/*:pull,push").unwrap()],
        };
        assert!(p.allowed(&robot, &name("team-b/app"), Action::Push));
        assert!(!p.allowed(&robot, &name("team-b/app"), Action::Delete));
        assert!(!p.allowed(&robot, &name("team-a/app"), Action::Pull));
        assert_eq!(p.actions(&robot, &name("public/x")), PULL);
        assert!(!p.catalog_allowed(&robot));
        assert_eq!(robot.subject(), "robot$ci");
        // Robots are not "authenticated users" of the default rule either.
        assert_eq!(policy("").actions(&robot, &name("other")), Actions::NONE);
    }

    #[test]
    fn catalog_access_is_for_admins_unless_configured() {
        let p = policy(EXAMPLE);
        assert!(!p.catalog_allowed(&p.user("bob")));
        assert!(!p.catalog_allowed(&Identity::Anonymous));
        let p = policy("[groups]\ng = [\"bob\"]\n[catalog]\ngroups = [\"g\"]\nusers = [\"dave\"]");
        assert!(p.catalog_allowed(&p.user("bob")));
        assert!(p.catalog_allowed(&p.user("dave")));
        assert!(!p.catalog_allowed(&p.user("carol")));
        let p = policy("[catalog]\nauthenticated = true");
        assert!(p.catalog_allowed(&p.user("carol")));
        assert!(!p.catalog_allowed(&Identity::Anonymous));
        let p = policy("[catalog]\nanonymous = true");
        assert!(p.catalog_allowed(&Identity::Anonymous));
    }

    #[test]
    fn grant_intersects_requests_with_the_policy() {
        let p = policy(EXAMPLE);
        let bob = p.user("bob");
        let requested = crate::auth::parse_scopes([
            "repository:team-a/app:pull,push,delete",
            "repository:team-b/app:pull",
            "repository:public/x:pull,push",
            "registry:catalog:*",
        ])
        .unwrap();
        let granted = p.grant(&bob, &requested);
        let shown: Vec<String> = granted.iter().map(Scope::to_string).collect();
        assert_eq!(
            shown,
            [
                "repository:team-a/app:pull,push",
                "repository:public/x:pull"
            ]
        );
        assert_eq!(p.grant(&Identity::Anonymous, &requested[..2]), []);
        let admin = p.grant(&p.user("alice"), &requested);
        assert_eq!(admin.len(), 4);
        assert_eq!(admin[3], Scope::Catalog);
    }

    #[test]
    fn grant_merges_repeated_scopes_for_one_repository() {
        let p = policy(EXAMPLE);
        let requested = crate::auth::parse_scopes([
            "repository:team-a/app:pull",
            "repository:public/x:pull",
            "repository:team-a/app:push",
            "registry:catalog:*",
            "registry:catalog:*",
        ])
        .unwrap();
        let granted = p.grant(&p.user("alice"), &requested);
        let shown: Vec<String> = granted.iter().map(Scope::to_string).collect();
        assert_eq!(
            shown,
            [
                "repository:team-a/app:pull,push",
                "repository:public/x:pull",
                "registry:catalog:*"
            ]
        );
    }

    #[test]
    fn grants_parse_from_the_cli_form() {
        let g = Grant::parse("team-a/*:pull,push").unwrap();
        assert_eq!(g.repositories.as_str(), "team-a/*");
        assert_eq!(g.to_string(), "team-a/*:pull,push");
        assert_eq!(Grant::parse("*:*").unwrap().actions, Actions::ALL);
        for bad in [
            "team-a/*",
            "team-a/*:",
            "team-a/*:pul",
            "Bad/*:pull",
            ":pull",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
