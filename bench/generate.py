#!/usr/bin/env python3
"""Generation: wasmserve against llama.cpp's own server and llama-cpp-python's, side by side.

Same GGUF file (SmolLM2-135M-Instruct Q4_1, the smollm2 example's), same threads, one run:

- wasmserve: the smollm2 example (its plugin runs the decoding loop; the host batches the
  steps of every generation in flight), with `[generation] slots` = the concurrency;
- llama-server, built from the llama.cpp that PyPI's llama-cpp-python sdist vendors
  (`vendor/llama.cpp`, target `llama-server`), `-np N` slots (its continuous batching),
  `--jinja` (the GGUF's own chat template, as wasmserve's plugin applies it);
- llama-cpp-python's OpenAI server (`python -m llama_cpp.server`), what a Python user runs.

Cells: concurrency 1, 4, 8 x prompts of about 20 and about 500 tokens; 128 tokens asked for,
greedy, streamed chat completions. Printed per cell: time to first token p50 / p99, decode
tokens/s per stream (after the first token), generated tokens/s in all, failures; and for
wasmserve the plugin's own time per token, from its metrics. First, every server's greedy
answer to one prompt, which must be the same text.

    python bench/generate.py                      # builds llama-server into .tools/ once (~5 min)
    python bench/generate.py --servers wasmserve,llama-server --requests 16

Needs: the `make examples` plugins, a release build (`cargo build --release`), and for the
Python peer `pip install 'llama-cpp-python[server]==0.3.36'` (builds llama.cpp, ~10 min; on
CPUs with AMX build it with CMAKE_ARGS=-DGGML_NATIVE=OFF: its AMX kernels crash in sandboxes
that do not grant AMX). A peer that is not there is skipped with a line saying so.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
LLAMA_SERVER = TOOLS / "llama-server" / "llama-server"
PYTHON_PEER = Path(os.environ.get("LLAMA_CPP_PYTHON", sys.executable))

SHORT = "Tell me about the history of the bicycle in a few paragraphs."
LONG_TOPICS = ["rivers", "mountains", "bridges", "libraries", "railways", "harbours", "deserts", "forests"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_prompt(i):
    """About 500 tokens of real prose (this file's docstring and README's introduction), then a question."""
    text = (ROOT / "README.md").read_text().split("## Quick start")[0] + __doc__
    words = text.split()[:330]
    return " ".join(words) + f"\n\nNow write about {LONG_TOPICS[i % len(LONG_TOPICS)]}."


def gguf():
    """The smollm2 example's GGUF file, as the server's fetch cache holds it."""
    for path in Path.home().glob(".cache/wasmserve/models/views/*/data/model.gguf"):
        return path
    sys.exit("no SmolLM2 GGUF in ~/.cache/wasmserve: run `make serve` once (it fetches the example's files)")


def build_llama_server():
    """llama-server from the llama.cpp vendored in llama-cpp-python's sdist, built once."""
    if LLAMA_SERVER.exists():
        return LLAMA_SERVER
    if shutil.which("cmake") is None:
        return None
    work = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "llama-cpp-python==0.3.36", "-d", str(work)], check=True)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    subprocess.run(["tar", "-xzf", str(sdist), "-C", str(work)], check=True)
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    # GGML_NATIVE off, as the server's build: the same kernels (AVX2), no AMX.
    subprocess.run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=OFF"],
                   cwd=source, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "-j", str(os.cpu_count())],
                   cwd=source, check=True, stdout=subprocess.DEVNULL)
    LLAMA_SERVER.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "build/bin/llama-server", LLAMA_SERVER)
    shutil.rmtree(work)
    return LLAMA_SERVER


def wait_ready(port, proc, path, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server never became ready")


def start(name, model, slots, threads):
    """Start server `name`; its process, port and the model name its API takes."""
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"bench-generate-{name}.log", "w")
    if name == "wasmserve":
        repo = Path(tempfile.mkdtemp())
        shutil.copytree(ROOT / "examples/models/smollm2", repo / "smollm2")
        toml = (repo / "smollm2/model.toml").read_text()
        toml = toml.replace("slots = 8", f"slots = {slots}").replace('backend = "ggml"', f'backend = "ggml"\nthreads = {threads}', 1)
        (repo / "smollm2/model.toml").write_text(toml)
        binary = ROOT / "target/release/wasmserve"
        proc = subprocess.Popen([str(binary), "serve", "--repository", str(repo), "--port", str(port)],
                                stdout=log, stderr=log)
        wait_ready(port, proc, "/v2/health/ready")
        return proc, port, "smollm2"
    if name == "llama-server":
        binary = build_llama_server()
        if binary is None:
            return None
        proc = subprocess.Popen([str(binary), "-m", str(model), "--port", str(port), "-np", str(slots),
                                 "-c", str(2048 * slots), "-t", str(threads), "-tb", str(threads), "--jinja"],
                                stdout=log, stderr=log)
        wait_ready(port, proc, "/health")
        return proc, port, "smollm2"
    if name == "llama-cpp-python":
        probe = subprocess.run([str(PYTHON_PEER), "-c", "import llama_cpp.server"], capture_output=True)
        if probe.returncode != 0:
            return None
        proc = subprocess.Popen([str(PYTHON_PEER), "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                                 "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048"],
                                stdout=log, stderr=log)
        wait_ready(port, proc, "/v1/models")
        return proc, port, "smollm2"
    raise ValueError(name)


def chat(port, model, prompt, max_tokens):
    """One streamed greedy chat completion: (time to first token, time of each token, text)."""
    body = {"model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": prompt}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    started = time.perf_counter()
    stamps, text = [], []
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            choices = chunk.get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                stamps.append(time.perf_counter() - started)
                text.append(content)
    return stamps, "".join(text)


def cell(port, model, concurrency, prompts, max_tokens):
    results, failures = [], 0
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(chat, port, model, p, max_tokens) for p in prompts]:
            try:
                results.append(future.result())
            except Exception as e:  # noqa: BLE001: a failure is a figure of the table
                failures += 1
                print(f"  failed: {e}", file=sys.stderr)
    wall = time.perf_counter() - started
    firsts = sorted(r[0][0] for r in results if r[0])
    decode = [(len(s) - 1) / (s[-1] - s[0]) for s, _ in results if len(s) > 2 and s[-1] > s[0]]
    tokens = sum(len(s) for s, _ in results)
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    return {"ttft_p50": p(firsts, 0.5) * 1000, "ttft_p99": p(firsts, 0.99) * 1000,
            "decode": statistics.median(decode) if decode else float("nan"), "total": tokens / wall,
            "failures": failures}


def plugin_per_token(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("wasmserve_generation_plugin_seconds_per_token_"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values.get("wasmserve_generation_plugin_seconds_per_token_sum", 0), values.get(
        "wasmserve_generation_plugin_seconds_per_token_count", 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="wasmserve,llama-server,llama-cpp-python")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--requests", type=int, default=0, help="requests per cell (default: 2 x concurrency, at least 8)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    model = gguf()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, answers = [], {}
    for name in args.servers.split(","):
        started = start(name, model, max(levels), args.threads)
        if started is None:
            print(f"{name}: not available, skipped (see the docstring)")
            continue
        proc, port, served = started
        try:
            answers[name] = chat(port, served, "What is the capital of France?", 32)[1]
            for prompt_kind in ("short", "long"):
                for c in levels:
                    n = args.requests or max(8, 2 * c)
                    prompts = [SHORT if prompt_kind == "short" else long_prompt(i) for i in range(n)]
                    before = plugin_per_token(port) if name == "wasmserve" else None
                    result = cell(port, served, c, prompts, args.max_tokens)
                    if before is not None:
                        after = plugin_per_token(port)
                        count = after[1] - before[1]
                        result["plugin_us"] = (after[0] - before[0]) / count * 1e6 if count else float("nan")
                    rows.append((name, prompt_kind, c, result))
                    print(f"{name:17} {prompt_kind:5} c={c}: {result}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()
    print("\nGreedy answer to 'What is the capital of France?' (32 tokens):")
    for name, text in answers.items():
        print(f"  {name:17} {text!r}")
    print(f"  the same text: {len(set(answers.values())) == 1}\n")
    print(f"{'server':17} {'prompt':6} {'conc':>4} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'decode tok/s':>12} "
          f"{'total tok/s':>11} {'fail':>4} {'plugin us/tok':>13}")
    for name, kind, c, r in rows:
        plugin = f"{r['plugin_us']:13.0f}" if "plugin_us" in r else f"{'':13}"
        print(f"{name:17} {kind:6} {c:4} {r['ttft_p50']:11.0f} {r['ttft_p99']:11.0f} {r['decode']:12.1f} "
              f"{r['total']:11.1f} {r['failures']:4} {plugin}")
    by = {(n, k, c): r for n, k, c, r in rows}
    print()
    for kind in ("short", "long"):
        for c in levels:
            ours, peer = by.get(("wasmserve", kind, c)), by.get(("llama-server", kind, c))
            if ours and peer:
                print(f"{kind} c={c}: wasmserve / llama-server: decode {ours['decode'] / peer['decode']:.2f}x, "
                      f"total {ours['total'] / peer['total']:.2f}x, TTFT p50 {ours['ttft_p50'] / peer['ttft_p50']:.2f}x")
            py = by.get(("llama-cpp-python", kind, c))
            if ours and py:
                print(f"{kind} c={c}: wasmserve / llama-cpp-python: total {ours['total'] / py['total']:.2f}x")


if __name__ == "__main__":
    main()
