"""Named leases and shared rate-limit tokens.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

from urllib.parse import quote

from sagaz.storage.rate_limits import MIN_RATE_WAIT, rate_interval
from sagaz.storage.redis.connection import RedisConnection

__all__ = ["RedisLeases"]


def _ms(seconds: float) -> int:
    """A lease's ``ttl`` as the whole milliseconds ``PX`` takes (at least 1)."""
    return max(1, round(seconds * 1000))


class RedisLeases(RedisConnection):
    """Named leases and shared rate-limit tokens."""

    # -- leases ----------------------------------------------------------------------------
    # The key expires with the lease, on the server's clock.
    def _lease_key(self, name: str) -> str:
        return self._key("lease", quote(name, safe=""))

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        taken = await self._script("ACQUIRE_LEASE", [self._lease_key(name)], [holder, _ms(ttl)])
        return bool(taken)

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        renewed = await self._script("RENEW_LEASE", [self._lease_key(name)], [holder, _ms(ttl)])
        return bool(renewed)

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._script("RELEASE_LEASE", [self._lease_key(name)], [holder])
        return bool(released)

    # -- shared rate limits ----------------------------------------------------------------
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        interval, tolerance = rate_interval(rate, burst)
        wait = await self._script(
            "TAKE_RATE_TOKEN",
            [self._key("rate", quote(name, safe=""))],
            [max(1, round(interval * 1e6)), round(tolerance * 1e6)],
        )
        return 0.0 if int(wait) == 0 else max(int(wait) / 1e6, MIN_RATE_WAIT)
