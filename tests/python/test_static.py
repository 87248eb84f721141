"""The static build (x86_64-unknown-linux-musl, tract only) in a `FROM scratch` image: no
libc, no shell, nothing but the binary and a CA bundle. It serves magika on tract run the way
the Deployment runs containers (read-only root filesystem, user 65532, no capabilities), its
model's files fetched from PyPI into the cache volume, and gives the reference labels.
`make test-static` builds the binary (musl-gcc from Debian's musl-tools compiles the C in
its dependencies) and runs this; it is not part of `make test` (a second build of every
dependency for another target does not fit CI's time), so it skips without
WASMSERVE_STATIC_BIN."""

import os
import shutil
import struct
import subprocess
import time

import pytest
import tritonclient.http as http

from conftest import assert_magika_fixtures, free_port, http_status, magika_on_tract

BINARY = os.environ.get("WASMSERVE_STATIC_BIN")
TAG = "localhost/wasmserve-static:test"
PT_INTERP = 3  # a program header naming the dynamic loader

pytestmark = pytest.mark.skipif(not BINARY, reason="no static build (make test-static)")


def interpreter(path):
    """Whether the ELF at `path` asks for a dynamic loader (64-bit little-endian ELF)."""
    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum))


def test_the_static_binary_serves_magika_on_tract_from_scratch(podman, tmp_path):
    assert not interpreter(BINARY), "the binary needs a dynamic loader: it is not static"
    context = tmp_path / "context"
    context.mkdir()
    subprocess.run(["objcopy", "--strip-all", BINARY, str(context / "wasmserve")], check=True)
    # The host's bundle (with any CA of its own, such as an intercepting proxy's).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", context)
    (context / "Containerfile").write_text(
        "FROM scratch\n"
        "COPY wasmserve /wasmserve\n"
        "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
        "USER 65532:65532\n"
        'ENTRYPOINT ["/wasmserve"]\n')
    podman("build", "--isolation", "chroot", "-t", TAG, str(context))
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    print(f"\n{TAG}: {size / 1e6:.1f} MB (FROM scratch: the stripped static binary and a CA bundle)")

    models, cache = tmp_path / "models", tmp_path / "cache"
    magika_on_tract(models)
    cache.mkdir()
    os.chown(cache, 65532, 65532)
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    port = free_port()
    name = f"wasmserve-static-{os.getpid()}"
    podman("run", "--detach", "--name", name, "--network", "host", "--read-only", "--read-only-tmpfs=false",
           "--user", "65532:65532", "--cap-drop", "all", "--security-opt", "no-new-privileges",
           "-v", f"{models}:/models:ro", "-v", f"{cache}:/cache", TAG,
           "serve", "--repository", "/models", "--cache-dir", "/cache", "--port", str(port))
    try:
        deadline = time.time() + 300
        while http_status(port, "/v2/health/ready") != 200:
            logs = podman("logs", name).stderr[-3000:]
            assert time.time() < deadline, logs
            assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", logs
            time.sleep(0.1)
        assert_magika_fixtures(http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120), score_atol=0.01)
        podman("kill", "--signal", "TERM", name)
        assert podman("wait", name, timeout=60).stdout.strip() == "0", podman("logs", name).stderr[-3000:]
    finally:
        podman("rm", "--force", name, check=False)
