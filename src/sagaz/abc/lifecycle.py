"""The lifecycle every store, source and publisher shares: ``start()``/``stop()`` and
``async with``."""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Self

__all__ = ["Lifecycle"]


class Lifecycle:
    """``start()``/``stop()`` mirrored by ``async with``; ``stop()`` is idempotent."""

    _started: bool = False

    async def start(self) -> None:
        """Acquire resources. Calling it twice is harmless."""
        self._started = True

    async def stop(self) -> None:
        """Release resources. Idempotent."""
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __del__(self) -> None:
        if getattr(self, "_started", False):
            warnings.warn(
                f"{type(self).__name__} was started but never stopped; "
                "call `await obj.stop()` or use `async with`",
                ResourceWarning,
                stacklevel=1,
            )
