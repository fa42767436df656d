"""The SQS source (aiobotocore): :class:`SQSSource` and its batched settlement."""

from sagaz.sources.sqs.source import OPTIONS, REQUIRED, SQSSource, create, validate

__all__ = ["OPTIONS", "REQUIRED", "SQSSource", "create", "validate"]
