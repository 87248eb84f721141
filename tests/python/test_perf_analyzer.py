"""Triton's own benchmark client, perf_analyzer (from tritonclient 2.45.0's wheel, fetched by
`make test`), against wasmserve over HTTP and gRPC, unchanged: it reads the model
configuration, sends real inputs, and reads the statistics for its server-side breakdown.
Also tritonclient's calls for the same two extensions."""

import base64
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures"
TOOL = ROOT / ".tools/perf_analyzer"
CONCURRENCY = 2


@pytest.fixture(scope="module")
def perf_analyzer():
    binary = TOOL / "perf_analyzer"
    if not binary.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {binary} (make test fetches it)")
        pytest.skip(f"no {binary}: `make .tools/perf_analyzer/installed` fetches it")
    return binary


def server_counts(client, model):
    stats = client.get_inference_statistics(model)["model_stats"]
    assert [s["name"] for s in stats] == [model]
    infer = stats[0]["inference_stats"]
    return infer["success"]["count"], infer["fail"]["count"]


def magika_inputs(tmp_path):
    """The 24 fixture files, each a request of one element (the tensor's binary form in b64)."""
    files = sorted((FIXTURES / "magika/files").iterdir())
    data = [{"bytes": {"b64": base64.b64encode(struct.pack("<I", len(f.read_bytes())) + f.read_bytes()).decode(),
                       "shape": [1]}} for f in files]
    path = tmp_path / "magika.json"
    path.write_text(json.dumps({"data": data}))
    expected = json.loads((FIXTURES / "magika/expected.json").read_text())
    return path, {f.read_bytes(): expected[f.name]["label"] for f in files}


def minilm_inputs(tmp_path):
    sentences = json.loads((FIXTURES / "minilm/expected.json").read_text())["sentences"]
    data = [{"text": {"content": [s], "shape": [1]}} for s in sentences]
    path = tmp_path / "minilm.json"
    path.write_text(json.dumps({"data": data}))
    return path, None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["magika", "minilm"])
def test_perf_analyzer_runs_clean_with_the_server_side_breakdown(server, client, perf_analyzer, tmp_path, model, protocol):
    inputs, labels = (magika_inputs if model == "magika" else minilm_inputs)(tmp_path)
    export = tmp_path / "export.json"
    before = server_counts(client, model)
    run = subprocess.run(
        [perf_analyzer, "-m", model, "-u", server.address, "-i", protocol, "--input-data", inputs,
         "--concurrency-range", str(CONCURRENCY), "--measurement-interval", "1000",
         # A shared 2-core machine is noisy: what this test checks is that it runs and counts,
         # not that three windows agree within perf_analyzer's default 10%.
         "--stability-percentage", "100", "--max-trials", "20",
         "--profile-export-file", export],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "LD_LIBRARY_PATH": str(TOOL)},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "error" not in out.lower(), out
    # The server-side breakdown is there, and counts what the client counted in the same
    # windows (requests in flight at a window's edges may fall either side).
    client_count = int(re.search(r"Client:\s+Request count: (\d+)", out).group(1))
    server = re.search(r"Server:\s+Inference count: (\d+)\s+Execution count: (\d+)\s+Successful request count: (\d+)", out)
    assert server, out
    inferences, executions, successes = map(int, server.groups())
    assert client_count > 0 and abs(successes - client_count) <= CONCURRENCY, out
    # One row each; minilm batches them (it ships with [batching]), magika runs each alone.
    assert inferences == successes and (executions <= successes if model == "minilm" else executions == successes), out
    assert re.search(r"compute infer [1-9]\d* usec", out), out
    # Nothing failed, and the server counted at least what the client measured.
    after = server_counts(client, model)
    assert after[1] == before[1]
    assert after[0] - before[0] >= client_count
    # Each answer is right for the file it was sent.
    requests = json.loads(export.read_text(encoding="latin-1"))["experiments"][0]["requests"]
    assert len(requests) >= client_count
    checked = 0
    for r in requests:
        [outputs] = r["response_outputs"]
        if labels is not None:
            sent = r["request_inputs"]["bytes"].encode("latin-1")
            # perf_analyzer writes the bytes as text: what is not UTF-8 comes back mangled.
            if sent in labels:
                assert outputs["label"] == labels[sent]
                checked += 1
        else:
            assert len(outputs["embedding"].encode("latin-1")) == 384 * 4
            checked += 1
    assert checked >= len(requests) // 2, (checked, len(requests))


def test_model_config_both_protocols(server, client):
    config = client.get_model_config("magika")
    assert config["name"] == "magika" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "bytes", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("label", "TYPE_STRING"), ("score", "TYPE_FP32"), ("mime_type", "TYPE_STRING")]
    grpc = grpcclient.InferenceServerClient(server.address).get_model_config("minilm", as_json=True)["config"]
    assert grpc["name"] == "minilm"
    assert grpc["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": ["-1"]}]
    assert grpc["output"] == [{"name": "embedding", "data_type": "TYPE_FP32", "dims": ["-1", "384"]},
                              {"name": "tokens", "data_type": "TYPE_INT64", "dims": ["-1"]}]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("no-such-model")


def test_statistics_both_protocols(server, client):
    import numpy as np
    import tritonclient.http as http

    text = http.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array([b"a", b"b", b"c"], dtype=object))
    before = client.get_inference_statistics("minilm", "1")["model_stats"][0]
    client.infer("minilm", [text])
    with pytest.raises(InferenceServerException):
        client.infer("minilm", [http.InferInput("nope", [1], "BYTES")])
    after = client.get_inference_statistics("minilm", "1")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    stats, was = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - was["success"]["count"] == 1
    assert stats["fail"]["count"] - was["fail"]["count"] == 1
    assert stats["compute_infer"]["ns"] > was["compute_infer"]["ns"]
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])
    # Every model, over gRPC too, with the same counts.
    everything = grpcclient.InferenceServerClient(server.address).get_inference_statistics(as_json=True)
    names = {s["name"] for s in everything["model_stats"]}
    assert {"magika", "minilm"} <= names
    [minilm] = [s for s in everything["model_stats"] if s["name"] == "minilm"]
    assert int(minilm["inference_count"]) == after["inference_count"]
    with pytest.raises(InferenceServerException, match="has no version"):
        client.get_inference_statistics("minilm", "7")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_inference_statistics("nope")
