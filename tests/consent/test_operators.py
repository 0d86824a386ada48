"""What an operator sees: ``/admin/consent/{email}``, ``ctmm-bridge consent EMAIL`` and the
consent metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from tests.conftest import ADMIN_TOKEN
from tests.consent.conftest import Loop

A = "ann@example.com"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _story(loop: Loop) -> None:
    """Mailmodo unsubscribes A after a send; CleverTap echoes it back."""
    await loop.send(A)
    loop.contact(A, unsubscribed=True, unsubscribeReason="Clicked unsubscribe", blocked=False)
    await loop.later(1)
    await loop.post("/clevertap/consent/unsubscribe", A)
    await loop.work()


async def test_admin_shows_a_persons_consent(loop: Loop) -> None:
    await _story(loop)
    resp = await loop.client.get("/admin/consent/Ann@Example.com", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["known"]["mailmodo_state"] == "unsubscribed"
    assert body["known"]["told_clevertap"] == "unsubscribed"
    assert [(e["source"], e["echo"]) for e in body["log"]] == [
        ("clevertap.webhook", True),
        ("mailmodo.read", False),
    ]
    # Latest due first: the 72 h and 24 h reads only scheduled, the 1 h read made and done.
    reads = [(r["state"], r["delivery_id"] is None, r["target"]) for r in body["reads"]]
    assert reads == [
        ("scheduled", True, "camp-1"),
        ("scheduled", True, "camp-1"),
        ("delivered", False, "camp-1"),
    ]
    assert (await loop.client.get(f"/admin/consent/{A}")).status_code == 401


async def test_the_consent_command(
    loop: Loop, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await _story(loop)
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_DATABASE_URL", loop.state.settings.database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        text = runner.invoke(cli, ["consent", A]).stdout
        assert "Mailmodo: unsubscribed (Clicked unsubscribe)" in text
        assert "[echo]" in text
        assert "status reads" in text
        assert text.count(" scheduled ") == 2
        data = json.loads(runner.invoke(cli, ["consent", A, "--json"]).stdout)
        assert len(data["log"]) == 2
        assert "nothing known yet" in runner.invoke(cli, ["consent", "x@example.com"]).stdout
        refused = runner.invoke(cli, ["consent", "not-an-email"])
        assert refused.exit_code == 2
        assert "not an email address" in refused.output
    finally:
        get_settings.cache_clear()


async def test_metrics_count_reads_changes_and_echoes(loop: Loop) -> None:
    await _story(loop)
    text = (await loop.client.get("/metrics")).text
    for line in (
        'ctmm_bridge_status_reads_total{outcome="learnt"}',
        'ctmm_bridge_consent_states_learnt_total{state="unsubscribed"}',
        'ctmm_bridge_consent_changes_sent_total{direction="to_clevertap",state="unsubscribed"}',
        'ctmm_bridge_consent_echoes_total{direction="to_mailmodo"}',
    ):
        assert line in text, line
