"""The yardstick: a bare FastAPI endpoint that parses the same JSON and answers a small JSON.

It does what every JSON webhook must do (route, read and parse the body, serialise an answer)
and nothing else: no authentication, no validation, no storage. ``bench/run.sh`` serves it
with the same uvicorn settings as ``ctmm-bridge serve`` and drives it with the same wrk script.
"""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import FastAPI, Request

app = FastAPI(title="bench bare endpoint")
_ids = itertools.count(1)


@app.post("/clevertap/campaigns/{campaign_id}")
async def campaign(campaign_id: str, request: Request) -> dict[str, Any]:
    body = await request.json()
    profiles = body.get("profiles", []) if isinstance(body, dict) else []
    return {"accepted": len(profiles), "duplicates": 0, "skipped": 0, "ids": [next(_ids)]}
