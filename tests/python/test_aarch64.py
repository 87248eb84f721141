"""The aarch64 Linux build serves magika on tract under qemu-aarch64 (qemu-user) and gives the
labels the x86_64 build gives. `make test-aarch64` cross-builds the binary (tract only: ONNX
Runtime's library here is x86_64) with Debian's gcc-aarch64-linux-gnu and runs this; it is
not part of `make test` (the cross build of wasmtime and tract does not fit CI's time), so
it skips without WASMSERVE_AARCH64_BIN."""

import os
import shutil

import pytest
import tritonclient.http as http

from conftest import Server, assert_magika_fixtures, magika_on_tract

BINARY = os.environ.get("WASMSERVE_AARCH64_BIN")
EM_AARCH64 = 183  # ELF e_machine

pytestmark = pytest.mark.skipif(not BINARY or not shutil.which("qemu-aarch64"),
                                reason="no aarch64 build (make test-aarch64) or no qemu-aarch64")


def test_magika_on_tract_under_qemu_gives_the_x86_64_labels(tmp_path):
    header = open(BINARY, "rb").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64, "not an aarch64 ELF"
    magika_on_tract(tmp_path)
    server = Server(tmp_path, binary=("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", BINARY))
    try:
        server.wait_ready(timeout=600)  # cranelift compiles the plugin under emulation
        # Emulated, the 24 files take about 100 s in one request (3.4 s for one file).
        client = http.InferenceServerClient(server.address, network_timeout=600, connection_timeout=600)
        assert client.get_server_metadata()["name"] == "wasmserve"
        assert_magika_fixtures(client, score_atol=0.01)
    finally:
        server.stop()
