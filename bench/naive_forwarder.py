"""A naive synchronous forwarder, the baseline of ``bench/forwarder.py``: each CleverTap
campaign call is forwarded to Mailmodo at once and answered when Mailmodo has answered (200
when it took every recipient, 502 otherwise). No storage, no retry: what the bridge replaces.

    FORWARD_TO=http://127.0.0.1:18183 python -m uvicorn bench.naive_forwarder:app --port 18188
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TARGET = os.environ.get("FORWARD_TO", "http://127.0.0.1:18183")
client: httpx.AsyncClient


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global client
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=TARGET, timeout=30, limits=limits) as client:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/clevertap/campaigns/{campaign_id}")
async def forward(campaign_id: str, request: Request) -> JSONResponse:
    body = await request.json()
    sent = 0
    for profile in body.get("profiles", []):
        email = profile.get("Email")
        resp = await client.post(
            f"/api/v1/triggerCampaign/{campaign_id}",
            json={"email": email, "data": profile.get("ProfileData", {})},
            headers={"mmApiKey": "bench-key"},
        )
        if resp.status_code // 100 != 2:
            return JSONResponse({"error": "mailmodo", "status": resp.status_code}, 502)
        sent += 1
    return JSONResponse({"accepted": sent})
