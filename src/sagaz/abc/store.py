"""The storage contract: :class:`SagaStore`.

Every store passes the same suite in ``tests/contract/test_store_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from sagaz._aio import gather_all
from sagaz.abc.lifecycle import Lifecycle
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    EventClaim,
    InboxClaim,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    SchemaVersions,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.types import SagaStatus

__all__ = ["SagaStore"]


class SagaStore(Lifecycle, ABC):
    """Durable state of sagas, steps, inbox, outbox, dead letters, poll triggers and cron claims.

    Claims use the backend's atomic primitives (``INSERT ... ON CONFLICT``, ``SET NX``), never
    read-then-write. ``start()`` creates the versioned schema on an empty database, starts on
    a current one, and refuses one at an older version with
    :class:`~sagaz.exceptions.SchemaOutdatedError`: migrations run only when asked, through
    :meth:`upgrade_schema` (``sagaz db upgrade``).

    **Fencing.** A saga row names its owner, the worker running it. A write of a saga row
    (:meth:`save_saga`, and :meth:`save_checkpoint` with a ``saga``) is *fenced* by the
    written record's ``owner``: it applies only when the stored row has no owner, the
    record has none, both are the same worker, or the record is a later ``attempt`` than
    the stored row's (a retry, a replayed dead letter, an operator's resume: a new attempt
    supersedes the old one). Otherwise another worker took the saga over (its admission's
    or recovery's :meth:`claim_saga` after the lease expired), and the write, with everything
    written with it (steps, outbox messages, the inbox row's completion), is not applied:
    the store raises :class:`~sagaz.exceptions.LeaseLostError`. The check and the write are
    one atomic operation (a conditional upsert, a Lua script), never read-then-write.
    A worker's own writes still apply after its lease expired while no one took the saga.
    """

    #: False for stores that lose everything on exit (``MemorySagaStore``)
    durable: ClassVar[bool] = True

    # -- schema ----------------------------------------------------------------------------
    async def schema_versions(self) -> SchemaVersions:
        """The schema version in the store's database and the one this sagaz needs.

        Works on a stopped store too (it connects for the question only) and changes
        nothing. The default is a store that keeps no schema: ``SchemaVersions(0, 0)``.
        """
        return SchemaVersions(current=0, expected=0)

    async def upgrade_schema(self) -> SchemaVersions:
        """Create the schema, or run the migrations that bring it to the version this sagaz
        needs (``sagaz db upgrade``); return the versions as they were before.

        Idempotent, and serialised with other processes starting or upgrading on the same
        database (the lock of ``start()``). Works on a stopped store (it connects for the
        upgrade only). The default is a store that keeps no schema: nothing to do.
        """
        return SchemaVersions(current=0, expected=0)

    # -- saga executions -------------------------------------------------------------------
    @abstractmethod
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        """Insert ``record`` unless its ``saga_id`` exists; return (stored record, created?)."""

    @abstractmethod
    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        """Insert or overwrite the saga row (status, context, error, attempt, lease);
        ``outbox`` messages (the events of a terminal state) are written in the same
        transaction.

        Fenced by ``record.owner`` (see the class): raises
        :class:`~sagaz.exceptions.LeaseLostError`, writing nothing, when another worker owns
        the stored row."""

    @abstractmethod
    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        """The saga row, or ``None``."""

    @abstractmethod
    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        trigger_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """At most ``limit`` sagas, newest first (the reverse of the order they were created
        in), that match every filter given.

        ``created_after`` keeps sagas created at or after that moment, ``created_before``
        those created strictly before it. ``after`` pages: pass the ``saga_id`` of the last
        saga of the previous page to continue with the sagas listed after it (created
        before it); an ``after`` that names no saga gives an empty list.

        >>> page = await store.list_sagas(status=SagaStatus.FAILED, limit=50)  # doctest: +SKIP
        >>> more = await store.list_sagas(status=SagaStatus.FAILED, limit=50,
        ...                               after=page[-1].saga_id)  # doctest: +SKIP
        """

    @abstractmethod
    async def delete_saga(self, saga_id: str) -> None:
        """Remove a saga and its steps (an accepted event dropped before it started)."""

    @abstractmethod
    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        """Non-terminal sagas whose lease is absent or expired at ``now`` (crash recovery)."""

    @abstractmethod
    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        """Atomically take the lease of a saga if it is free, expired or already ``owner``'s."""

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        """Claim a saga as :meth:`claim_saga` does and, when its row still names another
        owner (a worker whose lease expired: it crashed or froze without giving the saga
        back), count the claim as a recovery attempt, in the same atomic operation; return
        the saga's recovery attempts after the claim, ``None`` when it was not claimed. A
        saga with no owner (given back with :meth:`release_saga`: a graceful stop, a
        worker letting go of it) or already ``owner``'s is claimed without being counted.

        The count is kept with the saga row, so every worker and every restart sees it; it
        belongs to the saga's ``attempt`` (a new attempt, such as a replay or an operator's
        retry, starts it over). The recovery loop and admission's takeover of a key call
        this before they run anything of the saga, and stop at ``max_recovery_attempts``.

        This default, for stores that keep no count, claims and answers ``0``.
        """
        return 0 if await self.claim_saga(saga_id, owner, lease_until) else None

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        """Give back the lease ``owner`` holds on a saga it could not resume: the row keeps
        no owner (:meth:`renew_leases` no longer extends it) and its lease ends at
        ``retry_at`` (none: at once), so :meth:`list_recoverable` lists it again from then,
        while :meth:`claim_saga` (an admission of its event) may take it at once. Fenced:
        nothing changes, and ``False`` is returned, unless ``owner`` holds it. The recovery
        loop's (:mod:`sagaz.engine.recovery`).

        A store overrides it to check and write in one atomic operation (the four stores
        do). This default, for stores that do not, reads the row and then writes it back: a
        takeover between the two (only after ``owner``'s lease expired) would be undone.
        """
        saga = await self.get_saga(saga_id)
        if saga is None or saga.owner != owner:
            return False
        saga.owner, saga.lease_expires_at = None, retry_at
        await self.save_saga(saga)
        return True

    # -- steps -----------------------------------------------------------------------------
    @abstractmethod
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        """Upsert a step checkpoint; ``outbox`` messages are written in the same transaction."""

    # -- combined checkpoints ----------------------------------------------------------------
    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """Write one checkpoint of a saga as one operation: the ``steps`` checkpoints (as
        :meth:`save_step`, in order, distinct names), then the ``saga`` row (as
        :meth:`save_saga`), the ``outbox`` messages (in order), and the inbox row
        ``complete_inbox = (trigger_id, key)`` completed (as :meth:`complete_inbox`).

        The engine uses it twice per saga: starting (the saga row going running with its
        first step's running checkpoint) and finishing (the last step's completion, the
        terminal saga row, its outbox messages and, for a completed saga, its inbox row).

        A store overrides it to write everything in one transaction, all or nothing (the
        PostgreSQL, SQLite and memory stores do). This default, for stores that do not,
        makes the same writes one call after another in the order above, so a crash between
        two of them leaves a state the saga resumes from (a step checkpoint ahead of its saga
        row, or a terminal saga whose inbox row is still pending).

        With a ``saga``, fenced by ``saga.owner`` (see the class): when another worker owns
        the stored row, nothing of the checkpoint is written and
        :class:`~sagaz.exceptions.LeaseLostError` is raised (this default has written the
        steps by then). A checkpoint of steps only is not fenced: the saga row write that
        follows it (a step's completion, the terminal state) is.
        """
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            await self.save_step(step, outbox if saga is None and last else ())
        if saga is not None:
            await self.save_saga(saga, outbox)
        elif outbox and not steps:
            raise ValueError("save_checkpoint: outbox messages need a saga or a step to go with")
        if complete_inbox is not None:
            await self.complete_inbox(*complete_inbox)

    @abstractmethod
    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        """All step checkpoints of a saga (any order)."""

    @abstractmethod
    async def reset_steps(self, saga_id: str) -> None:
        """Forget step checkpoints before a new attempt of the same saga."""

    # -- inbox -----------------------------------------------------------------------------
    @abstractmethod
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        """Claim ``(trigger_id, key)`` atomically.

        New key → ``CLAIMED``; completed → ``DUPLICATE``; pending with a live lease of another
        owner → ``BUSY``; pending with an expired lease, or our own → ``TAKEN_OVER``.
        """

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        """Claim ``(trigger_id, key)`` for ``record.saga_id`` and write the event's saga row, as
        one operation: admission's, before the trigger method runs.

        The claim is :meth:`claim_inbox`'s (owner ``record.owner``, lease until
        ``record.lease_expires_at``). When the key is ours (``CLAIMED``, ``TAKEN_OVER``),
        ``record`` (a ``PENDING`` row) is created as by :meth:`create_saga` unless its saga
        exists, and the answer holds the saga row: ``record`` (``created``) or the existing
        one, so a key taken over needs no :meth:`get_saga`. A ``DUPLICATE`` or ``BUSY`` key
        writes nothing and reads no saga.

        A store overrides it to do both in one transaction (the SQLite, PostgreSQL and Redis
        stores do, within their group commit). This default, for stores that do not, makes
        the claim and then the creation: a crash between the two leaves a pending inbox row
        without a saga, which the key's next delivery takes over once the lease expires.
        """
        owner, lease = record.owner, record.lease_expires_at
        if owner is None or lease is None:
            raise ValueError(
                "claim_event: the record needs an owner and a lease_expires_at (the claim's)"
            )
        claim = await self.claim_inbox(trigger_id, key, record.saga_id, owner, lease)
        if claim.outcome not in (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER):
            return EventClaim(claim.outcome, claim.saga_id, claim.owner)
        saga, created = await self.create_saga(record)
        return EventClaim(claim.outcome, claim.saga_id, claim.owner, saga, created)

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        """:meth:`claim_event` for several ``(key, record)`` of one trigger (a broker poll's
        records, distinct sagas): one answer each, in order. Admission's batch form.

        Each claim is its own operation, as with :meth:`claim_event`; once one failed, the
        others may have been made or not (admission then claims each again: a key claimed by
        us is ``TAKEN_OVER``, its pending row kept). Raises only after every claim has
        returned or failed. This default issues the :meth:`claim_event` calls together, so a
        store with group commit makes them in a few round trips; a store overrides it to make
        them in one step (the memory store does).
        """
        return await gather_all(self.claim_event(trigger_id, key, record) for key, record in claims)

    @abstractmethod
    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        """Mark the row completed: later deliveries of the key are duplicates."""

    @abstractmethod
    async def release_inbox(self, trigger_id: str, key: str) -> None:
        """Delete the row (the event was dropped before its saga started)."""

    @abstractmethod
    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        """Extend every pending inbox row and live saga of ``owner``; return rows touched."""

    @abstractmethod
    async def purge_expired(self, before: datetime) -> int:
        """Delete completed inbox rows older than ``before`` and drop stored events of
        terminal sagas older than ``before``; return the number of rows affected. Pending
        inbox rows whose lease expired before ``before`` go too (their worker died and their
        event never came back).

        Also delete trigger executions completed before ``before`` (running ones are kept
        whatever their age) and cron claims of ticks before ``before``, except the newest tick
        of each trigger, so :meth:`last_cron_tick` answers the same after a purge; and, on
        the store's clock whatever ``before``, named leases that have expired and token buckets
        that are full again (a missing row means the same: free, full), so that many
        distinct concurrency keys or buckets do not accumulate rows."""

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        """Delete at most ``limit`` finished sagas whose last change is older than ``before``,
        oldest first, each with its steps, history and outbox messages; return how many.

        Finished means a terminal status (completed, compensated, failed, cancelled). A saga
        is kept, whatever its age, while an inbox row of it is pending with a live lease (a
        retry is due), an operator's request for it is open, or one of its outbox messages is
        unsent. Each call deletes at most ``limit`` sagas in short transactions (scripts on
        Redis): call it again while it returns ``limit``. Inbox rows and dead letters are not
        touched: a completed inbox row keeps answering duplicates after its saga is gone.

        Not abstract, so a store written for an older sagaz still works: without it the
        engine keeps finished sagas (it logs so once)."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge finished sagas")

    # -- outbox ----------------------------------------------------------------------------
    @abstractmethod
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        """Unsent outbox messages, in id order (ordered per saga)."""

    @abstractmethod
    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        """Mark the given outbox messages as published."""

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        """The outbox messages of one saga, sent or not, in id order (at most ``limit``; for
        the dashboard). Raises :class:`NotImplementedError` on a store that cannot list them."""
        raise NotImplementedError(f"{type(self).__name__} does not list a saga's outbox")

    # -- dead letters ----------------------------------------------------------------------
    @abstractmethod
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        """Store a dead letter; return its id."""

    @abstractmethod
    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        """Dead letters, oldest first."""

    @abstractmethod
    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        """One dead letter by id."""

    @abstractmethod
    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        """Delete one dead letter; return whether it existed."""

    async def purge_dead_letters(self, before: datetime, *, limit: int = 500) -> int:
        """Delete at most ``limit`` dead letters stored before ``before``, oldest first;
        return how many (call it again while it returns ``limit``).

        Not abstract, so a store written for an older sagaz still works: without it the
        engine keeps dead letters until they are purged by hand (it logs so once)."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge dead letters by age")

    # -- trigger schedules (every trigger's row: paused or not; poll triggers' interval) -----
    @abstractmethod
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        """Upsert a row of ``trigger_schedules``.

        An existing row keeps its ``enabled`` (only :meth:`set_trigger_enabled` changes it,
        so a restart never resumes a paused trigger) and its ``last_poll_at`` if the new one
        is None; a new row takes ``record.enabled``."""

    @abstractmethod
    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        """One row of ``trigger_schedules``."""

    @abstractmethod
    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        """Every row of ``trigger_schedules``, by ``trigger_name``."""

    @abstractmethod
    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        """Pause (``False``) or resume (``True``) a trigger: set ``enabled`` of its row.

        Returns whether the row exists (nothing is created for an unknown name)."""

    @abstractmethod
    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        """Record the time of the last poll."""

    @abstractmethod
    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        """Insert an execution row. With ``exclusive``, refuse (return False) when an open row
        (``completed_at`` is null) with the same ``(trigger_name, context_hash)`` exists."""

    @abstractmethod
    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        """Close the execution row(s) of that saga."""

    @abstractmethod
    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        """Execution rows of a trigger, oldest first."""

    # -- cron ------------------------------------------------------------------------------
    @abstractmethod
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        """Claim one tick; exactly one caller across all instances gets True."""

    @abstractmethod
    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        """The latest claimed tick of a cron trigger (its ``last_fired_at``)."""

    # -- leases ----------------------------------------------------------------------------
    # A named lease is held by one holder at a time, for ``ttl`` seconds unless renewed
    # (the outbox relay's "one active relay per store"; cluster-wide limits later). Its time
    # is the store's: PostgreSQL's and Redis's server clock, the local one for SQLite and
    # memory, so the holders' clocks need not agree.
    @abstractmethod
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``ttl`` seconds if it is free, expired, or already
        ``holder``'s (then it is extended); return whether ``holder`` holds it now.

        Atomic: of any number of holders trying at once, at most one holds the lease."""

    @abstractmethod
    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend the lease to ``ttl`` seconds from now if ``holder`` holds it and it has not
        expired; return whether it did (``False``: the lease is lost, perhaps to another)."""

    @abstractmethod
    async def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` holds it, so another can take it at once; return
        whether it did."""

    # -- shared rate limits ----------------------------------------------------------------
    # A token bucket shared by every instance on the store (``limit_scope="cluster"``), on
    # the store's clock like the leases.
    @abstractmethod
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        """Take one token of the token bucket ``name``: ``rate`` tokens a second, at most
        ``burst`` saved up (a new bucket is full). Return ``0.0`` when a token was taken,
        otherwise the seconds until the next one (nothing taken).

        Atomic: however many instances take at once, tokens taken over any ``t`` seconds
        never exceed ``rate * t + burst``."""

    # -- saga control: operators' requests and each saga's history ---------------------------
    # Not abstract, so a store written for an older sagaz still works: without them,
    # ``sagaz sagas cancel|resume|retry`` and the engines' watch of requests are unavailable.
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        """Forget the checkpoints of the named steps of a saga (they run again on resume);
        names without a checkpoint are ignored."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete single steps")

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        """Append one entry to a saga's history (``at`` defaults to now); return its id."""
        raise NotImplementedError(f"{type(self).__name__} keeps no saga history")

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        """The history of one saga, oldest first (at most ``limit`` entries)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no saga history")

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        """Store an operator's request unless the saga has one already (atomic); return
        whether it was stored. ``requested_at`` defaults to now."""
        raise NotImplementedError(f"{type(self).__name__} keeps no saga requests")

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        """Open requests (of one saga, if given), oldest first."""
        raise NotImplementedError(f"{type(self).__name__} keeps no saga requests")

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        """Delete the saga's open request if it is for ``action``; return whether this call
        deleted it (of several callers at once, exactly one gets ``True``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no saga requests")
