"""A rolling update and scaling under steady load behind a real load balancer (haproxy,
Debian's), with deploy/'s own settings: haproxy checks /v2/health/ready as often as the
Deployment's readinessProbe (periodSeconds, failureThreshold), and the servers shut down
with config.yaml's shutdown delay and drain timeout. Replicas are replaced the way a
Deployment with maxUnavailable 0 does it: start the new one, wait until it is ready, SIGTERM
the old one. Every request is counted: none may fail."""

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import tomllib

import pytest

from conftest import BINARY, ROOT, deployment, free_port

MODELS = ROOT / "tests/models"
SLOTS = 6  # haproxy's servers: ports a replica may take
BODY = json.dumps({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]})


def settings():
    """What deploy/ sets: the server's shutdown delay and drain timeout, the readiness probe."""
    _, container, config = deployment()
    server = tomllib.loads(config)
    probe = container["readinessProbe"]
    assert probe["httpGet"]["path"] == "/v2/health/ready"
    return server["shutdown_delay_secs"], server["drain_timeout_secs"], probe["periodSeconds"], probe["failureThreshold"]


class Replica:
    def __init__(self, port, delay, drain):
        self.port = port
        self.proc = subprocess.Popen(
            [BINARY, "serve", "--repository", str(MODELS), "--port", str(port),
             "--shutdown-delay-secs", str(delay), "--drain-timeout-secs", str(drain)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"})

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, "replica exited"
            time.sleep(0.1)
        raise AssertionError("replica never ready")

    def terminate(self):
        """SIGTERM, as the kubelet sends it; returns once the process exited, with its code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


class Load:
    """Threads sending inference requests through the load balancer, each on its own
    keep-alive connection, counting every answer."""

    def __init__(self, port, threads=4):
        self.port, self.ok, self.failed, self.stop = port, 0, [], False
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop:
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("POST", "/v2/models/faulty/infer", BODY, {"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{r.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failed.append(repr(e))
                conn = None

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self.ok, self.failed


@pytest.fixture
def cluster(tmp_path):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        if os.environ.get("CI"):
            pytest.fail("CI must provide haproxy (.ci/run installs it)")
        pytest.skip("no haproxy: apt-get install haproxy")
    delay, drain, period, failures = settings()
    front, slots = free_port(), [free_port() for _ in range(SLOTS)]
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{port} check inter {period}s fall {failures} rise 1" for i, port in enumerate(slots))
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend serving
    bind 127.0.0.1:{front}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
{servers}
""")
    proxy = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    free = list(slots)
    replicas = []

    def start():
        replica = Replica(free.pop(0), delay, drain)
        replica.wait_ready()
        # The balancer finds it ready at its next check, as Kubernetes adds a ready pod.
        time.sleep(period + 0.5)
        replicas.append(replica)
        return replica

    def stop(replica):
        replicas.remove(replica)
        code = replica.terminate()
        free.append(replica.port)
        return code

    yield front, start, stop, replicas, (delay, drain)
    for replica in replicas:
        replica.proc.kill()
    proxy.kill()


def test_rolling_update_and_scaling_fail_no_request(cluster):
    front, start, stop, replicas, (delay, drain) = cluster
    for _ in range(3):
        start()
    load = Load(front)
    time.sleep(2)
    # The rollout: one new, ready, then one old gone; three times (maxSurge 1, maxUnavailable 0).
    for old in list(replicas):
        start()
        started = time.time()
        assert stop(old) == 0
        # It kept serving through the delay, then drained, within the grace period.
        assert delay <= time.time() - started < delay + drain
    # Scale 3 -> 1 and 1 -> 3.
    for old in list(replicas)[1:]:
        assert stop(old) == 0
    start()
    start()
    time.sleep(2)
    ok, failed = load.finish()
    assert failed == [], f"{len(failed)} of {ok + len(failed)} requests failed: {failed[:5]}"
    assert ok > 100
    print(f"rolling update and scaling under load: {ok} requests, none failed")
