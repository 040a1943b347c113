#!/usr/bin/env bash
# The web UI end to end in headless Chromium (Debian's chromium, driven by
# playwright-core from npm: tests/e2e/ui/browse.mjs) against the release
# Berth with access control on and images pushed by skopeo: browse and
# search, open a repository, copy its pull command, log in (a wrong password
# first), make the repository public and pull it anonymously with skopeo,
# private again and the anonymous pull refused, an image's layers and
# configuration, a tag's history and a rollback from it, a tag deleted after
# a confirmation, an admin hands a namespace to a user (who can then push
# there with skopeo), a user without `manage` sees no settings, permission errors
# say what is missing, the page on a phone's width, every page checked by axe-core
# against WCAG 2.1 AA (light and dark), then 10,000 repositories and 10,000
# tags (tests/e2e/ui/populate.py) paged and searched on the server, the
# page times printed. Screenshots go to
# target/ui-screenshots/ (left there after the run).
#   tests/e2e/ui.sh            (BERTH_BIN defaults to target/release/berth)
#   tests/e2e/ui.sh --record   also copies the screenshots the README shows
#                              into docs/images/
# The last line is "N passed, M failed"; exit status 0 only when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-target/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh
command -v chromium >/dev/null || {
  echo "ui.sh: chromium is missing (tests/e2e/install-clients.sh installs it)" >&2
  exit 1
}
(cd tests/e2e/ui && npm ci --no-audit --no-fund --loglevel=error)

WORK=$(mktemp -d /tmp/berth-e2e-ui.XXXXXX)
trap 'stop_all; rm -rf "$WORK"' EXIT
SHOTS=target/ui-screenshots
rm -rf "$SHOTS" && mkdir -p "$SHOTS"

"$BERTH" user add alice --htpasswd "$WORK/htpasswd" <<<"alice-pw" >/dev/null
"$BERTH" user add bob --htpasswd "$WORK/htpasswd" <<<"bob-pw" >/dev/null
PORT=$(free_port)
cat >"$WORK/berth.toml" <<TOML
listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"
[auth]
htpasswd = "$WORK/htpasswd"
admins = ["alice"]
[[auth.rules]]
repositories = ["app/*"]
users = { bob = ["pull", "push"] }
TOML
start_bg "$WORK/berth.log" "$BERTH" serve --config "$WORK/berth.toml"
wait_http "http://127.0.0.1:$PORT/healthz"

# Images built here (tests/support/make_oci_layout.py): one layer, three
# layers, an index over two platforms; a second seed makes other images.
python3 tests/support/make_oci_layout.py "$WORK/oci" ui-first
python3 tests/support/make_oci_layout.py "$WORK/oci2" ui-second
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
sk() { skopeo --policy "$WORK/policy.json" "$@"; }
push() { # layout:ref repository:tag
  sk copy -q --all --dest-tls-verify=false --dest-creds bob:bob-pw "oci:$WORK/$1" "docker://127.0.0.1:$PORT/$2"
}
push oci:single app/web:1
push oci:multi app/web:2
push oci:multiarch app/api:1
# A second image under app/web:1, so that the tag has a history to roll back.
push oci2:single app/web:1
FIRST_DIGEST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$WORK/oci/index.json")
export FIRST_DIGEST

set +e
BERTH_URL="http://127.0.0.1:$PORT" SKOPEO_POLICY="$WORK/policy.json" SCREENSHOTS="$SHOTS" OCI_LAYOUT="$WORK/oci" \
  node tests/e2e/ui/browse.mjs
status=$?
set -e
# The server logged no error while the browser used it.
if grep -E '"level":"(ERROR|WARN)"|ERROR|panicked' "$WORK/berth.log" >/dev/null; then
  echo "FAIL berth-log-clean"
  grep -E 'ERROR|WARN|panicked' "$WORK/berth.log" | head -20
  status=1
else
  echo "PASS berth-log-clean"
fi
if [ "${1:-}" = --record ] && [ "$status" -eq 0 ]; then
  mkdir -p docs/images
  cp "$SHOTS/03-repositories.png" docs/images/ui-repositories.png
  cp "$SHOTS/05-public.png" docs/images/ui-repository.png
  cp "$SHOTS/08-image.png" docs/images/ui-image.png
  cp "$SHOTS/11-robots.png" docs/images/ui-robots.png
  echo "recorded docs/images/ui-{repositories,repository,image,robots}.png"
fi
exit $status
