"""What a user writes by hand in half an hour: FastAPI calling the `magika` package, the
body of the request being the file. Nothing tuned: magika's own ONNX Runtime session and
defaults, uvicorn's defaults. Run: uvicorn fastapi_magika:app."""

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from magika import Magika

app = FastAPI()
magika = Magika()


@app.get("/ready")
def ready():
    return {}


@app.post("/identify")
async def identify(request: Request):
    # Off the event loop, as FastAPI's docs advise for blocking work.
    result = await run_in_threadpool(magika.identify_bytes, await request.body())
    return {"label": str(result.output.label), "score": result.score, "mime_type": result.output.mime_type}
