#!/usr/bin/env bash
# End-to-end test: drive real container clients against an OCI Distribution
# registry that is already listening on plain HTTP at ADDR.
#
#   tests/e2e/clients.sh 127.0.0.1:5000
#
# Clients: buildah, podman, skopeo, docker (dockerd), containerd (ctr), and
# the `oras` Python SDK (through tests/e2e/oras_driver.py). Install them with
# tests/e2e/install-clients.sh. Needs root (dockerd, containerd, runc).
#
# Every step prints one PASS/FAIL line; the last line is
#   N passed, M failed            (", K skipped" is added only if K > 0)
# and the exit status is 0 only when nothing failed.
#
# Environment:
#   ALLOW_NO_REFERRERS=1  accept a registry without the OCI 1.1 referrers API
#                         (404 on /v2/<name>/referrers/<digest>). Default: the
#                         referrers step requires the API.
#   E2E_ONLY="a b"        run only these steps (names as printed).
#   E2E_SKIP="a b"        skip these steps, loudly (SKIP line, counted).
#   E2E_KEEP_TMP=1        keep the work dir (logs, stores) after the run.
#   E2E_CMD_TIMEOUT=180   seconds any single client command may take.
#   E2E_STALE_MS=0        how long (ms) a delete made through one connection
#                         may still go unseen through another: the deleted
#                         manifest must be gone within it (polled). 0: at
#                         once, as one server promises. Replicas behind a
#                         balancer each trust their cache for a bounded time
#                         (Berth's cache_ttl_ms): tests/e2e/run-berth.sh
#                         sets it then.
#   E2E_VERBOSE=1         print each step's full log, not only on failure.
#   DOCKER_BIN, PYTHON    docker CLI and python to use.
#
# Auth/TLS mode (tests/e2e/run-berth-auth.sh): with E2E_TLS_CA=<CA file> the
# registry is spoken to over HTTPS and every client must verify its
# certificate against that CA (podman/buildah/skopeo: --tls-verify=true and
# --cert-dir with ca.crt; docker: /etc/docker/certs.d/ADDR/ca.crt, created
# for the run and removed by the EXIT trap; ctr: --tlscacert; oras:
# tls_verify=<CA>; curl: --cacert). With E2E_USER and E2E_PASSWORD as well,
# every client logs in (podman login into $REGISTRY_AUTH_FILE, used by
# podman/buildah/skopeo; docker login; ctr --user; oras login) and the
# extra steps login (first) and auth-refused (last: anonymous pull is 401,
# wrong password fails docker login) run. Unset: plain HTTP, no login.
#
# Nothing here uses the system's container stores, daemons or sockets: every
# client gets its own root/state dirs under a mktemp dir, daemons listen on
# unix sockets in that dir, and the EXIT trap stops every process this script
# started and deletes the dir. Known unavoidable writes outside it:
#   /var/lib/containers/cache/blob-info-cache-v1.boltdb (containers/image's
#   blob-location cache for root; not configurable by env or flag), the
#   empty dir /run/docker/plugins (hard-coded in dockerd), and the dir
#   /run/containerd/s (containerd 1.6 puts shim sockets there, hard-coded;
#   they are removed when the shims exit).
#
# Unprivileged-environment notes (found on this Debian 12 VM):
#   * The sandbox drops CAP_SYS_RESOURCE, and podman lowers its own
#     RLIMIT_NPROC hard limit (32768 here) before starting conmon, so the
#     default container rlimits (copied from the host: nproc 96365,
#     nofile 1048576) make the runtime fail with
#       "crun: setrlimit `RLIMIT_NPROC`: Operation not permitted" /
#       "runc: error setting rlimit type 6: operation not permitted".
#     We pin default_ulimits to 1024 in our containers.conf.
#   * cgroups are "hybrid" (v1 controllers + an empty v2 at .../unified);
#     crun 1.8 refuses that ("cgroups in hybrid mode not supported, drop all
#     controllers from cgroupv2"), so podman uses runc here.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
ADDR="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/support/lib.sh
source "$HERE/../support/lib.sh"
PY="${PYTHON:-python3}"
if [ -z "${DOCKER_BIN:-}" ]; then
  # Prefer the CLI that ships with Debian's dockerd (same API version).
  if [ -x /usr/bin/docker ]; then DOCKER_BIN=/usr/bin/docker; else DOCKER_BIN=docker; fi
fi
CMD_TIMEOUT="${E2E_CMD_TIMEOUT:-180}"
STALE_MS="${E2E_STALE_MS:-0}"
E2E_TLS_CA="${E2E_TLS_CA:-}"
E2E_USER="${E2E_USER:-}"
E2E_PASSWORD="${E2E_PASSWORD:-}"
if [ -n "$E2E_USER" ] && [ -z "$E2E_TLS_CA" ]; then
  echo "clients.sh: E2E_USER needs E2E_TLS_CA (no passwords over plain HTTP)" >&2
  exit 2
fi
if [ -n "$E2E_USER" ] && [ -z "$E2E_PASSWORD" ]; then
  echo "clients.sh: E2E_USER needs E2E_PASSWORD" >&2
  exit 2
fi
if [ -n "$E2E_TLS_CA" ]; then
  [ -s "$E2E_TLS_CA" ] || { echo "clients.sh: E2E_TLS_CA=$E2E_TLS_CA: no such file" >&2; exit 2; }
  E2E_TLS_CA="$(cd "$(dirname "$E2E_TLS_CA")" && pwd)/$(basename "$E2E_TLS_CA")"
  REG="https://${ADDR}"
else
  REG="http://${ADDR}"
fi

TMP="$(mktemp -d /tmp/berth-e2e.XXXXXX)"
RUN_ID="$(basename "$TMP" | LC_ALL=C tr -dc '[:alnum:]' | LC_ALL=C tr '[:upper:]' '[:lower:]')-$(date +%s)"
NS="e2e/${RUN_ID}" # every repository this run touches lives under here
mkdir -p "$TMP/pids" "$TMP/state" "$TMP/logs"

# Registry transport flags of the clients. Plain mode: exactly the flags this
# script always used. TLS mode: verify against E2E_TLS_CA.
CERTS="$TMP/certs" # --cert-dir of podman, buildah, skopeo: holds ca.crt
DOCKER_CERTS=""    # /etc/docker/certs.d/ADDR, when this run created it
DOCKER_CERTS_TOP="" # the highest dir of that path this run created
if [ -n "$E2E_TLS_CA" ]; then
  mkdir -p "$CERTS"
  cp "$E2E_TLS_CA" "$CERTS/ca.crt"
  TLSV=(--tls-verify=true --cert-dir "$CERTS")
  SRC_TLSV=(--src-tls-verify=true --src-cert-dir "$CERTS")
  DEST_TLSV=(--dest-tls-verify=true --dest-cert-dir "$CERTS")
  # ctr (containerd 1.6) speaks plain HTTP to localhost / 127.0.0.1 unless a
  # hosts.toml names an https server, whatever --tlscacert says.
  mkdir -p "$TMP/ctr-hosts/$ADDR"
  cat >"$TMP/ctr-hosts/$ADDR/hosts.toml" <<EOF
server = "https://$ADDR"
[host."https://$ADDR"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$E2E_TLS_CA"
EOF
  CTR_REG=(--hosts-dir "$TMP/ctr-hosts" --tlscacert "$E2E_TLS_CA")
  if [ -n "$E2E_USER" ]; then CTR_REG+=(--user "$E2E_USER:$E2E_PASSWORD"); fi
  CURL_REG=(--cacert "$E2E_TLS_CA")
  if [ -n "$E2E_USER" ]; then CURL_REG+=(-u "$E2E_USER:$E2E_PASSWORD"); fi
else
  TLSV=(--tls-verify=false)
  SRC_TLSV=(--src-tls-verify=false)
  DEST_TLSV=(--dest-tls-verify=false)
  CTR_REG=(--plain-http)
  CURL_REG=()
fi

# ---------------------------------------------------------------- cleanup --

stop_pid() { # name: TERM the process in pids/<name>, KILL after 20 s
  local f="$TMP/pids/$1" pid i st
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  rm -f "$f"
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    if [ -z "$st" ] || [ "$st" = Z ]; then return 0; fi
    sleep 0.1
  done
  echo "clients.sh: $1 (pid $pid) did not stop on TERM, killing" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

stop_all_daemons() {
  local f
  # dockerd first: it talks to its containerd.
  stop_pid dockerd
  for f in "$TMP"/pids/*; do
    [ -e "$f" ] || continue
    stop_pid "$(basename "$f")"
  done
  # Leftover children of our daemons (containerd shims, conmon, container
  # processes) carry our unique work dir in their command line.
  local p
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [ "$p" = "$$" ] && continue
    if { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -qF -- "$TMP/"; then
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

kill_tree() { # pid: the process and all its descendants, children first
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$c"; done
  kill -KILL "$1" 2>/dev/null || true
}

STEP_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$STEP_PID" ]; then
    echo "clients.sh: interrupted during a step (exit $rc); stopping everything it started" >&2
    kill -STOP "$STEP_PID" 2>/dev/null # no new children while we walk the tree
    kill_tree "$STEP_PID"
  fi
  stop_all_daemons
  if [ -n "$DOCKER_CERTS" ]; then
    rm -f "$DOCKER_CERTS/ca.crt"
    local dd="$DOCKER_CERTS"
    while rmdir "$dd" 2>/dev/null && [ "$dd" != "$DOCKER_CERTS_TOP" ]; do dd="$(dirname "$dd")"; done
  fi
  # Unmount anything our clients left mounted below the work dir (shm of a
  # killed podman container, runc rootfs binds, ...), deepest first.
  awk -v t="$TMP/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  if [ "${E2E_KEEP_TMP:-0}" = 1 ]; then
    echo "clients.sh: kept work dir $TMP" >&2
  else
    rm -rf "$TMP" 2>/dev/null || { sleep 1; rm -rf "$TMP"; }
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ environment --

# containers/storage, containers/common and containers/image (podman,
# buildah, skopeo) read these instead of the system files.
cat >"$TMP/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$TMP/storage"
runroot = "$TMP/runroot"
EOF
cat >"$TMP/containers.conf" <<EOF
[containers]
netns = "none"
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$TMP/podman-events.log"
tmp_dir = "$TMP/libpod-tmp"
EOF
cat >"$TMP/registries.conf" <<EOF
unqualified-search-registries = []
short-name-mode = "disabled"
[[registry]]
location = "$ADDR"
insecure = $([ -n "$E2E_TLS_CA" ] && echo false || echo true)
EOF
cat >"$TMP/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
export CONTAINERS_STORAGE_CONF="$TMP/storage.conf"
export CONTAINERS_CONF="$TMP/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$TMP/registries.conf"
export REGISTRY_AUTH_FILE="$TMP/auth.json"
export DOCKER_CONFIG="$TMP/docker-config"
export BUILDAH_ISOLATION=chroot
export TMPDIR="$TMP/tmp" # big temporary files of the clients
mkdir -p "$TMPDIR" "$DOCKER_CONFIG"
echo '{"auths": {}}' >"$REGISTRY_AUTH_FILE"
# oras_driver.py: transport and login (oras-py writes the login here).
export E2E_TLS_CA E2E_USER E2E_PASSWORD
export E2E_ORAS_DOCKERCFG="$TMP/oras-docker-config.json"

# dockerd has no flag for its certs.d: it reads /etc/docker/certs.d/ADDR/ca.crt.
if [ -n "$E2E_TLS_CA" ]; then
  if [ -e "/etc/docker/certs.d/$ADDR" ]; then
    echo "clients.sh: /etc/docker/certs.d/$ADDR exists already; using it as it is" >&2
  else
    for DOCKER_CERTS_TOP in /etc/docker /etc/docker/certs.d "/etc/docker/certs.d/$ADDR"; do
      [ -e "$DOCKER_CERTS_TOP" ] || break
    done
    DOCKER_CERTS="/etc/docker/certs.d/$ADDR"
    mkdir -p "$DOCKER_CERTS"
    cp "$E2E_TLS_CA" "$DOCKER_CERTS/ca.crt"
  fi
fi

# ------------------------------------------------------ client wrappers --

to() { timeout -k 10 "$CMD_TIMEOUT" "$@"; }
# Registry checks with curl trust the CA and send the user's password
# (Basic) in auth mode; anon_curl never sends credentials.
curl() { command curl --max-time 60 ${CURL_REG[@]+"${CURL_REG[@]}"} "$@"; }
anon_curl() { command curl --max-time 60 ${E2E_TLS_CA:+--cacert "$E2E_TLS_CA"} "$@"; }
pd() { to podman "$@"; }
pd2() { # podman with a second, empty store: pulls really hit the registry
  to podman --root "$TMP/storage2" --runroot "$TMP/runroot2" --tmpdir "$TMP/libpod-tmp2" "$@"
}
bh() { to buildah "$@"; }
sk() { to skopeo --policy "$TMP/policy.json" "$@"; }
dk() { to "$DOCKER_BIN" -H "unix://$TMP/docker/docker.sock" "$@"; }
ct() { to ctr -a "$TMP/containerd/containerd.sock" -n berth-e2e "$@"; }
orasd() { to "$PY" "$HERE/oras_driver.py" "$@"; }

# ------------------------------------------------------ assertion helpers --

die() {
  echo "ASSERTION FAILED: $*" >&2
  exit 1
}
assert_eq() { # got want what
  [ "$1" = "$2" ] || die "$3: got '$1', want '$2'"
  echo "ok: $3 = $1"
}
assert_match() { # string regex what
  [[ $1 =~ $2 ]] || die "$3: '$1' does not match /$2/"
  echo "ok: $3 =~ /$2/"
}
assert_digest() { # value what
  assert_match "$1" '^sha256:[0-9a-f]{64}$' "$2"
}
sha() { printf 'sha256:%s' "$(sha256sum "$1" | cut -d' ' -f1)"; }

save() { printf '%s' "$2" >"$TMP/state/$1"; }
load() {
  [ -s "$TMP/state/$1" ] || die "state '$1' missing (an earlier step failed)"
  cat "$TMP/state/$1"
}

ACCEPT="application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json"

# Registry-side view of a manifest, independent of any client: HEAD's
# Docker-Content-Digest, and the sha256 of the bytes GET returns.
reg_head_digest() { # repo ref
  curl -sS -f -I -H "Accept: $ACCEPT" "$REG/v2/$1/manifests/$2" | tr -d '\r' |
    awk 'tolower($1) == "docker-content-digest:" {print $2}'
}
reg_get_manifest() { # repo ref outfile -> prints the Content-Type
  curl -sS -f -H "Accept: $ACCEPT" -D "$3.hdr" -o "$3" "$REG/v2/$1/manifests/$2"
  tr -d '\r' <"$3.hdr" | awk 'tolower($1) == "content-type:" {print $2}'
}
reg_status() { # method url -> HTTP status code
  if [ "$1" = HEAD ]; then
    curl -sS -I -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" "$2"
  else
    curl -sS -o /dev/null -w '%{http_code}' -X "$1" -H "Accept: $ACCEPT" "$2"
  fi
}
# gone METHOD URL WHAT: the registry answers 404, at once or, through another
# replica, within E2E_STALE_MS (polled; the time it took is printed).
gone() {
  local started now got
  started=$(date +%s%N)
  while :; do
    got="$(reg_status "$1" "$2")"
    now=$(date +%s%N)
    [ "$got" = 404 ] && break
    (((now - started) / 1000000 >= STALE_MS)) && break
    sleep 0.05
  done
  assert_eq "$got" 404 "$3 (after $(((now - started) / 1000000)) ms)"
}
# All registry views of repo:ref must agree with the digest a client reported.
assert_registry_digest() { # repo ref want what
  local f="$TMP/tmp/m.$$.$RANDOM" head sep=:
  if [[ $2 == sha256:* ]]; then sep=@; fi
  head="$(reg_head_digest "$1" "$2")"
  assert_eq "$head" "$3" "$4: registry HEAD Docker-Content-Digest of $1$sep$2"
  reg_get_manifest "$1" "$2" "$f" >/dev/null
  assert_eq "$(sha "$f")" "$3" "$4: sha256 of manifest bytes GET $1$sep$2"
  rm -f "$f" "$f.hdr"
}

wait_for_socket() { # path pidname seconds
  local i pid
  pid="$(cat "$TMP/pids/$2")"
  for ((i = 0; i < $3 * 10; i++)); do
    [ -S "$1" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      die "$2 exited during startup: $(tail -n 5 "$TMP/logs/$2.log" 2>/dev/null)"
    fi
    sleep 0.1
  done
  die "$2: socket $1 did not appear in $3 s"
}

# Start a private containerd; prints its socket path. The opt plugin is
# disabled (it would install into /opt/containerd), and so are CRI and the
# snapshotters that need kernel features or config.
start_containerd() { # name
  local d="$TMP/$1"
  mkdir -p "$d"
  write_containerd_config "$d"
  containerd --config "$d/config.toml" >"$TMP/logs/$1.log" 2>&1 &
  echo $! >"$TMP/pids/$1"
  wait_for_socket "$d/containerd.sock" "$1" 30
}

# A root filesystem: static busybox plus a file unique to this run, so the
# registry really has to store new blobs each run.
make_rootfs() { # dir
  mkdir -p "$1/bin" "$1/etc"
  cp /bin/busybox "$1/bin/busybox"
  ln -sf busybox "$1/bin/sh"
  echo "berth-e2e $RUN_ID" >"$1/etc/e2e-id"
}

# Extract PATH from an image layer blob (gzip or plain tar) to stdout.
layer_file() { # blobfile path
  tar -xzOf "$1" "$2" 2>/dev/null || tar -xOf "$1" "$2"
}

# ================================================================= steps ==
# Each step runs in a subshell with `set -e`; it shares results through
# save/load. A step fails on the first failing command or assertion.

step_build_single() {
  local c
  make_rootfs "$TMP/rootfs"
  c="$(bh from scratch)"
  bh copy "$c" "$TMP/rootfs" /
  bh config --os linux --arch amd64 --cmd '["/bin/busybox", "cat", "/etc/e2e-id"]' \
    --label org.opencontainers.image.title=berth-e2e-single "$c"
  bh commit -q --format oci "$c" "localhost/$NS/single:v1"
  bh rm "$c" >/dev/null
  local n
  n="$(pd image inspect --format '{{len .RootFS.Layers}}' "localhost/$NS/single:v1")"
  assert_eq "$n" 1 "layer count of single-layer image"
}

step_build_multi() {
  local ctx="$TMP/ctx"
  mkdir -p "$ctx"
  make_rootfs "$ctx/rootfs"
  head -c 262144 /dev/urandom >"$ctx/data.bin"
  save data_sha "$(sha256sum "$ctx/data.bin" | cut -d' ' -f1)"
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
COPY data.bin /data/data.bin
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox sha256sum /data/data.bin > /data/data.sha256"]
CMD ["/bin/busybox", "cat", "/data/data.sha256"]
EOF
  pd build --isolation=chroot --format oci -t "localhost/$NS/multi:v1" "$ctx"
  local n
  n="$(pd image inspect --format '{{len .RootFS.Layers}}' "localhost/$NS/multi:v1")"
  assert_eq "$n" 3 "layer count of multi-layer image (COPY, COPY, RUN)"
}

step_podman_push() {
  local name d
  for name in single multi; do
    pd push "${TLSV[@]}" --digestfile "$TMP/tmp/$name.digest" \
      "localhost/$NS/$name:v1" "docker://$ADDR/$NS/$name:v1"
    d="$(cat "$TMP/tmp/$name.digest")"
    assert_digest "$d" "podman push digest of $name"
    assert_registry_digest "$NS/$name" v1 "$d" "podman push"
    save "${name}_digest" "$d"
  done
  # Pushing again must be a no-op for the registry (blobs exist) and give
  # the same manifest digest.
  pd push "${TLSV[@]}" --digestfile "$TMP/tmp/again.digest" \
    "localhost/$NS/single:v1" "docker://$ADDR/$NS/single:v1"
  assert_eq "$(cat "$TMP/tmp/again.digest")" "$(load single_digest)" "re-push digest"
}

step_buildah_push_pull() {
  local d
  # Docker schema 2 this time (buildah converts), to another repository.
  bh push "${TLSV[@]}" --format v2s2 --digestfile "$TMP/tmp/bh.digest" \
    "localhost/$NS/single:v1" "docker://$ADDR/$NS/single-v2s2:v1"
  d="$(cat "$TMP/tmp/bh.digest")"
  assert_registry_digest "$NS/single-v2s2" v1 "$d" "buildah push"
  local ct
  ct="$(reg_get_manifest "$NS/single-v2s2" "$d" "$TMP/tmp/bh.manifest")"
  assert_eq "$ct" "application/vnd.docker.distribution.manifest.v2+json" "Content-Type of v2s2 manifest"
  assert_eq "$(jq -r .mediaType "$TMP/tmp/bh.manifest")" "$ct" "mediaType field"
  save v2s2_digest "$d"
  # buildah pull by digest into the second store
  bh --root "$TMP/storage2" --runroot "$TMP/runroot2" pull "${TLSV[@]}" \
    "$ADDR/$NS/single-v2s2@$d"
  local got
  got="$(bh --root "$TMP/storage2" --runroot "$TMP/runroot2" inspect --type image \
    --format '{{.FromImageDigest}}' "$ADDR/$NS/single-v2s2@$d")"
  assert_eq "$got" "$d" "buildah pulled image digest"
}

assert_repo_digest() { # image want-repo@digest what
  pd2 image inspect --format '{{json .RepoDigests}}' "$1" | jq -e --arg r "$2" 'index($r) != null' >/dev/null ||
    die "$3: RepoDigests of $1 lack $2: $(pd2 image inspect --format '{{json .RepoDigests}}' "$1")"
  echo "ok: $3: RepoDigests has $2"
}

step_podman_pull_run() {
  local d out
  # single, by tag, into an empty store
  d="$(load single_digest)"
  pd2 pull "${TLSV[@]}" "$ADDR/$NS/single:v1"
  assert_repo_digest "$ADDR/$NS/single:v1" "$ADDR/$NS/single@$d" "podman pull (tag)"
  out="$(pd2 run --rm --network=none "$ADDR/$NS/single:v1")"
  assert_eq "$out" "berth-e2e $RUN_ID" "podman run output of single"
  # multi, by digest
  d="$(load multi_digest)"
  pd2 pull "${TLSV[@]}" "$ADDR/$NS/multi@$d"
  assert_repo_digest "$ADDR/$NS/multi@$d" "$ADDR/$NS/multi@$d" "podman pull (by digest)"
  out="$(pd2 run --rm --network=none "$ADDR/$NS/multi@$d")"
  assert_eq "${out%% *}" "$(load data_sha)" "sha256 of data.bin computed at build time (RUN) and read at run time"
  out="$(pd2 run --rm --network=none "$ADDR/$NS/multi@$d" /bin/busybox sha256sum /data/data.bin)"
  assert_eq "${out%% *}" "$(load data_sha)" "sha256 of data.bin inside the pulled container"
}

step_skopeo_inspect() {
  local d raw insp
  d="$(load single_digest)"
  sk inspect "${TLSV[@]}" --raw "docker://$ADDR/$NS/single:v1" >"$TMP/tmp/raw.json"
  raw="$(sha "$TMP/tmp/raw.json")"
  insp="$(sk inspect "${TLSV[@]}" "docker://$ADDR/$NS/single:v1" | jq -r .Digest)"
  assert_eq "$raw" "$d" "sha256(skopeo inspect --raw)"
  assert_eq "$insp" "$d" "skopeo inspect .Digest"
  assert_eq "$(reg_head_digest "$NS/single" v1)" "$d" "Docker-Content-Digest"
  # The config blob: skopeo's --config --raw bytes hash to the manifest's config digest.
  sk inspect "${TLSV[@]}" --config --raw "docker://$ADDR/$NS/single:v1" >"$TMP/tmp/config.json"
  assert_eq "$(sha "$TMP/tmp/config.json")" "$(jq -r .config.digest "$TMP/tmp/raw.json")" "config blob digest"
  assert_eq "$(jq -r .architecture "$TMP/tmp/config.json")" amd64 "config architecture"
  # Tag listing.
  sk list-tags "${TLSV[@]}" "docker://$ADDR/$NS/single" | jq -e '.Tags | index("v1") != null' >/dev/null
  echo "ok: skopeo list-tags shows v1"
}

step_skopeo_oci_layout() {
  local d oci="$TMP/oci"
  d="$(load multi_digest)"
  sk copy "${SRC_TLSV[@]}" --preserve-digests \
    "docker://$ADDR/$NS/multi:v1" "oci:$oci:multi"
  local idx_digest
  idx_digest="$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "multi") | .digest' "$oci/index.json")"
  assert_eq "$idx_digest" "$d" "manifest digest in oci layout"
  local b n=0
  for b in "$oci"/blobs/sha256/*; do
    assert_eq "$(sha "$b")" "sha256:$(basename "$b")" "oci layout blob content"
    n=$((n + 1))
  done
  assert_eq "$n" 5 "blob count in oci layout (manifest, config, 3 layers)"
  # Bytes of the files inside the layers.
  local m="$oci/blobs/sha256/${d#sha256:}" l0 l1
  l0="$oci/blobs/sha256/$(jq -r '.layers[0].digest' "$m" | cut -d: -f2)"
  l1="$oci/blobs/sha256/$(jq -r '.layers[1].digest' "$m" | cut -d: -f2)"
  layer_file "$l0" bin/busybox | cmp - /bin/busybox
  echo "ok: bin/busybox in layer 0 is byte-identical to /bin/busybox"
  layer_file "$l1" data/data.bin | cmp - "$TMP/ctx/data.bin"
  echo "ok: data/data.bin in layer 1 is byte-identical to the build input"
  # And back into the registry under another name: same digest.
  sk copy "${DEST_TLSV[@]}" --preserve-digests --digestfile "$TMP/tmp/oci.digest" \
    "oci:$oci:multi" "docker://$ADDR/$NS/from-oci:v1"
  assert_eq "$(cat "$TMP/tmp/oci.digest")" "$d" "digest after oci: -> registry copy"
  assert_registry_digest "$NS/from-oci" v1 "$d" "skopeo copy from oci layout"
}

step_skopeo_dir_by_digest() {
  local d dir="$TMP/dir"
  d="$(load single_digest)"
  sk copy "${SRC_TLSV[@]}" "docker://$ADDR/$NS/single@$d" "dir:$dir"
  assert_eq "$(sha "$dir/manifest.json")" "$d" "dir: manifest.json digest"
  local b
  for b in "$dir"/*; do
    case "$(basename "$b")" in manifest.json | version) continue ;; esac
    assert_eq "$(sha "$b")" "sha256:$(basename "$b")" "dir: blob content"
  done
  layer_file "$dir/$(jq -r '.layers[0].digest' "$dir/manifest.json" | cut -d: -f2)" etc/e2e-id |
    grep -qxF "berth-e2e $RUN_ID"
  echo "ok: etc/e2e-id in the layer has this run's id"
}

step_skopeo_copy_by_digest() {
  local d
  d="$(load multi_digest)"
  sk copy "${SRC_TLSV[@]}" "${DEST_TLSV[@]}" --digestfile "$TMP/tmp/bd.digest" \
    "docker://$ADDR/$NS/multi@$d" "docker://$ADDR/$NS/multi:by-digest"
  assert_eq "$(cat "$TMP/tmp/bd.digest")" "$d" "digest of copy by digest"
  assert_registry_digest "$NS/multi" by-digest "$d" "new tag"
  sk list-tags "${TLSV[@]}" "docker://$ADDR/$NS/multi" |
    jq -e '(.Tags | index("v1") != null) and (.Tags | index("by-digest") != null)' >/dev/null
  echo "ok: tags v1 and by-digest listed"
}

step_skopeo_cross_repo_mount() {
  local d
  d="$(load multi_digest)"
  # containers/image mounts a blob from another repository of the same
  # registry when its blob-info cache knows one (the pushes and pulls above
  # recorded them). The debug log shows each mount attempt and its result.
  sk --debug copy "${SRC_TLSV[@]}" "${DEST_TLSV[@]}" --digestfile "$TMP/tmp/mnt.digest" \
    "docker://$ADDR/$NS/multi:v1" "docker://$ADDR/$NS/mounted:v1" 2>"$TMP/tmp/mount.log"
  grep -E 'mount|Uploading' "$TMP/tmp/mount.log" | sed 's/^/  /' | cut -c1-220 || true
  assert_eq "$(cat "$TMP/tmp/mnt.digest")" "$d" "digest of cross-repo copy"
  assert_registry_digest "$NS/mounted" v1 "$d" "cross-repo copy"
  local mounted
  mounted="$(grep -c '\.\.\. mount OK' "$TMP/tmp/mount.log" || true)"
  [ "$mounted" -ge 3 ] || die "skopeo mounted $mounted blobs, want all 3 layers mounted"
  echo "ok: skopeo mounted $mounted blobs cross-repository"
  # The same, by hand: POST ?mount=&from= must answer 201 with the digest.
  local layer hdr
  layer="$(jq -r '.layers[0].digest' "$TMP/oci/blobs/sha256/${d#sha256:}" 2>/dev/null ||
    sk inspect "${TLSV[@]}" --raw "docker://$ADDR/$NS/multi@$d" | jq -r '.layers[0].digest')"
  hdr="$(curl -sS -X POST -D - -o /dev/null \
    "$REG/v2/$NS/mounted-by-curl/blobs/uploads/?mount=$layer&from=$NS/multi" | tr -d '\r')"
  assert_match "$(head -1 <<<"$hdr")" '^HTTP/[0-9.]+ 201' "mount POST status"
  assert_eq "$(awk 'tolower($1) == "docker-content-digest:" {print $2}' <<<"$hdr")" "$layer" "mount POST Docker-Content-Digest"
  assert_eq "$(reg_status HEAD "$REG/v2/$NS/mounted-by-curl/blobs/$layer")" 200 "HEAD mounted blob"
}

step_skopeo_delete() {
  local d
  d="$(load single_digest)"
  sk copy "${SRC_TLSV[@]}" "${DEST_TLSV[@]}" \
    "docker://$ADDR/$NS/single:v1" "docker://$ADDR/$NS/to-delete:v1"
  assert_registry_digest "$NS/to-delete" v1 "$d" "copy to be deleted"
  sk delete "${TLSV[@]}" "docker://$ADDR/$NS/to-delete@$d"
  gone HEAD "$REG/v2/$NS/to-delete/manifests/$d" "HEAD deleted manifest by digest"
  gone HEAD "$REG/v2/$NS/to-delete/manifests/v1" "HEAD tag of deleted manifest"
  local started
  started=$(date +%s%N)
  while sk inspect "${TLSV[@]}" --raw "docker://$ADDR/$NS/to-delete@$d" >/dev/null 2>&1; do
    if ((($(date +%s%N) - started) / 1000000 >= STALE_MS)); then
      die "skopeo inspect still finds the deleted manifest"
    fi
    sleep 0.05
  done
  echo "ok: skopeo inspect fails on the deleted manifest"
  # The same manifest in other repositories is untouched.
  assert_registry_digest "$NS/single" v1 "$d" "other repository after delete"
}

step_multiarch_index() {
  local a c d list="localhost/$NS/multiarch:list"
  for a in amd64 arm64; do
    c="$(bh from scratch)"
    bh copy "$c" "$TMP/rootfs" /
    bh config --os linux --arch "$a" --cmd "[\"/bin/busybox\", \"echo\", \"arch-$a\"]" "$c"
    if [ "$a" = arm64 ]; then bh config --variant v8 "$c"; fi
    bh commit -q --format oci "$c" "localhost/$NS/multiarch:$a"
    bh rm "$c" >/dev/null
  done
  pd manifest create "$list"
  for a in amd64 arm64; do
    pd manifest add "$list" "containers-storage:localhost/$NS/multiarch:$a"
  done
  pd manifest push --all "${TLSV[@]}" --digestfile "$TMP/tmp/list.digest" \
    "$list" "docker://$ADDR/$NS/multiarch:v1"
  d="$(cat "$TMP/tmp/list.digest")"
  assert_registry_digest "$NS/multiarch" v1 "$d" "podman manifest push"
  save index_digest "$d"
  local raw="$TMP/tmp/index.json" ctype
  sk inspect "${TLSV[@]}" --raw "docker://$ADDR/$NS/multiarch:v1" >"$raw"
  assert_eq "$(sha "$raw")" "$d" "sha256(skopeo inspect --raw) of index"
  ctype="$(reg_get_manifest "$NS/multiarch" v1 "$TMP/tmp/index.get")"
  assert_match "$(jq -r .mediaType "$raw")" 'image\.index\.v1\+json|manifest\.list\.v2\+json' "index mediaType"
  assert_eq "$ctype" "$(jq -r .mediaType "$raw")" "Content-Type of index GET"
  assert_eq "$(jq -r '[.manifests[].platform.architecture] | sort | join(",")' "$raw")" "amd64,arm64" "index platforms"
  local child arch cfg
  for a in amd64 arm64; do
    child="$(jq -r --arg a "$a" '.manifests[] | select(.platform.architecture == $a) | .digest' "$raw")"
    sk inspect "${TLSV[@]}" --raw "docker://$ADDR/$NS/multiarch@$child" >"$TMP/tmp/child-$a.json"
    assert_eq "$(sha "$TMP/tmp/child-$a.json")" "$child" "child $a manifest bytes"
    assert_eq "$(stat -c %s "$TMP/tmp/child-$a.json")" \
      "$(jq -r --arg a "$a" '.manifests[] | select(.platform.architecture == $a) | .size' "$raw")" "child $a size in index"
    assert_registry_digest "$NS/multiarch" "$child" "$child" "child $a by digest"
    cfg="$(sk inspect "${TLSV[@]}" --config --raw "docker://$ADDR/$NS/multiarch@$child")"
    arch="$(jq -r .architecture <<<"$cfg")"
    assert_eq "$arch" "$a" "architecture in child $a config"
    # skopeo's platform selection from the index picks the same child.
    sk --override-arch "$a" copy "${SRC_TLSV[@]}" --preserve-digests \
      "docker://$ADDR/$NS/multiarch:v1" "dir:$TMP/sel-$a"
    assert_eq "$(sha "$TMP/sel-$a/manifest.json")" "$child" "skopeo --override-arch $a copies the $a child"
    save "child_$a" "$child"
  done
  # podman: pull the list for both arches, run the native one.
  pd2 pull "${TLSV[@]}" --arch arm64 "$ADDR/$NS/multiarch:v1"
  assert_eq "$(pd2 image inspect --format '{{.Architecture}}' "$ADDR/$NS/multiarch:v1")" arm64 "podman --arch arm64 pulled arch"
  pd2 pull "${TLSV[@]}" --arch amd64 "$ADDR/$NS/multiarch:v1"
  assert_eq "$(pd2 image inspect --format '{{.Architecture}}' "$ADDR/$NS/multiarch:v1")" amd64 "podman --arch amd64 pulled arch"
  assert_eq "$(pd2 run --rm --network=none "$ADDR/$NS/multiarch:v1")" arch-amd64 "podman run of amd64 child"
}

start_dockerd() {
  mkdir -p "$TMP/docker"
  start_containerd docker-containerd >/dev/null
  cat >"$TMP/docker/daemon.json" <<EOF
{"deprecated-key-path": "$TMP/docker/key.json"}
EOF
  dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
    --userland-proxy=false --ip-masq=false \
    --config-file "$TMP/docker/daemon.json" \
    --containerd "$TMP/docker-containerd/containerd.sock" \
    --data-root "$TMP/docker/data" --exec-root "$TMP/docker/exec" \
    --pidfile "$TMP/docker/docker.pid" --host "unix://$TMP/docker/docker.sock" \
    >"$TMP/logs/dockerd.log" 2>&1 &
  echo $! >"$TMP/pids/dockerd"
  wait_for_socket "$TMP/docker/docker.sock" dockerd 60
  local i
  for ((i = 0; i < 100; i++)); do dk version >/dev/null 2>&1 && break; sleep 0.2; done
  dk version --format 'docker client {{.Client.Version}}, server {{.Server.Version}}'
}

step_docker() {
  start_dockerd
  if [ -n "$E2E_USER" ]; then
    printf '%s\n' "$E2E_PASSWORD" | dk login "$ADDR" -u "$E2E_USER" --password-stdin
    jq -e --arg a "$ADDR" '.auths[$a].auth != null' "$DOCKER_CONFIG/config.json" >/dev/null ||
      die "docker login stored no credentials for $ADDR in $DOCKER_CONFIG/config.json"
    echo "ok: docker login stored credentials in \$DOCKER_CONFIG"
  fi

  # docker load an image skopeo exported from the registry.
  local src_d
  src_d="$(load single_digest)"
  sk copy "${SRC_TLSV[@]}" "docker://$ADDR/$NS/single@$src_d" \
    "docker-archive:$TMP/single.tar:$NS/single:v1"
  dk load -i "$TMP/single.tar"
  local want_diffids
  want_diffids="$(sk inspect "${TLSV[@]}" --config --raw "docker://$ADDR/$NS/single@$src_d" | jq -c .rootfs.diff_ids)"
  dk tag "$NS/single:v1" "$ADDR/$NS/docker:v1"
  dk push "$ADDR/$NS/docker:v1" | tee "$TMP/tmp/docker-push.log"
  local d
  d="$(sed -n 's/^v1: digest: \(sha256:[0-9a-f]*\) size: .*/\1/p' "$TMP/tmp/docker-push.log")"
  assert_digest "$d" "docker push digest"
  assert_registry_digest "$NS/docker" v1 "$d" "docker push"
  reg_get_manifest "$NS/docker" "$d" "$TMP/tmp/docker.manifest" >/dev/null
  assert_eq "$(jq -r .config.digest "$TMP/tmp/docker.manifest")" \
    "$(dk image inspect --format '{{.Id}}' "$ADDR/$NS/docker:v1")" "pushed config digest = docker image ID"

  # Forget it locally, pull by tag and by digest.
  dk rmi "$ADDR/$NS/docker:v1" "$NS/single:v1" >/dev/null
  dk pull "$ADDR/$NS/docker:v1"
  assert_eq "$(dk image inspect --format '{{json .RootFS.Layers}}' "$ADDR/$NS/docker:v1")" "$want_diffids" "layer diff_ids after docker pull"
  dk image inspect --format '{{json .RepoDigests}}' "$ADDR/$NS/docker:v1" |
    jq -e --arg r "$ADDR/$NS/docker@$d" 'index($r) != null' >/dev/null
  echo "ok: RepoDigests has $ADDR/$NS/docker@$d"
  assert_eq "$(dk run --rm --network none "$ADDR/$NS/docker:v1")" "berth-e2e $RUN_ID" "docker run output"

  # An OCI image pushed by podman, pulled by digest and run by docker.
  local md
  md="$(load multi_digest)"
  dk pull "$ADDR/$NS/multi@$md"
  local out
  out="$(dk run --rm --network none "$ADDR/$NS/multi@$md")"
  assert_eq "${out%% *}" "$(load data_sha)" "docker run of podman-built OCI image (by digest)"

  # Multi-arch: docker resolves the index to linux/amd64.
  dk pull "$ADDR/$NS/multiarch:v1"
  assert_eq "$(dk run --rm --network none "$ADDR/$NS/multiarch:v1")" arch-amd64 "docker run of index-selected child"
  dk image inspect --format '{{json .RepoDigests}}' "$ADDR/$NS/multiarch:v1" |
    jq -e --arg r "$ADDR/$NS/multiarch@$(load index_digest)" 'index($r) != null' >/dev/null
  echo "ok: docker recorded the index digest"
}

ctr_image_digest() { # ref
  ct images ls | awk -v r="$1" '$1 == r {print $3}'
}

step_containerd() {
  start_containerd containerd >/dev/null
  ct version
  local d got out
  # pull by tag
  d="$(load single_digest)"
  ct images pull "${CTR_REG[@]}" --snapshotter native "$ADDR/$NS/single:v1" >"$TMP/tmp/ctr-pull.log"
  got="$(ctr_image_digest "$ADDR/$NS/single:v1")"
  assert_eq "$got" "$d" "ctr pulled digest (tag)"
  out="$(ct run --rm --snapshotter native --fifo-dir "$TMP/containerd/fifo" \
    --runc-root "$TMP/containerd/runc" "$ADDR/$NS/single:v1" "e2e-single-$$")"
  assert_eq "$out" "berth-e2e $RUN_ID" "ctr run output"
  # pull by digest
  d="$(load multi_digest)"
  ct images pull "${CTR_REG[@]}" --snapshotter native "$ADDR/$NS/multi@$d" >"$TMP/tmp/ctr-pull2.log"
  got="$(ctr_image_digest "$ADDR/$NS/multi@$d")"
  assert_eq "$got" "$d" "ctr pulled digest (by digest)"
  ct content get "$d" >"$TMP/tmp/ctr-manifest.json"
  assert_eq "$(sha "$TMP/tmp/ctr-manifest.json")" "$d" "manifest bytes in containerd content store"
  # push: same manifest to a new repository, then the full index.
  ct images tag "$ADDR/$NS/single:v1" "$ADDR/$NS/ctr-pushed:v1"
  ct images push "${CTR_REG[@]}" "$ADDR/$NS/ctr-pushed:v1" >"$TMP/tmp/ctr-push.log"
  assert_registry_digest "$NS/ctr-pushed" v1 "$(load single_digest)" "ctr push"
  local idx
  idx="$(load index_digest)"
  ct images pull "${CTR_REG[@]}" --all-platforms "$ADDR/$NS/multiarch@$idx" >"$TMP/tmp/ctr-pull3.log"
  assert_eq "$(ctr_image_digest "$ADDR/$NS/multiarch@$idx")" "$idx" "ctr pulled index digest"
  ct images tag "$ADDR/$NS/multiarch@$idx" "$ADDR/$NS/ctr-index:v1"
  ct images push "${CTR_REG[@]}" "$ADDR/$NS/ctr-index:v1" >"$TMP/tmp/ctr-push2.log"
  assert_registry_digest "$NS/ctr-index" v1 "$idx" "ctr push of index"
  local a
  for a in amd64 arm64; do
    assert_registry_digest "$NS/ctr-index" "$(load "child_$a")" "$(load "child_$a")" "ctr-pushed child $a"
  done
}

ARTIFACT_TYPE="application/vnd.berth.e2e.artifact.v1"
step_oras_artifact() {
  local dir="$TMP/oras" out d
  mkdir -p "$dir/out-tag" "$dir/out-digest"
  head -c 100000 /dev/urandom >"$dir/payload.bin"
  orasd push "$ADDR" "$NS/artifact:v1" "$dir/payload.bin" \
    "application/vnd.berth.e2e.payload.v1+octet-stream" "$ARTIFACT_TYPE" >"$dir/push.out"
  d="$(head -1 "$dir/push.out")"
  assert_digest "$d" "oras push digest"
  assert_registry_digest "$NS/artifact" v1 "$d" "oras push"
  save artifact_digest "$d"
  reg_get_manifest "$NS/artifact" "$d" "$dir/manifest.json" >/dev/null
  assert_eq "$(jq -r .artifactType "$dir/manifest.json")" "$ARTIFACT_TYPE" "manifest artifactType"
  assert_eq "$(jq -r '.layers[0].mediaType' "$dir/manifest.json")" \
    "application/vnd.berth.e2e.payload.v1+octet-stream" "layer mediaType"
  assert_eq "$(jq -r '.config.mediaType' "$dir/manifest.json")" "application/vnd.oci.empty.v1+json" "config mediaType"
  orasd pull "$ADDR" "$NS/artifact:v1" "$dir/out-tag"
  cmp "$dir/payload.bin" "$dir/out-tag/payload.bin"
  echo "ok: oras pull (tag) bytes identical"
  orasd pull "$ADDR" "$NS/artifact@$d" "$dir/out-digest"
  cmp "$dir/payload.bin" "$dir/out-digest/payload.bin"
  echo "ok: oras pull (digest) bytes identical"
  out="$(curl -sS -f "$REG/v2/$NS/artifact/blobs/$(jq -r '.layers[0].digest' "$dir/manifest.json")" | sha256sum | cut -d' ' -f1)"
  assert_eq "sha256:$out" "$(sha "$dir/payload.bin")" "blob GET bytes"
}

step_oras_referrers() {
  local dir="$TMP/oras" subj d hdr rc=0
  subj="$(load artifact_digest)"
  echo "signature for $subj" >"$dir/sig.txt"
  orasd push "$ADDR" "$NS/artifact:sig" "$dir/sig.txt" \
    "application/vnd.berth.e2e.sig.v1" "application/vnd.berth.e2e.signature.v1" "$subj" >"$dir/ref.out"
  d="$(head -1 "$dir/ref.out")"
  hdr="$(sed -n 2p "$dir/ref.out")"
  assert_registry_digest "$NS/artifact" "$d" "$d" "referrer manifest"
  reg_get_manifest "$NS/artifact" "$d" "$dir/ref.json" >/dev/null
  assert_eq "$(jq -r .subject.digest "$dir/ref.json")" "$subj" "referrer subject digest stored"
  echo "OCI-Subject response header: $hdr"
  orasd referrers "$ADDR" "$NS/artifact" "$subj" >"$dir/referrers.json" || rc=$?
  if [ "$rc" = 3 ]; then
    if [ "${ALLOW_NO_REFERRERS:-0}" = 1 ]; then
      echo "NOTE: registry has no referrers API (404); accepted because ALLOW_NO_REFERRERS=1"
      save referrers_note "no referrers API (404), accepted by ALLOW_NO_REFERRERS=1"
      return 0
    fi
    die "GET /v2/$NS/artifact/referrers/$subj answered 404 (set ALLOW_NO_REFERRERS=1 to accept)"
  fi
  [ "$rc" = 0 ] || die "referrers request failed (rc=$rc)"
  assert_eq "$hdr" "$subj" "OCI-Subject header on referrer push"
  jq . "$dir/referrers.json"
  assert_match "$(jq -r .content_type "$dir/referrers.json")" '^application/vnd\.oci\.image\.index\.v1\+json' "referrers Content-Type"
  assert_eq "$(jq -r .index.mediaType "$dir/referrers.json")" "application/vnd.oci.image.index.v1+json" "referrers mediaType"
  local entry
  entry="$(jq -c --arg d "$d" '.index.manifests[] | select(.digest == $d)' "$dir/referrers.json")"
  [ -n "$entry" ] || die "referrer $d not listed"
  assert_eq "$(jq -r .artifactType <<<"$entry")" "application/vnd.berth.e2e.signature.v1" "listed artifactType"
  assert_eq "$(jq -r .size <<<"$entry")" "$(stat -c %s "$dir/ref.json")" "listed size"
  assert_eq "$(jq -r .mediaType <<<"$entry")" "application/vnd.oci.image.manifest.v1+json" "listed mediaType"
  # Filter: a non-matching artifactType must not list it (whether or not
  # the registry applied the filter itself, per OCI-Filters-Applied).
  orasd referrers "$ADDR" "$NS/artifact" "$subj" "application/vnd.berth.e2e.other" >"$dir/referrers-f.json"
  if [ "$(jq -r .filters_applied "$dir/referrers-f.json")" = artifactType ]; then
    assert_eq "$(jq --arg d "$d" '[.index.manifests[] | select(.digest == $d)] | length' "$dir/referrers-f.json")" 0 "filtered referrers"
  else
    echo "note: registry did not apply the artifactType filter (no OCI-Filters-Applied)"
  fi
}

# Auth mode only: log podman (hence buildah and skopeo, which read the same
# $REGISTRY_AUTH_FILE) in, over TLS verified with --cert-dir.
step_login() {
  echo '{"auths": {}}' >"$TMP/tmp/empty-auth.json"
  printf '%s\n' "$E2E_PASSWORD" | pd login "${TLSV[@]}" --authfile "$REGISTRY_AUTH_FILE" \
    -u "$E2E_USER" --password-stdin "$ADDR"
  jq -e --arg a "$ADDR" '.auths[$a].auth != null' "$REGISTRY_AUTH_FILE" >/dev/null ||
    die "podman login stored no credentials for $ADDR in $REGISTRY_AUTH_FILE"
  echo "ok: podman login stored credentials in $REGISTRY_AUTH_FILE"
  assert_eq "$(pd login --get-login --authfile "$REGISTRY_AUTH_FILE" "$ADDR")" "$E2E_USER" "podman login --get-login"
  # skopeo with explicit --creds instead of the auth file.
  sk inspect "${TLSV[@]}" --authfile "$TMP/tmp/empty-auth.json" --creds "$E2E_USER:$E2E_PASSWORD" \
    --raw "docker://$ADDR/$NS/does-not-exist:v1" >/dev/null 2>"$TMP/tmp/creds.err" || true
  grep -E 'manifest unknown|name unknown|not found' "$TMP/tmp/creds.err" ||
    die "skopeo --creds on a missing image: want 'manifest unknown', got: $(cat "$TMP/tmp/creds.err")"
  echo "ok: skopeo --creds gets past auth (manifest unknown, not 401)"
}

# Auth mode only, last (failed logins count towards Berth's brute-force limit):
# what is refused.
step_auth_refused() {
  local d st hdr out
  d="$(load single_digest)"
  echo '{"auths": {}}' >"$TMP/tmp/empty-auth.json"
  # Anonymous: 401 with a Bearer challenge, for an existing image and /v2/.
  st="$(anon_curl -sS -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" "$REG/v2/$NS/single/manifests/v1")"
  assert_eq "$st" 401 "anonymous GET manifest status"
  st="$(anon_curl -sS -o /dev/null -w '%{http_code}' "$REG/v2/$NS/single/blobs/$d")"
  assert_eq "$st" 401 "anonymous GET blob status"
  hdr="$(anon_curl -sS -D - -o /dev/null "$REG/v2/" | tr -d '\r' | awk 'tolower($1) == "www-authenticate:"')"
  assert_match "$hdr" '^[Ww][Ww][Ww]-[Aa]uthenticate: Bearer realm="https://' "anonymous /v2/ challenge"
  # Anonymous real clients are refused too.
  if sk inspect "${TLSV[@]}" --authfile "$TMP/tmp/empty-auth.json" --no-creds --raw \
    "docker://$ADDR/$NS/single:v1" >/dev/null 2>"$TMP/tmp/anon.err"; then
    die "anonymous skopeo inspect succeeded"
  fi
  cat "$TMP/tmp/anon.err"
  grep -qiE 'unauthorized|authentication required|401' "$TMP/tmp/anon.err" || die "anonymous skopeo inspect: not an auth error"
  echo "ok: anonymous skopeo inspect refused"
  # TLS is really verified: without the CA (an empty --cert-dir and no
  # system CA for it) skopeo must refuse the certificate.
  mkdir -p "$TMP/tmp/no-certs"
  if sk inspect --tls-verify=true --cert-dir "$TMP/tmp/no-certs" --raw \
    "docker://$ADDR/$NS/single:v1" >/dev/null 2>"$TMP/tmp/noca.err"; then
    die "skopeo inspect without the CA succeeded"
  fi
  cat "$TMP/tmp/noca.err"
  grep -qE 'x509|certificate' "$TMP/tmp/noca.err" || die "skopeo without the CA: not a certificate error"
  echo "ok: skopeo without the CA refuses the server certificate"
  # Wrong password: the TLS handshake is fine, the login must fail.
  start_dockerd
  mkdir -p "$TMP/docker-config-wrong"
  if out="$(printf 'not-the-password\n' | DOCKER_CONFIG="$TMP/docker-config-wrong" dk login "$ADDR" -u "$E2E_USER" --password-stdin 2>&1)"; then
    die "docker login with a wrong password succeeded: $out"
  fi
  echo "docker login with a wrong password: $out"
  assert_match "$out" 'unauthorized|401|incorrect|denied' "wrong-password docker login error"
  ! grep -qF "x509" <<<"$out" || die "wrong-password docker login failed on TLS, not on the password"
  if [ -s "$TMP/docker-config-wrong/config.json" ]; then
    jq -e --arg a "$ADDR" '.auths[$a] == null' "$TMP/docker-config-wrong/config.json" >/dev/null ||
      die "failed docker login left credentials in its config.json"
  fi
  echo "ok: no credentials stored by the failed login"
}

# ============================================================== runner ==

STEPS=(
  build-single build-multi podman-push buildah-push-pull podman-pull-run
  skopeo-inspect skopeo-oci-layout skopeo-dir-by-digest skopeo-copy-by-digest
  skopeo-cross-repo-mount skopeo-delete multiarch-index docker containerd
  oras-artifact oras-referrers
)
if [ -n "$E2E_USER" ]; then STEPS=(login "${STEPS[@]}" auth-refused); fi
PASSED=0 FAILED=0 SKIPPED=0
FAILED_NAMES=()

in_list() { # word list
  local w
  for w in $2; do [ "$w" = "$1" ] && return 0; done
  return 1
}

run_step() {
  local name="$1" fn="step_${1//-/_}" log="$TMP/logs/step-$1.log" rc t0 t1
  if [ -n "${E2E_ONLY:-}" ] && ! in_list "$name" "$E2E_ONLY"; then return 0; fi
  if in_list "$name" "${E2E_SKIP:-}"; then
    echo "SKIP  $name  (listed in E2E_SKIP; NOT TESTED)"
    SKIPPED=$((SKIPPED + 1))
    return 0
  fi
  t0=$(date +%s)
  set +e
  # In the background + wait, so that a signal to this script is handled
  # at once (the EXIT trap then kills the step's process tree).
  (
    set -euo pipefail
    "$fn"
  ) >"$log" 2>&1 </dev/null &
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  STEP_PID=""
  set -e
  stop_all_daemons
  t1=$(date +%s)
  if [ "$rc" = 0 ]; then
    local note=""
    if [ "$name" = oras-referrers ] && [ -s "$TMP/state/referrers_note" ]; then
      note="  [$(cat "$TMP/state/referrers_note")]"
    fi
    echo "PASS  $name  ($((t1 - t0))s)$note"
    PASSED=$((PASSED + 1))
    if [ "${E2E_VERBOSE:-0}" = 1 ]; then sed 's/^/      | /' "$log"; fi
  else
    echo "FAIL  $name  ($((t1 - t0))s, exit $rc)"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    if [ "${E2E_VERBOSE:-0}" = 1 ]; then sed 's/^/      | /' "$log"; else tail -n 25 "$log" | sed 's/^/      | /'; fi
    case "$name" in
      docker | containerd)
        local l
        for l in dockerd docker-containerd containerd; do
          [ -f "$TMP/logs/$l.log" ] || continue
          grep -E 'level=(error|fatal)' "$TMP/logs/$l.log" | tail -n 10 | sed "s/^/      | $l: /" || true
        done
        ;;
    esac
  fi
}

echo "clients.sh: registry $REG, repositories under $NS/, work dir $TMP"
if ! curl -sS -o /dev/null -f "$REG/v2/"; then
  echo "FAIL  registry-reachable  ($REG/v2/ did not answer 200)"
  echo "0 passed, 1 failed"
  exit 1
fi
T_START=$(date +%s)
for s in "${STEPS[@]}"; do run_step "$s"; done
echo "clients.sh: $(($(date +%s) - T_START))s${FAILED_NAMES[*]:+, failed: ${FAILED_NAMES[*]}}"
if [ "$SKIPPED" -gt 0 ]; then
  echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
else
  echo "$PASSED passed, $FAILED failed"
fi
[ "$FAILED" -eq 0 ]
