"""The ``sagaz`` command: ``run``, ``triggers list``, ``dlq list|show|replay|purge``."""
