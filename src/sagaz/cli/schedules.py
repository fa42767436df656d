"""``sagaz triggers run ID`` and ``sagaz triggers backfill ID --from T --to T``: a schedule at
run time (see :mod:`sagaz.engine.schedules`).

Both import the modules that define the trigger (``--modules``) and run the sagas here, with
no engine needed elsewhere, then print each event: started (and what its saga became) or why
not. Exit status 0 when every saga started here completed (a tick that ran before counts as
done), 1 when one compensated, failed, was dead-lettered or did not finish within
``--timeout`` (it stays in the store: the recovery loop of an engine running the trigger
resumes it), 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz.cli.exits import FAILED, OK, CommandError
from sagaz.cli.modules import import_modules
from sagaz.cli.output import clip, print_json, print_table, say
from sagaz.cli.store import opened_store

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.engine.schedules import ScheduleReport

__all__ = ["add_commands"]

_TIMES = (
    "ISO 8601 (2026-01-01T00:00, 2026-01-01T00:00Z, 2026-01-01T01:00+01:00) or 'now'; "
    "without an offset, in the trigger's time zone"
)


def add_commands(actions: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``triggers run ID`` and ``triggers backfill ID`` under ``triggers``."""
    from sagaz.engine.backfill import DEFAULT_MAX_TICKS

    run = actions.add_parser(
        "run",
        parents=common,
        help="fire a cron or poll trigger now, once (an event of its own, not a tick)",
        description="Import the modules, fire the trigger once here and wait for its saga. A "
        "cron trigger gets a CronTick scheduled now; a poll trigger is polled once (Skip "
        "starts nothing), or fires --context without a poll.",
    )
    run.add_argument("trigger_id", metavar="ID", help="e.g. reports.on_tick")
    _modules(run)
    run.add_argument(
        "--context",
        metavar="JSON",
        help="a poll trigger: fire with this context instead of polling, e.g. '{\"depth\": 12}'",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the saga (60; 0: do not wait)",
    )
    run.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    run.set_defaults(handler=run_now)

    backfill = actions.add_parser(
        "backfill",
        parents=common,
        help="run the ticks of a cron trigger in a past window, each once",
        description="Import the modules and run every tick of the cron trigger in [--from, "
        "--to] that has no saga yet, as the cron source would have fired it (same CronTick, "
        "same saga id): a tick that ran before is skipped, so repeating a backfill starts "
        "nothing and the cron source skips a backfilled tick.",
    )
    backfill.add_argument("trigger_id", metavar="ID", help="e.g. reports.on_tick")
    backfill.add_argument(
        "--from", dest="start", required=True, metavar="TIME", help=f"first tick: {_TIMES}"
    )
    backfill.add_argument(
        "--to", dest="end", required=True, metavar="TIME", help=f"last tick: {_TIMES}"
    )
    _modules(backfill)
    backfill.add_argument(
        "--max",
        dest="max_ticks",
        type=int,
        default=DEFAULT_MAX_TICKS,
        metavar="N",
        help=f"refuse a window of more than N ticks ({DEFAULT_MAX_TICKS})",
    )
    backfill.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the sagas (default: until all finished; 0: do not wait)",
    )
    backfill.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    backfill.set_defaults(handler=backfill_window)


def _modules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modules",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="the modules that define the trigger's saga, e.g. myapp.sagas",
    )


def _time(value: str, option: str) -> datetime:
    from sagaz.clock import utcnow

    if value.strip().lower() == "now":
        return utcnow()
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a time: use {_TIMES}") from None


async def _registered(args: argparse.Namespace, store: SagaStore) -> None:
    """Import ``--modules``; an id they do not register is a usage error listing the ids they
    register and those the store knows."""
    from sagaz.triggers import registry

    import_modules(args.modules)
    registered = sorted(t.trigger_id for t in registry.triggers())
    if args.trigger_id in registered:
        return
    known = sorted(row.trigger_name for row in await store.list_trigger_schedules())
    if not args.modules:
        hint = (
            "name the modules that define its saga: sagaz triggers "
            f"{args.action} {args.trigger_id} --modules myapp.sagas"
        )
    else:
        hint = f"{', '.join(args.modules)} register: {', '.join(registered) or 'none'}"
    raise CommandError(
        f"unknown trigger {args.trigger_id!r}: {hint}; the store knows: "
        f"{', '.join(known) or 'none yet'} (a trigger id is '{{saga_name}}.{{method}}')"
    )


async def run_now(args: argparse.Namespace) -> int:
    """Fire one cron or poll trigger now and report its saga."""
    from sagaz.engine.schedules import run_trigger
    from sagaz.exceptions import ScheduleError

    context = None
    if args.context is not None:
        try:
            context = json.loads(args.context)
        except ValueError as exc:
            raise CommandError(f"--context is not JSON: {exc}") from None
        if not isinstance(context, dict):
            raise CommandError("--context must be a JSON object, e.g. '{\"depth\": 12}'")
    async with opened_store(args) as store:
        await _registered(args, store)
        try:
            report = await run_trigger(
                args.trigger_id, context=context, store=store, timeout=args.timeout
            )
        except ScheduleError as exc:
            raise CommandError(str(exc)) from exc
    return _print(args, report, what=f"ran trigger {args.trigger_id} now")


async def backfill_window(args: argparse.Namespace) -> int:
    """Run the ticks of a cron trigger in a window, each once, and report them."""
    from sagaz.engine.backfill import backfill_trigger
    from sagaz.exceptions import ScheduleError

    start, end = _time(args.start, "--from"), _time(args.end, "--to")
    async with opened_store(args) as store:
        await _registered(args, store)
        try:
            report = await backfill_trigger(
                args.trigger_id,
                start,
                end,
                store=store,
                max_ticks=args.max_ticks,
                timeout=args.timeout,
            )
        except ScheduleError as exc:
            raise CommandError(str(exc)) from exc
    return _print(args, report, what=f"backfilled trigger {args.trigger_id}")


def _print(args: argparse.Namespace, report: ScheduleReport, *, what: str) -> int:
    runs = report.runs
    if args.json:
        print_json(
            {
                "trigger_id": report.trigger_id,
                "paused": report.paused,
                "started": len(report.started),
                "skipped": len(report.skipped),
                "runs": [
                    {
                        "tick": run.tick,
                        "outcome": run.outcome,
                        "saga_id": run.saga_id,
                        "status": run.status,
                        "error": run.error,
                    }
                    for run in runs
                ],
            }
        )
    else:
        columns = ["TICK"] if args.action == "backfill" else []
        print_table(
            [*columns, "OUTCOME", "SAGA ID", "STATUS", "ERROR"],
            [
                (
                    *([run.tick.isoformat() if run.tick else None] if columns else []),
                    run.outcome,
                    run.saga_id,
                    run.status,
                    clip(run.error),
                )
                for run in runs
            ],
            empty="the window holds no tick of the schedule: nothing to run",
        )
        say(
            f"{what}: started {len(report.started)}, skipped {len(report.skipped)}"
            + _why_skipped(report)
            + (" (the trigger is paused; it ran as asked)" if report.paused else "")
        )
        unfinished = [r for r in report.skipped if r.status not in (None, "completed")]
        if unfinished:
            say(
                f"{len(unfinished)} tick(s) ran before and did not complete; a backfill does "
                "not run them again: replay their dead letters (sagaz dlq list --trigger "
                f"{report.trigger_id}, then sagaz dlq replay ID)"
            )
        if any(run.status == "running" for run in runs):
            say(
                "sagas still running at --timeout are kept in the store: the recovery loop of "
                "an engine running this trigger resumes them (sagaz sagas list --trigger "
                f"{report.trigger_id})"
            )
    return OK if report.ok else FAILED


def _why_skipped(report: ScheduleReport) -> str:
    reasons: dict[str, int] = {}
    for run in report.skipped:
        reasons[run.outcome] = reasons.get(run.outcome, 0) + 1
    if not reasons:
        return ""
    return " (" + ", ".join(f"{why}: {count}" for why, count in sorted(reasons.items())) + ")"
