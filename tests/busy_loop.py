"""A task that keeps the event loop busy: it burns 200 µs of CPU, yields, and again, so the
loop never blocks (what starves a thread that needs the GIL back from it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

__all__ = ["busy_loop"]


@contextlib.asynccontextmanager
async def busy_loop() -> AsyncIterator[None]:
    """Keep the running loop busy while the block runs."""
    stop = asyncio.Event()

    async def burn() -> None:
        while not stop.is_set():
            end = time.perf_counter() + 0.0002
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    burner = asyncio.create_task(burn())
    try:
        yield
    finally:
        stop.set()
        await burner
