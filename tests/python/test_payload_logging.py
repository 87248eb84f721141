"""Payload logging as KServe's logger does it, received by a real CloudEvents consumer: an
HTTP server in this test that parses every event with the `cloudevents` package."""

import json
import struct
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cloudevents.http import from_http

from conftest import ROOT, Server
from test_metrics import scrape, value

FILES = ROOT / "tests/fixtures/magika/files"


class Sink:
    """A CloudEvents consumer on a free port; `delay` seconds before each answer."""

    def __init__(self, delay=0.0):
        self.events = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = from_http(dict(self.headers.items()), body)
                time.sleep(delay)
                sink.events.append((event, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait(self, count, timeout=15):
        deadline = time.time() + timeout
        while len(self.events) < count and time.time() < deadline:
            time.sleep(0.05)
        return self.events

    def stop(self):
        self.http.shutdown()


def send(server, path, body, headers):
    request = urllib.request.Request(f"http://{server.address}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@pytest.fixture(scope="module")
def logged():
    sink = Sink()
    server = Server(ROOT / "examples/models", args=["--payload-log-url", sink.url])
    server.wait_ready()
    yield server, sink
    server.stop()
    sink.stop()


def by_id(events, id_):
    """(type, event, HTTP headers, raw body) of the events with this id, the request's first."""
    return sorted([(e["type"], e, h, b) for e, h, b in events if e["id"] == id_], key=lambda x: x[0])


def test_one_request_and_one_response_event_with_the_exact_bodies(logged):
    server, sink = logged
    start = len(sink.events)
    body = json.dumps({"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "world"]}]}).encode()
    status, answer, _ = send(server, "/v2/models/minilm/infer", body, {
        "Content-Type": "application/json", "Authorization": "Bearer secret", "X-Tenant": "acme",
        "X-Request-Id": "json-1"})
    assert status == 200
    events = sink.wait(start + 2)
    [(_, request, rh, raw_request), (_, response, sh, raw_response)] = by_id(events, "json-1")
    assert request["type"] == "org.kubeflow.serving.inference.request"
    assert response["type"] == "org.kubeflow.serving.inference.response"
    assert (raw_request, raw_response) == (body, answer)
    assert (request.get_data(), response.get_data()) == (json.loads(body), json.loads(answer))
    assert rh["content-type"] == sh["content-type"] == "application/json"
    for event in (request, response):
        assert event["specversion"] == "1.0" and event["source"].startswith("wasmserve://")
        assert event["inferenceservicename"] == "minilm" == event["modelname"]
        assert event["modelversion"] == "1" and event["endpoint"] == "default"
        metadata = json.loads(event["metadata"])
        assert metadata["x-tenant"] == ["acme"] and "authorization" not in metadata
    assert response["statuscode"] == "200"


def test_binary_bodies_and_errors_are_logged_as_sent_and_received(logged):
    server, sink = logged
    start = len(sink.events)
    data = (FILES / "photo.jpg").read_bytes()
    header = json.dumps({"inputs": [{"name": "bytes", "shape": [1], "datatype": "BYTES",
                                                      "parameters": {"binary_data_size": len(data) + 4}}],
                         "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}).encode()
    body = header + struct.pack("<I", len(data)) + data
    status, answer, answer_headers = send(server, "/v2/models/magika/infer", body, {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header)),
        "X-Request-Id": "binary-1"})
    assert status == 200
    bad = json.dumps({"inputs": [{"name": "nope", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    status_bad, answer_bad, _ = send(server, "/v2/models/minilm/infer", bad.encode(),
                                     {"Content-Type": "application/json", "X-Request-Id": "bad-1"})
    assert status_bad == 400
    events = sink.wait(start + 4)
    [(_, request, rh, _), (_, response, sh, _)] = by_id(events, "binary-1")
    assert request.get_data() == body and response.get_data() == answer
    assert rh["inference-header-content-length"] == str(len(header))
    assert sh["inference-header-content-length"] == answer_headers["Inference-Header-Content-Length"]
    assert sh["content-type"] == "application/octet-stream"
    [_, (_, error, _, raw_error)] = by_id(events, "bad-1")
    assert error["statuscode"] == "400" and raw_error == answer_bad


def test_openai_embeddings_are_logged_too(logged):
    server, sink = logged
    start = len(sink.events)
    body = json.dumps({"model": "minilm", "input": ["a sentence"]}).encode()
    status, answer, _ = send(server, "/v1/embeddings", body, {"Content-Type": "application/json", "X-Request-Id": "oai-1"})
    assert status == 200
    [(_, request, _, raw_request), (_, response, _, raw_response)] = by_id(sink.wait(start + 2), "oai-1")
    assert (raw_request, raw_response) == (body, answer)
    assert request["modelname"] == "minilm" and response["statuscode"] == "200"


def test_sampling_logs_about_its_share():
    sink = Sink()
    server = Server(ROOT / "examples/models", args=["--payload-log-url", sink.url, "--payload-log-sample-rate", "0.3",
                                                    "--payload-log-mode", "request"])
    try:
        server.wait_ready()
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode()
        for _ in range(100):
            assert send(server, "/v2/models/minilm/infer", body, {})[0] == 200
        time.sleep(2)
        types = {e["type"] for e, _, _ in sink.events}
        assert types == {"org.kubeflow.serving.inference.request"}, types  # mode = request
        assert 10 <= len(sink.events) <= 55, len(sink.events)  # 30 expected
    finally:
        server.stop()
        sink.stop()


@pytest.mark.parametrize("sink_kind", ["dead", "slow"])
def test_a_dead_or_slow_sink_fails_no_inference_and_drops_are_counted(sink_kind):
    sink = Sink(delay=5.0) if sink_kind == "slow" else None
    url = sink.url if sink else "http://127.0.0.1:9/"  # the discard port: nothing listens
    server = Server(ROOT / "examples/models", args=["--payload-log-url", url, "--payload-log-queue-mib", "1"])
    try:
        server.wait_ready()
        files = sorted(FILES.iterdir())

        def one(i):
            data = files[i % len(files)].read_bytes()
            header = json.dumps({"inputs": [{"name": "bytes", "shape": [1], "datatype": "BYTES",
                                             "parameters": {"binary_data_size": len(data) + 4}}]}).encode()
            return send(server, "/v2/models/magika/infer", header + struct.pack("<I", len(data)) + data,
                        {"Inference-Header-Content-Length": str(len(header))})[0]

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(one, range(500)))
        assert statuses == [200] * 500
        samples = scrape(server)
        dropped = value(samples, "wasmserve_payload_events_total", outcome="dropped")
        sent = value(samples, "wasmserve_payload_events_total", outcome="sent")
        # 1000 events of about 1 KiB of headers plus the file each do not fit 1 MiB while the
        # sink takes none (dead) or one per 5 s per sender (slow).
        assert dropped > 0 and sent < 1000 - dropped, (dropped, sent)
    finally:
        server.stop()
        if sink:
            sink.stop()
