"""Model files fetched from object storage at start-up, from real servers of the stores'
APIs: S3 (moto's server mode) and Azure Blob Storage (Azurite, Microsoft's emulator), with
endpoints and credentials from the stores' usual environment variables."""

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tritonclient.http as http

from conftest import ROOT, Server, free_port

FAULTY = ROOT / "tests/models/faulty"
AZURITE = os.environ.get("AZURITE_BIN", str(ROOT / ".tools/node_modules/.bin/azurite-blob"))
# Azurite's well-known development account (public, in Microsoft's documentation).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def start(command, port):
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{command[0]} did not start"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3():
    """(upload, URL prefix, server environment) for an S3 bucket on moto's server."""
    import boto3

    port = free_port()
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="models")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    yield lambda key, data: client.put_object(Bucket="models", Key=key, Body=data), "s3://models", env
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    """(upload, URL prefix, server environment) for an Azure container on Azurite."""
    if not shutil.which(AZURITE):
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide Azurite at {AZURITE} (make test installs it)")
        pytest.skip(f"no Azurite at {AZURITE} (make test installs it)")
    from azure.storage.blob import BlobServiceClient

    port = free_port()
    data = tmp_path_factory.mktemp("azurite")
    proc = start([AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
                  "--silent", "--skipApiVersionCheck"], port)
    endpoint = f"http://127.0.0.1:{port}"
    service = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/devstoreaccount1;"
    )
    container = service.create_container("models")
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": endpoint}
    yield lambda key, data: container.upload_blob(key, data), "az://models", env
    proc.kill()
    proc.wait()


def bundle():
    """The test model's graph and plugin in a .tar.gz, under `faulty/`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name in ["model.onnx", "plugin.wasm"]:
            tar.add(FAULTY / name, arcname=f"faulty/{name}")
    return out.getvalue()


@pytest.mark.parametrize("store", ["s3", "azure"])
def test_a_model_is_fetched_from_object_storage_and_served(store, request, tmp_path):
    upload, prefix, env = request.getfixturevalue(store)
    archive = bundle()
    upload("v1/faulty.tar.gz", archive)

    # The repository holds configs only: everything else comes from the store. The cache is
    # content-addressed, so the missing object needs a digest of its own, or the other
    # model's download would serve it.
    config = (FAULTY / "model.toml").read_text()
    for name, key, sha in [
        ("fetched", "v1/faulty.tar.gz", hashlib.sha256(archive).hexdigest()),
        ("missing", "v1/nope.tar.gz", hashlib.sha256(b"another archive").hexdigest()),
    ]:
        (tmp_path / "repo" / name).mkdir(parents=True)
        (tmp_path / "repo" / name / "model.toml").write_text(
            f'{config}\n[[fetch]]\nurl = "{prefix}/{key}"\nsha256 = "{sha}"\nmember = "faulty"\n'
        )
    server = Server(tmp_path / "repo", ["--cache-dir", str(tmp_path / "cache"), "--ready-when", "any"], env)
    try:
        client = server.wait_ready()
        x = np.full((3, 2), 2, dtype=np.float32)
        inp = http.InferInput("x", [3, 2], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("fetched", [inp]).as_numpy("y")
        np.testing.assert_array_equal(y, x * np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))

        deadline = time.time() + 30
        while (index := {m["name"]: m for m in client.get_model_repository_index()})["missing"]["state"] == "LOADING":
            assert time.time() < deadline
            time.sleep(0.1)
        assert index["missing"]["state"] == "UNAVAILABLE"
        assert f"cannot fetch {prefix}/v1/nope.tar.gz" in index["missing"]["reason"]
        assert "not found" in index["missing"]["reason"].lower()
    finally:
        server.stop()
