"""Configuration: ``TriggerConfig`` (engine-wide settings) and the process-wide default store.

Every ``TriggerConfig`` field also reads ``SAGAZ_<FIELD>``. Which store ``Saga.run()`` and the
engine use when none is given: an explicit ``store=`` argument, else :func:`configure`, else
``SAGAZ_STORE_URL``, else a process-wide :class:`~sagaz.storage.memory.MemorySagaStore`
(not durable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from sagaz.abc import SagaStore

__all__ = [
    "BackpressureStrategy",
    "TriggerConfig",
    "configure",
    "ensure_store",
    "reset_configuration",
    "resolve_store",
    "store_is_chosen",
]

BackpressureStrategy = Literal["block", "drop_oldest", "drop_newest", "reject"]


class TriggerConfig(BaseSettings):
    """Settings of the trigger engine; per-trigger options override the global ones.

    >>> TriggerConfig(dead_letter_topic="failed-triggers", max_retries=3,
    ...               retry_backoff_seconds=[10, 60, 300])  # doctest: +ELLIPSIS
    TriggerConfig(...)
    """

    model_config = SettingsConfigDict(env_prefix="SAGAZ_", extra="forbid", validate_assignment=True)

    # retries and dead letters
    dead_letter_topic: str | None = Field(
        default=None,
        description="Where sources publish dead letters on their broker (a Kafka topic, a "
        "RabbitMQ exchange, a Redis stream, an SQS queue); default: stored only.",
    )
    max_retries: int = Field(
        default=0,
        ge=0,
        description="Retries of a saga that ended compensated before its event is dead-lettered.",
    )
    retry_backoff_seconds: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0],
        description="Delays before retry 1, 2, ... (the last one repeats).",
    )
    retry_jitter: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Each retry delay is multiplied by a random factor in 1 ± this.",
    )

    # event persistence
    persist_events: bool = Field(
        default=False, description="Keep each accepted event in the store with its saga."
    )
    event_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Age after which completed inbox rows, stored events of finished sagas, "
        "finished poll executions and old cron claims are purged.",
    )
    saga_retention_days: float | None = Field(
        default=90.0,
        gt=0,
        description="Age (since its last change) after which a finished saga is deleted with "
        "its steps, history and outbox messages; None keeps finished sagas forever. A saga "
        "awaiting a retry, an operator's request or the publishing of its outbox is kept.",
    )
    dead_letter_retention_days: float | None = Field(
        default=30.0,
        gt=0,
        description="Age after which a dead letter is deleted (replay or purge it before); "
        "None keeps dead letters until `sagaz dlq purge`.",
    )
    cleanup_interval_seconds: float = Field(
        default=3600.0, gt=0, description="Seconds between two purges of expired rows."
    )

    # backpressure and limits
    backpressure_strategy: BackpressureStrategy = Field(
        default="block",
        description="What a full queue does with the next event: block (the source waits), "
        "drop_oldest, drop_newest or reject (dead letter).",
    )
    queue_size: int = Field(
        default=1000, ge=1, description="Events accepted and waiting to start, at most."
    )
    max_concurrent_sagas: int = Field(
        default=100, ge=1, description="Sagas running at once in this engine, at most."
    )
    rate_limit_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Sagas this engine starts per second, at most (a token bucket); "
        "default: no limit.",
    )
    shutdown_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds stop() lets in-flight sagas finish; the rest are cancelled, "
        "left un-acked and resume later.",
    )

    # leases (crash recovery, scale-out)
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a worker's claim on an event or saga lasts without renewal "
        "(renewed every third of it); another worker takes over an expired one.",
    )
    worker_id: str | None = Field(
        default=None,
        description="This process's name in the store's claims; default: hostname-pid-random.",
    )
    recovery_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between two searches for sagas of dead workers (webhook, cron, "
        "file, memory and poll events, which no broker redelivers).",
    )
    max_recovery_attempts: int = Field(
        default=5,
        ge=1,
        description="How many times a saga may be taken over from a worker that stopped "
        "without giving it back (its lease expired: a crash, a kill), counted in the store "
        "across workers and restarts (a graceful stop gives its sagas back: not counted); "
        "the next takeover dead-letters it (reason recovery_exhausted) instead of running it: "
        "a saga that kills its worker does not crash one worker after another for ever.",
    )

    # pausing triggers (``sagaz triggers pause|resume ID``, ``sagaz.pause_trigger(ID)``)
    trigger_state_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between two reads of the triggers' paused/running state in the "
        "store: a pause or resume made elsewhere (the CLI, another instance) takes effect "
        "here within this time.",
    )

    # saga control (``sagaz sagas cancel|resume|retry ID``, ``sagaz.cancel_saga(ID)``)
    saga_control_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between two reads of the operators' saga requests in the store: "
        "a cancel reaches the engine that runs the saga (which stops it before its next "
        "step), and a resume or retry is taken up by an engine running its trigger, within "
        "this time.",
    )

    # poll triggers (Cloacina)
    enable_trigger_scheduling: bool = Field(
        default=True,
        description="False: no poll trigger (source='custom' with a sagaz.Trigger) is polled; "
        "the other triggers run.",
    )
    trigger_base_poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds: the shortest poll interval of a poll trigger (a smaller "
        "poll_interval is raised to it).",
    )
    trigger_poll_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one poll() may take; a slower one is reported and polling goes on.",
    )

    # broker connections
    kafka_bootstrap_servers: str = Field(
        default="localhost:9092",
        description="Kafka brokers (host:port,...) of triggers without bootstrap_servers=.",
    )
    rabbitmq_url: str = Field(
        default="amqp://guest:guest@localhost:5672/",
        description="RabbitMQ URL of triggers without url=.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="Redis URL of triggers without url=."
    )
    sqs_endpoint_url: str | None = Field(
        default=None,
        description="SQS API URL of triggers without endpoint_url= (an emulator); default: AWS.",
    )
    sqs_region: str = Field(
        default="us-east-1", description="AWS region of SQS triggers without region=."
    )
    webhook_host: str = Field(
        default="127.0.0.1", description="Address the built-in webhook server listens on."
    )
    webhook_port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        description="Port of the built-in webhook server (0 picks a free one).",
    )
    webhook_tokens: list[str] = Field(
        default_factory=list,
        description='Bearer tokens of auth="bearer" webhook triggers without tokens=.',
    )
    webhook_hmac_secret: str | None = Field(
        default=None,
        description='HMAC secret of auth="hmac" webhook triggers without secret=.',
    )
    dashboard: bool = Field(
        default=False,
        description="Serve the dashboard at /sagaz on the webhook server (started for it if "
        "no webhook trigger runs); off by default.",
    )
    dashboard_tokens: list[str] = Field(
        default_factory=list,
        description="Bearer tokens of the dashboard (pages and actions); empty: the "
        "webhook_tokens.",
    )
    dashboard_read_only_tokens: list[str] = Field(
        default_factory=list,
        description="Bearer tokens that may read the dashboard but take no action.",
    )

    # limits of the built-in webhook server (a webhook_app() mounted in your own ASGI server
    # follows that server's limits); every refusal is counted in
    # sagaz_webhook_requests_rejected_total{reason}
    webhook_max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open connections at most; a request on a connection beyond it gets 503 "
        "+ Retry-After and the connection is closed (reason overloaded).",
    )
    webhook_max_concurrent_requests: int = Field(
        default=512,
        ge=1,
        description="Requests handled at once at most (beyond: 503 + Retry-After, reason "
        "overloaded). Request bodies in memory stay below this times max_body_bytes.",
    )
    webhook_header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds for a request line and its headers to arrive, from the "
        "connection's opening or the request's first byte; then 408 and close (a connection "
        "that sent nothing is closed without an answer). Cuts off clients that trickle "
        "headers (slowloris).",
    )
    webhook_body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds for a request body to arrive once its headers are in; then 408 "
        "(if no response started) and close. 30 s lets a 1 MiB body through at ~35 kB/s.",
    )
    webhook_keep_alive_timeout: int = Field(
        default=5,
        ge=1,
        description="Seconds an idle keep-alive connection stays open between requests.",
    )
    webhook_max_header_bytes: int = Field(
        default=16384,
        ge=1024,
        description="Bytes of request line + headers at most (beyond: 431, reason "
        "headers_too_large).",
    )
    webhook_max_headers: int = Field(
        default=100,
        ge=1,
        description="Header fields per request at most (beyond: 431, reason too_many_headers).",
    )
    webhook_rejection_log_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Refused requests are logged at most once per reason in this many "
        "seconds, with the count since the previous line (they are all counted in metrics).",
    )

    @field_validator("retry_backoff_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("retry_backoff_seconds must hold non-negative numbers")
        return value


_configured: SagaStore | None = None
_from_env: SagaStore | None = None


def configure(*, store: SagaStore | None = None) -> None:
    """Set the default store of this process.

    >>> sagaz.configure(store=SQLiteSagaStore("sagaz.db"))  # doctest: +SKIP
    """
    global _configured
    _configured = store


def reset_configuration() -> None:
    """Forget :func:`configure` and the environment-derived store (tests)."""
    global _configured, _from_env
    _configured = None
    _from_env = None


def resolve_store(store: SagaStore | None = None) -> SagaStore:
    """The store to use: an explicit ``store=``, else :func:`configure`, else
    ``SAGAZ_STORE_URL``, else a process-wide memory store."""
    global _from_env
    if store is not None:
        return store
    if _configured is not None:
        return _configured
    if _from_env is None:
        from sagaz.storage.memory import MemorySagaStore

        url = os.environ.get("SAGAZ_STORE_URL")
        if url:
            from sagaz.storage.url import store_from_url

            _from_env = store_from_url(url)
        else:
            _from_env = MemorySagaStore()
    return _from_env


def store_is_chosen(store: SagaStore | None = None) -> bool:
    """Whether :func:`resolve_store` (``store``) gives a store somebody chose: an explicit
    ``store=``, :func:`configure` or ``SAGAZ_STORE_URL``, rather than the memory fallback."""
    return store is not None or _configured is not None or bool(os.environ.get("SAGAZ_STORE_URL"))


async def ensure_store(store: SagaStore | None = None) -> SagaStore:
    """Like :func:`resolve_store`, and start an implicit (configured or environment) store.

    An explicit ``store=`` is the caller's to start and stop.
    """
    resolved = resolve_store(store)
    if store is None and not getattr(resolved, "_started", False):
        await resolved.start()
    return resolved
