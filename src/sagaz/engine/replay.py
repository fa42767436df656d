"""Replaying a dead letter: import its saga, rebuild its delivery, run it through the pipeline.

>>> import_saga(record)                        # doctest: +SKIP
>>> outcome = await replay(store, record)      # doctest: +SKIP
>>> outcome.status, outcome.saga_id            # doctest: +SKIP
('completed', '6d327cb4-...')

The replay is the dead-lettered event again, as its source delivered it, admitted by the same
pipeline (decoding, idempotency key, inbox, retries): it maps to the **same saga id**, and a
saga that ended compensated or failed runs again as a new attempt of that saga. The dead
letter is deleted once the replay is settled; a replay that fails again leaves a new dead
letter in its place (``meta["replay_of"]`` names the old one).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sagaz.abc import SagaStore
from sagaz.config import TriggerConfig
from sagaz.engine.dead_letters import replay_delivery
from sagaz.events import AdmissionOutcome, NotRun
from sagaz.exceptions import DeadLetterReplayError
from sagaz.records import DeadLetterRecord
from sagaz.saga.listeners import SagaListener
from sagaz.triggers.registration import TriggerDefinition, registry

if TYPE_CHECKING:
    from sagaz.engine.instances import SagaFactory
    from sagaz.saga.definition import Saga

__all__ = ["ReplayOutcome", "import_saga", "replay"]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What became of a replayed dead letter.

    ``status`` is the saga's terminal status (``completed``, ``compensated``, ``failed``) or
    what admission made of the event (``duplicate``: its saga had completed already;
    ``filtered``: the trigger method returned ``None``; ``invalid``; ``busy``: another worker
    runs its saga; ``rejected``, ``dropped``), or ``timeout``. ``dead_letter_id`` is the new
    dead letter when the replay failed again.
    """

    replayed: int
    status: str
    saga_id: str | None = None
    error: str | None = None
    dead_letter_id: int | None = None

    @property
    def settled(self) -> bool:
        """The event needs nothing more: its saga completed (now or before), or the trigger
        method skips it. The replayed dead letter is gone."""
        return self.status in ("completed", "duplicate", "filtered")


# -- finding the saga --------------------------------------------------------------------------
def import_saga(record: DeadLetterRecord, modules: Sequence[str] = ()) -> dict[str, str]:
    """Import what registers the trigger of ``record``; return module aliases for
    :func:`~sagaz.engine.dead_letters.replay_delivery` (``{"__main__": "app"}`` when the saga
    was defined in a script).

    ``modules`` (dotted names or ``.py`` paths) are imported if given; otherwise the module
    stored with the dead letter, from where the command runs or else from the saga's file.
    A trigger registered already (the application's own process) needs no import. Raises
    :class:`DeadLetterReplayError` saying what to pass when this fails.
    """
    aliases: dict[str, str] = {}
    if modules:
        for name in modules:
            module = _import_named(name, record)
            if name.endswith(".py"):
                aliases.setdefault("__main__", module.__name__)
        _trigger_or_fail(record, f"importing {', '.join(modules)}")
        return aliases
    if _registered(record.trigger_id) is not None:
        return aliases
    meta = record.meta
    module_name, path = meta.get("saga_module"), meta.get("saga_file")
    if not module_name:
        raise DeadLetterReplayError(
            f"dead letter {record.id} (trigger {record.trigger_id!r}) was stored without its "
            "saga's module (by an older sagaz); name the module that defines the saga: "
            f"sagaz dlq replay {record.id} --modules myapp.sagas"
        )
    if module_name == "__main__":  # a script: `python app.py`
        if not path or not os.path.exists(path):
            raise DeadLetterReplayError(
                f"dead letter {record.id}: its saga {meta.get('saga_qualname')} was defined "
                f"in the script {path}, which is not there any more; pass the module or file "
                f"that defines it: sagaz dlq replay {record.id} --modules path/to/app.py"
            )
        aliases["__main__"] = _import_file(Path(path)).__name__
    else:
        _import_module(str(module_name), path if isinstance(path, str) else None, record)
    _trigger_or_fail(record, f"importing {module_name}")
    return aliases


def _registered(trigger_id: str) -> TriggerDefinition | None:
    return next((t for t in registry.triggers() if t.trigger_id == trigger_id), None)


def _trigger_or_fail(record: DeadLetterRecord, after: str) -> TriggerDefinition:
    definition = _registered(record.trigger_id)
    if definition is None:
        known = ", ".join(sorted(t.trigger_id for t in registry.triggers())) or "none"
        raise DeadLetterReplayError(
            f"dead letter {record.id} is of trigger {record.trigger_id!r}, which {after} did "
            f"not register (registered: {known}). Was the trigger method or the saga's "
            "saga_name renamed? Pass the module that defines it: "
            f"sagaz dlq replay {record.id} --modules myapp.sagas"
        )
    return definition


def _import_named(name: str, record: DeadLetterRecord) -> ModuleType:
    if name.endswith(".py") or os.sep in name:
        path = Path(name)
        if not path.exists():
            raise DeadLetterReplayError(f"--modules {name}: no such file")
        return _import_file(path.resolve())
    return _import_module(name, None, record)


def _import_module(name: str, path: str | None, record: DeadLetterRecord) -> ModuleType:
    """Import ``name`` as ``sagaz run`` does (the working directory first on ``sys.path``);
    failing that, from the directory the stored ``path`` says it was imported from."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except Exception as exc:
        root = _import_root(name, path)
        if root is not None and isinstance(exc, ModuleNotFoundError):
            sys.path.insert(0, root)
            try:
                return importlib.import_module(name)
            except Exception as again:
                exc = again
        raise DeadLetterReplayError(
            f"dead letter {record.id} (trigger {record.trigger_id!r}) needs the module "
            f"{name!r}, which cannot be imported here: {type(exc).__name__}: {exc}. Run the "
            "command where your application imports (its directory, its virtualenv), or "
            f"name the module or file that defines the saga: sagaz dlq replay {record.id} "
            "--modules myapp.sagas"
        ) from exc


def _import_root(name: str, path: str | None) -> str | None:
    """The ``sys.path`` entry from which ``path`` is the module ``name``."""
    if not path:
        return None
    file = Path(path)
    parts = name.split(".")
    if file.name == "__init__.py":
        file = file.parent
    else:
        file = file.with_suffix("")
    if list(file.parts[-len(parts) :]) != parts:
        return None
    root = file.parents[len(parts) - 1]
    return str(root) if root.is_dir() else None


def _import_file(path: Path) -> ModuleType:
    """Import the script ``path`` as a module named after it (its ``__main__`` block does not
    run), with its directory on ``sys.path`` as when it runs."""
    name = path.stem if path.stem not in sys.modules else f"sagaz_replay_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DeadLetterReplayError(f"cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise DeadLetterReplayError(
            f"cannot import {path}: {type(exc).__name__}: {exc}; fix it, or name the module "
            "that defines the saga with --modules"
        ) from exc
    return module


# -- replaying ---------------------------------------------------------------------------------
class _DeadLetters(SagaListener):
    """Catches the dead letter a failed replay leaves."""

    def __init__(self) -> None:
        self.records: list[DeadLetterRecord] = []

    async def on_dead_letter(self, saga_name: str, record: DeadLetterRecord) -> None:
        self.records.append(record)


async def replay(
    store: SagaStore,
    record: DeadLetterRecord,
    *,
    config: TriggerConfig | None = None,
    timeout: float = 60.0,
    module_aliases: dict[str, str] | None = None,
    sagas: Iterable[Saga] = (),
    saga_factory: SagaFactory | None = None,
) -> ReplayOutcome:
    """Replay ``record`` through a pipeline of its own trigger (no source runs) and wait up to
    ``timeout`` seconds for its saga. The trigger must be registered (:func:`import_saga`).
    ``sagas``/``saga_factory``: the saga objects, as for ``start_triggers``."""
    from sagaz.engine.engine import TriggerEngine

    if record.id is None:
        raise DeadLetterReplayError("the dead letter has no id: replay one read from the store")
    definition = _trigger_or_fail(record, "the registry")
    caught = _DeadLetters()
    async with TriggerEngine(
        config or TriggerConfig(),
        store,
        triggers=[definition],
        start_sources=False,
        listeners=[caught],
        sagas=sagas,
        saga_factory=saga_factory,
    ) as engine:
        active = engine.triggers[definition.trigger_id]
        annotation = active.decoder.annotation
        delivery = replay_delivery(
            record,
            known_types=[annotation] if isinstance(annotation, type) else [],
            module_aliases=module_aliases,
        )
        result = await engine.admission.admit(active, delivery)
        saga_id = result.saga_id
        if result.outcome is not AdmissionOutcome.ACCEPTED or saga_id is None:
            return _outcome(record.id, result.outcome.value, saga_id, result.error, caught)
        try:
            saga = await engine.wait_for(saga_id, timeout=timeout)
        except TimeoutError:
            return ReplayOutcome(
                record.id,
                "timeout",
                saga_id,
                f"saga {saga_id} did not finish within {timeout:g}s",
            )
    if isinstance(saga, NotRun):  # dropped, or the store failed under it: the dead letter stays
        return ReplayOutcome(record.id, str(saga.reason), saga_id, saga.error)
    return _outcome(record.id, saga.status.value, saga_id, saga.error, caught)


def _outcome(
    replayed: int, status: str, saga_id: str | None, error: Any, caught: _DeadLetters
) -> ReplayOutcome:
    again = caught.records[-1] if caught.records else None
    return ReplayOutcome(
        replayed,
        status,
        saga_id,
        (again.error if again is not None else None) or (str(error) if error else None),
        again.id if again is not None else None,
    )
