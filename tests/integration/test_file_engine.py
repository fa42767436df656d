"""File triggers end to end: real files, real watchfiles, the engine, sagas in the store.

``tests/integration/test_file_source.py`` checks the source against a recording ``emit``; here
each file walks the whole pipeline and the tests count completed sagas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagaz import FileEvent, Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.sources.file import FileSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import continually, eventually
from tests.services import unique_name

pytest.importorskip("watchfiles")

SETTLE_MS = 100
MIB = 1 << 20
WRITER_PAUSE = 0.03  # seconds between the chunks of the big file


@dataclass
class Imports:
    """The saga of one test and what its step saw."""

    name: str
    seen: list[tuple[str, int]]  # (file name, size) per run of the step

    @property
    def trigger_id(self) -> str:
        return f"{self.name}.on_file"


def define_imports(inbox: Path, pattern: str = "*.json", settle_ms: int = SETTLE_MS) -> Imports:
    imports = Imports(unique_name("imports"), [])

    class ImportSaga(Saga):
        saga_name = imports.name

        @trigger(source="file", path=str(inbox), pattern=pattern, settle_ms=settle_ms)
        def on_file(self, event: FileEvent) -> dict[str, Any]:
            return {"path": event.path, "size": event.size}

        @action("load")
        async def load(self, ctx: SagaContext) -> dict[str, Any]:
            imports.seen.append((os.path.basename(ctx["path"]), ctx["size"]))
            return {"loaded": True}

    return imports


@contextlib.asynccontextmanager
async def watching(imports: Imports) -> AsyncIterator[tuple[TriggerEngine, MemorySagaStore]]:
    """Run the engine until the block ends; wait until the directory is watched first."""
    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(shutdown_timeout=5), store) as engine:
        source = engine.sources[imports.trigger_id]
        assert isinstance(source, FileSource)
        await asyncio.wait_for(source.ready.wait(), timeout=10)
        yield engine, store


async def completed_files(store: MemorySagaStore, imports: Imports) -> Counter[str]:
    """Completed sagas per file name."""
    sagas = await store.list_sagas(
        status=SagaStatus.COMPLETED, saga_name=imports.name, limit=10_000
    )
    return Counter(os.path.basename(s.context["path"]) for s in sagas)


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def sentinel(store: MemorySagaStore, imports: Imports, path: Path) -> None:
    """Drop a matching file and wait for its saga: every file before it has been handled."""
    write(path, '{"sentinel": true}')

    async def done() -> bool:
        return (await completed_files(store, imports))[path.name] >= 1

    await eventually(done, within=15, what=f"the saga of the sentinel {path.name}")


async def test_a_hundred_files_dropped_give_exactly_a_hundred_completed_sagas(
    tmp_path: Path,
) -> None:
    imports = define_imports(tmp_path)
    names = [f"order-{i:03}.json" for i in range(100)]
    async with watching(imports) as (engine, store):
        for i, name in enumerate(names):
            write(tmp_path / name, f'{{"id": {i}}}')

        async def all_done() -> bool:
            return sum((await completed_files(store, imports)).values()) >= 100

        await eventually(all_done, within=30, what="100 completed sagas")
        await sentinel(store, imports, tmp_path / "zz-sentinel.json")
        per_file = await completed_files(store, imports)
        total = len(await store.list_sagas(saga_name=imports.name, limit=10_000))

    assert sorted(per_file) == [*names, "zz-sentinel.json"]
    assert set(per_file.values()) == {1}
    assert total == 101  # nothing pending, failed or compensated besides
    assert Counter(name for name, _ in imports.seen) == Counter(per_file)
    sizes = dict(imports.seen)
    assert all(sizes[name] == len(f'{{"id": {i}}}') for i, name in enumerate(names))
    assert engine.metrics.reasons["duplicate"] == 0


async def test_a_50_mib_file_written_in_1_mib_chunks_starts_one_saga_with_its_final_size(
    tmp_path: Path,
) -> None:
    # a writer pausing longer than settle_ms between chunks would fire early, with a partial
    # size: allow a loaded CI machine some slack
    imports = define_imports(tmp_path, pattern="*.bin", settle_ms=300)
    big = tmp_path / "export.bin"
    chunk = b"\x5a" * MIB
    async with watching(imports) as (_, store):
        with big.open("wb") as out:
            for _ in range(50):
                await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                # pacing, not waiting for an outcome: a slow upload, whose pauses (well under
                # settle_ms) let the watcher see the file at many partial sizes
                await asyncio.sleep(WRITER_PAUSE)

        async def started() -> bool:
            return (await completed_files(store, imports))[big.name] >= 1

        await eventually(started, within=20, what="the saga of the big file")
        await sentinel(store, imports, tmp_path / "zz-sentinel.bin")
        per_file = await completed_files(store, imports)
        [record] = [
            s
            for s in await store.list_sagas(saga_name=imports.name, limit=100)
            if s.context["path"] == str(big)
        ]

    assert per_file == Counter({big.name: 1, "zz-sentinel.bin": 1})
    assert record.context["size"] == 50 * MIB == big.stat().st_size
    assert imports.seen[0] == (big.name, 50 * MIB)


async def test_files_not_matching_the_pattern_start_nothing(tmp_path: Path) -> None:
    imports = define_imports(tmp_path, pattern="*.json")
    async with watching(imports) as (engine, store):
        for name in ("notes.txt", "data.csv", "order.json.part", "JSON"):
            write(tmp_path / name, "{}")
        (tmp_path / "nested").mkdir()
        write(tmp_path / "nested" / "inner.json", "{}")  # not recursive
        await sentinel(store, imports, tmp_path / "zz-sentinel.json")
        per_file = await completed_files(store, imports)
        total = len(await store.list_sagas(saga_name=imports.name, limit=100))

    assert per_file == Counter({"zz-sentinel.json": 1})
    assert total == 1
    assert engine.metrics.received[imports.trigger_id] == 1
    assert imports.seen == [("zz-sentinel.json", len('{"sentinel": true}'))]


async def test_files_written_while_paused_start_their_sagas_once_resumed(tmp_path: Path) -> None:
    """The file source keeps the default pause: it is held in emit(), the files stay."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    imports = define_imports(inbox)
    async with watching(imports) as (engine, store):
        await engine.pause_trigger(imports.trigger_id)
        for n in range(3):
            (inbox / f"{n}.json").write_text("{}")
        await continually(lambda: imports.seen == [], during=1.0, what="no saga while paused")
        await engine.resume_trigger(imports.trigger_id)
        expected = Counter({"0.json": 1, "1.json": 1, "2.json": 1})

        async def all_completed() -> bool:
            return await completed_files(store, imports) == expected

        await eventually(all_completed, within=10, what="a completed saga per file")
    assert sorted(imports.seen) == [("0.json", 2), ("1.json", 2), ("2.json", 2)]
