"""The trigger registry: filled by ``Saga.__init_subclass__``, read by the engine.

A plain data structure: a ``@trigger`` is validated through the option models of
:mod:`sagaz.triggers.options` alone, so defining a saga class imports no source, no engine and
no broker driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sagaz.abc import Source
from sagaz.exceptions import TriggerDefinitionError
from sagaz.triggers.decorator import TRIGGER_ATTR, TriggerSpec
from sagaz.triggers.event_calls import check_event_calls
from sagaz.triggers.options import (
    CustomOptions,
    MemoryOptions,
    SourceOptions,
    parse_trigger_options,
)
from sagaz.triggers.poll import Trigger
from sagaz.triggers.signature import check_trigger_method

if TYPE_CHECKING:
    from sagaz.saga.definition import Saga

__all__ = ["TriggerDefinition", "TriggerRegistry", "registry"]


@dataclass(frozen=True, slots=True)
class TriggerDefinition:
    """One registered trigger: a saga class, a method and a source with its validated options.

    ``source_options`` is the source's option model (``OPTION_MODELS[source]``), handed to the
    source when the engine builds it; the pipeline options are flattened into the fields below
    (``None``: the engine-wide ``TriggerConfig`` value applies).
    """

    trigger_id: str
    saga_cls: type[Saga]
    method: str
    source: str
    #: the keyword arguments of the ``@trigger``, as written
    options: dict[str, Any]
    source_options: SourceOptions
    idempotency_key: Callable[[Any], Any] | None = None
    dedup: Literal["content"] | None = None
    concurrency_key: Callable[[Any], Any] | None = None
    max_concurrent_sagas: int | None = None
    rate_limit_per_second: float | None = None
    limit_scope: Literal["process", "cluster"] = "process"
    max_retries: int | None = None
    retry_backoff_seconds: list[float] | None = None
    dead_letter_topic: str | None = None
    persist_events: bool | None = None
    enabled: bool = True
    poll_trigger: Trigger | None = None
    push_source: Source | None = None

    @property
    def saga_name(self) -> str:
        """The ``saga_name`` of the saga class."""
        return self.saga_cls.saga_name

    @property
    def channel(self) -> str | None:
        """The channel of a ``memory`` trigger."""
        options = self.source_options
        return options.channel if isinstance(options, MemoryOptions) else None


#: sources whose deliveries may come without a message identity (``dedup="content"`` applies)
_IDENTITY_OPTIONAL_SOURCES = frozenset({"memory", "webhook", "custom"})


def _check_dedup(where: str, source: str, poll: bool) -> None:
    if source not in _IDENTITY_OPTIONAL_SOURCES or poll:
        raise TriggerDefinitionError(
            f"{where}: option dedup='content' applies to events without an identity (memory, "
            f"webhook, custom push sources); {source} events always carry one (message id, "
            "offset, tick, path+mtime+size...). To dedup by content, name it: "
            "idempotency_key=lambda e: e['id']"
        )


def build_trigger_definition(
    saga_cls: type[Saga], method: str, spec: TriggerSpec, trigger_id: str
) -> TriggerDefinition:
    """Validate one ``@trigger`` and build its definition; errors name class, method, option."""
    where = f"{saga_cls.__qualname__}.{method} @trigger(source={spec.source!r})"
    options = dict(spec.options)
    try:
        pipeline, source_options = parse_trigger_options(spec.source, options)
    except ValueError as exc:
        raise TriggerDefinitionError(f"{where}: {exc}") from None
    custom = source_options.trigger if isinstance(source_options, CustomOptions) else None
    if pipeline.dedup is not None:
        _check_dedup(where, spec.source, isinstance(custom, Trigger))
    backoff = pipeline.retry_backoff_seconds
    return TriggerDefinition(
        trigger_id=trigger_id,
        saga_cls=saga_cls,
        method=method,
        source=spec.source,
        options=options,
        source_options=source_options,
        idempotency_key=pipeline.idempotency_key,
        dedup=pipeline.dedup,
        concurrency_key=pipeline.concurrency_key,
        max_concurrent_sagas=pipeline.max_concurrent_sagas,
        rate_limit_per_second=pipeline.rate_limit_per_second,
        limit_scope=pipeline.limit_scope,
        max_retries=pipeline.max_retries,
        retry_backoff_seconds=list(backoff) if backoff is not None else None,
        dead_letter_topic=pipeline.dead_letter_topic,
        persist_events=pipeline.persist_events,
        enabled=pipeline.enabled,
        poll_trigger=custom if isinstance(custom, Trigger) else None,
        push_source=custom if isinstance(custom, Source) else None,
    )


class TriggerRegistry:
    """Every registered trigger, by id (``"{saga_name}.{method}"``).

    >>> from sagaz.triggers import registry
    >>> registry.clear()  # in tests (the pytest plugin does it for you)
    """

    def __init__(self) -> None:
        self._triggers: dict[str, TriggerDefinition] = {}

    def register_saga(self, saga_cls: type[Saga]) -> list[TriggerDefinition]:
        """Register every ``@trigger`` method of ``saga_cls``, own or inherited."""
        found: list[TriggerDefinition] = []
        seen: set[str] = set()
        for klass in saga_cls.__mro__:
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)
                specs = getattr(value, TRIGGER_ATTR, None)
                if not specs:
                    continue
                check_trigger_method(saga_cls, attr, value)
                for n, spec in enumerate(specs, start=1):
                    check_event_calls(saga_cls, attr, value, spec.source)
                    suffix = f"#{n}" if n > 1 else ""
                    trigger_id = f"{saga_cls.saga_name}.{attr}{suffix}"
                    found.append(build_trigger_definition(saga_cls, attr, spec, trigger_id))
        for definition in found:
            existing = self._triggers.get(definition.trigger_id)
            if existing is not None and not _same_class(existing.saga_cls, saga_cls):
                raise TriggerDefinitionError(
                    f"duplicate trigger id {definition.trigger_id!r}: defined by "
                    f"{existing.saga_cls.__module__}.{existing.saga_cls.__qualname__} and "
                    f"{saga_cls.__module__}.{saga_cls.__qualname__}. Give the subclass its own "
                    "`saga_name`, or declare the parent `class Base(Saga, abstract=True)` so "
                    "its triggers are not registered"
                )
        for definition in found:
            self._triggers[definition.trigger_id] = definition
        return found

    def triggers(self) -> list[TriggerDefinition]:
        """All registered triggers, in registration order."""
        return list(self._triggers.values())

    def get(self, trigger_id: str) -> TriggerDefinition:
        """One trigger by id; ``KeyError`` lists the known ids."""
        try:
            return self._triggers[trigger_id]
        except KeyError:
            raise KeyError(
                f"no trigger {trigger_id!r}; registered: {sorted(self._triggers)}"
            ) from None

    def for_saga(self, saga_cls: type) -> list[TriggerDefinition]:
        """The triggers of one saga class."""
        return [t for t in self._triggers.values() if t.saga_cls is saga_cls]

    def clear(self) -> None:
        """Forget every trigger (tests)."""
        self._triggers.clear()

    def snapshot(self) -> dict[str, TriggerDefinition]:
        """A copy of the registry's content (the pytest plugin restores it after a test)."""
        return dict(self._triggers)

    def restore(self, snapshot: dict[str, TriggerDefinition]) -> None:
        """Put back a :meth:`snapshot`."""
        self._triggers = dict(snapshot)

    def __iter__(self) -> Iterator[TriggerDefinition]:
        return iter(self.triggers())

    def __len__(self) -> int:
        return len(self._triggers)


def _same_class(a: type, b: type) -> bool:
    """A class defined again under the same name (module reload) replaces its old self."""
    return a is b or (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__)


registry = TriggerRegistry()
"""The process-wide trigger registry."""
