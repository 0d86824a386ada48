"""``GET /console``: the operator console, a page that talks to ``/admin`` from the browser.

Everything it needs ships in ``app/console/static`` (no CDN, works offline). The page holds no
data and needs no auth: the browser asks for the admin token and sends it as a bearer to
``/admin``. Every answer here carries a strict Content-Security-Policy (scripts and styles
only from the bridge, nothing inline, no framing, no form posts), so even a payload that
slipped into the DOM as markup could not run; the script itself only ever sets text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from app import __version__
from app.errors import error_response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    # Small files: always revalidated, so an upgraded bridge never runs an old script.
    "Cache-Control": "no-cache",
}
#: The only files served, with their media types.
STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return resources.files("app.console").joinpath("static", name).read_bytes()


@cache
def _page() -> bytes:
    # The version in the asset URLs makes a browser fetch new files after an upgrade.
    return _read("index.html").replace(b"{{version}}", __version__.encode())


@router.api_route("/console", methods=["GET", "HEAD"])
def console_page() -> Response:
    return Response(_page(), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/", include_in_schema=False)
def console_page_slash() -> Response:
    """``/console/`` as typed: to the page, relative, so a path prefix and HTTPS are kept."""
    return RedirectResponse("../console", status_code=307)


@router.get("/console/static/{name}")
def console_static(name: str) -> Response:
    media_type = STATIC.get(name)
    if media_type is None:
        return error_response(404, "not found", f"the console has no file {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
