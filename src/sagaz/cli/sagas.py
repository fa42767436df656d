"""``sagaz sagas list`` (newest first; by status, saga, trigger, age; a page at a time),
``sagaz sagas show ID`` (its steps with status, attempts, timings and errors; its context and
history) and ``sagaz sagas cancel|resume|retry ID`` (see :mod:`sagaz.engine.steering`)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz.cli.exits import FAILED, OK, CommandError
from sagaz.cli.output import clip, moment, print_json, print_table, say
from sagaz.cli.store import opened_store, store_url
from sagaz.clock import utcnow
from sagaz.records import SagaControlRequest, SagaHistoryRecord, SagaRecord, StepRecord
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

__all__ = ["add_commands", "parse_age"]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> datetime:
    """A moment from ``--older-than``/``--newer-than``: an age back from now (``90s``,
    ``15m``, ``2h``, ``7d``, ``1w``) or an ISO 8601 timestamp (UTC unless it says)."""
    if match := _AGE.match(text.strip()):
        amount, unit = match.groups()
        return utcnow() - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (90s, 15m, 2h, 7d, 1w) nor an ISO 8601 timestamp "
            "(2024-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_commands(commands: Any, common: list[argparse.ArgumentParser]) -> None:
    """Register ``sagas list``, ``sagas show`` and ``sagas cancel|resume|retry``."""
    sagas = commands.add_parser(
        "sagas", help="the sagas in the store: list, show, cancel, resume, retry"
    )
    actions = sagas.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        parents=common,
        help="sagas, newest first",
        description="Sagas, newest first, a page at a time: when more match, the last line "
        "(on stderr) gives the --after ID of the next page.",
    )
    listing.add_argument("--status", choices=[s.value for s in SagaStatus])
    listing.add_argument("--saga", metavar="NAME", help="only sagas of this saga_name")
    listing.add_argument("--trigger", metavar="TRIGGER_ID", help="only sagas this trigger began")
    listing.add_argument(
        "--older-than",
        type=parse_age,
        metavar="AGE",
        help="created before: an age (90s, 15m, 2h, 7d, 1w) or an ISO 8601 timestamp",
    )
    listing.add_argument(
        "--newer-than",
        type=parse_age,
        metavar="AGE",
        help="created at or after: an age (90s, 15m, 2h, 7d, 1w) or an ISO 8601 timestamp",
    )
    listing.add_argument("--limit", type=_positive, default=50, help="sagas per page (50)")
    listing.add_argument("--after", metavar="SAGA_ID", help="the page after this saga")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(handler=list_sagas)

    show = actions.add_parser(
        "show", parents=common, help="one saga: steps, attempts, timings, errors, context"
    )
    show.add_argument("saga_id", metavar="SAGA_ID")
    show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    show.set_defaults(handler=show_saga)

    steering = {
        "cancel": "cancel a pending or running saga (or a compensated one waiting for its "
        "retry): the engine running it starts no further step, compensates what completed, "
        "and it ends cancelled",
        "resume": "run a compensated, failed or cancelled saga again: its completed steps keep "
        "their results, the others run again",
        "retry": "run a finished saga again from a step: that step and the steps after it run "
        "again, the steps before it keep their results",
    }
    for name, text in steering.items():
        command = actions.add_parser(
            name,
            parents=common,
            help=text.split(":")[0],
            description=f"{text[0].upper()}{text[1:]}. The request is written to the store; "
            "the engines on it act within their saga_control_interval_seconds, and "
            "`sagaz sagas show ID` shows what they did.",
        )
        command.add_argument("saga_id", metavar="SAGA_ID")
        if name == "retry":
            command.add_argument(
                "--from-step", required=True, metavar="NAME", help="the first step to run again"
            )
        command.add_argument("--reason", metavar="TEXT", help="why (kept in the saga's history)")
        command.set_defaults(handler=steer_saga, steering=name)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _saga_document(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga_id": record.saga_id,
        "saga_name": record.saga_name,
        "status": record.status.value,
        "attempt": record.attempt,
        "trigger_id": record.trigger_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "error": record.error,
        "owner": record.owner,
        "lease_expires_at": record.lease_expires_at,
        "context": record.context,
        "event": record.event,
    }


async def list_sagas(args: argparse.Namespace) -> int:
    """Print one page of sagas, newest first."""
    async with opened_store(args) as store:
        if args.after is not None and await store.get_saga(args.after) is None:
            raise CommandError(f"--after {args.after}: no such saga in {_where(args)}")
        found = await store.list_sagas(
            status=None if args.status is None else SagaStatus(args.status),
            saga_name=args.saga,
            trigger_id=args.trigger,
            created_after=args.newer_than,
            created_before=args.older_than,
            after=args.after,
            limit=args.limit + 1,  # one more says whether a next page exists
        )
    page, more = found[: args.limit], len(found) > args.limit
    following = page[-1].saga_id if more else None
    if args.json:
        documents = [_saga_document(r) for r in page]
        for document in documents:
            del document["context"], document["event"]  # `sagas show` has them
        print_json({"sagas": documents, "next": following})
        return OK
    print_table(
        ["SAGA ID", "SAGA", "STATUS", "ATTEMPT", "TRIGGER", "CREATED", "UPDATED", "ERROR"],
        [
            (
                r.saga_id,
                r.saga_name,
                r.status.value,
                r.attempt,
                r.trigger_id,
                moment(r.created_at),
                moment(r.updated_at),
                clip(r.error),
            )
            for r in page
        ],
        empty="no sagas match",
    )
    if following is not None:
        say(f"more: the next page is --after {following}")
    return OK


def _where(args: argparse.Namespace) -> str:
    from sagaz.storage.url import redact_url

    return redact_url(store_url(args))


def _in_order(steps: list[StepRecord]) -> list[StepRecord]:
    """Steps in the order they completed, then the others (the failed one) by last change."""
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(
        steps,
        key=lambda s: (
            s.completed_seq is None,
            s.completed_seq or 0,
            s.updated_at or far,
            s.name,
        ),
    )


def _offset(step: StepRecord, record: SagaRecord) -> str | None:
    """When the step last changed, counted from the saga's creation."""
    if step.updated_at is None or record.created_at is None:
        return None
    return f"+{(step.updated_at - record.created_at).total_seconds():.3f}s"


def _outcome(steps: list[StepRecord]) -> dict[str, Any]:
    """Which step failed, what was compensated, which compensations failed."""
    failed = [s for s in steps if s.status is StepStatus.FAILED]
    return {
        "failed_step": failed[0].name if failed else None,
        "failed_step_error": failed[0].error if failed else None,
        "compensated": [  # in the order they were undone: the reverse of completion
            s.name
            for s in sorted(steps, key=lambda s: s.completed_seq or 0, reverse=True)
            if s.status is StepStatus.COMPENSATED
        ],
        "compensation_errors": {
            s.name: s.compensation_error or "compensation failed"
            for s in steps
            if s.status is StepStatus.COMPENSATION_FAILED
        },
    }


_AFTER_REQUEST = {
    "cancel": "the engine running it stops it before its next step and compensates what it "
    "completed",
    "resume": "an engine running its trigger runs it again",
    "retry": "an engine running its trigger runs it again from that step",
}


async def steer_saga(args: argparse.Namespace) -> int:
    """Ask the engines to cancel, resume or retry one saga."""
    from sagaz.engine import steering
    from sagaz.exceptions import SagaControlError

    async with opened_store(args) as store:
        if await store.get_saga(args.saga_id) is None:
            raise CommandError(f"no saga {args.saga_id} in {_where(args)} (sagaz sagas list)")
        try:
            if args.steering == "cancel":
                await steering.cancel_saga(args.saga_id, reason=args.reason, store=store)
            elif args.steering == "resume":
                await steering.resume_saga(args.saga_id, reason=args.reason, store=store)
            else:
                await steering.retry_saga(
                    args.saga_id, args.from_step, reason=args.reason, store=store
                )
        except SagaControlError as exc:
            raise CommandError(str(exc), FAILED) from exc
        except NotImplementedError as exc:
            raise CommandError(
                f"{_where(args)}: {exc}, so sagas cannot be steered on it (a store of sagaz's "
                "own keeps them: memory, sqlite, postgresql, redis)",
                FAILED,
            ) from exc
    print(
        f"{args.steering} of saga {args.saga_id} requested: {_AFTER_REQUEST[args.steering]}, "
        f"within its saga_control_interval_seconds (sagaz sagas show {args.saga_id})"
    )
    return OK


async def _control(
    store: Any, saga_id: str
) -> tuple[list[SagaHistoryRecord], SagaControlRequest | None]:
    """The saga's history and open request; nothing on a store that keeps neither."""
    try:
        history = await store.list_saga_history(saga_id)
        requests = await store.list_saga_requests(saga_id=saga_id)
    except NotImplementedError:
        return [], None
    return history, requests[0] if requests else None


async def show_saga(args: argparse.Namespace) -> int:
    """Print one saga: its state, what failed and what was undone, its steps, its context,
    and its history (operators' requests, what the engines did)."""
    async with opened_store(args) as store:
        record = await store.get_saga(args.saga_id)
        if record is None:
            raise CommandError(f"no saga {args.saga_id} in {_where(args)} (sagaz sagas list)")
        steps = _in_order(await store.get_steps(args.saga_id))
        history, request = await _control(store, args.saga_id)
    outcome = _outcome(steps)
    if args.json:
        document = _saga_document(record)
        document["steps"] = [
            {
                "name": s.name,
                "status": s.status.value,
                "attempts": s.attempts,
                "updated_at": s.updated_at,
                "error": s.error,
                "compensation_error": s.compensation_error,
                "result": s.result,
            }
            for s in steps
        ]
        document.update(outcome)
        document["history"] = [
            {"at": e.at, "action": e.action, "actor": e.actor, "detail": e.detail} for e in history
        ]
        document["request"] = (
            None
            if request is None
            else {
                "action": request.action.value,
                "step": request.step,
                "actor": request.actor,
                "reason": request.reason,
                "requested_at": request.requested_at,
            }
        )
        print_json(document)
        return OK
    _print_saga(record, steps, outcome)
    _print_control(history, request)
    return OK


def _print_control(history: list[SagaHistoryRecord], request: SagaControlRequest | None) -> None:
    if request is not None:
        step = f" from step {request.step!r}" if request.step else ""
        print(
            f"\nopen request: {request.action.value}{step} by {request.actor} at "
            f"{moment(request.requested_at)} (the engines have not finished acting on it)"
        )
    if history:
        print("\nhistory")
        print_table(
            ["AT", "ACTION", "BY", "DETAIL"],
            [(moment(e.at), e.action, e.actor, clip(e.detail, 100)) for e in history],
            empty="",
        )


def _print_saga(record: SagaRecord, steps: list[StepRecord], outcome: dict[str, Any]) -> None:
    took = ""
    if record.created_at is not None and record.updated_at is not None:
        took = f" ({(record.updated_at - record.created_at).total_seconds():.3f}s after creation)"
    lines = [
        ("saga", f"{record.saga_id} ({record.saga_name})"),
        ("status", f"{record.status.value}, attempt {record.attempt}"),
        ("trigger", record.trigger_id or "- (run directly)"),
        ("created", moment(record.created_at)),
        ("updated", f"{moment(record.updated_at)}{took}"),
    ]
    if record.owner is not None and record.status not in TERMINAL_SAGA_STATUSES:
        lines.append(("owner", f"{record.owner} (lease until {moment(record.lease_expires_at)})"))
    if record.error:
        lines.append(("error", record.error))
    if outcome["failed_step"] is not None:
        lines.append(("failed step", f"{outcome['failed_step']}: {outcome['failed_step_error']}"))
    if outcome["compensated"]:
        lines.append(("compensated", ", ".join(outcome["compensated"])))
    for name, problem in outcome["compensation_errors"].items():
        lines.append(("not undone", f"{name}: compensation failed: {problem}"))
    for label, value in lines:
        print(f"{label:<12} {value}")
    print()
    print_table(
        ["STEP", "STATUS", "ATTEMPTS", "LAST CHANGE", "ERROR"],
        [
            (
                s.name,
                s.status.value,
                s.attempts,
                _offset(s, record),
                clip(s.compensation_error or s.error, 80),
            )
            for s in steps
        ],
        empty="no steps recorded",
    )
    print("\ncontext")
    print_json(record.context)
    if record.event is not None:
        print("\nevent")
        print_json(record.event)
