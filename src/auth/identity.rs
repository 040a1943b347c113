//! Who a client is once its credentials are checked ([`Identity`]), what a
//! robot may do ([`Grant`]), and how robot logins are named. Both the policy
//! and the robot store speak these types; they live here, below both, so
//! neither imports the other.

use std::fmt;

use super::scope::Actions;
use super::AuthError;
use crate::oci::RepositoryPattern;

/// Robot user names are this prefix and the robot's name.
pub const USER_PREFIX: &str = "robot$";

/// `robot$NAME`.
pub fn user_name(robot: &str) -> String {
    format!("{USER_PREFIX}{robot}")
}

/// Is this login name a robot's?
pub fn is_robot_user(user: &str) -> bool {
    user.starts_with(USER_PREFIX)
}

/// Actions on the repositories matching a pattern: a robot's grant, written
/// `PATTERN:ACTIONS` (e.g. `team-a/*:pull,push`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub repositories: RepositoryPattern,
    pub actions: Actions,
}

impl Grant {
    /// Parses `PATTERN:ACTIONS`; unknown actions are errors here (this is
    /// what an operator typed).
    pub fn parse(s: &str) -> Result<Grant, AuthError> {
        let invalid = || AuthError::InvalidGrant(s.to_owned());
        let (pattern, actions) = s.rsplit_once(':').ok_or_else(invalid)?;
        Ok(Grant {
            repositories: RepositoryPattern::parse(pattern).map_err(|_| invalid())?,
            actions: Actions::parse_strict(actions).map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repositories, self.actions)
    }
}

/// Who a client is, once its credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials.
    Anonymous,
    /// An htpasswd user and the configured groups it belongs to.
    User { name: String, groups: Vec<String> },
    /// A robot account (user name `robot$NAME`) and its grants.
    Robot { name: String, grants: Vec<Grant> },
}

impl Identity {
    /// The token `sub`: the user name, `robot$NAME`, or empty for anonymous.
    pub fn subject(&self) -> String {
        match self {
            Identity::Anonymous => String::new(),
            Identity::User { name, .. } => name.clone(),
            Identity::Robot { name, .. } => user_name(name),
        }
    }
}
