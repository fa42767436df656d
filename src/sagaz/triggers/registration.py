"""The trigger registry: filled by ``Saga.__init_subclass__``, read by the engine.

A plain data structure: importing it imports no source and no broker driver.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sagaz.exceptions import TriggerDefinitionError
from sagaz.triggers.decorator import TRIGGER_ATTR, TriggerSpec
from sagaz.triggers.poll import Trigger

if TYPE_CHECKING:
    from sagaz.abc import Source
    from sagaz.saga.definition import Saga

__all__ = ["TriggerDefinition", "TriggerRegistry", "registry"]


@dataclass(frozen=True, slots=True)
class TriggerDefinition:
    """One registered trigger: a saga class, a method and a source with its options."""

    trigger_id: str
    saga_cls: type[Saga]
    method: str
    source: str
    options: dict[str, Any]
    source_options: dict[str, Any] = field(default_factory=dict)
    idempotency_key: Callable[[Any], Any] | None = None
    dedup: Literal["content"] | None = None
    concurrency_key: Callable[[Any], Any] | None = None
    max_concurrent_sagas: int | None = None
    rate_limit_per_second: float | None = None
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
        value = self.source_options.get("channel")
        return str(value) if value is not None else None


def _fail(where: str, message: str) -> TriggerDefinitionError:
    return TriggerDefinitionError(f"{where}: {message}")


def _positive(where: str, name: str, value: Any, kind: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(where, f"option {name}={value!r} must be a positive number")
    if kind is int and not isinstance(value, int):
        raise _fail(where, f"option {name}={value!r} must be a positive integer")


#: sources whose deliveries may come without a message identity (``dedup="content"`` applies)
_IDENTITY_OPTIONAL_SOURCES = frozenset({"memory", "webhook", "custom"})


def _check_dedup(where: str, source: str, options: dict[str, Any], poll: bool) -> None:
    dedup = options.get("dedup")
    if dedup is None:
        return
    if dedup != "content":
        raise _fail(
            where,
            f"option dedup={dedup!r} is not known; dedup='content' makes events with the same "
            "content one event (without it, each delivery without an identity is its own)",
        )
    if "idempotency_key" in options:
        raise _fail(
            where,
            "options dedup and idempotency_key both say what identifies an event; keep one "
            "(idempotency_key wins over any content)",
        )
    if source not in _IDENTITY_OPTIONAL_SOURCES or poll:
        raise _fail(
            where,
            f"option dedup='content' applies to events without an identity (memory, webhook, "
            f"custom push sources); {source} events always carry one (message id, offset, "
            "tick, path+mtime+size...). To dedup by content, name it: "
            "idempotency_key=lambda e: e['id']",
        )


def build_trigger_definition(
    saga_cls: type[Saga], method: str, spec: TriggerSpec, trigger_id: str
) -> TriggerDefinition:
    """Validate one ``@trigger`` and build its definition; errors name class, method, option."""
    from sagaz.engine.loading import PIPELINE_OPTIONS, SOURCE_MODULES, load_source_module

    where = f"{saga_cls.__qualname__}.{method} @trigger(source={spec.source!r})"
    options = dict(spec.options)
    if spec.source not in SOURCE_MODULES:
        raise _fail(
            where,
            f"unknown source {spec.source!r}; choose one of {sorted(SOURCE_MODULES)} "
            "(or source='custom' with trigger=YourTrigger())",
        )
    poll_trigger: Trigger | None = None
    push_source: Source | None = None
    if spec.source == "custom":
        from sagaz.abc import Source

        custom = options.pop("trigger", None)
        if isinstance(custom, Trigger):
            poll_trigger = custom
        elif isinstance(custom, Source):
            push_source = custom
        else:
            raise _fail(
                where,
                "option trigger= must be an instance of a sagaz.Trigger subclass (poll) or of "
                f"a sagaz.abc.Source subclass (push), got {custom!r}",
            )
    module = load_source_module(spec.source)
    unknown = set(options) - PIPELINE_OPTIONS - module.OPTIONS
    if unknown:
        allowed = sorted(PIPELINE_OPTIONS | module.OPTIONS)
        raise _fail(where, f"unknown option(s) {sorted(unknown)}; accepted options: {allowed}")
    missing = module.REQUIRED - set(options)
    if missing:
        raise _fail(where, f"missing required option(s) {sorted(missing)}")
    for name in ("idempotency_key", "concurrency_key"):
        if name in options and not callable(options[name]):
            raise _fail(
                where, f"option {name} must be a callable taking the event, e.g. lambda e: e['id']"
            )
    _check_dedup(where, spec.source, options, poll_trigger is not None)
    _positive(where, "max_concurrent_sagas", options.get("max_concurrent_sagas"), int)
    _positive(where, "rate_limit_per_second", options.get("rate_limit_per_second"), float)
    retries = options.get("max_retries")
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise _fail(where, f"option max_retries={retries!r} must be an integer >= 0")
    backoff = options.get("retry_backoff_seconds")
    if backoff is not None and (
        not isinstance(backoff, (list, tuple))
        or any(not isinstance(b, (int, float)) or b < 0 for b in backoff)
    ):
        raise _fail(
            where, f"option retry_backoff_seconds={backoff!r} must be a list of seconds >= 0"
        )
    source_options = {k: v for k, v in options.items() if k not in PIPELINE_OPTIONS}
    try:
        module.validate(source_options)
    except (ValueError, TypeError) as exc:
        raise _fail(where, str(exc)) from exc
    return TriggerDefinition(
        trigger_id=trigger_id,
        saga_cls=saga_cls,
        method=method,
        source=spec.source,
        options=options,
        source_options=source_options,
        idempotency_key=options.get("idempotency_key"),
        dedup=options.get("dedup"),
        concurrency_key=options.get("concurrency_key"),
        max_concurrent_sagas=options.get("max_concurrent_sagas"),
        rate_limit_per_second=options.get("rate_limit_per_second"),
        max_retries=retries,
        retry_backoff_seconds=list(backoff) if backoff is not None else None,
        dead_letter_topic=options.get("dead_letter_topic"),
        persist_events=options.get("persist_events"),
        enabled=bool(options.get("enabled", True)),
        poll_trigger=poll_trigger,
        push_source=push_source,
    )


def _check_signature(saga_cls: type, method: str, fn: Any) -> None:
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    if not params:
        raise TriggerDefinitionError(
            f"{saga_cls.__qualname__}.{method}: a trigger method takes the event: "
            f"def {method}(self, event) -> dict | None"
        )
    if len(params) > 2:
        raise TriggerDefinitionError(
            f"{saga_cls.__qualname__}.{method}: a trigger method takes (self, event) or "
            f"(self, event, meta: EventMeta), got {len(params)} parameters"
        )
    if len(params) == 2:
        from sagaz.events import EventMeta

        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            return
        if hints.get(params[1].name) not in (EventMeta, None):
            raise TriggerDefinitionError(
                f"{saga_cls.__qualname__}.{method}: the second parameter "
                f"{params[1].name!r} must be annotated EventMeta"
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
                _check_signature(saga_cls, attr, value)
                for n, spec in enumerate(specs, start=1):
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
