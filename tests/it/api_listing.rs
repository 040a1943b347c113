//! Listings: tags (end-8a, end-8b), the catalog, and referrers (end-12a, end-12b).

use crate::support::backend::on_s3;
use crate::support::{
    error_code, expect_status, expect_status_of, get, sha256_digest, store, uncached_on_s3,
    TestRegistry, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
const SIGNATURE_TYPE: &str = "application/vnd.example.signature.v1";
const SBOM_CONFIG_TYPE: &str = "application/vnd.example.sbom.config.v1+json";

// ---------------------------------------------------------------------------
// helpers

fn link(resp: &Response) -> Option<String> {
    resp.headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The path inside `<…>; rel="next"`.
fn next_path(link: &str) -> String {
    let (target, rel) = link.split_once(';').expect("<url>; rel=\"next\"");
    assert_eq!(rel.trim(), "rel=\"next\"");
    let target = target.trim();
    assert!(target.starts_with('<') && target.ends_with('>'), "{link}");
    let target = &target[1..target.len() - 1];
    // Absolute links are allowed too; keep what the harness can request.
    match target.find("/v2/") {
        Some(i) => target[i..].to_owned(),
        None => panic!("link {link} does not point into /v2/"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// One image in `name`, then the same manifest under every tag in `tags`.
async fn tag_one_image(registry: &TestRegistry, name: &str, tags: &[&str]) {
    let (manifest, _) = registry.push_image(name, tags[0], b"layer").await;
    for tag in &tags[1..] {
        let resp = registry
            .put_manifest(name, tag, OCI_MANIFEST, &manifest)
            .await;
        expect_status_of(resp, StatusCode::CREATED, &format!("tag {tag}")).await;
    }
}

/// Follows `Link` headers from `first` until none is left; returns every
/// page's entries under `key`.
async fn follow_pages(registry: &TestRegistry, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        assert!(pages.len() < 100, "pagination does not end");
        let resp = get(registry, &path).await;
        let resp = expect_status(resp, StatusCode::OK).await;
        next = link(&resp).map(|l| next_path(&l));
        let body: Value = resp.json().await.unwrap();
        pages.push(strings(&body[key]));
    }
    pages
}

/// Pushes the empty config/layer blob `{}` into `name`.
async fn push_empty_blob(registry: &TestRegistry, name: &str) {
    assert_eq!(registry.push_blob(name, b"{}").await, EMPTY_DIGEST);
}

/// An artifact manifest (empty config, `artifactType`) referring to `subject`.
fn signature_manifest(subject: &str, subject_size: usize, annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": annotations,
    }))
    .unwrap()
}

async fn put_by_digest(registry: &TestRegistry, name: &str, manifest: &[u8]) -> String {
    let digest = sha256_digest(manifest);
    let resp = registry
        .put_manifest(name, &digest, OCI_MANIFEST, manifest)
        .await;
    expect_status(resp, StatusCode::CREATED).await;
    digest
}

async fn referrers(registry: &TestRegistry, name: &str, digest: &str, query: &str) -> Response {
    get(registry, &format!("/v2/{name}/referrers/{digest}{query}")).await
}

/// Asserts the response is an OCI index and returns its `manifests`.
async fn referrer_descriptors(resp: Response) -> Vec<Value> {
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(resp.headers()["content-type"], OCI_INDEX);
    let index: Value = resp.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("manifests must be an array: {index}"))
        .clone()
}

// ---------------------------------------------------------------------------
// tags

#[tokio::test]
async fn tags_are_listed_in_lexical_order() {
    let registry = TestRegistry::start().await;
    tag_one_image(
        &registry,
        "team/app",
        &["b", "a", "10", "9", "A", "_z", "a-1"],
    )
    .await;
    let resp = get(&registry, "/v2/team/app/tags/list").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(link(&resp).is_none(), "no Link without n");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "team/app");
    // Byte-wise order: digits < upper case < '_' < lower case; a prefix first.
    assert_eq!(
        strings(&body["tags"]),
        ["10", "9", "A", "_z", "a", "a-1", "b"]
    );
}

async fn listed_tags(registry: &TestRegistry, name: &str) -> Vec<String> {
    let body: Value = get(registry, &format!("/v2/{name}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    strings(&body["tags"])
}

#[tokio::test]
async fn tags_list_reflects_tags_added_and_deleted_after_a_listing() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    tag_one_image(&registry, "team/app", &["a", "b"]).await;
    assert_eq!(listed_tags(&registry, "team/app").await, ["a", "b"]);
    tag_one_image(&registry, "team/app", &["c"]).await;
    assert_eq!(listed_tags(&registry, "team/app").await, ["a", "b", "c"]);
    let resp = registry
        .client
        .delete(registry.url("/v2/team/app/manifests/a"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::ACCEPTED).await;
    assert_eq!(listed_tags(&registry, "team/app").await, ["b", "c"]);
}

#[tokio::test]
async fn tags_page_has_a_link_to_the_next_page() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "team/app", &["e", "d", "c", "b", "a"]).await;
    let resp = get(&registry, "/v2/team/app/tags/list?n=2").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        link(&resp).as_deref(),
        Some("</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["a", "b"]);

    let resp = get(&registry, "/v2/team/app/tags/list?n=2&last=b").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        link(&resp).as_deref(),
        Some("</v2/team/app/tags/list?n=2&last=d>; rel=\"next\"")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["c", "d"]);
}

#[tokio::test]
async fn following_tag_links_returns_every_tag_exactly_once() {
    let registry = TestRegistry::start().await;
    let mut all: Vec<String> = (0..11).map(|i| format!("v{i}")).collect();
    all.push("latest".into());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    tag_one_image(&registry, "paged", &refs).await;

    let pages = follow_pages(&registry, "/v2/paged/tags/list?n=5", "tags").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 2],
        "{pages:?}"
    );
    let listed: Vec<String> = pages.concat();
    all.sort();
    assert_eq!(listed, all);
}

#[tokio::test]
async fn last_tag_page_has_no_link() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "team/app", &["a", "b", "c", "d", "e"]).await;
    let resp = get(&registry, "/v2/team/app/tags/list?n=2&last=c").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["d", "e"]);

    // A page that ends exactly at the last tag has no Link either.
    let resp = get(&registry, "/v2/team/app/tags/list?n=5").await;
    assert!(link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn tags_after_a_last_that_is_not_a_tag_start_after_it() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "team/app", &["a", "c", "e"]).await;
    let resp = get(&registry, "/v2/team/app/tags/list?last=b").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["c", "e"]);
}

#[tokio::test]
async fn tags_list_with_n_zero_is_empty() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "team/app", &["a", "b"]).await;
    let resp = get(&registry, "/v2/team/app/tags/list?n=0").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "team/app");
    assert!(strings(&body["tags"]).is_empty(), "{body}");
}

#[tokio::test]
async fn tags_list_with_a_non_numeric_n_is_rejected() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "team/app", &["a"]).await;
    for n in ["abc", "-1", "1.5"] {
        let resp = get(&registry, &format!("/v2/team/app/tags/list?n={n}")).await;
        let resp = expect_status_of(resp, StatusCode::BAD_REQUEST, &format!("n={n}")).await;
        error_code(resp).await;
    }
}

#[tokio::test]
async fn tags_list_of_an_unknown_repository_is_name_unknown() {
    let registry = TestRegistry::start().await;
    tag_one_image(&registry, "known", &["a"]).await;
    let resp = get(&registry, "/v2/unknown/tags/list").await;
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn tags_list_of_an_invalid_name_is_name_invalid() {
    let registry = TestRegistry::start().await;
    let resp = get(&registry, "/v2/Bad/Name/tags/list").await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
}

// ---------------------------------------------------------------------------
// catalog

#[tokio::test]
async fn catalog_lists_repositories_lexically_including_nested_names() {
    let registry = TestRegistry::start().await;
    for name in ["b", "a/b/c", "ab", "a", "a-b", "a/b"] {
        registry.push_image(name, "latest", name.as_bytes()).await;
    }
    catalog_settled(&registry, &["a", "a-b", "a/b", "a/b/c", "ab", "b"]).await;
    let resp = get(&registry, "/v2/_catalog").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert!(link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        strings(&body["repositories"]),
        ["a", "a-b", "a/b", "a/b/c", "ab", "b"]
    );
}

#[tokio::test]
async fn catalog_pagination_follows_link_until_exhausted() {
    let registry = TestRegistry::start().await;
    let names = ["b", "a/b/c", "ab", "a", "a-b", "a/b", "c/d"];
    for name in names {
        registry.push_image(name, "latest", name.as_bytes()).await;
    }
    catalog_settled(&registry, &["a", "a-b", "a/b", "a/b/c", "ab", "b", "c/d"]).await;
    let resp = get(&registry, "/v2/_catalog?n=2").await;
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        link(&resp).as_deref(),
        Some("</v2/_catalog?n=2&last=a-b>; rel=\"next\"")
    );

    let pages = follow_pages(&registry, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 2, 1],
        "{pages:?}"
    );
    assert_eq!(
        pages.concat(),
        ["a", "a-b", "a/b", "a/b/c", "ab", "b", "c/d"]
    );
}

/// `count` repository names that nest and use every separator, so that their
/// lexical order is not their push order.
fn many_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 3 {
            0 => format!("n{:03}", count - i),
            1 => format!("n{:03}/app", count - i),
            _ => format!("n{:03}-x/y.z", count - i),
        })
        .collect()
}

/// Pushes an image into each of `names`, a few at a time. The blobs are
/// pushed once and mounted into each repository, as clients do.
async fn push_repositories(registry: &TestRegistry, names: &[String]) {
    let (manifest, _) = registry.push_image("seed", "latest", b"layer").await;
    let blobs: Vec<String> = {
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        std::iter::once(&m["config"])
            .chain(m["layers"].as_array().unwrap())
            .map(|d| d["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    for chunk in names.chunks(8) {
        let pushes = chunk.iter().map(|name| {
            let (manifest, blobs) = (&manifest, &blobs);
            async move {
                for digest in blobs {
                    let url = registry.url(&format!(
                        "/v2/{name}/blobs/uploads/?mount={digest}&from=seed"
                    ));
                    let resp = registry.client.post(url).send().await.unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED, "mount into {name}");
                }
                let resp = registry
                    .put_manifest(name, "latest", OCI_MANIFEST, manifest)
                    .await;
                assert_eq!(resp.status(), StatusCode::CREATED, "manifest of {name}");
            }
        });
        futures::future::join_all(pushes).await;
    }
}

async fn catalog(registry: &TestRegistry) -> Vec<String> {
    let resp = get(registry, "/v2/_catalog").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    strings(&body["repositories"])
}

/// [`crate::support::catalog_settled`] as the registry's own client.
async fn catalog_settled<S: AsRef<str>>(registry: &TestRegistry, expected: &[S]) {
    crate::support::catalog_settled(registry, &registry.client, expected).await;
}

/// Copies every object under `from` to `to` in the registry's store, as an
/// offline tool filling a data directory (or a bucket) would.
async fn copy_repository(registry: &TestRegistry, from: &str, to: &str) {
    let storage = registry.storage().await;
    store::copy_tree(storage.as_ref(), from, storage.as_ref(), to).await;
}

/// Long enough that no walk of the store happens during a test: what the
/// catalog shows then comes from the index and this process's writes.
const NO_REFRESH_MS: u64 = 600_000;

/// Short, so that a test can wait it out.
const SHORT_TTL_MS: u64 = 300;

#[tokio::test]
async fn catalog_pages_of_many_repositories_list_each_once_in_lexical_order() {
    let registry = TestRegistry::start().await;
    let mut names = many_names(150);
    push_repositories(&registry, &names).await;
    names.push("seed".to_owned());
    names.sort();
    catalog_settled(&registry, &names).await;

    let pages = follow_pages(&registry, "/v2/_catalog?n=40", "repositories").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [40, 40, 40, 31]
    );
    assert_eq!(pages.concat(), names);

    // `last` need not be a repository: the page starts after where it would sort.
    let resp = get(&registry, "/v2/_catalog?n=3&last=n050-").await;
    let body: Value = resp.json().await.unwrap();
    let after: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() > "n050-")
        .take(3)
        .cloned()
        .collect();
    assert_eq!(after, ["n050/app", "n051", "n052-x/y.z"]);
    assert_eq!(strings(&body["repositories"]), after);
    let resp = get(&registry, "/v2/_catalog?n=5&last=seed").await;
    assert!(link(&resp).is_none());
    let body: Value = resp.json().await.unwrap();
    assert!(strings(&body["repositories"]).is_empty());
}

#[tokio::test]
async fn a_repository_pushed_after_the_catalog_was_listed_appears_at_once() {
    let registry = TestRegistry::start_one_with(|c| c.cache_ttl_ms = NO_REFRESH_MS).await;
    registry.push_image("first", "latest", b"one").await;
    assert_eq!(catalog(&registry).await, ["first"]);
    registry.push_image("team/second", "v1", b"two").await;
    registry.push_image("a", "v1", b"three").await;
    assert_eq!(catalog(&registry).await, ["a", "first", "team/second"]);
}

#[tokio::test]
async fn a_repository_without_a_manifest_is_not_listed() {
    let registry = TestRegistry::start_one_with(|c| c.cache_ttl_ms = NO_REFRESH_MS).await;
    registry.push_image("image", "latest", b"one").await;
    assert_eq!(catalog(&registry).await, ["image"]);
    registry.push_blob("blobs-only", b"no manifest").await;
    assert_eq!(catalog(&registry).await, ["image"]);
}

#[tokio::test]
async fn pages_are_served_from_the_index_until_it_is_stale() {
    let registry = TestRegistry::start_one_with(|c| c.cache_ttl_ms = NO_REFRESH_MS).await;
    registry.push_image("a", "latest", b"one").await;
    assert_eq!(catalog(&registry).await, ["a"]);
    // Written behind the server's back: no page walks the store, so it is
    // not seen until the index is stale.
    copy_repository(&registry, "repositories/a", "repositories/offline").await;
    for _ in 0..3 {
        assert_eq!(catalog(&registry).await, ["a"]);
    }
}

#[tokio::test]
async fn a_repository_written_by_another_process_appears_after_the_staleness_bound() {
    let registry = TestRegistry::start_with(|c| c.cache_ttl_ms = SHORT_TTL_MS).await;
    registry.push_image("a", "latest", b"one").await;
    catalog_settled(&registry, &["a"]).await;
    copy_repository(&registry, "repositories/a", "repositories/offline/copy").await;
    // The bound is max(cache_ttl_ms, 10 × the last walk's duration); a walk
    // of two repositories takes well under 30 ms. The first page past it is
    // served from the index and starts a walk; a page after that walk lists it.
    tokio::time::sleep(std::time::Duration::from_millis(SHORT_TTL_MS + 100)).await;
    catalog(&registry).await;
    assert_eq!(
        catalog_once_walked(&registry, &["a", "offline/copy"]).await,
        ["a", "offline/copy"]
    );
    // The offline copy is a repository like any other.
    let resp = get(&registry, "/v2/offline/copy/manifests/latest").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_repository_whose_manifests_directory_is_emptied_leaves_the_catalog_at_once() {
    let registry = TestRegistry::start_one_with(|c| c.cache_ttl_ms = NO_REFRESH_MS).await;
    registry.push_image("keep", "latest", b"one").await;
    // Pushed by digest only: deleting its one manifest leaves `_manifests`
    // empty, and the store prunes it (a tag's directory would stay, and so
    // would the repository, as in Distribution).
    let push_untagged = || async {
        let config = registry.push_blob("drop", b"{}").await;
        let layer = registry.push_blob("drop", b"two").await;
        let manifest = crate::support::image_manifest(&config, 2, &[(layer, 3)]);
        put_by_digest(&registry, "drop", &manifest).await
    };
    let digest = push_untagged().await;
    assert_eq!(catalog(&registry).await, ["drop", "keep"]);
    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/drop/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let storage = registry.storage().await;
    assert!(
        store::objects(storage.as_ref(), "repositories/drop/_manifests")
            .await
            .is_empty()
    );
    assert_eq!(catalog(&registry).await, ["keep"]);
    // Pushed again, it is back.
    push_untagged().await;
    assert_eq!(catalog(&registry).await, ["drop", "keep"]);
}

#[tokio::test]
async fn a_repository_removed_by_another_process_leaves_after_the_staleness_bound() {
    let registry = TestRegistry::start_with(|c| c.cache_ttl_ms = SHORT_TTL_MS).await;
    registry.push_image("keep", "latest", b"one").await;
    registry.push_image("gone", "latest", b"two").await;
    catalog_settled(&registry, &["gone", "keep"]).await;
    let storage = registry.storage().await;
    storage.delete_all("repositories/gone").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(SHORT_TTL_MS + 100)).await;
    catalog(&registry).await;
    assert_eq!(catalog_once_walked(&registry, &["keep"]).await, ["keep"]);
}

/// The catalog once the background walk a stale page started has ended:
/// pages until it lists `expected`, for at most two seconds (a walk of a few
/// repositories takes milliseconds); what it lists last otherwise.
async fn catalog_once_walked(registry: &TestRegistry, expected: &[&str]) -> Vec<String> {
    if on_s3() {
        // Each replica walks for itself, a walk of the bucket taking longer.
        catalog_settled(registry, expected).await;
        return catalog(registry).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let listed = catalog(registry).await;
        if listed == expected || std::time::Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_data_directory_without_an_index_is_listed_from_its_first_page() {
    // A `registry:2` data directory: the layout only, nothing of Berth's.
    let source = TestRegistry::start().await;
    source.push_image("library/app", "latest", b"one").await;
    source.push_image("other", "v1", b"two").await;
    let from = source.storage().await;
    let served = TestRegistry::start_seeded(
        async |to| {
            for dir in ["repositories", "blobs"] {
                store::copy_tree(from.as_ref(), dir, to.as_ref(), dir).await;
            }
        },
        |c| c.cache_ttl_ms = NO_REFRESH_MS,
    )
    .await;
    assert_eq!(catalog(&served).await, ["library/app", "other"]);
}

#[tokio::test]
async fn the_catalog_filters_by_access_before_it_paginates() {
    let mut registry = TestRegistry::start_with_auth(
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        r#"
        challenge = "basic"
        admins = ["alice"]
        [[rules]]
        repositories = ["team-a/*"]
        users = { bob = ["pull"] }
        [catalog]
        authenticated = true
        "#,
    )
    .await;
    registry.client =
        crate::support::client_with_authorization(&crate::support::basic_auth("alice", "alice-pw"));
    // Visible and hidden repositories interleave in lexical order.
    let names: Vec<String> = (0..30)
        .map(|i| match i % 2 {
            0 => format!("team-a/r{i:02}"),
            _ => format!("team-a-{i:02}/hidden"),
        })
        .collect();
    push_repositories(&registry, &names).await;
    let mut all = names.clone();
    all.push("seed".to_owned());
    all.sort();
    catalog_settled(&registry, &all).await;

    let bob =
        crate::support::client_with_authorization(&crate::support::basic_auth("bob", "bob-pw"));
    let mut seen = Vec::new();
    let mut next = Some("/v2/_catalog?n=4".to_owned());
    while let Some(path) = next.take() {
        let resp = bob.get(registry.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        next = link(&resp).map(|l| next_path(&l));
        let body: Value = resp.json().await.unwrap();
        let page = strings(&body["repositories"]);
        assert!(
            page.len() == 4 || next.is_none(),
            "only the last page is short: {page:?}"
        );
        seen.extend(page);
    }
    let mut visible: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("team-a/"))
        .cloned()
        .collect();
    visible.sort();
    assert_eq!(seen, visible);
}

// ---------------------------------------------------------------------------
// referrers

#[tokio::test]
async fn referrers_of_an_unknown_digest_is_an_empty_index() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", "v1", b"layer").await;
    let unknown = sha256_digest(b"nothing refers to this");
    let resp = referrers(&registry, "team/app", &unknown, "").await;
    assert!(resp.headers().get("oci-filters-applied").is_none());
    assert!(referrer_descriptors(resp).await.is_empty());
}

#[tokio::test]
async fn referrers_list_a_descriptor_per_referrer() {
    let registry = TestRegistry::start().await;
    let (subject, subject_digest) = registry.push_image("team/app", "v1", b"layer").await;
    push_empty_blob(&registry, "team/app").await;

    // X: an artifact with artifactType and annotations.
    let annotations = json!({
        "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
        "org.example.signer": "alice"
    });
    let x = signature_manifest(&subject_digest, subject.len(), annotations.clone());
    let x_digest = put_by_digest(&registry, "team/app", &x).await;

    // Y: no artifactType; its config media type stands in for it.
    let sbom_config = br#"{"format":"spdx"}"#;
    let config_digest = registry.push_blob("team/app", sbom_config).await;
    let sbom = b"sbom document";
    let sbom_digest = registry.push_blob("team/app", sbom).await;
    let y = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": SBOM_CONFIG_TYPE, "digest": config_digest, "size": sbom_config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sbom_digest, "size": sbom.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()}
    }))
    .unwrap();
    let y_digest = put_by_digest(&registry, "team/app", &y).await;

    let resp = referrers(&registry, "team/app", &subject_digest, "").await;
    assert!(resp.headers().get("oci-filters-applied").is_none());
    let mut descriptors = referrer_descriptors(resp).await;
    assert_eq!(descriptors.len(), 2, "{descriptors:?}");
    descriptors.sort_by_key(|d| d["artifactType"].as_str().unwrap_or_default().to_owned());
    let by_type = |t: &str| {
        descriptors
            .iter()
            .find(|d| d["artifactType"] == t)
            .unwrap_or_else(|| panic!("no referrer with artifactType {t}: {descriptors:?}"))
            .clone()
    };

    let dx = by_type(SIGNATURE_TYPE);
    assert_eq!(dx["mediaType"], OCI_MANIFEST);
    assert_eq!(dx["digest"], x_digest);
    assert_eq!(dx["size"], x.len());
    assert_eq!(dx["annotations"], annotations);

    let dy = by_type(SBOM_CONFIG_TYPE);
    assert_eq!(dy["mediaType"], OCI_MANIFEST);
    assert_eq!(dy["digest"], y_digest);
    assert_eq!(dy["size"], y.len());
    assert!(
        dy.get("annotations")
            .is_none_or(|a| a.is_null() || a.as_object().is_some_and(|o| o.is_empty())),
        "Y has no annotations: {dy}"
    );
}

#[tokio::test]
async fn index_referrer_is_listed_with_the_index_media_type() {
    let registry = TestRegistry::start().await;
    let (subject, subject_digest) = registry.push_image("team/app", "v1", b"layer").await;
    push_empty_blob(&registry, "team/app").await;
    let child = signature_manifest(&subject_digest, subject.len(), json!({"part": "1"}));
    let child_digest = put_by_digest(&registry, "team/app", &child).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle.v1",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()},
        "annotations": {"org.example.bundle": "yes"}
    }))
    .unwrap();
    let index_digest = sha256_digest(&index);
    let resp = registry
        .put_manifest("team/app", &index_digest, OCI_INDEX, &index)
        .await;
    expect_status(resp, StatusCode::CREATED).await;

    let query = "?artifactType=application/vnd.example.bundle.v1";
    let resp = referrers(&registry, "team/app", &subject_digest, query).await;
    let descriptors = referrer_descriptors(resp).await;
    assert_eq!(descriptors.len(), 1, "{descriptors:?}");
    assert_eq!(descriptors[0]["mediaType"], OCI_INDEX);
    assert_eq!(descriptors[0]["digest"], index_digest);
    assert_eq!(descriptors[0]["size"], index.len());
    assert_eq!(
        descriptors[0]["annotations"],
        json!({"org.example.bundle": "yes"})
    );
}

#[tokio::test]
async fn referrers_filtered_by_artifact_type() {
    let registry = TestRegistry::start().await;
    let (subject, subject_digest) = registry.push_image("team/app", "v1", b"layer").await;
    push_empty_blob(&registry, "team/app").await;
    let x = signature_manifest(&subject_digest, subject.len(), json!({"n": "1"}));
    let x_digest = put_by_digest(&registry, "team/app", &x).await;
    let other = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.other.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()}
    }))
    .unwrap();
    put_by_digest(&registry, "team/app", &other).await;

    let query = format!("?artifactType={SIGNATURE_TYPE}");
    let resp = referrers(&registry, "team/app", &subject_digest, &query).await;
    assert_eq!(
        resp.headers()
            .get("oci-filters-applied")
            .map(|v| v.to_str().unwrap()),
        Some("artifactType")
    );
    let descriptors = referrer_descriptors(resp).await;
    assert_eq!(descriptors.len(), 1, "{descriptors:?}");
    assert_eq!(descriptors[0]["digest"], x_digest);
    assert_eq!(descriptors[0]["artifactType"], SIGNATURE_TYPE);

    // A filter nothing matches: still filtered, and empty.
    let resp = referrers(
        &registry,
        "team/app",
        &subject_digest,
        "?artifactType=application/vnd.example.none",
    )
    .await;
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    assert!(referrer_descriptors(resp).await.is_empty());
}

#[tokio::test]
async fn referrers_with_an_invalid_digest_is_rejected() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", "v1", b"layer").await;
    for digest in [
        "sha256:nothex",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "latest",
    ] {
        let resp = referrers(&registry, "team/app", digest, "").await;
        let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "{digest}");
    }
}

#[tokio::test]
async fn deleting_a_referrer_removes_it_from_the_list() {
    let registry = TestRegistry::start().await;
    let (subject, subject_digest) = registry.push_image("team/app", "v1", b"layer").await;
    push_empty_blob(&registry, "team/app").await;
    let keep = signature_manifest(&subject_digest, subject.len(), json!({"k": "keep"}));
    let keep_digest = put_by_digest(&registry, "team/app", &keep).await;
    let gone = signature_manifest(&subject_digest, subject.len(), json!({"k": "gone"}));
    let gone_digest = put_by_digest(&registry, "team/app", &gone).await;
    let resp = referrers(&registry, "team/app", &subject_digest, "").await;
    assert_eq!(referrer_descriptors(resp).await.len(), 2);

    let resp = registry
        .client
        .delete(registry.url(&format!("/v2/team/app/manifests/{gone_digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::ACCEPTED).await;

    let resp = referrers(&registry, "team/app", &subject_digest, "").await;
    let descriptors = referrer_descriptors(resp).await;
    assert_eq!(descriptors.len(), 1, "{descriptors:?}");
    assert_eq!(descriptors[0]["digest"], keep_digest);
}

#[tokio::test]
async fn referrer_of_a_subject_not_yet_pushed_is_listed() {
    let registry = TestRegistry::start().await;
    push_empty_blob(&registry, "team/app").await;
    let subject = sha256_digest(b"the image will be pushed later");
    let x = signature_manifest(&subject, 321, json!({"org.example.signer": "bob"}));
    let x_digest = put_by_digest(&registry, "team/app", &x).await;

    let resp = referrers(&registry, "team/app", &subject, "").await;
    let descriptors = referrer_descriptors(resp).await;
    assert_eq!(descriptors.len(), 1, "{descriptors:?}");
    assert_eq!(descriptors[0]["digest"], x_digest);
    assert_eq!(descriptors[0]["artifactType"], SIGNATURE_TYPE);
    assert_eq!(descriptors[0]["size"], x.len());
}

#[tokio::test]
async fn referrers_are_per_repository() {
    let registry = TestRegistry::start().await;
    let (subject, subject_digest) = registry.push_image("team/app", "v1", b"layer").await;
    push_empty_blob(&registry, "team/app").await;
    let x = signature_manifest(&subject_digest, subject.len(), json!({"a": "b"}));
    put_by_digest(&registry, "team/app", &x).await;
    registry.push_image("team/other", "v1", b"layer").await;
    let resp = referrers(&registry, "team/other", &subject_digest, "").await;
    assert!(referrer_descriptors(resp).await.is_empty());
}
