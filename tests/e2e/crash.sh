#!/usr/bin/env bash
# Crash test: acknowledged pushes survive SIGKILL at any moment, and nothing
# partial is ever left under a real name.
#
# Starts the release binary on a free loopback port with a fresh data dir,
# runs CLIENTS concurrent curl clients pushing small random images (config +
# 1-3 layers: tiny ones in one POST, medium ones POST + PUT, multi-MiB ones in
# 1 MiB PATCH chunks) and retagging them, and SIGKILLs Berth KILLS times at
# random moments, restarting it each time. A push counts only once its
# manifest PUT answered 201. Then, on a last restart: every acknowledged image
# pulls back byte-identical (manifest by tag and by digest, every blob by
# digest), every retag points at an image its client tried to tag, and
# `berth fsck` exits 0 (it hashes every blob under a real name, so a partial
# file there would fail it; temporary files may remain under temporary names).
#
#   tests/e2e/crash.sh                 KILLS=50 CLIENTS=3
#   KILLS=8 tests/e2e/crash.sh         the quick run tests/run.sh does
# BERTH_BIN defaults to $CARGO_TARGET_DIR/release/berth (target/ if unset),
# built when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

KILLS=${KILLS:-50}
CLIENTS=${CLIENTS:-3}
BERTH=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked

T=$(mktemp -d /tmp/berth-crash.XXXXXX)
data=$T/data
mkdir -p "$T/manifests"
: >"$T/acked"
: >"$T/retag-attempts"
: >"$T/retags"
port=$(free_port)
addr=127.0.0.1:$port
CLIENT_PIDS=()
berth_pid=

cleanup() {
  touch "$T/stop"
  local pid
  for pid in "${CLIENT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_all
  rm -rf "$T"
}
trap cleanup EXIT

MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json

# location HEADERS-FILE: the Location header of a saved response.
location() { tr -d '\r' <"$1" | awk -F': ' 'tolower($1)=="location"{print $2}' | tail -1; }

# push_blob REPO FILE DIGEST SIZE WORKDIR: succeeds only on 201.
push_blob() {
  local repo=$1 file=$2 digest=$3 size=$4 w=$5 code loc sep offset len
  if [ "$size" -le 65536 ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST \
      -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
      "http://$addr/v2/$repo/blobs/uploads/?digest=$digest") || return 1
    [ "$code" = 201 ]
    return
  fi
  curl -s --max-time 30 -X POST -D "$w/hdr" -o /dev/null "http://$addr/v2/$repo/blobs/uploads/" || return 1
  loc=$(location "$w/hdr")
  [ -n "$loc" ] || return 1
  if [ "$size" -lt 1048576 ]; then
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
      -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
      "http://$addr$loc${sep}digest=$digest") || return 1
    [ "$code" = 201 ]
    return
  fi
  offset=0
  while [ "$offset" -lt "$size" ]; do
    len=$((size - offset))
    [ "$len" -gt 1048576 ] && len=1048576
    tail -c +"$((offset + 1))" "$file" | head -c "$len" >"$w/chunk"
    code=$(curl -s -D "$w/hdr" -o /dev/null -w '%{http_code}' --max-time 30 -X PATCH \
      -H 'Content-Type: application/octet-stream' \
      -H "Content-Range: $offset-$((offset + len - 1))" --data-binary "@$w/chunk" \
      "http://$addr$loc") || return 1
    [ "$code" = 202 ] || return 1
    loc=$(location "$w/hdr")
    offset=$((offset + len))
  done
  case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
    "http://$addr$loc${sep}digest=$digest") || return 1
  [ "$code" = 201 ]
}

# put_manifest REPO REFERENCE FILE: succeeds only on 201.
put_manifest() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
    -H "Content-Type: $MANIFEST_TYPE" --data-binary "@$3" \
    "http://$addr/v2/$1/manifests/$2") || return 1
  [ "$code" = 201 ]
}

# push_image CLIENT N: one random image, recorded in $T/acked once acknowledged.
push_image() {
  local c=$1 n=$2 repo=crash/c$1 w=$T/client$1 layers="" blobs="" size digest i kind
  for i in $(seq $((RANDOM % 3 + 1))); do
    kind=$((RANDOM % 3))
    case $kind in
      0) size=$((RANDOM % 4096 + 1)) ;;
      1) size=$((RANDOM * 8 + 70000)) ;;
      *) size=$(((RANDOM % 4 + 1) * 1048576 + RANDOM)) ;;
    esac
    head -c "$size" /dev/urandom >"$w/layer"
    digest=sha256:$(sha256sum "$w/layer" | cut -d' ' -f1)
    push_blob "$repo" "$w/layer" "$digest" "$size" "$w" || return 1
    layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$digest\",\"size\":$size}"
    blobs="$blobs $digest"
  done
  printf '{"architecture":"amd64","os":"linux","client":%d,"image":%d,"nonce":%d}' \
    "$c" "$n" "$RANDOM$RANDOM" >"$w/config"
  size=$(stat -c %s "$w/config")
  digest=sha256:$(sha256sum "$w/config" | cut -d' ' -f1)
  push_blob "$repo" "$w/config" "$digest" "$size" "$w" || return 1
  blobs="$blobs $digest"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
    "$MANIFEST_TYPE" "$digest" "$size" "$layers" >"$w/manifest"
  put_manifest "$repo" "img-$n" "$w/manifest" || return 1
  digest=sha256:$(sha256sum "$w/manifest" | cut -d' ' -f1)
  cp "$w/manifest" "$T/manifests/$digest"
  echo "$repo img-$n $digest$blobs" >>"$T/acked"
  # Every other image is also tagged `latest` (a retag of the client's tag).
  if [ $((n % 2)) -eq 0 ]; then
    echo "$repo $digest" >>"$T/retag-attempts"
    put_manifest "$repo" latest "$w/manifest" || return 0
    echo "$repo $digest" >>"$T/retags"
  fi
}

client() {
  local c=$1 n=0
  mkdir -p "$T/client$c"
  while [ ! -e "$T/stop" ]; do
    n=$((n + 1))
    # Berth is down for a moment after each kill: try again shortly.
    push_image "$c" "$n" || sleep 0.05
  done
}

start_berth() {
  "$BERTH" serve --listen "$addr" --data-dir "$data" >>"$T/berth.log" 2>&1 &
  berth_pid=$!
  # Only the running one: the killed ones' pids may be reused.
  STARTED_PIDS=("$berth_pid")
  wait_http "http://$addr/v2/" 200
}

start_berth
for c in $(seq "$CLIENTS"); do
  client "$c" &
  CLIENT_PIDS+=("$!")
done

kills=0
for _ in $(seq "$KILLS"); do
  # 0.3 to 1.5 s of pushing, then the kill.
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.3 + (r % 1200) / 1000 }')"
  # (braces: the shell's "Killed" notice is noise here)
  {
    kill -KILL "$berth_pid"
    wait "$berth_pid" || true
  } 2>/dev/null
  kills=$((kills + 1))
  start_berth
done
touch "$T/stop"
for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
CLIENT_PIDS=()
# One more kill with the clients gone: whatever was still being written.
{
  kill -KILL "$berth_pid"
  wait "$berth_pid" || true
} 2>/dev/null
start_berth

status=0
fail() {
  echo "FAIL $*"
  status=1
}
images=0
bytes=0
while read -r repo tag manifest blobs; do
  for reference in "$tag" "$manifest"; do
    if ! curl -sf --max-time 30 -H "Accept: $MANIFEST_TYPE" -o "$T/got" \
      "http://$addr/v2/$repo/manifests/$reference" ||
      ! cmp -s "$T/got" "$T/manifests/$manifest"; then
      fail "$repo:$reference: manifest missing or different"
    fi
  done
  bytes=$((bytes + $(stat -c %s "$T/manifests/$manifest")))
  for blob in $blobs; do
    if curl -sf --max-time 60 -o "$T/blob" "http://$addr/v2/$repo/blobs/$blob" &&
      [ "sha256:$(sha256sum "$T/blob" | cut -d' ' -f1)" = "$blob" ]; then
      bytes=$((bytes + $(stat -c %s "$T/blob")))
    else
      fail "$repo@$blob: blob missing or different"
    fi
  done
  images=$((images + 1))
done <"$T/acked"

# A retag acknowledged last may have been followed by attempts cut short by a
# kill, which may or may not have landed: the tag must name one of those.
tags=0
for repo in $(cut -d' ' -f1 "$T/retag-attempts" | sort -u); do
  last_acked=$(awk -v r="$repo" '$1 == r { d = $2 } END { print d }' "$T/retags")
  allowed=$(awk -v r="$repo" -v last="$last_acked" '
    $1 == r { if ($2 == last) { list = $2 } else { list = list " " $2 } }
    END { print list }' "$T/retag-attempts")
  got=
  if curl -sf --max-time 30 -H "Accept: $MANIFEST_TYPE" -o "$T/got" \
    "http://$addr/v2/$repo/manifests/latest"; then
    got=sha256:$(sha256sum "$T/got" | cut -d' ' -f1)
  fi
  # No retag acknowledged and none landed: nothing to check.
  if [ -z "$last_acked" ] && [ -z "$got" ]; then
    continue
  fi
  case " $allowed " in
    *" $got "*) tags=$((tags + 1)) ;;
    *) fail "$repo:latest points at '$got', not at an image it was tagged with" ;;
  esac
done

if grep -q 'does not match its digest' "$T/berth.log"; then
  fail "berth found corrupt content:"
  grep 'does not match its digest' "$T/berth.log" | head -5
fi
stop_pid "$berth_pid"

fsck_status=0
"$BERTH" fsck --data-dir "$data" >"$T/fsck.log" || fsck_status=$?
if [ "$fsck_status" -ne 0 ]; then
  fail "berth fsck exited $fsck_status:"
  grep -v '^LEFTOVER' "$T/fsck.log" | head -20
fi
temps=$(grep -c '^LEFTOVER temporary file' "$T/fsck.log" || true)

[ "$images" -gt 0 ] || fail "no push was acknowledged"
echo "crash test: $kills kills survived, $images images verified ($tags retagged tags checked), $bytes bytes verified"
echo "$(tail -1 "$T/fsck.log") ($temps temporary files under temporary names)"
[ "$status" -eq 0 ] && echo "PASS crash test"
exit $status
