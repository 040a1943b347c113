#!/usr/bin/env bash
# The pull-through mirror with a real client and a real upstream: Debian's
# docker-registry (CNCF Distribution 2.8) holds an image; skopeo pulls it
# through the release binary's `hub` prefix (a `[[proxy]]` entry). Checks:
# the image arrives byte for byte with the upstream's digests; a second pull
# sends no blob request to the upstream (its access log); Berth's store then
# holds the image; skopeo list-tags through the prefix lists the upstream's
# tags; a push under the prefix is refused; podman pulls through
# the prefix into a store of its own; containerd (ctr, a
# private daemon) pulls docker.io/library/... through a hosts.toml mirror,
# which sends `?ns=docker.io`, and Berth caches it under the entry that lists
# that registry; dockerd with Berth in `registry-mirrors` (as
# http://localhost:<port>, a name the entry's `hosts` lists) pulls a Docker
# Hub name through it; with the upstream stopped, the cached image is still
# pulled.
#
#   tests/e2e/mirror.sh      (after tests/e2e/install-clients.sh and a release build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/support/lib.sh
source "$ROOT/tests/support/lib.sh"
BERTH_BIN="${BERTH_BIN:-$ROOT/target/release/berth}"
REGISTRY_BIN="${REGISTRY_BIN:-/usr/bin/docker-registry}"
for bin in "$BERTH_BIN" "$REGISTRY_BIN" "$(command -v skopeo || echo skopeo)" \
  "$(command -v containerd || echo containerd)" "$(command -v ctr || echo ctr)" \
  "$(command -v dockerd || echo dockerd)" "$(command -v docker || echo docker)" \
  "$(command -v podman || echo podman)"; do
  [ -x "$bin" ] || { echo "mirror.sh: $bin missing (build, then tests/e2e/install-clients.sh)" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/berth-mirror.XXXXXX)"
DIST_PID=""
BERTH_PID=""
CTRD_PID=""
DOCKERD_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  for pid in "$DOCKERD_PID" "$CTRD_PID" "$BERTH_PID" "$DIST_PID"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ "$rc" != 0 ]; then
    echo "mirror.sh: Berth's log (last 20 lines):" >&2
    tail -n 20 "$WORK/berth.log" 2>/dev/null | cut -c1-400 | sed 's/^/  | /' >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "FAIL: $*" >&2; exit 1; }
sk() { skopeo --policy "$WORK/policy.json" "$@"; }
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"

# The upstream: Distribution's standard configuration, logging at `info`
# (a "response completed" line per request) so that the requests the
# mirror makes of it can be counted.
DPORT="$(free_port)"
cat >"$WORK/dist.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/dist-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DPORT
YML
env -u AWS_CA_BUNDLE "$REGISTRY_BIN" serve "$WORK/dist.yml" >"$WORK/dist.log" 2>&1 &
DIST_PID=$!
wait_http "http://127.0.0.1:$DPORT/v2/"

# An image built here (no registry on the internet is reachable): a 2 MiB
# layer of random bytes and a config, as an OCI layout, copied upstream.
python3 - "$WORK/oci" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
os.makedirs(f"{out}/blobs/sha256")
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{d}", "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w") as tar:
    content = os.urandom(2 << 20)
    info = tarfile.TarInfo("data.bin"); info.size = len(content)
    tar.addfile(info, io.BytesIO(content))
layer = gzip.compress(raw.getvalue(), mtime=0)
diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
manifest = json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **blob(config)),
    "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer))]}).encode()
m = blob(manifest)
json.dump({"schemaVersion": 2, "manifests": [dict(mediaType="application/vnd.oci.image.manifest.v1+json",
    annotations={"org.opencontainers.image.ref.name": "1"}, **m)]}, open(f"{out}/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{out}/oci-layout", "w"))
PY
sk copy -q --dest-tls-verify=false --preserve-digests "oci:$WORK/oci:1" "docker://127.0.0.1:$DPORT/library/demo:1"
upstream_digest="$(sk inspect --tls-verify=false --format '{{.Digest}}' "docker://127.0.0.1:$DPORT/library/demo:1")"
echo "ok: the upstream holds library/demo:1 ($upstream_digest)"

# Berth, mirroring the upstream under `hub`; `tag_ttl = 0`: every pull of
# the tag asks the upstream (a HEAD).
BPORT="$(free_port)"
cat >"$WORK/berth.toml" <<TOML
[[proxy]]
prefix = "hub"
upstream = "http://127.0.0.1:$DPORT"
ns = ["docker.io"]
hosts = ["localhost"]
tag_ttl = "0s"
TOML
"$BERTH_BIN" serve --listen "127.0.0.1:$BPORT" --data-dir "$WORK/berth-data" \
  --config "$WORK/berth.toml" --log-level info >"$WORK/berth.log" 2>&1 &
BERTH_PID=$!
wait_http "http://127.0.0.1:$BPORT/v2/"

# Blob GETs the upstream answered, from its log.
upstream_blob_gets() {
  grep 'response completed' "$WORK/dist.log" | grep 'http.request.method=GET' | grep -c '/v2/library/demo/blobs/' || true
}
# (skopeo inspect above read the config blob from the upstream itself.)
baseline="$(upstream_blob_gets)"
sk copy -q --src-tls-verify=false "docker://127.0.0.1:$BPORT/hub/library/demo:1" "oci:$WORK/out1:1"
got="$(sk inspect --tls-verify=false --format '{{.Digest}}' "docker://127.0.0.1:$BPORT/hub/library/demo:1")"
[ "$got" = "$upstream_digest" ] || die "through the mirror the digest is $got, upstream $upstream_digest"
for b in "$WORK"/oci/blobs/sha256/*; do
  cmp -s "$b" "$WORK/out1/blobs/sha256/$(basename "$b")" || die "blob $(basename "$b") differs through the mirror"
done
echo "ok: skopeo pulled hub/library/demo:1 through Berth, every blob byte for byte ($got)"

first="$(upstream_blob_gets)"
[ "$((first - baseline))" = 2 ] || die "the first pull made $((first - baseline)) blob GETs upstream, want 2 (config and layer)"
sk copy -q --src-tls-verify=false "docker://127.0.0.1:$BPORT/hub/library/demo:1" "oci:$WORK/out2:1"
again="$(upstream_blob_gets)"
[ "$again" = "$first" ] || die "a second pull made $((again - first)) more blob GETs upstream, want none"
echo "ok: a second pull fetched no blob from the upstream (its log: $again blob GETs in all)"

# Stored in Berth's own data directory, in the layout of pushed content.
link="$WORK/berth-data/docker/registry/v2/repositories/hub/library/demo/_manifests/tags/1/current/link"
[ "$(cat "$link")" = "$upstream_digest" ] || die "the mirror's tag link holds $(cat "$link" 2>/dev/null)"
echo "ok: the mirror stored hub/library/demo:1 under its own tag link"

# The tag list is the upstream's: a tag nobody pulled through the mirror is
# listed too.
sk copy -q --dest-tls-verify=false --preserve-digests "oci:$WORK/oci:1" "docker://127.0.0.1:$DPORT/library/demo:unpulled"
tags="$(sk list-tags --tls-verify=false "docker://127.0.0.1:$BPORT/hub/library/demo" | tr -d ' \n')"
[ "$tags" = '{"Repository":"127.0.0.1:'"$BPORT"'/hub/library/demo","Tags":["1","unpulled"]}' ] ||
  die "skopeo list-tags through the mirror said $tags"
echo "ok: skopeo list-tags through the mirror lists the upstream's tags (1, unpulled)"

if sk copy -q --dest-tls-verify=false "oci:$WORK/oci:1" "docker://127.0.0.1:$BPORT/hub/library/pushed:1" 2>"$WORK/push.err"; then
  die "a push under the mirrored prefix was accepted"
fi
grep -q -i "denied" "$WORK/push.err" || die "the refused push did not say DENIED: $(cat "$WORK/push.err")"
echo "ok: a push under hub/ is refused (DENIED)"

# podman, with a store and configuration of its own (vfs, no network).
write_podman_config "$WORK"
pd() {
  CONTAINERS_STORAGE_CONF="$WORK/storage.conf" CONTAINERS_CONF="$WORK/containers.conf" \
    CONTAINERS_REGISTRIES_CONF=/dev/null podman "$@"
}
pd pull -q --tls-verify=false "127.0.0.1:$BPORT/hub/library/demo:1" >"$WORK/podman-pull.log" 2>&1 ||
  die "podman pull through the mirror failed: $(tail -n 5 "$WORK/podman-pull.log")"
got="$(pd image inspect --format '{{.Digest}}' "127.0.0.1:$BPORT/hub/library/demo:1")"
[ "$got" = "$upstream_digest" ] || die "podman pulled $got through the mirror, upstream has $upstream_digest"
echo "ok: podman pulled hub/library/demo:1 through Berth ($got)"

# containerd as a Kubernetes node runs it: docker.io images, with Berth as
# the mirror in docker.io's hosts.toml. It asks Berth for
# /v2/library/other/manifests/1?ns=docker.io (an image nobody pulled yet).
sk copy -q --dest-tls-verify=false --preserve-digests "oci:$WORK/oci:1" "docker://127.0.0.1:$DPORT/library/other:1"
CTRD="$WORK/ctrd"
mkdir -p "$CTRD" "$WORK/certs.d/docker.io"
write_containerd_config "$CTRD"
containerd --config "$CTRD/config.toml" >"$WORK/containerd.log" 2>&1 &
CTRD_PID=$!
for ((i = 0; i < 300; i++)); do
  [ -S "$CTRD/containerd.sock" ] && break
  kill -0 "$CTRD_PID" 2>/dev/null || die "containerd exited: $(tail -n 5 "$WORK/containerd.log")"
  sleep 0.1
done
[ -S "$CTRD/containerd.sock" ] || die "containerd's socket did not appear"
# The hosts.toml deploy/containerd ships, pointed at this Berth.
sed "s|http://berth.berth.svc.cluster.local:5000|http://127.0.0.1:$BPORT|" \
  "$ROOT/deploy/containerd/hosts.toml" >"$WORK/certs.d/docker.io/hosts.toml"
grep -q "127.0.0.1:$BPORT" "$WORK/certs.d/docker.io/hosts.toml" || die "deploy/containerd/hosts.toml names no Berth host to replace"
ctr -a "$CTRD/containerd.sock" -n mirror-e2e images pull --hosts-dir "$WORK/certs.d" \
  --snapshotter native docker.io/library/other:1 >"$WORK/ctr-pull.log" 2>&1 ||
  die "ctr pull through the mirror failed: $(tail -n 5 "$WORK/ctr-pull.log")"
got="$(ctr -a "$CTRD/containerd.sock" -n mirror-e2e images ls | awk '$1 == "docker.io/library/other:1" { print $3 }')"
[ "$got" = "$upstream_digest" ] || die "ctr pulled $got through the mirror, upstream has $upstream_digest"
link="$WORK/berth-data/docker/registry/v2/repositories/hub/library/other/_manifests/tags/1/current/link"
[ "$(cat "$link" 2>/dev/null)" = "$upstream_digest" ] ||
  die "Berth did not cache docker.io/library/other:1 under hub/library/other"
echo "ok: ctr pulled docker.io/library/other:1 through a hosts.toml mirror (?ns=docker.io), cached as hub/library/other"

# dockerd mirrors Docker Hub only and sends plain names to the mirror's
# host: `docker pull library/third:1` asks http://localhost:<port>/v2/library/third/...
sk copy -q --dest-tls-verify=false --preserve-digests "oci:$WORK/oci:1" "docker://127.0.0.1:$DPORT/library/third:1"
mkdir -p "$WORK/docker"
cat >"$WORK/docker/daemon.json" <<JSON
{"registry-mirrors": ["http://localhost:$BPORT"], "deprecated-key-path": "$WORK/docker/key.json"}
JSON
dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
  --userland-proxy=false --ip-masq=false --config-file "$WORK/docker/daemon.json" \
  --containerd "$CTRD/containerd.sock" --data-root "$WORK/docker/data" \
  --exec-root "$WORK/docker/exec" --pidfile "$WORK/docker/docker.pid" \
  --host "unix://$WORK/docker/docker.sock" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
dk() { docker -H "unix://$WORK/docker/docker.sock" "$@"; }
for ((i = 0; i < 300; i++)); do
  dk version >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$WORK/dockerd.log")"
  sleep 0.2
done
dk version >/dev/null 2>&1 || die "dockerd did not answer"
dk pull -q library/third:1 >"$WORK/docker-pull.log" 2>&1 ||
  die "docker pull through the mirror failed: $(tail -n 5 "$WORK/docker-pull.log")"
got="$(dk image inspect --format '{{index .RepoDigests 0}}' library/third:1)"
[ "$got" = "third@$upstream_digest" ] || die "docker pulled $got through the mirror, upstream has $upstream_digest"
link="$WORK/berth-data/docker/registry/v2/repositories/hub/library/third/_manifests/tags/1/current/link"
[ "$(cat "$link" 2>/dev/null)" = "$upstream_digest" ] ||
  die "Berth did not cache library/third:1 under hub/library/third"
echo "ok: dockerd pulled library/third:1 through registry-mirrors (the entry's hosts), cached as hub/library/third"
kill -TERM "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null || true; DOCKERD_PID=""

kill -TERM "$DIST_PID"; wait "$DIST_PID" 2>/dev/null || true; DIST_PID=""
sk copy -q --src-tls-verify=false "docker://127.0.0.1:$BPORT/hub/library/demo:1" "oci:$WORK/out3:1"
echo "ok: with the upstream stopped, the cached image is still pulled"
