"""``@action`` and ``@compensate``: declare the steps of a saga."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ActionSpec", "CompensationSpec", "action", "compensate"]

F = TypeVar("F", bound=Callable[..., Any])

ACTION_ATTR = "__sagaz_action__"
COMPENSATION_ATTR = "__sagaz_compensation__"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """What ``@action`` records on a method."""

    name: str
    attr: str
    depends_on: tuple[str, ...] | None
    max_retries: int
    timeout_seconds: float | None
    retry_backoff_seconds: float
    streaming: bool


@dataclass(frozen=True, slots=True)
class CompensationSpec:
    """What ``@compensate`` records on a method."""

    step: str
    attr: str
    max_retries: int
    timeout_seconds: float | None
    retry_backoff_seconds: float


def _check_common(
    kind: str, name: str, max_retries: int, timeout: float | None, backoff: float
) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"@{kind} needs a step name, e.g. @{kind}('reserve'); got {name!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"@{kind}({name!r}): max_retries must be an int >= 0, got {max_retries!r}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"@{kind}({name!r}): timeout_seconds must be > 0, got {timeout!r}")
    if backoff < 0:
        raise ValueError(f"@{kind}({name!r}): retry_backoff_seconds must be >= 0, got {backoff!r}")


def action(
    name: str,
    *,
    depends_on: Sequence[str] | None = None,
    max_retries: int = 0,
    timeout_seconds: float | None = None,
    retry_backoff_seconds: float = 0.1,
) -> Callable[[F], F]:
    """Declare a step. The method is ``async def step(self, ctx) -> dict | None``.

    The returned dict merges into the context. An async generator (``yield``) is a streaming
    action: the steps that depend on it read its records with ``ctx.stream(name)``, through a
    bounded channel (the producer waits while 100 records are unread). Records no step reads
    (nobody depends on the stream, or its readers finished early) do not block it: they are
    dropped and counted in an INFO log line of ``sagaz.saga.execution``. ``timeout_seconds``
    bounds the whole production. After a crash, a streaming step that had not finished, or
    whose reader had not, is produced again from its first record.

    >>> class Order(Saga):  # doctest: +SKIP
    ...     @action("reserve", max_retries=2, timeout_seconds=5)
    ...     async def reserve(self, ctx):
    ...         return {"reservation": 42}
    """
    _check_common("action", name, max_retries, timeout_seconds, retry_backoff_seconds)
    if depends_on is not None and (
        isinstance(depends_on, str) or not all(isinstance(d, str) for d in depends_on)
    ):
        raise TypeError(
            f"@action({name!r}): depends_on must be a list of step names, got {depends_on!r}"
        )

    def decorate(fn: F) -> F:
        streaming = inspect.isasyncgenfunction(fn)
        if not streaming and not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@action({name!r}) on {fn.__qualname__}: the step must be `async def` "
                "(or an async generator for a streaming action)"
            )
        spec = ActionSpec(
            name=name,
            attr=fn.__name__,
            depends_on=tuple(depends_on) if depends_on is not None else None,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff_seconds=retry_backoff_seconds,
            streaming=streaming,
        )
        setattr(fn, ACTION_ATTR, spec)
        return fn

    return decorate


def compensate(
    step: str,
    *,
    max_retries: int = 2,
    timeout_seconds: float | None = None,
    retry_backoff_seconds: float = 0.1,
) -> Callable[[F], F]:
    """Declare the undo of ``step``; it runs when a later step fails.

    A compensation that still fails after ``max_retries`` makes the saga ``failed`` and the
    error is recorded, never hidden.
    """
    _check_common("compensate", step, max_retries, timeout_seconds, retry_backoff_seconds)

    def decorate(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@compensate({step!r}) on {fn.__qualname__}: the compensation must be `async def`"
            )
        spec = CompensationSpec(
            step=step,
            attr=fn.__name__,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff_seconds=retry_backoff_seconds,
        )
        setattr(fn, COMPENSATION_ATTR, spec)
        return fn

    return decorate
