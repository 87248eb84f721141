"""The benchmark models as every Python peer runs them, on onnxruntime.

magika: the `magika` package itself (1.0.3, the release the wasmserve plugin reproduces)
does the byte work; a batch is pre-processed file by file, then inferred in one
onnxruntime call, as `Magika.identify_paths` does internally. tiny: `mul_1.onnx`, one call.
minilm: the example's graph and vocabulary (BENCH_MINILM_DIR: model.onnx, data/vocab.txt),
Hugging Face `tokenizers`' BERT WordPiece (uncased, at most 256 tokens, padded to the
longest sentence of the batch), one onnxruntime call, mean pooling over the attention mask
and L2 normalisation: what sentence-transformers does, and the wasmserve plugin.
"""

import io
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from magika import Magika
from magika.types.seekable import Seekable
from tokenizers import BertWordPieceTokenizer

THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def session_options():
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return options


class MagikaBatch:
    """Labels and scores for a batch of files' bytes."""

    def __init__(self):
        self.magika = Magika()
        # The package's own session, with the benchmark's thread count.
        self.magika._onnx_session = ort.InferenceSession(
            str(self.magika._model_path), session_options(), providers=["CPUExecutionProvider"]
        )

    def __call__(self, files):
        m = self.magika
        results, features = [None] * len(files), []
        for i, content in enumerate(files):
            result, feature = m._get_result_or_features_from_seekable(Seekable(io.BytesIO(content)))
            if result is not None:
                results[i] = result
            else:
                features.append((Path(str(i)), feature))
        for key, result in m._get_results_from_features(features).items():
            results[int(key)] = result
        labels = [str(r.output.label) for r in results]
        scores = np.array([r.score for r in results], dtype=np.float32)
        return labels, scores


class Tiny:
    """Y = X * constant, X of shape [3, 2]."""

    def __init__(self, path):
        self.session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return self.session.run(None, {"X": x})[0]


class MiniLM:
    """384-dim sentence embeddings for a batch of sentences."""

    def __init__(self, directory):
        directory = Path(directory)
        self.tokenizer = BertWordPieceTokenizer(str(directory / "data/vocab.txt"), lowercase=True)
        self.tokenizer.enable_truncation(256)
        self.tokenizer.enable_padding()
        self.session = ort.InferenceSession(str(directory / "model.onnx"), session_options(),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, sentences):
        encoded = self.tokenizer.encode_batch(sentences)
        feed = {name: np.array([getattr(e, field) for e in encoded], dtype=np.int64) for name, field in
                [("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids")]}
        hidden = self.session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
