"""Counters of consent work (per process, like ``app.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

STATUS_READS = Counter(
    "ctmm_bridge_status_reads_total",
    "Status reads of Mailmodo contacts by outcome (learnt, unchanged, echo, unknown, unclear, "
    "failed, retry).",
    ["outcome"],
)
STATES_LEARNT = Counter(
    "ctmm_bridge_consent_states_learnt_total",
    "Changes of a contact's Mailmodo consent state learnt by the bridge, by new state.",
    ["state"],
)
CHANGES_SENT = Counter(
    "ctmm_bridge_consent_changes_sent_total",
    "Consent changes the bridge carried, by direction (to_clevertap, to_mailmodo) and state.",
    ["direction", "state"],
)
ECHOES = Counter(
    "ctmm_bridge_consent_echoes_total",
    "Consent changes not carried because they echoed one the bridge had carried, by the "
    "direction they would have gone.",
    ["direction"],
)
