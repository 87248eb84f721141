#!/usr/bin/env python3
"""minilm on an NVIDIA GPU: dynamic batching and executions against ONNX Runtime CUDA alone.

One script for a GPU machine, within 8 minutes: serves `minilm` on ONNX Runtime's CUDA
provider in four configurations (batching off and on, 1 and 2 executions: sessions on the
one GPU), drives each with oha at concurrency 1, 16 and 64 with 1-sentence and 32-sentence
requests, and prints one table, then the targets: served rows/s against the in-process bound
(ONNX Runtime CUDA alone on the same graph, when the `onnxruntime` Python package on the
machine has CUDA), and batching on against off for 1-sentence requests at concurrency 64.

Needs: the release binary, the example plugins (`make examples`), oha (`.tools/oha/bin/oha`,
from `make bench`), the model files in a cache directory when the machine has no network
(WASMSERVE_CACHE_DIR), onnxruntime-gpu's capi/ directory and the CUDA and cuDNN libraries, as
scripts/gpu_check.py describes. `--target cpu` runs the same script on a CPU (no GPU needed:
how it was tested).

    python3 scripts/gpu_bench.py --binary target/release/wasmserve --ort-dir DIR --cuda-libs LIBS
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests/fixtures/text"))
from examples import unbatched  # noqa: E402
from gpu_check import start  # noqa: E402

CONFIGS = [  # (label, [batching] or None, executions)
    ("batching off, 1 execution", None, 1),
    ("batching off, 2 executions", None, 2),
    ("batching on, 1 execution", "max_batch_size = 64\nmax_queue_delay_us = 2000", 1),
    ("batching on, 2 executions", "max_batch_size = 64\nmax_queue_delay_us = 2000", 2),
]
LEVELS = [1, 16, 64]


def body(sentences, n):
    return json.dumps({"inputs": [{"name": "text", "shape": [n], "datatype": "BYTES",
                                   "data": (sentences * n)[:n]}]}).encode()


def oha(binary, url, data, concurrency, seconds):
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as f:
        f.write(data)
        f.flush()
        out = subprocess.run([binary, "-z", f"{seconds}s", "-w", "-c", str(concurrency), "-m", "POST", "-T",
                              "application/json", "-D", f.name, "--no-tui", "--output-format", "json", url],
                             check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    ok = r.get("statusCodeDistribution", {}).get("200", 0)
    return ok / r["summary"]["total"], r["latencyPercentiles"]["p50"] * 1e3, r["latencyPercentiles"]["p99"] * 1e3, \
        r["summary"]["total"] and sum(r.get("statusCodeDistribution", {}).values()) - ok


def in_process(model, target, rows, tokens=16, seconds=5):
    """Rows/s of ONNX Runtime alone on minilm's graph, `rows` x `tokens` token ids per run, or
    None when the Python package cannot run there."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return None
    provider = "CUDAExecutionProvider" if target == "gpu" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return None
    session = ort.InferenceSession(str(model), providers=[provider])
    ids = np.random.default_rng(0).integers(1000, 20000, size=(rows, tokens), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    for _ in range(5):
        session.run(None, feed)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        runs += 1
    return runs * rows / (time.perf_counter() - started)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--oha", default=str(ROOT / ".tools/oha/bin/oha"))
    p.add_argument("--ort-dir", help="onnxruntime-gpu's onnxruntime/capi directory (default: the server provisions the CPU build)")
    p.add_argument("--cuda-libs", default="", help="colon-separated directories holding CUDA and cuDNN libraries")
    p.add_argument("--target", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--seconds", type=int, default=5, help="per cell (4 configurations x 2 requests x 3 levels)")
    args = p.parse_args()
    started = time.time()
    sentences = json.loads((ROOT / "tests/fixtures/minilm/expected.json").read_text())["sentences"][:3]
    requests = {"1 sentence": body(sentences, 1), "32 sentences": body(sentences, 32)}
    env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": "warn,wasmserve=info"}
    ort_library = None
    if args.ort_dir:
        ort_library = sorted(glob.glob(f"{args.ort_dir}/libonnxruntime.so.*"))[0]
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [args.cuda_libs, args.ort_dir]))
    rows, model_file = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, batching, executions in CONFIGS:
            repo = Path(tmp) / re.sub(r"\W+", "_", label)
            dst = repo / "minilm"
            shutil.copytree(ROOT / "examples/models/minilm", dst, symlinks=True)
            # The example without the [batching] it ships with: each configuration sets its own.
            toml = unbatched((dst / "model.toml").read_text())
            toml = re.sub(r'backend = "\w+".*', f'backend = "onnx"\ntarget = "{args.target}"', toml)
            toml += f"\n[scheduling]\nexecutions = {executions}\nmax_in_flight = 128\nmax_queue = 256\n"
            if batching:
                toml += f"\n[batching]\n{batching}\n"
            (dst / "model.toml").write_text(toml)
            proc, addr, log = start(args.binary, str(repo), ort_library, env)
            try:
                fetched = next((m.group(1) for line in log if (m := re.search(r"view=(\S+)", line))), None)
                model_file = model_file or (Path(fetched) / "model.onnx" if fetched else None)
                url = f"http://{addr}/v2/models/minilm/infer"
                for name, data in requests.items():
                    oha(args.oha, url, data, 4, 1)
                    for c in LEVELS:
                        rps, p50, p99, failed = oha(args.oha, url, data, c, args.seconds)
                        rows.append((label, name, c, rps, p50, p99, failed))
                        print(f"# {label}, {name}, c={c}: {rps:.0f} req/s", file=sys.stderr, flush=True)
            finally:
                proc.kill()
                proc.wait()
    print(f"\nminilm on {args.target}, {args.seconds} s per cell\n")
    print("| configuration | request | concurrency | req/s | rows/s | p50 ms | p99 ms | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, name, c, rps, p50, p99, failed in rows:
        n = 32 if name.startswith("32") else 1
        print(f"| {label} | {name} | {c} | {rps:.0f} | {rps * n:.0f} | {p50:.2f} | {p99:.2f} | {failed} |")
    cell = {(l, n, c): rps for l, n, c, rps, *_ in rows}
    on, off = cell[("batching on, 1 execution", "1 sentence", 64)], cell[("batching off, 1 execution", "1 sentence", 64)]
    print(f"\n- 1-sentence requests at concurrency 64: batching on {on / off:.2f}x batching off (target: >= 4x)")
    bound = in_process(model_file, args.target, 32) if model_file else None
    if bound:
        best = max(rps * 32 for l, n, c, rps, *_ in rows if n == "32 sentences")
        print(f"- ONNX Runtime alone ({args.target}), 32 rows per run: {bound:.0f} rows/s; the best served: "
              f"{best:.0f} rows/s = {best / bound:.0%} (target: >= 90%)")
    else:
        print("- in-process bound: the onnxruntime Python package here cannot run on this target; not measured")
    print(f"- this script took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
