#!/usr/bin/env python3
"""Real text traffic: one real sentence per request, every request a different length.

The minilm example (all-MiniLM-L6-v2 int8, WordPiece, mean pooling) is served by:

- wasmserve as it ships: [batching] with `pad` (requests of different lengths padded to the
  batch's longest, the padding cut off each answer), at most 8 rows and 256 tokens, no delay;
- wasmserve unbatched: the example without its [batching];
- wasmserve with same-shape batching (requests join only when their graph inputs have the
  same shape: here, the same token count), at most 32 rows, --delay-us;
- wasmserve config-only: the same files served by `[text] task = "embed"` and the built-in
  text plugin (examples/models/minilm-text), as it ships (its [batching] padding left to the
  defaults a text model gets) and unbatched;
- Triton (PyTriton's tritonserver, dynamic batching; bench/peers/triton_server.py), which
  tokenises with Hugging Face `tokenizers` and pads each batch itself;
- Infinity (`infinity-emb` 0.0.78, its optimum engine: ONNX Runtime, dynamic batching, POST
  /embeddings) on minilm's own ONNX file ("infinity"; "infinity optimized" lets it rewrite
  the graph with ONNX Runtime's transformer optimiser first, as it does by default). It needs
  `make .venv-infinity/installed` (7.4 GB: every Infinity engine imports torch, and PyPI's
  Linux torch is the CUDA build) and a config.json beside the graph, which minilm's wheel
  does not ship: the Hub model's own values are written there.

Then rerank: one query with 32 of the sentences as documents per request, POST /v1/rerank,
to a cross-encoder made from minilm's graph (tests/fixtures/text/heads.py: a test model,
its scores mean nothing), config-only (`[text] task = "rerank"`): each request is one graph
run of 32 rows.

Then the graph's ceiling: ONNX Runtime alone on the same graph with one thread (what each of
wasmserve's two executions has), the same sentences tokenised by `tokenizers`: milliseconds
per sentence one at a time, in batches sorted by length (the least padding a batcher could
reach) and in batches as they come. No batcher can gain more than the sorted batches do.

The peers batch at most 32 rows, with a 2 ms delay. The load: `wrk` (Debian), each connection sending
the sentences of tests/fixtures/text/sentences.txt in turn (358 summaries and first
sentences of the Python packages installed here: median 10 words, p90 22), one per request,
at concurrency 1 and 16. Printed: requests/s, p50 and p99 ms, failures, and for wasmserve the
rows per graph run (its inference_count over inference_exec_count).

    make .venv-bench/installed && apt-get install wrk
    .venv-bench/bin/python bench/text.py [--duration 10] [--servers ...]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import BINARY, DELAY_US, MAX_BATCH, ROOT, Running, free_port, get, minilm_dir, start, unbatched

SENTENCES = (ROOT / "tests/fixtures/text/sentences.txt").read_text().splitlines()
SAME_SHAPE = "\n[batching]\nmax_batch_size = {rows}\nmax_queue_delay_us = {delay}\n"
# wasmserve's cells: the example served, and the [batching] written in place of its own (None:
# its own, as it ships).
WASMSERVE = {"wasmserve": ("minilm", None), "wasmserve unbatched": ("minilm", ""),
             "wasmserve same-shape batching": ("minilm", SAME_SHAPE),
             "wasmserve config-only": ("minilm-text", None), "wasmserve config-only unbatched": ("minilm-text", "")}
# The ratios printed: (numerator, denominator).
RATIOS = [("wasmserve", "wasmserve unbatched"), ("wasmserve same-shape batching", "wasmserve unbatched"),
          ("wasmserve config-only", "wasmserve"), ("wasmserve config-only unbatched", "wasmserve unbatched"),
          ("wasmserve", "triton"), ("wasmserve", "infinity"), ("wasmserve", "infinity optimized")]
RERANK = "wasmserve rerank: 1 query x 32 docs"
INFINITY = ("infinity", "infinity optimized")
CEILING = "graph ceiling"
# all-MiniLM-L6-v2's config.json on the Hub: Infinity's optimum engine loads one beside the
# graph (minilm's wheel ships only model.onnx and vocab.txt).
MINILM_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
                 "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu", "vocab_size": 30522,
                 "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}
# wrk: each connection walks the bodies in turn, from a different start.
WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
setup = function(thread) thread:set("i", math.random(#bodies)) end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local failed = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %f %f %d\\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, failed))
end
"""


def wasmserve(name, scratch, delay_us):
    """wasmserve serving minilm (under that name) as `name` says, or the reranker."""
    repo = Path(tempfile.mkdtemp(prefix=re.sub(r"\W+", "_", name), dir=scratch))
    if name == RERANK:
        sys.path.insert(0, str(ROOT / "tests/fixtures/text"))
        import heads

        shutil.copytree(heads.make(scratch / "heads") / "reranker", repo / "minilm")
        (repo / "minilm/model.toml").write_text('[graph]\nfile = "model.onnx"\nbackend = "onnx"\n[text]\ntask = "rerank"\n')
    else:
        example, batching = WASMSERVE[name]
        shutil.copytree(ROOT / "examples/models" / example, repo / "minilm")
        if batching is not None:
            toml = unbatched((repo / "minilm/model.toml").read_text())
            (repo / "minilm/model.toml").write_text(toml + batching.format(rows=MAX_BATCH, delay=delay_us))
    ort = subprocess.run([sys.executable, str(ROOT / "tests/onnxruntime_library.py")], capture_output=True, text=True)
    port = free_port()
    return Running(name, [str(BINARY), "serve", "-r", str(repo), "--port", str(port)], port,
                   {"ORT_DYLIB_PATH": ort.stdout.strip(), "RUST_LOG": "warn"}, ready=("/v2/models/minilm/ready",))


def infinity(name, scratch):
    """Infinity serving minilm's own files (as `minilm`) through its optimum engine."""
    program = ROOT / ".venv-infinity/bin/infinity_emb"
    if not program.exists():
        sys.exit(f"{name} needs `make .venv-infinity/installed` (about 7.4 GB)")
    files, model = Path(minilm_dir()), scratch / re.sub(r"\W+", "_", name)
    model.mkdir()
    shutil.copy(files / "model.onnx", model / "model.onnx")
    shutil.copy(files / "data/vocab.txt", model / "vocab.txt")
    (model / "config.json").write_text(json.dumps(MINILM_CONFIG))
    (model / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 256}))
    port = free_port()
    cmd = [str(program), "v2", "--model-id", str(model), "--served-model-name", "minilm", "--engine", "optimum",
           "--device", "cpu", "--pooling-method", "mean", "--batch-size", str(MAX_BATCH), "--port", str(port)]
    if name == "infinity":
        cmd.append("--onnx-disable-optimize")
    # Offline, no usage reports; its optimised graph goes to the scratch directory.
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
           "HF_HOME": str(scratch / "hf")}
    return Running(name, cmd, port, env, ready=("/health",))


def ceiling():
    """ONNX Runtime alone on minilm's graph, one thread: ms per sentence one at a time, and in
    batches of 4 and 8 sorted by length and as they come. Returns printable lines."""
    import random
    import time

    import numpy as np
    import onnxruntime
    from tokenizers import BertWordPieceTokenizer

    files = Path(minilm_dir())
    tokenizer = BertWordPieceTokenizer(str(files / "data/vocab.txt"), lowercase=True)
    tokenizer.enable_truncation(256)
    encoded = [e.ids for e in tokenizer.encode_batch(SENTENCES)]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(files / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def per_sentence(batches):
        def run(batch):
            ids = np.zeros((len(batch), max(map(len, batch))), np.int64)
            for row, tokens in enumerate(batch):
                ids[row, :len(tokens)] = tokens
            feed = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": ids * 0}
            session.run(None, {k: v for k, v in feed.items() if k in names})
        for batch in batches[:5]:
            run(batch)
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        return (time.perf_counter() - started) * 1000 / len(encoded)

    shuffled = encoded[:]
    random.Random(1).shuffle(shuffled)
    layouts = {"one at a time": [[e] for e in encoded]}
    for rows in (4, 8):
        for how, order in (("sorted by length", sorted(encoded, key=len)), ("as they come", shuffled)):
            layouts[f"batches of {rows}, {how}"] = [order[i:i + rows] for i in range(0, len(order), rows)]
    # Alternated, five rounds, the best of each: what another process takes from the machine
    # only ever slows a round down.
    best = {}
    for _ in range(5):
        for name, batches in layouts.items():
            best[name] = min(best.get(name, float("inf")), per_sentence(batches))
    alone = best.pop("one at a time")
    lines = [f"{CEILING} (ONNX Runtime alone, 1 thread, {len(encoded)} sentences): one at a time {alone:.2f} ms/sentence"]
    for name, ms in best.items():
        lines.append(f"  {name}: {ms:.2f} ms/sentence, {alone / ms:.2f}x one at a time")
    return lines


def load(url, bodies, concurrency, duration):
    """wrk at `concurrency` for `duration` s: (req/s, p50 ms, p99 ms, failures)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bodies").write_text("\n".join(bodies) + "\n")
        (Path(tmp) / "walk.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{duration}s", "--timeout", "30s",
                              "-s", str(Path(tmp) / "walk.lua"), url],
                             check=True, capture_output=True, text=True, env={**os.environ, "BODIES": str(Path(tmp) / "bodies")}).stdout
    requests, micros, p50, p99, failed = re.search(r"RESULT (\d+) (\d+) (\S+) (\S+) (\d+)", out).groups()
    return int(requests) / (int(micros) / 1e6), float(p50), float(p99), int(failed)


def counts(base):
    """wasmserve's rows and graph runs for minilm so far."""
    values = {}
    for line in get(f"{base}/metrics")[1].decode().splitlines():
        if line.startswith(("wasmserve_inference_count_total{", "wasmserve_inference_exec_count_total{")) and "minilm" in line:
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return values.get("wasmserve_inference_count_total", 0), values.get("wasmserve_inference_exec_count_total", 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--servers", default=",".join([*WASMSERVE, "triton", "infinity", RERANK, CEILING]),
                        help="also: 'infinity optimized'")
    parser.add_argument("--delay-us", type=int, default=DELAY_US, help="wasmserve's max_queue_delay_us")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, ceiling_lines = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.servers.split(","):
            if name == CEILING:
                ceiling_lines = ceiling()
                print("\n".join(ceiling_lines), file=sys.stderr)
                continue
            triton, peer = name == "triton", name == "triton" or name in INFINITY
            if triton:
                server = start(name, os.cpu_count(), Path(scratch))
            elif name in INFINITY:
                server = infinity(name, Path(scratch))
            else:
                server = wasmserve(name, Path(scratch), args.delay_us)
            shape = [1, 1] if triton else [1]
            bodies = [json.dumps({"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": [s]}]})
                      for s in SENTENCES]
            path = "/v2/models/minilm/infer"
            if name in INFINITY:
                path, bodies = "/embeddings", [json.dumps({"model": "minilm", "input": [s]}) for s in SENTENCES]
            if name == RERANK:
                path = "/v1/rerank"
                bodies = [json.dumps({"model": "minilm", "query": SENTENCES[i], "top_n": 5,
                                      "documents": [SENTENCES[(i + k) % len(SENTENCES)] for k in range(1, 33)]})
                          for i in range(len(SENTENCES))]
            try:
                load(f"{server.base}{path}", bodies, 4, 2)  # warm: a peer's first requests may compile or allocate
                for c in levels:
                    before = (0, 0) if peer else counts(server.base)
                    result = load(f"{server.base}{path}", bodies, c, args.duration)
                    after = (0, 0) if peer else counts(server.base)
                    runs = after[1] - before[1]
                    per_run = (after[0] - before[0]) / runs if runs else float("nan")
                    rows.append((name, c, *result, per_run))
                    print(f"{name} c={c}: {result}, {per_run:.2f} rows per graph run", file=sys.stderr)
            finally:
                server.stop()
    print(f"\n{'server':32} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail':>5} {'rows/run':>8}")
    for name, c, rps, p50, p99, failed, per_run in rows:
        print(f"{name:32} {c:4} {rps:8.1f} {p50:7.1f} {p99:7.1f} {failed:5} {per_run:8.2f}")
    # A server named more than once (--servers a,b,a,b: alternated, against drift on a shared
    # machine) counts with the mean of its runs.
    by = {}
    for name, c, rps, _, p99, _, _ in rows:
        by.setdefault((name, c), []).append((rps, p99))
    mean = {key: tuple(sum(v) / len(v) for v in zip(*runs)) for key, runs in by.items()}
    print()
    for c in levels:
        for a, b in RATIOS:
            if (a, c) in mean and (b, c) in mean:
                (rps_a, p99_a), (rps_b, p99_b) = mean[(a, c)], mean[(b, c)]
                print(f"c={c}: {a} / {b}: {rps_a / rps_b:.2f}x req/s, p99 {p99_a / p99_b:.2f}x")
    if ceiling_lines:
        print()
        print("\n".join(ceiling_lines))


if __name__ == "__main__":
    main()
