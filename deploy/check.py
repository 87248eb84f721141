#!/usr/bin/env python3
"""Check deploy/ offline: the Kubernetes manifests, the kustomize overlays and the Helm
chart (rendered with its default values and each ci/*-values.yaml) against the Kubernetes
schemas, the KServe runtime's and the Deployment's settings against the real binary, and
everything (manifests, rendered chart, Dockerfile) through the checkov security linter.

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
    files = sorted((DEPLOY / "kubernetes/base").glob("*.yaml")) + sorted((DEPLOY / "kubernetes/batch").glob("*.yaml"))
    return [f for f in files if f.name != "kustomization.yaml"]


def rendered(tmp):
    """The kustomizations rendered with kubectl's built-in kustomize, where kubectl exists."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("note: kubectl not found; the kustomizations were not rendered (their resources were checked one by one)")
        return []
    out = []
    for overlay in ["base", "gpu", "batch"]:
        text = run(kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                   DEPLOY / "kubernetes" / overlay, capture_output=True, text=True, check=True).stdout
        path = Path(tmp) / f"{overlay}.yaml"
        path.write_text(text)
        out.append(path)
    return out


def config_maps_fit():
    """Every ConfigMap the kustomizations generate stays under Kubernetes' limit on a
    ConfigMap's data (1 MiB): the API server refuses a larger one at apply time."""

    for kustomization in sorted((DEPLOY / "kubernetes").glob("*/kustomization.yaml")):
        spec = yaml.safe_load(kustomization.read_text())
        for generator in spec.get("configMapGenerator", []):
            paths = [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
            size = sum((kustomization.parent / p).stat().st_size for p in paths)
            name = f"{kustomization.parent.name}/{generator['name']}"
            print(f"ConfigMap {name}: {size} bytes of files (limit 1048576)")
            if size > 1 << 20:
                sys.exit(f"ConfigMap {name} holds {size} bytes: over Kubernetes' 1 MiB limit")

def image_has_what_the_binary_embeds():
    """Every file the server's source embeds (include_str!, include_bytes!) is in what the
    Dockerfile's build stage copies, and not left out of the context by .dockerignore: else
    `docker build` fails where `cargo build` here succeeds."""
    import fnmatch
    import re

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    build_stage = next(stage for stage in dockerfile.split("\nFROM ")[1:] if " AS binary-build\n" in stage)
    copied = [src for line in build_stage.splitlines() if line.startswith("COPY ") and "--from" not in line
              for src in line.split()[1:-1]]
    ignored = [p.rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for source in sorted(s for d in ("runtime/src", "runtime/protocol/src") for s in (ROOT / d).rglob("*.rs")):
        for embedded in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
            path = (source.parent / embedded).resolve().relative_to(ROOT).as_posix()
            inside = any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied)
            left_out = [p for p in ignored if fnmatch.fnmatch(path, p) or path.startswith(p + "/")]
            if not inside or left_out:
                sys.exit(f"deploy/Dockerfile: {source.relative_to(ROOT)} embeds {path}, which the build stage "
                         + ("does not copy" if not inside else f"cannot see (.dockerignore: {left_out[0]})"))
    print(f"Dockerfile build stage: copies every file the binary embeds ({', '.join(copied)})")
    images = re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, re.M)
    for arg, default in images:
        tag = default.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            sys.exit(f"deploy/Dockerfile: ARG {arg}={default} names no pinned tag")
    print(f"Dockerfile base images: pinned tags by default ({', '.join(d for _, d in images)})")


def chart(tmp):
    """The Helm chart rendered by deploy/helm/render.go (Go's text/template and sprig, as helm
    renders), once per values file: the defaults and ci/*-values.yaml."""
    go = shutil.which("go")
    if not go:
        if os.environ.get("CI"):
            sys.exit("CI needs Go to render the Helm chart (.ci/run installs it)")
        print("note: go not found; the Helm chart was not rendered (apt-get install golang-go "
              "golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev)")
        return []
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": os.environ.get("GOCACHE", str(Path(tmp) / "gocache"))}
    chart_dir = DEPLOY / "helm/wasmserve"
    out = []
    for values in [None, *sorted((chart_dir / "ci").glob("*-values.yaml"))]:
        args = ["-f", values] if values else []
        text = run(go, "run", DEPLOY / "helm/render.go", *args, chart_dir,
                   capture_output=True, text=True, env=env)
        if text.returncode != 0:
            sys.exit(f"the chart did not render with {values or 'its defaults'}:\n{text.stderr}")
        path = Path(tmp) / f"chart-{values.stem if values else 'default'}.yaml"
        path.write_text(text.stdout)
        out.append(path)
    return out

def serve_args_are_accepted(args, label, env=None):
    """`args` (a container's, after the binary: `serve` or `batch`) parse, and only the
    repository is missing."""
    result = run(BINARY, *args, "--repository", "/nonexistent/models",
                 capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", **(env or {})})
    if "cannot read model repository /nonexistent/models" not in result.stderr:
        sys.exit(f"{label}: wasmserve did not accept {args}:\n{result.stderr}")

def config_map_is_accepted(config, deployment, path, label):
    """A Deployment's args with its ConfigMap's server.toml (written to `path`, where the pod
    mounts it at /etc/wasmserve/server.toml) are accepted."""
    path.write_text(config["data"]["server.toml"])
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    serve_args_are_accepted([a.replace("/etc/wasmserve/server.toml", str(path)) for a in args], label)

def settings_match_the_binary(tmp):
    deployment = yaml.safe_load((DEPLOY / "kubernetes/base/deployment.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "kubernetes/base/config.yaml").read_text())
    config_map_is_accepted(config, deployment, Path(tmp) / "server.toml", "deployment.yaml with config.yaml")
    runtime = yaml.safe_load((DEPLOY / "kserve/servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith("--repository")]
    serve_args_are_accepted(args, "kserve/servingruntime.yaml")
    port = next(a for a in args if a.startswith("--port=")).split("=")[1]
    assert str(container["ports"][0]["containerPort"]) == port, "KServe container port != --port"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    isvc = yaml.safe_load((DEPLOY / "kserve/inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    job = yaml.safe_load((DEPLOY / "kubernetes/batch/job.yaml").read_text())["spec"]["template"]
    cron = yaml.safe_load((DEPLOY / "kubernetes/batch/cronjob.yaml").read_text())
    assert cron["spec"]["jobTemplate"]["spec"]["template"] == job, "the Job and the CronJob run the same pod"
    args = job["spec"]["containers"][0]["args"]
    at = args.index("--repository")
    serve_args_are_accepted(args[:at] + args[at + 2:], "kubernetes/batch/job.yaml")
    indexed = yaml.safe_load((DEPLOY / "kubernetes/batch/indexed-job.yaml").read_text())["spec"]
    args = indexed["template"]["spec"]["containers"][0]["args"]
    assert indexed["completionMode"] == "Indexed" and indexed["completions"] == indexed["parallelism"]
    assert args[args.index("--shard") + 1] == str(indexed["completions"]), "--shard N != completions"
    at = args.index("--repository")
    # Kubernetes gives each pod of an Indexed Job its JOB_COMPLETION_INDEX.
    serve_args_are_accepted(args[:at] + args[at + 2:], "kubernetes/batch/indexed-job.yaml",
                            env={"JOB_COMPLETION_INDEX": "3"})

def chart_settings_match_the_binary(charts, tmp):
    """Each rendered chart's server.toml (its ConfigMap), with its Deployment's args, is
    accepted by the binary: a values knob that renders a key the server does not know, or a
    value it refuses, fails here and not in the pod."""
    for path in charts:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and "server.toml" in d.get("data", {}))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        config_map_is_accepted(config, deployment, Path(tmp) / f"{path.stem}-server.toml",
                               f"{path.stem}: the chart's Deployment with its ConfigMap")
        print(f"{path.stem}: server.toml accepted ({len(config['data']['server.toml'].splitlines())} settings)")

def main():
    with tempfile.TemporaryDirectory() as tmp:
        charts = chart(tmp)
        chart_settings_match_the_binary(charts, tmp)
        validate(resources() + rendered(tmp) + charts)
        config_maps_fit()
        image_has_what_the_binary_embeds()
        settings_match_the_binary(tmp)
        checkov = [BIN / "checkov", "--config-file", DEPLOY / ".checkov.yaml"]
        if run(*checkov, "-d", DEPLOY).returncode != 0:
            sys.exit("checkov found problems in deploy/")
        if charts and run(*checkov, *[a for c in charts for a in ("-f", c)]).returncode != 0:
            sys.exit("checkov found problems in the rendered chart")
    print("deploy/: all checks passed")

if __name__ == "__main__":
    main()
