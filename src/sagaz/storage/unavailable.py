"""One exception type for a store that cannot be reached right now.

A server store decorated with :func:`raises_unavailable` re-raises, from every operation of the
:class:`~sagaz.abc.SagaStore` contract it defines (abstract or with a default), itself or in one
of its bases below :class:`~sagaz.abc.SagaStore` (the parts a store is composed of), each exception
its ``_unavailable(exc)`` recognises (a refused or lost connection, a server shutting down or
starting up) as :class:`~sagaz.exceptions.StoreUnavailableError`, the driver's error as its
``__cause__``. The trigger engine then knows the store is away, not that the operation was
wrong, and waits for it (:mod:`sagaz.engine.store_outage`). Other errors pass through
unchanged.

>>> @raises_unavailable  # doctest: +SKIP
... class MyStore(SagaStore):
...     def _unavailable(self, exc: BaseException) -> bool:
...         return isinstance(exc, OSError)

An operation that translates its own errors is marked :func:`translates_unavailable` and left
unwrapped.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sagaz.abc import SagaStore
from sagaz.exceptions import StoreUnavailableError

__all__ = ["raises_unavailable", "translates_unavailable", "unavailable_error"]

S = TypeVar("S", bound=SagaStore)
F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
_TRANSLATES = "__sagaz_translates_unavailable__"  # set on a wrapped operation


def raises_unavailable(cls: type[S]) -> type[S]:
    """Wrap the contract's operations that ``cls`` defines (see the module docstring)."""
    predicate = getattr(cls, "_unavailable", None)
    if not callable(predicate):
        raise TypeError(f"{cls.__name__} needs a `_unavailable(self, exc) -> bool` method")
    for name in sorted(_operations()):
        method = _defined(cls, name)
        if method is not None:
            setattr(cls, name, _translating(method))
    return cls


def translates_unavailable(method: F) -> F:
    """Mark an operation that raises :class:`StoreUnavailableError` itself for every error
    ``_unavailable`` recognises: :func:`raises_unavailable` leaves it as it is (no wrapper
    coroutine per call). For a store's hottest operations, whose driver errors all surface
    where they are translated already (a group committer's futures, the store's
    ``_committer()``)."""
    setattr(method, _TRANSLATES, True)
    return method


def _defined(cls: type[SagaStore], name: str) -> Callable[..., Coroutine[Any, Any, Any]] | None:
    """The coroutine function ``name`` that ``cls`` or one of its bases below
    :class:`SagaStore` defines, unless it translates already (a decorated base's)."""
    for klass in cls.__mro__:
        if klass is SagaStore:
            return None
        method = klass.__dict__.get(name)
        if method is not None:
            translates = getattr(method, _TRANSLATES, False)
            return method if inspect.iscoroutinefunction(method) and not translates else None
    return None


def _operations() -> set[str]:
    """The contract's public coroutine methods (``start``/``stop`` translate their own)."""
    return {
        name
        for name, member in vars(SagaStore).items()
        if not name.startswith("_")
        and name not in ("start", "stop")
        and inspect.iscoroutinefunction(member)
    }


def unavailable_error(store: object, exc: BaseException) -> StoreUnavailableError:
    """The :class:`StoreUnavailableError` that says ``store`` could not be reached, ``exc``
    (the driver's error) being what happened; the caller sets it as ``__cause__``."""
    return StoreUnavailableError(
        f"{store!r} is unavailable ({type(exc).__name__}: {exc}); retry once it is back"
    )


def _translating(
    method: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(method)
    async def operation(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if self._unavailable(exc):
                raise unavailable_error(self, exc) from exc
            raise

    setattr(operation, _TRANSLATES, True)
    return operation
