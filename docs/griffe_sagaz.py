"""Griffe extension: sagaz's docstrings, written for reading in the source, as Markdown.

The docstrings use a few reStructuredText habits that Markdown does not know:

* roles, ``:class:`~sagaz.config.TriggerConfig``` → a link to the object where the API
  reference documents it (an optional cross-reference: plain code where it does not);
* doctest blocks (``>>> ...``) → a ``pycon`` code block (Markdown would read ``>>>`` as
  nested quotes), without the ``# doctest:`` directives;
* literal blocks (a paragraph ending in ``::`` and an indented block) → a Python code block.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``); the source stays as it is.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

__all__ = ["SagazDocstrings", "markdown_docstring"]

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")
_DOCTEST_DIRECTIVE = re.compile(r"\s*# doctest:.*$")


def _identifier(obj: griffe.Object | griffe.Alias, target: str) -> str:
    """The full path of ``target`` as written in ``obj``'s docstring (``sagaz.x.Y``,
    ``Y`` in scope, ``Y.method``), or ``target`` itself when it cannot be resolved."""
    if target.startswith("sagaz.") or target == "sagaz":
        return target
    head, _, rest = target.partition(".")
    try:
        path = obj.resolve(head)
    except Exception:
        return target
    return f"{path}.{rest}" if rest else path


def _roles(obj: griffe.Object | griffe.Alias, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        target = match["target"].strip().removesuffix("()")
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = _identifier(obj, target)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(link, text)


def _blocks(text: str) -> str:
    """Doctest and literal blocks as fenced code blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_DIRECTIVE.sub("", lines[i][len(indent) :]))
                i += 1
            out += [f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```"]
            continue
        if line.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            following = lines[i + 2]
            base = len(line) - len(stripped)
            if following.strip() and len(following) - len(following.lstrip()) > base:
                out += [line.rstrip()[:-1], ""]
                i += 2
                block = []
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
                ):
                    block.append(lines[i])
                    i += 1
                while block and not block[-1].strip():
                    block.pop()
                code = textwrap.dedent("\n".join(block))
                out += ["```python", *code.splitlines(), "```", ""]
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def markdown_docstring(obj: griffe.Object | griffe.Alias, text: str) -> str:
    """``text`` (a docstring of ``obj``) in Markdown."""
    return _roles(obj, _blocks(text))


class SagazDocstrings(griffe.Extension):
    """Rewrites every docstring once the object tree is complete (names then resolve)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        self._rewrite(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)  # a package is no object of its own tree

    @staticmethod
    def _rewrite(obj: griffe.Object) -> None:
        if obj.docstring is not None and not getattr(obj.docstring, "_sagaz_markdown", False):
            obj.docstring.value = markdown_docstring(obj, obj.docstring.value)
            obj.docstring._sagaz_markdown = True  # type: ignore[attr-defined]
