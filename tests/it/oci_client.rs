//! Round trips with a third-party client: the `oci-client` crate (what
//! wasmtime, krustlet and others use), over plain HTTP.

use crate::support::{
    expect_status, random_bytes, sha256_digest, TestRegistry, OCI_INDEX, OCI_MANIFEST,
};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer, PushResponse};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::StatusCode;

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

fn monolithic_client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..ClientConfig::default()
    })
}

fn reference(registry: &TestRegistry, repository_and_tag: &str) -> Reference {
    format!("{}/{repository_and_tag}", registry.addr)
        .parse()
        .expect("valid reference")
}

/// Two layers: a small tar one, and a gzip one larger than the client's
/// 4 MiB chunk so a chunked push needs several PATCHes.
fn layers() -> Vec<ImageLayer> {
    vec![
        ImageLayer::oci_v1(b"first layer: a tar stream".to_vec(), None),
        ImageLayer::oci_v1_gzip(random_bytes(5 * 1024 * 1024 + 123, 7), None),
    ]
}

fn config() -> Config {
    Config::oci_v1(CONFIG.as_bytes().to_vec(), None)
}

async fn push(client: &Client, image: &Reference) -> PushResponse {
    client
        .push(image, &layers(), config(), &RegistryAuth::Anonymous, None)
        .await
        .expect("oci-client push")
}

/// The manifest as the registry serves it, over plain HTTP: (bytes, Docker-Content-Digest).
async fn raw_manifest(registry: &TestRegistry, name: &str, reference: &str) -> (Vec<u8>, String) {
    let resp = registry
        .client
        .get(registry.url(&format!("/v2/{name}/manifests/{reference}")))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    let digest = resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    (resp.bytes().await.unwrap().to_vec(), digest)
}

#[tokio::test]
async fn oci_client_push_then_pull_round_trips_layers_and_digest() {
    let registry = TestRegistry::start().await;
    let client = client();
    let image = reference(&registry, "client/app:v1");
    let pushed = push(&client, &image).await;

    let (manifest_bytes, served_digest) = raw_manifest(&registry, "client/app", "v1").await;
    assert_eq!(sha256_digest(&manifest_bytes), served_digest);
    assert_eq!(
        pushed.manifest_url,
        registry.url(&format!("/v2/client/app/manifests/{served_digest}"))
    );

    let pulled = client
        .pull(
            &image,
            &RegistryAuth::Anonymous,
            vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .expect("oci-client pull");
    assert_eq!(pulled.digest.as_deref(), Some(served_digest.as_str()));
    let expected = layers();
    assert_eq!(pulled.layers.len(), expected.len());
    for (got, want) in pulled.layers.iter().zip(&expected) {
        assert_eq!(got.media_type, want.media_type);
        assert_eq!(got.data, want.data, "layer {} bytes", want.media_type);
    }
    assert_eq!(pulled.config.data.as_ref(), CONFIG.as_bytes());
    assert_eq!(pulled.config.media_type, IMAGE_CONFIG_MEDIA_TYPE);
    let manifest = pulled.manifest.expect("pulled manifest");
    assert_eq!(manifest.config.digest, sha256_digest(CONFIG.as_bytes()));
    assert_eq!(
        manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(ImageLayer::sha256_digest)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn oci_client_monolithic_push_then_pull_round_trips() {
    let registry = TestRegistry::start().await;
    let client = monolithic_client();
    let image = reference(&registry, "client/mono:v1");
    push(&client, &image).await;
    let pulled = client
        .pull(
            &image,
            &RegistryAuth::Anonymous,
            vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .expect("oci-client pull");
    let data: Vec<_> = pulled.layers.iter().map(|l| l.data.clone()).collect();
    let expected: Vec<_> = layers().into_iter().map(|l| l.data).collect();
    assert_eq!(data, expected);
    let (_, served_digest) = raw_manifest(&registry, "client/mono", "v1").await;
    assert_eq!(pulled.digest.as_deref(), Some(served_digest.as_str()));
}

#[tokio::test]
async fn oci_client_pull_refuses_unaccepted_layer_media_types() {
    let registry = TestRegistry::start().await;
    let client = client();
    let image = reference(&registry, "client/app:v1");
    push(&client, &image).await;
    let result = client
        .pull(
            &image,
            &RegistryAuth::Anonymous,
            vec![IMAGE_LAYER_MEDIA_TYPE],
        )
        .await;
    assert!(result.is_err(), "the gzip layer was not accepted");
}

#[tokio::test]
async fn oci_client_pull_manifest_and_config() {
    let registry = TestRegistry::start().await;
    let client = client();
    let image = reference(&registry, "client/app:v1");
    push(&client, &image).await;
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&image, &RegistryAuth::Anonymous)
        .await
        .expect("pull_manifest_and_config");
    let (_, served_digest) = raw_manifest(&registry, "client/app", "v1").await;
    assert_eq!(digest, served_digest);
    assert_eq!(config, CONFIG);
    assert_eq!(manifest.schema_version, 2);
    assert_eq!(manifest.layers.len(), 2);
    assert_eq!(manifest.layers[1].media_type, IMAGE_LAYER_GZIP_MEDIA_TYPE);

    let fetched = client
        .fetch_manifest_digest(&image, &RegistryAuth::Anonymous)
        .await
        .expect("fetch_manifest_digest");
    assert_eq!(fetched, served_digest);

    // The same manifest by digest.
    let by_digest = reference(&registry, &format!("client/app@{served_digest}"));
    let (manifest, digest) = client
        .pull_image_manifest(&by_digest, &RegistryAuth::Anonymous)
        .await
        .expect("pull by digest");
    assert_eq!(digest, served_digest);
    assert_eq!(manifest.layers.len(), 2);
}

#[tokio::test]
async fn oci_client_list_tags() {
    let registry = TestRegistry::start().await;
    let client = client();
    let image = reference(&registry, "client/app:v2");
    push(&client, &image).await;
    let (manifest, _) = client
        .pull_image_manifest(&image, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    for tag in ["v1", "latest"] {
        client
            .push_manifest(
                &reference(&registry, &format!("client/app:{tag}")),
                &manifest.clone().into(),
            )
            .await
            .expect("push_manifest under another tag");
    }

    let all = client
        .list_tags(&image, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("list_tags");
    assert_eq!(all.name, "client/app");
    assert_eq!(all.tags, ["latest", "v1", "v2"]);

    let first = client
        .list_tags(&image, &RegistryAuth::Anonymous, Some(2), None)
        .await
        .unwrap();
    assert_eq!(first.tags, ["latest", "v1"]);
    let rest = client
        .list_tags(&image, &RegistryAuth::Anonymous, Some(2), Some("v1"))
        .await
        .unwrap();
    assert_eq!(rest.tags, ["v2"]);
}

#[tokio::test]
async fn oci_client_blob_exists_and_mount_blob() {
    let registry = TestRegistry::start().await;
    let client = client();
    let source = reference(&registry, "client/source:v1");
    push(&client, &source).await;
    let target = reference(&registry, "client/target:v1");
    let layer_digest = layers()[1].sha256_digest();

    assert!(client.blob_exists(&source, &layer_digest).await.unwrap());
    assert!(!client.blob_exists(&target, &layer_digest).await.unwrap());
    let unknown = sha256_digest(b"never pushed");
    assert!(!client.blob_exists(&source, &unknown).await.unwrap());

    client
        .mount_blob(&target, &source, &layer_digest)
        .await
        .expect("mount_blob");
    assert!(client.blob_exists(&target, &layer_digest).await.unwrap());

    let mut out = Vec::new();
    client
        .pull_blob(&target, layer_digest.as_str(), &mut out)
        .await
        .expect("pull mounted blob");
    assert_eq!(out, layers()[1].data.to_vec());
}

#[tokio::test]
async fn oci_client_push_manifest_list_and_pull_through_it() {
    let registry = TestRegistry::start().await;
    let image = reference(&registry, "client/multi:amd64");
    let c = client();
    push(&c, &image).await;
    let (child, child_digest) = raw_manifest(&registry, "client/multi", "amd64").await;

    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: vec![ImageIndexEntry {
            media_type: OCI_MANIFEST.to_owned(),
            digest: child_digest.clone(),
            size: child.len() as i64,
            platform: None,
            annotations: None,
            artifact_type: None,
        }],
        artifact_type: None,
        annotations: None,
    };
    let list = reference(&registry, "client/multi:latest");
    c.push_manifest_list(&list, &RegistryAuth::Anonymous, index)
        .await
        .expect("push_manifest_list");
    let (_, served) = raw_manifest(&registry, "client/multi", "latest").await;
    let resp = registry
        .client
        .head(registry.url("/v2/client/multi/manifests/latest"))
        .header("Accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], OCI_INDEX);

    // A client that picks the first entry pulls the child image through the index.
    let picking = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        platform_resolver: Some(Box::new(|entries: &[ImageIndexEntry]| {
            entries.first().map(|e| e.digest.clone())
        })),
        ..ClientConfig::default()
    });
    let (manifest, digest, list_digest) = picking
        .pull_image_manifest_and_list_digest(&list, &RegistryAuth::Anonymous)
        .await
        .expect("pull through the index");
    assert_eq!(digest, child_digest);
    assert_eq!(list_digest.as_deref(), Some(served.as_str()));
    assert_eq!(manifest.layers.len(), 2);
}

#[tokio::test]
async fn oci_client_pull_referrers() {
    let registry = TestRegistry::start().await;
    let c = client();
    let image = reference(&registry, "client/app:v1");
    push(&c, &image).await;
    let (subject, subject_digest) = raw_manifest(&registry, "client/app", "v1").await;

    // An artifact (empty config, artifactType) whose subject is the image.
    let empty = Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.empty.v1+json".into(),
        None,
    );
    let payload = vec![ImageLayer::new(
        b"signature bytes".to_vec(),
        "application/vnd.example.signature.v1+bin".into(),
        None,
    )];
    let mut manifest = OciImageManifest::build(&payload, &empty, None);
    manifest.media_type = Some(OCI_MANIFEST.to_owned());
    manifest.artifact_type = Some("application/vnd.example.signature.v1".into());
    manifest.subject = Some(OciDescriptor {
        media_type: OCI_MANIFEST.to_owned(),
        digest: subject_digest.clone(),
        size: subject.len() as i64,
        ..OciDescriptor::default()
    });
    let signature = reference(&registry, "client/app:sig");
    c.push(
        &signature,
        &payload,
        empty,
        &RegistryAuth::Anonymous,
        Some(manifest),
    )
    .await
    .expect("push artifact with subject");
    let (_, signature_digest) = raw_manifest(&registry, "client/app", "sig").await;

    let by_digest = reference(&registry, &format!("client/app@{subject_digest}"));
    let index = c
        .pull_referrers(&by_digest, None)
        .await
        .expect("pull_referrers");
    assert_eq!(index.manifests.len(), 1, "{index:?}");
    assert_eq!(index.manifests[0].digest, signature_digest);
    assert_eq!(
        index.manifests[0].artifact_type.as_deref(),
        Some("application/vnd.example.signature.v1")
    );
    let filtered = c
        .pull_referrers(&by_digest, Some("application/vnd.example.other"))
        .await
        .unwrap();
    assert!(filtered.manifests.is_empty());
}

#[tokio::test]
async fn oci_client_catalog() {
    let registry = TestRegistry::start().await;
    let c = client();
    for name in ["client/b:v1", "client/a:v1"] {
        let image = reference(&registry, name);
        c.push(
            &image,
            &layers()[..1],
            config(),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push");
    }
    let image = reference(&registry, "client/a:v1");
    let catalog = c
        .catalog(&image, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("catalog");
    assert_eq!(catalog.repositories, ["client/a", "client/b"]);
    let page = c
        .catalog(&image, &RegistryAuth::Anonymous, Some(1), Some("client/a"))
        .await
        .unwrap();
    assert_eq!(page.repositories, ["client/b"]);
}
