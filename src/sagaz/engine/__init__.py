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
from sagaz.engine.steering import cancel_saga, resume_saga, retry_saga, saga_history

__all__ = [
    "TriggerEngine",
    "backfill_trigger",
    "cancel_saga",
    "fire_event",
    "pause_trigger",
    "resume_saga",
    "resume_trigger",
    "retry_saga",
    "run_trigger",
    "saga_history",
    "start_triggers",
    "stop_triggers",
    "webhook_app",
]
