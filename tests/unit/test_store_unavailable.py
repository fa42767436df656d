"""Every operation of the contract, on each server store, says "unavailable" for a lost server.

The stores are composed of parts (one module per concern, see ``sagaz/storage/postgres/``);
:func:`~sagaz.storage.unavailable.raises_unavailable` must wrap the operations each part
defines, not only those of the final class. Here the store's connection is refused (its
``_db`` raises what a driver raises for a server that is down, before any I/O) and the
schema commands point at a port nothing listens on; every operation must raise
:class:`~sagaz.exceptions.StoreUnavailableError` with the driver's error as its cause. The
real outage (a server stopped under a running store) is tests/chaos/test_outages.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import socket
from collections.abc import Callable
from typing import Any

import pytest

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.redis import RedisSagaStore
from sagaz.types import SagaStatus, StepStatus

NOW = utcnow()
SAGA = SagaRecord("s-1", "Order", SagaStatus.RUNNING, {})
STEP = StepRecord("s-1", "charge", StepStatus.COMPLETED)
MESSAGE = OutboxMessage("s-1", "orders", {"n": 1})

#: arguments of every contract operation, by name
ARGUMENTS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "acquire_lease": (("lease", "me", 1.0), {}),
    "add_dead_letter": ((DeadLetterRecord("t", "Order", {}, "boom", "failed"),), {}),
    "add_saga_history": ((SagaHistoryRecord("s-1", "pause"),), {}),
    "add_saga_request": ((SagaControlRequest("s-1", SagaAction.CANCEL),), {}),
    "claim_cron_tick": (("t", NOW, "me"), {}),
    "claim_event": (("t", "k", dataclasses.replace(SAGA, owner="me", lease_expires_at=NOW)), {}),
    "claim_events": (
        ("t", [("k", dataclasses.replace(SAGA, owner="me", lease_expires_at=NOW))]),
        {},
    ),
    "claim_inbox": (("t", "k", "s-1", "me", NOW), {}),
    "claim_saga": (("s-1", "me", NOW), {}),
    "take_over_saga": (("s-1", "me", NOW), {}),
    "complete_inbox": (("t", "k"), {}),
    "complete_trigger_execution": (("t", "s-1"), {}),
    "create_saga": ((SAGA,), {}),
    "delete_dead_letter": ((1,), {}),
    "delete_saga": (("s-1",), {}),
    "delete_steps": (("s-1", ["charge"]), {}),
    "fetch_outbox": ((), {}),
    "finish_saga_request": (("s-1", SagaAction.CANCEL), {}),
    "get_dead_letter": ((1,), {}),
    "get_saga": (("s-1",), {}),
    "get_steps": (("s-1",), {}),
    "get_trigger_schedule": (("t",), {}),
    "last_cron_tick": (("t",), {}),
    "list_dead_letters": ((), {}),
    "list_recoverable": ((NOW,), {}),
    "list_saga_history": (("s-1",), {}),
    "list_saga_outbox": (("s-1",), {}),
    "list_saga_requests": ((), {}),
    "list_sagas": ((), {}),
    "list_trigger_executions": (("t",), {}),
    "list_trigger_schedules": ((), {}),
    "mark_outbox_sent": (([1],), {}),
    "purge_expired": ((NOW,), {}),
    "purge_dead_letters": ((NOW,), {"limit": 10}),
    "purge_sagas": ((NOW,), {"limit": 10}),
    "release_inbox": (("t", "k"), {}),
    "release_lease": (("lease", "me"), {}),
    "release_saga": (("s-1", "me", NOW), {}),
    "renew_lease": (("lease", "me", 1.0), {}),
    "renew_leases": (("me", NOW), {}),
    "reset_steps": (("s-1",), {}),
    "save_checkpoint": ((SAGA, [STEP], [MESSAGE]), {"complete_inbox": ("t", "k")}),
    "save_saga": ((SAGA, [MESSAGE]), {}),
    "save_step": ((STEP, [MESSAGE]), {}),
    "save_trigger_schedule": ((TriggerScheduleRecord("t", "Order", 1000, False),), {}),
    "schema_versions": ((), {}),
    "set_trigger_enabled": (("t", False), {}),
    "start_trigger_execution": (
        (TriggerExecutionRecord("t", "hash", "s-1"),),
        {"exclusive": True},
    ),
    "take_rate_token": (("rate", 10.0, 1), {}),
    "touch_trigger_schedule": (("t", NOW), {}),
    "upgrade_schema": ((), {}),
}


def _contract_operations() -> list[str]:
    """The contract's public coroutine methods but ``start``/``stop``."""
    return sorted(
        name
        for name, member in vars(SagaStore).items()
        if not name.startswith("_")
        and name not in ("start", "stop")
        and inspect.iscoroutinefunction(member)
    )


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _refused() -> Any:
    raise ConnectionRefusedError(111, "Connection refused")


STORES: dict[str, Callable[[int], SagaStore]] = {
    "postgres": lambda port: PostgresSagaStore(f"postgresql://postgres@127.0.0.1:{port}/x"),
    "redis": lambda port: RedisSagaStore(f"redis://127.0.0.1:{port}/0"),
}


def test_every_contract_operation_has_arguments_here() -> None:
    assert sorted(ARGUMENTS) == _contract_operations()


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("operation", _contract_operations())
async def test_a_refused_connection_is_store_unavailable_from_every_operation(
    kind: str, operation: str
) -> None:
    pytest.importorskip("asyncpg" if kind == "postgres" else "redis")
    store = STORES[kind](_closed_port())
    store._db = _refused  # type: ignore[attr-defined]  # the pool/client of a server that is down
    args, kwargs = ARGUMENTS[operation]
    with pytest.raises(StoreUnavailableError) as info:
        await getattr(store, operation)(*args, **kwargs)
    assert info.value.__cause__ is not None  # the driver's error, for the logs


@pytest.mark.parametrize("operation", ["claim_event", "save_checkpoint"])
def test_the_postgres_hot_operations_have_no_wrapper_coroutine(operation: str) -> None:
    # their errors surface where they are translated already (the store's _committer(), the
    # group committer's futures): no extra coroutine per call; the test above still holds
    method = getattr(PostgresSagaStore, operation)
    assert not hasattr(method, "__wrapped__"), method
