"""``HandOver`` halves a group's hand-over only while the event loop's thread gets a core
when it wants one (the group committers' use of it is in test_postgres_group_committer.py
and test_redis_group_commit.py)."""

from __future__ import annotations

import asyncio
import time

from sagaz.storage import group_commit
from sagaz.storage.group_commit import CONTENDED, FREE, WINDOW, HandOver


class _Stat:
    """A thread's schedstat: on a core ``share`` of the time, waiting for one ``wait`` times
    as long as it runs."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.share = 0.5
        self.ran = self.waited = 0.0
        self.last = time.monotonic_ns()

    def __call__(self) -> tuple[int, int]:
        now = time.monotonic_ns()
        ran = (now - self.last) * self.share
        self.ran += ran
        self.waited += ran * self.wait
        self.last = now
        return int(self.ran), int(self.waited)


async def _order(
    hand_over: HandOver, *, alone: bool = True, size: int = 20, first: int = 0
) -> list[object]:
    """What happened, in order: each caller given its result, and a loop turn ("turn")."""
    seen: list[object] = []
    asyncio.get_running_loop().call_soon(seen.append, "turn")
    give = lambda c, r: seen.append(c)  # noqa: E731
    await hand_over(list(range(size)), [None] * size, give, alone=alone, first=first)
    await asyncio.sleep(0)
    return seen


async def _after_a_window(hand_over: HandOver) -> None:
    """Let one measurement window pass (the first call starts it)."""
    await _order(hand_over)
    await asyncio.sleep(WINDOW * 1.5)


HALVES = [*range(10), "turn", *range(10, 20)]
WHOLE = [*range(20), "turn"]


async def test_a_thread_that_gets_a_core_hands_a_group_over_in_two_halves() -> None:
    hand_over = HandOver(_Stat(wait=0.0))
    await _after_a_window(hand_over)
    assert await _order(hand_over) == HALVES
    assert hand_over.halving


async def test_a_thread_waiting_for_a_core_hands_groups_over_whole() -> None:
    stat = _Stat(wait=1.0)
    hand_over = HandOver(stat)
    await _after_a_window(hand_over)
    assert await _order(hand_over) == WHOLE
    # between the two thresholds it keeps to what it does
    stat.wait = (FREE + CONTENDED) / 2
    await _after_a_window(hand_over)
    assert await _order(hand_over) == WHOLE
    # and halves again once the cores are free, and keeps halving between them
    stat.wait = 0.0
    await _after_a_window(hand_over)
    assert await _order(hand_over) == HALVES
    stat.wait = (FREE + CONTENDED) / 2
    await _after_a_window(hand_over)
    assert await _order(hand_over) == HALVES


async def test_small_groups_and_groups_back_beside_another_are_handed_over_whole() -> None:
    hand_over = HandOver(_Stat(wait=0.0))
    assert await _order(hand_over, alone=False) == WHOLE
    assert await _order(hand_over, size=group_commit.SPLIT_AT - 1) == [
        *range(group_commit.SPLIT_AT - 1),
        "turn",
    ]


async def test_where_the_waiting_is_not_known_it_always_halves() -> None:
    hand_over = HandOver(lambda: None)
    await _after_a_window(hand_over)
    assert await _order(hand_over) == HALVES


def test_this_machine_reports_the_waiting_or_nothing() -> None:
    stat = group_commit._schedstat()
    assert stat is None or (stat[0] > 0 and stat[1] >= 0)


async def test_it_halves_from_the_start_until_a_window_tells_the_cores_are_busy() -> None:
    hand_over = HandOver(_Stat(wait=1.0))
    assert await _order(hand_over) == HALVES  # the first window has only begun
    await asyncio.sleep(WINDOW * 1.5)
    assert await _order(hand_over) == WHOLE


async def test_a_window_in_which_the_thread_hardly_ran_tells_nothing() -> None:
    stat = _Stat(wait=1.0)
    hand_over = HandOver(stat)
    await _after_a_window(hand_over)
    assert await _order(hand_over) == WHOLE
    stat.wait, stat.share = 0.0, 0.001  # on a core 0.1% of the time: under 5 ms a window
    await asyncio.sleep(WINDOW * 1.5)
    assert await _order(hand_over) == WHOLE  # kept: too little to tell
    stat.share = 0.5
    await asyncio.sleep(WINDOW * 1.5)
    assert await _order(hand_over) == HALVES  # the window went on until it could tell


async def test_while_halving_the_callers_that_start_new_work_go_a_loop_turn_first() -> None:
    hand_over = HandOver(_Stat(wait=0.0))
    await _after_a_window(hand_over)
    for alone in (True, False):  # back beside another group or not
        assert await _order(hand_over, alone=alone, first=3) == [0, 1, 2, "turn", *range(3, 20)]
        # small groups too
        assert await _order(hand_over, alone=alone, size=4, first=1) == [0, "turn", 1, 2, 3]
    # all of a group, or none: as without
    assert await _order(hand_over, alone=False, first=20) == WHOLE
    assert await _order(hand_over, alone=True, first=20) == HALVES


async def test_a_thread_waiting_for_a_core_hands_them_over_with_the_others() -> None:
    hand_over = HandOver(_Stat(wait=1.0))
    await _after_a_window(hand_over)
    assert await _order(hand_over, alone=False, first=3) == WHOLE
    assert await _order(hand_over, alone=True, first=3) == WHOLE
