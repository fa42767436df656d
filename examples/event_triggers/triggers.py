"""The three poll triggers, as Cloacina's ``triggers.rs`` has them.

A :class:`sagaz.Trigger` is polled every ``poll_interval`` seconds; ``poll()`` returns
``Fire(context)`` to start its saga or ``Skip``. With ``allow_concurrent = False`` sagaz skips
a ``Fire`` whose context equals that of a saga of this trigger still running (reason
``overlap_skipped``). Polls stay light: the work happens in the sagas. A poll that raises
is logged and reported to listeners, and polling goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from sagaz import Fire, Skip, Trigger, TriggerConfig

logger = logging.getLogger(__name__)


class FileWatcherTrigger(Trigger):
    """Fires for the oldest ``*.csv`` file of the inbox, one file per poll."""

    name = "file_watcher"
    poll_interval = 2.0
    # No: the file stays in the inbox until its saga claims it, and a poll that finds it again
    # meanwhile (same context: name, size, mtime) must not start a second saga for it.
    allow_concurrent = False

    def __init__(self, inbox: Path, pattern: str = "*.csv", settle_seconds: float = 0.5) -> None:
        self.inbox = inbox
        self.pattern = pattern
        self.settle_seconds = settle_seconds

    async def poll(self) -> Fire | Any:  # Fire(context) or Skip
        now = time.time()
        ready = [
            (stat.st_mtime_ns, path, stat)
            for path in self.inbox.glob(self.pattern)
            if path.is_file()
            # written more than settle_seconds ago: not a file still being written
            and now - (stat := path.stat()).st_mtime >= self.settle_seconds
        ]
        if not ready:
            return Skip
        _, path, stat = min(ready)
        logger.info("file_watcher: found new file %r in %s", path.name, self.inbox)
        return Fire(
            {
                "filename": path.name,
                "size": stat.st_size,
                # with the name and the size, tells this version of the file from a later one
                "mtime_ns": stat.st_mtime_ns,
            }
        )


class QueueDepthTrigger(Trigger):
    """Fires when the Redis list ``key`` holds more than ``threshold`` jobs."""

    name = "queue_monitor"
    poll_interval = 3.0
    # Yes: while one saga drains a batch, the next poll may start another on the rest.
    allow_concurrent = True

    def __init__(self, key: str, threshold: int) -> None:
        self.key = key
        self.threshold = threshold

    async def poll(self) -> Fire | Any:  # Fire(context) or Skip
        async with Redis.from_url(TriggerConfig().redis_url) as redis:  # SAGAZ_REDIS_URL
            depth = int(await redis.llen(self.key))
        if depth <= self.threshold:
            return Skip
        logger.info(
            "queue_monitor: %s holds %d jobs (threshold %d)", self.key, depth, self.threshold
        )
        return Fire({"queue": self.key, "depth": depth})


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status code of ``GET url``; raises ``OSError`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:  # 4xx, 5xx: an answer all the same
        return error.code


async def healthy(url: str) -> tuple[bool, str]:
    """Whether ``GET url`` answers 2xx, and what it answered."""
    try:
        status = await asyncio.to_thread(http_status, url)
    except OSError as error:
        return False, str(error)
    return 200 <= status < 300, f"HTTP {status}"


class HealthCheckTrigger(Trigger):
    """Fires once the last ``failure_threshold`` health checks of a service all failed."""

    name = "service_health"
    poll_interval = 2.0
    # No: one recovery at a time; a poll that fires while one runs is skipped.
    allow_concurrent = False

    def __init__(self, service: str, url: str, failure_threshold: int) -> None:
        self.service = service
        self.url = url
        self.failure_threshold = failure_threshold
        self.failures = 0

    async def poll(self) -> Fire | Any:  # Fire(context) or Skip
        ok, detail = await healthy(self.url)
        if ok:
            if self.failures:
                logger.info("service_health: %s is healthy again", self.service)
            self.failures = 0
            return Skip
        self.failures += 1
        logger.warning(
            "service_health: %s check failed (%d in a row): %s", self.service, self.failures, detail
        )
        if self.failures < self.failure_threshold:
            return Skip
        # the same context each time: allow_concurrent=False compares it with the running one
        return Fire({"service": self.service, "health_url": self.url})
