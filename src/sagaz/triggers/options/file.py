"""``FileOptions``: the options of ``@trigger(source="file", ...)`` (no watchfiles import).

>>> FileOptions(path="/data/inbox", pattern="*.csv").settle_ms
500
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sagaz.triggers.options.base import SourceOptions

__all__ = ["EventType", "FileOptions"]

EventType = Literal["created", "modified", "deleted"]


class FileOptions(SourceOptions):
    """One directory watched for files created, modified or deleted."""

    path: str = Field(
        description="The directory to watch (a str or a pathlib.Path).",
        examples=["/data/inbox"],
    )
    pattern: str = Field(
        default="*",
        min_length=1,
        description='Glob on the file name (fnmatch), e.g. "*.csv"; other files start nothing.',
    )
    event_type: EventType = Field(
        default="created", description="Which change of a file starts a saga."
    )
    recursive: bool = Field(default=False, description="Watch subdirectories too.")
    process_existing: bool = Field(
        default=False,
        description="At start, treat the files already there as created (or modified).",
    )
    settle_ms: int = Field(
        default=500,
        ge=0,
        description="Milliseconds a file's size and mtime must stay unchanged before it fires, "
        "so a file written in chunks fires once.",
    )
    force_polling: bool | None = Field(
        default=None,
        description="Poll instead of OS notifications (network mounts, containers); default: "
        "watchfiles' own choice (WATCHFILES_FORCE_POLLING).",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _directory(cls, value: Any) -> str:
        if not isinstance(value, str | os.PathLike) or not os.fspath(value):
            raise ValueError(
                f"option path={value!r} must be the directory to watch (a str or Path)"
            )
        return str(os.fspath(value))

    @model_validator(mode="after")
    def _existing_needs_a_file(self) -> FileOptions:
        if self.process_existing and self.event_type == "deleted":
            raise ValueError(
                'option process_existing=True has no meaning with event_type="deleted"; '
                "remove it or watch created/modified files"
            )
        return self
