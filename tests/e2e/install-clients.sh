#!/usr/bin/env bash
# Install the real container clients used by tests/e2e/clients.sh, plus
# Debian's docker-registry (CNCF Distribution 2.8) used as the reference
# registry by tests/e2e/against-distribution.sh.
#
# Idempotent: apt packages are only installed when missing, the python
# `oras` SDK only when it cannot be imported. Needs root (apt-get).
set -euo pipefail

APT_PACKAGES=(
  # clients under test
  docker.io podman buildah skopeo containerd
  # runtimes / rootless helpers used by podman, buildah and dockerd
  crun runc uidmap fuse-overlayfs slirp4netns catatonit
  # image content and tooling
  busybox-static jq curl ca-certificates
  # pgrep (clients.sh), python3 (the oras driver, tests/support/lib.sh,
  # tests/support/balancer.py), openssl (a token signing key shared by the
  # replicas of the S3 runs)
  procps python3 openssl
  # reference registry (registry:2)
  docker-registry
  # the load balancer of the README's multi-replica example (readme-replicas.sh)
  nginx
  # lint
  shellcheck
  # systemd-analyze, which checks deploy/systemd/berth.service (tests/e2e/image.sh)
  systemd
  # the web UI's browser test (tests/e2e/ui.sh): headless Chromium, a font to
  # render its screenshots with, node for playwright-core (npm: below)
  chromium fonts-dejavu-core nodejs
)
ORAS_PY_VERSION="${ORAS_PY_VERSION:-0.2.43}"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-clients: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting the system dockerd, containerd and
  # docker-registry (which would listen on *:5000): the tests run their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  # --no-install-recommends keeps docker.io from pulling in extras; the
  # packages listed above are everything the tests need.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-clients: apt packages already installed"
fi

# npm for playwright-core: Debian's package, unless the nodejs installed
# brings its own (NodeSource's does, and conflicts with Debian's npm).
if ! command -v npm >/dev/null; then
  echo "install-clients: apt-get install npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# The Debian packages ship systemd units; this script never starts them
# (the tests run their own daemons on private sockets/dirs). Make sure a
# package postinst did not leave the system docker/containerd/registry/nginx running
# where systemd is present; harmless where it is not.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now docker.service docker.socket containerd.service docker-registry.service nginx.service >/dev/null 2>&1 || true
fi

PY="${PYTHON:-python3}"
if "$PY" -c 'import oras.client' >/dev/null 2>&1; then
  echo "install-clients: python oras SDK already installed ($("$PY" -c 'import importlib.metadata as m; print(m.version("oras"))'))"
else
  echo "install-clients: pip install oras==${ORAS_PY_VERSION}"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  # Debian's own python3 is "externally managed" (PEP 668); a pyenv/venv
  # python is not. --break-system-packages is only passed where needed.
  if ! "$PY" -m pip install -q "oras==${ORAS_PY_VERSION}" 2>/dev/null; then
    "$PY" -m pip install -q --break-system-packages "oras==${ORAS_PY_VERSION}"
  fi
fi

echo "install-clients: done"
# clients.sh prefers /usr/bin/docker (Debian's CLI, same API as its dockerd)
# over any other docker CLI earlier in PATH.
printf '  %-16s %s\n' "docker (tests)" "$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker || echo MISSING)"
for c in dockerd podman buildah skopeo containerd ctr crun runc docker-registry nginx busybox jq curl; do
  printf '  %-16s %s\n' "$c" "$(command -v "$c" || echo MISSING)"
done
