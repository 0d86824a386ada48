"""The delivery state machine: the allowed-from table holds exactly the expected edges, every
edge function and every repository that applies it respects it (a walk of every edge from
every state, on SQLite and PostgreSQL), and nothing in ``app/`` writes a state on its own."""

from __future__ import annotations

import ast
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from app.admin import repository as admin_repo
from app.admin.repository import DeliveryFilter
from app.clock import ManualClock
from app.identity.models import Identity
from app.outbox import leases, repository, transitions
from app.outbox.models import Delivery, Direction, Operation, State, Upstream
from app.outbox.policy import RetryPolicy
from app.outbox.schemas import Claimed, NewDelivery
from app.outbox.transitions import EDGES, TERMINAL_STATES, Edge
from app.upstream import AttemptOutcome, Outcome

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEED = 424242
P, PK, DL, F, DE, DR, C = (
    State.PENDING,
    State.PARKED,
    State.DELIVERED,
    State.FAILED,
    State.DEAD,
    State.DROPPED,
    State.CANCELLED,
)
NEW, GONE = "new", "gone"

#: Every edge of the machine, written out by hand: (edge, from, to).
EXPECTED = {
    *((Edge.ADMIT, NEW, s) for s in (P, PK, DR, F)),
    *((Edge.ATTEMPT, P, s) for s in (DL, F, DE, P)),
    (Edge.RELEASE_LEASE, P, P),
    (Edge.RECLAIM_LEASE, P, P),
    (Edge.SKIP, P, DR),
    (Edge.RESUME_DEFERRED, P, P),
    (Edge.RELEASE_PARKED, PK, P),
    (Edge.EXPIRE_PARKED, PK, DE),
    *((Edge.RETRY, s, P) for s in (F, DE, C, DR, PK, P)),
    (Edge.RESEND, DL, P),
    *((Edge.REPLAY, s, P) for s in (F, DE, C, DR, PK, P)),
    *((Edge.CANCEL, s, C) for s in (P, PK)),
    *((Edge.PURGE, s, GONE) for s in (DL, F, DE, C, DR, PK)),
}


@pytest.fixture(autouse=True)
def seeded(clock: ManualClock) -> None:
    """Jitter draws start from SEED (through the one clock every module reads)."""
    clock.reseed(SEED)


def draws(*delays: float) -> list[float]:
    """What ``jitter`` gives for ``delays`` right after seeding with SEED."""
    rng = random.Random(SEED)
    return [d * rng.uniform(0.8, 1.2) for d in delays]


def claimed(attempts: int = 0, deferrals: int = 0, upstream_ref: str | None = None) -> Claimed:
    return Claimed(
        id=7,
        operation="campaign.trigger",
        target="camp-1",
        email="a@example.com",
        clevertap_id="ct-1",
        payload='{"email":"a@example.com"}',
        attempts=attempts,
        deferrals=deferrals,
        lease_token="token",
        upstream_ref=upstream_ref,
    )


def outcome(kind: AttemptOutcome, **kw: Any) -> Outcome:
    values: dict[str, Any] = {"status_code": 500, "reason": "why", "duration_ms": 3.0} | kw
    return Outcome(kind, **values)


# --- the table -----------------------------------------------------------------------------------


def test_the_table_holds_exactly_the_expected_edges() -> None:
    table = {
        (edge, src, dst)
        for edge, rule in EDGES.items()
        for src in (rule.from_states or {NEW})
        for dst in (rule.to_states or {GONE})
    }
    assert table == EXPECTED
    assert set(EDGES) == set(Edge)


@pytest.mark.parametrize("edge", list(Edge))
@pytest.mark.parametrize("state", list(State))
def test_every_edge_from_every_state(edge: Edge, state: State) -> None:
    allowed = any(e is edge and src == state for e, src, _ in EXPECTED)
    assert (state in EDGES[edge].from_states) is allowed


def test_terminal_states_are_left_only_by_an_operator() -> None:
    operator = {Edge.RETRY, Edge.RESEND, Edge.REPLAY, Edge.PURGE}
    leaving = {src for edge, src, _ in EXPECTED if edge not in operator}
    assert TERMINAL_STATES.isdisjoint(leaving)
    assert set(State) - {P, PK} == TERMINAL_STATES


def _changes() -> list[transitions.Change]:
    attempt = transitions.after_attempt(claimed(), outcome(AttemptOutcome.FAILED), NOW, POLICY)
    return [
        attempt,
        transitions.release_lease(NOW),
        transitions.reclaim_lease(NOW),
        transitions.skip(NOW, "echo"),
        transitions.resume_deferred(NOW),
        transitions.release_parked(NOW),
        transitions.expire_parked(NOW, ttl_hours=72),
        transitions.retry(NOW),
        transitions.replay(NOW),
        transitions.cancel(NOW),
        transitions.purge(),
    ]


POLICY = RetryPolicy([1, 2, 4], pause_probe_seconds=60)


def test_each_function_gives_a_change_of_its_edge() -> None:
    for change in _changes():
        rule = EDGES[change.edge]
        assert change.from_states == rule.from_states, change.edge
        assert (change.state is None) == (not rule.to_states)
        assert change.state is None or change.state in rule.to_states
    forced = transitions.retry(NOW, force=True)
    assert forced.edge is Edge.RESEND
    assert forced.from_states == EDGES[Edge.RETRY].from_states | EDGES[Edge.RESEND].from_states


def test_an_attempt_reaches_exactly_its_to_states() -> None:
    reached = {
        transitions.after_attempt(claimed(attempts=a), outcome(kind), NOW, POLICY).state
        for kind in AttemptOutcome
        for a in (0, 3)
    }
    assert reached == EDGES[Edge.ATTEMPT].to_states


def new(**kw: Any) -> NewDelivery:
    values: dict[str, Any] = {
        "operation": Operation.EVENT_UPLOAD,
        "upstream": Upstream.CLEVERTAP,
        "direction": Direction.MAILMODO_TO_CLEVERTAP,
        "target": "MM Email Opened",
        "email": "a@example.com",
        "clevertap_id": None,
        "payload": "{}",
    } | kw
    return NewDelivery(**values)


def test_admit() -> None:
    later = NOW + timedelta(hours=72)
    known = {"k@example.com": "__k"}
    plain = transitions.admit(new(clevertap_id="__c"), known, NOW)
    assert tuple(plain) == (P, "__c", None, NOW, None)
    resolved = transitions.admit(new(email="k@example.com", identity_policy="park"), known, NOW)
    assert resolved == (P, "__k", None, NOW, None)
    assert transitions.admit(new(identity_policy="email"), known, NOW) == (P, None, None, NOW, None)
    dropped = transitions.admit(new(identity_policy="drop"), known, NOW)
    assert (dropped.state, dropped.finished_at) == (DR, NOW)
    assert dropped.reason is not None
    assert "BRIDGE_UNRESOLVED_IDENTITY=drop" in dropped.reason
    parked = transitions.admit(new(identity_policy="park", park_until=later), known, NOW)
    assert (parked.state, parked.next_attempt_at, parked.finished_at) == (PK, later, None)
    assert parked.reason == f"waiting for a CleverTap ID for this email until {later.isoformat()}"
    no_email = transitions.admit(new(email=None, identity_policy="park"), known, NOW)
    assert no_email.state is DR
    asked = transitions.admit(new(clevertap_id="__c", state=F, reason="no"), known, NOW)
    assert (asked.state, asked.reason, asked.finished_at) == (F, "no", NOW)
    reached = {plain.state, dropped.state, parked.state, asked.state}
    assert reached == EDGES[Edge.ADMIT].to_states
    with pytest.raises(ValueError, match="cannot start delivered"):
        transitions.admit(new(state=DL), known, NOW)


# --- after an attempt (was RetryPolicy.transition) -----------------------------------------------


def test_delivered() -> None:
    t = transitions.after_attempt(
        claimed(attempts=1, deferrals=2, upstream_ref="old"),
        outcome(AttemptOutcome.DELIVERED, status_code=200, reason=None, ref="r-9"),
        NOW,
        RetryPolicy([1, 2]),
    )
    assert (t.state, t.attempt_number, t.attempts, t.deferrals) == (DL, 4, 2, 2)
    assert (t.upstream_ref, t.reason, t.finished_at, t.last_status_code) == ("r-9", None, NOW, 200)
    assert t.next_attempt_at == NOW  # not the old lease deadline
    assert t.updated_at == NOW


def test_failed() -> None:
    t = transitions.after_attempt(
        claimed(upstream_ref="kept"),
        outcome(AttemptOutcome.FAILED, status_code=400, reason="bad"),
        NOW,
        RetryPolicy([1]),
    )
    assert (t.state, t.attempt_number, t.attempts, t.reason) == (F, 1, 1, "bad")
    assert (t.finished_at, t.last_status_code, t.next_attempt_at) == (NOW, 400, NOW)
    assert t.upstream_ref == "kept"  # only a delivery changes the reference


def test_rate_limited_uses_no_attempt() -> None:
    t = transitions.after_attempt(
        claimed(attempts=2, deferrals=3),
        outcome(AttemptOutcome.RATE_LIMITED, status_code=429, retry_after=42.0),
        NOW,
        RetryPolicy([1]),
    )
    assert (t.state, t.attempt_number, t.attempts, t.deferrals) == (P, 6, 2, 4)
    assert t.next_attempt_at == NOW + timedelta(seconds=42)
    assert t.finished_at is None


def test_auth_error_waits_for_the_probe_and_uses_no_attempt() -> None:
    t = transitions.after_attempt(
        claimed(attempts=1), outcome(AttemptOutcome.AUTH_ERROR, status_code=401), NOW, POLICY
    )
    assert (t.state, t.attempts, t.deferrals) == (P, 1, 1)
    assert t.next_attempt_at == NOW + timedelta(seconds=60)


def test_retry_schedules_the_next_try() -> None:
    [first] = draws(1)
    t = transitions.after_attempt(claimed(), outcome(AttemptOutcome.RETRY), NOW, POLICY)
    assert (t.state, t.attempts, t.reason, t.finished_at) == (P, 1, "why", None)
    waited = (t.next_attempt_at - NOW).total_seconds()
    assert waited == pytest.approx(first, abs=1e-6)


def test_retry_after_the_last_delay_is_dead() -> None:
    t = transitions.after_attempt(
        claimed(attempts=3, deferrals=5),
        outcome(AttemptOutcome.RETRY, reason="503 again"),
        NOW,
        POLICY,
    )
    assert (t.state, t.attempt_number, t.attempts, t.finished_at) == (DE, 9, 4, NOW)
    assert t.reason == "gave up after 4 attempts; last: 503 again"


def test_release_lease_gives_the_row_back_due_now() -> None:
    change = transitions.release_lease(NOW)
    assert (change.state, change.updated_at) == (P, NOW)


def test_reclaim_lease_gives_the_row_back_due_now() -> None:
    change = transitions.reclaim_lease(NOW)
    assert (change.edge, change.state, change.updated_at) == (Edge.RECLAIM_LEASE, P, NOW)


# --- every edge from every state, applied by the repositories ------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


_SERIAL = itertools.count()


def one_per_state(engine: Engine, **values: Any) -> dict[State, int]:
    """One unleased row in each state, due in the past, its email known as an identity."""
    ids: dict[State, int] = {}
    with engine.begin() as conn:
        for state in State:
            email = f"{state.value}-{next(_SERIAL)}@example.com"
            conn.execute(
                insert(Identity),
                [{"email": email, "clevertap_id": "__id", "source": "t", "updated_at": T0}],
            )
            row = {
                "direction": Direction.MAILMODO_TO_CLEVERTAP.value,
                "upstream": Upstream.CLEVERTAP.value,
                "operation": Operation.EVENT_UPLOAD.value,
                "target": "MM Email Opened",
                "email": email,
                "payload": "{}",
                "state": state,
                "attempts": 1,
                "deferrals": 0,
                "next_attempt_at": T0 - timedelta(minutes=1),
                "created_at": T0 - timedelta(days=30),
                "updated_at": T0 - timedelta(days=30),
            } | values
            ids[state] = conn.execute(insert(Delivery).returning(Delivery.id), [row]).scalar_one()
    return ids


def states_after(engine: Engine, ids: dict[State, int]) -> dict[State, tuple[State | None, Any]]:
    """What each row became: (state or None when deleted, updated_at)."""
    with engine.connect() as conn:
        rows = {
            r.id: (r.state, r.updated_at)
            for r in conn.execute(
                select(Delivery.id, Delivery.state, Delivery.updated_at).where(
                    Delivery.id.in_(ids.values())
                )
            )
        }
    return {s: rows.get(i, (None, None)) for s, i in ids.items()}


def assert_walk(engine: Engine, ids: dict[State, int], change: transitions.Change) -> None:
    after = states_after(engine, ids)
    for state, (now_state, updated_at) in after.items():
        if state in change.from_states:
            assert now_state == change.state, (change.edge, state)
            assert now_state is None or updated_at == T0, (change.edge, state)
        else:
            assert (now_state, updated_at) == (state, T0 - timedelta(days=30)), (change.edge, state)


ALL_STATES = DeliveryFilter(states=tuple(s.value for s in State))


def test_operator_edges_from_every_state(db: Engine) -> None:
    for change in (
        transitions.retry(T0),
        transitions.retry(T0, force=True),
        transitions.cancel(T0),
    ):
        ids = one_per_state(db)
        with db.begin() as conn:
            for delivery_id in ids.values():
                admin_repo.apply_one(conn, delivery_id, change)
        assert_walk(db, ids, change)

    ids = one_per_state(db)
    replay = transitions.replay(T0)
    with db.begin() as conn:
        admin_repo.replay_batch(conn, ALL_STATES, replay, after_id=0, limit=1000)
    assert_walk(db, ids, replay)

    ids = one_per_state(db)
    purge = transitions.purge()
    with db.begin() as conn:
        admin_repo.purge_batch(conn, ALL_STATES, purge, cutoff=T0, after_id=0, limit=1000)
    assert_walk(db, ids, purge)


def test_parked_edges_from_every_state(db: Engine) -> None:
    ids = one_per_state(db)
    with db.begin() as conn:
        repository.release_resolvable_parked(conn, transitions.release_parked(T0))
    assert_walk(db, ids, transitions.release_parked(T0))

    ids = one_per_state(db)
    with db.connect() as conn:
        emails = list(conn.execute(select(Delivery.email).where(Delivery.id.in_(ids.values()))))
    with db.begin() as conn:
        repository.release_parked(
            conn,
            [{"email": e, "clevertap_id": "__id"} for (e,) in emails],
            transitions.release_parked(T0),
        )
    assert_walk(db, ids, transitions.release_parked(T0))

    ids = one_per_state(db)
    expire = transitions.expire_parked(T0, ttl_hours=72)
    with db.begin() as conn:
        repository.expire_parked(conn, expire)
    assert_walk(db, ids, expire)


def test_resume_deferred_from_every_state(db: Engine) -> None:
    ids = one_per_state(db, last_status_code=401, next_attempt_at=T0 + timedelta(hours=1))
    resume = transitions.resume_deferred(T0)
    with db.begin() as conn:
        repository.resume_auth_deferred(conn, Upstream.CLEVERTAP.value, resume)
    assert_walk(db, ids, resume)


def test_lease_edges_start_only_from_pending(db: Engine) -> None:
    """Only a pending row can be leased; the lease then guards attempt and release."""
    ids = one_per_state(db)
    with db.begin() as conn:
        taken = repository.claim_due(
            conn, upstream=Upstream.CLEVERTAP, limit=100, now=T0, lease_seconds=60, worker_id="w"
        )
    assert [c.id for c in taken] == [ids[P]]
    with db.begin() as conn:
        assert repository.update_leased(conn, taken[0], transitions.release_lease(T0))
    with db.begin() as conn:
        [again] = repository.claim_due(
            conn, upstream=Upstream.CLEVERTAP, limit=100, now=T0, lease_seconds=60, worker_id="w"
        )
        change = transitions.after_attempt(again, outcome(AttemptOutcome.FAILED), T0, POLICY)
        assert repository.finish_many(conn, [(again, change)]) == 1
    assert states_after(db, ids)[P] == (F, T0)


def test_reclaim_lease_from_every_state(db: Engine) -> None:
    """Only pending rows leased by the gone worker come back; the guard refuses the others
    (even a row in another state that somehow kept ``leased_by``)."""
    gone = one_per_state(db, leased_by="gone-worker", lease_token="t1")
    other = one_per_state(db, leased_by="live-worker", lease_token="t2")
    change = transitions.reclaim_lease(T0)
    with db.begin() as conn:
        assert leases.reclaim_leases(conn, change, ["gone-worker"]) == 1
    assert_walk(db, gone, change)
    assert all(
        updated == T0 - timedelta(days=30) for _, updated in states_after(db, other).values()
    )
    with db.connect() as conn:
        row = conn.execute(select(Delivery).where(Delivery.id == gone[P])).one()
    assert (row.lease_token, row.leased_by, row.next_attempt_at, row.attempts) == (
        None,
        None,
        T0,
        1,
    )


# --- nothing else writes a state -----------------------------------------------------------------

APP = Path(__file__).resolve().parents[2] / "app"
#: The only modules that put a state into SQL, and only a change's state.
APPLIERS = {"outbox/repository.py", "admin/repository.py", "outbox/claim_repository.py"}
STATE_VALUES = {s.value for s in State}


def _names_a_state(node: ast.AST) -> bool:
    """Whether an expression spells a state itself (``State.X`` or ``"pending"``)."""
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.value, ast.Name)
            and sub.value.id == "State"
        ):
            return True
        if isinstance(sub, ast.Constant) and sub.value in STATE_VALUES:
            return True
    return False


def _state_writes(tree: ast.AST) -> Iterator[tuple[int, str, ast.expr]]:
    """``.values(state=...)`` keywords, ``state=...`` keywords and ``"state": ...`` entries."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            is_values = isinstance(node.func, ast.Attribute) and node.func.attr == "values"
            for kw in node.keywords:
                if kw.arg == "state":
                    yield node.lineno, "values" if is_values else "keyword", kw.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "state":
                    yield node.lineno, "dict", value


def test_only_transitions_decide_a_state_and_only_repositories_write_it() -> None:
    found = []
    for path in sorted(APP.rglob("*.py")):
        name = path.relative_to(APP).as_posix()
        if name in {"outbox/transitions.py", "outbox/models.py"}:
            continue
        for line, kind, value in _state_writes(ast.parse(path.read_text())):
            if _names_a_state(value):
                found.append(f"{name}:{line}: {kind} spells a state: {ast.unparse(value)}")
            elif kind == "values" and name not in APPLIERS:
                found.append(f"{name}:{line}: writes the state column outside a repository")
    assert found == []


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = "update(t).values(state=State.DEAD)\nx = {'state': 'pending'}\nf(state=s)"
    kinds = [(kind, _names_a_state(v)) for _, kind, v in _state_writes(ast.parse(bad))]
    assert sorted(kinds) == [("dict", True), ("keyword", False), ("values", True)]
