"""The plugin written in Python (plugins/python/magika/app.py, built by componentize-py):
served next to its Rust twin on the same graph, it must answer the same, file for file."""

import json
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/magika"


def identify(client, model, files):
    data = http.InferInput("bytes", [len(files)], "BYTES")
    data.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
    result = client.infer(model, [data])
    labels = [x.decode() for x in result.as_numpy("label")]
    mimes = [x.decode() for x in result.as_numpy("mime_type")]
    return labels, result.as_numpy("score"), mimes


def test_the_python_plugin_answers_as_the_rust_one_and_as_magika_itself(client):
    expected = json.loads((FIXTURES / "expected.json").read_text())
    names = sorted(expected)
    files = [(FIXTURES / "files" / n).read_bytes() for n in names]
    labels, scores, mimes = identify(client, "magika-py", files)
    assert labels == [expected[n]["label"] for n in names]
    rust = identify(client, "magika", files)
    assert labels == rust[0] and mimes == rust[2]
    assert np.array_equal(scores, rust[1]), "same graph, same features: the same scores"


def test_an_error_raised_in_python_reaches_the_operator_with_its_message(tmp_path):
    """Without its data directory the plugin raises Err(PluginError_Internal(...)) in its
    warm-up request: the model stays unavailable, the reason is the plugin's own words."""
    from conftest import ROOT, Server

    model = tmp_path / "magika-py"
    model.mkdir()
    config = (ROOT / "examples/models/magika-py/model.toml").read_text()
    (model / "model.toml").write_text(config.replace('data = "data"', ""))
    (model / "plugin.wasm").symlink_to(ROOT / "examples/models/magika-py/plugin.wasm")
    server = Server(tmp_path, args=["--allow-empty-repository"])
    try:
        client = http.InferenceServerClient(server.address)
        for _ in range(600):
            index = client.get_model_repository_index()
            if index and index[0].get("state") == "UNAVAILABLE":
                break
            time.sleep(0.1)
        assert index[0]["state"] == "UNAVAILABLE", index
        assert "reading /data/config.min.json" in index[0]["reason"], index[0]["reason"]
    finally:
        server.stop()
