#!/usr/bin/env python3
"""What a hostile request body costs the server in memory.

Starts wasmserve on the test models, sends each kind of oversized-but-admissible JSON body
(just under --max-body-mib) to the `faulty` model, and prints the growth of the server's
peak RSS per request, as a multiple of the body. Each case is refused with a 400; what
matters is what the server held before it refused. Peak RSS is reset between cases through
/proc/PID/clear_refs (Linux).

    python bench/request_memory.py [--binary target/debug/wasmserve] [--mib 48]
"""

import argparse
import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bodies(size):
    """Each case: (name, body of about `size` bytes)."""
    def pad(template, unit):
        """`template` with `@` replaced by copies of `unit` (a function of the copy's index)."""
        head, tail = template.split("@")
        make = unit if callable(unit) else (lambda i: unit)
        parts, room = [], size - len(head) - len(tail)
        while room > 0:
            parts.append(make(len(parts)))
            room -= len(parts[-1])
        return (head + "".join(parts[:-1]).rstrip(",") + tail).encode()

    x = '{"name":"x","shape":[3,2],"datatype":"FP32","data":[1,2,3,4,5,6]}'
    return [
        ("data, flat", pad('{"inputs":[{"name":"x","shape":[3,2],"datatype":"FP32","data":[@]}]}', "0,")),
        ("data, nested", pad('{"inputs":[{"name":"x","shape":[3,2],"datatype":"FP32","data":[@]}]}', "[0],")),
        ("a parameter's value", pad('{"parameters":{"p":[@]},"inputs":[' + x + "]}", "0,")),
        ("parameters", pad('{"parameters":{@},"inputs":[' + x + "]}", lambda i: f'"p{i}":0,')),
        ("inputs", pad('{"inputs":[@]}', x + ",")),
        ("shape", pad('{"inputs":[{"name":"x","shape":[@],"datatype":"FP32","data":[1]}]}', "1,")),
        ("outputs", pad('{"inputs":[' + x + '],"outputs":[@]}', '{"name":"y"},')),
    ]


def rss_peak_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/debug/wasmserve"))
    ap.add_argument("--mib", type=int, default=48, help="size of each body (MiB)")
    args = ap.parse_args()
    limit = args.mib + 8
    proc = subprocess.Popen(
        [args.binary, "serve", "--repository", str(ROOT / "tests/models"), "--port", "0",
         "--max-body-mib", str(limit)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        address = None
        for line in proc.stderr:
            m = re.search(r"listening on (\S+)", line)
            address = address or (m and m[1])
            if "ready" in line and address:
                break
        host, port = address.rsplit(":", 1)
        print(f"{'body':<22}{'MiB':>6}{'status':>8}{'peak RSS growth MiB':>22}{'x body':>9}")
        for name, body in bodies(args.mib << 20):
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            time.sleep(0.2)
            before = rss_peak_kib(proc.pid)
            conn = http.client.HTTPConnection(host, int(port), timeout=300)
            conn.request("POST", "/v2/models/faulty/infer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            growth = (rss_peak_kib(proc.pid) - before) / 1024
            mib = len(body) / (1 << 20)
            print(f"{name:<22}{mib:>6.1f}{response.status:>8}{growth:>22.0f}{growth / mib:>9.1f}")
            if response.status != 400:
                print("   ", answer[:200], file=sys.stderr)
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
