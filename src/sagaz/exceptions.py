"""The sagaz exception tree.

Every error a user can hit carries the fix in its message. Each class also subclasses the
matching builtin (``ValueError``, ``TypeError``, ``TimeoutError``...) so existing ``except``
clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeadLetterReplayError",
    "InvalidEventError",
    "LeaseLostError",
    "MissingExtraError",
    "SagaCancelledError",
    "SagaControlError",
    "SagaDefinitionError",
    "SagaError",
    "SagaStepError",
    "SagaTimeoutError",
    "SagazError",
    "ScheduleError",
    "SchemaOutdatedError",
    "StoreError",
    "StoreUnavailableError",
    "TriggerDefinitionError",
    "TriggerNotFoundError",
    "UnstorableValueError",
]


class SagazError(Exception):
    """Base class of every error raised by sagaz."""


class SagaDefinitionError(SagazError, TypeError):
    """A ``Saga`` subclass is declared wrongly (duplicate step, unknown dependency, cycle...)."""


class TriggerDefinitionError(SagazError, TypeError, ValueError):
    """A ``@trigger`` declaration is wrong (unknown source or option, missing or bad value).

    It is both a ``TypeError`` and a ``ValueError``, as DESIGN 2 promises either."""


class ConfigurationError(SagazError, ValueError):
    """A configuration value is missing or invalid."""


class MissingExtraError(SagazError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` to run."""


class SagaError(SagazError):
    """A saga failed at run time."""


class SagaStepError(SagaError):
    """A step returned something other than a ``dict`` or ``None``, or broke a step rule."""


class SagaTimeoutError(SagaError, TimeoutError):
    """A step or compensation exceeded its ``timeout_seconds``."""


class SagaCancelledError(SagaError):
    """An operator cancelled the saga (``sagaz sagas cancel ID``, :func:`sagaz.cancel_saga`):
    raised in place of its next step, so the steps it completed are compensated and it ends
    ``cancelled``. Its message says who cancelled it and why."""


class SagaControlError(SagazError, ValueError):
    """A cancel, resume or retry that cannot apply to the saga as it is (unknown id, a state
    the action does not fit, an unknown step); the message says what to do instead."""


class InvalidEventError(SagazError, ValueError):
    """Raised by a trigger method to reject an event: it is dead-lettered and no saga starts."""


class StoreError(SagazError, RuntimeError):
    """The saga store failed or was used before ``start()``."""


class UnstorableValueError(StoreError):
    """A value a durable store cannot keep: not JSON (plus bytes and datetimes), a key that
    is not a string, a NaN or infinite float, a naive datetime. The same value fails every
    time, so the engine does not try it again: a run whose context it is, or an admission
    whose row it is in, is dead-lettered at once (reason ``store_error``). The message names
    the value and how to convert it."""


class SchemaOutdatedError(StoreError):
    """The store's schema is older than this sagaz: the store (so the engine, and
    ``Saga.run``) refuses to start on it until ``sagaz db upgrade`` migrates it.

    ``store`` is the store's URL (password redacted), ``found`` the version in the database,
    ``expected`` the one this sagaz needs; the message has the command to run.
    """

    def __init__(self, what: str, *, store: str, found: int, expected: int) -> None:
        from shlex import quote

        self.store = store
        self.found = found
        self.expected = expected
        super().__init__(
            f"{what} has schema version {found}, older than the {expected} this sagaz needs, "
            "and a store migrates its schema only when asked; "
            f"run: sagaz db upgrade --store {quote(store)}"
        )


class StoreUnavailableError(StoreError, ConnectionError):
    """The saga store cannot be reached right now: its connection was refused or lost (the
    server is restarting, the network is down) or, for SQLite, the file is locked or its disk
    failed. Transient by nature: the same call may succeed once the store is back.

    Every store raises this one type for such a failure, whatever its driver raised (that
    error is the ``__cause__``). The trigger engine pauses intake while it sees it, retries
    with a :class:`~sagaz.backoff.Backoff` and resumes by itself."""


class LeaseLostError(StoreError):
    """A write of a saga's state by a worker that no longer owns the saga: another worker
    took it over (its lease had expired: the worker was stopped, or too busy to renew it),
    so the write was not applied, nor anything written with it (steps, outbox messages,
    the inbox row's completion). The saga goes on with its new owner, which settles its
    event; the engine stops its own run of it and holds its delivery until the new owner
    finished the saga (then acks it as a duplicate). Not a failure of the saga.

    ``saga_id`` is the saga, ``owner`` the worker whose write was refused."""

    def __init__(self, saga_id: str, owner: str | None) -> None:
        self.saga_id = saga_id
        self.owner = owner
        super().__init__(
            f"saga {saga_id!r} is no longer owned by worker {owner!r}: another worker took "
            "it over after its lease expired, and this write was not applied (raise "
            "lease_seconds if live workers lose their leases)"
        )


class DeadLetterReplayError(SagazError, ValueError):
    """A dead letter cannot be replayed (its saga's module does not import, its trigger is
    gone, or its event cannot be rebuilt); the message says what to pass or do."""


class TriggerNotFoundError(SagazError, LookupError):
    """No trigger with that id is known to the store (pausing or resuming it); the message
    lists the ids it knows."""


class ScheduleError(SagazError, ValueError):
    """A trigger cannot be run now or backfilled as asked (not a cron or poll trigger, a
    window that ends before it starts or in the future, too many ticks); the message says
    what to change."""
