"""What the in-memory pipeline keeps per event: few objects the garbage collector walks."""

from __future__ import annotations

from datetime import UTC, datetime

from sagaz.engine.joint_deliveries import JointDeliveries
from sagaz.events import Delivery, EventMeta
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.rows import RowCodec
from sagaz.types import SagaStatus, StepStatus

THEN = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


async def test_a_joint_delivery_acks_without_argument_and_nacks_with_one() -> None:
    settled: list[object] = []

    async def ack() -> None:
        settled.append("ack")

    async def nack(requeue: bool) -> None:
        settled.append(("nack", requeue))

    def delivery() -> Delivery:
        return Delivery(
            payload={}, meta=EventMeta(source="memory"), identity="", ack=ack, nack=nack
        )

    in_flight: dict[str, JointDeliveries] = {}
    acking = in_flight["a"] = JointDeliveries(delivery(), in_flight, "a")
    await acking()
    await acking(True)  # settled already: nothing more
    nacking = in_flight["b"] = JointDeliveries(delivery(), in_flight, "b")
    await nacking(False)
    assert settled == ["ack", ("nack", False)]
    assert in_flight == {}


async def test_a_delivery_tracked_again_after_its_settlement_still_acks_its_source() -> None:
    # admission points the delivery's own ack/nack at its JointDeliveries (no copy per event);
    # a source that emits the same object again must still reach its own ack, not the old joint
    acks: list[str] = []

    async def ack() -> None:
        acks.append("ack")

    async def nack(requeue: bool) -> None:
        acks.append("nack")

    delivery = Delivery(
        payload={}, meta=EventMeta(source="memory"), identity="", ack=ack, nack=nack
    )
    in_flight: dict[str, JointDeliveries] = {}
    for _ in range(2):
        joint = in_flight["a"] = JointDeliveries(delivery, in_flight, "a")
        delivery.ack = delivery.nack = joint
        await delivery.ack()
    await delivery.nack(True)  # the second joint is settled: nothing more
    assert acks == ["ack", "ack"]


def test_a_stamped_row_takes_its_times_from_the_arguments_and_leaves_the_record() -> None:
    codec = RowCodec(SagaRecord)
    record = SagaRecord("s1", "orders", SagaStatus.RUNNING, {"a": [1]}, created_at=THEN)
    row = codec.stamped(record, THEN, NOW)
    assert row == codec.pack(
        SagaRecord("s1", "orders", SagaStatus.RUNNING, {"a": [1]}, created_at=THEN, updated_at=NOW)
    )
    assert record.updated_at is None
    step = StepRecord("s1", "pay", StepStatus.COMPLETED, result={"ok": True})
    back = RowCodec(StepRecord).unpack(RowCodec(StepRecord).stamped(step, None, NOW))
    assert back.updated_at == NOW
    assert back.result == {"ok": True}
    assert step.updated_at is None
