"""The route class of every webhook route (CleverTap calls, Mailmodo callbacks)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response


class WebhookRoute(APIRoute):
    """A route whose endpoint takes only the request and its path ids, and returns a finished
    ``Response``: FastAPI's per-call dependency solving, parameter validation (the ids are
    plain strings) and answer serialisation have nothing to do for it, and are skipped on this
    hot path. Path, OpenAPI entry, middleware and exception handlers are unchanged."""

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
