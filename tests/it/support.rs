//! Shared set-up for the integration tests: a real Berth server on an
//! ephemeral loopback port with its own data directory (or, with
//! `BERTH_TEST_STORAGE=s3`, two replicas over a real Garage behind a
//! round-robin balancer: `backend`), and a few helpers that speak the
//! distribution-spec over real HTTP; a real Garage for the S3 backend
//! (`garage`), a round-robin TCP balancer for replicas (`balancer`), and
//! helpers that read and write a store by key on either backend (`store`).

pub mod backend;
pub mod balancer;
// Only the S3 mode's shared cluster is used here; the rest of the fixture
// (3-node clusters, direct clients, stopping nodes) serves the S3 test
// modules merged from the other branches of issue 13.
#[allow(dead_code)]
pub mod garage;
pub mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backend::Backend;
use balancer::Balancer;
use berth::storage::Storage;
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

/// How many replicas serve a registry on S3.
pub const S3_REPLICAS: usize = 2;

/// How many servers a registry has: one on the filesystem (its data
/// directory is the store), [`S3_REPLICAS`] on S3.
fn default_replicas() -> usize {
    match backend::backend() {
        Backend::Filesystem => 1,
        Backend::S3 => S3_REPLICAS,
    }
}

/// For a test that reads through one replica what it has just written
/// through another, and needs the exact answer at once: on S3 the servers
/// keep no mutable answer (tag → digest, link exists) in their caches
/// (`cache_ttl_ms = 0`); with a TTL, another replica may answer from its
/// cache for up to `cache_ttl_ms`, the documented bound. One server sees its
/// own writes at once, so on the filesystem nothing changes.
pub fn uncached_on_s3(config: &mut Config) {
    if backend::on_s3() {
        config.cache_ttl_ms = 0;
    }
}

/// Replicas must agree on what a client's credentials mean, as a deployment
/// of several must (deploy/kubernetes shares both): one token signing key
/// (absent, each would make its own, and a token one replica issued would
/// fail on the other) and one robot account store.
fn share_between_replicas(config: &mut Config) {
    let data_dir = config.data_dir.clone();
    if let Some(auth) = &mut config.auth {
        if auth.signing_key.is_none() {
            auth.signing_key = Some(PathBuf::from(SIGNING_KEY));
        }
        if auth.robots.is_none() {
            auth.robots = Some(auth.robots_path(&data_dir));
        }
    }
}

/// A registry under test: one server over its own data directory, or, with
/// `BERTH_TEST_STORAGE=s3`, two replicas over a fresh prefix of the shared
/// Garage behind a round-robin balancer (each new connection goes to the
/// other replica), each with its own data directory (its local cache).
/// Tests speak to [`TestRegistry::addr`] either way, and reach the store
/// itself through [`TestRegistry::storage`], never through the filesystem.
pub struct TestRegistry {
    /// Where requests go: the server, or the balancer in front of the replicas.
    pub addr: SocketAddr,
    /// The servers, replica 1 first.
    pub servers: Vec<RunningServer>,
    /// The test's directory: replica 1's data directory (on the filesystem
    /// backend, the store), and files the replicas share (htpasswd, robots).
    pub data: tempfile::TempDir,
    pub client: Client,
    /// Replica 1's configuration as the test adjusted it.
    pub config: Config,
    /// How many servers serve the registry (1 on the filesystem).
    replicas: usize,
    balancer: Option<Balancer>,
    /// The other replicas' data directories, and those of processes opened
    /// on the store later (collectors, `berth gc`): kept until the end.
    dirs: Mutex<Vec<tempfile::TempDir>>,
    storage: tokio::sync::OnceCell<Arc<dyn Storage>>,
    /// The last [`crate::lifecycle_support::age`] on S3: (when, by how much).
    pub aged: Mutex<Option<(SystemTime, Duration)>>,
}

impl TestRegistry {
    /// A fresh registry over an empty store.
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    /// A fresh registry whose config `adjust` may change (data_dir, listen
    /// and, on S3, the store are set first; every replica gets the same
    /// settings but its own data_dir).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestRegistry {
        Self::start_replicas(default_replicas(), adjust).await
    }

    /// One server, on either backend: for a test about one process's own
    /// state (its caches, its connections), which a second replica behind a
    /// balancer would not share.
    pub async fn start_one_with(adjust: impl FnOnce(&mut Config)) -> TestRegistry {
        Self::start_replicas(1, adjust).await
    }

    /// A fresh registry over a store that `seed` fills first, before any
    /// server starts (as data written by another tool, `registry:2`, is).
    pub async fn start_seeded(
        seed: impl AsyncFnOnce(Arc<dyn Storage>),
        adjust: impl FnOnce(&mut Config),
    ) -> TestRegistry {
        let mut registry = Self::configure(default_replicas(), adjust);
        seed(registry.storage().await).await;
        registry.serve(false).await;
        registry
    }

    /// How many servers serve the registry, behind the balancer when more
    /// than one.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    async fn start_replicas(replicas: usize, adjust: impl FnOnce(&mut Config)) -> TestRegistry {
        let mut registry = Self::configure(replicas, adjust);
        registry.serve(false).await;
        registry
    }

    /// The registry's configuration, before any server starts.
    fn configure(replicas: usize, adjust: impl FnOnce(&mut Config)) -> TestRegistry {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        if backend::on_s3() {
            backend::use_s3(&mut config, &backend::fresh_prefix());
        }
        adjust(&mut config);
        if replicas > 1 {
            share_between_replicas(&mut config);
        }
        TestRegistry {
            addr: config.listen,
            servers: Vec::new(),
            data,
            client: new_client(),
            config,
            replicas,
            balancer: None,
            dirs: Mutex::new(Vec::new()),
            storage: tokio::sync::OnceCell::new(),
            aged: Mutex::new(None),
        }
    }

    /// Starts the servers (replica 1 on `config.data_dir` unless `fresh`)
    /// and, for several, the balancer.
    async fn serve(&mut self, fresh: bool) {
        let mut servers = Vec::new();
        for replica in 0..self.replicas {
            let mut config = self.config.clone();
            if replica > 0 || fresh {
                config.data_dir = self.new_dir();
            }
            servers.push(RunningServer::start(&config).await.expect("server starts"));
        }
        self.addr = servers[0].addr;
        self.balancer = None;
        if servers.len() > 1 {
            let balancer = Balancer::start(servers.iter().map(|s| s.addr).collect()).await;
            self.addr = balancer.addr;
            self.balancer = Some(balancer);
        }
        self.servers = servers;
    }

    /// Another server over the same store, configured as the registry's
    /// are and then by `adjust` (on S3 with a data directory of its own, as
    /// another replica has).
    pub async fn another_server(&self, adjust: impl FnOnce(&mut Config)) -> RunningServer {
        let mut config = self.config.clone();
        if backend::on_s3() {
            config.data_dir = self.new_dir();
        }
        adjust(&mut config);
        RunningServer::start(&config)
            .await
            .expect("another server starts")
    }

    /// A new empty directory that lives as long as the registry.
    pub fn new_dir(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        self.dirs.lock().unwrap().push(dir);
        path
    }

    /// Stops every server, waiting for requests in flight.
    pub async fn shutdown(self) -> std::io::Result<()> {
        for server in self.servers {
            server.shutdown().await?;
        }
        Ok(())
    }

    /// The same registry started afresh on the same store, as after a
    /// restart: it has verified and cached nothing yet. On S3 the replicas
    /// get new data directories (a replica's data directory holds only its
    /// cache, which a new pod starts without).
    pub async fn restart(mut self) -> TestRegistry {
        for server in std::mem::take(&mut self.servers) {
            server.shutdown().await.unwrap();
        }
        self.balancer = None;
        self.serve(backend::on_s3()).await;
        self
    }

    /// A configuration for another process over the same store, as `berth
    /// gc` would open it: defaults but for the store (on the filesystem the
    /// data directory; on S3 the bucket and prefix, and a data directory of
    /// its own).
    pub fn tool_config(&self) -> Config {
        let mut config = Config {
            data_dir: self.data.path().to_path_buf(),
            ..Config::default()
        };
        if backend::on_s3() {
            config.data_dir = self.new_dir();
            config.storage = self.config.storage.clone();
        }
        config
    }

    /// `berth <subcommand>` on this registry's store, as an operator runs it
    /// beside the servers: `--data-dir`, and on S3 the store's settings in
    /// the environment.
    pub fn berth_command(&self, subcommand: &str) -> std::process::Command {
        let config = self.tool_config();
        let mut command = std::process::Command::new(BERTH);
        command
            .arg(subcommand)
            .arg("--data-dir")
            .arg(&config.data_dir);
        if backend::on_s3() {
            command.envs(backend::s3_env(&config.storage.s3.prefix));
        }
        command
    }

    /// The store the servers run on, opened by this test (another process's
    /// view, without caches): to read, write or damage objects by key on
    /// either backend.
    pub async fn storage(&self) -> Arc<dyn Storage> {
        self.storage
            .get_or_init(|| async {
                berth::open_storage(&self.tool_config(), false)
                    .await
                    .expect("the store opens")
            })
            .await
            .clone()
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The storage root (`<data-dir>/docker/registry/v2`) of the filesystem
    /// backend; for a test that is about files (see
    /// [`backend::filesystem_only`]): others use [`TestRegistry::storage`].
    pub fn storage_root(&self) -> PathBuf {
        assert!(
            !backend::on_s3(),
            "storage_root is the filesystem's: use storage() for a test that runs on S3"
        );
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

/// Waits until every replica's catalog (`GET /v2/_catalog` as `client`)
/// lists exactly `expected`: that many answers in a row, taking turns
/// through the balancer. One server lists its own pushes at once, so on the
/// filesystem the first answer must be it. Replicas see each other's pushes
/// only through their walks of the store, within the staleness bound
/// (`cache_ttl_ms`, or 10 × a walk: src/registry/catalog.rs), so a test of
/// the catalog's pages waits for that first; a catalog that never settles
/// (within a minute) fails the test.
pub async fn catalog_settled<S: AsRef<str>>(
    registry: &TestRegistry,
    client: &Client,
    expected: &[S],
) {
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut agreeing = 0;
    while agreeing < registry.replicas() {
        let resp = client
            .get(registry.url("/v2/_catalog"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::OK).await;
        let body: serde_json::Value = resp.json().await.unwrap();
        let listed: Vec<String> = body["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        if listed == expected {
            agreeing += 1;
            continue;
        }
        agreeing = 0;
        assert!(
            backend::on_s3() && Instant::now() < deadline,
            "the catalog lists {listed:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// bcrypt cost for test users: the lowest bcrypt allows, so logins are fast.
pub const TEST_BCRYPT_COST: u32 = 4;

impl TestRegistry {
    /// A server with access control on. `users` (name, password) are written
    /// to `<data-dir>/htpasswd`; `auth_table` is the body of the `[auth]`
    /// table (TOML), whose `htpasswd` key is set here.
    pub async fn start_with_auth(users: &[(&str, &str)], auth_table: &str) -> TestRegistry {
        Self::start_replicas_with_auth(default_replicas(), users, auth_table, |_| {}).await
    }

    /// [`TestRegistry::start_with_auth`] whose config `adjust` changes
    /// further.
    pub async fn start_with_auth_and(
        adjust: impl FnOnce(&mut Config),
        users: &[(&str, &str)],
        auth_table: &str,
    ) -> TestRegistry {
        Self::start_replicas_with_auth(default_replicas(), users, auth_table, adjust).await
    }

    /// [`TestRegistry::start_with_auth`] with one server on either backend:
    /// for a test of state each process keeps for itself (the login
    /// limiter's counts of failed logins, the login cache).
    pub async fn start_one_with_auth(users: &[(&str, &str)], auth_table: &str) -> TestRegistry {
        Self::start_replicas_with_auth(1, users, auth_table, |_| {}).await
    }

    /// [`TestRegistry::start_one_with_auth`] whose config `adjust` changes
    /// further.
    pub async fn start_one_with_auth_and(
        adjust: impl FnOnce(&mut Config),
        users: &[(&str, &str)],
        auth_table: &str,
    ) -> TestRegistry {
        Self::start_replicas_with_auth(1, users, auth_table, adjust).await
    }

    async fn start_replicas_with_auth(
        replicas: usize,
        users: &[(&str, &str)],
        auth_table: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestRegistry {
        Self::start_replicas(replicas, |config| {
            adjust(config);
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

/// A client for the registry under test. On S3 it opens a connection per
/// request, so that consecutive requests take turns between the replicas
/// behind the balancer (which picks a replica per connection): an upload's
/// POST, PATCH and PUT, a push and the pull after it, land on different
/// replicas. A pooled connection would keep a test on one replica.
pub fn new_client() -> Client {
    client_builder().build().expect("client")
}

fn client_builder() -> reqwest::ClientBuilder {
    let builder = Client::builder();
    match backend::backend() {
        Backend::Filesystem => builder,
        Backend::S3 => builder.pool_max_idle_per_host(0),
    }
}

/// A client that sends `authorization` with every request (a connection per
/// request on S3, as [`new_client`]).
pub fn client_with_authorization(authorization: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        authorization.parse().expect("a header value"),
    );
    client_builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The environment a `berth serve` process needs to serve a fresh, empty
/// store of the backend under test: nothing on the filesystem (its
/// `--data-dir` is the store), a fresh prefix of the shared Garage on S3.
pub fn new_store_env() -> Vec<(String, String)> {
    match backend::backend() {
        Backend::Filesystem => Vec::new(),
        Backend::S3 => backend::s3_env(&backend::fresh_prefix()),
    }
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
    /// waits until it logs its address. On S3 it serves a fresh prefix of
    /// the shared Garage (set in the environment, under `envs`).
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut child = std::process::Command::new(BERTH)
            .arg("serve")
            .args(args)
            .envs(new_store_env())
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
/// Its tests move tags (rollback) and read them back at once: uncached on S3
/// (see [`uncached_on_s3`]).
pub async fn start_with_app_rules(extra: &str) -> TestRegistry {
    TestRegistry::start_with_auth_and(
        uncached_on_s3,
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
    registry.client = new_client();
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

/// The JSON body of `resp`, which must have status `want`.
pub async fn json_of(resp: Response, want: StatusCode) -> serde_json::Value {
    expect_status(resp, want)
        .await
        .json()
        .await
        .expect("a JSON body")
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
    fn a_test_that_needs_garage_outside_a_garage_module_fails_wherever_it_runs() {
        let misplaced = std::thread::Builder::new()
            .name("metrics::counts_s3_requests".to_owned())
            .spawn(super::garage::garage_or_skip)
            .unwrap()
            .join();
        let message = *misplaced
            .expect_err("refused")
            .downcast::<String>()
            .unwrap();
        assert!(
            message.contains("belongs in a garage_* module"),
            "{message}"
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

/// A scrape of `GET /metrics`: each series (`name{labels}` as written) and its value.
pub struct Scrape(std::collections::HashMap<String, f64>);

impl Scrape {
    /// The series' value; 0 when absent (a family shows a series only once
    /// it has been counted).
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of `family`'s series whose labels contain `labels` (all of
    /// them for "").
    pub fn sum_of(&self, family: &str, labels: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    && series.contains(labels)
            })
            .map(|(_, value)| value)
            .sum()
    }
}

pub async fn scrape_at(client: &reqwest::Client, addr: std::net::SocketAddr) -> Scrape {
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    assert_eq!(
        header_str(&resp, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    Scrape(series)
}

pub async fn scrape(registry: &TestRegistry) -> Scrape {
    scrape_at(&registry.client, registry.addr).await
}
