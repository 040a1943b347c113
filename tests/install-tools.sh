#!/usr/bin/env bash
# The system tools that building and testing Berth call, installed with apt
# when missing (as root; otherwise it names the missing packages and fails).
# tests/run.sh runs it first, so that a fresh Debian/Ubuntu with only the Rust
# toolchain passes in one go.
#
#   tests/install-tools.sh          `cargo build` and `cargo test`:
#       cc          gcc + libc6-dev: aws-lc-sys and ring (rustls' crypto)
#                   compile C, and rustc links through cc
#       curl        tests/tls.rs and tests/zero_copy.rs drive curl; so does
#                   tests/garage.sh (SigV4 requests to Garage)
#       kill        procps: tests/cli.rs and tests/api_auth.rs signal servers
#       mount       the full-disk test mounts a tmpfs (root only)
#       python3     tests/garage.sh (free ports, the admin API's JSON), which
#                   the Garage fixture runs; tests/support/balancer.py; and
#                   for the script tests, tests/support/lib.sh (a free port)
#                   and the oras driver
#   tests/install-tools.sh --e2e    also the script tests':
#       pgrep       procps: tests/e2e/clients.sh
#       losetup, unshare, mkfs.ext4, e2fsck   tests/e2e/powercut.sh
#       pkg-config, libsodium-dev   the Garage build below, when there is
#                   no Garage binary yet
#   tests/install-tools.sh --garage only the Garage binary the S3 tests use
#       (see install_garage below; minutes: tests/run.sh runs it in the
#       background from its start)
#   (the real clients and Distribution come from tests/e2e/install-clients.sh;
#   the benchmark installs wrk itself)
#
# It also checks Rust: at least 1.85 (Cargo.toml's rust-version), with the
# rustfmt and clippy components, which it adds through rustup when it can.
set -euo pipefail

cd "$(dirname "$0")/.."

# Garage 2.5.0, the S3-compatible store the S3 tests run against: the binary
# tests/garage.sh finds ($GARAGE_BIN, target/garage/bin, this workplace's
# /work/cache/garage/bin, PATH), else built into target/garage/bin. The
# default build (cargo install garage) took 11 min on 2 cores; this one keeps
# only what the tests use and cuts codegen they do not need: 3-4 min there
# (niced, beside other builds), about 300 s of CPU by cargo's timings:
#   features: sqlite (the tests' db_engine) + bundled-libs (SQLite compiled
#       in); without the defaults lmdb, k2v and metrics (Prometheus,
#       OpenTelemetry). consul-discovery, kubernetes-discovery,
#       telemetry-otlp, syslog, journald and fjall are off by default.
#   libsodium from the system (libsodium-dev, which --e2e installs when
#       there is no Garage yet) when pkg-config finds it: libsodium-sys
#       otherwise runs libsodium's configure and `make check` (it also
#       needs make then), over a minute on the build's critical path.
#   optimisation: Garage's own crates at opt-level 0 (most of the compile
#       time, little per-byte work), the hashes every byte goes through
#       (MD5 for ETags, BLAKE2 for blocks, SHA, CRC) at 3, everything else at
#       1; no LTO, 16 codegen units, no debug info. A 256 MiB PUT on
#       loopback then runs at about 110 MB/s and a GET at 400 MB/s
#       (opt-level 1 throughout: 200-300 MB/s and 450 MB/s, 100 s more
#       compiling; 0 throughout: 25 MB/s both ways).
# The build has its own target directory (no wait on the lock of target/,
# which the test build holds), removed once installed.
install_garage() {
  local found crate profile=()
  if found=$(tests/garage.sh find 2>/dev/null); then
    echo "install-tools: garage: $found ($("$found" --version 2>/dev/null | head -n 1))"
    return 0
  fi
  for crate in garage garage_api_admin garage_api_common garage_api_s3 garage_block \
    garage_db garage_model garage_net garage_rpc garage_table garage_util garage_web; do
    profile+=(--config "profile.release.package.$crate.opt-level=0")
  done
  for crate in md-5 blake2 sha2 sha1 crc32fast crc-fast; do
    profile+=(--config "profile.release.package.$crate.opt-level=3")
  done
  if pkg-config --exists libsodium 2>/dev/null; then
    export SODIUM_USE_PKG_CONFIG=1
  fi
  echo "install-tools: building garage 2.5.0 into target/garage (minutes)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo "${profile[@]}" install garage --locked --version 2.5.0 --root target/garage \
    --target-dir target/garage/build --no-default-features --features bundled-libs,sqlite
  rm -rf target/garage/build
  tests/garage.sh find >/dev/null
}

if [ "${1:-}" = "--garage" ]; then
  install_garage
  exit
fi

e2e=false
[ "${1:-}" = "--e2e" ] && e2e=true

# command:package pairs; a command that is present needs nothing.
needs=(cc:gcc curl:curl kill:procps mount:mount sha256sum:coreutils python3:python3)
# The Garage build (--garage, which tests/run.sh starts next) links the
# system's libsodium instead of building it; needed only when there is no
# Garage binary yet.
garage_build=false
if $e2e && ! tests/garage.sh find >/dev/null 2>&1; then garage_build=true; fi
if $e2e; then
  needs+=(pgrep:procps losetup:mount unshare:util-linux
    mkfs.ext4:e2fsprogs e2fsck:e2fsprogs)
fi
if $garage_build; then needs+=(pkg-config:pkg-config); fi

missing=()
for pair in "${needs[@]}"; do
  # type -P: a file on PATH (kill is also a shell builtin, which Command::new cannot run)
  type -P "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
# A compiler without the C library's start files and headers cannot link.
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
# TLS to crates.io and the tests' HTTPS clients need the CA bundle.
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if $garage_build && [ ! -e /usr/include/sodium.h ]; then missing+=(libsodium-dev); fi

if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: missing ${missing[*]}; as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "install-tools: missing ${missing[*]}, and there is no apt-get to install them" >&2
    exit 1
  fi
  echo "install-tools: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-tools: system tools present"
fi

# Rust: the version Cargo.toml asks for, and the lint components.
version=$(rustc --version | awk '{ print $2 }')
if [ "$(printf '%s\n1.85.0\n' "$version" | sort -V | head -1)" != 1.85.0 ]; then
  echo "install-tools: rustc $version is older than 1.85 (Cargo.toml rust-version); rustup update stable" >&2
  exit 1
fi
for component in rustfmt clippy; do
  tool=$([ "$component" = rustfmt ] && echo fmt || echo clippy)
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      echo "install-tools: rustup component add $component"
      rustup component add "$component"
    else
      echo "install-tools: cargo $tool is missing; install the $component component" >&2
      exit 1
    fi
  fi
done
