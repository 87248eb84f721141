#!/usr/bin/env python3
"""ONNX Runtime's intra-op threads: a pool per session against one pool for the process.

Serves magika and minilm (the examples, on ONNX Runtime) in four configurations and drives
both models at once (oha, concurrency --concurrency each, one 1-sentence minilm request and
one source file for magika), then prints one table: requests/s per model, p99, and the
server's threads.

- defaults: what the server derives (on this machine's cores: executions x threads).
- a pool per session: `[graph] threads = T` and `executions = E` on both models, so
  2 x E sessions each keep T - 1 spinning threads of their own, more than the cores.
- one shared pool: the same executions with `--onnxruntime-threads T`: every session runs
  its parallel work on one pool of T threads, which sleep when out of work; and the same
  with `--onnxruntime-spin`, whose threads spin instead.
Each configuration first serves each model to one client alone for 3 s (its p50), then
both at once.

    python3 bench/shared_pool.py [--threads 2] [--executions 2] [--seconds 10]
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BINARY, ROOT, Running, bodies, free_port, load  # noqa: E402


def repository(into, threads, executions):
    for model in ("magika", "minilm"):
        shutil.copytree(ROOT / "examples/models" / model, into / model)
        if threads:
            toml = (into / model / "model.toml").read_text()
            toml = toml.replace('backend = "onnx"', f'backend = "onnx"\nthreads = {threads}', 1)
            (into / model / "model.toml").write_text(toml + f"\n[scheduling]\nexecutions = {executions}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--executions", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    t, e = args.threads, args.executions
    configs = [("defaults", 0, []), (f"a pool per session: {e} x {t} threads per model", t, []),
               (f"one shared pool of {t}, {e} sessions per model", t, ["--onnxruntime-threads", str(t)]),
               ("the same pool, spinning (--onnxruntime-spin)", t, ["--onnxruntime-threads", str(t), "--onnxruntime-spin"])]
    body = bodies(False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, threads, flags) in enumerate(configs):
            repo = Path(tmp) / str(i)
            repository(repo, threads, e)
            port = free_port()
            server = Running(label, [str(BINARY), "serve", "-r", str(repo), "--port", str(port), *flags], port,
                             {"RUST_LOG": "warn"}, ready=("/v2/models/magika/ready", "/v2/models/minilm/ready"))
            names = [Path(task, "comm").read_text().strip() for task in Path(f"/proc/{server.proc.pid}/task").iterdir()]
            ort = sum(n.startswith("ort-") for n in names)
            results = {}
            runs = {"magika": body["magika"], "minilm": body["minilm x1"]}
            for model, data in runs.items():  # warm up, then one client alone: its p50
                load(f"{server.base}/v2/models/{model}/infer", data, 2, 1)
                results[model + " alone"] = load(f"{server.base}/v2/models/{model}/infer", data, 1, 3)
            drivers = [threading.Thread(target=lambda m=m, d=d: results.__setitem__(
                m, load(f"{server.base}/v2/models/{m}/infer", d, args.concurrency, args.seconds))) for m, d in runs.items()]
            for d in drivers:
                d.start()
            for d in drivers:
                d.join()
            server.stop()
            rows.append((label, results, ort))
            print(f"# {label}: {results['magika'][0]:.0f} + {results['minilm'][0]:.0f} req/s", file=sys.stderr)
    print(f"\nmagika and minilm at once, concurrency {args.concurrency} each, {args.seconds} s, {os.cpu_count()} CPUs\n")
    print("| configuration | magika req/s | magika p99 ms | minilm req/s | minilm p99 ms | ONNX Runtime threads "
          "| one client alone p50 ms: magika, minilm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r, ort in rows:
        print(f"| {label} | {r['magika'][0]:.0f} | {r['magika'][2]:.1f} | {r['minilm'][0]:.0f} | {r['minilm'][2]:.1f} "
              f"| {ort} | {r['magika alone'][1]:.1f}, {r['minilm alone'][1]:.1f} |")


if __name__ == "__main__":
    main()
