"""Text models served by configuration alone (`[text]`, the built-in text plugin): the
minilm example's files as a config-only embedding model against the hand-written minilm
plugin; a classifier and a cross-encoder reranker made from the same graph
(tests/fixtures/text/heads.py) and the rampart example's entities against ONNX Runtime +
`tokenizers` on the same files (tests/fixtures/text/entities.py). Clients: tritonclient
(OIP), the `openai` package (/v1/embeddings), the `cohere` package and plain HTTP
(/v1/rerank)."""

import importlib.metadata
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import cohere
import numpy as np
import openai
import pytest
import tritonclient.http as http

from conftest import BINARY, ROOT, Server, unbatched

SENTENCES = (ROOT / "tests/fixtures/text/sentences.txt").read_text().splitlines()[:40] + [
    "Café naïve — 東京 résumé!",
    "word " * 400,  # past every model's token limit: cut to it
]

sys.path.insert(0, str(ROOT / "tests/fixtures/text"))
import entities  # noqa: E402
import heads  # noqa: E402
import wheels  # noqa: E402

TEXT_MODEL = '[graph]\nfile = "model.onnx"\nbackend = "onnx"\n\n[text]\ntask = "{task}"\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    made = heads.make(tmp_path_factory.mktemp("heads"))
    repo = tmp_path_factory.mktemp("text")
    for name in ("minilm", "minilm-text", "rampart"):
        shutil.copytree(ROOT / "examples/models" / name, repo / name)
    # The config-only model again, unbatched, and batching requests of every length with a
    # delay that lets batches form however slow the machine: [batching] alone, `pad` and
    # `cut` left to their defaults for a text model.
    for name, batching in (("minilm-text-unbatched", ""),
                           ("minilm-text-batched", "\n[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 20000\n")):
        shutil.copytree(ROOT / "examples/models/minilm-text", repo / name)
        toml = repo / name / "model.toml"
        toml.write_text(unbatched(toml.read_text()) + batching)
    for name, task in (("classifier", "classify"), ("classifier-bpe", "classify"), ("classifier-unigram", "classify"),
                       ("reranker", "rerank")):
        shutil.copytree(made / name, repo / name)
        (repo / name / "model.toml").write_text(TEXT_MODEL.format(task=task))
    s = Server(repo)
    s.wait_ready()
    s.made = made
    yield s
    s.stop()


def infer(server, model, inputs, parameters=None):
    client = http.InferenceServerClient(server.address)
    tensors = []
    for name, texts in inputs.items():
        t = http.InferInput(name, [len(texts)], "BYTES")
        t.set_data_from_numpy(np.array([x.encode() for x in texts], dtype=object))
        tensors.append(t)
    return client.infer(model, tensors, parameters=parameters)


def metric(server, name, model):
    """Metric `name` of version 1 of `model` now (0 before the model first counts it)."""
    metrics = urllib.request.urlopen(f"http://{server.address}/metrics").read().decode()
    line = f'{name}{{model="{model}",version="1"}} '
    return next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(line)), 0.0)


def cosines(a, b):
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def post(server, path, body):
    request = urllib.request.Request(f"http://{server.address}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_a_config_only_embedding_model_gives_the_hand_written_plugins_embeddings(served):
    want = infer(served, "minilm", {"text": SENTENCES})
    got = infer(served, "minilm-text", {"text": SENTENCES})
    assert got.as_numpy("embedding").shape == (len(SENTENCES), 384)
    assert (cosines(got.as_numpy("embedding"), want.as_numpy("embedding")) >= 0.9999).all()
    assert (got.as_numpy("tokens") == want.as_numpy("tokens")).all()
    assert got.as_numpy("tokens").max() == 256, "the long text was cut to max_tokens"
    # Through the openai package: [text] task = "embed" answers /v1/embeddings.
    oai = openai.OpenAI(base_url=f"http://{served.address}/v1", api_key="unused", max_retries=0)
    answer = oai.embeddings.create(model="minilm-text", input=SENTENCES)
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert (cosines(vectors, want.as_numpy("embedding")) >= 0.9999).all()
    assert answer.usage.prompt_tokens == int(want.as_numpy("tokens").sum())
    assert "minilm-text" in [m.id for m in oai.models.list().data]


def test_batching_with_default_padding_joins_lengths_and_changes_no_answer(served):
    import concurrent.futures

    alone = infer(served, "minilm-text-unbatched", {"text": SENTENCES}).as_numpy("embedding")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(lambda s: infer(served, "minilm-text-batched", {"text": [s]}).as_numpy("embedding")[0],
                             SENTENCES))
    assert np.abs(np.array(rows) - alone).max() <= 1e-4
    count = metric(served, "wasmserve_batch_rows_count", "minilm-text-batched")
    total = metric(served, "wasmserve_batch_rows_sum", "minilm-text-batched")
    assert total / count > 1.2, "requests of different lengths shared batches"
    assert metric(served, "wasmserve_batch_tokens_count", "minilm-text-batched") > 0


# The tokenizer.json of each kind: WordPiece (BERT), byte-level BPE (GPT-2, RoBERTa), Unigram
# (SentencePiece: T5, XLM-R).
@pytest.mark.parametrize("model", ["classifier", "classifier-bpe", "classifier-unigram"])
def test_a_classifier_answers_labels_and_probabilities_as_the_reference_does(served, model):
    reference = heads.Reference(served.made / model, max_tokens=512)
    got = infer(served, model, {"text": SENTENCES})
    scores = got.as_numpy("scores")
    assert scores.shape == (len(SENTENCES), 3)
    for i, (logits, tokens) in enumerate(reference.logits(SENTENCES)):
        want = np.exp(logits - logits.max())
        want /= want.sum()
        assert np.abs(scores[i] - want).max() <= 1e-4, i
        assert got.as_numpy("label")[i].decode() == heads.LABELS[int(want.argmax())]  # from config.json
        assert abs(got.as_numpy("score")[i] - want.max()) <= 1e-4
        assert got.as_numpy("tokens")[i] == tokens


def test_top_k_gives_each_texts_most_probable_labels_best_first(served):
    scores = infer(served, "classifier", {"text": SENTENCES}).as_numpy("scores")
    for k, width in ((2, 2), (5, 3)):
        top = infer(served, "classifier", {"text": SENTENCES}, parameters={"top_k": k})
        assert top.as_numpy("label").shape == top.as_numpy("score").shape == (len(SENTENCES), width)
        for i, row in enumerate(scores):
            order = np.argsort(-row, kind="stable")[:width]
            assert [x.decode() for x in top.as_numpy("label")[i]] == [heads.LABELS[j] for j in order]
            assert np.abs(top.as_numpy("score")[i] - row[order]).max() <= 1e-6


QUERY = "Which packages read and write data files?"
DOCUMENTS = SENTENCES[:32]


def reference_scores(served, documents):
    reference = heads.Reference(served.made / "reranker", max_tokens=512)
    rows = reference.logits([QUERY] * len(documents), pairs=documents)
    return np.array([1 / (1 + np.exp(-logits[0])) for logits, _ in rows]), sum(t for _, t in rows)


def test_rerank_orders_documents_by_the_references_scores(served):
    want, tokens = reference_scores(served, DOCUMENTS)
    status, answer = post(served, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS})
    assert status == 200, answer
    results = answer["results"]
    assert [r["index"] for r in results] == list(np.argsort(-want, kind="stable"))
    for r in results:
        assert abs(r["relevance_score"] - want[r["index"]]) <= 1e-4
        assert "document" not in r
    assert answer["usage"]["total_tokens"] == tokens
    # top_n, documents as objects, documents returned.
    objects = [{"text": d} for d in DOCUMENTS]
    status, top = post(served, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": objects,
                                              "top_n": 3, "return_documents": True})
    assert status == 200 and [r["index"] for r in top["results"]] == [r["index"] for r in results[:3]]
    assert [r["document"]["text"] for r in top["results"]] == [DOCUMENTS[r["index"]] for r in results[:3]]


def test_rerank_through_the_cohere_client(served):
    want, _ = reference_scores(served, DOCUMENTS)
    co = cohere.Client(base_url=f"http://{served.address}", api_key="unused")
    answer = co.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=5, return_documents=True)
    assert [r.index for r in answer.results] == list(np.argsort(-want, kind="stable")[:5])
    assert answer.results[0].document.text == DOCUMENTS[answer.results[0].index]
    assert abs(answer.results[0].relevance_score - want.max()) <= 1e-4
    # Cohere's v2 client posts to /v2/rerank.
    v2 = cohere.ClientV2(base_url=f"http://{served.address}", api_key="unused")
    answer = v2.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=5)
    assert [r.index for r in answer.results] == list(np.argsort(-want, kind="stable")[:5])


def test_a_hundred_documents_are_one_graph_run(served):
    def runs():
        stats = json.load(urllib.request.urlopen(f"http://{served.address}/v2/models/reranker/stats"))
        return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["model_stats"][0]["batch_stats"]}

    documents = (SENTENCES * 3)[:100]
    before = runs()
    status, answer = post(served, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": documents})
    assert status == 200 and len(answer["results"]) == 100
    after = runs()
    assert after.get(100, 0) == before.get(100, 0) + 1
    assert sum(after.values()) == sum(before.values()) + 1


@pytest.mark.parametrize("body, says", [
    ({"model": "reranker", "documents": ["a"]}, "'query' is required"),
    ({"model": "reranker", "query": "q", "documents": []}, "'documents' must hold 1 to 1000"),
    ({"model": "reranker", "query": "q", "documents": [{"title": "no text"}]}, "documents[0]"),
    ({"model": "reranker", "query": "q", "documents": ["a"], "rank_fields": ["title"]}, "rank_fields"),
    ({"model": "reranker", "query": "q", "documents": ["a"], "max_tokens_per_doc": 8}, "'max_tokens_per_doc' is not"),
    ({"model": "minilm-text", "query": "q", "documents": ["a"]}, "is not a reranker"),
    ({"model": "reranker", "query": "q", "documents": ["a"], "temperature": 1}, "unknown field"),
])
def test_bad_rerank_requests_get_400_with_the_reason(served, body, says):
    status, answer = post(served, "/v1/rerank", body)
    assert status == 400, answer
    assert says in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


def test_unknown_reranker_is_404(served):
    status, answer = post(served, "/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]})
    assert status == 404 and answer["error"]["code"] == "model_not_found"


def test_check_passes_a_text_model_and_explains_a_wrong_one(served, tmp_path):
    ok = subprocess.run([BINARY, "check", str(served.made / "reranker")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad"
    shutil.copytree(served.made / "classifier", bad)
    (bad / "model.toml").write_text(TEXT_MODEL.format(task="classify") + '\n[[inputs]]\nname = "x"\ndatatype = "BYTES"\nshape = [-1]\n')
    out = subprocess.run([BINARY, "check", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "sets the model's `inputs` and `outputs` from its task" in out.stdout + out.stderr
    # Labels that do not fit the graph, and no tokenizer: found by the check's bring-up
    # (the plugin's warm-up and the warm-up sentence), each named.
    (bad / "model.toml").write_text(TEXT_MODEL.format(task="classify"))
    (bad / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}}))
    shutil.copytree(served.made / "reranker", tmp_path / "untokenized")
    (tmp_path / "untokenized/vocab.txt").unlink()
    (tmp_path / "untokenized/model.toml").write_text(TEXT_MODEL.format(task="rerank"))
    # Mean pooling asked of a graph whose output is one vector per text.
    shutil.copytree(served.made / "reranker", tmp_path / "pooled")
    (tmp_path / "pooled/model.toml").write_text(TEXT_MODEL.format(task="embed") + 'pooling = "mean"\n')
    out = subprocess.run([BINARY, "check", str(bad), str(tmp_path / "untokenized"), str(tmp_path / "pooled")],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "pooling = \"mean\" does not fit graph output 'logits' of rank 2" in out.stdout + out.stderr
    # A directory as Hugging Face tools leave it (the graph under onnx/), model.toml naming
    # model.onnx: the check says where the ONNX file is.
    shutil.copytree(served.made / "reranker", tmp_path / "hub")
    (tmp_path / "hub/onnx").mkdir()
    (tmp_path / "hub/model.onnx").rename(tmp_path / "hub/onnx/model.onnx")
    (tmp_path / "hub/model.toml").write_text(TEXT_MODEL.format(task="rerank"))
    hub = subprocess.run([BINARY, "check", str(tmp_path / "hub")], capture_output=True, text=True)
    assert hub.returncode != 0 and "(the ONNX files there: onnx/model.onnx)" in hub.stdout + hub.stderr
    assert "the model has 2 labels (config.json id2label, or [text] labels) but graph output 'logits' gives 3" in out.stdout + out.stderr
    assert "has neither tokenizer.json nor vocab.txt" in out.stdout + out.stderr


def personal_lines():
    """Real text with names, e-mail addresses and URLs in it: the author, maintainer and home
    page lines of the installed packages' metadata, as their METADATA files have them."""
    lines = set()
    for dist in importlib.metadata.distributions():
        for field in ("Author", "Author-email", "Maintainer-email", "Home-page"):
            value = dist.metadata.get(field)
            if value and len(value) < 200:
                lines.add(f"{field}: {value}")
    return sorted(lines)[:60]


@pytest.mark.parametrize("aggregation", ["first", "simple", "max", "average", "none"])
def test_entities_equal_the_pipelines_on_real_text(served, aggregation):
    texts = personal_lines() + SENTENCES[:10]
    assert sum("@" in t for t in texts) >= 10, "the lines hold e-mail addresses"
    reference = entities.Entities(wheels.fetched("rampart")["rampart"])
    client = http.InferenceServerClient(served.address)
    t = http.InferInput("text", [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([x.encode() for x in texts], dtype=object))
    # The example's default is "first"; the others by the request's parameter.
    params = {} if aggregation == "first" else {"aggregation": aggregation}
    answer = client.infer("rampart", [t], parameters=params).as_numpy("entities")
    found = 0
    for text, got in zip(texts, answer):
        got, want = json.loads(got), reference(text, aggregation)
        key = "entity" if aggregation == "none" else "entity_group"
        assert [(g[key], g["word"], g["start"], g["end"]) for g in got] == \
            [(w[key], w["word"], w["start"], w["end"]) for w in want], text
        assert all(abs(g["score"] - w["score"]) <= 1e-3 for g, w in zip(got, want)), text
        for g in got:
            assert g["end"] > g["start"] >= 0 and text[g["start"]:g["end"]].strip()
        found += len(got)
    assert found >= 20, "the model found the names, addresses and e-mails"


@pytest.mark.parametrize("model, parameters, says", [
    ("rampart", {"aggregation": "loudest"}, "none, simple, first, average or max"),
    ("classifier", {"top_k": 0}, "at least 1"),
    ("classifier", {"top_k": "two"}, "parameter 'top_k' is 'two'"),
])
def test_a_bad_parameter_is_400_before_the_graph_runs(served, model, parameters, says):
    def runs():
        return metric(served, "wasmserve_inference_exec_count_total", model)

    before = runs()
    status, answer = post(served, f"/v2/models/{model}/infer", {
        "parameters": parameters,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Ada Lovelace"]}]})
    assert status == 400 and says in answer["error"], answer
    assert runs() == before
