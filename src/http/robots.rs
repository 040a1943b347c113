//! Robot accounts made through the API (Berth's, under the
//! distribution-spec's `_` extension space), for CI jobs a team sets up
//! without an admin at the server's command line:
//!
//! - `GET /v2/_berth/robots`: the robots the caller manages (admins: all,
//!   the robot file's too, marked as such), never a secret;
//! - `POST /v2/_berth/robots` `{"name", "namespace", "grants", "expires_in"}`:
//!   creates one and answers its secret, the only time it is shown;
//! - `DELETE /v2/_berth/robots/<name>`: revokes it (at once here, within
//!   `cache_ttl` on other replicas);
//! - `POST /v2/_berth/robots/<name>/secret`: a new secret, the old one
//!   stops working.
//!
//! **Who manages a robot.** Admins manage every robot and may give any
//! grant. Anyone else manages the robots of the namespaces they hold
//! `manage` over as a whole (a namespace's settings, or a rule covering
//! it): they create robots there whose grants stay inside the namespace and
//! carry no action they do not hold there themselves, renew the secret only
//! of a robot whose every right they hold, and revoke any of them. A robot
//! of a namespace, even an admin's, has grants inside it only. Names: the
//! API refuses one the robot file has (`berth robot create` cannot see the
//! API's robots; a file robot of the same name would shadow one), and a
//! non-admin may not take a name that settings outside the namespace still
//! grant rights to (`robot:NAME`), which would inherit them.
//!
//! The robots are stored by the registry with its settings
//! (`registry/settings.rs`); [`RegistryRobots`] is how the access control
//! finds them at login.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiResult};
use crate::auth::robots::{self, validate_name, KeptRobot, Robot, RobotSource};
use crate::auth::{from_unix_secs, rfc3339, unix_secs, Action, Actions, Grant};
use crate::oci::name::lies_below;
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::{Registry, RobotAccount, SettingsSnapshot};

/// The largest request body.
const MAX_BODY: usize = 64 * 1024;
/// The most grants one robot holds.
const MAX_GRANTS: usize = 64;
/// The most robots a namespace's managers make there, and in all: every
/// replica holds them in memory and reads them all on a change.
const MAX_ROBOTS_PER_NAMESPACE: usize = 100;
const MAX_ROBOTS: usize = 10_000;

/// The registry's robot accounts, as the access control looks them up.
pub struct RegistryRobots {
    registry: Arc<Registry>,
}

impl RegistryRobots {
    pub fn new(registry: Arc<Registry>) -> RegistryRobots {
        RegistryRobots { registry }
    }
}

impl std::fmt::Debug for RegistryRobots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryRobots")
    }
}

impl RobotSource for RegistryRobots {
    fn robot(&self, name: &str) -> Option<KeptRobot> {
        kept(self.registry.settings().robots.get(name)?)
    }
}

/// A stored account as the access control uses it; `None` (with a warning)
/// for one that does not parse: refused rather than half-granted.
fn kept(account: &RobotAccount) -> Option<KeptRobot> {
    let mut secret_sha256 = [0u8; 32];
    let grants: Result<Vec<Grant>, _> = account.grants.iter().map(|g| Grant::parse(g)).collect();
    match (
        hex::decode_to_slice(&account.secret_sha256, &mut secret_sha256),
        grants,
    ) {
        (Ok(()), Ok(grants)) => Some(KeptRobot {
            robot: Robot {
                name: account.name.clone(),
                grants,
                created_at: from_unix_secs(account.created_at),
                expires_at: account.expires_at.map(from_unix_secs),
            },
            secret_sha256,
            secret_since: from_unix_secs(account.secret_set_at.unwrap_or(account.created_at)),
        }),
        _ => {
            tracing::warn!(robot = %account.name, "a stored robot account does not parse: refused");
            None
        }
    }
}

/// What `POST /v2/_berth/robots` sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRobot {
    name: String,
    /// Where the robot belongs; required of everyone but admins.
    #[serde(default)]
    namespace: Option<String>,
    /// `PATTERN:ACTIONS`, as `berth robot create --grant` takes them.
    grants: Vec<String>,
    /// A lifetime (`90d`, `12h`); none: never expires.
    #[serde(default)]
    expires_in: Option<String>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    RegistryError::with_detail(ErrorCode::ParameterInvalid, detail.into()).into()
}

fn denied(detail: impl Into<String>) -> ApiError {
    RegistryError::with_detail(ErrorCode::Denied, detail.into()).into()
}

fn no_robot(name: &str) -> ApiError {
    RegistryError::with_detail(ErrorCode::NameUnknown, format!("no robot named {name:?}")).into()
}

/// `PATTERN:ACTIONS` grants, or a 400 naming the first that is not one.
fn parse_grants(grants: &[String]) -> Result<Vec<Grant>, ApiError> {
    grants
        .iter()
        .map(|g| Grant::parse(g).map_err(|e| invalid(e.to_string())))
        .collect()
}

/// The access control, or the answer when it is off (no logins: no robots).
fn auth_of(caller: &Caller) -> Result<&crate::auth::Auth, ApiError> {
    caller.auth().ok_or_else(|| {
        RegistryError::with_detail(
            ErrorCode::Unsupported,
            "access control is off: there are no robot accounts".to_owned(),
        )
        .into()
    })
}

/// Whether `caller` manages robots of `namespace` (`None`: an admin's).
fn manages(caller: &Caller, namespace: Option<&str>) -> bool {
    if caller.is_admin() {
        return true;
    }
    namespace
        .and_then(RepositoryName::parse)
        .is_some_and(|namespace| {
            caller
                .namespace_actions(&namespace)
                .contains(Action::Manage)
        })
}

/// An account as the API shows it: never its secret or hash.
fn shown(account: &RobotAccount, now: SystemTime) -> Value {
    json!({
        "name": account.name,
        "username": robots::user_name(&account.name),
        "namespace": account.namespace,
        "grants": account.grants,
        "created_at": rfc3339(from_unix_secs(account.created_at)),
        "created_by": account.created_by,
        "expires_at": account.expires_at.map(|t| rfc3339(from_unix_secs(t))),
        "expired": account.expires_at.is_some_and(|t| from_unix_secs(t) <= now),
        "source": "api",
    })
}

/// A robot of the robot file (admins see them; `berth robot` changes them).
fn shown_from_file(robot: &Robot, now: SystemTime) -> Value {
    json!({
        "name": robot.name,
        "username": robots::user_name(&robot.name),
        "namespace": null,
        "grants": robot.grants.iter().map(Grant::to_string).collect::<Vec<_>>(),
        "created_at": rfc3339(robot.created_at),
        "created_by": null,
        "expires_at": robot.expires_at.map(rfc3339),
        "expired": robot.is_expired(now),
        "source": "file",
    })
}

/// `GET /v2/_berth/robots`.
pub async fn list(registry: &Registry, caller: &Caller) -> ApiResult {
    let auth = auth_of(caller)?;
    let snapshot = registry.fresh_settings().await;
    let now = SystemTime::now();
    let mut robots: Vec<(String, Value)> = snapshot
        .robots
        .values()
        .filter(|account| manages(caller, account.namespace.as_deref()))
        .map(|account| (account.name.clone(), shown(account, now)))
        .collect();
    if caller.is_admin() {
        let file = auth.robots().list().map_err(|e| {
            tracing::error!(error = %e, "reading the robot file failed");
            ApiError::from(ErrorCode::Internal)
        })?;
        robots.extend(
            file.iter()
                .map(|robot| (robot.name.clone(), shown_from_file(robot, now))),
        );
    }
    robots.sort_by(|a, b| a.0.cmp(&b.0));
    let robots: Vec<Value> = robots.into_iter().map(|(_, shown)| shown).collect();
    Ok(axum::Json(json!({ "robots": robots, "admin": caller.is_admin() })).into_response())
}

/// `POST /v2/_berth/robots`: 201 with the secret.
pub async fn create(registry: &Registry, caller: &Caller, body: Body) -> ApiResult {
    let auth = auth_of(caller)?;
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| invalid(format!("reading the body (at most {MAX_BODY} bytes): {e}")))?;
    let request: NewRobot = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the body is not a robot to create: {e}")))?;
    validate_name(&request.name).map_err(|e| invalid(e.to_string()))?;
    if request.grants.is_empty() || request.grants.len() > MAX_GRANTS {
        return Err(invalid(format!(
            "a robot has 1 to {MAX_GRANTS} grants (PATTERN:ACTIONS)"
        )));
    }
    let grants = parse_grants(&request.grants)?;
    let namespace = match &request.namespace {
        Some(text) => Some(
            RepositoryName::parse(text)
                .ok_or_else(|| invalid(format!("invalid namespace {text:?}")))?,
        ),
        None => None,
    };
    authorize_grants(caller, namespace.as_ref(), &grants)?;
    let expires_at = match &request.expires_in {
        Some(text) => {
            // At most a century (parse_duration): the sum cannot overflow.
            let lifetime = robots::parse_duration(text).map_err(|e| invalid(e.to_string()))?;
            Some(unix_secs(SystemTime::now() + lifetime))
        }
        None => None,
    };
    let snapshot = registry.fresh_settings().await;
    check_room(caller, &snapshot, namespace.as_ref())?;
    if !caller.is_admin() {
        if let Some(elsewhere) = granted_elsewhere(&snapshot, &request.name, namespace.as_ref()) {
            return Err(RegistryError::with_detail(
                ErrorCode::AlreadyExists,
                format!(
                    "the settings of {elsewhere} grant rights to robot:{}: a new robot of that \
                     name would have them; pick another name",
                    request.name
                ),
            )
            .into());
        }
    }
    if auth.robots().kept(&request.name).is_some() {
        return Err(RegistryError::with_detail(
            ErrorCode::AlreadyExists,
            format!(
                "a robot named {:?} is in the robot file (berth robot)",
                request.name
            ),
        )
        .into());
    }
    let (secret, secret_sha256) = robots::new_secret();
    let account = RobotAccount {
        name: request.name,
        secret_sha256: hex::encode(secret_sha256),
        grants: grants.iter().map(Grant::to_string).collect(),
        namespace: namespace.map(|n| n.as_str().to_owned()),
        created_at: unix_secs(SystemTime::now()),
        secret_set_at: None,
        created_by: caller.name().unwrap_or_default(),
        expires_at,
    };
    registry.create_robot_account(&account).await?;
    let mut shown = shown(&account, SystemTime::now());
    shown["secret"] = json!(secret.expose());
    let location = format!("/v2/_berth/robots/{}", account.name);
    Ok((
        StatusCode::CREATED,
        [
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::LOCATION, location),
        ],
        axum::Json(shown),
    )
        .into_response())
}

/// Whether there is room for one more robot in `namespace` (for its
/// managers) and in all. A manager's cap counts every robot at or below
/// the highest namespace they manage on the way down to `namespace`, so
/// that one made in each of `team-a/n1`, `team-a/n2`, ... counts against
/// one cap; and the last tenth of the total is kept for admins, so that no
/// team can fill the registry's.
fn check_room(
    caller: &Caller,
    snapshot: &SettingsSnapshot,
    namespace: Option<&RepositoryName>,
) -> Result<(), ApiError> {
    let cap = if caller.is_admin() {
        MAX_ROBOTS
    } else {
        MAX_ROBOTS - MAX_ROBOTS / 10
    };
    if snapshot.robots.len() >= cap {
        return Err(denied(format!(
            "there are {} robots already{}",
            snapshot.robots.len(),
            if caller.is_admin() {
                ""
            } else {
                ": the rest are kept for admins"
            }
        )));
    }
    if let (false, Some(namespace)) = (caller.is_admin(), namespace) {
        let managed = managed_root(caller, namespace);
        let here = snapshot
            .robots
            .values()
            .filter(|r| {
                r.namespace
                    .as_deref()
                    .is_some_and(|ns| ns == managed.as_str() || lies_below(ns, managed.as_str()))
            })
            .count();
        if here >= MAX_ROBOTS_PER_NAMESPACE {
            return Err(denied(format!(
                "namespace {managed} and those below it have {MAX_ROBOTS_PER_NAMESPACE} robots \
                 already: revoke one"
            )));
        }
    }
    Ok(())
}

/// The highest namespace on the way down to `namespace` (itself included)
/// that the caller manages.
fn managed_root(caller: &Caller, namespace: &RepositoryName) -> RepositoryName {
    namespace
        .namespaces()
        .filter_map(RepositoryName::parse)
        .find(|ancestor| caller.namespace_actions(ancestor).contains(Action::Manage))
        .unwrap_or_else(|| namespace.clone())
}

/// A repository or namespace outside `namespace` whose settings grant
/// something to `robot:NAME`.
fn granted_elsewhere(
    snapshot: &SettingsSnapshot,
    name: &str,
    namespace: Option<&RepositoryName>,
) -> Option<String> {
    let subject = format!("robot:{name}");
    // Below the namespace; a namespace's own document too, but not a
    // repository named as the namespace: what `team-a` grants is outside
    // `team-a/`.
    let below = |document: &str| namespace.is_some_and(|ns| lies_below(document, ns.as_str()));
    let is_namespace = |document: &str| namespace.is_some_and(|ns| document == ns.as_str());
    let repositories = snapshot
        .repositories
        .iter()
        .filter(|(document, _)| !below(document));
    let namespaces = snapshot
        .namespaces
        .iter()
        .filter(|(document, _)| !below(document) && !is_namespace(document));
    repositories
        .chain(namespaces)
        .find(|(_, settings)| settings.grants.iter().any(|g| g.subject == subject))
        .map(|(document, _)| document.clone())
}

/// Whether `caller` may give a robot of `namespace` these `grants`: an
/// admin anything outside a namespace; inside one, grants inside it only,
/// and for a manager no action the manager lacks there.
fn authorize_grants(
    caller: &Caller,
    namespace: Option<&RepositoryName>,
    grants: &[Grant],
) -> Result<(), ApiError> {
    let Some(namespace) = namespace else {
        if caller.is_admin() {
            return Ok(());
        }
        return Err(denied(
            "only admins create robots outside a namespace: name a namespace you manage",
        ));
    };
    let held = caller.namespace_actions(namespace);
    if !held.contains(Action::Manage) {
        return Err(denied(format!(
            "creating robots in namespace {namespace} needs the manage right over it"
        )));
    }
    for grant in grants {
        if !grant.repositories.lies_under(namespace) {
            return Err(denied(format!(
                "grant {grant} reaches outside namespace {namespace} (use {namespace}/...)"
            )));
        }
        let beyond = Actions::from_iter(grant.actions.iter().filter(|a| !held.contains(*a)));
        if !beyond.is_empty() {
            return Err(denied(format!(
                "grant {grant} gives {beyond}, which you do not hold over {namespace}"
            )));
        }
    }
    Ok(())
}

/// The API's robot `name` if the caller manages it; a robot it does not
/// manage is as unknown as one that does not exist.
async fn managed(
    registry: &Registry,
    caller: &Caller,
    name: &str,
) -> Result<RobotAccount, ApiError> {
    let auth = auth_of(caller)?;
    validate_name(name).map_err(|e| invalid(e.to_string()))?;
    let snapshot = registry.fresh_settings().await;
    match snapshot.robots.get(name) {
        Some(account) if manages(caller, account.namespace.as_deref()) => Ok(account.clone()),
        None if caller.is_admin() && auth.robots().kept(name).is_some() => Err(denied(format!(
            "robot {name:?} is in the robot file: change it with berth robot"
        ))),
        _ => Err(no_robot(name)),
    }
}

/// `DELETE /v2/_berth/robots/<name>`.
pub async fn revoke(registry: &Registry, caller: &Caller, name: &str) -> ApiResult {
    managed(registry, caller, name).await?;
    if !registry.delete_robot_account(name).await? {
        return Err(no_robot(name));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v2/_berth/robots/<name>/secret`: a new secret, shown once, to
/// whoever holds every right the robot has (else a manager with less would
/// take over a stronger robot).
pub async fn new_secret(registry: &Registry, caller: &Caller, name: &str) -> ApiResult {
    let previous = managed(registry, caller, name).await?;
    let grants = parse_grants(&previous.grants)?;
    let namespace = previous
        .namespace
        .as_deref()
        .and_then(RepositoryName::parse);
    authorize_grants(caller, namespace.as_ref(), &grants).map_err(|_| {
        denied(format!(
            "renewing the secret of {name} needs every right it has ({})",
            previous.grants.join(" ")
        ))
    })?;
    let mut account = previous.clone();
    let (secret, secret_sha256) = robots::new_secret();
    account.secret_sha256 = hex::encode(secret_sha256);
    // UI sessions got with the old secret end with it (bearer tokens carry
    // their grants and last until they expire, as after a revocation).
    account.secret_set_at = Some(unix_secs(SystemTime::now()));
    registry.replace_robot_account(&previous, &account).await?;
    let mut shown = shown(&account, SystemTime::now());
    shown["secret"] = json!(secret.expose());
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(shown)).into_response())
}
