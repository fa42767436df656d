"""Contracts: :class:`SagaStore` (storage backends), :class:`Source` (event sources) with the
:class:`SourceContext` a source is built with, and :class:`Publisher` (outbox).

Every store passes the same suite in ``tests/contract/test_store_contract.py``; every broker
source passes ``tests/contract/test_source_contract.py``. The contracts live in one module
each (:mod:`sagaz.abc.store`, :mod:`sagaz.abc.source`, :mod:`sagaz.abc.publisher`,
:mod:`sagaz.abc.lifecycle`); import them from here.
"""

from sagaz.abc.lifecycle import Lifecycle
from sagaz.abc.publisher import Publisher
from sagaz.abc.source import Emit, EmitMany, Source, SourceContext, SourceCounter, emit_many
from sagaz.abc.store import SagaStore

__all__ = [
    "Emit",
    "EmitMany",
    "Lifecycle",
    "Publisher",
    "SagaStore",
    "Source",
    "SourceContext",
    "SourceCounter",
    "emit_many",
]
