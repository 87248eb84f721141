"""Traces over OTLP/HTTP: the server, started with --otlp-endpoint, sends each request's span
tree to a collector; here a receiver that decodes the OTLP protobuf payloads with the
OpenTelemetry project's own message definitions (opentelemetry-proto)."""

import http.server
import json
import signal
import threading
import urllib.request

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from conftest import ROOT, Server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector(http.server.BaseHTTPRequestHandler):
    spans = []
    resources = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            Collector.resources.append(resource_spans.resource)
            for scope in resource_spans.scope_spans:
                Collector.spans.extend(scope.spans)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def attributes(span):
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_request_spans_reach_an_otlp_collector_and_join_the_callers_trace():
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    server = Server(ROOT / "tests/models", ["--otlp-endpoint", endpoint])
    try:
        server.wait_ready()
        body = json.dumps({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1] * 6}]})
        request = urllib.request.Request(
            f"http://{server.address}/v2/models/faulty/infer", data=body.encode(),
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-Id": "traced-1"},
        )
        assert urllib.request.urlopen(request).status == 200
        # SIGTERM: the server drains, exits, and sends what its exporter still holds.
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
        collector.shutdown()

    requests = [s for s in Collector.spans if s.name == "infer faulty"]
    assert len(requests) == 1, [s.name for s in Collector.spans]
    root = requests[0]
    assert root.trace_id.hex() == TRACE_ID, "the request joined the caller's trace"
    assert root.parent_span_id.hex() == PARENT_ID
    assert root.kind == root.SPAN_KIND_SERVER
    attrs = attributes(root)
    assert attrs["id"] == "traced-1" and attrs["model"] == "faulty"
    assert attrs["http.response.status_code"] == 200
    stages = {s.name for s in Collector.spans if s.trace_id == root.trace_id and s.span_id != root.span_id}
    assert {"preprocess", "infer", "postprocess"} <= stages, stages
    service = {a.key: a.value.string_value for r in Collector.resources for a in r.attributes}
    assert service["service.name"] == "wasmserve"
