"""Model files fetched from object storage at start-up, from a real S3-compatible server
(moto's server mode), with credentials and endpoint from the usual AWS_* variables."""

import hashlib
import io
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tritonclient.http as http

from conftest import ROOT, Server

FAULTY = ROOT / "tests/models/faulty"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto server did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def bundle():
    """The test model's graph and plugin in a .tar.gz, under `faulty/`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name in ["model.onnx", "plugin.wasm"]:
            tar.add(FAULTY / name, arcname=f"faulty/{name}")
    return out.getvalue()


def test_a_model_is_fetched_from_s3_and_served(s3, tmp_path):
    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    bucket = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    bucket.create_bucket(Bucket="models")
    archive = bundle()
    bucket.put_object(Bucket="models", Key="v1/faulty.tar.gz", Body=archive)

    # The repository holds configs only: everything else comes from the bucket.
    config = (FAULTY / "model.toml").read_text()
    # The cache is content-addressed: the missing object needs a digest of its own, or the
    # other model's download would serve it.
    other = hashlib.sha256(b"another archive").hexdigest()
    for name, key, sha in [
        ("fetched", "v1/faulty.tar.gz", hashlib.sha256(archive).hexdigest()),
        ("missing", "v1/nope.tar.gz", other),
    ]:
        (tmp_path / "repo" / name).mkdir(parents=True)
        (tmp_path / "repo" / name / "model.toml").write_text(
            f'{config}\n[[fetch]]\nurl = "s3://models/{key}"\nsha256 = "{sha}"\nmember = "faulty"\n'
        )
    server = Server(tmp_path / "repo", ["--cache-dir", str(tmp_path / "cache"), "--ready-when", "any"], env)
    try:
        client = server.wait_ready()
        x = np.full((3, 2), 2, dtype=np.float32)
        inp = http.InferInput("x", [3, 2], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("fetched", [inp]).as_numpy("y")
        np.testing.assert_array_equal(y, x * np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))

        assert not client.is_model_ready("missing")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["missing"]["state"] == "UNAVAILABLE"
        assert "cannot fetch s3://models/v1/nope.tar.gz" in index["missing"]["reason"]
        assert "not found" in index["missing"]["reason"].lower()
    finally:
        server.stop()
