#!/usr/bin/env bash
# crane and helm cannot be installed here (Go programs: not in Debian
# bookworm, and no Go module proxy), so this replays, with curl, the requests
# they make, read from their libraries' source:
#   crane push / copy / tag: go-containerregistry pkg/v1/remote (write.go,
#     transport/bearer.go): one token exchange up front with the scopes
#     "repository:DST:push,pull" (push first) and, for a copy, also
#     "repository:SRC:pull"; per layer HEAD blob (exists?), then
#     POST uploads/?mount=D&from=SRC (copy within the registry: 201 =
#     mounted), else POST, one PATCH with the whole blob (streamed, chunked
#     transfer encoding, no Content-Range) and PUT ?digest=D with no body;
#     then PUT of the manifest with its media type. `crane tag` GETs the
#     manifest with an Accept list and PUTs the same bytes under the new tag.
#   helm push / pull (OCI): oras-go v2 (registry/remote): the token scope
#     "repository:REPO:pull,push"; HEAD blob, POST uploads/, then one
#     PUT LOCATION?digest=D carrying the blob (Content-Length,
#     application/octet-stream); the manifest with config media type
#     application/vnd.cncf.helm.config.v1+json and the chart layer
#     application/vnd.cncf.helm.chart.content.v1.tar+gzip, tagged with the
#     chart version; pull: HEAD the manifest (resolve), GET it, GET config
#     and chart blobs.
# Against a Berth with authentication on (the Bearer token flow). What this
# does not prove: that the real binaries work (their TLS, config files,
# retries); the README says so.
#   tests/e2e/client_sequences.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked
T=$(mktemp -d /tmp/berth-sequences.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
password="seq-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$password" | "$BERTH" user add ci --htpasswd "$T/htpasswd" --cost 4 >/dev/null
port=$(free_port)
addr=127.0.0.1:$port
start_bg "$T/berth.log" "$BERTH" serve --htpasswd "$T/htpasswd" --listen "$addr" --data-dir "$T/data"
wait_http "http://$addr/v2/"

# token SCOPE...: the client's token exchange (the realm and service from
# the challenge of GET /v2/), with the scopes in the order the client sends.
token() {
  local challenge realm service args=() scope
  challenge=$(curl -s -D - -o /dev/null "http://$addr/v2/" | tr -d '\r' | awk 'tolower($1)=="www-authenticate:"')
  realm=$(sed -E 's/.*realm="([^"]*)".*/\1/' <<<"$challenge")
  service=$(sed -E 's/.*service="([^"]*)".*/\1/' <<<"$challenge")
  args=(--data-urlencode "service=$service")
  for scope in "$@"; do args+=(--data-urlencode "scope=$scope"); done
  curl -sf -G -u "ci:$password" "${args[@]}" "$realm" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("token") or d["access_token"])'
}
# req EXPECTED-STATUS CURL-ARGS...: a request with the current token; fails
# unless the status is EXPECTED. Saves headers in $T/h and the body in $T/b.
req() {
  local want=$1 got
  shift
  got=$(curl -s -D "$T/h" -o "$T/b" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$@")
  if [ "$got" != "$want" ]; then
    echo "  $* -> $got, expected $want: $(head -c 300 "$T/b")"
    return 1
  fi
}
location() { tr -d '\r' <"$T/h" | awk -F': ' 'tolower($1)=="location"{print $2}' | tail -1; }
absolute() { case "$1" in http*) echo "$1" ;; *) echo "http://$addr$1" ;; esac; }
with_digest() { case "$1" in *\?*) echo "$1&digest=$2" ;; *) echo "$1?digest=$2" ;; esac; }
sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# A small image: one layer and a config.
head -c 300000 /dev/urandom >"$T/layer"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$T/config"
layer=$(sha "$T/layer")
config=$(sha "$T/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
  "$config" "$(stat -c %s "$T/config")" "$layer" "$(stat -c %s "$T/layer")" >"$T/manifest"
manifest=$(sha "$T/manifest")

# ggcr_upload REPO FILE DIGEST [FROM]: crane's uploadOne.
ggcr_upload() {
  local repo=$1 file=$2 digest=$3 from=${4:-} loc
  req 404 -I "http://$addr/v2/$repo/blobs/$digest" || return 1
  if [ -n "$from" ]; then
    req 201 -X POST "http://$addr/v2/$repo/blobs/uploads/?mount=$digest&from=$from" || return 1
    return 0
  fi
  req 202 -X POST "http://$addr/v2/$repo/blobs/uploads/" || return 1
  loc=$(absolute "$(location)")
  # Streamed: curl sends a body from stdin with chunked transfer encoding.
  req 202 -X PATCH -H 'Transfer-Encoding: chunked' --data-binary @- "$loc" <"$file" || return 1
  loc=$(absolute "$(location)")
  req 201 -X PUT "$(with_digest "$loc" "$digest")" || return 1
}

crane_push() {
  TOKEN=$(token "repository:crane/app:push,pull")
  ggcr_upload crane/app "$T/layer" "$layer" &&
    ggcr_upload crane/app "$T/config" "$config" &&
    req 404 -I "http://$addr/v2/crane/app/manifests/$manifest" &&
    req 201 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary "@$T/manifest" "http://$addr/v2/crane/app/manifests/v1" &&
    [ "$(tr -d '\r' <"$T/h" | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')" = "$manifest" ]
}
check crane-push-sequence crane_push

crane_copy() { # crane copy crane/app:v1 crane/copy:v1 within the registry: blobs mounted
  TOKEN=$(token "repository:crane/copy:push,pull" "repository:crane/app:pull")
  ggcr_upload crane/copy "$T/layer" "$layer" crane/app &&
    ggcr_upload crane/copy "$T/config" "$config" crane/app &&
    req 201 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary "@$T/manifest" "http://$addr/v2/crane/copy/manifests/v1" &&
    req 200 "http://$addr/v2/crane/copy/blobs/$layer" && cmp -s "$T/b" "$T/layer"
}
check crane-copy-mounts-blobs crane_copy

crane_tag() { # crane tag crane/app:v1 prod
  TOKEN=$(token "repository:crane/app:push,pull")
  req 200 -H 'Accept: application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json' \
    "http://$addr/v2/crane/app/manifests/v1" && cp "$T/b" "$T/got" &&
    req 201 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary "@$T/got" "http://$addr/v2/crane/app/manifests/prod" &&
    req 200 -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$addr/v2/crane/app/manifests/prod" &&
    cmp -s "$T/b" "$T/manifest"
}
check crane-tag-sequence crane_tag

# A helm chart: the chart archive and Helm's config (Chart.yaml as JSON).
head -c 20000 /dev/urandom >"$T/chart.tgz"
printf '{"name":"mychart","version":"0.1.0+build.1","apiVersion":"v2"}' >"$T/chart-config"
chart=$(sha "$T/chart.tgz")
chart_config=$(sha "$T/chart-config")
printf '{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"%s","size":%d}],"annotations":{"org.opencontainers.image.title":"mychart","org.opencontainers.image.version":"0.1.0+build.1"}}' \
  "$chart_config" "$(stat -c %s "$T/chart-config")" "$chart" "$(stat -c %s "$T/chart.tgz")" >"$T/chart-manifest"

# oras_upload REPO FILE DIGEST: oras-go's blob push (POST, then one PUT).
oras_upload() {
  local repo=$1 file=$2 digest=$3 loc
  req 404 -I "http://$addr/v2/$repo/blobs/$digest" || return 1
  req 202 -X POST "http://$addr/v2/$repo/blobs/uploads/" || return 1
  loc=$(absolute "$(location)")
  req 201 -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$(with_digest "$loc" "$digest")"
}

helm_push() { # helm push mychart-0.1.0+build.1.tgz oci://ADDR/charts (tag: + becomes _)
  TOKEN=$(token "repository:charts/mychart:pull,push")
  oras_upload charts/mychart "$T/chart-config" "$chart_config" &&
    oras_upload charts/mychart "$T/chart.tgz" "$chart" &&
    req 201 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary "@$T/chart-manifest" "http://$addr/v2/charts/mychart/manifests/0.1.0_build.1"
}
check helm-push-sequence helm_push

helm_pull() { # helm pull oci://ADDR/charts/mychart --version 0.1.0+build.1
  TOKEN=$(token "repository:charts/mychart:pull")
  req 200 -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$addr/v2/charts/mychart/manifests/0.1.0_build.1" &&
    req 200 -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$addr/v2/charts/mychart/manifests/0.1.0_build.1" && cmp -s "$T/b" "$T/chart-manifest" &&
    req 200 "http://$addr/v2/charts/mychart/blobs/$chart_config" && cmp -s "$T/b" "$T/chart-config" &&
    req 200 "http://$addr/v2/charts/mychart/blobs/$chart" && cmp -s "$T/b" "$T/chart.tgz"
}
check helm-pull-sequence helm_pull

pull_token_cannot_push() { # the scopes matter: a pull-only token is refused a push
  TOKEN=$(token "repository:charts/mychart:pull")
  req 401 -X POST "http://$addr/v2/charts/mychart/blobs/uploads/" &&
    grep -qi 'insufficient_scope' "$T/h"
}
check pull-token-refused-upload pull_token_cannot_push
summary
