//! The audit log (`[audit] path`): one JSON line per change (a push, an
//! upload, a delete, a tag rollback) and per refused request, saying who
//! (user, robot, token subject or anonymous; for a refusal, the name the
//! client claimed), from where (the client address trusted proxies vouch
//! for), what (action, repository, reference, digest) and the result. No
//! secret is ever in it: no password, token or `Authorization` value, no
//! query string (an upload's state).
//!
//! Lines are written whole under a lock, in the order requests end, to a
//! file opened for appending (or standard output for `-`): a line is in the
//! file before the response that it records is sent.

use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use serde::Serialize;

use super::auth::Caller;
use super::routes::{Resource, Route};
use crate::auth::header::{basic_credentials, bearer_token};
use crate::auth::Identity;

/// Where audit lines go.
pub struct AuditLog {
    out: Mutex<Box<dyn Write + Send>>,
}

/// Who made a request.
#[derive(Serialize)]
struct Actor {
    /// `user`, `robot`, `token` (a bearer token's subject), `anonymous`,
    /// or, for a refused request, `claimed` (the name in the credentials
    /// that were refused or did not suffice) or `unknown` (a token that
    /// did not verify).
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    actor: Actor,
    client: IpAddr,
    action: &'static str,
    method: &'a str,
    repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    status: u16,
    /// `ok`, `refused` (401, 403) or `failed` (any other error).
    result: &'static str,
}

impl AuditLog {
    /// Appends to `path` (`-`: standard output), creating it if needed.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(LineWriter::new(io::stdout()))
        } else {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            Box::new(LineWriter::new(file))
        };
        Ok(AuditLog {
            out: Mutex::new(out),
        })
    }

    /// Records a request that changed something or was refused; others
    /// (reads that succeeded, upload chunks on their way) are not audited.
    pub fn record(
        &self,
        route: &Route<'_>,
        caller: Option<&Caller>,
        client: IpAddr,
        parts: &Parts,
        response: &Response,
    ) {
        let status = response.status();
        let header =
            |name: header::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok());
        let digest = header(header::HeaderName::from_static("docker-content-digest"));
        let location = header(header::LOCATION);
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        let Some(action) = action_of(route, &parts.method, status) else {
            return;
        };
        // Reads are audited only when refused.
        if !refused && matches!(parts.method, Method::GET | Method::HEAD) {
            return;
        }
        let actor = match caller {
            Some(caller) => actor_of(caller),
            None => claimed(parts),
        };
        let reference = match route.row.resource {
            Resource::Manifest
            | Resource::Blob
            | Resource::TagHistory
            | Resource::TagRollback
            | Resource::Robot
            | Resource::RobotSecret => Some(route.last),
            // A robot made: the name is in the body; its answer's Location
            // names it.
            Resource::Robots => location.and_then(|l| l.rsplit('/').next()),
            _ => None,
        };
        let line = Line {
            time: now(),
            actor,
            client,
            action,
            method: parts.method.as_str(),
            repository: route.name.as_ref().map(|n| n.as_str()),
            reference: reference.filter(|r| !r.is_empty()),
            digest,
            status: status.as_u16(),
            result: if status.is_success() {
                "ok"
            } else if refused {
                "refused"
            } else {
                "failed"
            },
        };
        self.write(&line);
    }
}

impl AuditLog {
    /// Records a login the token endpoint refused: the name it was
    /// attempted for, never the password.
    pub fn record_login(&self, user: &str, client: IpAddr, method: &Method, status: StatusCode) {
        self.write(&Line {
            time: now(),
            actor: Actor {
                kind: "claimed",
                name: Some(user.to_owned()),
            },
            client,
            action: "login",
            method: method.as_str(),
            repository: None,
            reference: None,
            digest: None,
            status: status.as_u16(),
            result: "refused",
        });
    }

    fn write(&self, line: &Line<'_>) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        let mut out = self.out.lock().expect("audit lock");
        if let Err(e) = out.write_all(&text) {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a request does, in the audit's words; `None` for the steps of an
/// upload that change nothing visible yet (a chunk, a status check).
fn action_of(route: &Route<'_>, method: &Method, status: StatusCode) -> Option<&'static str> {
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    Some(match (route.row.resource, method) {
        (Resource::Manifest, &Method::PUT) => "push",
        (Resource::Manifest | Resource::Blob, &Method::DELETE) => "delete",
        (Resource::TagRollback, _) => "rollback",
        // An upload's start is audited when refused; its end (the PUT that
        // commits the blob, or a mount) when it is done.
        (Resource::UploadStart, &Method::POST) if refused || status == StatusCode::CREATED => {
            "upload"
        }
        (Resource::Upload, &Method::PUT) => "upload",
        (Resource::Upload, &Method::DELETE) => "cancel_upload",
        (Resource::Settings, &Method::PUT | &Method::DELETE) => "settings",
        (Resource::Namespace, &Method::PUT | &Method::DELETE) => "namespace",
        (Resource::Robots, &Method::POST) => "robot_create",
        (Resource::Robot, &Method::DELETE) => "robot_revoke",
        (Resource::RobotSecret, &Method::POST) => "robot_secret",
        (_, &Method::GET | &Method::HEAD) if refused => "pull",
        (Resource::Catalog, _) if refused => "catalog",
        _ if refused => "write",
        _ => return None,
    })
}

fn actor_of(caller: &Caller) -> Actor {
    match caller {
        Caller::Everyone => Actor {
            kind: "anonymous",
            name: None,
        },
        Caller::Identity { identity, .. } => match identity {
            Identity::Anonymous => Actor {
                kind: "anonymous",
                name: None,
            },
            Identity::User { name, .. } => Actor {
                kind: "user",
                name: Some(name.clone()),
            },
            Identity::Robot { .. } => Actor {
                kind: "robot",
                name: Some(identity.subject()),
            },
        },
        Caller::Token { token, .. } if token.subject.is_empty() => Actor {
            kind: "anonymous",
            name: None,
        },
        Caller::Token { token, .. } => Actor {
            kind: "token",
            name: Some(token.subject.clone()),
        },
    }
}

/// Who a refused request said it was: the user name of its Basic
/// credentials (never the password), or that it carried a token.
fn claimed(parts: &Parts) -> Actor {
    let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Actor {
            kind: "anonymous",
            name: None,
        };
    };
    if bearer_token(value).is_some() {
        return Actor {
            kind: "unknown",
            name: None,
        };
    }
    Actor {
        kind: "claimed",
        name: basic_credentials(value).map(|(user, _)| user),
    }
}
