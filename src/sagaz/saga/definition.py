"""``Saga``: the base class users subclass. Class creation validates the steps and registers
the triggers (``Saga.__init_subclass__`` → ``sagaz.triggers.registry``)."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sagaz.exceptions import SagaDefinitionError
from sagaz.saga.context import describe_streams
from sagaz.saga.listeners import SagaListener
from sagaz.saga.steps import ACTION_ATTR, COMPENSATION_ATTR, ActionSpec, CompensationSpec

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.saga.execution import SagaExecution
    from sagaz.saga.result import SagaResult

__all__ = ["Saga", "SagaDefinition", "StepDefinition"]


@functools.cache
def _execution_class() -> type[SagaExecution]:
    """``SagaExecution`` (imported at the first run: it imports this module). Cached: an
    import statement run per saga cost about a microsecond, a twentieth of a one-step run."""
    from sagaz.saga.execution import SagaExecution

    return SagaExecution


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step of a saga class: its action, its compensation and its dependencies."""

    action: ActionSpec
    compensation: CompensationSpec | None
    depends_on: tuple[str, ...]
    index: int


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """The validated steps of a saga class, in declaration order."""

    steps: tuple[StepDefinition, ...]
    is_dag: bool
    #: each streaming action and the steps that depend on it (its possible readers)
    readers: Mapping[str, tuple[str, ...]]
    #: steps run one after another (no DAG, no streaming action): read once per saga run
    sequential: bool = field(init=False)

    def __post_init__(self) -> None:
        # ``readers`` names every streaming action
        object.__setattr__(self, "sequential", not self.is_dag and not self.readers)

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``."""
        for step in self.steps:
            if step.action.name == name:
                return step
        raise KeyError(name)


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def _members(cls: type) -> dict[str, Any]:
    """Attributes by name, parents first, each class in declaration order; children override."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            merged.pop(attr, None)  # an override takes the child's declaration position
            merged[attr] = value
    return merged


_DICT_RETURNS = (dict, Mapping, typing.MutableMapping, type(None))


def _check_return_annotation(cls: type, spec: ActionSpec, fn: Any) -> None:
    if spec.streaming:
        return
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: checked at run time instead
        return
    if "return" not in hints:
        return
    ret = hints["return"]
    candidates = typing.get_args(ret) if typing.get_origin(ret) in (typing.Union,) else (ret,)
    if type(ret).__name__ == "UnionType":
        candidates = typing.get_args(ret)
    for candidate in candidates:
        origin = typing.get_origin(candidate) or candidate
        if candidate is Any or origin in _DICT_RETURNS or typing.is_typeddict(candidate):
            continue
        raise SagaDefinitionError(
            f"{cls.__qualname__}: step {spec.name!r} ({spec.attr}) is annotated to return "
            f"{candidate!r}; an action returns a dict (merged into the context) or None"
        )


def build_definition(cls: type) -> SagaDefinition:
    """Collect and validate the steps of ``cls``; raise :class:`SagaDefinitionError`."""
    where = cls.__qualname__
    actions: dict[str, ActionSpec] = {}
    functions: dict[str, Any] = {}
    compensations: dict[str, CompensationSpec] = {}
    for attr, value in _members(cls).items():
        spec = getattr(value, ACTION_ATTR, None)
        if isinstance(spec, ActionSpec):
            if spec.name in actions and actions[spec.name].attr != attr:
                raise SagaDefinitionError(
                    f"{where}: duplicate step name {spec.name!r} on methods "
                    f"{actions[spec.name].attr!r} and {attr!r}; step names must be unique"
                )
            actions[spec.name] = spec
            functions[spec.name] = value
        comp = getattr(value, COMPENSATION_ATTR, None)
        if isinstance(comp, CompensationSpec):
            if comp.step in compensations and compensations[comp.step].attr != attr:
                raise SagaDefinitionError(
                    f"{where}: step {comp.step!r} has two compensations "
                    f"({compensations[comp.step].attr!r} and {attr!r})"
                )
            compensations[comp.step] = comp
    for comp in compensations.values():
        if comp.step not in actions:
            raise SagaDefinitionError(
                f"{where}: @compensate({comp.step!r}) on {comp.attr!r} names no step; "
                f"known steps: {sorted(actions)}"
            )
    is_dag = any(a.depends_on is not None for a in actions.values())
    names = list(actions)
    steps: list[StepDefinition] = []
    for index, name in enumerate(names):
        spec = actions[name]
        if spec.streaming and spec.max_retries:
            raise SagaDefinitionError(
                f"{where}: streaming step {name!r} cannot have max_retries (its records were "
                "already read downstream); make the reading step retry instead"
            )
        _check_return_annotation(cls, spec, functions[name])
        if is_dag:
            deps = spec.depends_on or ()
        else:
            deps = (names[index - 1],) if index else ()
        for dep in deps:
            if dep not in actions:
                raise SagaDefinitionError(
                    f"{where}: step {name!r} depends_on unknown step {dep!r}; "
                    f"known steps: {sorted(actions)}"
                )
            if dep == name:
                raise SagaDefinitionError(f"{where}: step {name!r} depends on itself")
        steps.append(StepDefinition(spec, compensations.get(name), tuple(deps), index))
    _check_cycles(where, steps)
    readers = {
        s.action.name: tuple(r.action.name for r in steps if s.action.name in r.depends_on)
        for s in steps
        if s.action.streaming
    }
    for step in steps:
        _check_stream_reads(cls, step, functions[step.action.name], readers, is_dag)
    return SagaDefinition(tuple(steps), is_dag, readers)


def _mentions(code: types.CodeType, name: str) -> bool:
    """Whether ``code`` (or a function nested in it) uses the attribute or global ``name``."""
    return name in code.co_names or any(
        isinstance(const, types.CodeType) and _mentions(const, name) for const in code.co_consts
    )


def _stream_reads(fn: Any) -> list[str]:
    """The literal names a step passes to ``ctx.stream(...)``, read from its source.

    Best effort: a step whose source is not available (defined in ``exec``, a REPL) or that
    computes the name is checked when it calls ``ctx.stream()`` instead.
    """
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None or not _mentions(code, "stream"):
        return []
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return []
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return []
    params = [*node.args.posonlyargs, *node.args.args]
    if len(params) < 2:
        return []
    ctx = params[1].arg  # (self, ctx)
    return [
        call.args[0].value
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "stream"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == ctx
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    ]


def _check_stream_reads(
    cls: type,
    step: StepDefinition,
    fn: Any,
    readers: Mapping[str, tuple[str, ...]],
    is_dag: bool,
) -> None:
    """A step that reads ``ctx.stream("x")`` needs a streaming action ``x`` it depends on."""
    name = step.action.name
    saga_name = getattr(cls, "saga_name", "") or cls.__name__
    where = f"{cls.__qualname__} (saga {saga_name!r}): step {name!r}"
    for stream in _stream_reads(fn):
        if stream not in readers:
            raise SagaDefinitionError(
                f"{where} reads ctx.stream({stream!r}), but no streaming action is named "
                f"{stream!r}; {describe_streams(readers)}"
            )
        if name not in readers[stream]:
            place = (
                f"add depends_on=[{stream!r}]"
                if is_dag
                else f"declare it right after {stream!r}, or use depends_on=[{stream!r}]"
            )
            raise SagaDefinitionError(
                f"{where} reads ctx.stream({stream!r}) but does not depend on {stream!r}: {place}"
            )


def _check_cycles(where: str, steps: list[StepDefinition]) -> None:
    graph = {s.action.name: s.depends_on for s in steps}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        mark = state.get(node, 0)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*path[path.index(node) :], node]
            raise SagaDefinitionError(
                f"{where}: steps form a cycle: {' -> '.join(cycle)}; remove one depends_on"
            )
        state[node] = 1
        for dep in graph[node]:
            visit(dep, [*path, node])
        state[node] = 2

    for name in graph:
        visit(name, [])


class Saga:
    """Base class of a saga: steps declared with ``@action``/``@compensate``, triggers with
    ``@trigger``.

    >>> class OrderSaga(Saga):  # doctest: +SKIP
    ...     saga_name = "order-processing"
    ...
    ...     @action("reserve")
    ...     async def reserve(self, ctx):
    ...         return {"reservation_id": 7}
    ...
    ...     @compensate("reserve")
    ...     async def release(self, ctx):
    ...         ...
    >>> result = await OrderSaga().run({"order_id": 1})  # doctest: +SKIP

    ``class Base(Saga, abstract=True)`` declares a base whose triggers are not registered.
    """

    saga_name: ClassVar[str] = ""
    listeners: ClassVar[list[SagaListener]] = []
    __sagaz_definition__: ClassVar[SagaDefinition]
    __sagaz_abstract__: ClassVar[bool] = True

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__sagaz_abstract__ = abstract
        if "listeners" not in cls.__dict__:  # own copy: appending must not reach other sagas
            cls.listeners = list(cls.listeners)
        if not cls.__dict__.get("saga_name"):
            cls.saga_name = _kebab(cls.__name__)
        cls.__sagaz_definition__ = build_definition(cls)
        if not abstract:
            from sagaz.triggers.registration import registry

            registry.register_saga(cls)

    @classmethod
    def definition(cls) -> SagaDefinition:
        """The validated steps of this saga class."""
        return cls.__sagaz_definition__

    async def run(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        store: SagaStore | None = None,
        listeners: list[SagaListener] | None = None,
    ) -> SagaResult:
        """Run the saga (or resume it, when ``saga_id`` names an interrupted execution).

        A ``saga_id`` that already reached a terminal state returns its stored result without
        running anything again.
        """
        if store is None:  # the configured one (an explicit store is the caller's)
            from sagaz.config import ensure_store

            store = await ensure_store()
        # saga, store, listeners: by position (see SagaExecution)
        execution = _execution_class()(self, store, [*type(self).listeners, *(listeners or [])])
        return await execution.run(dict(context or {}), saga_id=saga_id)
