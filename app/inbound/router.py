"""The route class of every webhook route (CleverTap calls, Mailmodo callbacks), and the
dispatcher that serves those routes ahead of FastAPI's own router."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import internal_error

log = structlog.get_logger(__name__)

Endpoint = Callable[..., Coroutine[Any, Any, Response]]


#: What an X-Request-ID may hold to be echoed: printable ASCII (it goes back as a header).
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def request_id_of(scope: Scope) -> str:
    """The call's request id: its X-Request-ID (printable ASCII, at most 64 characters), else a
    new one. Kept in the scope's state for the handlers, on every log line of the call (bound
    by the caller) and echoed in the answer."""
    request_id = ""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            request_id = _UNPRINTABLE.sub("", value[:64].decode("latin-1")).strip()
            break
    if not request_id:
        request_id = os.urandom(8).hex()
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


class WebhookRoute(APIRoute):
    """A route whose endpoint takes only the request and its path ids, and returns a finished
    ``Response``: FastAPI's per-call dependency solving, parameter validation (the ids are
    plain strings) and answer serialisation have nothing to do for it. The route stays
    declared in FastAPI for OpenAPI and as the fallback path; ``WebhookDispatch`` serves it."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        plain = (
            not dependant.dependencies
            and not dependant.query_params
            and not dependant.header_params
            and not dependant.cookie_params
            and not dependant.body_params
            and dependant.request_param_name == "request"
            and all(p.field_info.annotation is str for p in dependant.path_params)
        )
        if not plain:
            raise TypeError(f"{path}: a webhook endpoint takes (path ids: str, request) only")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def webhook_handler(request: Request) -> Response:
            response: Response = await endpoint(request=request, **request.path_params)
            return response

        return webhook_handler


class WebhookDispatch:
    """Serves the webhook routes without FastAPI's router and middleware stack.

    A webhook call needs none of it (no dependencies, no validation, no content negotiation:
    the endpoint reads the body itself and returns a finished answer), yet FastAPI's routing
    and its five middleware layers cost about three quarters of a bare endpoint's CPU per call
    (bench/RESULTS.md). The table is built from the same ``WebhookRoute`` objects that FastAPI
    documents, so paths, endpoints and OpenAPI cannot drift apart. A webhook path with trailing
    slashes is served as without them; anything else that does not match a webhook route's
    path and method (405s, every other route) goes to FastAPI unchanged.
    """

    def __init__(self, routers: Iterable[APIRouter]) -> None:
        self._routes: list[tuple[re.Pattern[str], frozenset[str], Endpoint]] = []
        for router in routers:
            for route in router.routes:
                if isinstance(route, WebhookRoute):
                    self._routes.append(
                        (route.path_regex, frozenset(route.methods or ()), route.endpoint)
                    )

    def match(self, scope: Scope) -> tuple[Endpoint, dict[str, str]] | None:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        method = scope["method"]
        hit = self._lookup(method, path)
        if hit is None and len(path) > 1 and path.endswith("/"):
            # A webhook URL pasted with a trailing slash is served as meant, not redirected
            # (a sender following a redirect would resend its secret to wherever it points).
            # One more look-up, never one per slash: the path is the sender's to choose.
            hit = self._lookup(method, path.rstrip("/"))
        return hit

    def _lookup(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        for regex, methods, endpoint in self._routes:
            if method in methods and (found := regex.match(path)) is not None:
                return endpoint, found.groupdict()
        return None

    @staticmethod
    async def respond(
        endpoint: Endpoint, params: dict[str, str], scope: Scope, receive: Receive
    ) -> Response:
        """The endpoint's answer to the call; both the ASGI path (``serve``) and the server's
        webhook lane (``app.server.WebhookCycle``) take it from here."""
        scope["path_params"] = params
        try:
            response: Response = await endpoint(request=Request(scope, receive), **params)
        except Exception as exc:
            # The same answer as the app's catch-all handler on FastAPI's path.
            log.exception("unhandled error", error=type(exc).__name__)
            response = internal_error(exc)
        return response

    @classmethod
    async def serve(
        cls,
        endpoint: Endpoint,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        response = await cls.respond(endpoint, params, scope, receive)
        await response(scope, receive, send)
