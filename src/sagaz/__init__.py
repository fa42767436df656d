"""sagaz: embeddable asyncio sagas started from events."""
