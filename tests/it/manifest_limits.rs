//! What a pushed manifest may say (issue 12, findings 5 and 6): every
//! descriptor's size is its content's (config, layers, child manifests,
//! subject; image and index; OCI and Docker media types), and the document
//! stays within what every client can read (nesting depth, numbers of
//! descriptors and annotations, annotation values). Each refusal is 400
//! `MANIFEST_INVALID` with a detail and stores nothing; what is accepted,
//! `berth fsck` passes.

use crate::support::{
    catalog_settled, error_code, expect_status, get, image_manifest, sha256_digest, uncached_on_s3,
    TestRegistry, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER,
    OCI_MANIFEST,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const NON_DISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// The finding's blobs: a 49-byte config and a 10-byte layer.
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","rootfs":{}}"#;
const LAYER: &[u8] = b"0123456789";

/// A repository holding the config and layer, and a good image tagged
/// `good` over them.
struct Repo {
    registry: TestRegistry,
    name: &'static str,
    config: String,
    layer: String,
    good: Vec<u8>,
}

impl Repo {
    async fn new(name: &'static str) -> Repo {
        assert_eq!((CONFIG.len(), LAYER.len()), (49, 10));
        // A refusal must change neither the tags nor the catalog, which
        // every replica must then answer exactly.
        let registry = TestRegistry::start_with(uncached_on_s3).await;
        let config = registry.push_blob(name, CONFIG).await;
        let layer = registry.push_blob(name, LAYER).await;
        let good = image_manifest(&config, CONFIG.len(), &[(layer.clone(), LAYER.len())]);
        let resp = registry
            .put_manifest(name, "good", OCI_MANIFEST, &good)
            .await;
        expect_status(resp, StatusCode::CREATED).await;
        catalog_settled(&registry, &registry.client, &[name]).await;
        Repo {
            registry,
            name,
            config,
            layer,
            good,
        }
    }

    /// An image manifest of `media_type` over the config and layers, with
    /// the sizes given.
    fn image(&self, media_type: &str, config_size: usize, layer_sizes: &[usize]) -> Value {
        let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
            (DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_CONFIG, OCI_LAYER)
        };
        let layers: Vec<Value> = layer_sizes
            .iter()
            .map(|size| json!({"mediaType": layer_type, "digest": self.layer, "size": size}))
            .collect();
        json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": self.config, "size": config_size},
            "layers": layers,
        })
    }

    /// An index (or Docker list) whose one child is the good image, with the
    /// size given.
    fn index(&self, media_type: &str, child_size: usize) -> Value {
        let child_type = if media_type == DOCKER_MANIFEST_LIST {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let child_digest = if media_type == DOCKER_MANIFEST_LIST {
            // A Docker list names Docker manifests: push one first.
            sha256_digest(&self.docker_image())
        } else {
            sha256_digest(&self.good)
        };
        json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [{
                "mediaType": child_type, "digest": child_digest, "size": child_size,
                "platform": {"architecture": "amd64", "os": "linux"}
            }],
        })
    }

    fn docker_image(&self) -> Vec<u8> {
        serde_json::to_vec(&self.image(DOCKER_MANIFEST, CONFIG.len(), &[LAYER.len()])).unwrap()
    }

    async fn tags(&self) -> Vec<String> {
        self.registry.tags(self.name).await
    }

    async fn catalog(&self) -> Value {
        let resp = get(&self.registry, "/v2/_catalog").await;
        expect_status(resp, StatusCode::OK)
            .await
            .json()
            .await
            .unwrap()
    }

    async fn accept(&self, tag: &str, media_type: &str, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let resp = self
            .registry
            .put_manifest(self.name, tag, media_type, &bytes)
            .await;
        expect_status(resp, StatusCode::CREATED).await;
    }

    /// Pushes `body` under `tag` and asserts the refusal: 400
    /// `MANIFEST_INVALID`, a detail holding each of `detail`, and nothing
    /// stored (the tag and the digest unknown, tags and catalog unchanged).
    async fn refuse(&self, tag: &str, media_type: &str, body: &[u8], detail: &[&str]) {
        let (tags, catalog) = (self.tags().await, self.catalog().await);
        let resp = self
            .registry
            .put_manifest(self.name, tag, media_type, body)
            .await;
        let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
        let error: Value = resp.json().await.unwrap();
        assert_eq!(error["errors"][0]["code"], "MANIFEST_INVALID", "{error}");
        let said = error["errors"][0]["detail"].as_str().unwrap_or_default();
        for part in detail {
            assert!(said.contains(part), "detail {said:?} lacks {part:?}");
        }
        let digest = sha256_digest(body);
        for reference in [tag, digest.as_str()] {
            let path = format!("/v2/{}/manifests/{reference}", self.name);
            let resp = get(&self.registry, &path).await;
            let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
            assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
        }
        assert_eq!(self.tags().await, tags);
        assert_eq!(self.catalog().await, catalog);
    }

    async fn refuse_json(&self, tag: &str, media_type: &str, body: &Value, detail: &[&str]) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.refuse(tag, media_type, &bytes, detail).await;
    }

    /// `berth fsck` over the store (beside the running servers, which it
    /// does not write): it must find no problem.
    fn assert_fsck_clean(&self) {
        let output = self
            .registry
            .berth_command("fsck")
            .output()
            .expect("berth fsck runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "fsck failed:\n{stdout}");
        assert!(!stdout.contains("PROBLEM"), "fsck:\n{stdout}");
    }
}

// ---------------------------------------------------------------------------
// finding 5: sizes

#[tokio::test]
async fn every_descriptor_size_must_be_its_contents_in_images_and_indexes() {
    let repo = Repo::new("app").await;
    let (config, layer) = (repo.config.clone(), repo.layer.clone());
    // The finding's cases: a layer declared 1 or 11 bytes for a 10-byte
    // blob, a config declared 1 byte for 49; OCI and Docker alike.
    for media_type in [OCI_MANIFEST, DOCKER_MANIFEST] {
        for (layer_size, config_size, detail) in [
            (
                1,
                49,
                format!("layers[0] declares size 1 for {layer}, whose content is 10 bytes"),
            ),
            (
                11,
                49,
                format!("layers[0] declares size 11 for {layer}, whose content is 10 bytes"),
            ),
            (
                10,
                1,
                format!("config declares size 1 for {config}, whose content is 49 bytes"),
            ),
        ] {
            let body = repo.image(media_type, config_size, &[layer_size]);
            repo.refuse_json("bad", media_type, &body, &[&detail]).await;
        }
        // Every layer is checked, not only the first.
        let body = repo.image(media_type, 49, &[10, 10, 9]);
        repo.refuse_json("bad", media_type, &body, &["layers[2] declares size 9"])
            .await;
    }

    // Child manifests: the size is the child's byte length.
    repo.accept(
        "docker",
        DOCKER_MANIFEST,
        &serde_json::from_slice(&repo.docker_image()).unwrap(),
    )
    .await;
    for (media_type, child_len) in [
        (OCI_INDEX, repo.good.len()),
        (DOCKER_MANIFEST_LIST, repo.docker_image().len()),
    ] {
        for wrong in [child_len - 1, child_len + 1, 0] {
            let body = repo.index(media_type, wrong);
            let detail = format!("manifests[0] declares size {wrong} for ");
            let real = format!("whose content is {child_len} bytes");
            repo.refuse_json("bad", media_type, &body, &[&detail, &real])
                .await;
        }
    }

    // A refused first push leaves a new repository out of the catalog.
    let catalog = repo.catalog().await;
    let registry = &repo.registry;
    registry.push_blob("fresh", CONFIG).await;
    registry.push_blob("fresh", LAYER).await;
    let bad = serde_json::to_vec(&repo.image(OCI_MANIFEST, 49, &[11])).unwrap();
    let resp = registry
        .put_manifest("fresh", "v1", OCI_MANIFEST, &bad)
        .await;
    let resp = expect_status(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    assert_eq!(repo.catalog().await, catalog);
    let resp = get(registry, "/v2/fresh/manifests/v1").await;
    expect_status(resp, StatusCode::NOT_FOUND).await;

    // The same documents with the right sizes are accepted, and fsck agrees.
    repo.accept(
        "oci",
        OCI_MANIFEST,
        &repo.image(OCI_MANIFEST, 49, &[10, 10]),
    )
    .await;
    repo.accept("index", OCI_INDEX, &repo.index(OCI_INDEX, repo.good.len()))
        .await;
    let list = repo.index(DOCKER_MANIFEST_LIST, repo.docker_image().len());
    repo.accept("list", DOCKER_MANIFEST_LIST, &list).await;
    assert_eq!(
        repo.tags().await,
        ["docker", "good", "index", "list", "oci"]
    );
    repo.assert_fsck_clean();
}

#[tokio::test]
async fn a_subject_size_is_checked_when_the_subject_is_in_the_repository() {
    let repo = Repo::new("signed").await;
    let good = sha256_digest(&repo.good);
    let referrer = |subject: &str, size: usize, note: &str| {
        let mut body = repo.image(OCI_MANIFEST, 49, &[10]);
        body["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": size});
        body["annotations"] = json!({"note": note});
        body
    };
    let wrong = repo.good.len() + 5;
    let detail = format!(
        "subject declares size {wrong} for {good}, whose content is {} bytes",
        repo.good.len()
    );
    repo.refuse_json(
        "sig",
        OCI_MANIFEST,
        &referrer(&good, wrong, "a"),
        &[&detail],
    )
    .await;
    repo.accept("sig", OCI_MANIFEST, &referrer(&good, repo.good.len(), "a"))
        .await;

    // A subject not (yet) pushed cannot be checked, and the spec has the
    // referrer accepted: pushed later, whatever its size, fsck does not
    // count the difference as damage (it depends on the order of pushes).
    let later = repo.image(OCI_MANIFEST, 49, &[10, 10, 10]);
    let later_bytes = serde_json::to_vec(&later).unwrap();
    let early = referrer(&sha256_digest(&later_bytes), 1, "b");
    repo.accept("early", OCI_MANIFEST, &early).await;
    repo.accept("later", OCI_MANIFEST, &later).await;
    repo.assert_fsck_clean();
}

#[tokio::test]
async fn a_non_distributable_layer_size_is_checked_only_when_it_was_pushed_here() {
    let repo = Repo::new("windows").await;
    let foreign = b"a base layer hosted elsewhere";
    let digest = sha256_digest(foreign);
    let image = |size: usize, note: &str| {
        let mut body = repo.image(OCI_MANIFEST, 49, &[10]);
        body["annotations"] = json!({"note": note});
        body["layers"].as_array_mut().unwrap().insert(
            0,
            json!({"mediaType": NON_DISTRIBUTABLE_LAYER, "digest": digest, "size": size}),
        );
        body
    };
    // Absent here: nothing to compare with (even if another repository
    // holds it: a push learns nothing of other repositories).
    repo.registry.push_blob("elsewhere", foreign).await;
    repo.accept("absent", OCI_MANIFEST, &image(1_000_000, "absent"))
        .await;
    // Pushed here anyway: its size must be right.
    repo.registry.push_blob(repo.name, foreign).await;
    let detail = format!("layers[0] declares size 1000000 for {digest}, whose content is 29 bytes");
    repo.refuse_json(
        "present",
        OCI_MANIFEST,
        &image(1_000_000, "present"),
        &[&detail],
    )
    .await;
    repo.accept("present", OCI_MANIFEST, &image(foreign.len(), "present"))
        .await;
    repo.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// finding 6: what every client can read

#[tokio::test]
async fn deeply_nested_json_is_refused_and_nothing_is_stored() {
    let repo = Repo::new("deep").await;
    // The finding: a 100,000-level array in an unknown field (Go's parser,
    // in docker, containerd and Distribution, stops at 10,000).
    let mut text = serde_json::to_string(&repo.image(OCI_MANIFEST, 49, &[10])).unwrap();
    text.pop();
    let deep = format!(
        r#"{text},"x-extension":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    repo.refuse(
        "deep",
        OCI_MANIFEST,
        deep.as_bytes(),
        &["JSON nests deeper than 64 levels"],
    )
    .await;
    // In an index, and in a known field's place (annotations), alike.
    let mut index = repo.index(OCI_INDEX, repo.good.len());
    let mut nested = json!("leaf");
    for _ in 0..100 {
        nested = json!([nested]);
    }
    index["manifests"][0]["platform"]["x-nested"] = nested.clone();
    repo.refuse_json("deep", OCI_INDEX, &index, &["deeper than 64"])
        .await;
    // Within the bound, an extension field is kept as pushed.
    let mut shallow = repo.image(OCI_MANIFEST, 49, &[10]);
    let mut nested = json!("leaf");
    for _ in 0..60 {
        nested = json!([nested]);
    }
    shallow["x-extension"] = nested;
    repo.accept("shallow", OCI_MANIFEST, &shallow).await;
    repo.assert_fsck_clean();
}

#[tokio::test]
async fn descriptor_and_annotation_counts_and_annotation_types_are_bounded() {
    let repo = Repo::new("many").await;
    // 1,000 layers (8 times Docker's limit) are accepted, 1,001 are not.
    let sizes = vec![10; 1001];
    repo.refuse_json(
        "many",
        OCI_MANIFEST,
        &repo.image(OCI_MANIFEST, 49, &sizes),
        &["1001 layers: at most 1000"],
    )
    .await;
    repo.accept(
        "thousand",
        OCI_MANIFEST,
        &repo.image(OCI_MANIFEST, 49, &sizes[..1000]),
    )
    .await;
    let mut index = repo.index(OCI_INDEX, repo.good.len());
    let child = index["manifests"][0].clone();
    index["manifests"] = Value::Array(vec![child; 1001]);
    repo.refuse_json("many", OCI_INDEX, &index, &["1001 manifests: at most 1000"])
        .await;

    let annotations = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("org.example.{i}"), Value::from("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut over = repo.image(OCI_MANIFEST, 49, &[10]);
    over["annotations"] = annotations(4097);
    repo.refuse_json(
        "many",
        OCI_MANIFEST,
        &over,
        &["the manifest has 4097 annotations: at most 4096"],
    )
    .await;
    let mut over = repo.image(OCI_MANIFEST, 49, &[10]);
    over["config"]["annotations"] = annotations(4097);
    repo.refuse_json(
        "many",
        OCI_MANIFEST,
        &over,
        &["config has 4097 annotations"],
    )
    .await;
    let mut over = repo.image(OCI_MANIFEST, 49, &[10]);
    over["layers"][0]["annotations"] = json!({"org.example.n": 1});
    repo.refuse_json(
        "many",
        OCI_MANIFEST,
        &over,
        &["annotation \"org.example.n\" of layers[0] is not a string"],
    )
    .await;
    let mut over = repo.index(OCI_INDEX, repo.good.len());
    over["annotations"] = json!({"org.example.map": {"a": "b"}});
    repo.refuse_json(
        "many",
        OCI_INDEX,
        &over,
        &["of the manifest is not a string"],
    )
    .await;

    let mut most = repo.image(OCI_MANIFEST, 49, &[10]);
    most["annotations"] = annotations(4096);
    most["layers"][0]["annotations"] = annotations(4096);
    repo.accept("annotated", OCI_MANIFEST, &most).await;
    // What the conformance suite pushes: few annotations, but large ones.
    let mut large = repo.image(OCI_MANIFEST, 49, &[10]);
    large["annotations"] = (0..390)
        .map(|i| {
            (
                format!("large-annotation-{i}"),
                Value::from("A".repeat(10_000)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    repo.accept("large", OCI_MANIFEST, &large).await;
    assert_eq!(
        repo.tags().await,
        ["annotated", "good", "large", "thousand"]
    );
    repo.assert_fsck_clean();
}
