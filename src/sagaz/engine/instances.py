"""``SagaInstances``: the saga object each run of a saga class uses.

The engine runs a saga class's trigger method and steps on an instance of the class:

* an instance given to the engine (``start_triggers(sagas=[OrderSaga(client)])``) is used for
  every run of its class, concurrent runs included;
* else ``saga_factory(cls)`` builds one per run (it is also called once per class at start, to
  check that it builds the class);
* else the class is built once, with no arguments, at start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sagaz.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sagaz.saga.definition import Saga

__all__ = ["SagaFactory", "SagaInstances"]

#: builds the saga object of one run: ``saga_factory(OrderSaga) -> OrderSaga(...)``
SagaFactory = Callable[[type["Saga"]], "Saga"]


class SagaInstances:
    """The saga objects of one engine, by class (see the module docstring)."""

    def __init__(self, sagas: Iterable[Saga] = (), factory: SagaFactory | None = None) -> None:
        self.factory = factory
        self._given: dict[type[Saga], Saga] = {}
        for saga in sagas:
            cls = type(saga)
            if isinstance(saga, type):
                raise ConfigurationError(
                    f"sagas=[...] takes saga instances, got the class {saga.__qualname__}: "
                    f"pass {saga.__qualname__}(...) (or leave it out: a class whose "
                    "constructor takes no arguments is built by the engine)"
                )
            if cls in self._given:
                raise ConfigurationError(
                    f"sagas=[...] has two {cls.__qualname__} instances: the engine runs every "
                    f"event of a class on one instance; for one instance per run, pass "
                    "saga_factory= instead"
                )
            self._given[cls] = saga
        #: the instance each class's triggers are bound to at start (the shared one, or the
        #: factory's first build)
        self._prototypes: dict[type[Saga], Saga] = {}

    def prepare(self, classes: Iterable[type[Saga]]) -> None:
        """Check at start that every class can be had; ``ConfigurationError`` names the class
        and the fix."""
        for cls in classes:  # an instance of a class with no trigger running here waits
            # unused (its triggers disabled, a replay of another class's dead letter)
            if cls not in self._prototypes:
                given = self._given.get(cls)
                self._prototypes[cls] = given if given is not None else self._build(cls)

    def _build(self, cls: type[Saga]) -> Saga:
        name = cls.__qualname__
        how = "saga_factory" if self.factory is not None else f"{name}()"
        try:
            saga = self.factory(cls) if self.factory is not None else cls()
        except Exception as exc:
            raise ConfigurationError(
                f"the engine cannot build the saga class {name} with {how}: "
                f"{type(exc).__name__}: {exc}. Give it an instance, "
                f"start_triggers(sagas=[{name}(...)]) (used for every run of {name}: keep "
                "per-run state in the context, not on self), or a factory that builds one "
                f"per run, start_triggers(saga_factory=lambda cls: cls(...))"
            ) from exc
        if not isinstance(saga, cls):
            raise ConfigurationError(
                f"saga_factory({name}) returned {type(saga).__qualname__}, not a {name}: "
                "it must build an instance of the class it is given"
            )
        return saga

    def prototype(self, cls: type[Saga]) -> Saga:
        """The instance the triggers of ``cls`` are bound to (after :meth:`prepare`)."""
        return self._prototypes[cls]

    def builds_per_run(self, cls: type[Saga]) -> bool:
        """Whether each run of ``cls`` gets a new instance (from the factory)."""
        return self.factory is not None and cls not in self._given

    def for_run(self, cls: type[Saga]) -> Saga:
        """The saga object of one run of ``cls``."""
        if self.builds_per_run(cls):
            return self._build(cls)
        return self._prototypes[cls]
