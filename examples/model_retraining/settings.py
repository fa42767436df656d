"""The example's own settings (``MODEL_RETRAINING_*`` variables); broker addresses and the
store are sagaz's (``SAGAZ_KAFKA_BOOTSTRAP_SERVERS``, ``SAGAZ_STORE_URL``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrainingSettings(BaseSettings):
    """Where drift events come from, when drift is worth a retraining, what a model must reach."""

    model_config = SettingsConfigDict(env_prefix="MODEL_RETRAINING_")

    drift_topic: str = "model.drift"
    kafka_group: str = "retraining-service"
    drift_threshold: float = Field(default=0.5, ge=0, le=1, description="retrain above it")
    epochs: int = Field(default=5, ge=1)
    min_accuracy: float = Field(default=0.8, ge=0, le=1, description="the quality gate")


settings = RetrainingSettings()
