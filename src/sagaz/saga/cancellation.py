"""Cancelling a running saga between its steps.

An operator's cancel (``sagaz sagas cancel ID``, :func:`sagaz.cancel_saga`) is written to the
store; the engine that runs the saga learns of it (see :mod:`sagaz.engine.steering_watch`)
and sets the saga's :class:`Cancellation`. The execution looks at it before each step: a
cancelled saga starts no further step (a step already running finishes), compensates the
steps it completed, and ends ``cancelled``. A compensated saga waiting for its automatic
retry is cancelled too: the cancel wakes the retry, which starts cancelled, runs no step, and
the saga ends ``cancelled`` instead of being retried.

>>> cancellations = SagaCancellations()
>>> token = cancellations.track("s1")
>>> cancellations.cancel("s1", actor="ann@ops", reason="wrong address")
True
>>> token.requested
True
"""

from __future__ import annotations

from collections.abc import Callable

from sagaz.exceptions import SagaCancelledError

__all__ = ["Cancellation", "SagaCancellations"]


class Cancellation:
    """Whether one saga run was cancelled, by whom and why. Cheap to check: a flag.

    One is made per saga run and nearly none is ever requested: the fields are class-level
    defaults until :meth:`request` sets them, so making one runs no ``__init__``."""

    requested: bool = False
    actor: str | None = None
    reason: str | None = None

    def request(self, actor: str | None = None, reason: str | None = None) -> None:
        """Cancel the run: its next step will not start."""
        if not self.requested:
            self.requested, self.actor, self.reason = True, actor, reason

    def describe(self) -> str:
        """``cancelled by ann@ops: wrong address``, the cancelled saga's error."""
        text = "cancelled"
        if self.actor:
            text += f" by {self.actor}"
        if self.reason:
            text += f": {self.reason}"
        return text

    def check(self, step: str) -> None:
        """Raise :class:`~sagaz.exceptions.SagaCancelledError` instead of starting ``step``
        once the run is cancelled."""
        if self.requested:
            raise SagaCancelledError(f"{self.describe()} (before step {step!r})")


class SagaCancellations:
    """The :class:`Cancellation` of every saga an engine runs, and the cancels it knows of.

    A cancel that arrives before its saga starts here (queued, or resumed after a crash)
    is kept, so the run starts cancelled.
    """

    def __init__(self) -> None:
        self._running: dict[str, Cancellation] = {}
        self._wanted: dict[str, tuple[str | None, str | None]] = {}
        self._watched: set[str] = set()
        #: saga id -> the wake-up of its retry waiting for its backoff here
        self._retrying: dict[str, Callable[[], None]] = {}
        #: called when a run of a cancelled or watched saga ends here (the steering then
        #: finishes its request at once, not at its next read of the store)
        self.on_end: Callable[[], None] | None = None

    def watch(self, saga_id: str) -> None:
        """Call :attr:`on_end` when the next run of ``saga_id`` here ends (a resume)."""
        self._watched.add(saga_id)

    def track(self, saga_id: str) -> Cancellation:
        """The cancellation of a run of ``saga_id`` starting now (until :meth:`untrack`)."""
        token = self._running.get(saga_id)
        if token is None:
            token = self._running[saga_id] = Cancellation()
        wanted = self._wanted.get(saga_id)
        if wanted is not None:
            token.request(*wanted)
        return token

    def untrack(self, saga_id: str) -> None:
        """The run of ``saga_id`` ended here."""
        self._running.pop(saga_id, None)
        if not self._watched and not self._wanted:  # the usual case: nothing asked of it
            return
        watched = saga_id in self._watched
        self._watched.discard(saga_id)
        if (watched or saga_id in self._wanted) and self.on_end is not None:
            self.on_end()

    def retry_waits(self, saga_id: str, wake: Callable[[], None]) -> None:
        """A retry of ``saga_id`` waits here for its backoff; ``wake()`` starts it now. A
        cancel of the saga, known already or to come, wakes it: the retry starts cancelled,
        so the saga ends ``cancelled`` instead of running again."""
        if saga_id in self._wanted:
            wake()
        else:
            self._retrying[saga_id] = wake

    def retry_started(self, saga_id: str) -> None:
        """The retry of ``saga_id`` stopped waiting (queued now, or given up)."""
        self._retrying.pop(saga_id, None)

    def running(self, saga_id: str) -> bool:
        """Whether a run of ``saga_id`` is under way here."""
        return saga_id in self._running

    def requested(self, saga_id: str) -> bool:
        """Whether this engine knows of a cancel of ``saga_id`` (running here or not)."""
        return saga_id in self._wanted

    def cancelled(self, saga_id: str) -> bool:
        """Whether a run of ``saga_id`` under way here is cancelled (it starts no more steps)."""
        token = self._running.get(saga_id)
        return token is not None and token.requested

    def cancel(self, saga_id: str, actor: str | None = None, reason: str | None = None) -> bool:
        """Cancel ``saga_id``: at once if it runs here, else when it starts here (a retry
        waiting here for its backoff is woken and starts cancelled); return whether it runs,
        or is about to run, here."""
        self._wanted[saga_id] = (actor, reason)
        token = self._running.get(saga_id)
        if token is None:
            wake = self._retrying.pop(saga_id, None)
            if wake is None:
                return False
            wake()
            return True
        token.request(actor, reason)
        return True

    def keep_only(self, saga_ids: set[str]) -> None:
        """Forget the cancels of sagas not in ``saga_ids`` (their requests were settled)."""
        for saga_id in [s for s in self._wanted if s not in saga_ids]:
            del self._wanted[saga_id]
