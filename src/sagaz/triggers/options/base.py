"""``SourceOptions``: the base of every per-source option model, and the shared field types.

The option models are plain pydantic models: strict (``True`` is not an integer, ``"5"`` is not
a number), frozen, and closed (an unknown option is an error). They import no broker driver, so
a typo in a ``@trigger`` fails when the class is defined, even where the driver is not installed.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NonEmptyStr", "PositiveInt", "SourceOptions"]

#: a string with at least one character
NonEmptyStr = Annotated[str, Field(min_length=1)]
#: an integer >= 1
PositiveInt = Annotated[int, Field(ge=1)]


class SourceOptions(BaseModel):
    """The options of one ``@trigger(source=...)`` kind, validated at class definition.

    The engine hands the validated instance to the source's ``create(options, ctx)``; a field
    whose default depends on :class:`~sagaz.config.TriggerConfig` or on the trigger is ``None``
    here and resolved by the source when it is built.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def describe(self) -> dict[str, Any]:
        """The options the trigger sets, without secrets (for listings and logs).

        >>> from sagaz.triggers.options import SQSOptions
        >>> SQSOptions(queue_url="q", aws_access_key_id="id", aws_secret_access_key="s").describe()
        {'queue_url': 'q', 'aws_access_key_id': 'id'}
        """
        secret = {name for name, field in type(self).model_fields.items() if not field.repr}
        return self.model_dump(exclude_unset=True, exclude=secret)
