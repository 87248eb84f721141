"""The `openai` package's client (what LangChain and LlamaIndex use underneath) against
wasmserve's OpenAI-compatible /v1/embeddings and /v1/models, on the minilm example as it
ships."""

import json

import numpy as np
import openai
import pytest
import tritonclient.http as http

from conftest import ROOT

SENTENCES = json.loads((ROOT / "tests/fixtures/minilm/expected.json").read_text())["sentences"]


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=f"http://{server.address}/v1", api_key="unused", max_retries=0)


def oip(client, sentences):
    text = http.InferInput("text", [len(sentences)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
    result = client.infer("minilm", [text])
    return result.as_numpy("embedding"), result.as_numpy("tokens")


def test_embeddings_equal_the_oip_answer_in_both_encodings(oai, client):
    want, tokens = oip(client, SENTENCES)
    # The package asks for base64 unless told otherwise, and decodes it.
    default = oai.embeddings.create(model="minilm", input=SENTENCES)
    floats = oai.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    for answer in (default, floats):
        assert [d.index for d in answer.data] == list(range(len(SENTENCES)))
        got = np.array([d.embedding for d in answer.data], dtype=np.float32)
        assert got.shape == want.shape == (len(SENTENCES), 384)
        cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert (cosines >= 0.999).all(), cosines
    assert np.array_equal(np.array([d.embedding for d in default.data], dtype=np.float32),
                          np.array([d.embedding for d in floats.data], dtype=np.float32))
    # usage: the tokens the model's tokenizer made ([CLS] and [SEP] included).
    assert default.usage.prompt_tokens == default.usage.total_tokens == int(tokens.sum()) > 2 * len(SENTENCES)
    assert default.model == "minilm"


def test_a_single_string_and_the_same_pipeline(oai, client):
    before = client.get_inference_statistics("minilm")["model_stats"][0]
    one = oai.embeddings.create(model="minilm", input=SENTENCES[0], dimensions=384)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    after = client.get_inference_statistics("minilm")["model_stats"][0]
    # Counted as the model's inference, like any /v2 request.
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 1


def test_models_lists_the_embedding_and_generative_models(oai):
    # minilm-text: the config-only ([text]) twin of minilm.
    assert [m.id for m in oai.models.list()] == ["minilm", "minilm-text", "smollm2"]
    assert oai.models.retrieve("minilm").owned_by == "wasmserve"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("magika")


@pytest.mark.parametrize("request_, error, says", [
    (dict(model="no-such-model", input="x"), openai.NotFoundError, "unknown model"),
    (dict(model="magika", input="x"), openai.BadRequestError, "not an embedding model"),
    (dict(model="minilm", input=[[101, 102]]), openai.BadRequestError, "token arrays"),
    (dict(model="minilm", input=[]), openai.BadRequestError, "1 to 2048"),
    (dict(model="minilm", input=["x"] * 2049), openai.BadRequestError, "1 to 2048"),
    (dict(model="minilm", input="x", dimensions=64), openai.BadRequestError, "384 dimensions"),
    (dict(model="minilm", input="x" * (1025 << 10)), openai.APIStatusError, "max_bytes_element_kib"),
], ids=["unknown", "not-embedding", "tokens", "empty", "too-many", "dimensions", "too-large"])
def test_errors_are_openai_exceptions_of_the_right_class(oai, request_, error, says):
    with pytest.raises(error) as raised:
        oai.embeddings.create(**request_)
    assert says in raised.value.body["message"]
    assert raised.value.body["type"] == "invalid_request_error"
    if error is openai.APIStatusError:
        assert raised.value.status_code == 413
