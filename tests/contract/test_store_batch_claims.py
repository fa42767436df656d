"""``SagaStore.claim_events``: admission's claim of a broker poll's events, on every store,
answers for each key what ``claim_event`` would, in order, and writes what it would."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import ClaimOutcome, SagaRecord
from sagaz.types import SagaStatus
from tests.contract.store_backends import from_now, saga_record


def _earlier(seconds: float = 1) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def _event_saga(saga_id: str, **changes: Any) -> SagaRecord:
    base = saga_record(saga_id, context={}, event={"id": 7}, owner="a", lease_expires_at=from_now())
    return dataclasses.replace(base, trigger_id="t", **changes)


async def test_a_batch_of_event_claims_answers_each_key_in_order(store: SagaStore) -> None:
    await store.claim_inbox("t", "done", "s-done", "x", from_now())
    await store.complete_inbox("t", "done")
    await store.claim_inbox("t", "held", "s-held", "x", from_now())
    await store.claim_event(
        "t", "lapsed", _event_saga("s-lapsed", owner="x", lease_expires_at=_earlier())
    )
    await store.save_saga(saga_record("s-lapsed", status=SagaStatus.RUNNING, context={"n": 2}))

    claims = await store.claim_events(
        "t",
        [
            ("k0", _event_saga("s0")),
            ("done", _event_saga("s-done")),
            ("k1", _event_saga("s1")),
            ("held", _event_saga("s-held")),
            ("lapsed", _event_saga("s-lapsed")),
        ],
    )

    assert [(c.outcome, c.saga_id, c.created) for c in claims] == [
        (ClaimOutcome.CLAIMED, "s0", True),
        (ClaimOutcome.DUPLICATE, "s-done", False),
        (ClaimOutcome.CLAIMED, "s1", True),
        (ClaimOutcome.BUSY, "s-held", False),
        (ClaimOutcome.TAKEN_OVER, "s-lapsed", False),
    ]
    assert claims[4].saga is not None and claims[4].saga.context == {"n": 2}
    for saga_id in ("s0", "s1"):
        stored = await store.get_saga(saga_id)
        assert stored is not None and stored.status is SagaStatus.PENDING
        assert stored.owner == "a" and stored.event == {"id": 7}
    assert await store.get_saga("s-done") is None and await store.get_saga("s-held") is None
    # the new keys are held like any claimed key
    busy = await store.claim_inbox("t", "k1", "s1", "b", from_now())
    assert (busy.outcome, busy.owner) == (ClaimOutcome.BUSY, "a")


async def test_an_empty_batch_of_event_claims_answers_nothing(store: SagaStore) -> None:
    assert await store.claim_events("t", []) == []
