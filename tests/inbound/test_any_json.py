"""Any JSON the parser accepts is stored (200) or refused with a 4xx and kept as rejected:
never a 5xx, which the sender would retry forever. Values the mapping or the database cannot
take (nesting past orjson's 254 levels or Python's recursion limit, integers past 64 bits,
NUL characters) are put in every place of a valid call, over the real app."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.outbox.models import CallStatus, InboundCall
from app.state import BridgeState
from tests.conftest import CT_AUTH, MM_SECRET

CLEVERTAP_CALLS = [
    '{"email": "ann@example.com", "data": {"k": %s}}',
    '{"email": "ann@example.com", "data": %s}',
    '{"email": "ann@example.com", "campaign_data": {"k": %s}}',
    '{"email": %s}',
    '{"key_values": {"k": %s}, "profiles": [{"Email": "ann@example.com"}]}',
    '{"profiles": [{"Email": "ann@example.com", "ObjectId": %s}]}',
    '{"profiles": [{"Email": "ann@example.com", "ProfileData": {"k": %s}}]}',
    '{"profiles": [{"Email": "ann@example.com", "event_properties": {"k": %s}}]}',
    '{"profiles": [{"Email": "ann@example.com", "Identity": %s}]}',
    '{"profiles": %s}',
]
MAILMODO_CALLS = [
    '{"event": "opened", "email": "ann@example.com", "x": %s}',
    '{"event": "opened", "email": "ann@example.com", "clevertap_id": %s}',
    '{"event": "opened", "email": "ann@example.com", "campaign_name": %s}',
    '{"event": "submitted", "email": "ann@example.com", "data": {"k": %s}}',
    '{"event": "opened", "email": "ann@example.com", "timestamp": %s}',
    '{"event": "opened", "email": "ann@example.com", "event_id": %s}',
    '{"event": %s, "email": "ann@example.com"}',
    '[{"event": "clicked", "email": "ann@example.com", "link": %s}]',
]


def nested(depth: int, leaf: str = "1", obj: bool = True) -> str:
    return ('{"a":' * depth + leaf + "}" * depth) if obj else ("[" * depth + leaf + "]" * depth)


HARD_VALUES = [
    nested(253),
    nested(254),
    nested(300),
    nested(1000),
    nested(1000, obj=False),
    "1" + "0" * 40,
    "-" + "9" * 40,
    '"a\\u0000b"',
    '"\\u0000"',
    '"' + "x" * 100_000 + '"',
    "1e308",
    "-0.0",
    "[" + ",".join(["{}"] * 5000) + "]",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
).map(json.dumps)
raw_values = st.sampled_from(HARD_VALUES) | json_values | st.integers(1, 1020).map(nested)


async def rejected_count(state: BridgeState) -> int:
    with state.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(InboundCall.status == CallStatus.REJECTED.value)
            ).scalar_one()
        )


async def post(client: httpx.AsyncClient, template: str, value: str) -> httpx.Response:
    body = (template % value).encode()
    if template in CLEVERTAP_CALLS:
        return await client.post(
            "/clevertap/campaigns/c1",
            content=body,
            headers=CT_AUTH | {"content-type": "application/json"},
        )
    return await client.post(f"/mailmodo/{MM_SECRET}/events", content=body)


async def check(
    client: httpx.AsyncClient, state: BridgeState, template: str, value: str
) -> httpx.Response:
    before = await rejected_count(state)
    resp = await post(client, template, value)
    assert resp.status_code < 500, (template, value[:200], resp.text)
    if resp.status_code != 200:
        assert await rejected_count(state) == before + 1, "a refused call was not kept"
        assert set(resp.json()) == {"error", "detail"}
    return resp


@pytest.mark.parametrize("template", CLEVERTAP_CALLS + MAILMODO_CALLS)
async def test_hard_values_are_stored_or_refused_and_kept(
    client: httpx.AsyncClient, state: BridgeState, template: str
) -> None:
    for value in HARD_VALUES:
        await check(client, state, template, value)


async def test_nesting_orjson_cannot_write_back_is_a_kept_422(
    client: httpx.AsyncClient, state: BridgeState
) -> None:
    resp = await check(client, state, CLEVERTAP_CALLS[0], nested(300))
    assert resp.status_code == 422
    assert resp.json()["error"] == "the call cannot be processed"


@pytest.mark.parametrize(
    "value", [nested(1100), nested(1100, obj=False), "1e999", "-1e400", "9" * 5000]
)
async def test_well_formed_json_the_parser_refuses_is_a_kept_422_not_a_400(
    client: httpx.AsyncClient, state: BridgeState, value: str
) -> None:
    """Nesting past orjson's 1,024 levels and numbers beyond a double are JSON all the same
    (RFC 8259 sets no limit): not "malformed" but unprocessable."""
    for template in (CLEVERTAP_CALLS[0], MAILMODO_CALLS[0]):
        resp = await check(client, state, template, value)
        assert resp.status_code == 422, (template, resp.text)
        assert resp.json()["error"] == "the call cannot be processed"


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(template=st.sampled_from(CLEVERTAP_CALLS + MAILMODO_CALLS), value=raw_values)
async def test_any_json_value_anywhere_is_never_a_5xx(
    client: httpx.AsyncClient, state: BridgeState, template: str, value: str
) -> None:
    await check(client, state, template, value)
