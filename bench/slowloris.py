#!/usr/bin/env python3
"""Slowloris against wasmserve: how long slow connections stay open, and how a real client
fares meanwhile.

Starts wasmserve on the example models, opens CONNECTIONS connections that each send a
request line and then one header byte every 2 s (never finishing their headers), and
meanwhile sends a real inference (magika, one small file) every 100 ms on fresh connections.
Prints how many slow connections were still open at each mark, and the real client's
latency percentiles and failures over the whole run.

    python bench/slowloris.py [--binary target/release/wasmserve] [--connections 1000] [--seconds 30]
"""

import argparse
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(binary, args):
    proc = subprocess.Popen([binary, "serve", "--repository", str(ROOT / "examples/models"), "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"listening on (\S+)", line):
            host, port = m[1].rsplit(":", 1)
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    while ask((host, int(port)), "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") != 200:
        time.sleep(0.2)
    return proc, (host, int(port))


def ask(address, request, body=b""):
    try:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(request.encode() + body)
            return int(s.recv(12)[9:12])
    except (OSError, ValueError):
        return 0


def is_open(s):
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/wasmserve"))
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=30)
    args, extra = ap.parse_known_args()
    proc, address = start(args.binary, extra)
    try:
        slow = []
        for _ in range(args.connections):
            s = socket.create_connection(address)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        opened = time.time()
        latencies, failures, marks = [], 0, {}
        body = b"#!/bin/sh\necho hello\n"
        request = (f"POST /v2/models/magika/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        next_byte = opened
        while (elapsed := time.time() - opened) < args.seconds:
            if time.time() >= next_byte:
                for s in slow:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                next_byte += 2
            for mark in (1, 5, 9, 11, 15, 30):
                if elapsed >= mark and mark not in marks:
                    marks[mark] = sum(is_open(s) for s in slow)
            started = time.time()
            if ask(address, request, body) == 200:
                latencies.append((time.time() - started) * 1000)
            else:
                failures += 1
            time.sleep(0.1)
        latencies.sort()
        pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")
        print(f"{args.connections} slow connections ({' '.join(extra) or 'defaults'})\n")
        print("| seconds after opening | " + " | ".join(str(m) for m in marks) + " |")
        print("|---|" + "---:|" * len(marks))
        print("| slow connections open | " + " | ".join(str(n) for n in marks.values()) + " |")
        print(f"\nreal client meanwhile: {len(latencies)} answered, {failures} failed, "
              f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
