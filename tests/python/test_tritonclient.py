"""The Python tritonclient (a real OIP client no one here wrote) against wasmserve."""

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("magika")
    assert client.is_model_ready("minilm", model_version="1")
    assert not client.is_model_ready("no-such-model")


def test_metadata(client):
    assert client.get_server_metadata()["name"] == "wasmserve"
    meta = client.get_model_metadata("minilm")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
                               {"name": "tokens", "datatype": "INT64", "shape": [-1]}]
    names = [o["name"] for o in client.get_model_metadata("magika")["outputs"]]
    assert names == ["label", "score", "mime_type"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_minilm_embeddings(client, binary):
    expected = json.loads((FIXTURES / "minilm/expected.json").read_text())
    sentences = expected["sentences"][:4]
    text = http.InferInput("text", [len(sentences)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object), binary_data=binary)
    out = http.InferRequestedOutput("embedding", binary_data=binary)
    result = client.infer("minilm", [text], outputs=[out])
    got = result.as_numpy("embedding")
    assert got.shape == (4, 384) and got.dtype == np.float32
    want = np.array(expected["embeddings"][:4], dtype=np.float32)
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert (cosines >= 0.999).all(), cosines


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_magika_labels(client, binary):
    expected = json.loads((FIXTURES / "magika/expected.json").read_text())
    names = ["doc.pdf", "main.rs", "photo.jpg", "project.zip", "install.sh", "hi.txt"]
    files = [(FIXTURES / "magika/files" / n).read_bytes() for n in names]
    data = http.InferInput("bytes", [len(files)], "BYTES")
    if binary:
        data.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
    else:
        # JSON carries BYTES as strings: send only the files that are text.
        names, files = zip(*[(n, f) for n, f in zip(names, files) if f.isascii()])
        data = http.InferInput("bytes", [len(files)], "BYTES")
        data.set_data_from_numpy(np.array(files, dtype=object), binary_data=False)
    outputs = [http.InferRequestedOutput("label", binary_data=binary), http.InferRequestedOutput("score", binary_data=binary)]
    result = client.infer("magika", [data], outputs=outputs, request_id="files-1")
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [expected[n]["label"] for n in names]
    assert result.get_response()["id"] == "files-1"
    scores = result.as_numpy("score")
    assert np.allclose(scores, [expected[n]["score"] for n in names], atol=0.01)


def test_errors_reach_the_client(client):
    text = http.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [text])
    wrong = http.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="input 'text' must be BYTES, got FP32") as err:
        client.infer("minilm", [wrong])
    assert err.value.status() == "400"
    # The server keeps serving.
    assert client.infer("minilm", [text]).as_numpy("embedding").shape == (1, 384)


def test_load_and_unload_through_tritonclient_take_no_overrides(tmp_path):
    """tritonclient.http's load_model and unload_model send Triton's body: an override of
    the config is refused (400), not ignored; unload_dependents=False, always sent, is taken."""
    from conftest import Server, on_demand_copies

    on_demand_copies(tmp_path, ["a"])
    token = "t" * 32
    server = Server(tmp_path, env={"WASMSERVE_CONTROL_TOKEN": token})
    try:
        client = server.wait_ready()
        auth = {"Authorization": f"Bearer {token}"}
        with pytest.raises(InferenceServerException) as e:
            client.load_model("a", headers=auth, config='{"max_batch_size": 8}')
        assert e.value.status() == "400" and "parameter 'config' is not supported" in e.value.message()
        assert {m["name"]: m["state"] for m in client.get_model_repository_index()} == {"a": "UNLOADED"}
        client.load_model("a", headers=auth)
        assert client.is_model_ready("a")
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("a", headers=auth, unload_dependents=True)
        assert e.value.status() == "400", e.value
        client.unload_model("a", headers=auth)
        assert {m["name"]: m["state"] for m in client.get_model_repository_index()} == {"a": "UNLOADED"}
    finally:
        server.stop()
