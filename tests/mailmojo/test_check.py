"""Mailmojo's live check: a cheap authenticated read (``GET /v1/lists/``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from app.mailmojo.check import check_mailmojo
from tests.conftest import make_settings

URL = "https://mojo.test"


@pytest.fixture
def mojo() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


def test_no_token_is_a_warning_that_says_what_to_set() -> None:
    result = check_mailmojo(make_settings("sqlite://"))
    assert result.status == "warn"
    assert "BRIDGE_MAILMOJO_API_TOKEN" in result.message


def test_an_accepted_token(mojo: respx.MockRouter) -> None:
    route = mojo.get("/v1/lists/").respond(200, json=[{"id": 42, "name": "News"}])
    result = check_mailmojo(
        make_settings("sqlite://", mailmojo_api_token="tok", mailmojo_api_url=URL)
    )
    assert result.status == "ok"
    assert route.calls.last.request.headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("status", "verdict", "words"),
    [
        (401, "fail", "rejected the API token"),
        (403, "fail", "rejected the API token"),
        (429, "warn", "throttling"),
        (503, "fail", "failing"),
        (404, "fail", "BRIDGE_MAILMOJO_API_URL"),
    ],
)
def test_other_answers(mojo: respx.MockRouter, status: int, verdict: str, words: str) -> None:
    mojo.get("/v1/lists/").respond(status, json={"detail": "Invalid token."})
    result = check_mailmojo(
        make_settings("sqlite://", mailmojo_api_token="secret-tok", mailmojo_api_url=URL)
    )
    assert result.status == verdict
    assert words in result.message
    assert "secret-tok" not in result.message


def test_unreachable(mojo: respx.MockRouter) -> None:
    mojo.get("/v1/lists/").mock(side_effect=httpx.ConnectError("refused"))
    result = check_mailmojo(
        make_settings("sqlite://", mailmojo_api_token="tok", mailmojo_api_url=URL)
    )
    assert result.status == "fail"
    assert result.message.startswith(f"cannot reach {URL}")
