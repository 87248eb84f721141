"""Triton Inference Server (the real `tritonserver` inside PyPI nvidia-pytriton) serving the
benchmark models through PyTriton, Triton's Python front end, with Triton's dynamic batching
on magika and minilm. Usage: triton_server.py HTTP_PORT."""

import os
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from models import MagikaBatch, MiniLM, Tiny

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "32"))
DELAY_US = int(os.environ.get("BENCH_QUEUE_DELAY_US", "2000"))

magika = MagikaBatch()
tiny = Tiny(os.environ["BENCH_TINY_MODEL"])
minilm = MiniLM(os.environ["BENCH_MINILM_DIR"])


@batch
def infer_magika(bytes):
    labels, scores = magika([b[0] for b in bytes])
    return {"label": np.array(labels, dtype=np.bytes_).reshape(-1, 1), "score": scores.reshape(-1, 1)}


@batch
def infer_minilm(text):
    return {"embedding": minilm([t[0].decode() for t in text])}


def infer_tiny(requests):
    return [{"y": tiny(r["x"])} for r in requests]


port = int(sys.argv[1])
config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2)
with Triton(config=config) as triton:
    triton.bind(
        model_name="magika",
        infer_func=infer_magika,
        inputs=[Tensor(name="bytes", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="label", dtype=np.bytes_, shape=(1,)), Tensor(name="score", dtype=np.float32, shape=(1,))],
        config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=DELAY_US)),
    )
    triton.bind(
        model_name="minilm",
        infer_func=infer_minilm,
        inputs=[Tensor(name="text", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="embedding", dtype=np.float32, shape=(384,))],
        config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=DELAY_US)),
    )
    triton.bind(
        model_name="tiny",
        infer_func=infer_tiny,
        inputs=[Tensor(name="x", dtype=np.float32, shape=(3, 2))],
        outputs=[Tensor(name="y", dtype=np.float32, shape=(3, 2))],
        config=ModelConfig(batching=False),
    )
    triton.serve()
