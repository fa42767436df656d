"""One exception type for a store that cannot be reached right now.

A server store decorated with :func:`raises_unavailable` re-raises, from every operation of the
:class:`~sagaz.abc.SagaStore` contract, each exception its ``_unavailable(exc)`` recognises (a
refused or lost connection, a server shutting down or starting up) as
:class:`~sagaz.exceptions.StoreUnavailableError`, the driver's error as its ``__cause__``. The
trigger engine then knows the store is away, not that the operation was wrong, and waits for
it (:mod:`sagaz.engine.store_outage`). Other errors pass through unchanged.

>>> @raises_unavailable  # doctest: +SKIP
... class MyStore(SagaStore):
...     def _unavailable(self, exc: BaseException) -> bool:
...         return isinstance(exc, OSError)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sagaz.abc import SagaStore
from sagaz.exceptions import StoreUnavailableError

__all__ = ["raises_unavailable"]

S = TypeVar("S", bound=SagaStore)

#: the contract's operations that have a default (so are not abstract) but a store overrides
_COMBINED = frozenset({"save_checkpoint"})


def raises_unavailable(cls: type[S]) -> type[S]:
    """Wrap the contract's operations that ``cls`` defines (see the module docstring)."""
    predicate = getattr(cls, "_unavailable", None)
    if not callable(predicate):
        raise TypeError(f"{cls.__name__} needs a `_unavailable(self, exc) -> bool` method")
    for name in sorted(SagaStore.__abstractmethods__ | _COMBINED):
        method = cls.__dict__.get(name)
        if method is not None and inspect.iscoroutinefunction(method):
            setattr(cls, name, _translating(method))
    return cls


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
                raise StoreUnavailableError(
                    f"{self!r} is unavailable ({type(exc).__name__}: {exc}); retry once it is back"
                ) from exc
            raise

    return operation
