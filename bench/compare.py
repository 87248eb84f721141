#!/usr/bin/env python3
"""wasmserve against Triton, MLServer and a FastAPI + onnxruntime server, side by side.

One run, one machine: each server in turn is started on the same three models, driven by the
same load generator (oha) with the same request bodies at several concurrencies, and
stopped; then one table is printed: requests/s, p50, p99, errors, peak RSS and the time from
process start to every model ready.

- Out of the box first: `wasmserve serve -r examples/models` exactly as `make serve` runs it
  (nothing configured: ONNX Runtime provisioned by the server) against what a user writes by
  hand, a FastAPI app calling the `magika` package (bench/peers/fastapi_magika.py), one PDF
  per request, concurrency 16.
- Models: `magika` (file-type detection: real byte work around a 3 MB network; every
  server runs the magika 1.0.3 model file and its pre/post-processing: wasmserve in its
  plugin, the others in the `magika` Python package) and `tiny` (mul_1.onnx: Y = X * c on a
  3x2 tensor, where serving overhead is all there is) and `minilm` (sentence embeddings:
  the example's all-MiniLM-L6-v2 int8 graph, WordPiece tokenising, mean pooling; the
  others tokenise with Hugging Face `tokenizers`, see bench/peers/models.py), 1 and 8
  sentences per request.
- Backend: ONNX Runtime 1.32.0 everywhere (wasmserve loads the same library as the Python
  wheel). The peers run one session with --threads intra-op threads (default: every core);
  wasmserve runs its own defaults (sessions and threads derived from the cores). Batching is
  on where the server has it (max 32 rows, 2 ms delay) for magika and minilm: Triton's
  dynamic batcher, MLServer's adaptive batching, wasmserve's [batching] (in a configuration
  of its own: the examples ship without it). FastAPI has none.
- wasmserve runs in three configurations: as it ships (instances reused, no batching: on
  this CPU batching does not pay for magika, see the bound below), with [batching] on
  magika and minilm, and with a fresh plugin instance per request.
- Also measured in the same run: ONNX Runtime in-process on magika, the best of several
  configurations (sessions x intra-op threads x spinning, each session driven from a thread
  of its own), and at batch sizes 1 and 32 (what batching can gain on this machine); nginx
  answering a fixed body at concurrency 16 (the ceiling for serving overhead; skipped when
  nginx is not installed: apt-get install nginx-light); the plugin's cost per request and
  where a request's time goes, from wasmserve's metrics.

    make bench          # installs .venv-bench (bench/requirements.txt) and oha, then runs this

Options: --duration S per cell (default 10), --concurrency 1,16,32, --servers (default all),
--no-out-of-box.
"""

import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench/peers"
sys.path.insert(0, str(ROOT / "tests/fixtures/text"))
from examples import unbatched  # noqa: E402
BINARY = Path(os.environ.get("WASMSERVE_BIN", ROOT / "target/release/wasmserve"))
OHA = Path(os.environ.get("OHA", ROOT / ".tools/oha/bin/oha"))
TINY_MODEL = ROOT / "tests/models/faulty/model.onnx"
MAX_BATCH, DELAY_US = 32, 2000
MAGIKA_FILE = ROOT / "tests/fixtures/magika/files/main.rs"
SENTENCES = ["The quarterly report is due on Friday afternoon.", "A man is playing a guitar on the street.",
             "How do I reset my password?", "The train to Lyon leaves from platform nine.",
             "Our servers answered every request within ten milliseconds.", "She planted tomatoes in the spring.",
             "Refunds are processed within five business days.", "The museum opens at nine on weekdays."]
# What each table row sends: (the model's name in URLs, sentences per request for minilm).
MODELS = {"magika": ("magika", None), "tiny": ("tiny", None), "minilm x1": ("minilm", 1), "minilm x8": ("minilm", 8)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


class Running:
    """A server process tree: its peak RSS (sum over processes, sampled every 100 ms) and
    the seconds from start to every model ready."""

    def __init__(self, name, cmd, port, env=None, cwd=None, ready=tuple(f"/v2/models/{m}/ready" for m in ("magika", "tiny", "minilm"))):
        self.name, self.port = name, port
        self.log = tempfile.TemporaryFile()
        started = time.perf_counter()
        # An env value of None removes the variable.
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.peak, self.stopping = 0, False
        threading.Thread(target=self._sample, daemon=True).start()
        deadline = started + 300
        while not all(get(f"{self.base}{path}")[0] == 200 for path in ready):
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                self.stop()
                self.log.seek(0)
                sys.exit(f"{name} did not become ready:\n{self.log.read().decode(errors='replace')[-5000:]}")
            time.sleep(0.02)
        self.ready_s = time.perf_counter() - started

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def _sample(self):
        root = psutil.Process(self.proc.pid)
        while not self.stopping:
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)

    def stop(self):
        self.stopping = True
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()


def load(url, body, concurrency, duration, raw=False):
    """oha at `concurrency` for `duration` seconds: (req/s, p50 ms, p99 ms, failed requests).
    `raw`: the body is a file sent as it is (OIP's raw-body form for wasmserve)."""
    kind = ["-T", "application/octet-stream", "-H", "Inference-Header-Content-Length: 0"] if raw else ["-T", "application/json"]
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            # -w: requests in flight at the deadline finish and count, rather than fail.
            [str(OHA), "-z", f"{duration}s", "-w", "-c", str(concurrency), "-m", "POST", *kind,
             "-D", f.name, "--no-tui", "--output-format", "json", url],
            check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    codes = r.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    failed = sum(codes.values()) - ok + sum(r.get("errorDistribution", {}).values())
    p = r["latencyPercentiles"]
    return ok / r["summary"]["total"], p["p50"] * 1000, p["p99"] * 1000, failed


def bodies(triton):
    text = MAGIKA_FILE.read_text()
    shape = [1, 1] if triton else [1]
    magika = {"inputs": [{"name": "bytes", "shape": shape, "datatype": "BYTES", "data": [text]}]}
    tiny = {"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    out = {"magika": json.dumps(magika).encode(), "tiny": json.dumps(tiny).encode()}
    for key, (_, n) in MODELS.items():
        if n:
            shape = [n, 1] if triton else [n]
            text = {"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": SENTENCES[:n]}]}
            out[key] = json.dumps(text).encode()
    return out


@functools.cache
def minilm_dir():
    """The example minilm's fetched files (model.onnx, data/vocab.txt), for the peers: where
    `wasmserve check` puts them in the default cache."""
    out = subprocess.run([str(BINARY), "check", str(ROOT / "examples/models/minilm")], capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
    for word in out.stderr.split():
        if word.startswith("view="):
            return word[len("view="):]
    sys.exit(f"cannot find minilm's files:\n{out.stderr[-3000:]}")


def wasmserve_repository(dir, batching, reuse, minilm=True):
    """magika as the example configures it (with [batching] if asked), minilm as the example
    ships but unbatched unless asked (and only if `minilm`), and tiny: mul_1.onnx behind the test suite's
    pass-through plugin."""
    magika = dir / "magika"
    shutil.copytree(ROOT / "examples/models/magika", magika)
    # The example's own settings: ONNX Runtime, executions and threads as the server derives them.
    toml = (magika / "model.toml").read_text()
    plugin = "" if reuse else "\nreuse_instances = false"
    toml = toml.replace("[plugin]", "[plugin]" + plugin)
    if batching:
        toml += f"\n[batching]\nmax_batch_size = {MAX_BATCH}\nmax_queue_delay_us = {DELAY_US}\n"
    (magika / "model.toml").write_text(toml)
    if minilm:
        # Without the [batching] the example ships with (bench/text.py measures that, on
        # sentences of every length), or with this benchmark's: requests join a batch only
        # when their token counts match, as here, where every request is the same.
        shutil.copytree(ROOT / "examples/models/minilm", dir / "minilm")
        toml = unbatched((dir / "minilm/model.toml").read_text())
        if batching:
            toml += f"\n[batching]\nmax_batch_size = {MAX_BATCH}\nmax_queue_delay_us = {DELAY_US}\n"
        (dir / "minilm/model.toml").write_text(toml)
    tiny = dir / "tiny"
    tiny.mkdir()
    shutil.copy(TINY_MODEL, tiny / "model.onnx")
    shutil.copy(ROOT / "tests/models/faulty/plugin.wasm", tiny / "plugin.wasm")
    (tiny / "model.toml").write_text(f"""
[graph]
file = "model.onnx"
backend = "onnx"
[plugin]
file = "plugin.wasm"
reuse_instances = {str(reuse).lower()}
[[inputs]]
name = "x"
datatype = "FP32"
shape = [3, 2]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [3, 2]
""")


# wasmserve's configurations: (magika batched, plugin instances reused, models, concurrency levels or None for all).
WASMSERVE = {
    "wasmserve": (False, True, ["magika", "tiny", "minilm x1", "minilm x8"], None),
    "wasmserve batching": (True, True, ["magika", "minilm x1"], [16, 32]),
    "wasmserve fresh instances": (False, False, ["magika", "tiny"], [16]),
}


def start(name, threads, scratch):
    port = free_port()
    python = sys.executable
    env = {"BENCH_THREADS": str(threads), "BENCH_TINY_MODEL": str(TINY_MODEL), "PYTHONPATH": str(PEERS),
           "BENCH_MAX_BATCH": str(MAX_BATCH), "BENCH_QUEUE_DELAY_US": str(DELAY_US), "BENCH_MINILM_DIR": minilm_dir()}
    if name in WASMSERVE:
        repo = scratch / name.replace(" ", "_")
        repo.mkdir()
        batching, reuse, _, _ = WASMSERVE[name]
        wasmserve_repository(repo, batching, reuse)
        ort = subprocess.run([python, str(ROOT / "tests/onnxruntime_library.py")], capture_output=True, text=True)
        return Running(name, [str(BINARY), "serve", "-r", str(repo), "--port", str(port)], port,
                       {"ORT_DYLIB_PATH": ort.stdout.strip(), "RUST_LOG": "warn"})
    if name == "triton":
        # PyTriton starts tritonserver with its own ports: HTTP here, gRPC and metrics above.
        # Its Python backend stub must load this Python's own libpython, not another one.
        port = 19000 + os.getpid() % 500 * 3
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"
        return Running(name, [python, str(PEERS / "triton_server.py"), str(port)], port, env)
    if name == "mlserver":
        models = scratch / "mlserver"
        models.mkdir()
        (scratch / "mlserver-metrics").mkdir()
        for model, settings in [
            ("magika", {"implementation": "runtime.MagikaRuntime", "max_batch_size": MAX_BATCH,
                        "max_batch_time": DELAY_US / 1e6}),
            ("tiny", {"implementation": "runtime.TinyRuntime"}),
            ("minilm", {"implementation": "runtime.MiniLMRuntime", "max_batch_size": MAX_BATCH,
                        "max_batch_time": DELAY_US / 1e6}),
        ]:
            (models / model).mkdir()
            (models / model / "model-settings.json").write_text(json.dumps({"name": model, **settings}))
        env |= {"PYTHONPATH": f"{PEERS}:{PEERS / 'mlserver'}", "MLSERVER_HTTP_PORT": str(port),
                "MLSERVER_METRICS_DIR": str(scratch / "mlserver-metrics"),
                "MLSERVER_GRPC_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port())}
        return Running(name, [str(Path(python).parent / "mlserver"), "start", str(models)], port, env)
    if name == "fastapi":
        return Running(name, [python, "-m", "uvicorn", "fastapi_server:app", "--port", str(port),
                              "--log-level", "warning"], port, env, cwd=PEERS)
    raise SystemExit(f"unknown server {name}")


def out_of_box(duration, concurrency=16):
    """What a new user meets: `make serve` (the examples as shipped, nothing configured, ONNX
    Runtime provisioned by the server) against a hand-written FastAPI app calling the
    `magika` package, one PDF per request. Returns rows as main() prints them."""
    pdf = (ROOT / "tests/fixtures/magika/files/doc.pdf").read_bytes()
    rows = []
    for name in ("wasmserve as shipped", "fastapi + magika"):
        port = free_port()
        if name.startswith("wasmserve"):
            server = Running(name, [str(BINARY), "serve", "-r", str(ROOT / "examples/models"), "--port", str(port)],
                             port, {"ORT_DYLIB_PATH": None, "RUST_LOG": "warn"}, ready=("/v2/health/ready",))
            url = f"{server.base}/v2/models/magika/infer"
        else:
            server = Running(name, [sys.executable, "-m", "uvicorn", "fastapi_magika:app", "--port", str(port),
                                    "--log-level", "warning"], port, {}, cwd=PEERS, ready=("/ready",))
            url = f"{server.base}/identify"
        print(f"# {name}: starting", file=sys.stderr, flush=True)
        load(url, pdf, 4, 2, raw=True)
        result = load(url, pdf, concurrency, duration, raw=True)
        print(f"# {name} magika (PDF) c={concurrency}: {result[0]:.0f} req/s", file=sys.stderr, flush=True)
        rows.append((name, "magika (PDF)", concurrency, *result, server.peak / 2**20, server.ready_s))
        server.stop()
    return rows


def fixed_answer(body, duration, concurrency=16):
    """nginx answering a fixed body to the same client: the ceiling for serving overhead.
    None when nginx is not installed (Debian: apt-get install nginx-light)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx:
        print("# nginx not installed (apt-get install nginx-light): no fixed-answer ceiling", file=sys.stderr)
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "nginx.conf"
        conf.write_text(f"""daemon off; master_process off; worker_processes auto; pid {d}/nginx.pid;
error_log {d}/error.log; events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}; server {{ listen 127.0.0.1:{port};
  location / {{ client_max_body_size 1m; default_type application/json; return 200 '{{"ok":1}}'; }} }} }}
""")
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", d], stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 10
            while get(f"http://127.0.0.1:{port}/")[0] != 200 and time.time() < deadline:
                time.sleep(0.05)
            return load(f"http://127.0.0.1:{port}/", body, concurrency, duration)
        finally:
            proc.kill()
            proc.wait()


def metrics(base):
    """wasmserve's counters and histogram sums for magika, by name."""
    out = {}
    for line in get(f"{base}/metrics")[1].decode().splitlines():
        if line.startswith("wasmserve_") and 'model="magika"' in line and "le=" not in line:
            out[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return out


def in_process_bound(threads, batch, sessions=1, spin=True, seconds=4):
    """Rows/s of ONNX Runtime alone on magika's graph, `batch` rows per run: `sessions`
    sessions of `threads` intra-op threads each, each run without pause from a thread of its own."""
    import onnxruntime as ort
    from magika import Magika

    path = Magika()._model_path
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    runs = [0] * sessions

    def drive(i, session, x, name, until):
        while time.perf_counter() < until:
            session.run(None, {name: x})
            runs[i] += 1

    made = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for _ in range(sessions)]
    inp = made[0].get_inputs()[0]
    x = np.random.default_rng(0).integers(0, 256, size=(batch, inp.shape[1]), dtype=np.int32)
    for session in made:
        session.run(None, {inp.name: x})
    started = time.perf_counter()
    until = started + seconds
    drivers = [threading.Thread(target=drive, args=(i, m, x, inp.name, until)) for i, m in enumerate(made)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join()
    return sum(runs) * batch / (time.perf_counter() - started)


def best_in_process(cores, batch):
    """The best in-process configuration (sessions x intra-op threads x spinning) on `cores`
    cores: (rows/s, description, every configuration measured)."""
    configs = [(1, cores, True), (1, cores, False)]
    if cores > 1:
        configs += [(cores, 1, True), (cores, cores, True), (cores, cores, False)]
    measured = {}
    for sessions, threads, spin in dict.fromkeys(configs):
        measured[(sessions, threads, spin)] = in_process_bound(threads, batch, sessions, spin)
    (sessions, threads, spin), rows = max(measured.items(), key=lambda kv: kv[1])
    return rows, f"{sessions} session(s) x {threads} thread(s), spinning {'on' if spin else 'off'}", measured


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", default="1,16,32")
    ap.add_argument("--threads", type=int, default=psutil.cpu_count(logical=True))
    ap.add_argument("--servers", default=",".join([*WASMSERVE, "triton", "mlserver", "fastapi"]))
    ap.add_argument("--no-out-of-box", dest="out_of_box", action="store_false",
                    help="skip the examples-as-shipped vs FastAPI + magika comparison")
    args = ap.parse_args()
    for tool, hint in [(BINARY, "cargo build --release"), (OHA, "make bench installs it"),
                       (ROOT / "examples/models/magika/plugin.wasm", "make plugins")]:
        if not Path(tool).exists():
            sys.exit(f"missing {tool}: {hint}")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, servers, extra = [], {}, {}
    # First, on a machine no other server has run on yet.
    first = out_of_box(args.duration) if args.out_of_box else []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.servers.split(","):
            print(f"# {name}: starting", file=sys.stderr, flush=True)
            server = start(name, args.threads, Path(scratch))
            body = bodies(name == "triton")
            _, _, models, only = WASMSERVE.get(name, (None, None, list(MODELS), None))
            for model in models:
                url = f"{server.base}/v2/models/{MODELS[model][0]}/infer"
                load(url, body[model], 4, 2)  # warm up: plans, caches, batch sizes
                for c in [c for c in levels if only is None or c in only]:
                    measured = name in WASMSERVE and model == "magika" and c == 16
                    before = metrics(server.base) if measured else None
                    result = load(url, body[model], c, args.duration)
                    rows.append((name, model, c, *result))
                    print(f"# {name} {model} c={c}: {result[0]:.0f} req/s", file=sys.stderr, flush=True)
                    if measured:
                        after = metrics(server.base)
                        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                        requests = d["wasmserve_inference_request_success_total"]
                        stage = {k: 1e3 * d[f"wasmserve_{k}_duration_seconds_sum"] / requests
                                 for k in ("request", "queue", "preprocess", "compute", "postprocess")}
                        extra[name] = (
                            d["wasmserve_inference_count_total"] / d["wasmserve_inference_exec_count_total"],
                            1e3 * (stage["preprocess"] + stage["postprocess"]), stage)
            servers[name] = (server.peak / 2**20, server.ready_s)
            server.stop()

    ceiling = fixed_answer(bodies(False)["tiny"], args.duration) if 16 in levels else None
    cores = psutil.cpu_count(logical=True)
    print(f"\n{cores} CPUs ({platform()}), peers' ONNX Runtime intra-op threads {args.threads} (wasmserve: its "
          f"defaults), {args.duration} s per cell, oha {oha_version()}\n")
    print("| server | model | concurrency | req/s | p50 ms | p99 ms | failed | peak RSS MiB | s to ready |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    table = first + [(n, m, c, rps, p50, p99, failed, *servers[n]) for n, m, c, rps, p50, p99, failed in rows]
    if ceiling:
        table.append(("nginx, fixed answer", "(none)", 16, *ceiling, float("nan"), float("nan")))
    for name, model, c, rps, p50, p99, failed, rss, ready in table:
        print(f"| {name} | {model} | {c} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {failed} | {rss:.0f} | {ready:.2f} |")

    cell = {(n, m, c): (rps, p99) for n, m, c, rps, _, p99, *_ in table}
    peers = [p for p in ("triton", "mlserver", "fastapi") if p in servers]
    print()
    if first:
        (w, wp99), (f, fp99) = cell[("wasmserve as shipped", "magika (PDF)", 16)], cell[("fastapi + magika", "magika (PDF)", 16)]
        print(f"- out of the box (examples as shipped vs FastAPI + magika), one PDF, concurrency 16: {w / f:.2f}x the "
              f"throughput, p99 {wp99 / fp99:.2f}x (target: >= 1.0x, <= 0.7x)")
    best_rows, best_desc, measured = best_in_process(cores, 1)
    print(f"- ONNX Runtime alone on magika, best of {len(measured)} configurations: {best_rows:.0f} rows/s with {best_desc} ("
          + ", ".join(f"{s}x{t}{'' if sp else ' no spin'}: {r:.0f}" for (s, t, sp), r in measured.items()) + ")")
    if "wasmserve" in servers and peers and 16 in levels:
        best = max(peers, key=lambda p: cell[(p, "magika", 16)][0])
        (w, wp99), (b, bp99) = cell[("wasmserve", "magika", 16)], cell[(best, "magika", 16)]
        print(f"- magika, concurrency 16: {w / b:.2f}x the throughput of the best peer ({best}); "
              f"p99 {wp99 / bp99:.2f}x its p99 (target: >= 1.15x, <= 0.5x); {w / best_rows:.0%} of the best "
              f"in-process configuration (target: >= 95%)")
    if "wasmserve" in servers and 16 in levels:
        tiny = cell[("wasmserve", "tiny", 16)][0]
        line = f"- tiny, concurrency 16: {tiny:.0f} req/s = {tiny / 9436:.2f}x the 9,436 before this work (target: >= 3x)"
        if "mlserver" in servers:
            line += f"; {tiny / cell[('mlserver', 'tiny', 16)][0]:.1f}x MLServer"
        if ceiling:
            line += f"; {tiny / ceiling[0]:.0%} of nginx's fixed answer (target: >= 40%)"
        print(line)
    if "wasmserve" in servers and peers and 16 in levels:
        for model in ("minilm x1", "minilm x8"):
            best = max(peers, key=lambda p: cell[(p, model, 16)][0])
            (w, wp99), (b, bp99) = cell[("wasmserve", model, 16)], cell[(best, model, 16)]
            line = (f"- {model} (sentences per request), concurrency 16: {w / b:.2f}x the throughput of the best peer "
                    f"({best}), p99 {wp99 / bp99:.2f}x its p99")
            if ("wasmserve batching", model, 16) in cell:
                batched, bp = cell[("wasmserve batching", model, 16)]
                line += f"; with [batching]: {batched / b:.2f}x, p99 {bp / bp99:.2f}x"
            print(line)
    bound = {b: in_process_bound(args.threads, b) for b in (1, 32)}
    print(f"- ONNX Runtime alone on magika, 1 session x {args.threads} threads: {bound[1]:.0f} rows/s at batch 1, "
          f"{bound[32]:.0f} rows/s at batch 32 ({bound[32] / bound[1]:.2f}x): what batching can gain on this CPU")
    if {"wasmserve", "wasmserve batching"} <= servers.keys() and 32 in levels:
        ratio = cell[("wasmserve batching", "magika", 32)][0] / cell[("wasmserve", "magika", 32)][0]
        print(f"- magika, concurrency 32: batching on gives {ratio:.2f}x the throughput of batching off")
    for name, (batch, plugin_us, stage) in extra.items():
        served = cell[(name, "magika", 16)][0]
        print(f"- {name}, magika at concurrency 16: batches of {batch:.1f} rows on average; served {served:.0f} req/s; "
              f"plugin cost {plugin_us:.0f} µs per request (preprocess + postprocess, instance included)")
        print(f"  where a request's time went (ms, mean): " + ", ".join(f"{k} {v:.2f}" for k, v in stage.items()))


def platform():
    try:
        model = next(l for l in open("/proc/cpuinfo") if l.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        model = "unknown CPU"
    return model


def oha_version():
    return subprocess.run([str(OHA), "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
