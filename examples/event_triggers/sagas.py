"""The sagas the three poll triggers start (Cloacina's ``tasks.rs`` workflows).

* ``file-processing``: claim a file of the inbox, validate it, process its records, archive
  it; an invalid file is moved to ``rejected/`` (the compensation of claiming it).
* ``queue-draining``: take a batch of jobs off the Redis list and process them; if
  processing fails, the batch is put back (the compensation of taking it).
* ``service-recovery``: open an incident, restart the service, verify it answers again;
  if it does not, the incident is escalated to a human (the compensation of opening it).

Steps may run again after a crash (a saga resumes from its last checkpoint), so each one is
written to be safe to repeat: moving a file that was already moved is a no-op.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import uuid
from pathlib import Path
from typing import Any

from examples.event_triggers.settings import settings
from examples.event_triggers.triggers import (
    FileWatcherTrigger,
    HealthCheckTrigger,
    QueueDepthTrigger,
    healthy,
)
from redis.asyncio import Redis

from sagaz import Saga, SagaContext, SagaListener, TriggerConfig, action, compensate, trigger
from sagaz.events import Reason

logger = logging.getLogger(__name__)

INBOX = settings.data_dir / "inbox"
PROCESSING = settings.data_dir / "processing"
PROCESSED = settings.data_dir / "processed"
REJECTED = settings.data_dir / "rejected"
DIRECTORIES = (INBOX, PROCESSING, PROCESSED, REJECTED)

file_watcher = FileWatcherTrigger(INBOX)
queue_monitor = QueueDepthTrigger(settings.queue_key, settings.queue_threshold)
service_health = HealthCheckTrigger("web", settings.health_url, settings.failure_threshold)


class InvalidFile(Exception):
    """The file is not a CSV file with a header and rows of the same width."""


class ServiceStillDown(Exception):
    """The service did not answer its health check after the restart."""


class SkippedFires(SagaListener):
    """Logs each fire that ``allow_concurrent = False`` skipped: the same context is still
    being worked on by a saga of that trigger."""

    async def on_trigger_filtered(self, saga_name: str, event: Any, reason: str) -> None:
        if reason == Reason.OVERLAP_SKIPPED:
            logger.info("%s: still running for %s, this fire is skipped", saga_name, event)


def move(name: str, source: Path, target: Path) -> None:
    """Move ``name`` from ``source`` to ``target``; already moved is fine (a repeated step)."""
    if (source / name).exists() or not (target / name).exists():
        (source / name).rename(target / name)


class FileProcessingSaga(Saga):
    saga_name = "file-processing"
    listeners = [SkippedFires()]

    # The file stays in the inbox until claim_file moves it: a poll meanwhile fires it again
    # with the same context, and file_watcher.allow_concurrent=False skips that (also after a
    # restart, while the saga resumes: its execution stays open until the saga ends).
    @trigger(source="custom", trigger=file_watcher)
    def on_new_file(self, fired: dict[str, Any]) -> dict[str, Any]:
        return dict(fired)

    @action("claim_file")
    async def claim_file(self, ctx: SagaContext) -> None:
        move(ctx["filename"], INBOX, PROCESSING)

    @compensate("claim_file")
    async def reject_file(self, ctx: SagaContext) -> None:
        move(ctx["filename"], PROCESSING, REJECTED)
        logger.warning("file %r moved to %s", ctx["filename"], REJECTED)

    @action("validate_file")
    async def validate_file(self, ctx: SagaContext) -> dict[str, Any]:
        logger.info("validating file %r", ctx["filename"])
        with (PROCESSING / ctx["filename"]).open(newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]
        if not header or not rows:
            raise InvalidFile(f"{ctx['filename']}: no header or no rows")
        for number, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise InvalidFile(
                    f"{ctx['filename']}, line {number}: {len(row)} fields, header has {len(header)}"
                )
        logger.info("file %r validated: %d records", ctx["filename"], len(rows))
        return {"columns": header, "records": len(rows)}

    @action("process_records")
    async def process_records(self, ctx: SagaContext) -> dict[str, Any]:
        logger.info("processing %d records from %r", ctx["records"], ctx["filename"])
        await asyncio.sleep(0.01 * ctx["records"] / 100)  # the real work
        return {"processed": ctx["records"]}

    @action("archive_file")
    async def archive_file(self, ctx: SagaContext) -> None:
        move(ctx["filename"], PROCESSING, PROCESSED)
        logger.info("file %r processed and archived", ctx["filename"])


class QueueDrainSaga(Saga):
    saga_name = "queue-draining"

    @trigger(source="custom", trigger=queue_monitor)
    def on_deep_queue(self, fired: dict[str, Any]) -> dict[str, Any]:
        return dict(fired)

    @action("take_batch")
    async def take_batch(self, ctx: SagaContext) -> dict[str, Any]:
        async with Redis.from_url(TriggerConfig().redis_url, decode_responses=True) as redis:
            jobs = await redis.lpop(ctx["queue"], settings.batch_size) or []
        logger.info("took %d jobs off %s", len(jobs), ctx["queue"])
        return {"jobs": jobs}

    @compensate("take_batch")
    async def put_batch_back(self, ctx: SagaContext) -> None:
        if ctx["jobs"]:
            async with Redis.from_url(TriggerConfig().redis_url) as redis:
                await redis.lpush(ctx["queue"], *reversed(ctx["jobs"]))  # at the head, in order
            logger.warning("put %d jobs back on %s", len(ctx["jobs"]), ctx["queue"])

    @action("process_jobs")
    async def process_jobs(self, ctx: SagaContext) -> dict[str, Any]:
        for _job in ctx["jobs"]:
            await asyncio.sleep(0.001)  # the real work
        logger.info("processed %d jobs from %s", len(ctx["jobs"]), ctx["queue"])
        return {"processed": len(ctx["jobs"])}


class ServiceRecoverySaga(Saga):
    saga_name = "service-recovery"
    listeners = [SkippedFires()]

    @trigger(source="custom", trigger=service_health)
    def on_unhealthy(self, fired: dict[str, Any]) -> dict[str, Any]:
        return dict(fired)

    @action("open_incident")
    async def open_incident(self, ctx: SagaContext) -> dict[str, Any]:
        incident_id = f"INC-{uuid.uuid4().hex[:6]}"
        logger.warning("%s: %s is down, recovering", incident_id, ctx["service"])
        return {"incident_id": incident_id}

    @compensate("open_incident")
    async def escalate_incident(self, ctx: SagaContext) -> None:
        logger.error(
            "%s: automatic recovery of %s failed, paging the on-call engineer",
            ctx["incident_id"],
            ctx["service"],
        )

    @action("restart_service", timeout_seconds=60)
    async def restart_service(self, ctx: SagaContext) -> dict[str, Any]:
        if not settings.restart_command:
            logger.warning("no EVENT_TRIGGERS_RESTART_COMMAND: not restarting %s", ctx["service"])
            return {"restarted": False}
        process = await asyncio.create_subprocess_shell(settings.restart_command)
        code = await process.wait()
        if code != 0:
            raise RuntimeError(f"restart command exited with {code}")
        logger.info("%s: %s restarted", ctx["incident_id"], ctx["service"])
        return {"restarted": True}

    @action("verify_recovered")
    async def verify_recovered(self, ctx: SagaContext) -> dict[str, Any]:
        for _attempt in range(5):
            ok, detail = await healthy(ctx["health_url"])
            if ok:
                logger.info(
                    "%s: %s is healthy, incident closed", ctx["incident_id"], ctx["service"]
                )
                return {"recovered": True}
            await asyncio.sleep(1)
        raise ServiceStillDown(f"{ctx['service']} still fails its health check: {detail}")
