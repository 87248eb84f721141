#!/usr/bin/env python3
"""Sequential latency of the example models on each backend, in one run.

Starts the release binary three times on the example models: as shipped (ONNX Runtime,
provisioned by the server unless ORT_DYLIB_PATH names a library), on tract with its default
threads (matrix products on a pool of one thread per core), and on tract with `threads = 1`
(each graph on one thread: tract as it ran before the pool). It sends the same requests one
at a time and prints one table: client-side p50/p99 and the server's own median time per
stage (preprocess, infer, postprocess), read from its debug log, then tract's speed-up from
its pool. No concurrency: bench/compare.py measures throughput against other servers.

    make examples && cargo build --release && python3 bench/latency.py
"""

import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from serving import ROOT, start, stop

RAW = {"Inference-Header-Content-Length": "0"}


def post(addr, model, body, headers):
    req = urllib.request.Request(f"http://{addr}/v2/models/{model}/infer", data=body, headers=headers)
    with urllib.request.urlopen(req) as r:
        return r.read()


def main():
    sentences = json.loads((ROOT / "tests/fixtures/minilm/expected.json").read_text())["sentences"][:7]
    text = lambda n: json.dumps({"inputs": [{"name": "text", "shape": [n], "datatype": "BYTES", "data": (sentences * 5)[:n]}]}).encode()
    cases = [
        ("magika, 1 PDF (raw body)", "magika", (ROOT / "tests/fixtures/magika/files/doc.pdf").read_bytes(), RAW, 200),
        ("minilm, 1 sentence", "minilm", text(1), {}, 100),
        ("minilm, 32 sentences", "minilm", text(32), {}, 20),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("onnxruntime", ROOT / "examples/models")]
        for backend, threads in (("tract", 0), ("tract 1 thread", 1)):
            repo = Path(tmp) / backend.replace(" ", "_")
            for model in ("magika", "minilm"):
                (repo / model).mkdir(parents=True)
                for f in (ROOT / "examples/models" / model).iterdir():
                    if f.name != "model.toml":
                        (repo / model / f.name).symlink_to(f)
                toml = (ROOT / "examples/models" / model / "model.toml").read_text()
                toml = re.sub(r'backend = "onnx".*', f'backend = "tract"\nthreads = {threads}', toml)
                (repo / model / "model.toml").write_text(toml)
            backends.append((backend, repo))
        for backend, repo in backends:
            proc, addr, log, _ = start(repo, env={"RUST_LOG": "wasmserve::schedule=debug,info"})
            try:
                print(f"# {backend}", file=sys.stderr, flush=True)
                for name, model, body, headers, n in cases:
                    for _ in range(5):
                        post(addr, model, body, headers)
                    mark = len(log)
                    times = []
                    for _ in range(n):
                        t = time.perf_counter()
                        post(addr, model, body, headers)
                        times.append(1000 * (time.perf_counter() - t))
                    time.sleep(0.2)
                    stages = [tuple(map(int, m.groups())) for line in log[mark:]
                              if (m := re.search(r"preprocess_us=(\d+) infer_us=(\d+) postprocess_us=(\d+)", line))]
                    med = [statistics.median(s[i] for s in stages) / 1000 for i in range(3)] if stages else [float("nan")] * 3
                    times.sort()
                    rows.append((name, backend, n, times[len(times) // 2], times[int(0.99 * len(times)) - 1], *med))
            except OSError:
                time.sleep(0.5)
                sys.exit(f"{backend}: the request failed; the server's log ends:\n" + "".join(log[-20:]))
            finally:
                stop(proc)
    print(f"{'request':26} {'backend':14} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'pre ms':>7} {'infer ms':>9} {'post ms':>8}")
    for name, backend, n, p50, p99, pre, inf, post_ in sorted(rows):
        print(f"{name:26} {backend:14} {n:4d} {p50:8.2f} {p99:8.2f} {pre:7.2f} {inf:9.2f} {post_:8.2f}")
    p50 = {(name, backend): p for name, backend, _, p, *_ in rows}
    print()
    for name, *_ in cases:
        one, pool = p50[(name, "tract 1 thread")], p50[(name, "tract")]
        print(f"- {name}: tract with its pool {one / pool:.2f}x faster than on one thread (p50 {pool:.2f} vs {one:.2f} ms); "
              f"ONNX Runtime {pool / p50[(name, 'onnxruntime')]:.1f}x faster than tract")


if __name__ == "__main__":
    main()
