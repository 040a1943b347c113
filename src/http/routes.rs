//! The `/v2/` route table in one place.
//!
//! Repository names contain `/`, so a path cannot be matched with one path
//! parameter: it is parsed from the right, where the last segments name the
//! resource, and the rest is the repository name.
//!
//! Berth's extensions live under `/v2/<name>/_berth/…`: the distribution-spec
//! reserves path components starting with `_` for extensions, and no
//! repository name component can start with one, so they never shadow a
//! spec route.

/// A `/v2/<rest>` path, before its name and reference are validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Catalog,
    UploadStart {
        name: &'a str,
    },
    Upload {
        name: &'a str,
        id: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Tags {
        name: &'a str,
    },
    Referrers {
        name: &'a str,
        digest: &'a str,
    },
    /// `…/_berth/tags/<tag>/history`
    TagHistory {
        name: &'a str,
        tag: &'a str,
    },
    /// `…/_berth/tags/<tag>/rollback`
    TagRollback {
        name: &'a str,
        tag: &'a str,
    },
}

/// Parses what follows `/v2/`.
pub fn parse(rest: &str) -> Option<Route<'_>> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart { name });
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(route) = extension(head, last) {
        return Some(route);
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload { name, id: last });
    }
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "blobs" => Some(Route::Blob { name, digest: last }),
        "manifests" => Some(Route::Manifest {
            name,
            reference: last,
        }),
        "referrers" => Some(Route::Referrers { name, digest: last }),
        _ => None,
    }
}

/// `<name>/_berth/tags/<tag>/<last>`; checked before the spec's routes, whose
/// names cannot contain `_berth`, so a tag named like a resource (`blobs`)
/// stays a tag.
fn extension<'a>(head: &'a str, last: &str) -> Option<Route<'a>> {
    let (head, tag) = head.rsplit_once('/')?;
    let name = head.strip_suffix("/_berth/tags")?;
    match last {
        "history" => Some(Route::TagHistory { name, tag }),
        "rollback" => Some(Route::TagRollback { name, tag }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_the_right() {
        assert_eq!(
            parse("a/b/blobs/uploads/"),
            Some(Route::UploadStart { name: "a/b" })
        );
        assert_eq!(
            parse("blobs/blobs/uploads/x"),
            Some(Route::Upload {
                name: "blobs",
                id: "x"
            })
        );
        assert_eq!(
            parse("a/manifests/manifests/latest"),
            Some(Route::Manifest {
                name: "a/manifests",
                reference: "latest"
            })
        );
        assert_eq!(parse("a/tags/list"), Some(Route::Tags { name: "a" }));
        assert_eq!(
            parse("a/referrers/sha256:x"),
            Some(Route::Referrers {
                name: "a",
                digest: "sha256:x"
            })
        );
        assert_eq!(parse("_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse("a/b/_berth/tags/v1/history"),
            Some(Route::TagHistory {
                name: "a/b",
                tag: "v1"
            })
        );
        assert_eq!(
            parse("a/_berth/tags/blobs/rollback"),
            Some(Route::TagRollback {
                name: "a",
                tag: "blobs"
            })
        );
        assert_eq!(parse("a/_berth/tags/v1/other"), None);
        assert_eq!(parse("a/unknown/x"), None);
        assert_eq!(parse("nothing"), None);
    }
}
