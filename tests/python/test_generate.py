"""Generation: the `openai` package against /v1/chat/completions and /v1/completions on the
smollm2 example (SmolLM2-135M-Instruct, GGUF, llama.cpp's ggml in the host, the decoding loop
in the plugin), and a generator that misbehaves (tests/generators/faulty-generator)."""

import concurrent.futures
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from conftest import BINARY, ROOT, Server

EXPECTED = json.loads((ROOT / "tests/fixtures/smollm2/expected.json").read_text())["cases"]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    repo = tmp_path_factory.mktemp("generate")
    shutil.copytree(ROOT / "examples/models/smollm2", repo / "smollm2")
    # Every answer computed from the whole prompt, as the llama.cpp references were: what
    # earlier requests left in the cache changes the last bits of the sums, and at times a
    # greedy token (tests/generators/faulty-generator keeps the prefix cache on).
    toml = (repo / "smollm2/model.toml").read_text()
    (repo / "smollm2/model.toml").write_text(toml.replace("[generation]\n", "[generation]\nprefix_cache = false\n"))
    shutil.copytree(ROOT / "tests/generators/faulty-generator", repo / "faulty-generator")
    s = Server(repo)
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture
def oai(smollm2):
    return openai.OpenAI(base_url=f"http://{smollm2.address}/v1", api_key="unused", max_retries=0)


def metrics(server):
    text = urllib.request.urlopen(f"http://{server.address}/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def post(server, path, body):
    """POST JSON; (status, parsed body)."""
    request = urllib.request.Request(f"http://{server.address}{path}", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("case", EXPECTED, ids=lambda c: f"{c['kind']}-{c['max_tokens']}")
def test_greedy_answers_are_llama_cpps_token_for_token(oai, case):
    if case["kind"] == "chat":
        whole = oai.chat.completions.create(model="smollm2", messages=case["messages"],
                                            max_tokens=case["max_tokens"], **GREEDY)
        text = whole.choices[0].message.content
        assert whole.choices[0].message.role == "assistant"
        assert whole.object == "chat.completion"
        chunks = list(oai.chat.completions.create(model="smollm2", messages=case["messages"],
                                                  max_tokens=case["max_tokens"], stream=True,
                                                  stream_options={"include_usage": True}, **GREEDY))
        parts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        whole = oai.completions.create(model="smollm2", prompt=case["prompt"], max_tokens=case["max_tokens"], **GREEDY)
        text = whole.choices[0].text
        chunks = list(oai.completions.create(model="smollm2", prompt=case["prompt"], max_tokens=case["max_tokens"],
                                             stream=True, stream_options={"include_usage": True}, **GREEDY))
        parts = [c.choices[0].text for c in chunks if c.choices]
    assert text == case["text"]
    assert whole.choices[0].finish_reason == case["finish_reason"]
    assert whole.usage.prompt_tokens == case["prompt_tokens"]
    assert whole.usage.completion_tokens == case["completion_tokens"]
    assert whole.usage.total_tokens == case["prompt_tokens"] + case["completion_tokens"]
    # Streamed: the same text in more than one part, the finish reason last, then the usage.
    assert "".join(parts) == case["text"]
    assert len([p for p in parts if p]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == case["finish_reason"] and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == case["completion_tokens"]


def test_stop_strings_seeds_and_length(oai):
    case = EXPECTED[0]
    full = case["text"]
    word = full.split()[3]
    stopped = oai.chat.completions.create(model="smollm2", messages=case["messages"], stop=[word],
                                          max_tokens=case["max_tokens"], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full[:full.index(word)]
    # Streamed, the held-back text never leaks the stop string either.
    parts = [c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model="smollm2", messages=case["messages"], stop=word, max_tokens=case["max_tokens"], stream=True, **GREEDY)]
    assert "".join(parts) == full[:full.index(word)]
    short = oai.chat.completions.create(model="smollm2", messages=case["messages"], max_tokens=3, **GREEDY)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    sampled = [oai.chat.completions.create(model="smollm2", messages=EXPECTED[2]["messages"], temperature=0.8,
                                           seed=seed, max_tokens=40).choices[0].message.content
               for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_eight_concurrent_streams_share_the_forward_passes(oai, smollm2):
    before = metrics(smollm2)
    words = ["apple", "river", "guitar", "volcano", "window", "tiger", "copper", "violin"]
    answers = {}

    def stream(word):
        chunks = oai.chat.completions.create(model="smollm2", max_tokens=24, stream=True, **GREEDY, messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Write one sentence about the {word}."}])
        answers[word] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).lower()

    threads = [threading.Thread(target=stream, args=(w,)) for w in words]
    [t.start() for t in threads]
    [t.join() for t in threads]
    # Each stream is its own answer: about its word, and none of the others'. (Not the same
    # text as alone, token for token: a batch of 8 adds up in another order than a batch of
    # 1, as in llama.cpp's own server, and greedy decoding of a 135M model parts at the
    # first token where that tips the balance.)
    for word in words:
        assert word in answers[word], answers
        assert not [w for w in words if w != word and w in answers[word]], answers
    after = metrics(smollm2)
    label = '{model="smollm2",version="1",sequences="%s"}'
    joined = sum(after["wasmserve_generation_steps_by_sequences_total" + label % b]
                 - before.get("wasmserve_generation_steps_by_sequences_total" + label % b, 0)
                 for b in ("2", "4", "8"))
    assert joined >= 10, after
    assert after['wasmserve_generation_sequences{model="smollm2",version="1"}'] == 0


def test_a_client_that_leaves_stops_its_generation(smollm2, oai):
    cancelled = 'wasmserve_inference_request_cancelled_total{model="smollm2",version="1"}'
    steps = 'wasmserve_generation_steps_total{model="smollm2",version="1"}'
    before = metrics(smollm2)
    body = {"model": "smollm2", "max_tokens": 1500, "stream": True, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    request = urllib.request.Request(f"http://{smollm2.address}/v1/chat/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    response = urllib.request.urlopen(request)
    for _ in range(4):
        assert response.readline().startswith(b"data: ") and response.readline() == b"\n"
    response.close()
    deadline = time.time() + 10
    while metrics(smollm2)['wasmserve_generation_sequences{model="smollm2",version="1"}'] != 0:
        assert time.time() < deadline, "the generation kept its slot"
        time.sleep(0.05)
    after = metrics(smollm2)
    assert after[cancelled] == before.get(cancelled, 0) + 1
    # It stopped: far fewer steps than its 1,500 tokens, and none after it left.
    assert after[steps] - before[steps] < 200
    time.sleep(0.3)
    assert metrics(smollm2)[steps] == after[steps]
    # The slot serves the next request.
    again = oai.chat.completions.create(model="smollm2", messages=EXPECTED[0]["messages"],
                                        max_tokens=EXPECTED[0]["max_tokens"], **GREEDY)
    assert again.choices[0].message.content == EXPECTED[0]["text"]


def test_bad_requests_are_answered_as_openai_answers_them(smollm2):
    messages = [{"role": "user", "content": "Hi"}]
    cases = [
        ({"model": "smollm2", "messages": messages, "frobnicate": 1}, 400, "Unrecognized request argument supplied: frobnicate"),
        ({"model": "smollm2", "messages": messages, "n": 2}, 400, "'n'"),
        ({"model": "smollm2", "messages": messages, "max_tokens": 5000}, 400, "2048 tokens of context"),
        ({"model": "smollm2", "messages": messages, "temperature": 3}, 400, "'temperature'"),
        ({"model": "smollm2", "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "does not fit"),
        ({"model": "smollm2"}, 400, "'messages' is required"),
        ({"model": "nosuch", "messages": messages}, 404, "nosuch"),
    ]
    for body, status, words in cases:
        got, answer = post(smollm2, "/v1/chat/completions", body)
        assert got == status, (body, answer)
        assert words in answer["error"]["message"], answer
        assert answer["error"]["type"] == "invalid_request_error"
    got, answer = post(smollm2, "/v1/completions", {"model": "smollm2", "messages": messages})
    assert got == 400 and "'prompt'" in answer["error"]["message"]
    # Tensors to a generative model: refused with where to go.
    got, answer = post(smollm2, "/v2/models/smollm2/infer",
                       {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]})
    assert got == 400 and "/v1/chat/completions" in answer["error"], answer
    # The server is still there.
    assert post(smollm2, "/v1/completions", {"model": "smollm2", "prompt": "Hi", "max_tokens": 2})[0] == 200


def test_models_lists_the_generative_model(oai):
    assert "smollm2" in [m.id for m in oai.models.list()]


def test_a_plugin_that_traps_or_loops_fails_only_its_own_stream(oai, smollm2):
    others = {}

    def normal(i):
        chunks = oai.completions.create(model="faulty-generator", prompt="go", max_tokens=40, stream=True)
        others[i] = "".join(c.choices[0].text for c in chunks if c.choices)

    threads = [threading.Thread(target=normal, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    for prompt, words in (("trap after 5", "wasm trap"), ("loop after 5", "time limit")):
        chunks = oai.completions.create(model="faulty-generator", prompt=prompt, max_tokens=40, stream=True)
        got = []
        with pytest.raises(openai.APIError) as failed:
            for c in chunks:
                got.append(c.choices[0].text)
        # Its tokens came first; then the error event, with the cause.
        assert len("".join(got).split()) == 5
        assert words in str(failed.value) or words in str(failed.value.body), failed.value
    [t.join() for t in threads]
    # The others ran to the end, untouched, each its own 40 tokens.
    assert [len(others[i].split()) for i in range(2)] == [40, 40]
    # Before any text, a trap is an HTTP error.
    with pytest.raises(openai.InternalServerError):
        oai.completions.create(model="faulty-generator", prompt="trap after 0", max_tokens=4)
    assert len(oai.completions.create(model="faulty-generator", prompt="go", max_tokens=4).choices[0].text.split()) == 4


def test_tritons_generate_extension(smollm2):
    case = next(c for c in EXPECTED if c["kind"] == "completion")
    body = {"text_input": case["prompt"], "parameters": {"temperature": 0, "max_tokens": case["max_tokens"]}}
    status, answer = post(smollm2, "/v2/models/smollm2/generate", body)
    assert status == 200, answer
    assert answer == {"model_name": "smollm2", "model_version": "1", "text_output": case["text"]}
    # TensorRT-LLM's style: the settings at the top level; the versioned path.
    flat = {"text_input": case["prompt"], "temperature": 0, "max_tokens": case["max_tokens"]}
    assert post(smollm2, "/v2/models/smollm2/versions/1/generate", flat)[1]["text_output"] == case["text"]
    request = urllib.request.Request(f"http://{smollm2.address}/v2/models/smollm2/generate_stream",
                                     json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [json.loads(line[len(b"data: "):]) for line in response.read().split(b"\n") if line.startswith(b"data: ")]
    assert len(events) > 1 and all(e["model_name"] == "smollm2" for e in events)
    assert "".join(e["text_output"] for e in events) == case["text"]
    for bad, words in (({"parameters": {}}, "'text_input' is required"),
                       ({"text_input": "x", "max_tokens": "many"}, "'max_tokens' must be a number")):
        status, answer = post(smollm2, "/v2/models/smollm2/generate", bad)
        assert status == 400 and words in answer["error"], answer
    assert post(smollm2, "/v2/models/nosuch/generate", body)[0] == 404


def test_tritons_grpc_stream_streams_a_generation(smollm2):
    case = next(c for c in EXPECTED if c["kind"] == "completion")
    client = grpcclient.InferenceServerClient(smollm2.address)

    def inputs(stream, **sampling):
        # vLLM's model's inputs: the prompt, whether to stream, the settings as JSON.
        tensors = [("text_input", "BYTES", np.array([case["prompt"].encode()], dtype=object)),
                   ("stream", "BOOL", np.array([stream])),
                   ("sampling_parameters", "BYTES", np.array([json.dumps(sampling).encode()], dtype=object))]
        made = []
        for name, datatype, value in tensors:
            made.append(grpcclient.InferInput(name, [1], datatype))
            made[-1].set_data_from_numpy(value)
        return made

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    greedy = {"temperature": 0, "max_tokens": case["max_tokens"]}
    client.async_stream_infer("smollm2", inputs(True, **greedy), request_id="parts", enable_empty_final_response=True)
    client.async_stream_infer("smollm2", inputs(False, **greedy), request_id="whole")
    client.async_stream_infer("smollm2", inputs(False, max_tokens="many"), request_id="bad")
    parts, whole, errors = [], None, []
    while whole is None or not parts or not parts[-1].parameters["triton_final_response"].bool_param or not errors:
        result, error = answers.get(timeout=120)
        if error is not None:
            errors.append(str(error))
            continue
        response = result.get_response()
        if response.id == "whole":
            whole = grpcclient.InferResult(response).as_numpy("text_output")[0].decode()
        else:
            assert response.id == "parts" and response.model_name == "smollm2"
            parts.append(response)
    client.stop_stream()
    assert whole == case["text"]
    texts = [grpcclient.InferResult(p).as_numpy("text_output")[0].decode() for p in parts[:-1]]
    assert len(texts) > 1 and "".join(texts) == case["text"]
    assert not parts[-1].outputs and not any(p.parameters["triton_final_response"].bool_param for p in parts[:-1])
    assert len(errors) == 1 and "'max_tokens' must be a number" in errors[0]
    # A client that cancels its stream stops its generation: its slot frees, it is counted.
    cancelled = 'wasmserve_inference_request_cancelled_total{model="smollm2",version="1"}'
    before = metrics(smollm2).get(cancelled, 0)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("smollm2", inputs(True, temperature=1.0, max_tokens=1500), request_id="long")
    answers.get(timeout=60)
    client.stop_stream(cancel_requests=True)
    deadline = time.time() + 10
    while metrics(smollm2)['wasmserve_generation_sequences{model="smollm2",version="1"}'] != 0:
        assert time.time() < deadline, "the generation kept its slot"
        time.sleep(0.05)
    assert metrics(smollm2)[cancelled] == before + 1


def test_a_prompt_that_starts_as_an_earlier_one_reuses_its_cache(oai, smollm2):
    reused = 'wasmserve_generation_cached_prompt_tokens_total{model="faulty-generator",version="1"}'
    # Its prompt is always tokens 1, 2, 3: the slot a generation leaves holds them.
    oai.completions.create(model="faulty-generator", prompt="go", max_tokens=4)
    before = metrics(smollm2).get(reused, 0)
    oai.completions.create(model="faulty-generator", prompt="go", max_tokens=4)
    # All but the last (whose logits the step returns) came from the cache.
    assert metrics(smollm2)[reused] == before + 2
    assert metrics(smollm2)['wasmserve_generation_cached_prompt_tokens_total{model="smollm2",version="1"}'] == 0
    # Idle slots keep only what they share with a new prompt: in the one cache every pass's
    # attention runs over every cell held. Four at once fill four slots (3 + 20 tokens each).
    held = 'wasmserve_generation_cache_tokens{model="faulty-generator",version="1"}'
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: oai.completions.create(model="faulty-generator", prompt="go", max_tokens=20), range(4)))
    assert metrics(smollm2)[held] >= 2 * 23
    oai.completions.create(model="faulty-generator", prompt="go", max_tokens=4)
    # This one's 3 + 4 tokens, and the two prompt tokens each other slot shares with it.
    assert metrics(smollm2)[held] <= 7 + 3 * 2


def test_generations_beyond_the_slots_and_the_queue_get_503(tmp_path):
    model = tmp_path / "one-slot"
    shutil.copytree(ROOT / "tests/generators/faulty-generator", model)
    toml = (model / "model.toml").read_text().replace("slots = 4", "slots = 1")
    (model / "model.toml").write_text(toml + "\n[scheduling]\nmax_queue = 0\n")
    server = Server(tmp_path)
    try:
        server.wait_ready()
        oai = openai.OpenAI(base_url=f"http://{server.address}/v1", api_key="unused", max_retries=0)
        busy = oai.completions.create(model="one-slot", prompt="go", max_tokens=200, stream=True)
        next(iter(busy))  # it holds the one slot now
        status, answer = post(server, "/v1/completions", {"model": "one-slot", "prompt": "go", "max_tokens": 2})
        assert status == 503 and "busy" in answer["error"]["message"], answer
        busy.close()
        deadline = time.time() + 10
        while post(server, "/v1/completions", {"model": "one-slot", "prompt": "go", "max_tokens": 2})[0] != 200:
            assert time.time() < deadline, "the slot never came back"
            time.sleep(0.05)
    finally:
        server.stop()


def test_the_statistics_extension_counts_generations(oai, smollm2):
    stats = lambda: json.loads(urllib.request.urlopen(  # noqa: E731
        f"http://{smollm2.address}/v2/models/smollm2/stats").read())["model_stats"][0]
    before = stats()["inference_stats"]["success"]["count"]
    oai.completions.create(model="smollm2", prompt="Hello", max_tokens=2)
    list(oai.completions.create(model="smollm2", prompt="Hello", max_tokens=2, stream=True))
    assert stats()["inference_stats"]["success"]["count"] == before + 2


def test_payload_logging_logs_a_chat_and_its_whole_answer(tmp_path):
    from test_payload_logging import Sink

    shutil.copytree(ROOT / "tests/generators/faulty-generator", tmp_path / "faulty-generator")
    sink = Sink()
    server = Server(tmp_path, args=["--payload-log-url", sink.url])
    try:
        server.wait_ready()
        oai = openai.OpenAI(base_url=f"http://{server.address}/v1", api_key="unused", max_retries=0)
        chunks = oai.chat.completions.create(model="faulty-generator", max_tokens=5, stream=True,
                                             messages=[{"role": "user", "content": "go"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        whole = oai.chat.completions.create(model="faulty-generator", max_tokens=5,
                                            messages=[{"role": "user", "content": "go"}])
        events = sink.wait(4)
        kinds = [e.get("type") for e, _, _ in events]
        assert kinds.count("org.kubeflow.serving.inference.request") == 2, kinds
        assert kinds.count("org.kubeflow.serving.inference.response") == 2, kinds
        answers = [json.loads(body) for e, _, body in events if e.get("type").endswith("response")]
        # The streamed answer is logged as the whole it added up to; the other as it was sent.
        logged = {a.get("text", a.get("choices", [{}])[0].get("message", {}).get("content")) for a in answers}
        assert logged == {streamed, whole.choices[0].message.content}, answers
        requests = [json.loads(body) for e, _, body in events if e.get("type").endswith("request")]
        assert all(r["messages"] == [{"role": "user", "content": "go"}] for r in requests)
    finally:
        server.stop()
        sink.stop()


def test_a_gpu_target_without_a_gpu_fails_with_why_or_falls_back(tmp_path):
    model = tmp_path / "faulty-generator"
    shutil.copytree(ROOT / "tests/generators/faulty-generator", model)
    toml = (model / "model.toml").read_text()
    (model / "model.toml").write_text(toml.replace('backend = "ggml"', 'backend = "ggml"\ntarget = "gpu"'))
    refused = subprocess.run([BINARY, "check", str(model)], capture_output=True, text=True, timeout=300)
    # This machine has no GPU (and CI's build has no CUDA): the reason, and the way out.
    assert refused.returncode == 1
    assert 'target = "gpu"' in refused.stdout + refused.stderr and "gpu_fallback" in refused.stdout + refused.stderr
    (model / "model.toml").write_text(toml.replace('backend = "ggml"', 'backend = "ggml"\ntarget = "gpu"\ngpu_fallback = true'))
    fallen_back = subprocess.run([BINARY, "check", str(model)], capture_output=True, text=True, timeout=300)
    assert fallen_back.returncode == 0, fallen_back.stdout + fallen_back.stderr
    # Its warm-up is a generated token: no hint to add [[warmup]] requests, which it may not have.
    assert "[[warmup]]" not in fallen_back.stdout + fallen_back.stderr
