"""How the memory store keeps records: private copies the garbage collector does not walk."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime

from sagaz.engine.identity import SAGAZ_NAMESPACE, saga_id_for
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.rows import RowCodec, freeze, thaw
from sagaz.types import SagaStatus, StepStatus

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def saga(**changes: object) -> SagaRecord:
    record = SagaRecord(
        saga_id="s1",
        saga_name="orders",
        status=SagaStatus.RUNNING,
        context={"order": {"id": 7, "lines": [1, 2]}, "note": "x"},
        event=b"\x00raw",
        owner="w1",
        lease_expires_at=NOW,
        created_at=NOW,
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_a_packed_saga_unpacks_equal_with_its_enum_and_nested_values() -> None:
    codec = RowCodec(SagaRecord)
    record = saga()
    back = codec.unpack(codec.pack(record))
    assert back == record
    assert back.status is SagaStatus.RUNNING
    assert back.event == b"\x00raw"


def test_a_row_shares_nothing_with_the_record_in_either_direction() -> None:
    codec = RowCodec(StepRecord)
    step = StepRecord("s1", "pay", StepStatus.COMPLETED, result={"ids": [1]}, completed_seq=1)
    row = codec.pack(step)
    step.result["ids"].append(2)  # type: ignore[index]
    first = codec.unpack(row)
    assert first.result == {"ids": [1]}
    first.result["ids"].append(3)  # type: ignore[index]
    assert codec.unpack(row).result == {"ids": [1]}


def test_rows_of_plain_data_leave_the_garbage_collectors_lists() -> None:
    codec = RowCodec(SagaRecord)
    rows = [codec.pack(saga(saga_id=str(n))) for n in range(100)]
    gc.collect()
    assert not any(gc.is_tracked(row) for row in rows)


async def test_a_store_full_of_finished_sagas_holds_no_tracked_objects() -> None:
    store = MemorySagaStore()
    gc.collect()
    before = len(gc.get_objects())
    for n in range(500):
        record, _ = await store.create_saga(saga(saga_id=str(n)))
        await store.save_step(StepRecord(str(n), "pay", StepStatus.COMPLETED, result={"n": n}))
        await store.claim_inbox("t.m", str(n), str(n), "w1", NOW)
        await store.complete_inbox("t.m", str(n))
        record.status = SagaStatus.COMPLETED
        await store.save_saga(record)
    # a saga's steps are a tuple of rows: the collector stops tracking a tuple once its items
    # are untracked, which for the rows of the last sagas happens during the first pass
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # per saga it would be several hundred


async def test_the_engines_path_through_the_store_leaves_no_tracked_objects_either() -> None:
    # what admission and the runner call: claim_event, the start and completed checkpoints
    # (the completed one completing the inbox row), with a nested context and a step result
    store = MemorySagaStore()
    gc.collect()
    before = len(gc.get_objects())
    for n in range(500):
        pending = saga(saga_id=str(n), status=SagaStatus.PENDING, context={})
        claim = await store.claim_event("t.m", str(n), pending)
        assert claim.saga is not None
        record = claim.saga
        record.status = SagaStatus.RUNNING
        record.context = {"order": {"id": n, "lines": [n]}}
        await store.save_checkpoint(record)
        record.status = SagaStatus.COMPLETED
        step = StepRecord(str(n), "pay", StepStatus.COMPLETED, result={"ids": [n]})
        await store.save_checkpoint(record, [step], complete_inbox=("t.m", str(n)))
    del claim, record, step, pending
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 50


def test_values_that_marshal_cannot_hold_are_still_copied() -> None:
    value = {"at": NOW, "status": SagaStatus.FAILED}
    frozen = freeze(value)
    assert frozen is not value
    assert thaw(frozen) == value
    assert thaw(frozen) is not frozen
    assert thaw(frozen)["status"] is SagaStatus.FAILED


def test_saga_ids_are_uuid5_of_the_trigger_namespace_and_key() -> None:
    for key in ["1", "order-42", "é" * 3, ""]:
        expected = uuid.uuid5(uuid.uuid5(SAGAZ_NAMESPACE, "Orders.on_order"), key)
        assert saga_id_for("Orders.on_order", key) == str(expected)
