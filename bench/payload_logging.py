"""What payload logging costs inference, and what a bad sink does to it: magika on one file
at concurrency 16 (oha, the same body, one run after the other on one machine) with logging
off, to a sink that answers at once, to one that answers after 5 s, and to a dead one. Prints
a table: throughput, p50 and p99 against logging off, failed requests, and the events sent,
failed and dropped. Not a test; run it after changing `runtime/src/observe/payloads.rs`:

    .venv-bench/bin/python bench/payload_logging.py [--duration 20]
"""

import argparse
import re
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import serving
from compare import MAGIKA_FILE, bodies, load


def sink(delay):
    """An HTTP sink that answers 200 after `delay` seconds; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def events(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    found = dict(re.findall(r'wasmserve_payload_events_total\{outcome="(\w+)"\} (\d+)', text))
    queued = re.search(r"wasmserve_payload_queue_bytes (\d+)", text)
    return {**{k: int(found.get(k, 0)) for k in ("sent", "failed", "dropped")},
            "queued": int(queued.group(1)) >> 10 if queued else 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per row")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    body = bodies(triton=False)["magika"]
    sinks = {"off": None, "sink ok": sink(0), "sink 5 s": sink(5), "sink dead": "http://127.0.0.1:9/"}
    rows = []
    for name, url in sinks.items():
        flags = ["--payload-log-url", url] if url else []
        proc, addr, _, _ = serving.start(serving.ROOT / "examples/models", *flags)
        try:
            load(f"http://{addr}/v2/models/magika/infer", body, args.concurrency, 3)  # warm
            rps, p50, p99, failed = load(f"http://{addr}/v2/models/magika/infer", body, args.concurrency, args.duration)
            rows.append((name, rps, p50, p99, failed, events(addr)))
        finally:
            serving.stop(proc)
    base = rows[0]
    print(f"\nmagika ({MAGIKA_FILE.name}), concurrency {args.concurrency}, {args.duration} s per row\n")
    print("| logging | req/s | p50 ms | p99 ms | p99 / off | failed | events sent | failed | dropped | queued KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rps, p50, p99, failed, e in rows:
        print(f"| {name} | {rps:.0f} | {p50:.1f} | {p99:.1f} | {p99 / base[3]:.2f} | {failed} "
              f"| {e['sent']} | {e['failed']} | {e['dropped']} | {e['queued']} |")


if __name__ == "__main__":
    main()
