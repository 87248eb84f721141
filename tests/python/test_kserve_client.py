"""KServe's own Python SDK (the `kserve` package's REST client, a real OIP client no one here
wrote) against wasmserve: health, read from the JSON bodies the KServe v2 spec defines (it
raised JSONDecodeError on empty ones), and an inference. The SDK runs in a process of its own
(clients/kserve_sdk.py): it and tritonclient both register the `inference` protobuf package."""

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SDK = Path(__file__).resolve().parent / "clients/kserve_sdk.py"


def test_kserves_python_client(server):
    expected = json.loads((FIXTURES / "magika/expected.json").read_text())
    names = ["main.rs", "install.sh", "hi.txt"]
    files = [str(FIXTURES / "magika/files" / n) for n in names]
    run = subprocess.run([sys.executable, str(SDK), server.address, *files], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert (got["live"], got["ready"], got["magika_ready"], got["missing_ready"]) == (True, True, True, False)
    assert got["labels"] == [expected[n]["label"] for n in names]
