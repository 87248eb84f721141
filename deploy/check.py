#!/usr/bin/env python3
"""Check deploy/ offline: the Kubernetes manifests against the Kubernetes schemas, the
KServe runtime's and the Deployment's settings against the real binary, and everything
(manifests and Dockerfile) through the checkov security linter.

    make deploy-check      (installs kubernetes-validate and checkov into .venv-deploy)

Exits non-zero on the first kind of failure it finds, after printing what failed.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
BINARY = os.environ.get("WASMSERVE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug/wasmserve"))
K8S_VERSION = "1.32"  # the oldest minor release the manifests promise to fit


def run(*cmd, **kwargs):
    print("$", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), **kwargs)


def validate(files):
    """Every resource in `files` against the Kubernetes schemas, rejecting unknown fields."""
    result = run(BIN / "kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, *files)
    if result.returncode != 0:
        sys.exit("Kubernetes schema validation failed")


def resources():
    """The manifests of Kubernetes' own kinds (kustomization files and KServe's kinds aside)."""
    files = sorted((DEPLOY / "kubernetes/base").glob("*.yaml"))
    return [f for f in files if f.name != "kustomization.yaml"]


def rendered(tmp):
    """The kustomizations rendered with kubectl's built-in kustomize, where kubectl exists."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("note: kubectl not found; the kustomizations were not rendered (their resources were checked one by one)")
        return []
    out = []
    for overlay in ["base", "gpu"]:
        text = run(kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                   DEPLOY / "kubernetes" / overlay, capture_output=True, text=True, check=True).stdout
        path = Path(tmp) / f"{overlay}.yaml"
        path.write_text(text)
        out.append(path)
    return out


def serve_args_are_accepted(args, label):
    """`args` (a container's, after the binary) parse, and only the repository is missing."""
    result = run(BINARY, *args, "--repository", "/nonexistent/models",
                 capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    if "cannot read model repository /nonexistent/models" not in result.stderr:
        sys.exit(f"{label}: wasmserve did not accept {args}:\n{result.stderr}")


def settings_match_the_binary(tmp):
    deployment = yaml.safe_load((DEPLOY / "kubernetes/base/deployment.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "kubernetes/base/config.yaml").read_text())
    server_toml = Path(tmp) / "server.toml"
    server_toml.write_text(config["data"]["server.toml"])
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    serve_args_are_accepted([a.replace("/etc/wasmserve/server.toml", str(server_toml)) for a in args],
                            "deployment.yaml with config.yaml")
    runtime = yaml.safe_load((DEPLOY / "kserve/servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith("--repository")]
    serve_args_are_accepted(args, "kserve/servingruntime.yaml")
    port = next(a for a in args if a.startswith("--port=")).split("=")[1]
    assert str(container["ports"][0]["containerPort"]) == port, "KServe container port != --port"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    isvc = yaml.safe_load((DEPLOY / "kserve/inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        validate(resources() + rendered(tmp))
        settings_match_the_binary(tmp)
    if run(BIN / "checkov", "-d", DEPLOY, "--config-file", DEPLOY / ".checkov.yaml").returncode != 0:
        sys.exit("checkov found problems")
    print("deploy/: all checks passed")


if __name__ == "__main__":
    main()
