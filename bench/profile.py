#!/usr/bin/env python3
"""Where the server's CPU goes on the tiny model (serving overhead only), at concurrency 16.

Starts one or more wasmserve binaries in turn on bench/compare.py's `tiny` model (mul_1.onnx
behind the test suite's pass-through plugin, ONNX Runtime), drives each with oha, and prints
one row per binary: requests/s, the server's CPU time per request (user and kernel, from
/proc), its context switches per request (every thread's, voluntary and not: the hand-offs a
request makes between threads), and with `--perf` the share of `perf record -e cpu-clock`
samples taken in the kernel and the hottest symbols (this machine has no hardware counters).

    python3 bench/profile.py                                      # target/release/wasmserve
    python3 bench/profile.py --binary /tmp/old/wasmserve --binary target/release/wasmserve --perf
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import OHA, ROOT, bodies, wasmserve_repository  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_and_switches(pid):
    """(user s, system s, context switches) of every thread of `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / TICK, int(fields[12]) / TICK
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        switches += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return user, system, switches


def run(binary, repo, seconds, concurrency, perf):
    proc = subprocess.Popen([binary, "serve", "-r", str(repo), "--port", "0"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
    addr = None
    for line in proc.stderr:
        if m := re.search(r"listening on (\S+)", line):
            addr = m.group(1)
        if "all models loaded" in line:
            break
    url = f"http://{addr}/v2/models/tiny/infer"
    body = Path(tempfile.mktemp(suffix=".json"))
    body.write_bytes(bodies(False)["tiny"])
    oha = [str(OHA), "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body), "--no-tui",
           "--output-format", "json", "-w"]
    try:
        subprocess.run([*oha, "-z", "2s", url], check=True, capture_output=True)  # warm up
        before = cpu_and_switches(proc.pid)
        recorder = None
        if perf:
            data = tempfile.mktemp(suffix=".perf")
            recorder = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", data, "-p", str(proc.pid),
                                         "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = json.loads(subprocess.run([*oha, "-z", f"{seconds}s", url], check=True, capture_output=True).stdout)
        after = cpu_and_switches(proc.pid)
        ok = out.get("statusCodeDistribution", {}).get("200", 0)
        row = {"binary": binary, "req/s": ok / out["summary"]["total"], "p99 ms": out["latencyPercentiles"]["p99"] * 1000,
               "user µs/req": 1e6 * (after[0] - before[0]) / ok, "kernel µs/req": 1e6 * (after[1] - before[1]) / ok,
               "switches/req": (after[2] - before[2]) / ok}
        if recorder:
            recorder.wait()
            row |= perf_summary(data)
        return row
    finally:
        proc.kill()
        proc.wait()
        body.unlink()


def perf_summary(data):
    """The kernel's share of the samples and the five hottest symbols (self time)."""
    def report(sort):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none", "--sort", sort, "--stdio",
                              "-q"], capture_output=True, text=True).stdout
        return [(float(l.split()[0].rstrip("%")), " ".join(l.split()[1:])) for l in out.splitlines() if l.strip()]
    kernel = sum(share for share, dso in report("dso") if "kernel" in dso)
    hot = [f"{share:5.2f}%  {sym[:90]}" for share, sym in report("sym")[:5]]
    os.unlink(data)
    return {"kernel share": kernel / 100, "hottest": hot}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", action="append", help="wasmserve binaries to compare (default: target/release/wasmserve)")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--perf", action="store_true", help="also sample with perf (needs linux-perf)")
    args = ap.parse_args()
    binaries = args.binary or [str(ROOT / "target/release/wasmserve")]
    rows = []
    with tempfile.TemporaryDirectory() as repo:
        wasmserve_repository(Path(repo), batching=False, reuse=True, minilm=False)
        for binary in binaries:
            rows.append(run(binary, repo, args.seconds, args.concurrency, args.perf))
    print(f"\ntiny model, concurrency {args.concurrency}, {args.seconds} s, {os.cpu_count()} CPUs\n")
    print("| binary | req/s | p99 ms | user µs/req | kernel µs/req | CPU µs/req | context switches/req | kernel share of samples |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = f"{r['kernel share']:.0%}" if "kernel share" in r else "-"
        print(f"| {r['binary']} | {r['req/s']:.0f} | {r['p99 ms']:.2f} | {r['user µs/req']:.1f} | {r['kernel µs/req']:.1f} "
              f"| {r['user µs/req'] + r['kernel µs/req']:.1f} | {r['switches/req']:.2f} | {share} |")
    for r in rows:
        if r.get("hottest"):
            print(f"\nhottest symbols (self), {r['binary']}:")
            for h in r["hottest"]:
                print(f"  {h}")


if __name__ == "__main__":
    main()
