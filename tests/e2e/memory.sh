#!/usr/bin/env bash
# Bounded memory, two checks on one server:
# 1. a 1 GiB blob pushed (streamed PATCH, then PUT) and pulled must not grow
#    the server's peak RSS by more than LIMIT_MIB (default 48);
# 2. growth: 2 x 32 concurrent HTTP/2 pulls of a 64 MiB blob (copied through
#    buffers read on blocking threads, the allocation pattern that leaves
#    memory in glibc's per-thread arenas), then 20,000 tag pushes and 3,000
#    new repositories (tests/e2e/growth_load.py): once the blocking threads
#    have retired, RSS must be at most GROWTH_LIMIT_MIB (default 64).
#   tests/e2e/memory.sh HOST:PORT BERTH-PID
set -euo pipefail
addr=$1
pid=$2
limit_mib=${LIMIT_MIB:-48}
growth_limit_mib=${GROWTH_LIMIT_MIB:-64}
size=$((1024 * 1024 * 1024))
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }
before=$(kib VmRSS)

location=$(curl -sf -X POST -D - -o /dev/null "http://$addr/v2/memory/big/blobs/uploads/" |
  tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
# Stream 1 GiB of random bytes (never on disk, never whole in memory) and hash them on the way.
head -c "$size" /dev/urandom | tee >(sha256sum | cut -d' ' -f1 >"$T/sum") |
  curl -sf -X PATCH -H 'Content-Type: application/octet-stream' -T - -o /dev/null "http://$addr$location"
sleep 0.5 # let the process substitution write the sum
digest="sha256:$(cat "$T/sum")"
case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://$addr$location${sep}digest=$digest")
[ "$status" = 201 ] || { echo "FAIL 1 GiB push: final PUT answered $status"; exit 1; }
after_push=$(kib VmHWM)

pulled=$(curl -sf "http://$addr/v2/memory/big/blobs/$digest" | sha256sum | cut -d' ' -f1)
[ "sha256:$pulled" = "$digest" ] || { echo "FAIL 1 GiB pull: content differs"; exit 1; }
after_pull=$(kib VmHWM)

growth=$(((after_pull - before) / 1024))
echo "RSS before ${before} KiB, peak after push ${after_push} KiB, peak after pull ${after_pull} KiB (growth ${growth} MiB, limit ${limit_mib} MiB)"
if [ "$growth" -gt "$limit_mib" ]; then
  echo "FAIL memory grew by ${growth} MiB"
  exit 1
fi
curl -sf -X DELETE -o /dev/null "http://$addr/v2/memory/big/blobs/$digest"
echo "PASS 1 GiB push and pull in bounded memory"

# 2. Growth.
head -c $((64 * 1024 * 1024)) /dev/urandom >"$T/blob"
digest="sha256:$(sha256sum "$T/blob" | cut -d' ' -f1)"
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
  --data-binary @"$T/blob" "http://$addr/v2/memory/pulled/blobs/uploads/?digest=$digest")
[ "$status" = 201 ] || { echo "FAIL 64 MiB push answered $status"; exit 1; }
for round in 1 2; do
  pids=()
  for _ in $(seq 32); do
    curl -sf --http2-prior-knowledge -o /dev/null "http://$addr/v2/memory/pulled/blobs/$digest" &
    pids+=($!)
  done
  wait "${pids[@]}" || { echo "FAIL concurrent HTTP/2 pulls"; exit 1; }
done
after_pulls=$(kib VmRSS)
python3 "$(dirname "$0")/growth_load.py" "$addr" 20000 3000 8
# tokio retires idle blocking threads after 10 s; what stays then is what the
# process keeps.
sleep 12
settled=$(kib VmRSS)
echo "RSS after the HTTP/2 pulls ${after_pulls} KiB, after 20,000 tags and 3,000 repositories, settled: ${settled} KiB (limit ${growth_limit_mib} MiB)"
if [ "$((settled / 1024))" -gt "$growth_limit_mib" ]; then
  echo "FAIL RSS after growth is $((settled / 1024)) MiB"
  exit 1
fi
curl -sf -X DELETE -o /dev/null "http://$addr/v2/memory/pulled/blobs/$digest"
echo "PASS growth in bounded memory"
