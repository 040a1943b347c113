//! The `/v2/` route table in one place.
//!
//! Repository names contain `/`, so a path cannot be matched with one path
//! parameter: it is parsed from the right, where the last segments name the
//! resource, and the rest is the repository name.

/// A `/v2/<rest>` path, before its name and reference are validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Catalog,
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
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
        assert_eq!(parse("a/unknown/x"), None);
        assert_eq!(parse("nothing"), None);
    }
}
