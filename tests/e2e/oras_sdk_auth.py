#!/usr/bin/env python3
"""The oras Python SDK (PyPI `oras`) logging in to Berth as a new user would:
`OrasClient(hostname=...).login(...)`, then `push` of one file to a fresh
repository and `pull` of it back. Used by tests/e2e/oras_sdk_auth.sh.

  oras_sdk_auth.py ADDR REPO:TAG FILE OUTDIR BACKEND
BACKEND is the SDK's `auth_backend`: "token" (its default, the Bearer token
flow) or "basic" (Authorization: Basic on every request). Prints "pushed"
and "pulled identical" on success; exits 1 with the SDK's error otherwise.
Plain HTTP (insecure=True): the registry is on 127.0.0.1.
"""

import filecmp
import os
import sys

import oras.client


def main(addr, target, path, outdir, backend):
    client = oras.client.OrasClient(hostname=addr, insecure=True, auth_backend=backend)
    client.login(
        username=os.environ["ORAS_USER"],
        password=os.environ["ORAS_PASSWORD"],
        hostname=addr,
        config_path=os.environ["ORAS_DOCKERCFG"],
    )
    os.chdir(os.path.dirname(os.path.abspath(path)))  # the SDK wants relative paths
    try:
        resp = client.push(target=target, files=[os.path.basename(path)], quiet=True)
    except Exception as e:  # the SDK raises ValueError/HTTPError with the registry's answer
        print(f"push failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if resp.status_code not in (200, 201):
        print(f"push failed: manifest PUT answered {resp.status_code}", file=sys.stderr)
        return 1
    print("pushed")
    files = client.pull(target=target, outdir=outdir)
    if len(files) != 1 or not filecmp.cmp(files[0], path, shallow=False):
        print(f"pull gave {files}, not the pushed file", file=sys.stderr)
        return 1
    print("pulled identical")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
