"""Auto-pipelining for :class:`~sagaz.storage.redis.RedisSagaStore`'s Lua scripts.

Every store operation that writes is one Lua script, atomic on the server. Calls made while a
pipeline is on its way wait for the next one, so many concurrent sagas share a round trip
(non-transactional: each script stays atomic by itself, and each caller gets its own reply or
error). A caller cancelled before its call is sent drops it; once sent, it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ScriptPipeline"]


@dataclass(slots=True)
class _Call:
    """A script call waiting for its pipeline."""

    name: str
    keys: list[str]
    args: list[Any]
    reply: asyncio.Future[Any]


class ScriptPipeline:
    """Sends script calls on ``client`` in pipelines; ``scripts`` are redis-py ``Script``
    objects by name (``client.register_script``)."""

    def __init__(self, client: Any, scripts: Mapping[str, Any]) -> None:
        from redis.exceptions import NoScriptError

        self._client = client
        self._scripts = dict(scripts)
        self._noscript = NoScriptError
        self._queued: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name``; its reply, once the pipeline carrying it came back."""
        call = _Call(name, list(keys), list(args), asyncio.get_running_loop().create_future())
        self._queued.append(call)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="sagaz-redis-store")
        return await call.reply

    async def drain(self) -> None:
        """Wait until every queued call was sent and answered."""
        if self._sender is not None:
            await asyncio.wait({self._sender})

    async def _send(self) -> None:
        while self._queued:
            calls = [call for call in self._queued if not call.reply.done()]
            self._queued = []
            if calls:
                await self._send_one_pipeline(calls)

    async def _send_one_pipeline(self, calls: list[_Call]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for call in calls:
                    sha = self._scripts[call.name].sha
                    pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
                replies = await pipe.execute(raise_on_error=False)
            unknown = [c for c, r in zip(calls, replies, strict=True) if self._lost(r)]
            if unknown:  # the server lost its scripts (restarted, SCRIPT FLUSH)
                for script in self._scripts.values():
                    script.sha = await self._client.script_load(script.script)
                self._queued[:0] = unknown  # sent again, ahead of the newer calls
        except BaseException as exc:  # the link (or the loop) went away: all of them fail
            for call in calls:
                if not call.reply.done():
                    call.reply.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(calls, replies, strict=True):
            if call.reply.done() or self._lost(reply):
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    def _lost(self, reply: Any) -> bool:
        return isinstance(reply, self._noscript)
