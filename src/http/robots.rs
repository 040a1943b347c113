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
//! carry no action they do not hold there themselves. A robot's name is
//! unique across the robot file and the API's robots.
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
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::{Registry, RobotAccount};

/// The largest request body.
const MAX_BODY: usize = 64 * 1024;
/// The most grants one robot holds.
const MAX_GRANTS: usize = 64;

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
    let grants = request
        .grants
        .iter()
        .map(|g| Grant::parse(g).map_err(|e| invalid(e.to_string())))
        .collect::<Result<Vec<Grant>, ApiError>>()?;
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
            let lifetime = robots::parse_duration(text).map_err(|e| invalid(e.to_string()))?;
            Some(unix_secs(SystemTime::now() + lifetime))
        }
        None => None,
    };
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
        created_by: caller.name().unwrap_or_default(),
        expires_at,
    };
    registry.create_robot_account(&account).await?;
    let mut shown = shown(&account, SystemTime::now());
    shown["secret"] = json!(secret.expose());
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(shown),
    )
        .into_response())
}

/// Whether `caller` may give a robot of `namespace` these `grants`: an
/// admin anything; a namespace's manager grants inside it, no action the
/// manager lacks there.
fn authorize_grants(
    caller: &Caller,
    namespace: Option<&RepositoryName>,
    grants: &[Grant],
) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    let Some(namespace) = namespace else {
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

/// `POST /v2/_berth/robots/<name>/secret`: a new secret, shown once.
pub async fn new_secret(registry: &Registry, caller: &Caller, name: &str) -> ApiResult {
    let mut account = managed(registry, caller, name).await?;
    let (secret, secret_sha256) = robots::new_secret();
    account.secret_sha256 = hex::encode(secret_sha256);
    registry.replace_robot_account(&account).await?;
    let mut shown = shown(&account, SystemTime::now());
    shown["secret"] = json!(secret.expose());
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(shown)).into_response())
}
