"""``PgGroupCommitter.run`` refuses an operation it could not run, and starts one flusher for
the operations queued at once (the group commit itself is covered against a real server by
``tests/integration/test_postgres_group_commit.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaz.exceptions import StoreUnavailableError
from sagaz.storage.group_commit import HandOver
from sagaz.storage.postgres_groups import PgGroupCommitter


async def test_an_operation_without_a_function_or_a_batch_is_refused_at_once() -> None:
    groups = PgGroupCommitter(None, unavailable=lambda exc: False, label="PostgreSQL store")
    with pytest.raises(TypeError, match="give an operation, a batch, or both"):
        groups.run(None)
    await groups.close()  # nothing was queued: no flusher to wait for


class _Pool:
    """A pool whose connections run nothing: the operations below do not touch them. It
    counts the connections taken and given back."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[object] = []

    async def acquire(self) -> _Connection:
        self.acquired += 1
        return _Connection()

    async def release(self, conn: object) -> None:
        self.released.append(conn)


class _Connection:
    """A connection that runs nothing, open until ``closed`` is set; ``detached``: as asyncpg
    leaves a pooled connection that closed (given back to its pool by itself)."""

    closed = False
    detached = False

    def is_closed(self) -> bool:
        if self.detached:
            raise RuntimeError("cannot call Connection.is_closed(): released to the pool")
        return self.closed


async def test_operations_queued_at_once_start_one_flusher_and_share_its_group() -> None:
    groups = PgGroupCommitter(
        _Pool(), unavailable=lambda exc: False, label="PostgreSQL store", connections=4
    )
    groups._transaction = _no_transaction  # type: ignore[method-assign]

    async def op(conn: object, n: int) -> int:
        return n * 10

    futures = [groups.run(op, n) for n in range(10)]
    # one flusher takes them all: the others would only find the queue empty
    assert len(groups._flushers) == 1
    assert await asyncio.gather(*futures) == [n * 10 for n in range(10)]
    assert groups.commits == 1
    # once it has taken the queue, what comes next gets a flusher of its own
    assert await groups.run(op, 5) == 50
    assert groups.commits == 2
    await groups.close()


async def _no_transaction(conn: object, group: list[Any]) -> list[tuple[Any, None]]:
    """The committer's transaction without a server: each operation run, nothing to commit."""
    return [(await queued.call(conn), None) for queued in group]


class _Recording:
    """The committer's transaction without a server, recording each group's operations."""

    def __init__(self) -> None:
        self.groups: list[list[Any]] = []

    async def __call__(self, conn: object, group: list[Any]) -> list[tuple[Any, None]]:
        self.groups.append([queued.arg for queued in group])
        return [(await queued.call(conn), None) for queued in group]


async def _caller(groups: PgGroupCommitter, name: str, rounds: int) -> list[str]:
    """One caller writing ``rounds`` times, each write awaited before the next."""

    async def op(conn: object, arg: str) -> str:
        return arg.upper()

    return [await groups.run(op, f"{name}-{n}") for n in range(rounds)]


async def test_a_group_back_while_the_server_idles_is_handed_over_in_two_halves() -> None:
    groups = PgGroupCommitter(
        _Pool(), unavailable=lambda exc: False, label="PostgreSQL store", connections=4
    )
    recording = _Recording()
    groups._transaction = recording  # type: ignore[method-assign]
    groups._handing = HandOver(lambda: None)  # cores free or not known: it halves
    results = await asyncio.gather(*(_caller(groups, f"c{k}", 3) for k in range(20)))
    # every caller got its own results, in its order
    assert results == [[f"C{k}-{n}" for n in range(3)] for k in range(20)]
    first, second = recording.groups[:2]
    assert first == [f"c{k}-0" for k in range(20)]
    # the first half ran on to its next write, sent before the second half had its results
    assert second == [f"c{k}-1" for k in range(10)]
    assert "c10-1" in recording.groups[2]
    await groups.close()


async def _one_group_held() -> tuple[PgGroupCommitter, _Recording, asyncio.Event, Any]:
    """A committer on four connections whose first group (``"held"``) stays at the "server"
    until the returned gate opens; its results halved only if it came back alone; the
    held group's awaitable."""
    groups = PgGroupCommitter(
        _Pool(), unavailable=lambda exc: False, label="PostgreSQL store", connections=4
    )
    recording = _Recording()
    groups._transaction = recording  # type: ignore[method-assign]
    groups._handing = HandOver(lambda: None)  # it would halve a group back alone
    gate = asyncio.Event()

    async def held(conn: object, arg: str) -> str:
        await gate.wait()
        return arg

    slow = groups.run(held, "held")
    await asyncio.sleep(0.01)  # its flusher has sent it
    return groups, recording, gate, slow


async def test_a_group_back_while_another_is_at_the_server_is_handed_over_at_once() -> None:
    groups, recording, gate, slow = await _one_group_held()
    callers = asyncio.gather(*(_caller(groups, f"c{k}", 2) for k in range(20)))
    await asyncio.sleep(0.01)
    gate.set()
    assert await slow == "held"
    await callers
    assert recording.groups[1] == [f"c{k}-0" for k in range(20)]
    # back while "held" was still out: all twenty results at once, one next group
    assert recording.groups[2] == [f"c{k}-1" for k in range(20)]
    await groups.close()


async def test_callers_that_start_new_work_get_their_results_a_loop_turn_first() -> None:
    groups, recording, gate, slow = await _one_group_held()

    async def op(conn: object, arg: str) -> str:
        return arg.upper()

    async def caller(name: str, first: bool) -> list[str]:
        return [await groups.run(op, f"{name}-{n}", first=first) for n in range(2)]

    # the claims ("e", first) queued after the checkpoints ("s") of the same group
    callers = asyncio.gather(
        *(caller(f"s{k}", False) for k in range(10)), *(caller(f"e{k}", True) for k in range(10))
    )
    await asyncio.sleep(0.01)
    gate.set()
    assert await slow == "held"
    results = await callers
    assert results[10] == ["E0-0", "E0-1"] and results[0] == ["S0-0", "S0-1"]
    assert recording.groups[1] == [*(f"s{k}-0" for k in range(10)), *(f"e{k}-0" for k in range(10))]
    # back while "held" was still out, yet the claims' callers had theirs a loop turn before
    # the others: their next writes left as a group of their own
    assert recording.groups[2] == [f"e{k}-1" for k in range(10)]
    assert recording.groups[3] == [f"s{k}-1" for k in range(10)]
    await groups.close()


async def test_groups_in_turn_run_on_one_connection_kept_until_close() -> None:
    pool = _Pool()
    groups = PgGroupCommitter(
        pool, unavailable=lambda exc: False, label="PostgreSQL store", connections=4
    )
    groups._transaction = _no_transaction  # type: ignore[method-assign]
    seen: list[object] = []

    async def op(conn: object, n: int) -> int:
        seen.append(conn)
        return n

    for n in range(5):  # each awaited: five groups, one after the other
        assert await groups.run(op, n) == n
    assert groups.commits == 5
    # taken from the pool once, not once per group (that cost more than the round trip)
    assert pool.acquired == 1
    assert len(set(map(id, seen))) == 1
    assert pool.released == []
    await groups.close()
    assert pool.released == [seen[0]]


async def test_a_connection_whose_group_was_lost_goes_back_to_the_pool() -> None:
    pool = _Pool()
    groups = PgGroupCommitter(
        pool, unavailable=lambda exc: isinstance(exc, OSError), label="PostgreSQL store"
    )
    seen: list[object] = []

    async def lose(conn: object, group: list[Any]) -> list[tuple[Any, None]]:
        seen.append(conn)
        raise OSError("connection reset")  # the server went away mid-group

    groups._transaction = lose  # type: ignore[method-assign]

    async def op(conn: object, n: int) -> int:
        return n

    with pytest.raises(StoreUnavailableError):
        await groups.run(op, 1)
    assert pool.released == [seen[0]]  # given back: the pool replaces a broken connection
    groups._transaction = _no_transaction  # type: ignore[method-assign]
    assert await groups.run(op, 2) == 2
    assert pool.acquired == 2  # the next group took another
    await groups.close()
    assert len(pool.released) == 2


@pytest.mark.parametrize("how", ["closed", "detached"])
async def test_a_kept_connection_the_server_closed_is_replaced_before_the_next_group(
    how: str,
) -> None:
    pool = _Pool()
    groups = PgGroupCommitter(pool, unavailable=lambda exc: False, label="PostgreSQL store")
    groups._transaction = _no_transaction  # type: ignore[method-assign]
    seen: list[Any] = []

    async def op(conn: object, n: int) -> int:
        seen.append(conn)
        return n

    assert await groups.run(op, 1) == 1
    setattr(seen[0], how, True)  # e.g. the server restarted while the committer kept it
    assert await groups.run(op, 2) == 2
    assert seen[1] is not seen[0]
    assert pool.released == [seen[0]]  # given back: the pool replaces it
    await groups.close()
    assert pool.released == [seen[0], seen[1]]


async def test_without_keep_each_group_gives_its_connection_back() -> None:
    # a pool with no connection to spare: the store's reads need the one the groups use
    pool = _Pool()
    groups = PgGroupCommitter(
        pool, unavailable=lambda exc: False, label="PostgreSQL store", keep=False
    )
    groups._transaction = _no_transaction  # type: ignore[method-assign]

    async def op(conn: object, n: int) -> int:
        return n

    for n in range(3):
        assert await groups.run(op, n) == n
        assert len(pool.released) == pool.acquired == n + 1
    await groups.close()
    assert len(pool.released) == 3


class _Deadlock(Exception):
    """As asyncpg raises a deadlock victim's error: SQLSTATE 40P01."""

    sqlstate = "40P01"


class _Deadlocking:
    """The committer's transaction without a server: the operation whose argument is
    ``victim`` comes back as a deadlock victim (its savepoint retries spent) the first
    ``times`` groups it is in; the others run."""

    def __init__(self, victim: str, times: int) -> None:
        self.victim, self.times = victim, times
        self.groups: list[list[Any]] = []

    async def __call__(self, conn: object, group: list[Any]) -> list[tuple[Any, Any]]:
        self.groups.append([queued.arg for queued in group])
        outcomes: list[tuple[Any, Any]] = []
        for queued in group:
            if queued.arg == self.victim and self.times:
                self.times -= 1
                outcomes.append((None, _Deadlock("deadlock detected")))
            else:
                outcomes.append((await queued.call(conn), None))
        return outcomes


async def _upper(conn: object, arg: str) -> str:
    return arg.upper()


async def test_a_deadlock_victim_runs_again_in_a_later_group_of_its_own_transaction() -> None:
    # found by the frozen-worker chaos test: a checkpoint that kept deadlocking in its
    # savepoint (its group's own locks were what the other transaction waited for) failed
    # its saga's step with the driver's error: compensated and dead-lettered, its steps done
    groups = PgGroupCommitter(_Pool(), unavailable=lambda exc: False, label="PostgreSQL store")
    deadlocking = _Deadlocking("victim", times=2)
    groups._transaction = deadlocking  # type: ignore[method-assign]
    results = await asyncio.gather(*(groups.run(_upper, arg) for arg in ("a", "victim", "b")))
    assert results == ["A", "VICTIM", "B"]
    # the others' results came with their group; the victim ran in two more groups
    assert deadlocking.groups == [["a", "victim", "b"], ["victim"], ["victim"]]
    await groups.close()


async def test_an_operation_that_keeps_deadlocking_fails_as_unavailable_for_now() -> None:
    groups = PgGroupCommitter(_Pool(), unavailable=lambda exc: False, label="PostgreSQL store")
    groups._transaction = _Deadlocking("victim", times=100)  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailableError, match="kept deadlocking") as raised:
        await groups.run(_upper, "victim")
    assert isinstance(raised.value.__cause__, _Deadlock)  # the saga waits, then resumes
    assert await groups.run(_upper, "other") == "OTHER"
    await groups.close()
