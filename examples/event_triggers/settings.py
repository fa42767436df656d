"""The example's own settings (``EVENT_TRIGGERS_*`` variables). The Redis address and the
store are sagaz's: ``SAGAZ_REDIS_URL`` and ``SAGAZ_STORE_URL``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EventTriggerSettings(BaseSettings):
    """What the three triggers watch."""

    model_config = SettingsConfigDict(env_prefix="EVENT_TRIGGERS_")

    data_dir: Path = Field(
        default=Path("data"),
        description="holds inbox/ (watched), processing/, processed/, rejected/",
    )
    queue_key: str = Field(default="jobs", description="the Redis list whose depth is watched")
    queue_threshold: int = Field(default=10, ge=0, description="drain when deeper than this")
    batch_size: int = Field(default=100, ge=1, description="jobs one draining saga takes")
    health_url: str = Field(
        default="http://127.0.0.1:8081/", description="GET it: any 2xx is healthy"
    )
    failure_threshold: int = Field(default=3, ge=1, description="failed checks in a row to act")
    restart_command: str = Field(
        default="", description="shell command the recovery saga runs, e.g. a restart"
    )


settings = EventTriggerSettings()
