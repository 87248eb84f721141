"""`wasmserve batch` spread over shards, reading and writing object storage (S3 on moto's
server), the way a Kubernetes Indexed Job runs it: one shard killed midway and started
again, every record answered exactly once across the shards, answers equal to the online
ones."""

import json
import os
import subprocess
import time

import boto3
import pytest

from conftest import BINARY, ROOT, Server
from test_fetch_object_storage import s3  # noqa: F401 (the fixture)

MODELS = ROOT / "tests/models"
SHARDS = 3
RECORDS = 3000


def client(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def batch(env, input_url, output_url, shard, concurrency=4, job_index=None):
    command = [BINARY, "batch", "--repository", str(MODELS), "--model", "faulty", "--concurrency", str(concurrency),
               "--input", input_url, "--output", output_url, "--shard", shard, "--checkpoint-secs", "1"]
    environment = {**os.environ, **env, "RUST_LOG": "info", "NO_COLOR": "1"}
    if job_index is not None:
        environment["JOB_COMPLETION_INDEX"] = str(job_index)
    return subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def request(i):
    # Every 250th malformed (a shape the model does not take): a 400 line, not a stop.
    shape = [2, 3] if i % 250 == 7 else [3, 2]
    data = [float((i * 7 + k) % 23 - 11) for k in range(6)]
    # 3 ms each in the plugin: a shard run one at a time lasts 3 s or more, time to kill it.
    return {"id": f"r{i}", "parameters": {"sleep_ms": "3"},
            "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}


def lines(s3_client, key):
    try:
        body = s3_client.get_object(Bucket="models", Key=key)["Body"].read().decode()
    except s3_client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines()]


def test_shards_over_object_storage_answer_every_record_once_even_after_a_kill(s3):  # noqa: F811
    upload, _, env = s3
    s3_client = client(env)
    upload("batch/requests.jsonl", "".join(json.dumps(request(i)) + "\n" for i in range(RECORDS)).encode())
    input_url, output_url = "s3://models/batch/requests.jsonl", "s3://models/batch/out/"

    # Shard 1 killed once its output holds some answers (a checkpoint has been uploaded).
    first = batch(env, input_url, output_url, f"1/{SHARDS}", concurrency=1)
    key = f"batch/out/part-00001-of-{SHARDS:05}.jsonl"
    deadline = time.time() + 120
    while len(lines(s3_client, key)) < 100:
        assert first.poll() is None, first.stderr.read()
        assert time.time() < deadline, "no checkpoint in 120 s"
        time.sleep(0.2)
    first.kill()
    first.wait()
    partial = len(lines(s3_client, key))
    assert partial < RECORDS // SHARDS, f"killed midway: {partial} lines"

    # All three (shard 2 taking its index from JOB_COMPLETION_INDEX, as an Indexed Job's pod).
    runs = [batch(env, input_url, output_url, f"0/{SHARDS}"), batch(env, input_url, output_url, f"1/{SHARDS}"),
            batch(env, input_url, output_url, str(SHARDS), job_index=2)]
    logs = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], logs
    assert "continuing an earlier run's output" in logs[1]

    answers = {}
    for shard in range(SHARDS):
        for line in lines(s3_client, f"batch/out/part-{shard:05}-of-{SHARDS:05}.jsonl"):
            assert line["record"] % SHARDS == shard
            assert line["record"] not in answers, f"record {line['record']} answered twice"
            answers[line["record"]] = line
    assert sorted(answers) == list(range(RECORDS))
    assert sum(1 for a in answers.values() if a.get("status") == 400) == RECORDS // 250

    # The answers are the server's: a sample of them asked online.
    server = Server(MODELS)
    try:
        server.wait_ready()
        import urllib.request
        for i in range(0, RECORDS, 97):
            if i % 250 == 7:
                continue
            body = json.dumps(request(i)).encode()
            with urllib.request.urlopen(f"http://{server.address}/v2/models/faulty/infer", data=body) as r:
                assert json.loads(r.read()) == answers[i]["response"], i
    finally:
        server.stop()


def test_a_prefix_of_input_files_and_clear_refusals(s3, tmp_path):  # noqa: F811
    upload, _, env = s3
    import struct
    for i in range(10):
        data = struct.pack("<6f", *[float(i + k) for k in range(6)])
        upload(f"files/in/{i:02}.bin", data)
    runs = [batch(env, "s3://models/files/in/", str(tmp_path) + "/", f"{i}/2") for i in range(2)]
    logs = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    sources = []
    for i in range(2):
        for line in (tmp_path / f"part-{i:05}-of-00002.jsonl").read_text().splitlines():
            answer = json.loads(line)
            assert answer["record"] % 2 == i and "response" in answer
            sources.append(answer["source"])
    assert sorted(sources) == [f"{i:02}.bin" for i in range(10)]

    for shard, says in [("3/3", "I must be below N"), ("x/3", "is not a number")]:
        run = batch(env, "s3://models/files/in/", str(tmp_path) + "/", shard)
        assert run.wait(timeout=60) != 0 and says in run.stderr.read()
    run = batch(env, "s3://models/no-such-prefix/", str(tmp_path) + "/", "0/2")
    assert run.wait(timeout=120) != 0
    assert "no such object, and no objects under it" in run.stderr.read()
