//! The benchmark's mirror rows (group `mirror`, filesystem mode): Berth's pull-through mirror
//! (`[[proxy]]`) against Distribution's proxy mode (its standard configuration plus
//! `proxy.remoteurl`), both in front of one upstream: a third Distribution in its standard
//! configuration, reached through a counting proxy so that the rows can say how many blob GETs
//! reached it. The limits are pulls straight from that upstream and, for the warm pull, a pull
//! of the same image pushed to Berth (docs/design/mirror.md §13).

use std::sync::Arc;
use std::time::Instant;

use reqwest::header;
use reqwest::{Client, StatusCode};

use super::s3::CountingProxy;
use super::{
    call, config_blob, image_manifest, median, order, pull_count, push_monolithic, put_manifest,
    run_pool, Bench, Big, Blob, Kind, Launch, Limit, Reg, ACCEPT_MANIFESTS, MIB, NAMES, R,
};

/// Layer downloads in flight in one image pull: dockerd's default `max-concurrent-downloads`.
const PULL_PARALLEL: usize = 3;

/// Pulls an image as a client does: its manifest by tag, then its blobs, [`PULL_PARALLEL`] at
/// a time, each read whole and counted.
async fn pull_image(c: &Client, reg: &Reg, repo: &str, tag: &str, blobs: &Arc<Vec<Blob>>) -> R<()> {
    let url = format!("{}/v2/{repo}/manifests/{tag}", reg.base);
    call(
        c.get(url).header(header::ACCEPT, ACCEPT_MANIFESTS),
        StatusCode::OK,
        "GET manifest",
    )
    .await?;
    let (c, reg, repo, blobs) = (c.clone(), reg.clone(), repo.to_owned(), blobs.clone());
    run_pool(blobs.len(), PULL_PARALLEL, move |k| {
        let (c, reg, repo, blobs) = (c.clone(), reg.clone(), repo.clone(), blobs.clone());
        async move { pull_count(&c, &reg, &repo, &blobs[k]).await }
    })
    .await?;
    Ok(())
}

/// Pushes an image: its blobs, then its manifest under `tag`.
async fn push_image(
    c: &Client,
    reg: &Reg,
    repo: &str,
    tag: &str,
    blobs: &[Blob],
    manifest: bytes::Bytes,
) -> R<()> {
    for blob in blobs {
        push_monolithic(c, reg, repo, blob).await?;
    }
    put_manifest(c, reg, repo, tag, manifest).await
}

/// Times `work`, in seconds.
async fn timed<F: std::future::Future<Output = R<()>>>(work: F) -> R<f64> {
    let t = Instant::now();
    work.await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Values of a limit measured beside the rows, one a round.
fn side_limit(id: &'static str, label: String, runs: Vec<f64>, method: String) -> Limit {
    Limit {
        id,
        label,
        value: median(&runs),
        runs,
        unit: "MB/s",
        method,
    }
}

impl Bench {
    /// The mirror rows: a cold pull of a new image through each mirror, the same pull again
    /// (warm), and `mirror_storm_pulls` concurrent cold pulls of one new blob; the order of the
    /// two mirrors alternates per round, and the disk settles before every timed run.
    pub(super) async fn mirror(&mut self, launch: &Launch, big: &Big) -> R<Vec<Limit>> {
        let dir = launch.tmp.join("mirror");
        std::fs::create_dir_all(&dir)?;
        let (mut upstream, _) = launch.distribution(&dir, "upstream", None, None, None, None)?;
        upstream.wait_ready(&self.client).await?;
        let proxy = CountingProxy::start(&upstream.reg.base).await?;
        let config = dir.join("berth-mirror.toml");
        std::fs::write(
            &config,
            format!(
                "[[proxy]]\nprefix = \"hub\"\nupstream = \"{}\"\n",
                proxy.endpoint
            ),
        )?;
        let mut mirrors = [
            launch.berth(&dir, "berth-mirror", None, None, Some(&config))?,
            launch
                .distribution(
                    &dir,
                    "distribution-mirror",
                    None,
                    None,
                    None,
                    Some(&proxy.endpoint),
                )?
                .0,
        ];
        let result = async {
            for m in &mut mirrors {
                m.wait_ready(&self.client).await?;
            }
            self.commands.push(format!(
                "mirror rows: Berth with `{}` holding `[[proxy]] prefix = \"hub\"`, upstream the counting proxy in front of Distribution `{}`; Distribution's proxy: `{}` (its standard configuration plus `proxy: remoteurl:` the same proxy)",
                mirrors[0].command, upstream.command, mirrors[1].command
            ));
            let regs = [mirrors[0].reg.clone(), mirrors[1].reg.clone()];
            self.mirror_rows(big, &upstream.reg, &regs, &proxy).await
        }
        .await;
        if result.is_err() {
            for s in mirrors.iter().chain([&upstream]) {
                eprintln!("--- last lines of {} log:\n{}", s.reg.name, s.log_tail());
            }
        }
        for s in &mut mirrors {
            s.stop();
        }
        upstream.stop();
        result
    }

    async fn mirror_rows(
        &mut self,
        big: &Big,
        upstream: &Reg,
        mirrors: &[Reg; 2],
        proxy: &CountingProxy,
    ) -> R<Vec<Limit>> {
        // Berth serves the upstream's `bench/x` as `hub/bench/x`; Distribution's proxy mode
        // serves it under its own name.
        let via = |i: usize, repo: &str| match i {
            0 => format!("hub/{repo}"),
            _ => repo.to_owned(),
        };
        let (layers, layer_size) = (self.o.mirror_layers, self.o.mirror_layer);
        let image_bytes = layers * layer_size;
        let shape = format!("{layers} × {} MiB layers", layer_size / MIB);
        let cold = self.table.add(
            &format!("mirror_cold_pull_{layers}x{}MiB", layer_size / MIB),
            &format!("mirror: cold pull of a new image, {shape}, {PULL_PARALLEL} in flight"),
            "MB/s",
            Kind::Higher,
        );
        let warm = self.table.add(
            &format!("mirror_warm_pull_{layers}x{}MiB", layer_size / MIB),
            &format!("mirror: the same pull again (cached), {shape}"),
            "MB/s",
            Kind::Higher,
        );
        let (n, storm_size) = (self.o.mirror_storm_pulls, self.o.mirror_storm_blob);
        let storm_id = format!("mirror_storm_{n}x{}MiB", storm_size / MIB);
        let storm = self.table.add(
            &storm_id,
            &format!(
                "mirror: {n} concurrent cold pulls of one new {} MiB blob",
                storm_size / MIB
            ),
            "s",
            Kind::Time,
        );
        let storm_gets = self.table.add(
            &format!("{storm_id}_upstream_gets"),
            "mirror: GETs of that blob that reached the upstream",
            "GETs",
            Kind::Fewer,
        );
        let mbs = |bytes: usize, secs: f64| bytes as f64 / secs / 1e6;
        let (mut direct, mut local, mut direct_blob) = (Vec::new(), Vec::new(), Vec::new());
        eprintln!(
            "== mirror: cold and warm pulls of an image of {shape}, then {n} concurrent cold pulls of one {} MiB blob",
            storm_size / MIB
        );
        for round in 0..self.o.rounds {
            // A new image upstream, and the same image pushed to Berth as a local repository.
            let mut blobs: Vec<Blob> = (0..layers)
                .map(|_| {
                    self.variants += 1;
                    big.variant_of(layer_size, self.variants)
                })
                .collect();
            let config = config_blob(&format!("mirror r{round} {}", self.rng.next_u64()));
            let manifest = image_manifest(&config, &blobs);
            blobs.push(config);
            let blobs = Arc::new(blobs);
            let repo = format!("bench/mirror-r{round}");
            push_image(
                &self.client,
                upstream,
                &repo,
                "v1",
                &blobs,
                manifest.clone(),
            )
            .await?;
            push_image(
                &self.client,
                &mirrors[0],
                &format!("local/mirror-r{round}"),
                "v1",
                &blobs,
                manifest,
            )
            .await?;
            self.settler.wrote(0);
            // Read once untimed: every timed pull then reads the upstream from the page cache.
            pull_image(&self.client, upstream, &repo, "v1", &blobs).await?;
            self.settler.settle().await?;
            let secs = timed(pull_image(&self.client, upstream, &repo, "v1", &blobs)).await?;
            direct.push(mbs(image_bytes, secs));
            for i in order(round) {
                self.settler.settle().await?;
                let secs = timed(pull_image(
                    &self.client,
                    &mirrors[i],
                    &via(i, &repo),
                    "v1",
                    &blobs,
                ))
                .await?;
                self.table.push(cold, i, mbs(image_bytes, secs));
                self.settler.wrote(i);
                self.settler.settle().await?;
                let secs = timed(pull_image(
                    &self.client,
                    &mirrors[i],
                    &via(i, &repo),
                    "v1",
                    &blobs,
                ))
                .await?;
                self.table.push(warm, i, mbs(image_bytes, secs));
            }
            self.settler.settle().await?;
            let local_repo = format!("local/mirror-r{round}");
            let secs = timed(pull_image(
                &self.client,
                &mirrors[0],
                &local_repo,
                "v1",
                &blobs,
            ))
            .await?;
            local.push(mbs(image_bytes, secs));

            // The storm: one new blob upstream, pulled by `n` clients at once through each.
            self.variants += 1;
            let blob = big.variant_of(storm_size, self.variants);
            let storm_repo = format!("bench/mirror-storm-r{round}");
            push_monolithic(&self.client, upstream, &storm_repo, &blob).await?;
            pull_count(&self.client, upstream, &storm_repo, &blob).await?;
            self.settler.settle().await?;
            let secs = timed(pull_count(&self.client, upstream, &storm_repo, &blob)).await?;
            direct_blob.push(mbs(storm_size, secs));
            for i in order(round) {
                self.settler.settle().await?;
                proxy.take();
                let (client, reg, repo, blob2) = (
                    self.client.clone(),
                    mirrors[i].clone(),
                    via(i, &storm_repo),
                    blob.clone(),
                );
                let (wall, _) = run_pool(n, n, move |_| {
                    let (client, reg, repo, blob) =
                        (client.clone(), reg.clone(), repo.clone(), blob2.clone());
                    async move { pull_count(&client, &reg, &repo, &blob).await }
                })
                .await?;
                let suffix = format!("/blobs/{}", blob.digest);
                let gets = proxy
                    .take()
                    .iter()
                    .filter(|r| r.method == hyper::Method::GET && r.path.ends_with(&suffix))
                    .count();
                self.table.push(storm, i, wall);
                self.table.push(storm_gets, i, gets as f64);
                self.settler.wrote(i);
                self.table.notes.push(format!(
                    "mirror storm, {} round {}: {n} pulls in {wall:.2} s, {} MB/s in all, {gets} upstream GET{} of the blob",
                    NAMES[i],
                    round + 1,
                    super::fmt_num(mbs(n * storm_size, wall)),
                    if gets == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(vec![
            side_limit(
                "mirror_upstream_pull",
                format!("image pull straight from the upstream, {shape}"),
                direct,
                "the mirror rows' image, pulled from the upstream Distribution with the same client (manifest, then blobs 3 in flight), its files in the page cache".to_owned(),
            ),
            side_limit(
                "mirror_local_pull",
                format!("image pull from Berth, pushed there, {shape}"),
                local,
                "the mirror rows' image pushed to the Berth mirror as a local repository and pulled the same way".to_owned(),
            ),
            side_limit(
                "mirror_upstream_blob_pull",
                format!("one pull of a {} MiB blob straight from the upstream", storm_size / MIB),
                direct_blob,
                "the storm's blob, pulled once from the upstream Distribution, in the page cache".to_owned(),
            ),
        ])
    }
}
