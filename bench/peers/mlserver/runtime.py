"""MLServer custom runtimes (MLServer has no ONNX runtime of its own) for the benchmark models."""

import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from models import MagikaBatch, MiniLM, Tiny


class MagikaRuntime(MLModel):
    async def load(self):
        self.magika = MagikaBatch()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        files = [s.encode() if isinstance(s, str) else s for s in StringCodec.decode_input(payload.inputs[0])]
        labels, scores = self.magika(files)
        return InferenceResponse(
            model_name=self.name,
            outputs=[StringCodec.encode_output("label", labels), NumpyCodec.encode_output("score", scores)],
        )


class TinyRuntime(MLModel):
    async def load(self):
        self.tiny = Tiny(os.environ["BENCH_TINY_MODEL"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32).reshape(3, 2)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", self.tiny(x))])


class MiniLMRuntime(MLModel):
    async def load(self):
        self.minilm = MiniLM(os.environ["BENCH_MINILM_DIR"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        sentences = [s.decode() if isinstance(s, bytes) else s for s in StringCodec.decode_input(payload.inputs[0])]
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("embedding", self.minilm(sentences))])
