"""MkDocs hook: reference tables generated from the code at build time, so they cannot drift.

A page asks for a table with a directive on a line of its own:

* ``<!-- sagaz:options KIND -->`` — the options of ``@trigger(source=KIND)``
  (``sagaz.triggers.options.OPTION_MODELS[KIND]``);
* ``<!-- sagaz:pipeline-options -->`` — the options every trigger accepts (``PipelineOptions``);
* ``<!-- sagaz:config -->`` — the fields of ``TriggerConfig`` with their ``SAGAZ_*`` variables;
* ``<!-- sagaz:cli -->`` — ``sagaz --help`` and the help of each command.

Each table lists every field of its model with its type, default and description (the
model's own ``Field(description=...)``), and nothing else. An unknown directive fails the build.
``tests/unit/test_docs.py`` checks the tables against the models, with these functions and in
the built site. This module imports no MkDocs code, so those tests run without MkDocs.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = [
    "DIRECTIVE",
    "cli_reference",
    "config_table",
    "field_rows",
    "model_table",
    "on_page_markdown",
    "options_table",
    "render_directives",
]

#: ``<!-- sagaz:NAME [ARGUMENT] -->`` on a line of its own
DIRECTIVE = re.compile(r"^<!-- sagaz:(?P<name>[\w-]+)(?: (?P<arg>[\w.-]+))? -->$", re.MULTILINE)

#: the HTML attribute that marks a generated table (the tests find the tables by it)
TABLE_ATTRIBUTE = "data-sagaz-table"


def field_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` of each field of ``model``, in field order."""
    rows = []
    for name, field in model.model_fields.items():
        rows.append((name, type_text(field), default_text(field), field.description or ""))
    return rows


def type_text(field: FieldInfo) -> str:
    """The type of ``field`` as a reader writes it, with its bounds: ``int ≥ 1 | None``."""
    return _type(field.annotation, field.metadata)


def _type(annotation: Any, metadata: Any = ()) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _type(base, [*metadata, *_constraints(extra)])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(arg, metadata) for arg in get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(_literal(value) for value in get_args(annotation))
    if origin is not None and origin.__module__ == "collections.abc":  # Callable[[Any], Any]
        return "Callable[[event], Any]" if origin.__name__ == "Callable" else origin.__name__
    if origin in (tuple, list, dict):
        inner = ", ".join("..." if a is Ellipsis else _type(a) for a in get_args(annotation))
        return f"{origin.__name__}[{inner}]" + _bounds(metadata)
    if isinstance(annotation, type):
        return annotation.__name__ + _bounds(metadata)
    return str(annotation).replace("typing.", "")


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _constraints(extra: Any) -> list[Any]:
    """The constraints of ``Annotated`` extras (a ``Field(...)`` holds them in ``.metadata``)."""
    out: list[Any] = []
    for item in extra:
        out.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return out


def _bounds(metadata: Any) -> str:
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            words.append("non-empty")
    return f" ({', '.join(words)})" if words else ""


def default_text(field: FieldInfo) -> str:
    """The default of ``field`` as Python would print it, or ``required``."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    return _literal(value) if isinstance(value, str) else repr(value)


def model_table(model: type[BaseModel], *, key: str, env_prefix: str | None = None) -> str:
    """An HTML table of the fields of ``model``, marked ``data-sagaz-table="{key}"``.

    HTML rather than a Markdown table: types hold ``|``, which a Markdown table would split.
    With ``env_prefix``, a column gives each field's environment variable.
    """
    head = ["option" if env_prefix is None else "field", "type", "default"]
    if env_prefix is not None:
        head.append("environment variable")
    head.append("meaning")
    lines = [
        f'<div {TABLE_ATTRIBUTE}="{html.escape(key)}" markdown="0">',
        "<table>",
        "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for name, type_, default, description in field_rows(model):
        cells = [
            f"<code>{_breakable(name)}</code>",
            f"<code>{html.escape(type_)}</code>",
            f"<code>{html.escape(default)}</code>",
        ]
        if env_prefix is not None:
            cells.append(f"<code>{_breakable(env_prefix + name.upper())}</code>")
        cells.append(html.escape(description))
        anchor = f"{key}-{name}".replace("_", "-")
        lines.append(f'<tr id="{anchor}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines += ["</tbody>", "</table>", "</div>"]
    return "\n".join(lines)


def _breakable(identifier: str) -> str:
    """``max_poll_records`` with line-break opportunities after its underscores (a narrow
    column then wraps it there, not in the middle of a word)."""
    return html.escape(identifier).replace("_", "_<wbr>")


def options_table(kind: str) -> str:
    """The table of ``@trigger(source=kind)``'s own options."""
    from sagaz.triggers.options import OPTION_MODELS

    model = OPTION_MODELS.get(kind)
    if model is None:
        raise ValueError(f"no option model for source {kind!r}; sources: {sorted(OPTION_MODELS)}")
    return model_table(model, key=kind)


def pipeline_options_table() -> str:
    """The table of the options every ``@trigger`` accepts."""
    from sagaz.triggers.options import PipelineOptions

    return model_table(PipelineOptions, key="pipeline")


def config_table() -> str:
    """The table of ``TriggerConfig``'s fields and their ``SAGAZ_*`` variables."""
    from sagaz.config import TriggerConfig

    prefix = str(TriggerConfig.model_config.get("env_prefix", ""))
    return model_table(TriggerConfig, key="config", env_prefix=prefix.upper())


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help at ``$COLUMNS``: a fixed width makes the page the same everywhere."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def cli_reference() -> str:
    """``sagaz --help`` and the help of each command, as the installed parser prints them."""

    from sagaz.cli.main import build_parser

    parts: list[str] = []
    with _columns(80):
        parser = build_parser()
        parts += ["```text", "$ sagaz --help", parser.format_help().rstrip(), "```"]
        parts += _subcommand_help(parser, "sagaz", "###")
    return "\n".join(parts)


def _subcommand_help(parser: Any, prefix: str, heading: str) -> list[str]:
    """The help of each subcommand of ``parser``, and of theirs one heading level down."""
    import argparse

    parts: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                parts += [
                    "",
                    f"{heading} `{prefix} {name}`",
                    "",
                    "```text",
                    f"$ {prefix} {name} --help",
                    command.format_help().rstrip(),
                    "```",
                ]
                if heading == "###":  # `sagaz triggers backfill`, `sagaz dlq replay`...
                    parts += _subcommand_help(command, f"{prefix} {name}", "####")
    return parts


_GENERATORS: Mapping[str, Callable[..., str]] = {
    "options": options_table,
    "pipeline-options": pipeline_options_table,
    "config": config_table,
    "cli": cli_reference,
}


def render_directives(markdown: str, where: str = "the page") -> str:
    """``markdown`` with every ``<!-- sagaz:... -->`` directive replaced by its content."""

    def replace(match: re.Match[str]) -> str:
        name, arg = match["name"], match["arg"]
        generator = _GENERATORS.get(name)
        if generator is None:
            raise ValueError(
                f"{where}: unknown directive <!-- sagaz:{name} -->; known: {sorted(_GENERATORS)}"
            )
        return generator(arg) if arg is not None else generator()

    return DIRECTIVE.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs event: expand the directives of each page."""
    return render_directives(markdown, where=page.file.src_uri)
