"""The Mailmojo client at the HTTP boundary: Bearer token, trailing slashes, emails encoded
whole into one path segment, JSON bodies, and transport failures as our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import respx

from app.mailmojo.client import MailmojoClient, segment
from app.upstream import UpstreamTimeout, UpstreamUnreachable

URL = "https://mojo.test/"


@pytest.fixture
async def client() -> AsyncIterator[MailmojoClient]:
    c = MailmojoClient(base_url=URL, api_token="tok-1", timeout=3.0)
    yield c
    await c.aclose()


@pytest.mark.parametrize(
    ("email", "path"),
    [
        ("ann@example.com", b"/v1/contacts/ann%40example.com/"),
        ("a+b@x.io", b"/v1/contacts/a%2Bb%40x.io/"),
        ("o'neil/x@x.io", b"/v1/contacts/o%27neil%2Fx%40x.io/"),
        ("é@x.io", b"/v1/contacts/%C3%A9%40x.io/"),
    ],
)
async def test_the_read_encodes_the_email_into_one_segment(
    client: MailmojoClient, email: str, path: bytes
) -> None:
    with respx.mock(base_url="https://mojo.test") as mock:
        route = mock.route(method="GET").respond(404)
        got = await client.get_contact(email)
    request = route.calls.last.request
    assert request.url.raw_path == path
    assert request.headers["Authorization"] == "Bearer tok-1"
    assert request.headers["Accept"] == "application/json"
    assert request.content == b""
    assert got.status_code == 404


async def test_subscribe_and_update_send_json(client: MailmojoClient) -> None:
    with respx.mock(base_url="https://mojo.test") as mock:
        sub = mock.post("/v1/lists/42/subscribers/").respond(201, json={"email": "a@x.io"})
        upd = mock.patch("/v1/contacts/a%40x.io/").respond(200, json={"email": "a@x.io"})
        s = await client.subscribe("42", {"email": "a@x.io", "force_subscribe": False})
        u = await client.update_contact("a@x.io", {"email": "a@x.io", "tags": ["t"]})
    assert (s.status_code, s.json) == (201, {"email": "a@x.io"})
    assert u.status_code == 200
    assert sub.calls.last.request.content == b'{"email":"a@x.io","force_subscribe":false}'
    assert sub.calls.last.request.headers["Content-Type"] == "application/json"
    assert orjson.loads(upd.calls.last.request.content) == {"email": "a@x.io", "tags": ["t"]}
    assert upd.calls.last.request.method == "PATCH"


async def test_transport_failures_are_upstream_errors(client: MailmojoClient) -> None:
    with respx.mock(base_url="https://mojo.test") as mock:
        mock.get(path__regex=r"^/v1/contacts/").mock(side_effect=httpx.ReadTimeout("slow"))
        with pytest.raises(UpstreamTimeout):
            await client.get_contact("a@x.io")
        mock.patch(path__regex=r"^/v1/contacts/").mock(side_effect=httpx.ConnectError("no"))
        with pytest.raises(UpstreamUnreachable):
            await client.update_contact("a@x.io", {"email": "a@x.io"})


def test_a_segment_of_dots_stays_a_segment() -> None:
    assert segment("..") == "%2E%2E"
    assert segment("a.b") == "a.b"
