#!/usr/bin/env bash
# Power-cut test: acknowledged pushes survive losing every write that was
# not synced, which tests/e2e/crash.sh (SIGKILL: the page cache survives)
# cannot show.
#
# Berth runs on an ext4 filesystem in a loop device whose backing file is a
# plain file. What the backing file holds is exactly what the filesystem has
# written to its "disk"; dirty pages in the page cache of the filesystem on
# top are not in it. While CLIENTS clients push random images and retag them
# (tests/support/pushers.sh), the test takes SNAPSHOTS copies of the backing
# file, each at an instant:
#   1. 1-3 s into the pushing, just after the next acknowledgement, SIGSTOP
#      Berth (no new writes or syncs; a sync already in the kernel
#      finishes), give the clients 0.3 s to record the answers Berth sent;
#      every push recorded by then was acknowledged before the stop;
#   2. copy the backing file, and keep the copy only if the loop device
#      completed no write during the copy and had none in flight (else the
#      copy could mix two moments; it is taken again);
#   3. check the copy (below), then SIGCONT Berth.
# Each copy is then what a power cut at that instant would leave on the disk.
# It is attached to a second loop device and mounted (ext4 replays its own
# journal, as at boot), `e2fsck -fn` must find the filesystem clean, and a
# second Berth serves it as after a reboot: the kernel's boot id is replaced
# in a private mount namespace (unshare -m, a bind mount over
# /proc/sys/kernel/random/boot_id), so Berth's write-ahead journal takes its
# machine-restart path and replays. Then every push acknowledged before the
# snapshot must pull back byte-identical, every `latest` must name an image
# its client tagged, and `berth fsck` must exit 0.
#
# The filesystem is mounted with commit=600 and noauto_da_alloc, so that ext4
# writes nothing back by itself within the test's seconds (no periodic
# journal commit, no flush on rename-over), and the kernel's writeback
# starts only after vm.dirty_expire_centisecs (printed; 30 s by default).
# What reaches the copy therefore got there because Berth synced it, or
# because the kernel wrote back pages older than that: a missing sync shows.
# POWERCUT_SAME_BOOT=1 serves the copies with the real boot id instead: the
# journal then takes the process-crash path (it trusts the page cache, which
# a power cut lost), and the check is expected to find lost tags. That is
# the control run: it shows the test sees what a missing sync loses.
#
# What it does not prove: a real disk's volatile write cache (the loop
# device's flushes reach the host's page cache, not a platter), and the
# behaviour of filesystems other than ext4 in data=ordered mode.
#
#   tests/e2e/powercut.sh                    SNAPSHOTS=6 CLIENTS=3
#   SNAPSHOTS=2 tests/e2e/powercut.sh        the quick run tests/run.sh does
#   tests/e2e/powercut.sh --record           also writes docs/results/powercut.md
# Needs root (loop devices, mount, unshare). Elsewhere it says SKIPPED and
# exits 0; with CI=true a missing capability fails it instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh
. tests/support/pushers.sh

record=false
[ "${1:-}" = "--record" ] && record=true
SNAPSHOTS=${SNAPSHOTS:-6}
CLIENTS=${CLIENTS:-3}
SAME_BOOT=${POWERCUT_SAME_BOOT:-0}
BERTH=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}

skip() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL power-cut test cannot run in CI: $*"
    exit 1
  fi
  echo "SKIPPED power-cut test: $*"
  exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (loop devices, mount, unshare)"
for tool in losetup mkfs.ext4 e2fsck unshare mount umount; do
  command -v "$tool" >/dev/null || skip "$tool is missing (util-linux, e2fsprogs)"
done
[ -e /dev/loop-control ] || skip "no loop device support (/dev/loop-control)"
grep -qw ext4 /proc/filesystems || skip "the kernel has no ext4"
[ -x "$BERTH" ] || cargo build --release --locked
BERTH=$(realpath "$BERTH")

T=$(mktemp -d /tmp/berth-powercut.XXXXXX)
pushers_init
addr=127.0.0.1:$(free_port)
CLIENT_PIDS=()
berth_pid=
loop=
snap_loop=
cleanup() {
  touch "$T/stop"
  local pid
  # (each step may find nothing to undo: set -e must not end the cleanup)
  [ -n "$berth_pid" ] && { kill -CONT "$berth_pid" 2>/dev/null || true; }
  for pid in "${CLIENT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_all
  if mountpoint -q "$T/snapmnt" 2>/dev/null; then umount "$T/snapmnt" || umount -l "$T/snapmnt" || true; fi
  if [ -n "$snap_loop" ]; then losetup -d "$snap_loop" 2>/dev/null || true; fi
  if mountpoint -q "$T/mnt" 2>/dev/null; then umount "$T/mnt" || umount -l "$T/mnt" || true; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

# The image and one copy at a time hold what the clients push (a few hundred MiB).
free_kib=$(df --output=avail -k "$T" | tail -1)
if [ "$free_kib" -lt 1048576 ]; then
  echo "FAIL power-cut test: needs 1 GiB free under /tmp, has $((free_kib / 1024)) MiB"
  exit 1
fi
mkdir -p "$T/mnt" "$T/snapmnt"
truncate -s 2G "$T/disk.img"
loop=$(losetup --find --show "$T/disk.img") || skip "no free loop device"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
mount -o commit=600,noauto_da_alloc "$loop" "$T/mnt"
stat_file=/sys/block/$(basename "$loop")/stat
# write_state: completed write requests and requests in flight of the loop
# device (fields 5 and 9 of its stat file).
write_state() { awk '{ print $5, $9 }' "$stat_file"; }

start_bg "$T/berth.log" "$BERTH" serve --listen "$addr" --data-dir "$T/mnt/data"
berth_pid=$LAST_PID
wait_http "http://$addr/v2/"
for c in $(seq "$CLIENTS"); do
  client "$c" &
  CLIENT_PIDS+=("$!")
done

cat /proc/sys/kernel/random/uuid >"$T/other-boot-id"
# "${in_boot[@]}" CMD...: CMD as after a reboot. A private mount namespace
# sees another boot id; CMD replaces the shell (exec), so a background run's
# pid is CMD's own. The control run (POWERCUT_SAME_BOOT=1) keeps this boot's.
in_boot=()
if [ "$SAME_BOOT" != 1 ]; then
  in_boot=(unshare -m sh -c 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"' "$T/other-boot-id")
fi
status=0
fail() {
  echo "FAIL $*"
  status=1
}
images=0
bytes=0
tags=0
snapshots=0
retakes=0
lossy=0

# verify_snapshot N: serve the copy as after a reboot and check it.
verify_snapshot() {
  local n=$1 snap_addr snap_pid fsck_status=0
  snap_loop=$(losetup --find --show "$T/snap.img")
  mount "$snap_loop" "$T/snapmnt"
  snap_addr=127.0.0.1:$(free_port)
  start_bg "$T/snap-berth-$n.log" ${in_boot[@]+"${in_boot[@]}"} "$BERTH" serve --listen "$snap_addr" --data-dir "$T/snapmnt/data"
  snap_pid=$LAST_PID
  wait_http "http://$snap_addr/v2/"
  if ! verify_acked "$snap_addr" "$T/snap.acked" "$T/snap.attempts" "$T/snap.retags"; then
    fail "snapshot $n: acknowledged pushes lost (above)"
    lossy=$((lossy + 1))
  fi
  images=$((images + VERIFIED_IMAGES))
  bytes=$((bytes + VERIFIED_BYTES))
  tags=$((tags + VERIFIED_TAGS))
  stop_pid "$snap_pid"
  cat "$T/snap-berth-$n.log" >>"$T/snap-berth.log"
  ${in_boot[@]+"${in_boot[@]}"} "$BERTH" fsck --data-dir "$T/snapmnt/data" >"$T/snap-fsck.log" 2>&1 || fsck_status=$?
  if [ "$fsck_status" -ne 0 ]; then
    fail "snapshot $n: berth fsck exited $fsck_status:"
    grep -v '^LEFTOVER' "$T/snap-fsck.log" | head -20 || true
  fi
  umount "$T/snapmnt"
  if ! e2fsck -fn "$snap_loop" >"$T/e2fsck.log" 2>&1; then
    fail "snapshot $n: e2fsck found the filesystem damaged:"
    tail -20 "$T/e2fsck.log"
  fi
  losetup -d "$snap_loop"
  snap_loop=
  rm -f "$T/snap.img"
  echo "snapshot $n: $VERIFIED_IMAGES images and $VERIFIED_TAGS tags acknowledged before it are there; $(tail -1 "$T/snap-fsck.log")"
}

for n in $(seq "$SNAPSHOTS"); do
  # 1 to 3 s of pushing: several journal checkpoints apart, and writes
  # in flight at the instant.
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 1 + (r % 2000) / 1000 }')"
  # Then stop right after the next acknowledgement (up to 5 s): the newest
  # push is then younger than a journal checkpoint, the case to test.
  acked_before=$(wc -l <"$T/acked")
  for _ in $(seq 250); do
    [ "$(wc -l <"$T/acked")" -gt "$acked_before" ] && break
    sleep 0.02
  done
  kill -STOP "$berth_pid"
  sleep 0.3
  cp "$T/acked" "$T/snap.acked"
  cp "$T/retag-attempts" "$T/snap.attempts"
  cp "$T/retags" "$T/snap.retags"
  taken=false
  for _ in 1 2 3 4 5; do
    before=$(write_state)
    cp --sparse=always "$T/disk.img" "$T/snap.img"
    after=$(write_state)
    if [ "$before" = "$after" ] && [ "${before#* }" = 0 ]; then
      taken=true
      break
    fi
    retakes=$((retakes + 1))
    sleep 0.2
  done
  if $taken; then
    snapshots=$((snapshots + 1))
    # Berth stays stopped meanwhile: the clients wait (and time out), so
    # the images to check grow only with the pushing time, not with the
    # time a loaded machine takes to check them.
    verify_snapshot "$n"
  else
    fail "snapshot $n: the loop device kept writing during every copy"
  fi
  kill -CONT "$berth_pid"
done

touch "$T/stop"
for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
CLIENT_PIDS=()
stop_pid "$berth_pid"
if grep -q ' ERROR ' "$T/snap-berth.log" 2>/dev/null; then
  fail "the rebooted Berth logged errors:"
  grep ' ERROR ' "$T/snap-berth.log" | head -5 || true
fi
replays=$(grep -c 'the machine restarted: redoing' "$T/snap-berth.log" || true)

[ "$images" -gt 0 ] || fail "no push was acknowledged before a snapshot"
expire=$(cat /proc/sys/vm/dirty_expire_centisecs)
echo "power-cut test: $snapshots snapshots ($retakes copies taken again), $images acknowledged images and $tags tags checked, $bytes bytes verified"
echo "(boot id $([ "$SAME_BOOT" = 1 ] && echo 'unchanged: the control run' || echo 'replaced'); vm.dirty_expire_centisecs=$expire; the journal replayed on $replays of $snapshots rebooted servers)"
if [ "$status" -eq 0 ]; then
  echo "PASS power-cut test"
  if $record; then
    write_result docs/results/powercut.md "Power-cut test: acknowledged pushes survive losing unsynced writes" \
      "tests/e2e/powercut.sh --record" \
      "SNAPSHOTS=$SNAPSHOTS CLIENTS=$CLIENTS, snapshots 1-3 s apart, ext4 (commit=600,noauto_da_alloc) on a loop device, vm.dirty_expire_centisecs=$expire" \
      "snapshots of the device, each at an instant|$snapshots" \
      "acknowledged images checked, summed over the snapshots (manifest by tag and digest, every blob)|$images" \
      "retagged tags checked, summed|$tags" "bytes verified, summed|$bytes" \
      "rebooted servers whose journal replayed|$replays of $snapshots" \
      "checks on each snapshot|mounted (ext4 journal replay), \`e2fsck -fn\` clean, served by Berth under another boot id (its journal replays), \`berth fsck\` exit 0" \
      "proves|every push acknowledged before the instant is on the device: a power cut then loses none; ext4 on a loop device, not a disk's volatile cache"
  fi
fi
# The control run is recorded when it fails as it should: it shows what the
# test catches when the journal is not replayed.
if [ "$SAME_BOOT" = 1 ] && $record && [ "$lossy" -gt 0 ]; then
  write_result docs/results/powercut-control.md "Power-cut test, control run: the same copies without the journal's replay" \
    "POWERCUT_SAME_BOOT=1 tests/e2e/powercut.sh --record" \
    "SNAPSHOTS=$SNAPSHOTS CLIENTS=$CLIENTS, as powercut.md, but the copies served under this boot's id" \
    "snapshots of the device|$snapshots" \
    "snapshots where acknowledged pushes were missing|$lossy of $snapshots" \
    "means|the copies lack writes Berth had not synced itself (the journal's records name them): the test drops unsynced writes, and Berth's replay after a reboot is what keeps them"
fi
exit $status
