#!/usr/bin/env python3
"""Time from process start to ready, with a cold cache and with a warm one, in one run.

Fetches the example models' files once (from PyPI, as their model.toml says), then builds a
model repository holding only their model.toml files, each listing its graph, plugin and
data files as [[fetch]] URLs on a local HTTP server; starts the release
binary with an empty --cache-dir (cold: download, hash, compile the plugin) and again on the
same cache (warm: re-hash, cached compiled plugin, ONNX Runtime's optimised graphs), and
once more with the optimised graphs removed (what the graph cache saves), and prints one
table of medians. The
server serves at full loopback speed and throttled to --mbit, as a pod pulling from object
storage would see.

    make examples && cargo build --release
    python3 bench/startup.py [--runs 3] [--mbit 200]
"""

import argparse
import hashlib
import http.server
import re
import shutil
import statistics
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from serving import ROOT, start, stop

EXAMPLES = ROOT / "examples/models"
MODELS = ["magika", "minilm"]


class Files(http.server.SimpleHTTPRequestHandler):
    """Serves `root`, at most `rate` bytes per second per response (0: unlimited)."""

    root = "."
    rate = 0
    served = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=Files.root, **kwargs)

    def copyfile(self, source, outputfile):
        while chunk := source.read(64 * 1024):
            outputfile.write(chunk)
            Files.served += len(chunk)
            if Files.rate:
                time.sleep(len(chunk) / Files.rate)

    def log_message(self, *args):
        pass


def model_files(into, seed):
    """Each example's files (plugin.wasm and what it fetches) under into/<model>/, from a
    server started once on the examples with the cache `seed`; returns {model: [paths]}."""
    proc, _, log, _ = start(EXAMPLES, "--cache-dir", seed)
    stop(proc)
    views = dict(re.findall(r'fetched model="(\w+)".* view=(\S+)', "".join(log)))
    files = {}
    for model in MODELS:
        config = tomllib.loads((EXAMPLES / model / "model.toml").read_text())
        files[model] = ["plugin.wasm"] + [f["path"] for f in config["fetch"]]
        for f in files[model]:
            source = EXAMPLES / model / f if f == "plugin.wasm" else Path(views[model]) / f
            (into / model / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, into / model / f)
    return files


def repository(base, files, source, into):
    for model, paths in files.items():
        text = (EXAMPLES / model / "model.toml").read_text().split("\n[[fetch]]")[0]
        for f in paths:
            sha = hashlib.sha256((source / model / f).read_bytes()).hexdigest()
            text += f'\n[[fetch]]\nurl = "{base}/{model}/{f}"\nsha256 = "{sha}"\npath = "{f}"\n'
        (into / model).mkdir(parents=True)
        (into / model / "model.toml").write_text(text)


def time_to_ready(repo, cache):
    """Seconds from process start to ready, with `cache` as --cache-dir."""
    proc, _, _, seconds = start(repo, "--cache-dir", cache)
    stop(proc)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbit", type=float, default=200, help="throttled download rate, Mbit/s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = model_files(tmp / "files", tmp / "seed")
        Files.root = str(tmp / "files")
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        size = sum((tmp / "files" / m / f).stat().st_size for m, paths in files.items() for f in paths)
        print(f"magika + minilm: {sum(map(len, files.values()))} files, {size / 2**20:.1f} MiB, release build, "
              f"median of {args.runs}\n")
        print("| download | cold cache: s to ready | warm cache: s to ready | cold / warm "
              "| warm, graphs optimised again: s | MiB downloaded (cold, warm) |")
        print("|---|---:|---:|---:|---:|---:|")
        repository(f"http://127.0.0.1:{httpd.server_address[1]}", files, tmp / "files", tmp / "repo")
        for label, rate in [("loopback, unthrottled", 0), (f"{args.mbit:g} Mbit/s", args.mbit * 1e6 / 8)]:
            Files.rate = rate
            cold, warm, unoptimised, cold_bytes, warm_bytes = [], [], [], [], []
            for run in range(args.runs):
                cache = tmp / f"cache-{rate}-{run}"
                before = Files.served
                cold.append(time_to_ready(tmp / "repo", cache))
                cold_bytes.append(Files.served - before)
                before = Files.served
                warm.append(time_to_ready(tmp / "repo", cache))
                warm_bytes.append(Files.served - before)
                shutil.rmtree(cache / "graphs")
                unoptimised.append(time_to_ready(tmp / "repo", cache))
            c, w = statistics.median(cold), statistics.median(warm)
            print(f"| {label} | {c:.2f} | {w:.2f} | {c / w:.1f}x | {statistics.median(unoptimised):.2f} | "
                  f"{statistics.median(cold_bytes) / 2**20:.1f}, {statistics.median(warm_bytes) / 2**20:.1f} |")
        httpd.shutdown()


if __name__ == "__main__":
    main()
