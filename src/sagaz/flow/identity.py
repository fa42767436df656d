"""Event identity: dedup keys, deterministic saga ids and canonical context hashes."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Any

__all__ = ["SAGAZ_NAMESPACE", "canonical_hash", "content_key", "saga_id_for"]

SAGAZ_NAMESPACE = uuid.UUID("3f1d5c8e-6a52-5b8e-9c57-5a6761a7a001")


@functools.lru_cache(maxsize=1024)
def _trigger_namespace(trigger_id: str) -> uuid.UUID:
    return uuid.uuid5(SAGAZ_NAMESPACE, trigger_id)


def saga_id_for(trigger_id: str, key: str) -> str:
    """``uuid5(trigger_id, key)``: a redelivered event maps to the same saga."""
    return str(uuid.uuid5(_trigger_namespace(trigger_id), key))


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        return {f: getattr(value, f) for f in value.__dataclass_fields__}
    return repr(value)


def canonical_hash(value: Any) -> str:
    """SHA-256 of the JSON with sorted keys: stable across processes (never ``hash()``)."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)
    return hashlib.sha256(data.encode()).hexdigest()


def content_key(payload: Any) -> str:
    """The dedup key of a payload without a message identity (body hash)."""
    if isinstance(payload, (bytes, bytearray)):
        return hashlib.sha256(payload).hexdigest()
    if isinstance(payload, str):
        return hashlib.sha256(payload.encode()).hexdigest()
    return canonical_hash(payload)
