"""tritonclient.grpc against wasmserve's gRPC service (same port as REST, HTTP/2)."""

import json
import queue
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAGIKA_FILES = ["doc.pdf", "main.rs", "photo.jpg", "project.zip", "install.sh", "hi.txt"]


@pytest.fixture
def grpc_client(server):
    return grpcclient.InferenceServerClient(server.address)


def test_health_and_metadata(grpc_client):
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("magika")
    assert grpc_client.is_model_ready("minilm", model_version="1")
    assert not grpc_client.is_model_ready("no-such-model")
    assert grpc_client.get_server_metadata().name == "wasmserve"
    meta = grpc_client.get_model_metadata("minilm", as_json=True)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]},
                               {"name": "tokens", "datatype": "INT64", "shape": ["-1"]}]
    assert meta["platform"] == "onnx/onnx" and meta["versions"] == ["1"]


def magika_inputs(module):
    files = [(FIXTURES / "magika/files" / n).read_bytes() for n in MAGIKA_FILES]
    data = module.InferInput("bytes", [len(files)], "BYTES")
    data.set_data_from_numpy(np.array(files, dtype=object))
    return [data]


def test_grpc_and_rest_answers_are_identical(grpc_client, client):
    expected = json.loads((FIXTURES / "magika/expected.json").read_text())
    over_grpc = grpc_client.infer("magika", magika_inputs(grpcclient), request_id="g-1")
    over_rest = client.infer("magika", magika_inputs(http))
    assert over_grpc.get_response().id == "g-1"
    labels = [x.decode() for x in over_grpc.as_numpy("label")]
    assert labels == [expected[n]["label"] for n in MAGIKA_FILES]
    for name in ["label", "score", "mime_type"]:
        assert np.array_equal(over_grpc.as_numpy(name), over_rest.as_numpy(name)), name

    sentences = json.loads((FIXTURES / "minilm/expected.json").read_text())["sentences"][:3]
    answers = []
    for module, c in [(grpcclient, grpc_client), (http, client)]:
        text = module.InferInput("text", [len(sentences)], "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
        answers.append(c.infer("minilm", [text], parameters={"normalize": False}).as_numpy("embedding"))
    assert answers[0].shape == (3, 384)
    assert np.array_equal(answers[0], answers[1])
    assert abs(np.linalg.norm(answers[0][0]) - 1.0) > 0.01, "the parameter reached the plugin"


def test_typed_contents_work_like_raw_bytes(server, grpc_client):
    # tritonclient always sends raw_input_contents; other clients send typed lists.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    request = service_pb2.ModelInferRequest(model_name="minilm")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"a cat sits", b"on the mat"])
    response = stub.ModelInfer(request)
    typed = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 384)
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a cat sits", b"on the mat"], dtype=object))
    assert np.array_equal(typed, grpc_client.infer("minilm", [text]).as_numpy("embedding"))


def test_errors_carry_grpc_codes_and_the_server_keeps_serving(grpc_client):
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
        grpc_client.infer("nope", [text])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="input 'text' must be BYTES, got FP32") as err:
        grpc_client.infer("minilm", [wrong])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        grpc_client.infer("minilm", [text], outputs=[grpcclient.InferRequestedOutput("nope")])
    # A sentence over minilm's [limits] max_bytes_element_kib (1 MiB), as over REST.
    long = grpcclient.InferInput("text", [1], "BYTES")
    long.set_data_from_numpy(np.array([b"a" * (2 << 20)], dtype=object))
    with pytest.raises(InferenceServerException, match="input 'text': element 0 is 2097152 bytes") as err:
        grpc_client.infer("minilm", [long])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert grpc_client.infer("minilm", [text]).as_numpy("embedding").shape == (1, 384)


def test_cancelled_calls_never_reach_the_plugin(tmp_path):
    # The test model on one thread, 100 ms a request, room for all 40 at once: every other
    # call is cancelled after 50 ms (an RST_STREAM on the shared HTTP/2 connection).
    from conftest import ROOT, Server

    model = tmp_path / "faulty"
    model.mkdir()
    for f in (ROOT / "tests/models/faulty").iterdir():
        if f.name != "model.toml":
            (model / f.name).symlink_to(f)
    toml = (ROOT / "tests/models/faulty/model.toml").read_text().replace("timeout_ms = 500", "timeout_ms = 5000")
    (model / "model.toml").write_text(toml + "\n[scheduling]\nexecutions = 1\nmax_in_flight = 64\n")
    server = Server(tmp_path)
    try:
        server.wait_ready()
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        request = service_pb2.ModelInferRequest(model_name="faulty")
        request.parameters["sleep_ms"].int64_param = 100
        request.parameters["say"].string_param = "preprocess ran"
        x = request.inputs.add(name="x", datatype="FP32", shape=[3, 2])
        x.contents.fp32_contents.extend([2.0] * 6)
        calls = [stub.ModelInfer.future(request) for _ in range(40)]
        time.sleep(0.05)
        for call in calls[1::2]:
            call.cancel()
        for call in calls[0::2]:
            assert np.frombuffer(call.result().raw_output_contents[0], dtype=np.float32).tolist() == [
                2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        ran = "".join(server.log).count("preprocess ran")
        # One or two may start before they are cancelled on a loaded machine; all 40 without.
        assert 20 <= ran <= 23, f"{ran} plugin calls for 20 calls not cancelled"
    finally:
        server.stop()


def test_a_message_past_the_request_memory_budget_is_refused_with_its_reason():
    from conftest import ROOT, Server

    server = Server(ROOT / "tests/models", args=["--request-memory-mib", "4"])
    try:
        server.wait_ready()
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        request = service_pb2.ModelInferRequest(model_name="faulty")
        request.inputs.add(name="x", datatype="FP32", shape=[3, 2])
        # 2 MiB counts 6 against a budget of 4: it could never fit.
        request.raw_input_contents.append(b"\0" * (2 << 20))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert "--request-memory-mib" in err.value.details(), err.value.details()
        small = service_pb2.ModelInferRequest(model_name="faulty")
        small.inputs.add(name="x", datatype="FP32", shape=[3, 2]).contents.fp32_contents.extend([2.0] * 6)
        assert len(stub.ModelInfer(small).raw_output_contents[0]) == 24
    finally:
        server.stop()


def test_a_route_has_metadata_over_grpc_as_over_rest(tmp_path):
    # A route over two copies of the test model: its metadata is a variant's, as REST's.
    from conftest import ROOT, Server

    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        for f in (ROOT / "tests/models/faulty").iterdir():
            (tmp_path / name / f.name).symlink_to(f)
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab/route.toml").write_text('[[variants]]\nmodel = "a"\nweight = 1\n[[variants]]\nmodel = "b"\nweight = 1\n')
    server = Server(tmp_path)
    try:
        server.wait_ready()
        over_grpc = grpcclient.InferenceServerClient(server.address).get_model_metadata("ab", as_json=True)
        over_rest = http.InferenceServerClient(server.address).get_model_metadata("ab")
        assert over_grpc["name"] in ("a", "b") and over_rest["name"] in ("a", "b")
        assert over_grpc["versions"] == over_rest["versions"] == ["1"]
        assert over_grpc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["3", "2"]}]
        assert [i["name"] for i in over_rest["inputs"]] == ["x"]
        with pytest.raises(InferenceServerException, match="is a route: it has no versions"):
            grpcclient.InferenceServerClient(server.address).get_model_metadata("ab", model_version="1")
    finally:
        server.stop()


def states(client):
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return {m["name"]: m.get("state") for m in index}


def ready_models(address):
    """The index with `ready` set (tritonclient has no argument for it)."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    return [m.name for m in stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models]


def test_the_repository_calls_load_unload_and_index_on_demand_models(tmp_path):
    """tritonclient.grpc's get_model_repository_index, load_model and unload_model: the index
    shows each version's state, load and unload take the control token from the metadata."""
    from conftest import Server, on_demand_copies

    on_demand_copies(tmp_path, ["a", "b"])
    token = "t" * 32
    server = Server(tmp_path, env={"WASMSERVE_CONTROL_TOKEN": token})
    try:
        server.wait_ready()
        client = grpcclient.InferenceServerClient(server.address)
        auth = {"authorization": f"Bearer {token}"}
        assert "model_repository" in client.get_server_metadata().extensions
        assert states(client) == {"a": "UNLOADED", "b": "UNLOADED"}
        assert ready_models(server.address) == []
        # What a client asks before its first request comes from the config: nothing loads.
        assert [t.name for t in client.get_model_metadata("a").inputs] == ["x"]
        assert [t.name for t in client.get_model_config("b").config.input] == ["x"]
        assert states(client) == {"a": "UNLOADED", "b": "UNLOADED"}
        # Without the token, or with a wrong one: UNAUTHENTICATED, nothing loaded.
        for headers in (None, {"authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as e:
                client.load_model("a", headers=headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED", e.value
        assert states(client)["a"] == "UNLOADED"
        client.load_model("a", headers=auth)
        assert states(client) == {"a": "READY", "b": "UNLOADED"}
        assert ready_models(server.address) == ["a"]
        assert client.is_model_ready("a")
        # An override of the config is refused, not silently ignored.
        with pytest.raises(InferenceServerException) as e:
            client.load_model("b", headers=auth, config='{"max_batch_size": 8}')
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        assert "parameter 'config' is not supported" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.load_model("no-such-model", headers=auth)
        assert e.value.status() == "StatusCode.NOT_FOUND", e.value
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("a", headers=auth, unload_dependents=True)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        assert "parameter 'unload_dependents' is not supported (only false" in e.value.message()
        client.unload_model("a", headers=auth)
        assert states(client)["a"] == "UNLOADED"
        # Its next request loads it again.
        x = grpcclient.InferInput("x", [3, 2], "FP32")
        x.set_data_from_numpy(np.ones((3, 2), np.float32))
        assert client.infer("a", [x]).as_numpy("y").tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
        assert states(client)["a"] == "READY"
    finally:
        server.stop()


def test_the_repository_control_calls_follow_the_control_endpoints(tmp_path):
    """No token: PERMISSION_DENIED. --control-port: served there only, as REST's are."""
    from conftest import Server, free_port, on_demand_copies

    on_demand_copies(tmp_path, ["a"])
    server = Server(tmp_path)
    try:
        server.wait_ready()
        client = grpcclient.InferenceServerClient(server.address)
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("a")
        assert e.value.status() == "StatusCode.PERMISSION_DENIED", e.value
        assert e.value.message().startswith("repository control is off")
    finally:
        server.stop()
    token, port = "t" * 32, free_port()
    server = Server(tmp_path, args=["--control-port", str(port)], env={"WASMSERVE_CONTROL_TOKEN": token})
    try:
        server.wait_ready()
        auth = {"authorization": f"Bearer {token}"}
        main = grpcclient.InferenceServerClient(server.address)
        with pytest.raises(InferenceServerException) as e:
            main.load_model("a", headers=auth)
        assert e.value.status() == "StatusCode.PERMISSION_DENIED", e.value
        assert "control port" in e.value.message()
        control = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        control.load_model("a", headers=auth)
        assert states(main)["a"] == "READY"
        control.unload_model("a", headers=auth)
        assert states(main)["a"] == "UNLOADED"
    finally:
        server.stop()


def test_a_hostile_client_meets_the_limits_rest_has(server, grpc_client):
    """Raw protobuf messages (tritonclient's own stubs) past each limit REST's parser holds a
    body to: refused by the limit, INVALID_ARGUMENT with REST's words, the server still live."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))

    def text_input(name="text", shape=(1,)):
        tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype="BYTES", shape=list(shape))
        tensor.contents.bytes_contents.append(b"hi")
        return tensor

    def refused(request, words):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert words in err.value.details(), err.value.details()

    many_params = service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input()])
    for i in range(5000):
        many_params.parameters[f"p{i}"].string_param = "x"
    refused(many_params, "more than 64 parameters")

    refused(service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input(f"t{i}") for i in range(5001)]),
            "more than 1024 inputs")

    refused(service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input(shape=[1] * 500)]),
            "more than 64 dimensions")

    many_outputs = service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input()])
    for i in range(5000):
        many_outputs.outputs.add(name=f"o{i}")
    refused(many_outputs, "more than 1024 outputs")

    one_input = service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input()])
    one_input.inputs[0].parameters["binary_data_size"].int64_param = 1
    for i in range(100):
        one_input.inputs[0].parameters[f"p{i}"].bool_param = True
    refused(one_input, "more than 64 parameters")

    assert grpc_client.is_server_live()
    assert stub.ModelInfer(service_pb2.ModelInferRequest(model_name="minilm", inputs=[text_input()])).outputs


def stream_answers(client, send, expected):
    """Opens a ModelStreamInfer stream, calls `send()` and collects `expected` callbacks'
    (result, error) pairs."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        send()
        return [answers.get(timeout=60) for _ in range(expected)]
    finally:
        client.stop_stream()


def test_a_stream_answers_each_request_as_model_infer_does(grpc_client):
    expected = grpc_client.infer("magika", magika_inputs(grpcclient)).as_numpy("label")

    def send():
        grpc_client.async_stream_infer("magika", magika_inputs(grpcclient), request_id="first")
        # A failed request is answered with its error; the stream goes on.
        grpc_client.async_stream_infer("no-such-model", magika_inputs(grpcclient), request_id="lost")
        grpc_client.async_stream_infer("magika", magika_inputs(grpcclient), request_id="second",
                                       enable_empty_final_response=True)

    answers = stream_answers(grpc_client, send, 4)
    errors = [str(e) for r, e in answers if e is not None]
    assert len(errors) == 1 and "no-such-model" in errors[0], errors
    results = {}
    for result, _ in (a for a in answers if a[1] is None):
        response = result.get_response()
        results.setdefault(response.id, []).append(response)
    assert sorted(results) == ["first", "second"]
    assert np.array_equal(grpcclient.InferResult(results["first"][0]).as_numpy("label"), expected)
    # Asked for: each response says whether it is the last, and the last is empty.
    answer, last = results["second"]
    assert not answer.parameters["triton_final_response"].bool_param
    assert np.array_equal(grpcclient.InferResult(answer).as_numpy("label"), expected)
    assert last.parameters["triton_final_response"].bool_param and not last.outputs


def test_a_stream_outlives_the_memory_budget_and_the_body_deadline():
    """A stream lasts as long as its client: charged per message against
    --request-memory-mib (not for all it ever sent), and no body deadline between messages."""
    from conftest import ROOT, Server

    server = Server(ROOT / "tests/models", args=["--request-memory-mib", "1", "--body-timeout-secs", "1"])
    try:
        server.wait_ready()
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))

        def requests():
            # Eight messages of 100 KB (each counts 300 KB of the 1 MiB budget; together 2.4 MB),
            # each the wrong size for the model's input, so each is answered with its error.
            for i in range(8):
                big = service_pb2.ModelInferRequest(model_name="faulty", id=f"big-{i}")
                big.inputs.add(name="x", datatype="FP32", shape=[3, 2])
                big.raw_input_contents.append(b"\0" * 100_000)
                yield big
            time.sleep(1.5)  # longer than the body deadline
            small = service_pb2.ModelInferRequest(model_name="faulty", id="small")
            small.inputs.add(name="x", datatype="FP32", shape=[3, 2]).contents.fp32_contents.extend([2.0] * 6)
            yield small

        answers = list(stub.ModelStreamInfer(requests(), timeout=60))
        errors = [a.error_message for a in answers if a.error_message]
        assert len(errors) == 8 and all("x" in e for e in errors), errors
        [ok] = [a.infer_response for a in answers if not a.error_message]
        assert ok.id == "small" and len(ok.raw_output_contents[0]) == 24
    finally:
        server.stop()
