"""The documentation site: generated reference tables, the build, and the pages' examples.

Each source page's option table is generated from its option model when MkDocs builds the
site (``docs/hooks.py``), so it cannot drift; these tests check the generator against the
models, then the built pages themselves: every source page lists exactly the options its
model has, the configuration page exactly ``TriggerConfig``'s fields. Building needs MkDocs
(``pip install -r docs/requirements.txt``, which ``.ci/run`` does): without it the build tests
skip on a laptop and **fail** when ``SAGAZ_REQUIRE_SERVICES=1``, as a missing service does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from sagaz.config import TriggerConfig
from sagaz.triggers.options import OPTION_MODELS, PipelineOptions
from tests.services import services_required

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 240


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sagaz_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


class _Tables(HTMLParser):
    """The rows of every ``<div data-sagaz-table="KEY">`` table: KEY -> [[cell text, ...]]."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._key: str | None = None
        self._depth = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get(hooks.TABLE_ATTRIBUTE)
        if tag == "div" and found is not None:
            self._key, self._depth = found, 1
            self.tables[found] = []
            return
        if self._key is None:
            return
        if tag == "div":
            self._depth += 1
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if self._key is None:
            return
        if tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._key = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._key].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def names(rows: list[list[str]]) -> list[str]:
    return [row[0] for row in rows]


def shown_default(field: Any) -> str:
    """How a default reads in a table: ``required``, ``None``, ``"UTC"``, ``500``, ``[]``."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return f'"{value}"' if isinstance(value, str) else repr(value)


class _MkDocsLoader(yaml.SafeLoader):
    """mkdocs.yml with its ``!!python/name:`` tags read as plain strings."""


_MkDocsLoader.add_multi_constructor(
    "tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix
)


def mkdocs_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_MkDocsLoader)
    return config


def nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from nav_pages(value)


# -- the generator ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OPTION_MODELS))
def test_each_source_has_a_page_that_asks_for_its_option_table(kind: str) -> None:
    page = DOCS / "sources" / f"{kind}.md"
    assert page.is_file(), f"source {kind!r} has no page: write docs/sources/{kind}.md"
    directives = hooks.DIRECTIVE.findall(page.read_text())
    assert directives == [("options", kind)], (
        f"docs/sources/{kind}.md must hold one '<!-- sagaz:options {kind} -->' line"
    )
    assert f"sources/{kind}.md" in set(nav_pages(mkdocs_config()["nav"]))


@pytest.mark.parametrize("kind", sorted(OPTION_MODELS))
def test_an_option_table_lists_exactly_the_fields_of_its_model(kind: str) -> None:
    model = OPTION_MODELS[kind]
    rows = tables(hooks.options_table(kind))[kind]
    assert names(rows) == list(model.model_fields)
    for (name, type_, default, meaning), field in zip(
        rows, model.model_fields.values(), strict=True
    ):
        assert type_, name
        assert default == shown_default(field), name
        assert meaning == field.description, f"{kind}.{name}: every option says what it does"


def test_the_table_shows_types_bounds_and_defaults_as_a_reader_writes_them() -> None:
    rows = {row[0]: row for row in tables(hooks.options_table("kafka"))["kafka"]}
    assert rows["topic"][1:3] == ["tuple[str, ...]", "required"]
    assert rows["group_id"][1:3] == ["str (non-empty) | None", "None"]
    assert rows["auto_offset_reset"][1:3] == ['"earliest" | "latest" | "none"', '"earliest"']
    assert rows["max_poll_records"][1:3] == ["int (≥ 1)", "500"]
    pipeline = {row[0]: row for row in tables(hooks.pipeline_options_table())["pipeline"]}
    assert pipeline["idempotency_key"][1] == "Callable[[event], Any] | None"
    sqs = {row[0]: row for row in tables(hooks.options_table("sqs"))["sqs"]}
    assert sqs["visibility_timeout"][1:3] == ["int (≥ 1, ≤ 43200)", "30"]


def test_the_pipeline_table_lists_exactly_the_options_every_trigger_accepts() -> None:
    rows = tables(hooks.pipeline_options_table())["pipeline"]
    assert names(rows) == list(PipelineOptions.model_fields)
    assert all(row[3] for row in rows), "every pipeline option says what it does"


def test_the_config_table_lists_every_field_with_the_variable_that_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = tables(hooks.config_table())["config"]
    assert names(rows) == list(TriggerConfig.model_fields)
    for name, _type, default, variable, meaning in rows:
        assert variable == f"SAGAZ_{name.upper()}"
        assert meaning, f"TriggerConfig.{name} has no description=: say what it does"
        assert default == shown_default(TriggerConfig.model_fields[name])
    # the variable the table names is the one pydantic-settings reads
    monkeypatch.setenv("SAGAZ_QUEUE_SIZE", "17")
    assert TriggerConfig().queue_size == 17


def test_the_cli_reference_shows_every_command() -> None:
    from sagaz.cli.main import build_parser

    reference = hooks.cli_reference()
    assert "$ sagaz --help" in reference
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        for command in action.choices:  # type: ignore[union-attr]
            assert f"$ sagaz {command} --help" in reference


def test_an_unknown_directive_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown directive"):
        hooks.render_directives("<!-- sagaz:optoins kafka -->", where="x.md")
    with pytest.raises(ValueError, match="no option model for source 'nats'"):
        hooks.render_directives("<!-- sagaz:options nats -->", where="x.md")


def test_every_page_is_in_the_navigation() -> None:
    nav = set(nav_pages(mkdocs_config()["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == nav


async def test_the_metrics_page_names_every_metric_the_engine_exports() -> None:
    pytest.importorskip("prometheus_client")
    from sagaz import Saga, action, trigger
    from sagaz.engine import TriggerEngine
    from sagaz.engine.prometheus import render
    from sagaz.storage import MemorySagaStore
    from sagaz.triggers import registry

    class Counted(Saga):
        @trigger(source="memory", channel="counted")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("step")
        async def step(self, ctx: Any) -> None:
            return None

    triggers = registry.for_saga(Counted)
    async with MemorySagaStore() as store, TriggerEngine(None, store, triggers=triggers) as engine:
        text = render(engine)[0].decode()
    exported = set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    assert "sagaz_events_received_total" in exported
    page = (DOCS / "operations" / "metrics.md").read_text()
    missing = {name for name in exported if f"`{name}`" not in page}
    assert not missing, f"docs/operations/metrics.md does not describe {sorted(missing)}"


# -- the pages' examples ---------------------------------------------------------------------


def _env() -> dict[str, str]:
    """This checkout's sources first (an installed sagaz may be another checkout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def test_the_first_saga_of_getting_started_runs_as_shown(tmp_path: Path) -> None:
    script = DOCS / "snippets" / "first_saga.py"
    assert '--8<-- "docs/snippets/first_saga.py"' in (DOCS / "getting-started.md").read_text()
    runs = [
        subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (run.stdout.splitlines() for run in runs)
    assert first == [
        "completed {'order_id': 'o-1', 'amount': 25.0, 'reservation': 'r-o-1', 'charged': 25.0}",
        "accepted again: []",
    ]
    assert second == ["accepted again: []"], "the SQLite file remembers the order's key"
    shown = (DOCS / "getting-started.md").read_text()
    assert all(line in shown for line in first), "getting-started.md shows the real output"


def test_the_tests_of_the_testing_page_pass() -> None:
    example = DOCS / "snippets" / "test_report_saga.py"
    assert '--8<-- "docs/snippets/test_report_saga.py"' in (DOCS / "testing.md").read_text()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(example), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


# -- the built site --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``mkdocs build --strict`` writes it (a warning fails the build)."""
    if importlib.util.find_spec("mkdocs") is None:
        reason = "MkDocs is not installed: pip install -r docs/requirements.txt"
        if services_required():
            pytest.fail(f"{reason} (SAGAZ_REQUIRE_SERVICES=1: the docs must build)")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    env = _env() | {"NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


@pytest.mark.parametrize("kind", sorted(OPTION_MODELS))
def test_each_built_source_page_lists_exactly_its_models_options(site: Path, kind: str) -> None:
    html = (site / "sources" / kind / "index.html").read_text()
    assert names(tables(html)[kind]) == list(OPTION_MODELS[kind].model_fields)


def test_the_built_pages_hold_the_pipeline_config_and_cli_references(site: Path) -> None:
    sources = tables((site / "sources" / "index.html").read_text())
    assert names(sources["pipeline"]) == list(PipelineOptions.model_fields)
    config = tables((site / "configuration" / "index.html").read_text())
    assert names(config["config"]) == list(TriggerConfig.model_fields)
    cli = (site / "operations" / "cli" / "index.html").read_text()
    assert "sagaz dlq --help" in cli


def test_no_directive_is_left_unexpanded(site: Path) -> None:
    leftovers = [
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if "sagaz:" in page.read_text() and hooks.DIRECTIVE.search(page.read_text())
    ]
    assert not leftovers


def test_the_api_reference_renders_the_public_modules(site: Path) -> None:
    for page, names_ in {
        "sagaz": ["sagaz.Saga", "sagaz.trigger", "sagaz.TriggerEngine"],
        "testing": ["sagaz.testing.TriggerTestHarness", "sagaz.testing.FakeClock"],
        "config": ["sagaz.config.TriggerConfig"],
        "storage": ["sagaz.storage.SQLiteSagaStore", "sagaz.storage.store_from_url"],
        "outbox": ["sagaz.outbox.OutboxRelay"],
        "abc": ["sagaz.abc.Source", "sagaz.abc.SagaStore"],
        "events": ["sagaz.events.Delivery"],
    }.items():
        html = (site / "reference" / page / "index.html").read_text()
        for name in names_:
            assert f'id="{name}"' in html, f"{name} is missing from reference/{page}"


def test_the_concepts_page_explains_every_reason_an_event_does_not_become_a_saga() -> None:
    from sagaz.events import Reason

    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    missing = [reason.value for reason in Reason if f"| `{reason.value}` |" not in page]
    assert not missing, f"docs/concepts.md does not explain the reasons {missing}"
