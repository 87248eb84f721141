"""KServe's Python SDK (`kserve` package) against a server: health and one inference through
its REST client; prints the results as JSON. Run by test_kserve_client.py in a process of
its own: kserve and tritonclient both register the `inference` protobuf package, and one
process can hold only one of them. Usage: kserve_sdk.py ADDRESS FILE..."""

import asyncio
import json
import sys
from pathlib import Path

from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(address, files):
    base = f"http://{address}"
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        text = [Path(f).read_text() for f in files]
        request = InferRequest("magika", [InferInput("bytes", [len(text)], "BYTES", text)], request_id="kserve-1")
        response = await client.infer(base, request, model_name="magika")
        label = next(o for o in response.outputs if o.name == "label")
        return {
            "live": await client.is_server_live(base),
            "ready": await client.is_server_ready(base),
            "magika_ready": await client.is_model_ready(base, "magika"),
            "missing_ready": await client.is_model_ready(base, "no-such-model"),
            "labels": [str(x) for x in label.data],
        }
    finally:
        await client.close()


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2:]))))
