"""``SQSOptions``: the options of ``@trigger(source="sqs", ...)`` (no aiobotocore import).

>>> SQSOptions(queue_url="orders").wait_time
20
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from sagaz.triggers.options.base import NonEmptyStr, SourceOptions

__all__ = [
    "MAX_MESSAGE_ATTRIBUTES",
    "MAX_RECEIVE_MESSAGES",
    "MAX_VISIBILITY_TIMEOUT",
    "MAX_WAIT_TIME",
    "SQSOptions",
    "is_url",
]

#: SQS limits: long-poll seconds, visibility seconds, messages per receive, attributes
MAX_WAIT_TIME = 20
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_RECEIVE_MESSAGES = 10
MAX_MESSAGE_ATTRIBUTES = 10


def is_url(value: Any) -> bool:
    """Whether ``value`` is an http(s) URL (a queue URL), rather than a queue name."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


class SQSOptions(SourceOptions):
    """One SQS queue, long-polled; credentials not given here come from the AWS chain."""

    queue_url: NonEmptyStr = Field(
        description="The queue URL, or a queue name (resolved with GetQueueUrl).",
        examples=["https://sqs.eu-west-1.amazonaws.com/123456789012/orders"],
    )
    visibility_timeout: int = Field(
        default=30,
        ge=1,
        le=MAX_VISIBILITY_TIMEOUT,
        description="Seconds a received message stays invisible; extended while its saga runs.",
    )
    wait_time: int = Field(
        default=MAX_WAIT_TIME,
        ge=0,
        le=MAX_WAIT_TIME,
        description="Long-poll seconds of one ReceiveMessage.",
    )
    max_messages: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RECEIVE_MESSAGES,
        description="Messages per receive; default: 10, or TriggerConfig.queue_size when smaller.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="http(s) URL of the SQS API (LocalStack, moto...); default: "
        "TriggerConfig.sqs_endpoint_url, else AWS.",
    )
    region: NonEmptyStr | None = Field(
        default=None, description="AWS region; default: TriggerConfig.sqs_region."
    )
    aws_access_key_id: NonEmptyStr | None = Field(
        default=None, description="Access key id (with aws_secret_access_key); default: AWS chain."
    )
    aws_secret_access_key: NonEmptyStr | None = Field(
        default=None, repr=False, description="Secret access key (with aws_access_key_id)."
    )
    aws_session_token: NonEmptyStr | None = Field(
        default=None, repr=False, description="Session token of temporary credentials."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not is_url(value):
            raise ValueError("option endpoint_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> SQSOptions:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("options aws_access_key_id and aws_secret_access_key go together")
        return self
