"""``source="file"``: start a saga for files created, modified or deleted in a directory.

>>> class Imports(Saga):  # doctest: +SKIP
...     @trigger(source="file", path="/data/inbox", pattern="*.csv", settle_ms=1000)
...     def on_file(self, event: FileEvent) -> dict:
...         return {"path": event.path, "size": event.size}

Built on ``watchfiles`` (``pip install "sagaz[file]"``), imported only when the source starts.

* ``created`` and ``modified`` fire once the file's size and mtime have been stable for
  ``settle_ms``: a file written in chunks fires once, with its final size. A file that appears
  and is written is ``created``, not ``modified``; ``modified`` is a change to a file that had
  settled (or existed before). A file deleted before it settled fires nothing.
* ``deleted`` fires at once, with the last size and mtime the source saw (0 if it never saw
  the file).
* ``pattern`` is a glob on the file *name* (``fnmatch``); other files start nothing.
  Directories never fire.
* Identity (the dedup key) is ``"{path}:{mtime_ns}:{size}"``: the same file seen twice with
  identical stat emits once per process; the engine's inbox deduplicates across restarts.
* A watched directory that disappears (or is replaced) is reported through
  ``on_trigger_error``; the source polls until it exists again, re-watches it and treats the
  files it then finds as created (they appeared while nothing watched).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext
from sagaz.backoff import Backoff
from sagaz.events import Delivery, EventMeta, FileEvent
from sagaz.triggers.options.file import EventType, FileOptions

__all__ = ["FileSource", "create"]

logger = logging.getLogger(__name__)

#: watchfiles groups changes for at most this long before handing them over
_DEBOUNCE_MS = 200
_STEP_MS = 50
#: an idle watch wakes this often to check that the directory is still the same one
_IDLE_CHECK_MS = 500
#: polling for a missing directory starts fast and backs off to this bound
_MAX_DIRECTORY_POLL_SECONDS = 2.0
#: identities remembered for in-process dedup
_SEEN_CAPACITY = 100_000


@dataclass(slots=True)
class _Pending:
    """A file waiting for its size and mtime to settle."""

    kind: EventType
    signature: tuple[int, int]  # (size, mtime_ns) at the last look
    stable_since: float  # clock.monotonic() when the signature last changed


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


class _DirectoryGone(Exception):
    """The watched directory was removed or replaced."""


class FileSource(Source):
    """Watches one directory with ``watchfiles.awatch`` and emits :class:`FileEvent` s."""

    kind: ClassVar[str] = "file"
    redeliverable: ClassVar[bool] = False

    def __init__(self, options: FileOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx
        self.root = os.path.abspath(options.path)
        self._pending: dict[str, _Pending] = {}
        self._has_pending = asyncio.Event()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._known: dict[str, tuple[int, int]] = {}  # last stat of files, for event_type="deleted"
        self._dirs: set[str] = set()
        #: set while the directory is being watched (from the first report of the watcher),
        #: cleared while it is missing; tests and health checks wait on it
        self.ready = asyncio.Event()
        self._log_extra = {"trigger": ctx.trigger_id, "source": self.kind, "path": self.root}

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Watch until cancelled.

        watchfiles waits in a worker thread that a plain cancellation cannot interrupt, so
        the watch runs in its own task and cancelling ``run`` first sets its stop event.
        """
        stop = asyncio.Event()
        inner = asyncio.create_task(self._run(emit, stop), name=f"sagaz-file:{self.root}")
        try:
            await asyncio.shield(inner)
        finally:
            stop.set()
            inner.cancel()
            await asyncio.wait({inner})
            if not inner.cancelled():
                inner.exception()  # retrieved: it is already propagating or irrelevant

    async def _run(self, emit: Emit, stop: asyncio.Event) -> None:
        watchfiles = require_extra("file")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._settle_loop(emit))
            await self._watch_loop(watchfiles, emit, stop)

    # -- watching --------------------------------------------------------------------------
    async def _watch_loop(self, watchfiles: Any, emit: Emit, stop: asyncio.Event) -> None:
        # what the files found in the directory count as (None: they are not reported)
        scan_kind: EventType | None = None
        if self.options.process_existing:
            scan_kind = "modified" if self.options.event_type == "modified" else "created"
        reported = False
        backoff = Backoff(self.ctx.clock, initial=0.05, maximum=_MAX_DIRECTORY_POLL_SECONDS)
        while not stop.is_set():
            if await self._wait_for_directory(stop, reported=reported):
                scan_kind = "created"  # files that appeared while nothing watched are new
            reported = False
            if stop.is_set():
                return
            try:
                identity = self._directory_identity()
                self._scan(scan_kind)
                logger.info(
                    "watching %s for %s files matching %r",
                    self.root,
                    self.options.event_type,
                    self.options.pattern,
                    extra=self._log_extra,
                )
                rescan = scan_kind
                async for changes in watchfiles.awatch(
                    self.root,
                    stop_event=stop,
                    watch_filter=None,
                    recursive=self.options.recursive,
                    force_polling=self.options.force_polling,
                    debounce=_DEBOUNCE_MS,
                    step=_STEP_MS,
                    rust_timeout=_IDLE_CHECK_MS,
                    yield_on_timeout=True,
                ):
                    if rescan is not None:
                        self._scan(rescan)  # files created between the scan and the watch
                        rescan = None
                    self.ready.set()
                    backoff.reset()
                    await self._handle(changes, watchfiles.Change, emit)
                    if self._directory_identity() != identity:
                        raise _DirectoryGone
                return  # awatch ends only when ``stop`` is set
            except (_DirectoryGone, FileNotFoundError, NotADirectoryError):
                self.ready.clear()
                self._known.clear()  # every file of the old directory is gone
                self._dirs.clear()
                scan_kind = "created"
                reported = True
                await self.ctx.report_error(self._missing_error(removed=True))
            except Exception as exc:
                # e.g. the inotify watch limit; report and retry with a bounded backoff
                self.ready.clear()
                error = RuntimeError(
                    f"file trigger {self.ctx.trigger_id!r}: watching {self.root!r} failed "
                    f"({type(exc).__name__}: {exc}); retrying. If the OS limit of file watches "
                    "is reached, raise fs.inotify.max_user_watches or set force_polling=True"
                )
                error.__cause__ = exc
                await self.ctx.report_error(error)
                await backoff.sleep(until=stop)

    def _directory_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def _missing_error(self, *, removed: bool) -> OSError:
        trigger = self.ctx.trigger_id
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            return NotADirectoryError(
                f"file trigger {trigger!r}: option path={self.root!r} is not a directory; "
                "point path= at the directory to watch"
            )
        what = "was removed or replaced" if removed else "does not exist"
        return FileNotFoundError(
            f"file trigger {trigger!r}: the watched directory {self.root!r} {what}; "
            "create it and events resume (the source keeps polling for it)"
        )

    async def _wait_for_directory(self, stop: asyncio.Event, *, reported: bool) -> bool:
        """Return False at once if the directory exists; else report it (unless ``reported``),
        poll for it with a bounded backoff and return True once it is back."""
        if self._directory_identity() is not None:
            return False
        if not reported and not stop.is_set():
            await self.ctx.report_error(self._missing_error(removed=False))
        backoff = Backoff(self.ctx.clock, initial=0.05, maximum=_MAX_DIRECTORY_POLL_SECONDS)
        while self._directory_identity() is None and not stop.is_set():
            await backoff.sleep(until=stop)
        logger.info("watched directory %s exists again", self.root, extra=self._log_extra)
        return True

    def _matches(self, path: str) -> bool:
        if path == self.root:
            return False
        if not self.options.recursive and os.path.dirname(path) != self.root:
            return False
        return fnmatch.fnmatch(os.path.basename(path), self.options.pattern)

    def _scan(self, as_kind: EventType | None) -> None:
        """Look at the files now in the directory: remember their stat (``deleted``) or
        track them as ``as_kind`` (process_existing, or after the directory came back)."""
        if self.options.event_type != "deleted" and as_kind is None:
            return
        for path, st in self._walk():
            if self.options.event_type == "deleted":
                self._known[path] = _signature(st)
            elif as_kind is not None:
                self._track(path, as_kind, st)

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        try:
            if self.options.recursive:
                for folder, dirnames, filenames in os.walk(self.root):
                    self._dirs.update(os.path.join(folder, d) for d in dirnames)
                    for name in sorted(filenames):
                        yield from self._stat_file(os.path.join(folder, name))
            else:
                with os.scandir(self.root) as entries:
                    names = sorted(entry.name for entry in entries)
                for name in names:
                    yield from self._stat_file(os.path.join(self.root, name))
        except OSError:
            return  # the directory vanished mid-scan; the watch loop notices

    def _stat_file(self, path: str) -> Iterator[tuple[str, os.stat_result]]:
        try:
            st = os.stat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._dirs.add(path)
        elif stat.S_ISREG(st.st_mode) and self._matches(path):
            yield path, st

    async def _handle(self, changes: set[tuple[Any, str]], change_type: Any, emit: Emit) -> None:
        """Turn one batch of watchfiles changes into pending files or ``deleted`` events."""
        for change, path in sorted(changes, key=lambda c: c[1]):
            if change == change_type.deleted:
                self._pending.pop(path, None)  # deleted before it settled: nothing created
                if path in self._dirs:
                    self._dirs.discard(path)
                    continue
                if self.options.event_type == "deleted" and self._matches(path):
                    await self._emit_deleted(emit, path)
                continue
            kind: EventType = "created" if change == change_type.added else "modified"
            for file_path, st in self._stat_file(path):
                if self.options.event_type == "deleted":
                    self._known[file_path] = _signature(st)
                else:
                    self._track(file_path, kind, st)

    def _track(self, path: str, kind: EventType, st: os.stat_result) -> None:
        pending = self._pending.get(path)
        if pending is not None:
            return  # already waiting: the settle loop sees the new size; a new file stays new
        if kind == "modified" and self.options.event_type == "created":
            return  # a change to a settled file is not a creation
        self._pending[path] = _Pending(kind, _signature(st), self.ctx.clock.monotonic())
        self._has_pending.set()

    # -- settling and emitting -------------------------------------------------------------
    async def _settle_loop(self, emit: Emit) -> None:
        """Fire each pending file once its size and mtime stayed unchanged for settle_ms."""
        settle = self.options.settle_ms / 1000
        interval = min(max(settle / 4, 0.02), 0.25)
        clock = self.ctx.clock
        while True:
            if not self._pending:
                self._has_pending.clear()
                await self._has_pending.wait()
            await clock.sleep(interval)
            now = clock.monotonic()
            for path, pending in list(self._pending.items()):
                try:
                    st = os.stat(path)
                except OSError:
                    self._pending.pop(path, None)  # gone before it settled
                    continue
                signature = _signature(st)
                if signature != pending.signature:
                    pending.signature, pending.stable_since = signature, now
                    continue
                if now - pending.stable_since < settle:
                    continue
                del self._pending[path]
                if pending.kind == self.options.event_type:
                    await self._emit(emit, path, pending.kind, st.st_size, st.st_mtime_ns)

    async def _emit_deleted(self, emit: Emit, path: str) -> None:
        last = self._known.pop(path, None)
        if last is None:
            # never saw it: the wall time keeps distinct deletions of one path distinct
            size, mtime_ns, suffix = 0, 0, f"deleted@{self.ctx.clock.now().timestamp():.6f}"
        else:
            (size, mtime_ns), suffix = last, "deleted"
        await self._emit(emit, path, "deleted", size, mtime_ns, suffix=suffix)

    async def _emit(
        self,
        emit: Emit,
        path: str,
        event_type: EventType,
        size: int,
        mtime_ns: int,
        *,
        suffix: str = "",
    ) -> None:
        identity = f"{path}:{mtime_ns}:{size}" + (f":{suffix}" if suffix else "")
        if identity in self._seen:
            self._seen.move_to_end(identity)
            return
        self._seen[identity] = None
        if len(self._seen) > _SEEN_CAPACITY:
            self._seen.popitem(last=False)
        delivery = Delivery(
            payload=FileEvent(path=path, size=size, event_type=event_type, mtime=mtime_ns / 1e9),
            decoded=True,
            identity=identity,
            meta=EventMeta(
                source=self.kind,
                trigger=self.ctx.trigger_id,
                message_id=identity,
                topic=self.root,
                received_at=self.ctx.clock.now(),
            ),
        )
        logger.debug(
            "file %s %s (%d bytes)",
            path,
            event_type,
            size,
            extra={**self._log_extra, "message_id": identity},
        )
        try:
            await emit(delivery)
        except Exception as exc:
            await self.ctx.report_error(exc)

    def describe(self) -> dict[str, Any]:
        """Kind, directory, pattern and event type."""
        return {
            "kind": self.kind,
            "path": self.root,
            "pattern": self.options.pattern,
            "event_type": self.options.event_type,
            "recursive": self.options.recursive,
        }


def create(options: FileOptions, ctx: SourceContext) -> FileSource:
    """Build the source of one file trigger."""
    return FileSource(options, ctx)
