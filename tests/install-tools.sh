#!/usr/bin/env bash
# The system tools that building and testing Berth call, installed with apt
# when missing (as root; otherwise it names the missing packages and fails).
# tests/run.sh runs it first, so that a fresh Debian/Ubuntu with only the Rust
# toolchain passes in one go.
#
#   tests/install-tools.sh          `cargo build` and `cargo test`:
#       cc          gcc + libc6-dev: aws-lc-sys and ring (rustls' crypto)
#                   compile C, and rustc links through cc
#       curl        tests/tls.rs and tests/zero_copy.rs drive curl
#       kill        procps: tests/cli.rs and tests/api_auth.rs signal servers
#       mount       the full-disk test mounts a tmpfs (root only)
#   tests/install-tools.sh --e2e    also the script tests':
#       python3     tests/support/lib.sh (a free port), the oras driver
#       pgrep       procps: tests/e2e/clients.sh
#       losetup, unshare, mkfs.ext4, e2fsck   tests/e2e/powercut.sh
#   (the real clients and Distribution come from tests/e2e/install-clients.sh;
#   the benchmark installs wrk itself)
#
# It also checks Rust: at least 1.85 (Cargo.toml's rust-version), with the
# rustfmt and clippy components, which it adds through rustup when it can.
set -euo pipefail

e2e=false
[ "${1:-}" = "--e2e" ] && e2e=true

# command:package pairs; a command that is present needs nothing.
needs=(cc:gcc curl:curl kill:procps mount:mount sha256sum:coreutils)
if $e2e; then
  needs+=(python3:python3 pgrep:procps losetup:mount unshare:util-linux
    mkfs.ext4:e2fsprogs e2fsck:e2fsprogs)
fi

missing=()
for pair in "${needs[@]}"; do
  # type -P: a file on PATH (kill is also a shell builtin, which Command::new cannot run)
  type -P "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
# A compiler without the C library's start files and headers cannot link.
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
# TLS to crates.io and the tests' HTTPS clients need the CA bundle.
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)

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
