//! The benchmark's S3 mode (`--storage s3`): Berth and Distribution on one Garage node, each
//! under its own prefix of the same bucket, with the same workloads as the filesystem mode where
//! they make sense, plus what only replicas over a bucket have: the pull storm (many pulls of one
//! new blob spread over two replicas, with the reads that reach the bucket counted by a proxy)
//! and a garbage collection over a large bucket. The limit is Garage's own PUT and GET
//! throughput of the same bytes, measured with object_store (the client library Berth uses) on
//! the same loopback (`garage_limits`). The method is `docs/design/benchmark.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

use super::proxy::{CountingProxy, ProxiedRequest};
use super::{
    config_blob, first_line_of, fmt_num, image_manifest, median, order, pull_count,
    push_monolithic, run_pool, Bench, Big, Blob, Kind, Launch, Limit, Opts, Reg, Report, Server,
    Settler, MIB, NAMES, R,
};

/// What the report shows instead of the credentials (the configuration files and the command
/// lines have the real ones).
pub(super) const ACCESS_KEY_HIDDEN: &str = "<access key>";
pub(super) const SECRET_KEY_HIDDEN: &str = "<secret key>";

/// Where the bucket is and how to sign for it: what tests/garage.sh writes to `DIR/env`.
#[derive(Clone)]
pub(super) struct S3Env {
    pub(super) endpoint: String,
    pub(super) region: String,
    pub(super) bucket: String,
    access_key: String,
    secret_key: String,
}

impl S3Env {
    fn read(file: &Path) -> R<S3Env> {
        let text = std::fs::read_to_string(file)?;
        let value = |key: &str| -> R<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: no {key}", file.display()).into())
        };
        Ok(S3Env {
            endpoint: value("S3_ENDPOINT")?,
            region: value("S3_REGION")?,
            bucket: value("S3_BUCKET")?,
            access_key: value("AWS_ACCESS_KEY_ID")?,
            secret_key: value("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    /// The standard variables Berth reads its credentials from.
    pub(super) fn credentials(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key);
    }

    /// A configuration text with the hidden credentials filled in.
    pub(super) fn fill(&self, text: &str) -> String {
        text.replace(ACCESS_KEY_HIDDEN, &self.access_key)
            .replace(SECRET_KEY_HIDDEN, &self.secret_key)
    }

    /// An object_store client of the bucket, set up like Berth's client for blob content (no
    /// total timeout, which would cut a long transfer; a read timeout instead).
    pub(super) fn store(&self) -> R<AmazonS3> {
        Ok(AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(30)),
            )
            .build()?)
    }
}

/// One Garage node for the run, started by tests/garage.sh (the one home of its start-up), with
/// this process as its owner: if the benchmark dies, the script's watchdog stops the node.
pub(super) struct Garage {
    script: PathBuf,
    dir: PathBuf,
    pub(super) env: S3Env,
    /// `garage --version`.
    pub(super) version: String,
}

impl Garage {
    pub(super) fn start(dir: &Path) -> R<Garage> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/garage.sh");
        eprintln!("== starting a Garage node (tests/garage.sh start)");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir)
            .arg("--owner")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => eprint!("{said}"),
            Some(3) => bail!(
                "--storage s3 needs a Garage binary (GARAGE_BIN, target/garage/bin/garage, which tests/run.sh builds, or garage on PATH):\n{said}"
            ),
            _ => bail!("tests/garage.sh start failed ({}):\n{said}", out.status),
        }
        let env = S3Env::read(&dir.join("env"))?;
        let bin = Command::new(&script).arg("find").output()?;
        let bin = String::from_utf8_lossy(&bin.stdout).trim().to_owned();
        let version = first_line_of(Path::new(&bin), &["--version"]);
        Ok(Garage {
            script,
            dir: dir.to_owned(),
            env,
            version,
        })
    }
}

impl Garage {
    /// The node's process id (tests/garage.sh writes it under the node's directory).
    pub(super) fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("node1/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// How the Garage node is set up, for the report.
pub(super) const GARAGE_SETUP: &str = "one node on loopback started by tests/garage.sh: replication factor 1, `consistency_mode = \"consistent\"`, sqlite metadata, `compression_level = \"none\"`, no scrub, Garage's defaults otherwise (it does not fsync data or metadata: the same for both registries and for the limits, which all go through the same node)";

// ---------------------------------------------------------------------------------------------
// The counting proxy

/// The end of a blob's object key (`…/blobs/sha256/ab/<hex>/data`), the same in both
/// registries' layouts.
fn blob_key_suffix(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    format!("/blobs/{alg}/{}/{hex}/data", &hex[..2])
}

// ---------------------------------------------------------------------------------------------
// The pull storm and the collection

impl Bench {
    /// The pull storm: two replicas of each registry over one prefix (Distribution's share
    /// `http.secret`, as its documentation asks of replicas), a new blob pushed through the
    /// first, then `storm_pulls` concurrent pulls of it, alternately through each replica.
    /// Every replica reaches Garage through the counting proxy, so the rows also say how often
    /// the blob was read from the bucket, and how many bytes that was.
    pub(super) async fn storm(&mut self, launch: &Launch, big: &Big) -> R<()> {
        let env = launch.s3.as_ref().ok_or("the pull storm needs S3")?;
        let proxy = CountingProxy::start(&env.endpoint, None).await?;
        let via = proxy.endpoint.clone();
        let dir = launch.tmp.join("storm");
        let (n, size) = (self.o.storm_pulls, self.o.storm_blob);
        let mib = size / MIB;
        let secret = hex::encode(self.rng.bytes(16));
        let mut replicas: [Vec<Server>; 2] = [Vec::new(), Vec::new()];
        for r in ["a", "b"] {
            replicas[0].push(launch.berth(
                &dir,
                &format!("berth-{r}"),
                Some((&via, "storm-berth")),
                None,
                None,
            )?);
            let (server, _) = launch.distribution(
                &dir,
                &format!("distribution-{r}"),
                Some((&via, "/storm-distribution")),
                None,
                Some(&secret),
                None,
            )?;
            replicas[1].push(server);
        }
        for s in replicas.iter_mut().flatten() {
            s.wait_ready(&self.client).await?;
        }
        let id = format!("storm_{n}x{mib}MiB_2_replicas");
        let time = self.table.add(
            &id,
            &format!("pull storm: {n} pulls of a new {mib} MiB blob over 2 replicas"),
            "s",
            Kind::Time,
        );
        let gets = self.table.add(
            &format!("{id}_s3_gets"),
            "pull storm: GETs of the blob that reached Garage",
            "GETs",
            Kind::Fewer,
        );
        let read = self.table.add(
            &format!("{id}_s3_read"),
            "pull storm: bytes of the blob read from Garage",
            "MiB",
            Kind::Fewer,
        );
        eprintln!("== pull storm: {n} concurrent pulls of a new {mib} MiB blob, 2 replicas each");
        let result = async {
            for round in 0..self.o.rounds {
                for i in order(round) {
                    self.variants += 1;
                    let blob = big.variant_of(size, self.variants);
                    let regs: Vec<Reg> = replicas[i].iter().map(|s| s.reg.clone()).collect();
                    push_monolithic(&self.client, &regs[0], "bench/storm", &blob).await?;
                    self.settler.wrote(i);
                    self.settler.settle().await?;
                    proxy.take();
                    let (client, regs2, blob2) = (self.client.clone(), regs.clone(), blob.clone());
                    let (wall, _) = run_pool(n, n, move |k| {
                        let (client, reg, blob) = (
                            client.clone(),
                            regs2[k % regs2.len()].clone(),
                            blob2.clone(),
                        );
                        async move { pull_count(&client, &reg, "bench/storm", &blob).await }
                    })
                    .await?;
                    let requests = proxy.take();
                    let suffix = blob_key_suffix(&blob.digest);
                    let blob_gets: Vec<&ProxiedRequest> = requests
                        .iter()
                        .filter(|r| r.method == hyper::Method::GET && r.path.ends_with(&suffix))
                        .collect();
                    let bytes: u64 = blob_gets.iter().map(|r| r.bytes).sum();
                    self.table.push(time, i, wall);
                    self.table.push(gets, i, blob_gets.len() as f64);
                    self.table.push(read, i, bytes as f64 / MIB as f64);
                    let mut by_method = std::collections::BTreeMap::<String, usize>::new();
                    for r in &requests {
                        *by_method.entry(r.method.to_string()).or_default() += 1;
                    }
                    let counts: Vec<String> =
                        by_method.iter().map(|(m, c)| format!("{c} {m}")).collect();
                    self.table.notes.push(format!(
                        "pull storm, {} round {}: {} requests reached Garage during the storm ({})",
                        NAMES[i],
                        round + 1,
                        requests.len(),
                        counts.join(", ")
                    ));
                }
            }
            Ok::<(), super::Error>(())
        }
        .await;
        if result.is_err() {
            for s in replicas.iter().flatten() {
                eprintln!("--- last lines of {} log:\n{}", s.reg.name, s.log_tail());
            }
        }
        for s in replicas.iter_mut().flatten() {
            s.stop();
        }
        result
    }

    /// A garbage collection over a bucket of `gc_repos` repositories: the same objects written
    /// under a prefix for each registry (in the layout both use), then `berth gc` and
    /// Distribution's `registry garbage-collect` (offline, as it must be: no server runs on its
    /// prefix), each timed from start to exit, then checked: every unreferenced blob gone,
    /// every referenced one and every repository object still there.
    pub(super) async fn gc(&mut self, launch: &Launch) -> R<()> {
        let env = launch.s3.as_ref().ok_or("the collection needs S3")?;
        let store = Arc::new(env.store()?);
        let data = GcData::generate(&self.o, &mut self.rng);
        let roots = ["gc-berth", "gc-distribution"];
        eprintln!(
            "== collection: writing {} objects under each of {} (a layout both registries read)",
            data.objects.len(),
            roots.join(" and ")
        );
        let t = Instant::now();
        for root in roots {
            data.write(&store, root).await?;
        }
        let wrote = t.elapsed().as_secs_f64();
        let row = self.table.add(
            &format!("gc_{}_objects", data.objects.len()),
            &format!(
                "collect garbage over {} objects ({} unreferenced blobs)",
                data.objects.len(),
                data.orphans.len()
            ),
            "s",
            Kind::Time,
        );
        let dir = launch.tmp.join("gc");
        std::fs::create_dir_all(&dir)?;
        // Berth's command: its S3 flags, a grace period of 0 (everything was written before the
        // run; the default hour would spare all of it), and a data directory of its own.
        let mut berth = Command::new(&launch.berth_bin);
        berth
            .arg("gc")
            .arg("--data-dir")
            .arg(dir.join("berth-data"))
            .args(["--s3-bucket", &env.bucket])
            .args(["--s3-endpoint", &env.endpoint])
            .args(["--s3-region", &env.region])
            .args(["--s3-prefix", roots[0]])
            .args(["--grace-period", "0s"]);
        let berth_text = format!(
            "AWS_ACCESS_KEY_ID={ACCESS_KEY_HIDDEN} AWS_SECRET_ACCESS_KEY={SECRET_KEY_HIDDEN} {}",
            format!("{berth:?}").replace('"', "")
        );
        env.credentials(&mut berth);
        // Distribution's: its standard configuration on the other prefix.
        let yaml = super::distribution_config(
            &super::DistStore::S3 {
                endpoint: &env.endpoint,
                region: &env.region,
                bucket: &env.bucket,
                root: &format!("/{}", roots[1]),
            },
            super::free_port()?,
            None,
            None,
        );
        let yml = dir.join("distribution.yml");
        super::write_private(&yml, &env.fill(&yaml))?;
        let mut dist = Command::new(&launch.dist_bin);
        // Without AWS_CA_BUNDLE, as for its server (`Launch::distribution`).
        dist.arg("garbage-collect")
            .arg(&yml)
            .env_remove("AWS_CA_BUNDLE");
        let dist_text = format!("{dist:?}").replace('"', "");
        eprintln!("== collection over {} objects", data.objects.len());
        // Once each (a second run would find nothing left to remove), Berth first, settled
        // before each.
        for (i, mut cmd) in [berth, dist].into_iter().enumerate() {
            let log = dir.join(format!("{}.log", NAMES[i].to_lowercase()));
            let out = std::fs::File::create(&log)?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            self.settler.settle().await?;
            let t = Instant::now();
            let status = tokio::process::Command::from(cmd).status().await?;
            let secs = t.elapsed().as_secs_f64();
            let tail = || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            };
            if !status.success() {
                bail!("{}'s collection failed ({status}):\n{}", NAMES[i], tail());
            }
            self.table.push(row, i, secs);
            data.check(&store, roots[i]).await.map_err(|e| {
                format!(
                    "{} after its collection: {e}; the last lines it printed:\n{}",
                    NAMES[i],
                    tail()
                )
            })?;
        }
        self.table.notes.push(format!(
            "collection: {} repositories of one tagged image ({} layers and a config, {} objects with their links) and {} unreferenced blobs each, {} objects per prefix, written directly to Garage in {:.0} s for both prefixes; each registry removed exactly the {} unreferenced blobs (checked by listing its prefix afterwards)",
            self.o.gc_repos,
            self.o.gc_layers,
            data.objects.len() / self.o.gc_repos - self.o.gc_orphans,
            self.o.gc_orphans,
            data.objects.len(),
            wrote,
            data.orphans.len()
        ));
        self.commands
            .push(format!("collection (Berth): {berth_text}"));
        self.commands.push(format!(
            "collection (Distribution): {dist_text}, its configuration the one above with rootdirectory /{}",
            roots[1]
        ));
        Ok(())
    }
}

/// The bucket a collection runs over, as keys under `docker/registry/v2/` (Distribution's
/// layout, which Berth keeps): the objects, the blobs a tagged manifest references (which must
/// stay) and the unreferenced ones (which must go).
struct GcData {
    objects: Vec<(String, Bytes)>,
    referenced: BTreeSet<String>,
    orphans: BTreeSet<String>,
    /// Objects under `repositories/`, which neither collection may remove.
    repository_objects: usize,
}

/// A blob's key under `docker/registry/v2/`.
fn blob_key(digest: &str) -> String {
    blob_key_suffix(digest)[1..].to_owned()
}

fn link(digest: &str) -> Bytes {
    Bytes::from(digest.to_owned())
}

impl GcData {
    /// Per repository: `gc_layers` small layers, a config and an OCI manifest naming them, the
    /// manifest tagged `latest`, the layers and config linked (`_layers`), the manifest's
    /// revision and tag links; and `gc_orphans` blobs nothing references (an upload whose
    /// manifest never came). All content is random: nothing is shared.
    fn generate(o: &Opts, rng: &mut super::Rng) -> GcData {
        let mut data = GcData {
            objects: Vec::new(),
            referenced: BTreeSet::new(),
            orphans: BTreeSet::new(),
            repository_objects: 0,
        };
        for r in 0..o.gc_repos {
            let repo = format!("repositories/bench/gc/r{r:05}");
            let layers: Vec<Blob> = (0..o.gc_layers)
                .map(|_| Blob::whole(Bytes::from(rng.bytes(512))))
                .collect();
            let config = config_blob(&format!("gc r{r} {}", rng.next_u64()));
            let manifest = Blob::whole(image_manifest(&config, &layers));
            let before = data.objects.len();
            for blob in layers.iter().chain([&config]) {
                data.objects
                    .push((blob_key(&blob.digest), blob.head.clone()));
                let (alg, hex) = blob.digest.split_once(':').expect("digest");
                data.objects.push((
                    format!("{repo}/_layers/{alg}/{hex}/link"),
                    link(&blob.digest),
                ));
                data.referenced.insert(blob.digest.clone());
            }
            let (alg, hex) = manifest.digest.split_once(':').expect("digest");
            data.objects
                .push((blob_key(&manifest.digest), manifest.head.clone()));
            data.referenced.insert(manifest.digest.clone());
            for key in [
                format!("{repo}/_manifests/revisions/{alg}/{hex}/link"),
                format!("{repo}/_manifests/tags/latest/current/link"),
                format!("{repo}/_manifests/tags/latest/index/{alg}/{hex}/link"),
            ] {
                data.objects.push((key, link(&manifest.digest)));
            }
            data.repository_objects += data.objects[before..]
                .iter()
                .filter(|(k, _)| k.starts_with("repositories/"))
                .count();
            for _ in 0..o.gc_orphans {
                let orphan = Blob::whole(Bytes::from(rng.bytes(512)));
                data.objects
                    .push((blob_key(&orphan.digest), orphan.head.clone()));
                data.orphans.insert(orphan.digest);
            }
        }
        data
    }

    /// Writes every object under `<root>/docker/registry/v2/`, 64 at a time.
    async fn write(&self, store: &Arc<AmazonS3>, root: &str) -> R<()> {
        futures::stream::iter(self.objects.iter().map(|(key, body)| {
            let store = store.clone();
            let key = Key::from(format!("{root}/docker/registry/v2/{key}"));
            let body = PutPayload::from(body.clone());
            async move { store.put(&key, body).await }
        }))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(())
    }

    /// Lists what is left under `root`: exactly the referenced blobs, and every repository
    /// object.
    async fn check(&self, store: &AmazonS3, root: &str) -> R<()> {
        let base = format!("{root}/docker/registry/v2");
        let blobs: Vec<_> = store
            .list(Some(&Key::from(format!("{base}/blobs"))))
            .try_collect()
            .await?;
        let mut left = BTreeSet::new();
        for meta in &blobs {
            let parts: Vec<&str> = meta.location.as_ref().rsplit('/').take(4).collect();
            // data, <hex>, <ab>, <alg>
            match parts.as_slice() {
                ["data", hex, _, alg] => {
                    left.insert(format!("{alg}:{hex}"));
                }
                _ => bail!("an object that is not a blob: {}", meta.location),
            }
        }
        let kept = self.referenced.difference(&left).count();
        let removed = self.orphans.intersection(&left).count();
        if kept > 0 || removed > 0 || left.len() != self.referenced.len() {
            bail!(
                "{} of {} referenced blobs are gone, {} of {} unreferenced blobs are left, {} blobs in all",
                kept,
                self.referenced.len(),
                removed,
                self.orphans.len(),
                left.len()
            );
        }
        let repository_objects = store
            .list(Some(&Key::from(format!("{base}/repositories"))))
            .try_fold(0usize, |n, _| async move { Ok(n + 1) })
            .await?;
        if repository_objects != self.repository_objects {
            bail!(
                "{repository_objects} objects under repositories/, {} written",
                self.repository_objects
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Garage's own throughput: the limit

/// Garage's own PUT and GET throughput of the benchmark's big blob (a new variant each round,
/// the same size and bytes as the pushes), with object_store on the same loopback, after the
/// registries stopped, settled like the timed runs: one PutObject of the whole blob; a multipart
/// upload in parts of Berth's part size, 4 in flight; one GetObject streamed and counted.
pub(super) async fn garage_limits(
    o: &Opts,
    env: &S3Env,
    big: &Big,
    settler: &mut Settler,
) -> R<Vec<Limit>> {
    eprintln!("== Garage's own throughput (object_store on loopback)");
    let store = Arc::new(env.store()?);
    let part = berth::storage::s3::S3Config::default().part_size;
    let in_flight = 4;
    let mut runs: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        let blob = big.variant(u64::MAX - round as u64);
        let len = blob.len();
        let single = Key::from(format!("limits/put-{round}"));
        let multi = Key::from(format!("limits/multipart-{round}"));

        settler.settle().await?;
        let t = Instant::now();
        store
            .put(&single, PutPayload::from_iter(blob.pieces(0, len)))
            .await?;
        runs[0].push(len as f64 / t.elapsed().as_secs_f64() / 1e6);

        settler.settle().await?;
        let t = Instant::now();
        let id = store.create_multipart(&multi).await?;
        let parts = futures::stream::iter((0..len.div_ceil(part)).map(|k| {
            let (store, multi, id) = (store.clone(), multi.clone(), id.clone());
            let payload = PutPayload::from_iter(blob.pieces(k * part, ((k + 1) * part).min(len)));
            async move { store.put_part(&multi, &id, k, payload).await }
        }))
        .buffered(in_flight)
        .try_collect::<Vec<_>>()
        .await?;
        store.complete_multipart(&multi, &id, parts).await?;
        runs[1].push(len as f64 / t.elapsed().as_secs_f64() / 1e6);

        settler.settle().await?;
        let t = Instant::now();
        let mut stream = store.get(&single).await?.into_stream();
        let mut got = 0usize;
        while let Some(chunk) = stream.next().await {
            got += chunk?.len();
        }
        let secs = t.elapsed().as_secs_f64();
        if got != len {
            bail!("Garage GET of {single}: {got} bytes, want {len}");
        }
        runs[2].push(len as f64 / secs / 1e6);
        store.delete(&single).await?;
        store.delete(&multi).await?;
    }
    let mib = o.big / MIB;
    let [put, multipart, get] = runs;
    let out = vec![
        Limit {
            id: "garage_put",
            label: format!("Garage PUT of a {mib} MiB blob, one request"),
            value: median(&put),
            runs: put,
            unit: "MB/s",
            method: "object_store `put`: one PutObject of a new variant of the pushes' random blob, from memory".to_owned(),
        },
        Limit {
            id: "garage_put_multipart",
            label: format!(
                "Garage PUT of a {mib} MiB blob, {} MiB parts, {in_flight} in flight",
                part / MIB
            ),
            value: median(&multipart),
            runs: multipart,
            unit: "MB/s",
            method: format!(
                "object_store `MultipartStore`: create, parts of Berth's part size ({} MiB, as Berth sends a push), {in_flight} in flight, complete",
                part / MIB
            ),
        },
        Limit {
            id: "garage_get",
            label: format!("Garage GET of a {mib} MiB blob"),
            value: median(&get),
            runs: get,
            unit: "MB/s",
            method: "object_store `get`: one GetObject of the blob the PUT wrote, streamed and counted (not hashed)".to_owned(),
        },
    ];
    for l in &out {
        eprintln!("  {:<52} {} {}", l.label, fmt_num(l.value), l.unit);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The report's S3 parts

/// A count (a median of counts may fall between two).
fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        fmt_num(v)
    }
}

/// A ratio as the results table writes it.
fn times(r: f64) -> String {
    if r >= 100.0 {
        format!("{}×", fmt_num(r))
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

/// One of issue 13's targets for the S3 mode, judged on this run's medians.
pub(super) struct Target {
    pub(super) what: String,
    pub(super) want: String,
    pub(super) got: String,
    /// `None`: its rows did not run.
    pub(super) met: Option<bool>,
}

impl Report<'_> {
    /// Garage's own PUT throughput: the faster of one request and a multipart upload.
    fn garage_put(&self) -> Option<(f64, &'static str)> {
        let single = self.limit("garage_put");
        let multi = self.limit("garage_put_multipart");
        match (single, multi) {
            (Some(s), Some(m)) if m > s => Some((m, "multipart")),
            (Some(s), _) => Some((s, "one request")),
            (None, Some(m)) => Some((m, "multipart")),
            _ => None,
        }
    }

    /// Each S3 row against Garage's own throughput.
    pub(super) fn s3_bounds(&self) -> Vec<String> {
        let o = self.o;
        let mib = o.big / MIB;
        let pct = |v: f64, limit: f64| format!("{:.0}%", 100.0 * v / limit);
        let mut out = Vec::new();
        if let Some((put, how)) = self.garage_put() {
            for (id, what) in [
                (format!("push_monolithic_{mib}MiB"), "monolithic push"),
                (format!("push_chunked_{mib}MiB"), "chunked push"),
            ] {
                if let Some([b, d]) = self.row(&id) {
                    out.push(format!(
                        "{mib} MiB {what}: Berth {} MB/s, {} of Garage's own PUT ({} MB/s, {how}); Distribution {} MB/s, {}.",
                        fmt_num(b), pct(b, put), fmt_num(put), fmt_num(d), pct(d, put)
                    ));
                }
            }
        }
        if let (Some([b, d]), Some(get)) = (
            self.row(&format!("pull_{mib}MiB")),
            self.limit("garage_get"),
        ) {
            out.push(format!(
                "one {mib} MiB pull (the blob's first read, from the bucket): Berth {} MB/s, {} of Garage's own GET ({} MB/s); Distribution {} MB/s, {}.",
                fmt_num(b), pct(b, get), fmt_num(get), fmt_num(d), pct(d, get)
            ));
        }
        let (n, smib) = (o.storm_pulls, o.storm_blob / MIB);
        let id = format!("storm_{n}x{smib}MiB_2_replicas");
        if let (Some([bt, dt]), Some([bg, dg]), Some([bb, db])) = (
            self.row(&id),
            self.row(&format!("{id}_s3_gets")),
            self.row(&format!("{id}_s3_read")),
        ) {
            out.push(format!(
                "pull storm ({n} pulls of a new {smib} MiB blob over 2 replicas, {} MiB served): Berth read {} MiB of the blob from Garage in {} GETs, in {} s; Distribution {} MiB in {} GETs, in {} s.",
                fmt_num((n * smib) as f64), fmt_num(bb), count(bg), fmt_num(bt), fmt_num(db), count(dg), fmt_num(dt)
            ));
        }
        out
    }

    /// Issue 13's targets for the S3 mode.
    pub(super) fn s3_targets(&self) -> Vec<Target> {
        let o = self.o;
        let mib = o.big / MIB;
        let mut out = Vec::new();
        let ratio = |id: &str, kind: Kind| {
            self.row(id).map(|[b, d]| match kind {
                Kind::Time => d / b,
                _ => b / d,
            })
        };
        let mut against = |what: String, id: String, kind: Kind, want: f64| {
            let r = ratio(&id, kind);
            out.push(Target {
                what,
                want: format!("≥ {want}× Distribution"),
                got: r.map_or("n/a".to_owned(), times),
                met: r.map(|r| r >= want),
            });
        };
        for (id, what) in [
            (format!("push_monolithic_{mib}MiB"), "push, monolithic"),
            (format!("push_chunked_{mib}MiB"), "push, chunked"),
            (format!("pull_{mib}MiB"), "pull"),
        ] {
            against(format!("{what} {mib} MiB"), id, Kind::Higher, 1.2);
        }
        let wrk = format!("manifest_get_c{}_rps", o.wrk_conns);
        against("manifest GET by tag".to_owned(), wrk, Kind::Higher, 10.0);
        for conc in [o.tag_conc, 1] {
            against(
                format!("tag PUT, {conc} in flight"),
                format!("tag_put_{}_c{conc}", o.tags),
                Kind::Higher,
                2.0,
            );
        }
        against(
            format!("image of {} layers", o.layers),
            format!("push_image_{}x{}KiB", o.layers, o.layer_size / 1024),
            Kind::Time,
            2.0,
        );
        let put = self.garage_put().map(|(v, _)| v);
        let get = self.limit("garage_get");
        for (id, what, limit) in [
            (format!("push_monolithic_{mib}MiB"), "push, monolithic", put),
            (format!("push_chunked_{mib}MiB"), "push, chunked", put),
            (format!("pull_{mib}MiB"), "pull", get),
        ] {
            let share = self.row(&id).zip(limit).map(|([b, _], l)| b / l);
            out.push(Target {
                what: format!("{what} {mib} MiB, Berth"),
                want: format!(
                    "≥ 80% of Garage's own {}",
                    if what == "pull" { "GET" } else { "PUT" }
                ),
                got: share.map_or("n/a".to_owned(), |s| format!("{:.0}%", 100.0 * s)),
                met: share.map(|s| s >= 0.8),
            });
        }
        let (n, smib) = (o.storm_pulls, o.storm_blob / MIB);
        // Bytes, not GETs: a replica downloads a large blob as ranges side
        // by side, several GETs for one read of it.
        let read = self
            .row(&format!("storm_{n}x{smib}MiB_2_replicas_s3_read"))
            .map(|[b, _]| b);
        out.push(Target {
            what: format!("pull storm, {n} pulls over 2 replicas, Berth"),
            want: format!(
                "the blob read from Garage at most once per replica ({} MiB)",
                2 * smib
            ),
            got: read.map_or("n/a".to_owned(), |r| format!("{} MiB", fmt_num(r))),
            met: read.map(|r| r <= 2.0 * smib as f64),
        });
        out
    }

    pub(super) fn s3_targets_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .s3_targets()
            .into_iter()
            .map(|t| {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "not run",
                };
                vec![t.what, t.want, t.got, met.to_owned()]
            })
            .collect();
        super::markdown_table_aligned(&["target (issue 13)", "want", "measured", "met"], &rows, 1)
    }

    /// The S3 run's method: what ran, against what, and how.
    pub(super) fn s3_method(&self) -> String {
        let o = self.o;
        let mut md = String::new();
        md.push_str(&format!(
            "- storage: {}, {GARAGE_SETUP}; both registries in its one bucket, each under its own prefix (Berth `--s3-prefix`, Distribution `rootdirectory`)\n",
            self.garage_version.as_deref().unwrap_or("unknown")
        ));
        md.push_str(&format!(
            "- berth: `{}` (its data directory holds only the blob cache, on by default)\n",
            self.server_cmds[0]
        ));
        md.push_str(&format!(
            "- distribution: `{}` with its standard configuration (Debian's /etc/docker/registry/config.yml: blob descriptor cache in memory, nosniff header, storage health check), its `s3` driver as its documentation sets it up for an S3-compatible store (`regionendpoint`, `forcepathstyle`) with redirects off, and only the address and logging changed:\n\n```yaml\n{}```\n",
            self.server_cmds[1], self.distribution_yaml
        ));
        md.push_str(&format!(
            "- settling before every timed run: `sync`, then wait until Dirty + Writeback in /proc/meminfo is at most {} MiB (Garage does not fsync, so a run's writes would otherwise be written back during the next); no checkpoint wait: on S3 Berth keeps no journal\n",
            super::SETTLED_DIRTY_KIB / 1024
        ));
        md.push_str(&format!(
            "- pull storm: two replicas of each registry on prefixes of their own (`storm-berth`, `/storm-distribution`; Distribution's share `http.secret`), each with a fresh data directory; per round a new {} MiB blob is pushed through the first replica, then {} concurrent pulls by reqwest, pull k through replica k mod 2; every replica reaches Garage through a counting HTTP/1.1 proxy in the benchmark (requests forwarded unchanged, one upstream connection per client connection), which counts the GETs of the blob's key and the bytes they answered\n",
            o.storm_blob / MIB,
            o.storm_pulls
        ));
        md.push_str(&format!(
            "- collection: {} repositories `bench/gc/rNNNNN`, each one OCI image tagged `latest` ({} layers of 512 random bytes, a config, the manifest, their `_layers`, revision and tag links) and {} unreferenced blobs (uploads whose manifest never came), written straight into Distribution's layout under `gc-berth/` and `gc-distribution/`; Berth's `berth gc` (online by design, run here as a command) and Distribution's `registry garbage-collect` (offline, no server on its prefix) each timed from start to exit, then the prefix listed: exactly the unreferenced blobs must be gone\n",
            o.gc_repos, o.gc_layers, o.gc_orphans
        ));
        md
    }
}
