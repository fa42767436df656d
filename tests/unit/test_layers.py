"""The dependency direction between the layers (DESIGN §8), checked on the source text.

An AST walk over every module of ``sagaz`` finds each import — at module level, inside a
function, under ``if TYPE_CHECKING:``; absolute and relative; ``from package import name``
resolved to the module that defines ``name``; ``importlib.import_module("...")`` and
``require_extra(...)`` with literal names — and checks it against :data:`RULES`. ``.ci/run``
runs the whole pytest suite, so this file is the CI check of the layering.

A failure lists every offending import as ``file:line imports X (rule)``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import sagaz
from sagaz._imports import EXTRAS

#: the package under test (the one imported here, so PYTHONPATH decides, as for every test)
PACKAGE = Path(sagaz.__file__).parent
SRC = PACKAGE.parent

MODULE, FUNCTION, TYPE_CHECKING = "module", "function", "type-checking"
ALL_CONTEXTS = frozenset({MODULE, FUNCTION, TYPE_CHECKING})
#: imports that run: at import time or when the function is called (not type hints)
RUNTIME = frozenset({MODULE, FUNCTION})

#: the optional drivers (``pip install "sagaz[extra]"``) and what they pull in
DRIVERS = tuple(
    sorted({m for modules in EXTRAS.values() for m in modules} | {"aiormq", "botocore"})
)
#: the drivers of brokers and of the HTTP/file sources; ``redis`` and ``asyncpg`` are also the
#: drivers of the Redis and PostgreSQL stores
BROKER_DRIVERS = tuple(
    sorted(
        {m for extra in ("kafka", "rabbitmq", "sqs", "webhook", "file") for m in EXTRAS[extra]}
        | {"aiormq", "botocore"}
    )
)
UPPER_LAYERS = ("sagaz.testing", "sagaz.cli")


@dataclass(frozen=True)
class Rule:
    """Modules under ``layer`` must not import a module under any of ``forbidden``."""

    layer: str
    forbidden: tuple[str, ...]
    reason: str
    contexts: frozenset[str] = ALL_CONTEXTS

    def breaks(self, found: Import) -> bool:
        return (
            found.context in self.contexts
            and _under(found.importer, self.layer)
            and any(_under(found.target, prefix) for prefix in self.forbidden)
        )


RULES: tuple[Rule, ...] = (
    Rule(
        "sagaz.triggers",
        ("sagaz.sources", "sagaz.engine", "sagaz.outbox", "sagaz.storage", *UPPER_LAYERS),
        "triggers import nothing above them: defining a saga loads no source, engine, "
        "outbox or store",
    ),
    Rule(
        "sagaz.triggers",
        ("sagaz.saga",),
        "the saga core registers into triggers, not the other way round (a type hint may "
        "name Saga)",
        contexts=RUNTIME,
    ),
    Rule(
        "sagaz.sources",
        ("sagaz.saga", "sagaz.engine", "sagaz.outbox.relay", *UPPER_LAYERS),
        "sources know nothing of sagas, the engine or the outbox relay: what a source needs "
        "comes through its SourceContext (sagaz.abc)",
    ),
    Rule(
        "sagaz.saga",
        ("sagaz.sources", "sagaz.engine", *UPPER_LAYERS),
        "the saga core knows nothing of sources or the engine",
    ),
    Rule(
        "sagaz.outbox",
        ("sagaz.sources", "sagaz.engine", *UPPER_LAYERS),
        "the outbox imports no source and no engine",
    ),
    Rule(
        "sagaz.engine",
        ("sagaz.sources", *UPPER_LAYERS),
        "the engine loads a source module by its kind at start() "
        "(sagaz.engine.loading.SOURCE_MODULES), never by importing it",
    ),
    Rule(
        "sagaz.storage",
        ("sagaz.sources", "sagaz.engine", "sagaz.triggers", "sagaz.saga", *UPPER_LAYERS),
        "the stores sit below the pipeline",
    ),
    Rule("sagaz.saga", DRIVERS, "the saga core imports no driver: it runs with none installed"),
    Rule(
        "sagaz.triggers",
        DRIVERS,
        "what @trigger declares is checked with no driver installed (drivers load in create())",
    ),
    Rule(
        "sagaz.storage",
        BROKER_DRIVERS,
        "a store imports its own database driver only, never a broker's",
    ),
)


@dataclass(frozen=True)
class Import:
    """One import found in a module."""

    path: str  # relative to the directory holding the package, e.g. "sagaz/abc.py"
    line: int
    importer: str
    target: str
    context: str


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve_name(package: str, name: str) -> str:
    """What ``from package import name`` imports: the submodule, or the module that defines
    the object (``from sagaz import TriggerEngine`` → ``sagaz.engine.engine``)."""
    if not package.startswith("sagaz"):
        return package
    try:
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return f"{package}.{name}"
    except ModuleNotFoundError:  # package is a module, not a package
        return package
    try:
        home = getattr(getattr(importlib.import_module(package), name), "__module__", None)
    except (AttributeError, ImportError):
        return package
    return home if isinstance(home, str) and _under(home, "sagaz") else package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal(node: ast.Call, index: int) -> str | None:
    if len(node.args) > index:
        arg = node.args[index]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


class _ImportFinder(ast.NodeVisitor):
    def __init__(self, path: str, module: str, is_package: bool) -> None:
        self.path, self.module, self.is_package = path, module, is_package
        self.found: list[Import] = []
        self._functions = 0
        self._type_checking = 0

    def _add(self, node: ast.AST, target: str) -> None:
        context = TYPE_CHECKING if self._type_checking else FUNCTION if self._functions else MODULE
        line = getattr(node, "lineno", 0)
        self.found.append(Import(self.path, line, self.module, target, context))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._type_checking += 1
        for child in node.body:
            self.visit(child)
        self._type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.module.split(".")
            if not self.is_package:
                parts.pop()
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            self._add(node, base if alias.name == "*" else _resolve_name(base, alias.name))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and (target := _literal(node, 0)):
            self._add(node, target)
        elif name == "require_extra" and (extra := _literal(node, 0)):
            module = _literal(node, 1)
            self._add(node, module or EXTRAS.get(extra, (f"<extra {extra}>",))[0])
        self.generic_visit(node)


def find_imports(source: str, path: str) -> list[Import]:
    """Every import of the module at ``path`` (relative to the package's parent directory)
    whose text is ``source``."""
    module, is_package = _module_name(SRC / path)
    finder = _ImportFinder(path, module, is_package)
    finder.visit(ast.parse(source, filename=path))
    return finder.found


def violations(imports: list[Import]) -> list[tuple[Import, Rule]]:
    """The imports that break a rule, each once (``from m import a, b`` is one import) with
    the first rule it breaks."""
    broken: dict[tuple[str, int, str], tuple[Import, Rule]] = {}
    for found in imports:
        rule = next((rule for rule in RULES if rule.breaks(found)), None)
        if rule is not None:
            broken.setdefault((found.path, found.line, found.target), (found, rule))
    return list(broken.values())


def report(broken: list[tuple[Import, Rule]]) -> str:
    """One line per offending import: ``file:line imports X (rule)``."""
    return "\n".join(
        f"src/{found.path}:{found.line} imports {found.target} "
        f"({'in a function, ' if found.context == FUNCTION else ''}"
        f"{'for type checking, ' if found.context == TYPE_CHECKING else ''}"
        f"{rule.layer} must not import {', '.join(rule.forbidden)}: {rule.reason})"
        for found, rule in broken
    )


def package_files() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def tree_imports() -> list[Import]:
    imports: list[Import] = []
    for file in package_files():
        path = file.relative_to(SRC).as_posix()
        imports.extend(find_imports(file.read_text(encoding="utf-8"), path))
    return imports


# -- the tree ---------------------------------------------------------------------------------
def test_the_layers_depend_one_way() -> None:
    broken = violations(tree_imports())
    assert not broken, "imports against the layering (DESIGN §8):\n" + report(broken)


def test_every_rule_governs_modules_that_exist() -> None:
    # a renamed package must not turn its rules into rules about nothing
    modules = {_module_name(file)[0] for file in package_files()}
    for rule in RULES:
        assert any(_under(module, rule.layer) for module in modules), rule.layer


def _loaded_after(code: str, *prefixes: str) -> list[str]:
    """The ``sagaz`` modules under ``prefixes`` loaded by ``code`` in a fresh interpreter that
    imports the package under test."""
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    code += (
        "\nimport sys, sagaz"
        "\nprint(sagaz.__file__)"
        f"\nprint(*sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    package, *loaded = done.stdout.split()
    assert Path(package) == PACKAGE / "__init__.py"
    return loaded


def test_importing_the_engine_loads_no_source_module() -> None:
    assert _loaded_after("import sagaz.engine", "sagaz.sources") == []


def test_defining_a_saga_with_a_trigger_loads_no_engine_and_no_source() -> None:
    code = textwrap.dedent(
        """
        from sagaz import Saga, trigger

        class Orders(Saga):
            @trigger(source="kafka", topic="orders", group_id="svc")
            def on_order(self, event):
                return dict(event)
        """
    )
    assert _loaded_after(code, "sagaz.sources", "sagaz.engine") == []


# -- the checker can fail -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "source", "target", "layer"),
    [
        (  # the very import this issue removed, from a source module
            "sagaz/sources/fake.py",
            "from sagaz.engine import TriggerEngine\n",
            "sagaz.engine.engine",
            "sagaz.sources",
        ),
        (  # relative, inside a function
            "sagaz/sources/webhook/fake.py",
            "def build():\n    from ...engine import loading\n",
            "sagaz.engine.loading",
            "sagaz.sources",
        ),
        (  # through the package's public names
            "sagaz/saga/fake.py",
            "from sagaz import TriggerEngine\n",
            "sagaz.engine.engine",
            "sagaz.saga",
        ),
        (  # a concrete source from the engine, even for type checking
            "sagaz/engine/fake.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from sagaz.sources.kafka import KafkaSource\n",
            "sagaz.sources.kafka.source",
            "sagaz.engine",
        ),
        (  # by name, at run time
            "sagaz/engine/fake.py",
            "import importlib\nimportlib.import_module('sagaz.sources.poll')\n",
            "sagaz.sources.poll",
            "sagaz.engine",
        ),
        (
            "sagaz/outbox/fake.py",
            "from sagaz.sources.kafka.partitions import PartitionState\n",
            "sagaz.sources.kafka.partitions",
            "sagaz.outbox",
        ),
        (
            "sagaz/triggers/fake.py",
            "from sagaz.outbox import KafkaPublisher\n",
            "sagaz.outbox.kafka",
            "sagaz.triggers",
        ),
        (  # a broker driver, the house way
            "sagaz/storage/fake.py",
            "from sagaz._imports import require_extra\ndef f():\n    require_extra('kafka')\n",
            "aiokafka",
            "sagaz.storage",
        ),
        ("sagaz/saga/fake.py", "import aio_pika.abc\n", "aio_pika.abc", "sagaz.saga"),
        (
            "sagaz/storage/fake.py",
            "from . import redis\nimport sagaz.engine\n",
            "sagaz.engine",
            "sagaz.storage",
        ),
    ],
)
def test_a_forbidden_import_is_reported(path: str, source: str, target: str, layer: str) -> None:
    broken = violations(find_imports(source, path))
    assert [(found.target, rule.layer) for found, rule in broken] == [(target, layer)]
    line = report(broken)
    assert line.startswith(f"src/{path}:")
    assert f"imports {target} (" in line


@pytest.mark.parametrize(
    ("path", "source"),
    [
        # a type hint naming the saga class the registry holds
        (
            "sagaz/triggers/fake.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from sagaz.saga.definition import Saga\n",
        ),
        ("sagaz/sources/fake.py", "from sagaz.abc import SourceContext\n"),
        ("sagaz/sources/fake.py", "from sagaz.outbox.kafka import start_producer\n"),
        ("sagaz/engine/fake.py", "from sagaz.engine.loading import load_source_module\n"),
        ("sagaz/storage/fake.py", "def f():\n    import asyncpg\n"),
        ("sagaz/saga/fake.py", "from sagaz.triggers.registration import registry\n"),
    ],
)
def test_an_allowed_import_is_not_reported(path: str, source: str) -> None:
    assert violations(find_imports(source, path)) == []


def test_the_report_names_file_line_import_and_rule() -> None:
    source = "import asyncio\n\n\nfrom sagaz.engine import TriggerEngine\n"
    message = report(violations(find_imports(source, "sagaz/sources/fake.py")))
    assert message == (
        "src/sagaz/sources/fake.py:4 imports sagaz.engine.engine (sagaz.sources must not import "
        "sagaz.saga, sagaz.engine, sagaz.outbox.relay, sagaz.testing, sagaz.cli: sources know "
        "nothing of sagas, the engine or the outbox relay: what a source needs comes through "
        "its SourceContext (sagaz.abc))"
    )
