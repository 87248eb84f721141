"""The serving port over TLS: HTTPS and gRPC with a certificate the test makes itself."""

import datetime
import http.client
import ipaddress
import json
import ssl
import subprocess
import time

import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import BINARY, ROOT, Server

FIXTURES = ROOT / "tests/fixtures"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def tls_server(certificate):
    cert, key = certificate
    s = Server(ROOT / "examples/models", args=["--tls-cert", str(cert), "--tls-key", str(key)])
    # Every test starts from a ready server, whichever of them runs first.
    deadline = time.time() + 120
    while https(s, cert, "GET", "/v2/health/ready")[0] != 200:
        assert time.time() < deadline, "".join(s.log)
        time.sleep(0.1)
    yield s
    s.stop()


def https(server, cert, method, path, body=None, headers=None):
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(cert)), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def test_https_serves_rest_and_plain_http_is_refused(tls_server, certificate):
    cert, _ = certificate
    pdf = (FIXTURES / "magika/files/doc.pdf").read_bytes()
    status, body = https(tls_server, cert, "POST", "/v2/models/magika/infer", pdf, {"Inference-Header-Content-Length": "0"})
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == ["pdf"]
    host, port = tls_server.address.rsplit(":", 1)
    plain = http.client.HTTPConnection(host, int(port), timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/v2/health/live")
        plain.getresponse()


def test_grpc_over_tls(tls_server, certificate):
    cert, _ = certificate
    client = grpcclient.InferenceServerClient(tls_server.address, ssl=True, root_certificates=str(cert))
    assert client.is_server_live()
    assert client.get_model_metadata("minilm").name == "minilm"


def test_a_bad_certificate_stops_the_start_with_the_reason(tmp_path, certificate):
    _, key = certificate
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    run = subprocess.run([BINARY, "serve", "-r", str(ROOT / "examples/models"), "--port", "0",
                          "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(key)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "holds no PEM certificate" in run.stderr, run.stderr
    run = subprocess.run([BINARY, "serve", "-r", str(ROOT / "examples/models"), "--tls-cert", "x"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "--tls-key" in run.stderr, run.stderr
