"""/metrics parses as OpenMetrics text (with the Prometheus project's own parser) and moves with traffic."""

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as http
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

FILES = Path(__file__).resolve().parents[1] / "fixtures/magika/files"


def scrape(server):
    with urllib.request.urlopen(f"http://{server.address}/metrics") as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_traffic(server, client):
    before = scrape(server)
    model = {"model": "magika", "version": "1"}
    for name in ["doc.pdf", "main.rs", "photo.jpg"]:
        data = http.InferInput("bytes", [2], "BYTES")
        data.set_data_from_numpy(np.array([(FILES / name).read_bytes()] * 2, dtype=object), binary_data=True)
        client.infer("magika", [data])
    wrong = http.InferInput("bytes", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("magika", [wrong])
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wasmserve_inference_request_success_total", **model) == 3
    assert delta("wasmserve_inference_request_failure_total", code="400", **model) == 1
    assert delta("wasmserve_inference_count_total", **model) == 6  # two files a request
    for stage in ["request", "queue", "preprocess", "compute", "postprocess"]:
        count = delta(f"wasmserve_{stage}_duration_seconds_count", **model)
        assert count == (4 if stage == "request" else 3), stage
        assert delta(f"wasmserve_{stage}_duration_seconds_sum", **model) > 0, stage
    assert value(after, "wasmserve_inference_pending_requests", **model) == 0
    assert value(after, "wasmserve_model_ready", model="minilm", version="1") == 1
    assert value(after, "wasmserve_model_load_duration_seconds", model="minilm", version="1") > 0
