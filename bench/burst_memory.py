#!/usr/bin/env python3
"""The server's memory through a burst of maximum-size requests, with and without the request
memory budget.

Starts wasmserve on the example models, sends CLIENTS requests at once, each a JSON body of
just under --max-body-mib holding one long sentence for `minilm` (the case that once took the
server from 280 MiB to 4.6 GiB), as curl sends large bodies (`Expect: 100-continue`), and
prints one row per setting: answers by status, resident memory before, the peak during, and
the resident memory 3 s after. Linux only (/proc).

    python bench/burst_memory.py [--binary target/release/wasmserve] [--clients 100]
"""

import argparse
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_kib(pid, field):
    return int(re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())[1])


def start(binary, args):
    proc = subprocess.Popen([binary, "serve", "--repository", str(ROOT / "examples/models"), "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"listening on (\S+)", line):
            address = m[1]
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    host, port = address.rsplit(":", 1)
    while True:
        try:
            with socket.create_connection((host, int(port))) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).endswith(b"200"):
                    return proc, (host, int(port))
        except OSError:
            pass
        time.sleep(0.2)


def send(address, body):
    with socket.create_connection(address) as s:
        s.settimeout(300)
        s.sendall(f"POST /v2/models/minilm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode())
        first = s.recv(4096)
        if first.startswith(b"HTTP/1.1 100"):
            try:
                s.sendall(body)
            except OSError:
                pass
            first = first.split(b"\r\n\r\n", 1)[1] or s.recv(4096)
        return int(first[9:12])


def burst(binary, args, clients, body):
    proc, address = start(binary, args)
    try:
        before = status_kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(send(address, body))) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = status_kib(proc.pid, "VmHWM")
        time.sleep(3)
        after = status_kib(proc.pid, "VmRSS")
        return Counter(statuses), before, peak, after
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/wasmserve"))
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--mb", type=int, default=60, help="body size, MB (under --max-body-mib 64)")
    args = ap.parse_args()
    body = ('{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["' + "a" * (args.mb * 10**6)
            + '"]}]}').encode()
    settings = [("no budget (--request-memory-mib 1000000)", ["--request-memory-mib", "1000000"]),
                ("default budget (1024 MiB)", []),
                ("the manifests' budget (512 MiB)", ["--request-memory-mib", "512"])]
    print(f"{args.clients} clients at once, each {args.mb} MB of JSON for minilm\n")
    print("| setting | answers | RSS before, MiB | peak, MiB | 3 s after, MiB | after / before |")
    print("|---|---|---:|---:|---:|---:|")
    for name, extra in settings:
        statuses, before, peak, after = burst(args.binary, extra, args.clients, body)
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        print(f"| {name} | {answers} | {before >> 10} | {peak >> 10} | {after >> 10} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
