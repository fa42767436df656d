"""Triggers: ``@trigger``, the registry, poll triggers; the engine is imported lazily."""

from __future__ import annotations

from sagaz.triggers.decorator import trigger
from sagaz.triggers.poll import Fire, Skip, Trigger
from sagaz.triggers.registration import TriggerDefinition, TriggerRegistry, registry

__all__ = ["Fire", "Skip", "Trigger", "TriggerDefinition", "TriggerRegistry", "registry", "trigger"]
