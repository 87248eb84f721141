"""Triton Inference Server (PyTriton's tritonserver) with many copies of magika, each a
model of its own with its own onnxruntime session (bench/density.py). Models: the names in
BENCH_MODELS, comma-separated. Usage: triton_many.py HTTP_PORT."""

import os
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from models import MagikaBatch


def infer_with(magika):
    @batch
    def infer(bytes):
        labels, scores = magika([b[0] for b in bytes])
        return {"label": np.array(labels, dtype=np.bytes_).reshape(-1, 1), "score": scores.reshape(-1, 1)}

    return infer


port = int(sys.argv[1])
config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2)
with Triton(config=config) as triton:
    for name in os.environ["BENCH_MODELS"].split(","):
        triton.bind(
            model_name=name,
            infer_func=infer_with(MagikaBatch()),
            inputs=[Tensor(name="bytes", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="label", dtype=np.bytes_, shape=(1,)), Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=8),
        )
    triton.serve()
