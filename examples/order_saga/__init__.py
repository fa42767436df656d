"""The ADR's multi-broker ``OrderSaga``: one saga started from Kafka, RabbitMQ and a webhook,
with compensations (see README.md; run ``python -m examples.order_saga.main``)."""
