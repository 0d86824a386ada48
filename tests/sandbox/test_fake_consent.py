"""The sandbox's fake Mailmodo can mark a contact unsubscribed, bounced or spam, answers
status reads like ``getContactDetails``, and takes unsubscribes and resubscribes; the fake
CleverTap takes ``/1/subscribe``. Then the bridge's own classification reads them right."""

from __future__ import annotations

import httpx
import pytest

from app.consent.mapping import ConsentStatus, lesson
from app.mailmodo.status import ContactStatus, classify_status_read
from app.sandbox.fakes import create_fake_clevertap, create_fake_mailmodo
from app.upstream import AttemptOutcome, UpstreamResponse

KEY = {"mmApiKey": "key"}


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake")  # type: ignore[arg-type]


def _learnt(resp: httpx.Response) -> ConsentStatus:
    outcome = classify_status_read(
        UpstreamResponse(resp.status_code, resp.text, resp.json(), 1.0, None)
    )
    assert outcome.kind is AttemptOutcome.DELIVERED
    status = ContactStatus.from_json(outcome.response_body)
    assert status is not None
    return lesson(status).state


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        ("unsubscribed", ConsentStatus.UNSUBSCRIBED),
        ("bounced", ConsentStatus.BOUNCED),
        ("spam", ConsentStatus.SPAM),
        ("subscribed", ConsentStatus.SUBSCRIBED),
    ],
)
async def test_a_marked_contact_reads_as_marked(mark: str, expected: ConsentStatus) -> None:
    async with _client(create_fake_mailmodo("key")) as mm:
        unknown = await mm.get("/api/v1/getContactDetails", params={"email": "a@x.io"}, headers=KEY)
        assert unknown.status_code == 404
        marked = await mm.post("/_sandbox/contacts/A@x.io", json={"status": mark})
        assert marked.status_code == 200
        read = await mm.get("/api/v1/getContactDetails", params={"email": "a@x.io"}, headers=KEY)
        assert _learnt(read) is expected
        bad = await mm.post("/_sandbox/contacts/a@x.io", json={"status": "gone"})
        assert bad.status_code == 422


async def test_unsubscribe_and_resubscribe() -> None:
    async with _client(create_fake_mailmodo("key")) as mm:
        body = {"email": "a@x.io"}
        first = await mm.post("/api/v1/contacts/unsubscribe", json=body, headers=KEY)
        again = await mm.post("/api/v1/contacts/unsubscribe", json=body, headers=KEY)
        assert first.json()["success"] is True
        assert "already" in again.json()["message"]
        read = await mm.get("/api/v1/getContactDetails", params=body, headers=KEY)
        assert _learnt(read) is ConsentStatus.UNSUBSCRIBED
        await mm.post("/api/v1/contacts/resubscribe", json=body, headers=KEY)
        read = await mm.get("/api/v1/getContactDetails", params=body, headers=KEY)
        assert _learnt(read) is ConsentStatus.SUBSCRIBED
        refused = await mm.post("/api/v1/contacts/unsubscribe", json=body)
        assert refused.status_code == 401


async def test_fake_clevertap_takes_subscribe_records() -> None:
    headers = {"X-CleverTap-Account-Id": "acc", "X-CleverTap-Passcode": "pass"}
    async with _client(create_fake_clevertap("acc", "pass")) as ct:
        record = {"type": "email", "value": "a@x.io", "status": "Unsubscribe"}
        resp = await ct.post("/1/subscribe", json={"d": [record]}, headers=headers)
        assert resp.json() == {"status": "success", "processed": 1, "unprocessed": []}
        bad = await ct.post("/1/subscribe", json={"x": 1}, headers=headers)
        assert bad.status_code == 400
