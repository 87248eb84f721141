"""Batching that joins requests of different lengths ([batching] pad, cut, max_batch_tokens):
the minilm example's graph, one real sentence per request, batched and not."""

import concurrent.futures
import re
import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.http as http

from conftest import ROOT, Server, unbatched

SENTENCES = (ROOT / "tests/fixtures/text/sentences.txt").read_text().splitlines()[:48]
BUDGET = 256
PADDED = f"""
[batching]
max_batch_size = 16
max_queue_delay_us = 20000
pad = {{ input_ids = 0, attention_mask = 0, token_type_ids = 0 }}
cut = ["last_hidden_state"]
max_batch_tokens = {BUDGET}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("padded")
    for name, extra in (("alone", ""), ("padded", PADDED)):
        # The example without the [batching] it ships with, then with this test's.
        shutil.copytree(ROOT / "examples/models/minilm", repo / name)
        toml = repo / name / "model.toml"
        toml.write_text(unbatched(toml.read_text()) + extra)
    s = Server(repo)
    s.wait_ready()
    yield s
    s.stop()


def embed(client, model, sentence):
    text = http.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([sentence.encode()], dtype=object))
    answer = client.infer(model, [text])
    return answer.as_numpy("embedding")[0], int(answer.as_numpy("tokens")[0])


def metric(server, name):
    text = urllib.request.urlopen(f"http://{server.address}/metrics").read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf'^{name}(\S*) (\S+)$', text, re.M)}


def test_requests_of_different_lengths_share_batches_and_get_their_own_answers(served):
    client = http.InferenceServerClient(served.address, concurrency=16)
    alone = [embed(client, "alone", s) for s in SENTENCES]
    assert len({tokens for _, tokens in alone}) > 10, "the sentences differ in length"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        batched = list(pool.map(lambda s: embed(http.InferenceServerClient(served.address), "padded", s), SENTENCES))
    for (want, tokens), (got, got_tokens) in zip(alone, batched):
        # Each request's own length came back (the padding cut off), and its own vector.
        assert got_tokens == tokens
        assert np.abs(want - got).max() <= 1e-4
    rows = metric(served, "wasmserve_batch_rows")
    label = '{model="padded",version="1"}'
    assert rows[f"_sum{label}"] / rows[f"_count{label}"] > 1.5, "requests of different lengths were batched"
    tokens = metric(served, "wasmserve_batch_tokens")
    # Every batch within its token budget (the buckets are powers of two from 16).
    assert tokens[f'_bucket{{le="{float(BUDGET)}",model="padded",version="1"}}'] == tokens[f"_count{label}"] > 0
    assert not any(k.startswith("_count") and "alone" in k for k in tokens), "unpadded models count no tokens"
