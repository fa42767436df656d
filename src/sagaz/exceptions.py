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
    "MissingExtraError",
    "SagaDefinitionError",
    "SagaError",
    "SagaStepError",
    "SagaTimeoutError",
    "SagazError",
    "StoreError",
    "TriggerDefinitionError",
    "TriggerNotFoundError",
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


class InvalidEventError(SagazError, ValueError):
    """Raised by a trigger method to reject an event: it is dead-lettered and no saga starts."""


class StoreError(SagazError, RuntimeError):
    """The saga store failed or was used before ``start()``."""


class DeadLetterReplayError(SagazError, ValueError):
    """A dead letter cannot be replayed (its saga's module does not import, its trigger is
    gone, or its event cannot be rebuilt); the message says what to pass or do."""


class TriggerNotFoundError(SagazError, LookupError):
    """No trigger with that id is known to the store (pausing or resuming it); the message
    lists the ids it knows."""
