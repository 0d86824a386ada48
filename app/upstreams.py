"""THE registry of upstreams: what each one brings, and which upstream each operation goes to.

An upstream is one folder with the same file names (``client.py``, ``bodies.py``,
``outcomes.py``, ``check.py``, ``config.py``) and one ``Adapter`` line below. The worker
assembly builds clients from it and ``ctmm-bridge check`` runs every ``check`` in it.

Adding an upstream (as Mailmojo was): its ``Upstream``, operations and ``Direction`` in
``app.outbox.models``, its settings in ``app.config.Settings``, its folder (a typed client with
``from_config``, the bodies it is sent, ``outcomes.py`` on top of ``app.upstream``'s taxonomy, a
cheap ``check``, a frozen ``config`` view of ``Settings``), one line here; then a consumer in
``app.worker`` (built in ``build.py``, looped in ``runner.py``), a readiness block, and, when
CleverTap calls feed it, a route and its operation in ``app.inbound`` (README: "To add an
upstream").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx

from app.clevertap import outcomes as clevertap_outcomes
from app.clevertap.check import check_clevertap
from app.clevertap.client import CleverTapClient
from app.clevertap.config import CleverTapConfig
from app.config import Settings
from app.mailmodo import outcomes as mailmodo_outcomes
from app.mailmodo.check import check_mailmodo
from app.mailmodo.client import MailmodoClient
from app.mailmodo.config import MailmodoConfig
from app.mailmojo import outcomes as mailmojo_outcomes
from app.mailmojo.check import check_mailmojo
from app.mailmojo.client import MailmojoClient
from app.mailmojo.config import MailmojoConfig
from app.outbox.models import Operation, Upstream
from app.upstream import CheckResult, Outcome, UpstreamError

ConfigT = TypeVar("ConfigT")
ClientT = TypeVar("ClientT")
ClassifyT = TypeVar("ClassifyT")


class Check(Protocol):
    def __call__(
        self,
        settings: Settings,
        *,
        timeout: float = ...,
        transport: httpx.BaseTransport | None = ...,
    ) -> CheckResult: ...


@dataclass(frozen=True, slots=True)
class Adapter(Generic[ConfigT, ClientT, ClassifyT]):
    """What one upstream brings. ``classify`` reads its answers (its shape is the upstream's:
    one outcome per call for Mailmodo, one per record for CleverTap's batches)."""

    upstream: Upstream
    #: Its settings block: a frozen view of the one ``Settings``.
    settings: Callable[[Settings], ConfigT]
    #: Whether that block is complete enough to deliver (else rows wait, readiness says why).
    configured: Callable[[ConfigT], bool]
    client: Callable[[ConfigT], ClientT]
    classify: ClassifyT
    classify_failure: Callable[[UpstreamError], Outcome]
    check: Check
    operations: tuple[Operation, ...]


MAILMODO: Adapter[MailmodoConfig, MailmodoClient, Callable[..., Outcome]] = Adapter(
    upstream=Upstream.MAILMODO,
    settings=MailmodoConfig.from_settings,
    configured=lambda config: config.configured,
    client=MailmodoClient.from_config,
    classify=mailmodo_outcomes.classify_mailmodo,
    classify_failure=mailmodo_outcomes.classify_failure,
    check=check_mailmodo,
    operations=(
        Operation.CAMPAIGN_TRIGGER,
        Operation.JOURNEY_START,
        Operation.JOURNEY_ABORT,
        Operation.LIST_SYNC,
        Operation.CONTACT_STATUS,
        Operation.CONTACT_UNSUBSCRIBE,
        Operation.CONTACT_RESUBSCRIBE,
    ),
)
CLEVERTAP: Adapter[CleverTapConfig, CleverTapClient, Callable[..., list[Outcome]]] = Adapter(
    upstream=Upstream.CLEVERTAP,
    settings=CleverTapConfig.from_settings,
    configured=lambda config: config.configured,
    client=CleverTapClient.from_config,
    classify=clevertap_outcomes.classify_upload,
    classify_failure=clevertap_outcomes.classify_failure,
    check=check_clevertap,
    operations=(Operation.EVENT_UPLOAD, Operation.CONSENT_PROFILE, Operation.CONSENT_SUBSCRIBE),
)

MAILMOJO: Adapter[MailmojoConfig, MailmojoClient, Callable[..., Outcome]] = Adapter(
    upstream=Upstream.MAILMOJO,
    settings=MailmojoConfig.from_settings,
    configured=lambda config: config.configured,
    client=MailmojoClient.from_config,
    classify=mailmojo_outcomes.classify_write,
    classify_failure=mailmojo_outcomes.classify_failure,
    check=check_mailmojo,
    operations=(Operation.MAILMOJO_SYNC,),
)

#: Every upstream, in the order ``ctmm-bridge check`` reports them.
UPSTREAMS: dict[Upstream, Adapter[Any, Any, Any]] = {
    a.upstream: a for a in (MAILMODO, CLEVERTAP, MAILMOJO)
}

#: Which upstream an operation is delivered to.
UPSTREAM_OF: dict[Operation, Upstream] = {
    operation: adapter.upstream
    for adapter in UPSTREAMS.values()
    for operation in adapter.operations
}
