"""schemathesis against the committed description of the REST API (schemas/openapi.yaml):
every request it generates, valid or not, must get an answer below 500."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_no_generated_request_gets_a_server_error(server, tmp_path):
    spec = yaml.safe_load((ROOT / "schemas/openapi.yaml").read_text())
    # Aim the generated requests at the models this server has, so they reach the plugins.
    params = spec["components"]["parameters"]
    params["model"]["schema"] = {"type": "string", "enum": ["magika", "minilm"]}
    params["version"]["schema"] = {"type": "string", "enum": ["1"]}
    aimed = tmp_path / "openapi.yaml"
    aimed.write_text(yaml.safe_dump(spec))
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", str(aimed), "--url", f"http://{server.address}",
         "--checks", "not_a_server_error", "-n", "100", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache stays out of the tree
    assert run.returncode == 0, run.stdout[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and int(counts[1]) >= 500 and counts[1] == counts[2], run.stdout[-3000:]
    print(f"schemathesis: {counts[1]} cases, all answered below 500")
