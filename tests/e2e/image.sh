#!/usr/bin/env bash
# Deployment built and run, not only written:
# - deploy/image/build.sh builds the container image with podman (FROM
#   scratch: nothing is pulled), from the release binary;
# - the image runs as uid 10001, serves `podman push` of the image itself
#   into it and a pull back by skopeo, byte for byte;
# - on SIGTERM (`podman stop`) an upload in flight is answered 201 and the
#   process exits 0 after it, within the grace period;
# - a new container over the same data directory serves the same image and
#   that upload;
# - deploy/systemd/berth.service passes `systemd-analyze verify` and its
#   offline `systemd-analyze security` exposure is at most 2.0.
#
#   tests/e2e/image.sh      (after a release build and tests/e2e/install-clients.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/support/lib.sh
source "$ROOT/tests/support/lib.sh"
BERTH_BIN="${BERTH_BIN:-$ROOT/target/release/berth}"
for bin in "$BERTH_BIN" podman skopeo runc curl systemd-analyze; do
  command -v "$bin" >/dev/null || { echo "image.sh: $bin missing (release build, tests/e2e/install-clients.sh)" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/berth-image.XXXXXX)"
NAME="berth-image-e2e-$$"
die() { echo "FAIL: $*" >&2; exit 1; }
write_podman_config "$WORK"
pd() {
  CONTAINERS_STORAGE_CONF="$WORK/storage.conf" CONTAINERS_CONF="$WORK/containers.conf" \
    CONTAINERS_REGISTRIES_CONF=/dev/null podman "$@"
}
# runc and explicit limits: on this kind of machine crun cannot use the
# hybrid cgroup hierarchy, and the hard limits are below podman's defaults.
run() { pd --runtime runc run "$@"; }
LIMITS=(--ulimit "nofile=4096:$(ulimit -Hn)" --ulimit "nproc=4096:4096")
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  pd rm -f -t 0 "$NAME" >/dev/null 2>&1
  [ "$rc" -ne 0 ] && [ -f "$WORK/container.log" ] && tail -n 20 "$WORK/container.log" >&2
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# The image.
BERTH_BIN="$BERTH_BIN" ENGINE=podman \
  CONTAINERS_STORAGE_CONF="$WORK/storage.conf" CONTAINERS_CONF="$WORK/containers.conf" \
  CONTAINERS_REGISTRIES_CONF=/dev/null "$ROOT/deploy/image/build.sh" localhost/berth:e2e >/dev/null
[ "$(pd image inspect --format '{{.Config.User}}' localhost/berth:e2e)" = "10001:10001" ] ||
  die "the image does not run as 10001:10001"
size="$(pd image inspect --format '{{.Size}}' localhost/berth:e2e)"
echo "ok: deploy/image/build.sh built localhost/berth:e2e FROM scratch ($((size / 1000000)) MB)"

# It runs: on the host's network (this machine has no container network), its
# data in a host directory owned by the image's user.
mkdir -p "$WORK/data"
chown 10001:10001 "$WORK/data"
PORT="$(free_port)"
start_container() {
  run -d --name "$NAME" --network host "${LIMITS[@]}" \
    -e "BERTH_LISTEN=127.0.0.1:$PORT" -v "$WORK/data:/var/lib/berth" localhost/berth:e2e >/dev/null
  wait_http "http://127.0.0.1:$PORT/v2/" || die "the container does not answer"
}
start_container
pid="$(pd inspect --format '{{.State.Pid}}' "$NAME")"
[ "$(stat -c %u "/proc/$pid")" = 10001 ] || die "the server runs as uid $(stat -c %u "/proc/$pid")"
echo "ok: the container serves as uid 10001"

# The image pushed into the registry it runs, and pulled back.
pd push -q --tls-verify=false --digestfile "$WORK/pushed" localhost/berth:e2e \
  "docker://127.0.0.1:$PORT/berth/image:1"
pushed="$(cat "$WORK/pushed")"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
skopeo --policy "$WORK/policy.json" copy -q --src-tls-verify=false \
  "docker://127.0.0.1:$PORT/berth/image:1" "oci:$WORK/pulled:1"
pulled="$(skopeo --policy "$WORK/policy.json" inspect --tls-verify=false --format '{{.Digest}}' \
  "docker://127.0.0.1:$PORT/berth/image:1")"
[ "$pulled" = "$pushed" ] || die "pushed $pushed, the registry serves $pulled"
echo "ok: podman pushed the image into itself ($pushed), skopeo pulled it back"

# SIGTERM with an upload in flight: the client sends a 3 MiB blob over 3 s;
# the stop comes a second in. The upload must be answered 201 and kept, and
# the process must wait for it, then exit 0.
cat >"$WORK/slow_upload.py" <<'PY'
import hashlib, http.client, os, sys, time, urllib.parse
port, marker = int(sys.argv[1]), sys.argv[2]
data = os.urandom(3 << 20)
digest = "sha256:" + hashlib.sha256(data).hexdigest()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c.request("POST", "/v2/slow/upload/blobs/uploads/")
r = c.getresponse()
r.read()
location = urllib.parse.urlsplit(r.getheader("Location"))
path = location.path + "?" + (location.query + "&" if location.query else "") + "digest=" + digest
c.putrequest("PUT", path)
c.putheader("Content-Length", str(len(data)))
c.endheaders()
open(marker, "w").write("sending\n")
for i in range(0, len(data), 1 << 18):
    c.send(data[i:i + (1 << 18)])
    time.sleep(0.25)
r = c.getresponse()
print(r.status, digest)
PY
python3 "$WORK/slow_upload.py" "$PORT" "$WORK/sending" >"$WORK/upload.out" &
upload=$!
for _ in $(seq 100); do [ -f "$WORK/sending" ] && break; sleep 0.05; done
sleep 1
kill -0 "$upload" 2>/dev/null || die "the upload ended before the stop"
started=$(date +%s%N)
pd stop -t 30 "$NAME" >/dev/null
stopped_ms=$((($(date +%s%N) - started) / 1000000))
wait "$upload" || die "the upload in flight failed: $(cat "$WORK/upload.out")"
read -r status uploaded <"$WORK/upload.out"
[ "$status" = 201 ] || die "the upload in flight was answered $status"
pd logs "$NAME" >"$WORK/container.log" 2>&1
code="$(pd inspect --format '{{.State.ExitCode}}' "$NAME")"
[ "$code" = 0 ] || die "the server exited $code on SIGTERM"
grep -q "shutting down" "$WORK/container.log" || die "no shutdown in the server's log"
[ "$stopped_ms" -gt 1000 ] || die "the stop took $stopped_ms ms: it did not wait for the upload"
[ "$stopped_ms" -lt 25000 ] || die "the stop took $stopped_ms ms, past the grace period"
echo "ok: on SIGTERM the upload in flight was answered 201, then the server exited 0 ($stopped_ms ms)"

# A new container over the same data serves the same image, and the blob
# uploaded during the stop.
pd rm -f "$NAME" >/dev/null
start_container
again="$(skopeo --policy "$WORK/policy.json" inspect --tls-verify=false --format '{{.Digest}}' \
  "docker://127.0.0.1:$PORT/berth/image:1")"
[ "$again" = "$pushed" ] || die "after a restart the registry serves $again"
curl -fsS -o "$WORK/uploaded" "http://127.0.0.1:$PORT/v2/slow/upload/blobs/$uploaded" ||
  die "the blob uploaded during the stop is gone"
[ "sha256:$(sha256sum "$WORK/uploaded" | cut -d' ' -f1)" = "$uploaded" ] || die "the blob uploaded during the stop came back wrong"
pd stop -t 30 "$NAME" >/dev/null
echo "ok: a new container over the same data directory serves the image and the blob uploaded during the stop"

# The systemd unit, as systemd would load it, the binary where it names it.
UNIT_ROOT="$WORK/unit-root"
mkdir -p "$UNIT_ROOT/usr/local/bin" "$UNIT_ROOT/etc/systemd/system" "$UNIT_ROOT/usr/lib/systemd"
cp "$BERTH_BIN" "$UNIT_ROOT/usr/local/bin/berth"
cp "$ROOT/deploy/systemd/berth.service" "$UNIT_ROOT/etc/systemd/system/"
cp -r /lib/systemd/system "$UNIT_ROOT/usr/lib/systemd/system"
verify="$(systemd-analyze verify --root="$UNIT_ROOT" berth.service 2>&1)" || die "systemd-analyze verify: $verify"
[ -z "$verify" ] || die "systemd-analyze verify warns: $verify"
exposure="$(systemd-analyze security --offline=yes --root="$UNIT_ROOT" berth.service 2>&1 |
  sed -n 's/.*Overall exposure level for berth.service: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || die "systemd-analyze security printed no exposure"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 2.0 else 1)" "$exposure" ||
  die "deploy/systemd/berth.service: exposure $exposure, want at most 2.0"
echo "ok: deploy/systemd/berth.service passes systemd-analyze verify; exposure $exposure (systemd-analyze security)"
