//! The benchmark's mirror rows (group `mirror`, filesystem mode): Berth's pull-through mirror
//! (`[[proxy]]`) against Distribution's proxy mode (its standard configuration plus
//! `proxy.remoteurl`), both in front of one upstream: a third Distribution in its standard
//! configuration, reached through a counting proxy so that the rows can say how many blob GETs
//! reached it. On loopback the upstream is as fast as memory and the mirror's own work (a write
//! to disk, a hash and a second send of every byte) shares the machine's cores with it; a real
//! upstream is across a network, so the cold pull is also measured through a second proxy that
//! paces the upstream's answers to a 1 Gbit/s link. The limits are the same pulls straight from
//! the upstream through the same proxy and, for the warm pull, a pull of the same image pushed
//! to Berth (docs/design/mirror.md §13).

use std::sync::Arc;
use std::time::Instant;

use reqwest::header;
use reqwest::{Client, StatusCode};

use super::proxy::CountingProxy;
use super::{
    call, config_blob, fmt_num, image_manifest, median, order, pull_count, push_monolithic,
    put_manifest, run_pool, Bench, Big, Blob, Kind, Launch, Limit, Reg, Report, ACCEPT_MANIFESTS,
    MIB, NAMES, R,
};

/// Layer downloads in flight in one image pull: dockerd's default `max-concurrent-downloads`.
const PULL_PARALLEL: usize = 3;

/// The speed of the paced upstream link: 1 Gbit/s.
const LINK_BYTES_PER_SEC: f64 = 125e6;

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
        let proxy = CountingProxy::start(&upstream.reg.base, None).await?;
        let link = CountingProxy::start(&upstream.reg.base, Some(LINK_BYTES_PER_SEC)).await?;
        let config = dir.join("berth-mirror.toml");
        std::fs::write(
            &config,
            format!(
                "[[proxy]]\nprefix = \"hub\"\nupstream = \"{}\"\n\n[[proxy]]\nprefix = \"link\"\nupstream = \"{}\"\n",
                proxy.endpoint, link.endpoint
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
            // Distribution mirrors one upstream per instance.
            launch
                .distribution(
                    &dir,
                    "distribution-mirror-link",
                    None,
                    None,
                    None,
                    Some(&link.endpoint),
                )?
                .0,
        ];
        let result = async {
            for m in &mut mirrors {
                m.wait_ready(&self.client).await?;
            }
            self.commands.push(format!(
                "mirror rows: Berth with `{}` holding `[[proxy]] prefix = \"hub\"` (upstream: the counting proxy in front of Distribution `{}`) and `prefix = \"link\"` (the proxy pacing to 1 Gbit/s); Distribution's proxy mode: `{}` and `{}` (its standard configuration plus `proxy: remoteurl:` the one or the other proxy)",
                mirrors[0].command, upstream.command, mirrors[1].command, mirrors[2].command
            ));
            let regs = [
                mirrors[0].reg.clone(),
                mirrors[1].reg.clone(),
                mirrors[2].reg.clone(),
            ];
            self.mirror_rows(big, &upstream.reg, &regs, [&proxy, &link])
                .await
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

    /// The rows, through `mirrors`: Berth, Distribution in front of `proxies[0]`, Distribution
    /// in front of `proxies[1]` (the paced link).
    async fn mirror_rows(
        &mut self,
        big: &Big,
        upstream: &Reg,
        mirrors: &[Reg; 3],
        proxies: [&CountingProxy; 2],
    ) -> R<Vec<Limit>> {
        // Berth serves the upstream's `bench/x` as `hub/bench/x` (`link/bench/x` over the paced
        // link); Distribution's proxy mode serves it under its own name.
        let via = |i: usize, repo: &str| match i {
            0 => format!("hub/{repo}"),
            _ => repo.to_owned(),
        };
        let via_link = |i: usize, repo: &str| match i {
            0 => (mirrors[0].clone(), format!("link/{repo}")),
            _ => (mirrors[2].clone(), repo.to_owned()),
        };
        // The upstream as the mirrors reach it: through the counting proxy, paced or not.
        let direct = Reg {
            name: upstream.name,
            base: proxies[0].endpoint.clone(),
        };
        let direct_link = Reg {
            name: upstream.name,
            base: proxies[1].endpoint.clone(),
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
        let cold_link = self.table.add(
            &format!("mirror_cold_pull_{layers}x{}MiB_1gbit", layer_size / MIB),
            &format!("mirror: the same over a 1 Gbit/s upstream link, {shape}"),
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
        let (mut direct_runs, mut link_runs, mut local, mut direct_blob) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
            let secs = timed(pull_image(&self.client, &direct, &repo, "v1", &blobs)).await?;
            direct_runs.push(mbs(image_bytes, secs));
            let secs = timed(pull_image(&self.client, &direct_link, &repo, "v1", &blobs)).await?;
            link_runs.push(mbs(image_bytes, secs));
            for i in order(round) {
                let (reg, name) = via_link(i, &repo);
                self.settler.settle().await?;
                let secs = timed(pull_image(&self.client, &reg, &name, "v1", &blobs)).await?;
                self.table.push(cold_link, i, mbs(image_bytes, secs));
                self.settler.wrote(i);
            }
            for i in order(round) {
                // The same pull twice: cold (fetched), then warm (cached).
                let name = via(i, &repo);
                for row in [cold, warm] {
                    self.settler.settle().await?;
                    let pull = pull_image(&self.client, &mirrors[i], &name, "v1", &blobs);
                    let secs = timed(pull).await?;
                    self.table.push(row, i, mbs(image_bytes, secs));
                    self.settler.wrote(i);
                }
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
            let secs = timed(pull_count(&self.client, &direct, &storm_repo, &blob)).await?;
            direct_blob.push(mbs(storm_size, secs));
            for i in order(round) {
                self.settler.settle().await?;
                proxies[0].take();
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
                let gets = proxies[0]
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
                    fmt_num(mbs(n * storm_size, wall)),
                    if gets == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(vec![
            side_limit(
                "mirror_upstream_pull",
                format!("image pull straight from the upstream, {shape}"),
                direct_runs,
                "the mirror rows' image, pulled from the upstream Distribution through the counting proxy the mirrors use, with the same client (manifest, then blobs 3 in flight), its files in the page cache".to_owned(),
            ),
            side_limit(
                "mirror_upstream_pull_1gbit",
                format!("the same over the 1 Gbit/s link, {shape}"),
                link_runs,
                "the same pull through the proxy that paces the upstream's answers to 1 Gbit/s".to_owned(),
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
                "the storm's blob, pulled once from the upstream Distribution through the counting proxy, in the page cache".to_owned(),
            ),
        ])
    }
}

impl Report<'_> {
    /// Each mirror row against the pull it is held to, in the same run.
    pub(super) fn mirror_bounds(&self) -> Vec<String> {
        let o = self.o;
        let (layers, mib) = (o.mirror_layers, o.mirror_layer / MIB);
        let pct = |v: f64, limit: f64| format!("{:.0}%", 100.0 * v / limit);
        let mut out = Vec::new();
        for (id, limit, what) in [
            (
                format!("mirror_cold_pull_{layers}x{mib}MiB"),
                "mirror_upstream_pull",
                "mirror, cold pull with the upstream on loopback (as fast as memory, on the same two cores as the mirror's own write, hash and second send of every byte)",
            ),
            (
                format!("mirror_cold_pull_{layers}x{mib}MiB_1gbit"),
                "mirror_upstream_pull_1gbit",
                "mirror, cold pull over a 1 Gbit/s upstream link",
            ),
        ] {
            if let (Some([b, d]), Some(l)) = (self.row(&id), self.limit(limit)) {
                out.push(format!(
                    "{what}: Berth {} MB/s, {} of the same pull straight from the upstream ({} MB/s); Distribution's proxy mode {} MB/s, {}.",
                    fmt_num(b), pct(b, l), fmt_num(l), fmt_num(d), pct(d, l)
                ));
            }
        }
        if let (Some([b, d]), Some(l)) = (
            self.row(&format!("mirror_warm_pull_{layers}x{mib}MiB")),
            self.limit("mirror_local_pull"),
        ) {
            out.push(format!(
                "mirror, warm pull: Berth {} MB/s, {} of a pull of the same image pushed to Berth ({} MB/s); Distribution's proxy mode {} MB/s.",
                fmt_num(b), pct(b, l), fmt_num(l), fmt_num(d)
            ));
        }
        let (n, smib) = (o.mirror_storm_pulls, o.mirror_storm_blob / MIB);
        let id = format!("mirror_storm_{n}x{smib}MiB");
        if let (Some([bt, dt]), Some([bg, dg]), Some(l)) = (
            self.row(&id),
            self.row(&format!("{id}_upstream_gets")),
            self.limit("mirror_upstream_blob_pull"),
        ) {
            let all = |secs: f64| (n * o.mirror_storm_blob) as f64 / secs / 1e6;
            out.push(format!(
                "mirror, {n} concurrent cold pulls of one {smib} MiB blob: Berth {} MB/s in all with {bg:.0} upstream GET(s) of the blob, {} of one pull straight from the upstream ({} MB/s); Distribution's proxy mode {} MB/s with {dg:.0} upstream GETs.",
                fmt_num(all(bt)), pct(all(bt), l), fmt_num(l), fmt_num(all(dt))
            ));
        }
        out
    }
}
