#!/usr/bin/env python3
"""Tiny driver around the `oras` Python SDK (PyPI package `oras`), which
ships no command-line tool of its own. Used by tests/e2e/clients.sh.

Every registry call goes through oras.provider.Registry (push/pull/
get_manifest/do_request); this file only adds the bits the SDK lacks:
an OCI 1.1 `artifactType` on pushed manifests, a `subject` given by digest,
and a GET of the referrers API.

Transport and login come from the environment (set by clients.sh):
  E2E_TLS_CA              unset: plain HTTP. Set: HTTPS, the server
                          certificate verified against this CA file
                          (the SDK's tls_verify=<CA bundle>).
  E2E_USER, E2E_PASSWORD  log in (Registry.login) before any request.
  E2E_ORAS_DOCKERCFG      where Registry.login records the credentials.

Usage (ADDR is host:port of the registry):
  oras_driver.py push ADDR REPO:TAG FILE MEDIATYPE ARTIFACT_TYPE [SUBJECT_DIGEST]
      push FILE as the single layer (OCI 1.1 style: empty config
      application/vnd.oci.empty.v1+json, manifest artifactType set);
      with SUBJECT_DIGEST the manifest gets a `subject` pointing at that
      manifest of the same repository. Prints the manifest digest the
      registry returned (Docker-Content-Digest) and, on a second line,
      the OCI-Subject response header or "-".
  oras_driver.py pull ADDR REPO(:TAG|@DIGEST) OUTDIR
      pull all layers into OUTDIR; prints the written paths.
  oras_driver.py manifest ADDR REPO(:TAG|@DIGEST)
      print the manifest JSON as the SDK parsed it.
  oras_driver.py referrers ADDR REPO DIGEST [ARTIFACT_TYPE]
      GET /v2/REPO/referrers/DIGEST[?artifactType=..]; prints the index
      JSON. Exit 3 if the registry answers 404 (no referrers API).
"""

import hashlib
import json
import os
import sys
import tempfile

import oras.client
import oras.defaults
import oras.oci
import oras.provider

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


class ArtifactRegistry(oras.provider.Registry):
    """oras Registry that stamps an artifactType on uploaded manifests."""

    artifact_type = None
    last_response = None

    def upload_manifest(self, manifest, container):
        if self.artifact_type:
            manifest["artifactType"] = self.artifact_type
        if not manifest.get("annotations"):
            # The SDK always adds an (often empty) annotations map; drop an
            # empty one so the manifest is the canonical minimal form.
            manifest.pop("annotations", None)
        resp = super().upload_manifest(manifest, container)
        self.last_response = resp
        return resp

    def do_request(self, url, method="GET", data=None, headers=None, json=None, stream=False):
        # oras-py 0.2.43 keeps one bearer token and asks for a new one only on
        # 403; a registry that answers a token lacking the needed scope with
        # 401 error="insufficient_scope" (the distribution spec's way, e.g. a
        # pull token used for a push) would fail. Drop the token and retry once.
        resp = super().do_request(url, method, data, dict(headers or {}), json, stream)
        challenge = resp.headers.get("Www-Authenticate", "")
        if resp.status_code == 401 and "insufficient_scope" in challenge and getattr(self.auth, "token", None):
            self.auth.token = None
            resp = super().do_request(url, method, data, dict(headers or {}), json, stream)
        return resp


def client(addr):
    ca = os.environ.get("E2E_TLS_CA")
    if ca:
        reg = ArtifactRegistry(hostname=addr, insecure=False, tls_verify=ca)
    else:
        reg = ArtifactRegistry(hostname=addr, insecure=True)
    user = os.environ.get("E2E_USER")
    if user:
        cfg = os.environ.get("E2E_ORAS_DOCKERCFG")
        if not cfg:
            fail("E2E_ORAS_DOCKERCFG must be set with E2E_USER", 2)
        reg.login(
            username=user,
            password=os.environ["E2E_PASSWORD"],
            hostname=addr,
            tls_verify=bool(ca),
            config_path=cfg,
        )
    return reg


def fail(msg, code=1):
    print(f"oras_driver: {msg}", file=sys.stderr)
    sys.exit(code)


def cmd_push(addr, target, path, media_type, artifact_type, subject_digest=None):
    reg = client(addr)
    reg.artifact_type = artifact_type
    subject = None
    if subject_digest:
        repo = target.rsplit(":", 1)[0] if "@" not in target else target.split("@")[0]
        # Ask the registry for the subject's exact bytes: the SDK's
        # Subject.from_manifest re-serialises JSON, which would not match.
        url = f"{reg.prefix}://{addr}/v2/{repo}/manifests/{subject_digest}"
        resp = reg.do_request(
            url,
            "GET",
            headers={"Accept": ", ".join(oras.defaults.default_manifest_accepted_media_types)},
        )
        if resp.status_code != 200:
            fail(f"GET subject {url}: HTTP {resp.status_code}")
        body = resp.content
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if got != subject_digest:
            fail(f"subject bytes hash to {got}, expected {subject_digest}")
        mt = json.loads(body).get("mediaType") or resp.headers.get("Content-Type")
        subject = oras.oci.Subject(mediaType=mt, digest=subject_digest, size=len(body))

    workdir = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "config.json")
        with open(config, "w") as f:
            f.write("{}")
        cwd = os.getcwd()
        os.chdir(workdir)  # the SDK wants layer paths relative to $PWD
        try:
            reg.push(
                target=target,
                files=[f"{os.path.basename(path)}:{media_type}"],
                manifest_config=f"{config}:{EMPTY_MEDIA_TYPE}",
                subject=subject,
                quiet=True,
            )
        finally:
            os.chdir(cwd)
    resp = reg.last_response
    if resp is None or resp.status_code not in (200, 201):
        fail("manifest upload failed")
    print(resp.headers.get("Docker-Content-Digest", "-"))
    print(resp.headers.get("OCI-Subject", "-"))


def cmd_pull(addr, target, outdir):
    reg = client(addr)
    files = reg.pull(target=target, outdir=outdir)
    for f in files:
        print(f)
    if not files:
        fail("pulled no files")


def cmd_manifest(addr, target):
    reg = client(addr)
    print(json.dumps(reg.get_manifest(target), sort_keys=True))


def cmd_referrers(addr, repo, digest, artifact_type=None):
    reg = client(addr)
    url = f"{reg.prefix}://{addr}/v2/{repo}/referrers/{digest}"
    if artifact_type:
        url += f"?artifactType={artifact_type}"
    resp = reg.do_request(url, "GET", headers={"Accept": oras.defaults.default_index_media_type})
    if resp.status_code == 404:
        print(f"oras_driver: GET {url}: 404 (no referrers API)", file=sys.stderr)
        sys.exit(3)
    if resp.status_code != 200:
        fail(f"GET {url}: HTTP {resp.status_code}: {resp.text[:300]}")
    ctype = resp.headers.get("Content-Type", "")
    out = {
        "content_type": ctype,
        "filters_applied": resp.headers.get("OCI-Filters-Applied", ""),
        "index": resp.json(),
    }
    print(json.dumps(out, sort_keys=True))


def main(argv):
    if len(argv) < 2:
        fail(__doc__.strip(), 2)
    cmd, args = argv[1], argv[2:]
    table = {
        "push": (cmd_push, 5, 6),
        "pull": (cmd_pull, 3, 3),
        "manifest": (cmd_manifest, 2, 2),
        "referrers": (cmd_referrers, 3, 4),
    }
    if cmd not in table:
        fail(f"unknown command {cmd}", 2)
    fn, lo, hi = table[cmd]
    if not lo <= len(args) <= hi:
        fail(f"{cmd}: wrong number of arguments", 2)
    fn(*args)


if __name__ == "__main__":
    main(sys.argv)
