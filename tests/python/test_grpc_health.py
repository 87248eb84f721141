"""The standard gRPC health service (`grpc.health.v1.Health`, as Kubernetes' grpc probes and
gRPC load balancers ask it) through grpcio's own health client."""

import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROOT, Server

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def check(stub, service):
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_check_follows_readiness_of_the_server_and_each_model(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert check(stub, "") == SERVING
        assert check(stub, "inference.GRPCInferenceService") == SERVING
        assert check(stub, "magika") == SERVING
        with pytest.raises(grpc.RpcError) as missing:
            check(stub, "no-such-model")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_sees_the_server_become_ready(tmp_path):
    # A model whose warm-up takes 1.5 s: not serving, then serving.
    model = tmp_path / "slow"
    shutil.copytree(ROOT / "tests/models/faulty", model)
    toml = (model / "model.toml").read_text().replace("timeout_ms = 500", "timeout_ms = 5000")
    toml += ('\n[[warmup]]\ninputs = [{ name = "x", shape = [3, 2], datatype = "FP32", data = [1, 2, 3, 4, 5, 6] }]\n'
             'parameters = { sleep_ms = "1500" }\n')
    (model / "model.toml").write_text(toml)
    server = Server(tmp_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            seen = []
            for answer in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30):
                seen.append(answer.status)
                if answer.status == SERVING:
                    break
            assert seen == [NOT_SERVING, SERVING]
            assert check(stub, "slow") == SERVING
    finally:
        server.stop()
