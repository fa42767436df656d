"""The SQS source (aiobotocore): :class:`SQSSource` and its batched settlement."""

from sagaz.sources.sqs.source import SQSSource, create

__all__ = ["SQSSource", "create"]
