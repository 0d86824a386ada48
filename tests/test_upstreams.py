"""The registry: every upstream has an adapter, every operation one upstream, and each
settings block is a view of the one Settings."""

from __future__ import annotations

import pytest

from app.clevertap.client import CleverTapClient
from app.clevertap.config import CleverTapConfig
from app.mailmodo.client import MailmodoClient
from app.mailmodo.config import MailmodoConfig
from app.outbox.models import Operation, Upstream
from app.upstreams import CLEVERTAP, MAILMODO, UPSTREAM_OF, UPSTREAMS
from tests.conftest import CLEVERTAP_URL, MAILMODO_URL, make_settings


def test_every_upstream_has_an_adapter_and_every_operation_one_upstream() -> None:
    assert set(UPSTREAMS) == set(Upstream)
    assert set(UPSTREAM_OF) == set(Operation)
    operations = [op for adapter in UPSTREAMS.values() for op in adapter.operations]
    assert len(operations) == len(set(operations))
    assert UPSTREAM_OF[Operation.EVENT_UPLOAD] is Upstream.CLEVERTAP
    assert UPSTREAM_OF[Operation.LIST_SYNC] is Upstream.MAILMODO


def test_settings_blocks_are_views_of_the_settings() -> None:
    settings = make_settings("sqlite://")
    mm = MAILMODO.settings(settings)
    assert mm == MailmodoConfig(
        api_key=settings.mailmodo_api_key,
        api_url=MAILMODO_URL,
        timeout=settings.mailmodo_timeout_seconds,
        max_concurrency=settings.mailmodo_max_concurrency,
        rate_per_second=settings.mailmodo_rate_per_second,
    )
    ct = CLEVERTAP.settings(settings)
    assert isinstance(ct, CleverTapConfig)
    assert ct.base_url == CLEVERTAP_URL
    assert ct.key == f"{ct.account_id}:{ct.passcode}:{CLEVERTAP_URL}"
    assert MAILMODO.configured(mm)
    assert CLEVERTAP.configured(ct)


@pytest.mark.parametrize("missing", [{"clevertap_account_id": None}, {"clevertap_passcode": None}])
def test_clevertap_needs_both_credentials(missing: dict[str, None]) -> None:
    config = CLEVERTAP.settings(make_settings("sqlite://", **missing))
    assert not CLEVERTAP.configured(config)


async def test_clients_are_built_from_their_settings_block() -> None:
    settings = make_settings("sqlite://")
    mm = MAILMODO.client(MAILMODO.settings(settings))
    ct = CLEVERTAP.client(CLEVERTAP.settings(settings))
    assert isinstance(mm, MailmodoClient)
    assert mm.timeout == settings.mailmodo_timeout_seconds
    assert isinstance(ct, CleverTapClient)
    await mm.aclose()
    await ct.aclose()
