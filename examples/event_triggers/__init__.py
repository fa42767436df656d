"""Cloacina's event-trigger example in sagaz: three poll triggers (a file watcher, a queue
depth over a threshold, a health check after 3 consecutive failures), each firing a saga
(see README.md; run ``python -m examples.event_triggers.main``)."""
