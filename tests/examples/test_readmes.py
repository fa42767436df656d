"""The examples' READMEs name what exists: the index links every example, and every module a
README tells to run (``python -m examples...``, ``uvicorn examples...:app``,
``sagaz run examples...``) is a file of the repository. No service needed."""

from __future__ import annotations

import re

from .running import EXAMPLES, ROOT

MODULE = re.compile(r"(?:python -m|sagaz run|uvicorn) (examples(?:\.\w+)+)")
LINK = re.compile(r"\]\(([\w/.-]+/README\.md)\)")
VARIABLE = re.compile(r"\b(?:SAGAZ|ORDER_SAGA|MODEL_RETRAINING|EVENT_TRIGGERS)_[A-Z0-9_]+")


def example_dirs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "__init__.py").is_file())


def test_the_index_links_every_example_and_each_has_a_readme() -> None:
    index = (EXAMPLES / "README.md").read_text()
    linked = LINK.findall(index)
    assert sorted(linked) == [f"{name}/README.md" for name in example_dirs()]
    assert example_dirs() == ["event_triggers", "fastapi_mount", "model_retraining", "order_saga"]
    for link in linked:
        assert (EXAMPLES / link).is_file(), link


def test_every_module_a_readme_runs_exists() -> None:
    readmes = [EXAMPLES / "README.md", *(EXAMPLES / n / "README.md" for n in example_dirs())]
    named = {
        (readme.relative_to(ROOT).as_posix(), module)
        for readme in readmes
        for module in MODULE.findall(readme.read_text())
    }
    assert len(named) >= 8, named
    missing = [
        (readme, module)
        for readme, module in sorted(named)
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file()
    ]
    assert missing == []


def test_every_variable_a_readme_names_is_read() -> None:
    """``SAGAZ_*`` names are ``TriggerConfig`` fields (or ``SAGAZ_STORE_URL``); an example's
    own ``ORDER_SAGA_*``... names are fields of its settings class."""
    from examples.event_triggers.settings import EventTriggerSettings
    from examples.model_retraining.settings import RetrainingSettings
    from examples.order_saga.settings import OrderSagaSettings

    from sagaz import TriggerConfig

    read = {"SAGAZ_STORE_URL"} | {f"SAGAZ_{name.upper()}" for name in TriggerConfig.model_fields}
    for settings in (OrderSagaSettings, RetrainingSettings, EventTriggerSettings):
        prefix = str(settings.model_config.get("env_prefix", "")).upper()
        read |= {prefix + name.upper() for name in settings.model_fields}
    readmes = [EXAMPLES / "README.md", *(EXAMPLES / n / "README.md" for n in example_dirs())]
    named = {
        (readme.parent.name, name)
        for readme in readmes
        for name in VARIABLE.findall(readme.read_text())
    }
    assert len(named) > 20
    # "ORDER_SAGA_RABBITMQ_QUEUE`, `..._EXCHANGE": a prefix of some variable
    unknown = [
        (where, name)
        for where, name in sorted(named)
        if not (name in read or (name.endswith("_") and any(v.startswith(name) for v in read)))
    ]
    assert unknown == []
