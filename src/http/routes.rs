//! The `/v2/` route table, in one place: for each resource and method, the
//! handler and the right it needs. Authorisation derives what a request
//! needs from the row ([`Route::need`]); dispatch calls the row's handler.
//! A new endpoint is one row.
//!
//! Repository names contain `/`, so a path cannot be matched with one path
//! parameter: it is parsed from the right, where the last segments name the
//! resource, and the rest is the repository name. The name is validated once,
//! here, after the method is known to fit the resource (an unsupported
//! method is 405 whatever the name), and handlers get a [`RepositoryName`].
//! The last segment (upload id, digest, reference, tag) stays text: each
//! handler parses it with the error code its endpoint calls for.
//!
//! Berth's extensions live under `/v2/<name>/_berth/…`: the distribution-spec
//! reserves path components starting with `_` for extensions, and no
//! repository name component can start with one, so they never shadow a
//! spec route.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;

use super::auth::{Caller, Need};
use super::{
    blobs, catalog, manifests, referrers, repositories, repository_name, robots, settings,
    tag_history, tags, uploads, usage, ApiError, ApiResult,
};
use crate::auth::{Action, Actions};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::Registry;

/// What a `/v2/` path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Catalog,
    /// `<name>/blobs/uploads/`
    UploadStart,
    /// `<name>/blobs/uploads/<id>`
    Upload,
    /// `<name>/blobs/<digest>`
    Blob,
    /// `<name>/manifests/<reference>`
    Manifest,
    /// `<name>/tags/list`
    Tags,
    /// `<name>/referrers/<digest>`
    Referrers,
    /// `<name>/_berth/tags/<tag>/history`
    TagHistory,
    /// `<name>/_berth/tags/<tag>/rollback`
    TagRollback,
    /// `<name>/_berth/usage`
    Usage,
    /// `<name>/_berth/settings`
    Settings,
    /// `<name>/_berth/tags`
    TagDetails,
    /// `_berth/repositories`
    Repositories,
    /// `_berth/namespaces`
    Namespaces,
    /// `_berth/namespaces/<namespace>`
    Namespace,
    /// `_berth/robots`
    Robots,
    /// `_berth/robots/<robot>`
    Robot,
    /// `_berth/robots/<robot>/secret`
    RobotSecret,
}

impl Resource {
    /// The resource's kind as metrics, traces and logs name it (never a
    /// path: repository names would make the names unbounded).
    pub fn label(self) -> &'static str {
        match self {
            Resource::Catalog | Resource::Repositories => "catalog",
            Resource::UploadStart | Resource::Upload => "upload",
            Resource::Blob => "blob",
            Resource::Manifest => "manifest",
            Resource::Tags | Resource::TagDetails => "tags",
            Resource::Referrers => "referrers",
            Resource::TagHistory | Resource::TagRollback => "tag_history",
            Resource::Usage => "usage",
            Resource::Settings => "settings",
            Resource::Namespaces | Resource::Namespace => "namespaces",
            Resource::Robots | Resource::Robot | Resource::RobotSecret => "robots",
        }
    }
}

/// A `/v2/<rest>` path split into its resource, repository name and last
/// segment, before anything is validated (`name` and `last` are empty where
/// the resource has none).
#[derive(Debug, PartialEq, Eq)]
pub struct Path<'a> {
    pub resource: Resource,
    pub name: &'a str,
    pub last: &'a str,
}

/// What a repository endpoint's handler is given.
pub struct Call<'a> {
    pub registry: &'a Registry,
    pub caller: &'a Caller,
    pub name: &'a RepositoryName,
    /// The path's last segment: upload id, digest, reference or tag.
    pub last: &'a str,
    pub parts: &'a Parts,
    pub body: Body,
}

/// What a signed-in endpoint's handler is given.
pub struct AccountCall<'a> {
    pub registry: &'a Registry,
    pub caller: &'a Caller,
    /// The path's last segment (a robot name), unvalidated.
    pub last: &'a str,
    pub body: Body,
}

type RepositoryHandler = for<'a> fn(Call<'a>) -> BoxFuture<'a, ApiResult>;
type AccountHandler = for<'a> fn(AccountCall<'a>) -> BoxFuture<'a, ApiResult>;
type RegistryHandler = for<'a> fn(&'a Registry, &'a Caller, &'a Parts) -> BoxFuture<'a, ApiResult>;

/// What a row does, and the right it needs.
pub enum Endpoint {
    /// About the registry as a whole (the catalog): needs the catalog right.
    Registry(RegistryHandler),
    /// About one repository: needs every one of the actions on it.
    Repository(Actions, RepositoryHandler),
    /// Open to every caller, whose rights the handler applies itself (a
    /// listing filtered to what the caller may pull).
    Open(RegistryHandler),
    /// Administration of the registry as a whole: admins only.
    Admin(RegistryHandler),
    /// Administration of a namespace (its name in the path, validated as a
    /// repository name): admins only.
    AdminOf(RepositoryHandler),
    /// Accounts (robots): any signed-in caller, whose rights over each
    /// account the handler decides.
    SignedIn(AccountHandler),
}

pub struct Row {
    pub resource: Resource,
    pub method: Method,
    pub endpoint: Endpoint,
}

const PULL: Actions = Actions::only(Action::Pull);
const PUSH: Actions = Actions::only(Action::Push);
const DELETE: Actions = Actions::only(Action::Delete);
const MANAGE: Actions = Actions::only(Action::Manage);

const fn row(
    resource: Resource,
    method: Method,
    actions: Actions,
    handler: RepositoryHandler,
) -> Row {
    Row {
        resource,
        method,
        endpoint: Endpoint::Repository(actions, handler),
    }
}

/// Every `/v2/` endpoint. Reading needs `pull`; writing (every upload
/// request, cancelling included, and manifest `PUT`) needs `push`; deleting
/// a manifest or blob needs `delete`; rolling a tag back moves it and takes
/// the current image away from it, as a delete of the tag would: `push` and
/// `delete`. A repository's settings are read with `pull` and changed with
/// `manage`; namespaces are the admins'; robot accounts are for signed-in
/// callers, each to the extent of what it manages (`http/robots.rs`).
pub static TABLE: [Row; 31] = [
    Row {
        resource: Resource::Catalog,
        method: Method::GET,
        endpoint: Endpoint::Registry(|r, caller, parts| Box::pin(catalog::list(r, caller, parts))),
    },
    row(Resource::UploadStart, Method::POST, PUSH, |c| {
        Box::pin(uploads::start(
            c.registry, c.caller, c.name, c.parts, c.body,
        ))
    }),
    row(Resource::Upload, Method::GET, PUSH, |c| {
        Box::pin(uploads::status(c.registry, c.name, c.last))
    }),
    row(Resource::Upload, Method::PATCH, PUSH, |c| {
        Box::pin(uploads::patch(c.registry, c.name, c.last, c.parts, c.body))
    }),
    row(Resource::Upload, Method::PUT, PUSH, |c| {
        Box::pin(uploads::finish(c.registry, c.name, c.last, c.parts, c.body))
    }),
    row(Resource::Upload, Method::DELETE, PUSH, |c| {
        Box::pin(uploads::cancel(c.registry, c.name, c.last))
    }),
    row(Resource::Blob, Method::GET, PULL, |c| {
        Box::pin(blobs::get(c.registry, c.name, c.last, c.parts, true))
    }),
    row(Resource::Blob, Method::HEAD, PULL, |c| {
        Box::pin(blobs::get(c.registry, c.name, c.last, c.parts, false))
    }),
    row(Resource::Blob, Method::DELETE, DELETE, |c| {
        Box::pin(blobs::delete(c.registry, c.name, c.last))
    }),
    row(Resource::Manifest, Method::GET, PULL, |c| {
        Box::pin(manifests::get(c.registry, c.name, c.last, c.parts, true))
    }),
    row(Resource::Manifest, Method::HEAD, PULL, |c| {
        Box::pin(manifests::get(c.registry, c.name, c.last, c.parts, false))
    }),
    row(Resource::Manifest, Method::PUT, PUSH, |c| {
        Box::pin(manifests::put(c.registry, c.name, c.last, c.parts, c.body))
    }),
    row(Resource::Manifest, Method::DELETE, DELETE, |c| {
        Box::pin(manifests::delete(c.registry, c.name, c.last))
    }),
    row(Resource::Tags, Method::GET, PULL, |c| {
        Box::pin(tags::list(c.registry, c.name, c.parts))
    }),
    row(Resource::TagDetails, Method::GET, PULL, |c| {
        Box::pin(tags::details(c.registry, c.name, c.parts))
    }),
    row(Resource::Referrers, Method::GET, PULL, |c| {
        Box::pin(referrers::list(c.registry, c.name, c.last, c.parts))
    }),
    row(Resource::TagHistory, Method::GET, PULL, |c| {
        Box::pin(tag_history::history(c.registry, c.name, c.last, c.parts))
    }),
    row(
        Resource::TagRollback,
        Method::POST,
        PUSH.and(Action::Delete),
        |c| Box::pin(tag_history::rollback(c.registry, c.name, c.last, c.parts)),
    ),
    row(Resource::Usage, Method::GET, PULL, |c| {
        Box::pin(usage::get(c.registry, c.name))
    }),
    row(Resource::Settings, Method::GET, PULL, |c| {
        Box::pin(settings::get(c.registry, c.caller, c.name))
    }),
    row(Resource::Settings, Method::PUT, MANAGE, |c| {
        Box::pin(settings::put(c.registry, c.caller, c.name, c.body))
    }),
    row(Resource::Settings, Method::DELETE, MANAGE, |c| {
        Box::pin(settings::delete(c.registry, c.name))
    }),
    Row {
        resource: Resource::Repositories,
        method: Method::GET,
        endpoint: Endpoint::Open(|r, caller, parts| Box::pin(repositories::list(r, caller, parts))),
    },
    Row {
        resource: Resource::Namespaces,
        method: Method::GET,
        endpoint: Endpoint::Admin(|r, _, _| Box::pin(settings::list_namespaces(r))),
    },
    Row {
        resource: Resource::Namespace,
        method: Method::GET,
        endpoint: Endpoint::AdminOf(|c| Box::pin(settings::get_namespace(c.registry, c.name))),
    },
    Row {
        resource: Resource::Namespace,
        method: Method::PUT,
        endpoint: Endpoint::AdminOf(|c| {
            Box::pin(settings::put_namespace(
                c.registry, c.caller, c.name, c.body,
            ))
        }),
    },
    Row {
        resource: Resource::Namespace,
        method: Method::DELETE,
        endpoint: Endpoint::AdminOf(|c| Box::pin(settings::delete_namespace(c.registry, c.name))),
    },
    Row {
        resource: Resource::Robots,
        method: Method::GET,
        endpoint: Endpoint::SignedIn(|c| Box::pin(robots::list(c.registry, c.caller))),
    },
    Row {
        resource: Resource::Robots,
        method: Method::POST,
        endpoint: Endpoint::SignedIn(|c| Box::pin(robots::create(c.registry, c.caller, c.body))),
    },
    Row {
        resource: Resource::Robot,
        method: Method::DELETE,
        endpoint: Endpoint::SignedIn(|c| Box::pin(robots::revoke(c.registry, c.caller, c.last))),
    },
    Row {
        resource: Resource::RobotSecret,
        method: Method::POST,
        endpoint: Endpoint::SignedIn(|c| {
            Box::pin(robots::new_secret(c.registry, c.caller, c.last))
        }),
    },
];

/// A request matched to its row, its repository name validated.
pub struct Route<'a> {
    pub row: &'static Row,
    /// `None` only for [`Endpoint::Registry`] rows.
    pub name: Option<RepositoryName>,
    pub last: &'a str,
}

/// Why a request matched no row.
pub enum Unrouted {
    /// No `/v2/` resource has this path: a plain 404.
    NotFound,
    /// The resource exists but not with this method: 405 `UNSUPPORTED`.
    MethodNotAllowed(Method),
    /// 400 `NAME_INVALID`.
    InvalidName(ApiError),
}

impl IntoResponse for Unrouted {
    fn into_response(self) -> Response {
        match self {
            Unrouted::NotFound => super::not_found_response(),
            Unrouted::MethodNotAllowed(method) => ApiError::from(RegistryError::with_detail(
                ErrorCode::Unsupported,
                format!("{method} is not supported on this resource"),
            ))
            .into_response(),
            Unrouted::InvalidName(error) => error.into_response(),
        }
    }
}

/// The row for `method` on `/v2/<rest>`, with the name validated.
pub fn resolve<'a>(rest: &'a str, method: &Method) -> Result<Route<'a>, Unrouted> {
    let path = parse(rest).ok_or(Unrouted::NotFound)?;
    let row = TABLE
        .iter()
        .find(|row| row.resource == path.resource && row.method == *method)
        .ok_or_else(|| Unrouted::MethodNotAllowed(method.clone()))?;
    let name = match row.endpoint {
        Endpoint::Registry(_) | Endpoint::Admin(_) | Endpoint::Open(_) | Endpoint::SignedIn(_) => {
            None
        }
        Endpoint::Repository(..) | Endpoint::AdminOf(_) => {
            Some(repository_name(path.name).map_err(Unrouted::InvalidName)?)
        }
    };
    Ok(Route {
        row,
        name,
        last: path.last,
    })
}

impl Route<'_> {
    /// What the request needs of its caller: the row's right.
    pub fn need(&self) -> Need {
        match (&self.row.endpoint, &self.name) {
            (Endpoint::Repository(actions, _), Some(name)) => Need::Repository {
                name: name.clone(),
                actions: *actions,
            },
            (Endpoint::Admin(_) | Endpoint::AdminOf(_), _) => Need::Admin,
            (Endpoint::Open(_), _) => Need::Nothing,
            (Endpoint::SignedIn(_), _) => Need::SignedIn,
            _ => Need::Catalog,
        }
    }

    /// Whether the request writes (needs `push`): an upload, a manifest
    /// push, a rollback.
    pub fn writes(&self) -> bool {
        matches!(&self.row.endpoint, Endpoint::Repository(actions, _) if actions.contains(Action::Push))
    }

    /// Whether the request starts an upload, which may carry a mount.
    pub fn starts_upload(&self) -> bool {
        self.row.resource == Resource::UploadStart
    }

    /// Runs the row's handler.
    pub async fn call(
        &self,
        registry: &Registry,
        caller: &Caller,
        parts: &Parts,
        body: Body,
    ) -> ApiResult {
        match (&self.row.endpoint, &self.name) {
            (
                Endpoint::Registry(handler) | Endpoint::Admin(handler) | Endpoint::Open(handler),
                _,
            ) => handler(registry, caller, parts).await,
            (Endpoint::Repository(_, handler) | Endpoint::AdminOf(handler), Some(name)) => {
                handler(Call {
                    registry,
                    caller,
                    name,
                    last: self.last,
                    parts,
                    body,
                })
                .await
            }
            (Endpoint::SignedIn(handler), _) => {
                handler(AccountCall {
                    registry,
                    caller,
                    last: self.last,
                    body,
                })
                .await
            }
            (Endpoint::Repository(..) | Endpoint::AdminOf(_), None) => {
                unreachable!("resolve names every repository and namespace row")
            }
        }
    }
}

/// The resource a request path (`/v2/...`) names, if any: for what looks
/// at requests before routing (metrics, limits).
pub fn resource_of(path: &str) -> Option<Resource> {
    parse(path.strip_prefix("/v2/")?).map(|p| p.resource)
}

/// Parses what follows `/v2/`.
pub fn parse(rest: &str) -> Option<Path<'_>> {
    let path = |resource, name, last| {
        Some(Path {
            resource,
            name,
            last,
        })
    };
    if rest == "_catalog" {
        return path(Resource::Catalog, "", "");
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return path(Resource::UploadStart, name, "");
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return path(Resource::Tags, name, "");
    }
    if let Some(name) = rest.strip_suffix("/_berth/usage") {
        return path(Resource::Usage, name, "");
    }
    if let Some(name) = rest.strip_suffix("/_berth/settings") {
        return path(Resource::Settings, name, "");
    }
    if let Some(name) = rest.strip_suffix("/_berth/tags") {
        return path(Resource::TagDetails, name, "");
    }
    // No repository name starts with `_`: these never shadow one.
    if rest == "_berth/repositories" {
        return path(Resource::Repositories, "", "");
    }
    if rest == "_berth/namespaces" || rest == "_berth/namespaces/" {
        return path(Resource::Namespaces, "", "");
    }
    if let Some(name) = rest.strip_prefix("_berth/namespaces/") {
        return path(Resource::Namespace, name, "");
    }
    if rest == "_berth/robots" {
        return path(Resource::Robots, "", "");
    }
    if let Some(robot) = rest.strip_prefix("_berth/robots/") {
        return match robot.strip_suffix("/secret") {
            Some(robot) if !robot.contains('/') => path(Resource::RobotSecret, "", robot),
            None if !robot.contains('/') => path(Resource::Robot, "", robot),
            _ => None,
        };
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(route) = extension(head, last) {
        return Some(route);
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return path(Resource::Upload, name, last);
    }
    let (name, kind) = head.rsplit_once('/')?;
    let resource = match kind {
        "blobs" => Resource::Blob,
        "manifests" => Resource::Manifest,
        "referrers" => Resource::Referrers,
        _ => return None,
    };
    path(resource, name, last)
}

/// `<name>/_berth/tags/<tag>/<last>`; checked before the spec's routes, whose
/// names cannot contain `_berth`, so a tag named like a resource (`blobs`)
/// stays a tag.
fn extension<'a>(head: &'a str, last: &str) -> Option<Path<'a>> {
    let (head, tag) = head.rsplit_once('/')?;
    let name = head.strip_suffix("/_berth/tags")?;
    let resource = match last {
        "history" => Resource::TagHistory,
        "rollback" => Resource::TagRollback,
        _ => return None,
    };
    Some(Path {
        resource,
        name,
        last: tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Action;

    fn path<'a>(resource: Resource, name: &'a str, last: &'a str) -> Option<Path<'a>> {
        Some(Path {
            resource,
            name,
            last,
        })
    }

    #[test]
    fn parses_from_the_right() {
        use Resource::*;
        assert_eq!(parse("a/b/blobs/uploads/"), path(UploadStart, "a/b", ""));
        assert_eq!(parse("blobs/blobs/uploads/x"), path(Upload, "blobs", "x"));
        assert_eq!(
            parse("a/manifests/manifests/latest"),
            path(Manifest, "a/manifests", "latest")
        );
        assert_eq!(parse("a/tags/list"), path(Tags, "a", ""));
        assert_eq!(
            parse("a/referrers/sha256:x"),
            path(Referrers, "a", "sha256:x")
        );
        assert_eq!(parse("_catalog"), path(Catalog, "", ""));
        assert_eq!(
            parse("a/b/_berth/tags/v1/history"),
            path(TagHistory, "a/b", "v1")
        );
        assert_eq!(
            parse("a/_berth/tags/blobs/rollback"),
            path(TagRollback, "a", "blobs")
        );
        assert_eq!(parse("a/_berth/tags/v1/other"), None);
        assert_eq!(parse("a/b/_berth/settings"), path(Settings, "a/b", ""));
        assert_eq!(parse("_berth/namespaces"), path(Namespaces, "", ""));
        assert_eq!(parse("_berth/namespaces/a/b"), path(Namespace, "a/b", ""));
        assert_eq!(parse("_berth/robots"), path(Robots, "", ""));
        assert_eq!(parse("_berth/robots/ci"), path(Robot, "", "ci"));
        assert_eq!(
            parse("_berth/robots/ci/secret"),
            path(RobotSecret, "", "ci")
        );
        assert_eq!(parse("_berth/robots/a/b"), None);
        assert_eq!(parse("a/unknown/x"), None);
        assert_eq!(parse("nothing"), None);
    }

    #[test]
    fn each_resource_and_method_has_at_most_one_row() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    a.resource != b.resource || a.method != b.method,
                    "{:?} {} twice",
                    a.resource,
                    a.method
                );
            }
        }
    }

    #[test]
    fn an_unsupported_method_is_405_before_the_name_is_checked() {
        assert!(matches!(
            resolve("A/manifests/v1", &Method::PATCH),
            Err(Unrouted::MethodNotAllowed(_))
        ));
        assert!(matches!(
            resolve("A/manifests/v1", &Method::GET),
            Err(Unrouted::InvalidName(_))
        ));
        assert!(matches!(
            resolve("a/unknown/v1", &Method::GET),
            Err(Unrouted::NotFound)
        ));
        let Ok(route) = resolve("a/b/manifests/v1", &Method::GET) else {
            panic!("a valid manifest path is routed");
        };
        assert_eq!(route.name.as_ref().map(RepositoryName::as_str), Some("a/b"));
        assert_eq!(route.last, "v1");
    }

    fn need(path: &str, method: Method) -> Option<Need> {
        resolve(path, &method).ok().map(|route| route.need())
    }

    fn on(name: &str, action: Action) -> Option<Need> {
        Some(Need::Repository {
            name: RepositoryName::parse(name).unwrap(),
            actions: action.into(),
        })
    }

    #[test]
    fn reads_need_pull_writes_push_and_deletes_delete() {
        let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let blob = format!("a/b/blobs/{digest}");
        let referrers = format!("a/b/referrers/{digest}");
        for (path, method, expected) in [
            ("a/b/manifests/v1", Method::GET, on("a/b", Action::Pull)),
            ("a/b/manifests/v1", Method::HEAD, on("a/b", Action::Pull)),
            ("a/b/manifests/v1", Method::PUT, on("a/b", Action::Push)),
            (
                "a/b/manifests/v1",
                Method::DELETE,
                on("a/b", Action::Delete),
            ),
            (&blob, Method::GET, on("a/b", Action::Pull)),
            (&blob, Method::HEAD, on("a/b", Action::Pull)),
            (&blob, Method::DELETE, on("a/b", Action::Delete)),
            ("a/b/tags/list", Method::GET, on("a/b", Action::Pull)),
            (&referrers, Method::GET, on("a/b", Action::Pull)),
            ("a/b/blobs/uploads/", Method::POST, on("a/b", Action::Push)),
            ("a/b/blobs/uploads/id", Method::GET, on("a/b", Action::Push)),
            (
                "a/b/blobs/uploads/id",
                Method::PATCH,
                on("a/b", Action::Push),
            ),
            ("a/b/blobs/uploads/id", Method::PUT, on("a/b", Action::Push)),
            (
                "a/b/blobs/uploads/id",
                Method::DELETE,
                on("a/b", Action::Push),
            ),
            (
                "a/b/_berth/tags/v1/history",
                Method::GET,
                on("a/b", Action::Pull),
            ),
            (
                "a/b/_berth/tags/v1/rollback",
                Method::POST,
                Some(Need::Repository {
                    name: RepositoryName::parse("a/b").unwrap(),
                    actions: Actions::from_iter([Action::Push, Action::Delete]),
                }),
            ),
            ("a/b/_berth/tags/v1/rollback", Method::GET, None),
            ("_catalog", Method::GET, Some(Need::Catalog)),
            ("a/b/manifests/v1", Method::PATCH, None),
        ] {
            assert_eq!(need(path, method.clone()), expected, "{method} {path}");
        }
    }
}
