"""The file source on the real filesystem with real watchfiles (no services needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.events import FileEvent
from sagaz.sources import file as file_source
from sagaz.sources.file import FileSource
from sagaz.testing import eventually
from sagaz.triggers.options import FileOptions, parse_trigger_options
from tests.recording_emit import RecordingEmit, consuming, source_context

pytest.importorskip("watchfiles")

SETTLE_MS = 200


@contextlib.asynccontextmanager
async def watching(
    path: Path, errors: list[BaseException] | None = None, *, ready: bool = True, **options: Any
) -> AsyncIterator[tuple[FileSource, RecordingEmit]]:
    """Run a file source on ``path``; by default wait until its watch is live."""
    options.setdefault("settle_ms", SETTLE_MS)
    ctx = source_context("imports.on_file", errors=errors)
    source = file_source.create(FileOptions(path=path, **options), ctx)
    emit = RecordingEmit()
    async with consuming(source, emit):
        if ready:
            await asyncio.wait_for(source.ready.wait(), timeout=10)
        yield source, emit


def events(emit: RecordingEmit) -> list[FileEvent]:
    assert all(isinstance(p, FileEvent) for p in emit.payloads)
    return emit.payloads


def names(emit: RecordingEmit) -> list[str]:
    return [os.path.basename(e.path) for e in events(emit)]


def write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


async def sentinel(emit: RecordingEmit, path: Path, *, content: bytes = b"done") -> None:
    """Drop a matching file and wait for its event: everything before it has been handled."""
    write(path, content)
    await eventually(
        lambda: any(e.path == str(path) for e in events(emit)),
        within=10,
        what=f"the event of the sentinel {path.name}",
    )


async def test_a_hundred_files_give_a_hundred_events(tmp_path: Path) -> None:
    async with watching(tmp_path) as (_, emit):
        for i in range(100):
            (tmp_path / f"order-{i:03}.json").write_text(f'{{"id": {i}}}')
        await emit.wait_for(100, within=20)
        await sentinel(emit, tmp_path / "zz-sentinel.json")

    assert len(emit.deliveries) == 101
    assert sorted(names(emit))[:100] == [f"order-{i:03}.json" for i in range(100)]
    assert len(set(emit.identities)) == 101
    for event in events(emit)[:100]:
        number = int(os.path.basename(event.path)[6:9])
        assert event.event_type == "created"
        assert event.size == len(f'{{"id": {number}}}')
    first = events(emit)[0]
    delivery = emit.deliveries[0]
    assert delivery.decoded is True
    assert delivery.meta.source == "file"
    assert delivery.identity == f"{first.path}:{os.stat(first.path).st_mtime_ns}:{first.size}"


async def test_a_file_written_in_chunks_fires_once_with_its_final_size(tmp_path: Path) -> None:
    chunk = os.urandom(1024 * 1024)
    big = tmp_path / "big.bin"
    # pauses longer than the source's size checks (settle_ms / 4) but shorter than settle_ms
    async with watching(tmp_path, settle_ms=300) as (_, emit):
        with big.open("wb") as out:
            for _ in range(50):
                out.write(chunk)
                out.flush()
                await asyncio.sleep(0.1)  # pacing the writer, not waiting for an outcome
        await emit.wait_for(1, within=15)
        await sentinel(emit, tmp_path / "sentinel.bin")

    big_events = [e for e in events(emit) if e.path == str(big)]
    assert len(big_events) == 1
    assert big_events[0].size == 50 * 1024 * 1024


async def test_files_not_matching_the_pattern_start_nothing(tmp_path: Path) -> None:
    async with watching(tmp_path, pattern="*.csv") as (_, emit):
        (tmp_path / "notes.txt").write_text("x")
        (tmp_path / "data.csv.tmp").write_text("x")
        (tmp_path / "data.csv").write_text("a,b\n")
        await emit.wait_for(1)
        await sentinel(emit, tmp_path / "zz.csv")
    assert names(emit) == ["data.csv", "zz.csv"]


async def test_process_existing(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv", "c.csv", "skip.txt"):
        (tmp_path / name).write_text(name)
    async with watching(tmp_path, pattern="*.csv", process_existing=True) as (_, emit):
        await emit.wait_for(3)
        await sentinel(emit, tmp_path / "d.csv")
    assert sorted(names(emit)) == ["a.csv", "b.csv", "c.csv", "d.csv"]
    assert len(set(emit.identities)) == 4


async def test_existing_files_are_ignored_by_default(tmp_path: Path) -> None:
    (tmp_path / "old.csv").write_text("old")
    async with watching(tmp_path) as (_, emit):
        await sentinel(emit, tmp_path / "new.csv")
    assert names(emit) == ["new.csv"]


async def test_deleted(tmp_path: Path) -> None:
    existing = tmp_path / "existing.csv"
    existing.write_text("12345")
    (tmp_path / "sub").mkdir()
    async with watching(tmp_path, event_type="deleted") as (_, emit):
        fresh = tmp_path / "fresh.csv"
        fresh.write_text("abc")
        existing.unlink()
        await emit.wait_for(1)
        (tmp_path / "sub").rmdir()  # a directory: no event
        fresh.unlink()
        await emit.wait_for(2)
    by_name = {os.path.basename(e.path): e for e in events(emit)}
    assert set(by_name) == {"existing.csv", "fresh.csv"}
    assert all(e.event_type == "deleted" for e in events(emit))
    assert by_name["existing.csv"].size == 5  # the last size the source saw


async def test_modified(tmp_path: Path) -> None:
    tracked = tmp_path / "tracked.csv"
    other = tmp_path / "other.csv"
    tracked.write_text("v1")
    other.write_text("o1")
    async with watching(tmp_path, event_type="modified") as (_, emit):
        (tmp_path / "brand-new.csv").write_text("created, not modified")
        with tracked.open("a") as out:
            out.write(" v2")
        await emit.wait_for(1)
        st = tracked.stat()
        os.utime(tracked, ns=(st.st_atime_ns, st.st_mtime_ns))  # same stat: deduplicated
        await sentinel(emit, other, content=b"o2")
    assert names(emit) == ["tracked.csv", "other.csv"]
    assert all(e.event_type == "modified" for e in events(emit))
    assert events(emit)[0].size == len("v1 v2")


async def test_recursive(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    async with watching(tmp_path) as (_, emit):
        (sub / "nested.csv").write_text("x")
        await sentinel(emit, tmp_path / "top.csv")
    assert names(emit) == ["top.csv"]

    async with watching(tmp_path, recursive=True) as (_, emit):
        (sub / "nested2.csv").write_text("x")
        await emit.wait_for(1)
    assert names(emit) == ["nested2.csv"]


async def test_a_removed_directory_is_reported_and_watched_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    errors: list[BaseException] = []
    async with watching(inbox, errors) as (source, emit):
        (inbox / "before.csv").write_text("1")
        await emit.wait_for(1)

        shutil.rmtree(inbox)
        await eventually(lambda: bool(errors), within=10, what="the error report")
        assert isinstance(errors[0], FileNotFoundError)
        assert str(inbox) in str(errors[0])

        inbox.mkdir()
        await asyncio.wait_for(source.ready.wait(), timeout=10)
        await sentinel(emit, inbox / "after.csv")
    assert names(emit) == ["before.csv", "after.csv"]
    assert len(errors) == 1


async def test_a_directory_missing_at_start_is_watched_once_created(tmp_path: Path) -> None:
    inbox = tmp_path / "later"
    errors: list[BaseException] = []
    async with watching(inbox, errors, ready=False) as (source, emit):
        await eventually(lambda: bool(errors), within=10, what="the error report")
        assert "does not exist" in str(errors[0])
        assert str(inbox) in str(errors[0])
        inbox.mkdir()
        (inbox / "early.csv").write_text("created before the watch started")
        await asyncio.wait_for(source.ready.wait(), timeout=10)
        await sentinel(emit, inbox / "late.csv")
    assert sorted(names(emit)) == ["early.csv", "late.csv"]


async def test_force_polling(tmp_path: Path) -> None:
    async with watching(tmp_path, force_polling=True) as (_, emit):
        await sentinel(emit, tmp_path / "polled.csv")
    assert names(emit) == ["polled.csv"]


async def test_stopping_is_prompt(tmp_path: Path) -> None:
    ctx = source_context("imports.on_file")
    source = file_source.create(FileOptions(path=tmp_path), ctx)
    task = asyncio.create_task(source.run(RecordingEmit()))
    await asyncio.wait_for(source.ready.wait(), timeout=10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)  # the watcher thread must not hold it up
    assert task in done
    assert task.cancelled()


def test_importing_the_module_does_not_import_watchfiles() -> None:
    code = "import sys, sagaz.sources.file; assert 'watchfiles' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"missing required option\(s\) \['path'\]"),
        ({"path": None}, "path=None must be the directory to watch"),
        ({"path": "/x", "event_type": "renamed"}, "event_type='renamed' must be one of"),
        ({"path": "/x", "settle_ms": -1}, "settle_ms=-1 must be an integer >= 0"),
        ({"path": "/x", "pattern": ""}, "pattern='' must be a non-empty string .*glob"),
        ({"path": "/x", "recursive": "yes"}, "recursive='yes' must be True or False"),
        ({"path": "/x", "force_polling": 1}, "force_polling=1 must be True or False"),
        ({"path": "/x", "event_type": "deleted", "process_existing": True}, "process_existing"),
    ],
)
def test_bad_options_are_rejected_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trigger_options("file", options)


def test_a_saga_with_a_bad_file_option_fails_at_class_definition() -> None:
    from sagaz import Saga, trigger

    with pytest.raises(ValueError, match=r"BadFiles.*on_file.*event_type='renamed'"):

        class BadFiles(Saga):
            @trigger(source="file", path="/data/inbox", event_type="renamed")
            def on_file(self, event: FileEvent) -> dict[str, Any]:
                return {}
