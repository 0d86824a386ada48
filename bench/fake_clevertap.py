"""A fast stand-in for CleverTap's upload API, for the events benchmark.

``POST /1/upload`` accepts every record (``{"status": "success", "processed": n}``) and notes
when each request arrived and how many records it carried; ``GET /_stats`` reports them and
``POST /_reset`` forgets them.
"""

from __future__ import annotations

import time

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI()
arrivals: list[tuple[float, int]] = []


@app.post("/1/upload")
async def upload(request: Request) -> Response:
    records = orjson.loads(await request.body())["d"]
    arrivals.append((time.time(), len(records)))
    answer = {"status": "success", "processed": len(records), "unprocessed": []}
    return Response(orjson.dumps(answer), media_type="application/json")


@app.get("/_stats")
async def stats() -> Response:
    sizes = [n for _, n in arrivals]
    body = {
        "requests": len(arrivals),
        "records": sum(sizes),
        "first": arrivals[0][0] if arrivals else None,
        "last": arrivals[-1][0] if arrivals else None,
        "sizes": sizes,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@app.post("/_reset")
async def reset() -> Response:
    arrivals.clear()
    return Response(b"{}", media_type="application/json")
