"""The examples' READMEs name what exists: the index links every example, and every module a
README tells to run (``python -m examples...``, ``uvicorn examples...:app``,
``sagaz run examples...``) is a file of the repository. No service needed."""

from __future__ import annotations

import re

from .running import EXAMPLES, ROOT

MODULE = re.compile(r"(?:python -m|sagaz run|uvicorn) (examples(?:\.\w+)+)")
LINK = re.compile(r"\]\(([\w/.-]+/README\.md)\)")


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
