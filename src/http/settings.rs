//! The settings API (Berth's, under the distribution-spec's `_` extension
//! space), and what the settings mean to the access policy:
//!
//! - `GET /v2/<name>/_berth/settings` (pull): a repository's settings, the
//!   namespaces' above it, whether anyone may pull it, and what the caller
//!   may do to it;
//! - `PUT` and `DELETE` of the same (the `manage` right): change them, in
//!   force at once;
//! - `GET /v2/_berth/namespaces`, and `GET`, `PUT`, `DELETE` of
//!   `/v2/_berth/namespaces/<namespace>` (admins): the namespaces admins
//!   hand to teams.
//!
//! Settings add to the configuration's rules and never take a right away
//! ([`SettingsGrants`], `auth/policy.rs`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiResult};
use crate::auth::{Action, Actions, GrantSource, Identity};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::{
    Registry, Settings, SettingsChange, SettingsOf, SettingsSnapshot, SubjectKind, Visibility,
};

/// The largest settings document a client may send.
const MAX_BODY: usize = 256 * 1024;

/// Repository and namespace settings as the access policy's extra grants.
pub struct SettingsGrants {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for SettingsGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SettingsGrants")
    }
}

impl SettingsGrants {
    pub fn new(registry: Arc<Registry>) -> SettingsGrants {
        SettingsGrants { registry }
    }
}

impl GrantSource for SettingsGrants {
    fn actions(&self, identity: &Identity, name: &RepositoryName) -> Actions {
        granted(&self.registry.settings(), identity, name)
    }

    fn public(&self, name: &RepositoryName) -> bool {
        is_public(&self.registry.settings(), name)
    }

    fn namespace_actions(&self, identity: &Identity, namespace: &RepositoryName) -> Actions {
        let snapshot = self.registry.settings();
        let documents = snapshot
            .namespaces_of(namespace)
            .map(|(_, settings)| settings)
            .chain(snapshot.namespaces.get(namespace.as_str()));
        granted_by(documents, identity)
    }
}

/// Whether the settings of `name` or of a namespace above it make it
/// public.
fn is_public(snapshot: &SettingsSnapshot, name: &RepositoryName) -> bool {
    snapshot
        .namespaces_of(name)
        .map(|(_, settings)| settings)
        .chain(snapshot.repositories.get(name.as_str()))
        .any(|settings| settings.visibility == Visibility::Public)
}

/// What the grants in the settings of `name` and of the namespaces above it
/// give `identity`: each grant whose subject is the identity (its user
/// name, one of its groups, its robot name). Visibility is [`is_public`]'s.
fn granted(snapshot: &SettingsSnapshot, identity: &Identity, name: &RepositoryName) -> Actions {
    let documents = snapshot
        .namespaces_of(name)
        .map(|(_, settings)| settings)
        .chain(snapshot.repositories.get(name.as_str()));
    granted_by(documents, identity)
}

/// What `documents` give `identity`, together.
fn granted_by<'a>(documents: impl Iterator<Item = &'a Settings>, identity: &Identity) -> Actions {
    let mut actions = Actions::NONE;
    for settings in documents {
        for grant in &settings.grants {
            let Some((kind, subject)) = grant.subject() else {
                continue;
            };
            let applies = match (kind, identity) {
                (SubjectKind::User, Identity::User { name, .. }) => name == subject,
                (SubjectKind::Group, Identity::User { groups, .. }) => {
                    groups.iter().any(|group| group == subject)
                }
                (SubjectKind::Robot, Identity::Robot { name, .. }) => name == subject,
                _ => false,
            };
            if applies {
                actions = actions.union(Actions::parse_lenient(&grant.actions.join(",")));
            }
        }
    }
    actions
}

/// A settings document as the API shows it.
fn shown(settings: Option<&Settings>) -> Value {
    match settings {
        Some(settings) => json!({
            "visibility": settings.visibility,
            "description": settings.description,
            "grants": settings.grants,
            "updated_at": settings.updated_at,
            "updated_by": settings.updated_by,
        }),
        None => json!({
            "visibility": Visibility::Private,
            "description": "",
            "grants": [],
            "updated_at": null,
            "updated_by": null,
        }),
    }
}

/// `GET /v2/<name>/_berth/settings`.
pub async fn get(registry: &Registry, caller: &Caller, name: &RepositoryName) -> ApiResult {
    let snapshot = registry.fresh_settings().await;
    Ok(axum::Json(repository_view(&snapshot, caller, name)).into_response())
}

fn repository_view(snapshot: &SettingsSnapshot, caller: &Caller, name: &RepositoryName) -> Value {
    let mut view = shown(snapshot.repositories.get(name.as_str()));
    let namespaces: Vec<Value> = snapshot
        .namespaces_of(name)
        .map(|(namespace, settings)| {
            let mut shown = shown(Some(settings));
            shown["namespace"] = json!(namespace);
            shown
        })
        .collect();
    let actions: Vec<&str> = Action::ALL
        .into_iter()
        .filter(|action| caller.may(name, *action))
        .map(Action::as_str)
        .collect();
    view["repository"] = json!(name.as_str());
    view["namespaces"] = json!(namespaces);
    view["public"] = json!(caller.anyone_may(name, Action::Pull));
    view["public_allowed"] = json!(caller.may_make_public(name));
    view["actions"] = json!(actions);
    view
}

/// `PUT /v2/<name>/_berth/settings`: replaces them.
pub async fn put(
    registry: &Registry,
    caller: &Caller,
    name: &RepositoryName,
    body: Body,
) -> ApiResult {
    let change = read_change(body).await?;
    if change.visibility == Visibility::Public && !caller.may_make_public(name) {
        return Err(not_public_here(name));
    }
    let snapshot = registry.fresh_settings().await;
    check_grants_held(&snapshot, caller, name, &change)?;
    let by = caller.name().unwrap_or_default();
    registry
        .put_settings(SettingsOf::Repository, name, change, &by)
        .await?;
    get(registry, caller, name).await
}

/// Refuses a grant of an action the caller does not hold on `name` itself,
/// unless the settings already grant it to that subject: `manage` lets a
/// team hand out its own rights, not more (a manager without `delete`
/// cannot give itself or a robot `delete`), and leaves alone what an admin
/// granted.
fn check_grants_held(
    snapshot: &SettingsSnapshot,
    caller: &Caller,
    name: &RepositoryName,
    change: &SettingsChange,
) -> Result<(), ApiError> {
    let current = snapshot.repositories.get(name.as_str());
    let granted_now = |subject: &str, action: &str| {
        current.is_some_and(|settings| {
            settings
                .grants
                .iter()
                .any(|g| g.subject == subject && g.actions.iter().any(|a| a == action))
        })
    };
    for grant in &change.grants {
        let beyond: Vec<&str> = grant
            .actions
            .iter()
            .map(String::as_str)
            .filter(|action| {
                !granted_now(&grant.subject, action)
                    && !Action::parse(action).is_some_and(|a| caller.may(name, a))
            })
            .collect();
        if !beyond.is_empty() {
            return Err(RegistryError::with_detail(
                ErrorCode::Denied,
                format!(
                    "granting {} to {} on {name} needs holding it yourself",
                    beyond.join(","),
                    grant.subject
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// `DELETE /v2/<name>/_berth/settings`: back to no settings (private, no
/// grants); 404 `NAME_UNKNOWN` when there were none.
pub async fn delete(registry: &Registry, name: &RepositoryName) -> ApiResult {
    if !registry
        .delete_settings(SettingsOf::Repository, name)
        .await?
    {
        return Err(RegistryError::with_detail(
            ErrorCode::NameUnknown,
            format!("{name} has no settings"),
        )
        .into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v2/_berth/namespaces`: every namespace and its settings.
pub async fn list_namespaces(registry: &Registry) -> ApiResult {
    let snapshot = registry.fresh_settings().await;
    let namespaces: Vec<Value> = snapshot
        .namespaces
        .iter()
        .map(|(namespace, settings)| namespace_view(namespace, settings))
        .collect();
    Ok(axum::Json(json!({ "namespaces": namespaces })).into_response())
}

fn namespace_view(namespace: &str, settings: &Settings) -> Value {
    let mut view = shown(Some(settings));
    view["namespace"] = json!(namespace);
    view
}

/// `GET /v2/_berth/namespaces/<namespace>`.
pub async fn get_namespace(registry: &Registry, namespace: &RepositoryName) -> ApiResult {
    let snapshot = registry.fresh_settings().await;
    match snapshot.namespaces.get(namespace.as_str()) {
        Some(settings) => {
            Ok(axum::Json(namespace_view(namespace.as_str(), settings)).into_response())
        }
        None => Err(no_namespace(namespace)),
    }
}

/// `PUT /v2/_berth/namespaces/<namespace>`: creates or replaces it.
pub async fn put_namespace(
    registry: &Registry,
    caller: &Caller,
    namespace: &RepositoryName,
    body: Body,
) -> ApiResult {
    let change = read_change(body).await?;
    if change.visibility == Visibility::Public && !caller.may_make_public_below(namespace) {
        return Err(not_public_here(namespace));
    }
    let by = caller.name().unwrap_or_default();
    let settings = registry
        .put_settings(SettingsOf::Namespace, namespace, change, &by)
        .await?;
    Ok(axum::Json(namespace_view(namespace.as_str(), &settings)).into_response())
}

/// `DELETE /v2/_berth/namespaces/<namespace>`: the repositories in it stay,
/// with their own settings.
pub async fn delete_namespace(registry: &Registry, namespace: &RepositoryName) -> ApiResult {
    if !registry
        .delete_settings(SettingsOf::Namespace, namespace)
        .await?
    {
        return Err(no_namespace(namespace));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_public_here(name: &RepositoryName) -> ApiError {
    RegistryError::with_detail(
        ErrorCode::Denied,
        format!(
            "{name} may not be made public here: [auth] public_repositories names where \
             repositories may be public; ask an admin"
        ),
    )
    .into()
}

fn no_namespace(namespace: &RepositoryName) -> ApiError {
    RegistryError::with_detail(ErrorCode::NameUnknown, format!("no namespace {namespace}")).into()
}

/// The body of a `PUT`: a settings document whose actions are all known.
async fn read_change(body: Body) -> Result<SettingsChange, ApiError> {
    let invalid = |detail: String| {
        ApiError::from(RegistryError::with_detail(
            ErrorCode::ParameterInvalid,
            detail,
        ))
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| invalid(format!("reading the body (at most {MAX_BODY} bytes): {e}")))?;
    let change: SettingsChange = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the body is not a settings document: {e}")))?;
    for grant in &change.grants {
        Actions::parse_strict(&grant.actions.join(","))
            .map_err(|e| invalid(format!("the grant to {}: {e}", grant.subject)))?;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SettingsGrant;

    fn settings(visibility: Visibility, grants: &[(&str, &[&str])]) -> Settings {
        Settings {
            visibility,
            description: String::new(),
            grants: grants
                .iter()
                .map(|(subject, actions)| SettingsGrant {
                    subject: subject.to_string(),
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
            updated_at: String::new(),
            updated_by: String::new(),
        }
    }

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity::User {
            name: name.to_owned(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn grants_of_the_repository_and_its_namespaces_add_up_for_their_subjects() {
        let mut snapshot = SettingsSnapshot::default();
        snapshot.namespaces.insert(
            "team".to_owned(),
            settings(Visibility::Private, &[("group:devs", &["pull", "push"])]),
        );
        snapshot.repositories.insert(
            "team/app".to_owned(),
            settings(
                Visibility::Public,
                &[("user:bob", &["delete", "manage"]), ("robot:ci", &["push"])],
            ),
        );
        let app = RepositoryName::parse("team/app").unwrap();
        let other = RepositoryName::parse("team/other").unwrap();
        let outside = RepositoryName::parse("teams/app").unwrap();
        let bob = user("bob", &["devs"]);
        assert_eq!(
            granted(&snapshot, &bob, &app).to_string(),
            "pull,push,delete,manage"
        );
        assert_eq!(granted(&snapshot, &bob, &other).to_string(), "pull,push");
        assert_eq!(granted(&snapshot, &bob, &outside), Actions::NONE);
        assert_eq!(
            granted(&snapshot, &Identity::Anonymous, &app),
            Actions::NONE
        );
        assert!(is_public(&snapshot, &app));
        assert!(!is_public(&snapshot, &other));
        let ci = Identity::Robot {
            name: "ci".to_owned(),
            grants: Vec::new(),
        };
        assert_eq!(granted(&snapshot, &ci, &app).to_string(), "push");
        // A user named like the robot is not the robot.
        assert_eq!(granted(&snapshot, &user("ci", &[]), &app), Actions::NONE);
    }
}
