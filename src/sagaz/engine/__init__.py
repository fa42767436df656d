"""The trigger engine: :class:`TriggerEngine` and the pipeline stages it runs.

``Source.run(emit)`` → :mod:`~sagaz.engine.admission` → :mod:`~sagaz.engine.backpressure` →
:mod:`~sagaz.engine.dispatcher` → :mod:`~sagaz.engine.runner` → :mod:`~sagaz.engine.settlement`.
"""

from sagaz.engine.backfill import backfill_trigger
from sagaz.engine.engine import (
    TriggerEngine,
    fire_event,
    pause_trigger,
    resume_trigger,
    start_triggers,
    stop_triggers,
    webhook_app,
)
from sagaz.engine.schedules import run_trigger

__all__ = [
    "TriggerEngine",
    "backfill_trigger",
    "fire_event",
    "pause_trigger",
    "resume_trigger",
    "run_trigger",
    "start_triggers",
    "stop_triggers",
    "webhook_app",
]
