"""Refused webhook requests: counted per reason, logged at a bounded rate; the opt-in cap of
dead letters for invalid requests."""

from __future__ import annotations

import logging

import pytest

from sagaz.sources.webhook.app import WebhookRoute
from sagaz.sources.webhook.rejections import RejectionReason, RequestRejections
from sagaz.sources.webhook.source import compile_path
from sagaz.testing import FakeClock

LOGGER = "sagaz.sources.webhook.rejections"


async def test_every_refusal_is_counted_but_logged_once_per_reason_and_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    rejections = RequestRejections(log_interval=10, clock=clock.monotonic)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    for _ in range(1000):
        rejections.count(RejectionReason.INVALID_BODY, "shop.on_order", "bad JSON")
    rejections.count(RejectionReason.NOT_FOUND)
    first = [r.getMessage() for r in caplog.records]
    await clock.advance(10)
    rejections.count(RejectionReason.INVALID_BODY, "shop.on_order")  # the interval passed
    rejections.count(RejectionReason.INVALID_BODY, "shop.on_order")  # a new interval began
    summary = [r.getMessage() for r in caplog.records][len(first) :]
    rejections.flush()
    flushed = [r.getMessage() for r in caplog.records][len(first) + len(summary) :]

    assert rejections.counts == {
        ("invalid_body", "shop.on_order"): 1002,
        ("not_found", ""): 1,
    }
    assert rejections.total("invalid_body") == 1002
    assert len(first) == 2  # the first of each reason, at once
    assert "invalid_body, trigger shop.on_order" in first[0] and "bad JSON" in first[0]
    assert "not_found" in first[1]
    assert summary == ["webhook refused 1000 more request(s) (invalid_body) in the last 10 s"]
    assert flushed == ["webhook refused 1 more request(s) (invalid_body) in the last 0 s"]


def test_a_long_detail_is_cut_short_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    RequestRejections().count(RejectionReason.INVALID_BODY, "t", "x" * 10_000)
    [record] = caplog.records
    assert "x" * 200 in record.getMessage() and "x" * 201 not in record.getMessage()


async def test_dead_letter_slots_are_capped_per_window() -> None:
    clock = FakeClock()
    route = WebhookRoute(
        trigger_id="shop.on_order",
        method="POST",
        path="/orders",
        pattern=compile_path("/orders"),
        dead_letter_invalid=True,
        dead_letter_invalid_limit=2,
        dead_letter_invalid_window=60,
        clock=clock,
    )
    first = [route.take_dead_letter_slot() for _ in range(4)]
    await clock.advance(59)
    still = route.take_dead_letter_slot()
    await clock.advance(1)
    next_window = [route.take_dead_letter_slot() for _ in range(3)]

    assert first == [True, True, False, False]
    assert still is False
    assert next_window == [True, True, False]


def test_without_the_option_no_invalid_request_is_dead_lettered() -> None:
    route = WebhookRoute(
        trigger_id="shop.on_order", method="POST", path="/orders", pattern=compile_path("/orders")
    )
    assert [route.take_dead_letter_slot() for _ in range(3)] == [False, False, False]
