"""``GET /console`` and its static files: served from the package, with a strict
Content-Security-Policy, no inline script or style, and a script that only ever sets text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest

from app import __version__
from app.console.router import STATIC
from app.outbox.models import Operation

FILES = resources.files("app.console").joinpath("static")


def policy(resp: httpx.Response) -> dict[str, str]:
    directives = [d.strip() for d in resp.headers["content-security-policy"].split(";")]
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in directives if d}


def check_headers(resp: httpx.Response) -> None:
    csp = policy(resp)
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["form-action"] == "'none'"
    assert csp["base-uri"] == "'none'"
    assert "unsafe" not in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"


async def test_the_page_is_served_without_a_token_and_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.get("/console")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    check_headers(resp)
    assert f"console.js?v={__version__}" in resp.text
    assert "{{version}}" not in resp.text


async def test_head_asks_for_the_page_without_it(client: httpx.AsyncClient) -> None:
    resp = await client.head("/console")
    assert resp.status_code == 200
    assert resp.content == b""


async def test_a_trailing_slash_leads_to_the_page(client: httpx.AsyncClient) -> None:
    resp = await client.get("/console/", headers={"Host": "evil.example"})
    assert resp.status_code in (307, 308)
    assert resp.headers["location"] == "../console"  # relative: no Host, scheme or prefix lost
    page = await client.get("/console/", follow_redirects=True)
    assert page.status_code == 200
    assert str(page.url).endswith("/console")


@pytest.mark.parametrize("name", sorted(STATIC))
async def test_static_files_come_from_the_package(client: httpx.AsyncClient, name: str) -> None:
    resp = await client.get(f"/console/static/{name}")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == STATIC[name]
    assert resp.content == FILES.joinpath(name).read_bytes()
    check_headers(resp)


@pytest.mark.parametrize(
    "name", ["index.html", "nope.js", "..%2F..%2Fmain.py", "%2e%2e/router.py", "console.js.map"]
)
async def test_nothing_else_is_served(client: httpx.AsyncClient, name: str) -> None:
    resp = await client.get(f"/console/static/{name}")
    assert resp.status_code == 404
    assert resp.json()["error"].lower() == "not found"


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_the_page_has_no_inline_script_or_style_and_no_external_asset() -> None:
    markup = _Markup()
    markup.feed(FILES.joinpath("index.html").read_text())
    assert markup.script_text == ""
    assert "style" not in [tag for tag, _ in markup.tags]
    for tag, attrs in markup.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], tag
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"^(https?:)?//", value), (tag, value)
    scripts = [attrs["src"] for tag, attrs in markup.tags if tag == "script"]
    assert scripts == ["console/static/console.js?v={{version}}"]
    # Every input has a visible label.
    ids = {attrs.get("id") for tag, attrs in markup.tags if tag == "input"}
    labelled = {attrs.get("for") for tag, attrs in markup.tags if tag == "label"}
    assert ids <= labelled


def test_the_script_never_writes_markup_and_loads_nothing_from_elsewhere() -> None:
    code = FILES.joinpath("console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "srcdoc", "javascript:"):  # fmt: skip
        assert sink not in code, sink
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", code)
    css = FILES.joinpath("console.css").read_text()
    assert "url(" not in css
    assert "@import" not in css


def test_the_operation_filter_offers_every_operation() -> None:
    """The console's Operation filter (Deliveries, Replay) lists what the API accepts."""
    script = (resources.files("app.console") / "static" / "console.js").read_text()
    found = re.search(r"const OPERATIONS = \[(.*?)\];", script, re.DOTALL)
    assert found is not None
    offered = re.findall(r'"([a-z.]+)"', found.group(1))
    assert sorted(offered) == sorted(o.value for o in Operation)
