"""Start the wasmserve binary for a benchmark and wait until it is ready (shared by the
scripts in bench/)."""

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = os.environ.get("WASMSERVE_BIN", str(ROOT / "target/release/wasmserve"))


def start(repo, *args, env=None, timeout=300):
    """`wasmserve serve -r repo --port 0 *args` with `env` added; returns the process, its
    address, its log lines (still growing) and the seconds from start to ready. Exits the
    script with the log if the server stops or a model ends unavailable."""
    started = time.perf_counter()
    proc = subprocess.Popen([BINARY, "serve", "-r", str(repo), "--port", "0", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", **(env or {})})
    log, addr = [], []

    def pump():
        for line in proc.stderr:
            log.append(line)
            if m := re.search(r"listening on (\S+)", line):
                addr.append(m.group(1))

    threading.Thread(target=pump, daemon=True).start()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None or any("unavailable: " in line for line in log):
            proc.kill()
            sys.exit("wasmserve failed:\n" + "".join(log))
        try:
            if addr and urllib.request.urlopen(f"http://{addr[0]}/v2/health/ready").status == 200:
                return proc, addr[0], log, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    sys.exit(f"wasmserve not ready after {timeout} s:\n" + "".join(log))


def stop(proc):
    proc.kill()
    proc.wait()
