#!/usr/bin/env python3
"""Many models in one server: on-demand loading under a memory budget against all eager,
and Triton and MLServer loading the same models, in one run; prints one table.

Generates a repository of N copies of the magika example (ONNX Runtime) under different
names: each is a model of its own (its own graph session, plugin instances, threads), their
files shared through the fetch cache. Then, one after the other:

1. wasmserve with every model eager: time to ready, resident memory (RSS), and what the
   server charges the models (the repository index's resident_bytes).
2. The same traffic against it: requests drawn from a Zipf distribution over the models
   (s = --zipf, a seeded random order of ranks), --concurrency clients for --seconds.
3. wasmserve with every model on demand and --model-memory-mib set to --fraction of what the
   eager run charged, the same traffic: hits and misses (a miss is a request whose answer
   carries `Server-Timing: load;dur=W, model-load;dur=L`: it waited W for its model's load,
   which itself took L; what a miss took beyond L is its queue behind other loads or for
   room, and its serving), loads, evictions,
   failures, RSS sampled every 100 ms against budget + the server's own base (its RSS ready
   with no model loaded), and load times from the log: the first load of the first model on
   an empty cache (download, hash, compile, optimise) against reloads of evicted models.
4. Triton (PyTriton's tritonserver, a Python model per copy) and MLServer (a runtime per
   copy), each copy its own magika session, loading --triton-models and --mlserver-models
   copies at once: time to ready and RSS (the whole process tree).

    make examples bench-venv && cargo build --release
    .venv-bench/bin/python bench/density.py [--models 200] [--seconds 60] [--triton-models 50]
"""

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from compare import PEERS, Running, free_port
from serving import ROOT, start, stop

MAGIKA = ROOT / "examples/models/magika"
FILE = (ROOT / "tests/fixtures/magika/files/main.rs").read_bytes()
MIB = 1 << 20
# Failed requests' error bodies, counted.
ERRORS = {}


def repository(into, n, policy, executions=0):
    """N copies of magika, `policy` eager or on_demand, with `[scheduling] executions` when
    not 0; plugin and data linked, not copied."""
    names = [f"magika-{i:03}" for i in range(n)]
    scheduling = f"\n[scheduling]\nexecutions = {executions}\n" if executions else ""
    for name in names:
        d = into / name
        d.mkdir(parents=True)
        (d / "plugin.wasm").symlink_to(MAGIKA / "plugin.wasm")
        toml = (MAGIKA / "model.toml").read_text()
        (d / "model.toml").write_text(f"{toml}\n[load]\npolicy = \"{policy}\"\n{scheduling}")
    return names


class Sampler:
    """RSS of a process tree every 100 ms: peak and every sample."""

    def __init__(self, pid):
        self.root, self.samples, self.running = psutil.Process(pid), [], True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while self.running:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.samples.append(sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)

    def now(self):
        time.sleep(0.25)
        return self.samples[-1]

    def stop(self):
        self.running = False
        return max(self.samples, default=0)


def zipf_order(names, s, seed):
    """The models in a seeded random rank order, and the Zipf weight of each rank."""
    order = names[:]
    random.Random(seed).shuffle(order)
    return order, [1 / (rank ** s) for rank in range(1, len(order) + 1)]


def traffic(addr, names, s, seconds, concurrency, seed=7):
    """Zipf-drawn requests (magika, one file raw) from `concurrency` threads for `seconds`;
    returns [(model, ms, status, load)]: `load` is None for a request that found its model in
    memory, else (ms it waited for the load, ms the load itself took), from `Server-Timing`."""
    order, weights = zipf_order(names, s, seed)
    host, port = addr.split(":")
    results, until = [], time.perf_counter() + seconds
    errors = ERRORS

    def client(i):
        rng = random.Random(seed * 1000 + i)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while time.perf_counter() < until:
            model = rng.choices(order, weights)[0]
            started = time.perf_counter()
            try:
                conn.request("POST", f"/v2/models/{model}/infer", FILE, {"Inference-Header-Content-Length": "0"})
                r = conn.getresponse()
                body = r.read()
                status, timing = r.status, r.getheader("server-timing")
                if status != 200:
                    errors[body.decode(errors="replace")[:160]] = errors.get(body.decode(errors="replace")[:160], 0) + 1
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                status, timing = 0, None
            results.append((model, (time.perf_counter() - started) * 1000, status, load_timing(timing)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def busy(proc, run):
    """`run()`'s result, and the cores the server and this script (the clients) kept busy
    while it ran: CPU seconds over wall seconds."""
    server, started, clients = psutil.Process(proc.pid), time.perf_counter(), time.process_time()
    before = sum(server.cpu_times()[:2])
    result = run()
    wall = time.perf_counter() - started
    return result, ((sum(server.cpu_times()[:2]) - before) / wall, (time.process_time() - clients) / wall)


def load_timing(header):
    """(waited, model-load) in ms out of `Server-Timing: load;dur=W, model-load;dur=L`; None
    without one."""
    if not header:
        return None
    durations = dict(m.split(";dur=") for m in header.split(", "))
    return float(durations["load"]), float(durations["model-load"])


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def metric(addr, name):
    text = http.client.HTTPConnection(*addr.split(":"))
    text.request("GET", "/metrics")
    body = text.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def index(addr):
    conn = http.client.HTTPConnection(*addr.split(":"))
    conn.request("GET", "/v2/repository/index")
    return json.loads(conn.getresponse().read())


def loads_from_log(log):
    """[(model, cause, elapsed_ms)] of every 'loaded' line of a JSON log."""
    loads = []
    for line in log:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        fields = event.get("fields", {})
        if fields.get("message") == "loaded":
            loads.append((fields.get("model"), fields.get("cause"), fields.get("elapsed_ms")))
    return loads


TOKEN = "density-bench-control-token"


SPIN = []


def wasmserve(repo, cache, *args):
    ort = subprocess.run([sys.executable, str(ROOT / "tests/onnxruntime_library.py")], capture_output=True, text=True)
    env = {"ORT_DYLIB_PATH": ort.stdout.strip(), "WASMSERVE_LOG_FORMAT": "json", "RUST_LOG": "info",
           "WASMSERVE_CONTROL_TOKEN": TOKEN}
    # Many ONNX Runtime sessions share one intra-op pool (a pool each would put spinning
    # threads of every model on every core): what docs/many-models.md advises.
    threads = os.cpu_count()
    return start(repo, "--cache-dir", cache, "--onnxruntime-threads", threads, *SPIN, *args, env=env, timeout=1800)


def peer(name, n, scratch):
    """Triton or MLServer with n magika copies, each its own session: (seconds to ready, RSS)."""
    names = [f"magika-{i:03}" for i in range(n)]
    port = free_port()
    env = {"BENCH_THREADS": "1", "PYTHONPATH": f"{PEERS}:{PEERS / 'mlserver'}", "BENCH_MODELS": ",".join(names)}
    ready = tuple(f"/v2/models/{m}/ready" for m in names)
    python = sys.executable
    if name == "triton":
        import sysconfig
        port = 19000 + os.getpid() % 500 * 3
        env["LD_LIBRARY_PATH"] = f"{sysconfig.get_config_var('LIBDIR')}:{os.environ.get('LD_LIBRARY_PATH', '')}"
        cmd = [python, str(PEERS / "triton_many.py"), str(port)]
    else:
        models = scratch / f"mlserver-{n}"
        for m in names:
            (models / m).mkdir(parents=True)
            (models / m / "model-settings.json").write_text(json.dumps({"name": m, "implementation": "runtime.MagikaRuntime"}))
        (scratch / "mlserver-metrics").mkdir(exist_ok=True)
        env |= {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()),
                "MLSERVER_METRICS_PORT": str(free_port()), "MLSERVER_METRICS_DIR": str(scratch / "mlserver-metrics")}
        cmd = [str(Path(python).parent / "mlserver"), "start", str(models)]
    running = Running(f"{name} x{n}", cmd, port, env, ready=ready)
    time.sleep(1)
    procs = [psutil.Process(running.proc.pid), *psutil.Process(running.proc.pid).children(recursive=True)]
    steady = sum(p.memory_info().rss for p in procs)
    running.stop()
    return running.ready_s, steady, running.peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--fraction", type=float, default=0.2, help="the budget, as a share of what all models cost")
    ap.add_argument("--triton-models", type=int, default=50,
                    help="PyTriton runs a Python backend process per model, about 100 MiB each: 200 would not fit")
    ap.add_argument("--mlserver-models", type=int, default=200)
    ap.add_argument("--peers", default="triton,mlserver")
    ap.add_argument("--executions", type=int, default=0,
                    help="[scheduling] executions in every copy, eager and on demand (0: the model's default)")
    ap.add_argument("--budget-mib", type=int, default=0,
                    help="the on-demand run's --model-memory-mib (0: --fraction of what the eager run charged)")
    ap.add_argument("--concurrent-loads", type=int, default=0,
                    help="wasmserve's --concurrent-loads for the on-demand run (0: its default, the number of CPUs)")
    ap.add_argument("--spin", action="store_true", help="the shared pool's threads spin (--onnxruntime-spin)")
    args = ap.parse_args()
    SPIN.extend(["--onnxruntime-spin"] if args.spin else [])
    scratch = Path(tempfile.mkdtemp(prefix="wasmserve-density-"))
    rows = []
    try:
        # The first load of all, on an empty cache: download, hash, compile, optimise.
        names = repository(scratch / "on_demand", args.models, "on_demand", args.executions)
        cache = scratch / "cache"
        proc, addr, log, _ = wasmserve(scratch / "on_demand", cache, "--no-prefetch")
        conn = http.client.HTTPConnection(*addr.split(":"), timeout=600)
        conn.request("POST", f"/v2/models/{names[0]}/infer", FILE, {"Inference-Header-Content-Length": "0"})
        assert conn.getresponse().read() and True
        time.sleep(0.2)
        cold = [ms for _, cause, ms in loads_from_log(log) if cause == "request"][0]
        # The server's own base: that model unloaded again (the backend's one-time start and
        # the plugin engine stay), nothing loaded.
        conn.request("POST", f"/v2/repository/models/{names[0]}/unload", b"", {"Authorization": f"Bearer {TOKEN}"})
        assert conn.getresponse().status == 200
        base = Sampler(proc.pid).now()
        stop(proc)

        # All eager.
        repository(scratch / "eager", args.models, "eager", args.executions)
        proc, addr, log, ready_s = wasmserve(scratch / "eager", cache)
        sampler = Sampler(proc.pid)
        eager_rss = sampler.now()
        charged = sum(m.get("resident_bytes", 0) for m in index(addr))
        eager, eager_cpu = busy(proc, lambda: traffic(addr, names, args.zipf, args.seconds, args.concurrency))
        eager_peak = sampler.stop()
        stop(proc)
        rows.append(("wasmserve, all eager", args.models, ready_s, eager_rss, eager_peak))

        # On demand under a budget.
        budget_mib = args.budget_mib or max(1, int(charged * args.fraction / MIB))
        loads_at_once = ("--concurrent-loads", args.concurrent_loads) if args.concurrent_loads else ()
        proc, addr, log, _ = wasmserve(scratch / "on_demand", cache, "--model-memory-mib", budget_mib, *loads_at_once)
        sampler = Sampler(proc.pid)
        demand, demand_cpu = busy(proc, lambda: traffic(addr, names, args.zipf, args.seconds, args.concurrency))
        end_rss = sampler.now()
        in_memory = [m for m in index(addr) if m["state"] == "READY"]
        end_charged = sum(m["resident_bytes"] for m in in_memory)
        demand_peak = sampler.stop()
        demand_samples = sampler.samples
        steady = statistics.median(sampler.samples[len(sampler.samples) // 2:])
        loads, evictions = metric(addr, "wasmserve_model_loads_total"), metric(addr, "wasmserve_model_evictions_total")
        load_failures = metric(addr, "wasmserve_model_load_failures_total")
        reloads = [ms for _, cause, ms in loads_from_log(log) if cause == "request"]
        stop(proc)

        for peer_name in [p for p in args.peers.split(",") if p]:
            n = args.triton_models if peer_name == "triton" else args.mlserver_models
            ready, rss, peak = peer(peer_name, n, scratch)
            rows.append((peer_name, n, ready, rss, peak))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ok = lambda results: [r for r in results if r[2] == 200]
    hits = [ms for _, ms, status, load in ok(demand) if not load]
    # Each miss: its time, what it waited for the load, the load itself, and what it took
    # beyond its model's load (queued behind other loads or for room, then served).
    missed = [(ms, *load) for _, ms, status, load in ok(demand) if load]
    misses = [ms for ms, _, _ in missed]
    waited = [w for _, w, _ in missed]
    own = [o for _, _, o in missed]
    beyond = [ms - o for ms, _, o in missed]
    # Beyond the load: queued before it started (behind other loads, for room), and served
    # after it (the request's own run, behind the other requests in flight).
    queued = [w - o for _, w, o in missed]
    served = [ms - w for ms, w, _ in missed]
    eager_ms = [ms for _, ms, _, _ in ok(eager)]
    failed = sum(1 for r in demand if r[2] != 200) + sum(1 for r in eager if r[2] != 200)
    limit = base + budget_mib * MIB
    print(f"\n{args.models} magika copies (ONNX Runtime), Zipf s={args.zipf}, concurrency {args.concurrency}, "
          f"{args.seconds} s of traffic per run; {os.cpu_count()} cores; "
          f"executions {args.executions or 'as each model defaults'}; one shared ONNX Runtime pool of "
          f"{os.cpu_count()} threads{', spinning' if args.spin else ''}")
    source = "set by --budget-mib" if args.budget_mib else f"{args.fraction:.0%}"
    print(f"\nwasmserve on demand: budget {budget_mib} MiB ({source}; the eager run charged {charged / MIB:.0f} MiB), "
          f"base (ready, nothing loaded) {base / MIB:.0f} MiB")
    print("| | value |\n|---|---|")
    print(f"| requests (failed) | {len(demand)} ({sum(1 for r in demand if r[2] != 200)}) |")
    cores = lambda cpu: f"server {cpu[0]:.2f}, clients {cpu[1]:.2f}, of {os.cpu_count()}"
    print(f"| cores busy during the traffic (all eager) | {cores(demand_cpu)} ({cores(eager_cpu)}) |")
    print(f"| hit rate | {len(hits) / max(1, len(hits) + len(misses)):.1%} |")
    print(f"| hits p50 / p99 ms | {pct(hits, 50):.1f} / {pct(hits, 99):.1f} |")
    print(f"| same traffic all eager p50 / p99 ms | {pct(eager_ms, 50):.1f} / {pct(eager_ms, 99):.1f} |")
    print(f"| misses p50 / p99 ms | {pct(misses, 50):.1f} / {pct(misses, 99):.1f} |")
    print(f"| of which: waiting for the load p50 / p99 ms | {pct(waited, 50):.1f} / {pct(waited, 99):.1f} |")
    print(f"| the load itself p50 / p99 ms (Server-Timing model-load) | {pct(own, 50):.1f} / {pct(own, 99):.1f} |")
    print(f"| a miss beyond its model's load p50 / p99 ms (queue, room, serving) | {pct(beyond, 50):.1f} / "
          f"{pct(beyond, 99):.1f} |")
    print(f"| of which: queued before the load started p50 / p99 ms | {pct(queued, 50):.1f} / {pct(queued, 99):.1f} |")
    print(f"| of which: served after it p50 / p99 ms | {pct(served, 50):.1f} / {pct(served, 99):.1f} |")
    within = sum(1 for b in beyond if b <= 50) / max(1, len(beyond))
    print(f"| misses within their model's load + 50 ms | {within:.1%} |")
    print(f"| loads / evictions / failed loads | {loads:.0f} / {evictions:.0f} / {load_failures:.0f} |")
    print(f"| reload p50 / p99 ms (evicted model, cached files) | {pct(reloads, 50):.0f} / {pct(reloads, 99):.0f} |")
    print(f"| first load on an empty cache ms | {cold:.0f} ({cold / max(1, pct(reloads, 50)):.1f}x the median reload) |")
    print(f"| RSS peak / steady MiB | {demand_peak / MIB:.0f} / {steady / MIB:.0f} |")
    print(f"| base + budget MiB | {limit / MIB:.0f} (peak {(demand_peak / limit - 1):+.1%}) |")
    print(f"| at the end: models in memory, charged MiB, RSS over base MiB | {len(in_memory)}, "
          f"{end_charged / MIB:.0f}, {(end_rss - base) / MIB:.0f} |")
    print(f"| all eager: charged MiB, RSS over base MiB | {charged / MIB:.0f}, {(eager_rss - base) / MIB:.0f} |")
    windows = [max(demand_samples[i:i + 50]) / MIB for i in range(0, len(demand_samples), 50)]
    print("on demand, RSS peak per 5 s, MiB: " + " ".join(f"{w:.0f}" for w in windows))
    print("\nLoading every model at once")
    print("| server | models | seconds to ready | RSS ready MiB | peak MiB | MiB per model |\n|---|---|---|---|---|---|")
    for name, n, ready, rss, peak in rows:
        print(f"| {name} | {n} | {ready:.1f} | {rss / MIB:.0f} | {peak / MIB:.0f} | {rss / MIB / n:.1f} |")
    w = rows[0][3] / rows[0][1]
    for name, n, ready, rss, peak in rows[1:]:
        print(f"{name}: {rss / n / w:.1f}x wasmserve's memory per model")
    print(f"\nrequests all eager: {len(eager)}; failed requests, both runs: {failed}")
    for message, count in sorted(ERRORS.items(), key=lambda e: -e[1]):
        print(f"  {count} x {message}")


if __name__ == "__main__":
    main()
