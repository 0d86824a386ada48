"""SQL of a worker's batch of outcomes: which of its leases it still holds.

The statements live with the worker's other hot statements in ``worker_sql``; this name stays
for its callers.
"""

from __future__ import annotations

from app.outbox.worker_sql import finish_held, still_leased

__all__ = ["finish_held", "still_leased"]
