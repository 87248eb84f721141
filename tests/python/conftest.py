"""Start the real wasmserve binary for the client tests."""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/fixtures/text"))
from examples import unbatched  # noqa: E402,F401  (for the tests: from conftest import unbatched)
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = os.environ.get("WASMSERVE_BIN", str(TARGET / "debug/wasmserve"))


def free_port():
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment():
    """What deploy/kubernetes/base runs the server with: the Deployment's pod spec, its
    container, and the ConfigMap's server.toml (text)."""
    import yaml

    base = ROOT / "deploy/kubernetes/base"
    spec = yaml.safe_load((base / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    config = yaml.safe_load((base / "config.yaml").read_text())["data"]["server.toml"]
    return spec, spec["containers"][0], config


def http_status(port, path):
    """The status of GET `path` on 127.0.0.1:`port`; None when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def magika_on_tract(into):
    """A copy of the magika example under `into`/magika with `backend = "tract"` (for builds
    without ONNX Runtime)."""
    import shutil

    model = into / "magika"
    shutil.copytree(ROOT / "examples/models/magika", model)
    toml = (model / "model.toml").read_text()
    assert 'backend = "onnx"' in toml
    (model / "model.toml").write_text(toml.replace('backend = "onnx"', 'backend = "tract"'))


def assert_magika_fixtures(client, score_atol=None):
    """Send the 24 magika fixture files in one request through `client` (tritonclient.http)
    and assert their reference labels (tests/fixtures/magika/expected.json), and with
    `score_atol` their scores within it."""
    import json

    import numpy as np
    import tritonclient.http as http

    fixtures = ROOT / "tests/fixtures/magika"
    expected = json.loads((fixtures / "expected.json").read_text())
    names = sorted(expected)
    data = http.InferInput("bytes", [len(names)], "BYTES")
    data.set_data_from_numpy(np.array([(fixtures / "files" / n).read_bytes() for n in names], dtype=object))
    result = client.infer("magika", [data])
    assert [x.decode() for x in result.as_numpy("label")] == [expected[n]["label"] for n in names]
    if score_atol is not None:
        assert np.allclose(result.as_numpy("score"), [expected[n]["score"] for n in names], atol=score_atol)


def on_demand_copies(into, names):
    """Copies of the test model named `names`, loaded on demand."""
    for name in names:
        model = into / name
        model.mkdir()
        for f in (ROOT / "tests/models/faulty").iterdir():
            if f.name != "model.toml":
                (model / f.name).symlink_to(f)
        toml = (ROOT / "tests/models/faulty/model.toml").read_text()
        (model / "model.toml").write_text(toml + '\n[load]\npolicy = "on_demand"\n')


class Server:
    """`wasmserve serve` on a free port; `args` and `env` are added to its command and
    environment, `binary` is the command that runs the server (an emulator and a binary)."""

    def __init__(self, repository: Path, args=(), env=None, binary=(BINARY,)):
        self.proc = subprocess.Popen(
            [*binary, "serve", "--repository", str(repository), "--port", "0", *args],
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1", **(env or {})},
        )
        self.log = []
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (\S+)", line)
                if m and not found.is_set():
                    self.address = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("wasmserve did not start:\n" + "".join(self.log))

    def wait_ready(self, timeout=120):
        import tritonclient.http as http

        client = http.InferenceServerClient(self.address)
        deadline = time.time() + timeout
        while not client.is_server_ready():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("wasmserve never became ready:\n" + "".join(self.log))
            time.sleep(0.1)
        return client

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server(ROOT / "examples/models")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    import tritonclient.http as http

    return http.InferenceServerClient(server.address)


def podman_limits():
    """The nofile and nproc limits podman's own process runs with (it sets them itself at
    start-up): on sandboxed hosts like this one, runc may set a container's rlimits only to
    exactly those, so containers.conf's default_ulimits must name them. Read off a podman
    process that stays up (an API service), once it is listening."""
    sock = f"/tmp/wasmserve-podman-probe-{os.getpid()}.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time", "10", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not os.path.exists(sock):
            assert service.poll() is None and time.time() < deadline, "podman system service did not start"
            time.sleep(0.05)
        text = open(f"/proc/{service.pid}/limits").read()
        return {name: re.search(rf"Max {label}\s+(\S+)\s+(\S+)", text).groups()
                for name, label in (("nofile", "open files"), ("nproc", "processes"))}
    finally:
        service.kill()
        service.wait()
        if os.path.exists(sock):
            os.unlink(sock)


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    if shutil.which("podman") is None or shutil.which("runc") is None:
        if os.environ.get("CI"):
            pytest.fail("podman and runc are missing: .ci/run installs them")
        pytest.skip("podman and runc are not installed")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    limits = podman_limits()
    conf.write_text("[containers]\ndefault_ulimits = [%s]\n"
                    % ", ".join(f'"{k}={soft}:{hard}"'.replace("unlimited", "-1") for k, (soft, hard) in limits.items()))
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(*args, check=True, timeout=600):
        done = subprocess.run(["podman", "--runtime", "runc", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert not check or done.returncode == 0, f"podman {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done

    return run
