#!/usr/bin/env python3
"""Check wasmserve on an NVIDIA GPU: ONNX Runtime's CUDA provider against tract on the CPU.

Serves the example models twice with the same binary, once with `backend = "onnx"`,
`target = "gpu"` (no fallback: start-up fails if CUDA cannot be used) and once on tract, and
prints for each: whether magika's labels equal the Python package's on the fixture files,
minilm's lowest cosine against the reference embeddings, and sequential latencies.

Needs on the GPU machine: the wasmserve binary, the example plugins (`make examples`), the
model files in a cache directory when the machine has no network (start the server once where
it has, with `--cache-dir DIR`, carry DIR over and set WASMSERVE_CACHE_DIR=DIR), the
`onnxruntime-gpu` wheel's capi/ directory (libonnxruntime.so.*, libonnxruntime_providers_cuda.so,
libonnxruntime_providers_shared.so) and CUDA 13 + cuDNN 9 libraries (the `nvidia-*` wheels
PyTorch cu130 brings). Run from the repository root:

    python3 scripts/gpu_check.py --binary target/release/wasmserve \
        --ort-dir /path/to/onnxruntime/capi --cuda-libs "$(ls -d /path/to/site-packages/nvidia/*/lib | paste -sd:)"
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
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures"


def start(binary, repo, ort_library, env):
    """Serve `repo` (with this ONNX Runtime library, or the one the server provisions when None)
    and wait until ready: (process, address, log lines)."""
    library = ["--onnxruntime-library", ort_library] if ort_library else []
    proc = subprocess.Popen([binary, "serve", "-r", repo, "--port", "0", *library],
                            stderr=subprocess.PIPE, text=True, env=env)
    log, addr = [], []

    def pump():
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"listening on (\S+)", line)
            if m:
                addr.append(m.group(1))

    threading.Thread(target=pump, daemon=True).start()
    started = time.time()
    while time.time() - started < 240:
        if proc.poll() is not None:
            sys.exit("server exited:\n" + "".join(log)[-3000:])
        if addr:
            try:
                if urllib.request.urlopen(f"http://{addr[0]}/v2/health/ready").status == 200:
                    return proc, addr[0], log
            except OSError:
                pass
        time.sleep(0.1)
    sys.exit("server not ready after 240 s:\n" + "".join(log)[-3000:])


def post(addr, path, body, headers):
    req = urllib.request.Request(f"http://{addr}{path}", data=body, headers=headers)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def output(response, name):
    return next(o for o in response["outputs"] if o["name"] == name)["data"]


def measure(label, binary, repo, ort_library, env):
    expected_files = json.loads((FIXTURES / "magika/expected.json").read_text())
    expected_text = json.loads((FIXTURES / "minilm/expected.json").read_text())
    files = {n: (FIXTURES / "magika/files" / n).read_bytes() for n in expected_files}
    raw = {"Inference-Header-Content-Length": "0"}
    proc, addr, log = start(binary, repo, ort_library, env)
    try:
        if label == "gpu":
            apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                                   "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
            print(f"[gpu] processes on the GPU: {apps or '(none)'} (server pid {proc.pid})")
        same = sum(output(post(addr, "/v2/models/magika/infer", files[n], raw), "label")[0] == want["label"]
                   for n, want in expected_files.items())
        print(f"[{label}] magika labels equal to python magika: {same}/{len(files)}")
        sentences = expected_text["sentences"]
        body = json.dumps({"inputs": [{"name": "text", "shape": [len(sentences)], "datatype": "BYTES", "data": sentences}]})
        got = np.array(output(post(addr, "/v2/models/minilm/infer", body.encode(), {}), "embedding"), np.float32).reshape(-1, 384)
        ref = np.array(expected_text["embeddings"], np.float32)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"[{label}] minilm lowest cosine against the reference: {cos.min():.5f}")
        batch = json.dumps({"inputs": [{"name": "text", "shape": [32], "datatype": "BYTES",
                                        "data": (sentences[:7] * 5)[:32]}]}).encode()
        for _ in range(3):
            post(addr, "/v2/models/minilm/infer", batch, {})
        times = []
        for _ in range(20):
            t = time.perf_counter()
            post(addr, "/v2/models/minilm/infer", batch, {})
            times.append(time.perf_counter() - t)
        print(f"[{label}] minilm, 32 sentences a request: median {1000 * np.median(times):.1f} ms (20 sequential)")
        times = []
        for _ in range(100):
            t = time.perf_counter()
            post(addr, "/v2/models/magika/infer", files["doc.pdf"], raw)
            times.append(time.perf_counter() - t)
        print(f"[{label}] magika, one file a request: median {1000 * np.median(times):.2f} ms (100 sequential)")
    finally:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--ort-dir", required=True, help="the onnxruntime-gpu wheel's onnxruntime/capi directory")
    p.add_argument("--cuda-libs", default="", help="colon-separated directories holding CUDA and cuDNN libraries")
    p.add_argument("--models", default=str(ROOT / "examples/models"))
    args = p.parse_args()
    ort_library = sorted(glob.glob(f"{args.ort_dir}/libonnxruntime.so.*"))[0]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [args.cuda_libs, args.ort_dir])), "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for label, graph in [("gpu", 'backend = "onnx"\ntarget = "gpu"'), ("cpu-tract", 'backend = "tract"')]:
            repo = Path(tmp) / label
            for model in ("magika", "minilm"):
                src, dst = Path(args.models) / model, repo / model
                shutil.copytree(src, dst, symlinks=True)
                toml = (dst / "model.toml").read_text()
                (dst / "model.toml").write_text(re.sub(r'backend = "\w+"', graph, toml))
            measure(label, args.binary, str(repo), ort_library, env)


if __name__ == "__main__":
    main()
