//! Shared set-up for the integration tests: a real Berth server on an
//! ephemeral loopback port with its own data directory, and a few helpers that
//! speak the distribution-spec over real HTTP; a real Garage for the S3
//! backend (`garage`) and a round-robin TCP balancer for replicas
//! (`balancer`).

pub mod balancer;
pub mod garage;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth::{Config, RunningServer};
use reqwest::{Client, Response, StatusCode};
use sha2::{Digest as _, Sha256, Sha512};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `berth` binary of this build.
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The ES256 key the servers with access control sign their tokens with.
pub const SIGNING_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/auth/testdata/ec-p256-pkcs8.pem"
);

/// A file of tests/testdata: the test CA, and a server certificate and key it signed.
pub fn testdata(file: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(file)
}

pub struct TestRegistry {
    pub server: RunningServer,
    pub data: tempfile::TempDir,
    pub client: Client,
}

impl TestRegistry {
    /// A fresh server with an empty data directory.
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose config `adjust` may change (data_dir and listen are set first).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestRegistry {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let server = RunningServer::start(&config).await.expect("server starts");
        TestRegistry {
            server,
            data,
            client: Client::new(),
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// The storage root (`<data-dir>/docker/registry/v2`).
    pub fn storage_root(&self) -> PathBuf {
        self.data.path().join("docker/registry/v2")
    }

    /// `POST /v2/<name>/blobs/uploads/`, asserting 202; the session's absolute URL.
    pub async fn start_upload(&self, name: &str) -> String {
        let resp = self
            .client
            .post(self.url(&format!("/v2/{name}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::ACCEPTED).await;
        self.location(&resp)
    }

    /// Uploads a blob with POST + PUT and asserts 201.
    pub async fn push_blob(&self, name: &str, content: &[u8]) -> String {
        let digest = sha256_digest(content);
        let location = self.start_upload(name).await;
        let resp = self
            .client
            .put(with_query(&location, &format!("digest={digest}")))
            .body(content.to_vec())
            .send()
            .await
            .unwrap();
        expect_status(resp, StatusCode::CREATED).await;
        digest
    }

    /// `DELETE /v2/<name>/manifests/<reference>`.
    pub async fn delete_manifest(&self, name: &str, reference: &str) -> Response {
        self.client
            .delete(self.url(&format!("/v2/{name}/manifests/{reference}")))
            .send()
            .await
            .unwrap()
    }

    /// The tags of `name` (`GET /v2/<name>/tags/list`, asserting 200), sorted.
    pub async fn tags(&self, name: &str) -> Vec<String> {
        let resp = get(self, &format!("/v2/{name}/tags/list")).await;
        let resp = expect_status(resp, StatusCode::OK).await;
        let body: serde_json::Value = resp.json().await.unwrap();
        let mut tags: Vec<String> = body["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// Pushes a manifest and returns the response.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.client
            .put(self.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a one-layer image (config + layer blobs, then the manifest under
    /// `tag`) and returns (manifest bytes, manifest digest).
    pub async fn push_image(&self, name: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha256_digest(layer)
        );
        let config_digest = self.push_blob(name, config.as_bytes()).await;
        let layer_digest = self.push_blob(name, layer).await;
        let manifest = image_manifest(&config_digest, config.len(), &[(layer_digest, layer.len())]);
        let resp = self.put_manifest(name, tag, OCI_MANIFEST, &manifest).await;
        expect_status(resp, StatusCode::CREATED).await;
        let digest = sha256_digest(&manifest);
        (manifest, digest)
    }

    /// The absolute URL of a response's `Location`.
    pub fn location(&self, resp: &Response) -> String {
        let location = resp
            .headers()
            .get("location")
            .expect("Location header")
            .to_str()
            .unwrap();
        if location.starts_with("http") {
            location.to_owned()
        } else {
            self.url(location)
        }
    }
}

pub fn with_query(url: &str, query: &str) -> String {
    if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

pub fn sha256_digest(content: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(content)))
}

/// An OCI image manifest over the given config and layers.
pub fn image_manifest(
    config_digest: &str,
    config_size: usize,
    layers: &[(String, usize)],
) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": OCI_LAYER, "digest": d, "size": s}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }))
    .unwrap()
}

/// The `errors[0].code` of a spec error body.
pub async fn error_code(resp: Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    body["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_owned()
}

pub fn sha512_digest(content: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(content)))
}

/// Deterministic pseudo-random bytes (xorshift64 from `seed`): unlike
/// [`pattern`], no shifted or misplaced range compares equal.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Recognisable content: byte `i` is `i mod 251`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A response header that must be present, as text.
pub fn header_str<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} header missing: {:?}", resp.headers()))
        .to_str()
        .unwrap()
}

/// `GET path` on the registry.
pub async fn get(registry: &TestRegistry, path: &str) -> Response {
    registry
        .client
        .get(registry.url(path))
        .send()
        .await
        .unwrap()
}

/// bcrypt cost for test users: the lowest bcrypt allows, so logins are fast.
pub const TEST_BCRYPT_COST: u32 = 4;

impl TestRegistry {
    /// A server with access control on. `users` (name, password) are written
    /// to `<data-dir>/htpasswd`; `auth_table` is the body of the `[auth]`
    /// table (TOML), whose `htpasswd` key is set here.
    pub async fn start_with_auth(users: &[(&str, &str)], auth_table: &str) -> TestRegistry {
        Self::start_with(|config| {
            let htpasswd = config.data_dir.join("htpasswd");
            for (user, password) in users {
                berth::auth::Htpasswd::add_or_update_user(
                    &htpasswd,
                    user,
                    password,
                    TEST_BCRYPT_COST,
                )
                .expect("htpasswd user");
            }
            let mut auth: berth::auth::AuthConfig =
                toml::from_str(auth_table).expect("a valid [auth] table");
            auth.htpasswd = Some(htpasswd);
            config.auth = Some(auth);
        })
        .await
    }

    /// The htpasswd file of [`TestRegistry::start_with_auth`].
    pub fn htpasswd_path(&self) -> PathBuf {
        self.data.path().join("htpasswd")
    }

    /// Where the robot store is by default: `<data-dir>/berth/robots.json`.
    pub fn robots_path(&self) -> PathBuf {
        self.data.path().join("berth/robots.json")
    }
}

/// An `Authorization: Basic` value.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A client that sends `authorization` with every request.
pub fn client_with_authorization(authorization: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        authorization.parse().expect("a header value"),
    );
    Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A `berth serve` child process; killed on drop. Its address is the one
/// its log reports, so `--listen 127.0.0.1:0` (or a config file's) works.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub addr: String,
    log: BufReader<std::process::ChildStderr>,
}

impl ServeProcess {
    /// Runs `berth serve <args>` with `envs` added to the environment, and
    /// waits until it logs its address.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut child = std::process::Command::new(BERTH)
            .arg("serve")
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth starts");
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                Instant::now() < deadline,
                "berth did not report its address"
            );
            assert!(log.read_line(&mut line).unwrap() > 0, "berth exited early");
            if let Some(rest) = line.split("listen").nth(1) {
                break rest
                    .trim_start_matches(['=', '"', ':'])
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
            }
        };
        ServeProcess { child, addr, log }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `raw` on a new connection and reads the response until the
    /// server closes it (so `raw` says `Connection: close`).
    pub fn request(&self, raw: &str) -> String {
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// The next line of its log (stderr).
    pub fn next_log_line(&mut self) -> String {
        let mut line = String::new();
        self.log.read_line(&mut line).unwrap();
        line
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Stops the server (SIGTERM, so queued log lines are flushed) and
    /// returns the rest of its log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.child.wait().unwrap();
        let mut rest = String::new();
        self.log.read_to_string(&mut rest).unwrap();
        rest
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token from `GET /auth/token` for `scopes`, sent with `authorization`
/// (None: anonymous); asserts 200.
pub async fn token(
    registry: &TestRegistry,
    authorization: Option<&str>,
    scopes: &[&str],
) -> String {
    let mut url = registry.url("/auth/token?service=berth");
    for scope in scopes {
        url.push_str(&format!("&scope={scope}"));
    }
    let mut request = Client::new().get(url);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let resp = expect_status(request.send().await.unwrap(), StatusCode::OK).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// A server with access control over `app/*`: bob may pull and push, erin
/// also delete, dave only pull. `extra` is added to the `[auth]` table (TOML).
pub async fn start_with_app_rules(extra: &str) -> TestRegistry {
    TestRegistry::start_with_auth(
        &[("bob", "bob-pw"), ("erin", "erin-pw"), ("dave", "dave-pw")],
        &format!(
            r#"
            signing_key = "{SIGNING_KEY}"
            {extra}
            [[rules]]
            repositories = ["app/*"]
            users = {{ bob = ["pull", "push"], erin = ["pull", "push", "delete"], dave = ["pull"] }}
            "#
        ),
    )
    .await
}

/// Two images under `app/web:latest` of [`start_with_app_rules`], pushed as
/// erin; the registry's client is anonymous again afterwards. Returns their
/// digests, older first.
pub async fn seed_app_web(registry: &mut TestRegistry) -> (String, String) {
    registry.client = client_with_authorization(&basic_auth("erin", "erin-pw"));
    let (_, a) = registry.push_image("app/web", "latest", b"a").await;
    let (_, b) = registry.push_image("app/web", "latest", b"b").await;
    registry.client = Client::new();
    (a, b)
}

/// The environment variable that tells a child process of this test binary
/// which test it was started to run alone.
const ALONE_VAR: &str = "BERTH_TEST_ALONE";

/// Runs `body` in a fresh process of this test binary that runs only the
/// test named `test` (its full name, `module::function`), for a test that
/// reads process-wide state (counters in the library) which the other tests,
/// running in parallel in this process, would disturb. In the child, runs
/// `body`; in the parent, starts the child and fails unless exactly that one
/// test ran there and passed, printing the child's output.
pub fn in_own_process(test: &str, body: impl FnOnce()) {
    if std::env::var(ALONE_VAR).as_deref() == Ok(test) {
        body();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE_VAR, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in its own process failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// Asserts that `resp` has status `want` and hands it back for further
/// checks; on a different status, fails with the request's method and URL
/// and the response body (the spec's JSON error says why).
pub async fn expect_status(resp: Response, want: StatusCode) -> Response {
    expect_status_of(resp, want, "").await
}

/// [`expect_status`] with a word on what was asked (the method, a header
/// the URL does not show), put first in the failure message.
pub async fn expect_status_of(resp: Response, want: StatusCode, what: &str) -> Response {
    let status = resp.status();
    if status != want {
        let url = resp.url().clone();
        let body = resp.text().await;
        panic!("{what} {url}: expected status {want}, got {status}; body: {body:?}");
    }
    resp
}

/// The helpers' own checks: a helper that cannot fail would let every test
/// that relies on it pass for the wrong reason.
mod checks {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn expect_status_fails_with_the_url_status_and_error_body() {
        let registry = TestRegistry::start().await;
        let path = format!("/v2/app/blobs/{}", sha256_digest(b"never pushed"));
        let resp = get(&registry, &path).await;
        let failure = AssertUnwindSafe(expect_status(resp, StatusCode::OK))
            .catch_unwind()
            .await
            .expect_err("a 404 does not pass for 200");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("404 Not Found"), "{message}");
        assert!(message.contains("errors"), "the JSON error body: {message}");

        let resp = get(&registry, &path).await;
        let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
        assert!(
            !error_code(resp).await.is_empty(),
            "the body is handed back"
        );
    }

    #[test]
    fn in_own_process_fails_unless_exactly_the_named_test_ran_and_passed() {
        let ran_nothing = std::panic::catch_unwind(|| {
            in_own_process("support::checks::no_such_test", || {});
        });
        assert!(ran_nothing.is_err(), "a name that matches no test fails");
    }
}
