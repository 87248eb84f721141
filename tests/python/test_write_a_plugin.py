"""The "Write a plugin" page (docs/plugins.md), run as written: its three commands, from the
repository's root, then its request, whose answer must be the one the page shows."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section_blocks():
    page = (ROOT / "docs/plugins.md").read_text()
    section = page.split("# Write a plugin\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_plugin_page_takes_a_new_user_from_nothing_to_a_served_plugin_in_three_commands():
    setup, request = section_blocks()[:2]
    commands = [line for line in setup.splitlines() if line.strip()]
    assert len(commands) <= 3, commands
    *build, serve = commands
    made = ROOT / "hello"
    shutil.rmtree(made, ignore_errors=True)
    server = None
    try:
        for command in build:
            run = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=1800)
            assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
        server = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=ROOT, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 1800  # `cargo run --release` may build the server first
        while not ready():
            assert server.poll() is None, server.stderr.read()
            assert time.time() < deadline, "the server never became ready"
            time.sleep(0.5)
        curl, shown = [line for line in request.splitlines() if line.strip()]
        run = subprocess.run(["bash", "-c", curl], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == json.loads(shown.removeprefix("# ")), run.stdout
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        shutil.rmtree(made, ignore_errors=True)


def ready():
    try:
        return urllib.request.urlopen("http://127.0.0.1:8000/v2/models/hello/ready", timeout=2).status == 200
    except OSError:
        return False
