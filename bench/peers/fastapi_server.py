"""What a user writes by hand: FastAPI + onnxruntime speaking the OIP v2 JSON the others
speak, one request per inference (no batching). Run: uvicorn fastapi_server:app."""

import os

import numpy as np
from fastapi import FastAPI, HTTPException, Request

from models import MagikaBatch, MiniLM, Tiny

app = FastAPI()
magika = MagikaBatch()
tiny = Tiny(os.environ["BENCH_TINY_MODEL"])
minilm = MiniLM(os.environ["BENCH_MINILM_DIR"])


@app.get("/v2/health/ready")
@app.get("/v2/models/{name}/ready")
def ready():
    return {}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.json()
    tensor = body["inputs"][0]
    if name == "magika":
        labels, scores = magika([s.encode() for s in tensor["data"]])
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
            {"name": "score", "datatype": "FP32", "shape": [len(labels)], "data": scores.tolist()},
        ]
    elif name == "tiny":
        y = tiny(np.array(tensor["data"], dtype=np.float32).reshape(3, 2))
        outputs = [{"name": "y", "datatype": "FP32", "shape": [3, 2], "data": y.ravel().tolist()}]
    elif name == "minilm":
        embedding = minilm(tensor["data"])
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": list(embedding.shape),
                    "data": embedding.ravel().tolist()}]
    else:
        raise HTTPException(404, f"unknown model {name}")
    return {"model_name": name, "outputs": outputs}
