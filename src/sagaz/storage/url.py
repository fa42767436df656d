"""Pick a store from a ``SAGAZ_STORE_URL``-style address.

>>> store_from_url("memory://")  # doctest: +ELLIPSIS
<sagaz.storage.memory.MemorySagaStore object at ...>
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sagaz.abc import SagaStore
from sagaz.exceptions import ConfigurationError

__all__ = ["ACCEPTED_URLS", "redact_url", "sqlite_path", "store_from_url"]

ACCEPTED_URLS = (
    "memory://  (in-process, not durable)",
    "sqlite:///relative/path.db  or  sqlite:////absolute/path.db",
    "postgresql://user:password@host:5432/db[?schema=sagaz]  (also postgres://)",
    "redis://host:6379/0[?prefix=sagaz]  (also rediss:// for TLS)",
)
"""The address forms :func:`store_from_url` understands, for error messages and docs."""


def _accepted() -> str:
    return "; ".join(ACCEPTED_URLS)


def sqlite_path(path_or_url: str) -> str:
    """The file path of a ``sqlite:///`` URL (a plain path is returned unchanged).

    ``sqlite:///sagaz.db`` is relative to the working directory, ``sqlite:////var/lib/x.db``
    absolute, ``sqlite:///:memory:`` an in-memory database.
    """
    if "://" not in path_or_url:
        return path_or_url
    scheme, _, rest = path_or_url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"not an SQLite URL: {path_or_url!r}; write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path)"
        )
    return rest[1:]


def _pop_query(url: str, name: str) -> tuple[str, str | None]:
    """``url`` without the query parameter ``name``, and that parameter's value."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    value = next((v for k, v in pairs if k == name), None)
    kept = urlencode([(k, v) for k, v in pairs if k != name])
    return urlunsplit(parts._replace(query=kept)), value


def store_from_url(url: str) -> SagaStore:
    """Build (but do not start) the store that ``url`` names.

    ``memory://`` → :class:`~sagaz.storage.memory.MemorySagaStore`,
    ``sqlite:///path.db`` → :class:`~sagaz.storage.sqlite.SQLiteSagaStore`,
    ``postgresql://...`` (``?schema=`` picks the schema) →
    :class:`~sagaz.storage.postgres.PostgresSagaStore`,
    ``redis://...`` (``?prefix=`` picks the key prefix) →
    :class:`~sagaz.storage.redis.RedisSagaStore`.

    >>> store = store_from_url("sqlite:///sagaz.db")  # doctest: +SKIP
    >>> async with store: ...  # doctest: +SKIP
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store URL {redact_url(str(url))!r} has no scheme; use one of: {_accepted()}"
        )
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        from sagaz.storage.memory import MemorySagaStore

        return MemorySagaStore()
    if scheme == "sqlite":
        from sagaz.storage.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from sagaz.storage.postgres import PostgresSagaStore

        dsn, schema = _pop_query(url, "schema")
        return PostgresSagaStore(dsn, schema=schema or "sagaz")
    if scheme in ("redis", "rediss"):
        from sagaz.storage.redis import RedisSagaStore

        address, prefix = _pop_query(url, "prefix")
        return RedisSagaStore(address, prefix=prefix or "sagaz")
    raise ConfigurationError(
        f"unsupported store URL scheme {scheme!r} in {redact_url(url)!r}; use one of: {_accepted()}"
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for error messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
