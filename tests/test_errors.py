"""One error base, one rendering: every refusal answers ``{"error": ..., "detail": ...}``."""

from __future__ import annotations

import orjson
import pytest

from app.admin.service import AdminError
from app.errors import BridgeError, error_response, internal_error, json_response, short_error
from app.inbound.service import BodyTooLarge, InboundError
from app.main import DatabaseNotReady


def test_json_response_headers() -> None:
    response = json_response({"x": 1}, 503, {"Retry-After": "5"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


def test_error_response_shape_and_headers() -> None:
    response = error_response(409, "conflict", {"a": 1}, {"X-Why": "because"})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-why"] == "because"
    assert bytes(response.body) == b'{"error":"conflict","detail":{"a":1}}'


@pytest.mark.parametrize(
    "error",
    [
        InboundError(415, "unsupported media type"),
        BodyTooLarge(10, 20, b""),
        AdminError(404, "not found", "there is no delivery 7"),
        DatabaseNotReady("run `ctmm-bridge db upgrade`"),
    ],
)
def test_every_refusal_is_a_bridge_error_rendered_the_same(error: BridgeError) -> None:
    assert isinstance(error, BridgeError)
    expected = error_response(error.status, error.error, error.detail, error.headers)
    response = error.response()
    assert response.status_code == expected.status_code
    assert bytes(response.body) == bytes(expected.body)
    assert response.raw_headers == expected.raw_headers


def test_text_of_an_error() -> None:
    assert str(BridgeError(409, "cannot cancel", "it is done")) == "cannot cancel: it is done"
    assert str(BridgeError(422, "invalid", [{"loc": ["q"]}])) == 'invalid: [{"loc":["q"]}]'
    assert str(DatabaseNotReady("schema behind")) == "schema behind"


def test_internal_error_names_the_type_only() -> None:
    response = internal_error(ValueError("secret value"))
    assert response.status_code == 500
    assert orjson.loads(bytes(response.body)) == {"error": "internal error", "detail": "ValueError"}


def test_short_error() -> None:
    assert short_error(RuntimeError("first\nsecond")) == "first"
    assert short_error(RuntimeError("")) == "RuntimeError"
    assert short_error(RuntimeError("x" * 300), limit=5) == "xxxxx…"
