"""The dashboard in a real headless browser (Debian's chromium + chromium-driver through
selenium, installed by .ci/run): counters move, a trigger pauses and resumes, a compensated
saga shows its failed step, a replayed dead letter completes. Screenshots of each page go to
the test's temporary folder (``screens/``).

The engine runs on a memory store in this process: no service is needed. Without chromium the
test skips, except under ``SAGAZ_REQUIRE_SERVICES=1`` where it fails (as the service fixtures).
Selenium blocks, so every browser step runs in a thread while the engine serves on the loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sagaz import Saga, SagaStatus, TriggerConfig, action, compensate, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore

T = TypeVar("T")
TOKEN = "browser-token"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def _browser(tmp_path: Path) -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        why = f"the browser test needs {', '.join(missing)} (installed by .ci/run)"
        if os.environ.get("SAGAZ_REQUIRE_SERVICES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


FAILING = {"charge": True}


async def test_the_dashboard_in_a_headless_browser(tmp_path: Path) -> None:
    driver = _browser(tmp_path)

    class Checkout(Saga):
        @trigger(source="memory", channel="checkout")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("reserve")
        async def reserve(self, ctx: Any) -> None:
            return None

        @compensate("reserve")
        async def release(self, ctx: Any) -> None:
            return None

        @action("charge", depends_on=["reserve"])
        async def charge(self, ctx: Any) -> None:
            if ctx.get("fail") and FAILING["charge"]:
                raise RuntimeError("card declined")

    screens = tmp_path / "screens"
    screens.mkdir()

    async def step(fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def shot(name: str) -> None:
        driver.save_screenshot(str(screens / f"{name}.png"))

    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    def until(condition: Callable[[Any], Any], seconds: float = 10) -> None:
        """Wait for a page the click loads (the old page's elements go stale meanwhile)."""
        WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(
            condition
        )

    def text_of(css: str) -> str:
        """The element's text, read again if the page was replaced under the read (chromedriver
        then says "Node with given id does not belong to the document")."""
        texts: list[str] = []
        WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda d: texts.append(str(d.find_element(By.CSS_SELECTOR, css).text)) or True
        )
        return texts[-1]

    config = TriggerConfig(dashboard=True, dashboard_tokens=[TOKEN], webhook_port=0)
    store = MemorySagaStore()
    FAILING["charge"] = True
    try:
        async with TriggerEngine(config, store) as engine:
            base = engine.dashboard_url
            assert base is not None
            row = 'tr[data-trigger="checkout.on_order"]'

            def login() -> None:
                driver.get(base + "/triggers")
                assert "sign in" in driver.title
                driver.find_element(By.ID, "token").send_keys(TOKEN)
                driver.find_element(By.ID, "sign-in").click()
                until(lambda d: "triggers" in d.title)

            await step(login)
            [first] = await engine.fire("checkout", {"n": 1})
            await engine.wait_for(first, timeout=5)

            def counters() -> tuple[str, str]:
                driver.get(base + "/triggers")  # signed in: the login cookie opens the page
                assert "triggers" in driver.title
                return text_of(f"{row} td.received"), text_of(f"{row} td.completed")

            assert await step(counters) == ("1", "1")
            await step(lambda: shot("triggers-1"))
            [second] = await engine.fire("checkout", {"n": 2})
            await engine.wait_for(second, timeout=5)
            assert await step(counters) == ("2", "2")  # the counters moved
            await step(lambda: shot("triggers-2"))

            def click_and_state(button: str, expected: str) -> str:
                driver.find_element(By.CSS_SELECTOR, f"{row} button.{button}").click()
                until(
                    lambda d: (
                        [e.text for e in d.find_elements(By.CSS_SELECTOR, f"{row} td.state")]
                        == [expected]
                    )
                )
                return text_of(f"{row} td.state")

            assert await step(lambda: click_and_state("pause", "paused")) == "paused"
            assert engine.paused_triggers() == {"checkout.on_order": frozenset({"operator"})}
            assert await engine.fire("checkout", {"n": 3}) == []  # skipped while paused

            def not_started_and_queued() -> tuple[str, str]:
                driver.get(base + "/triggers")
                return text_of(f"{row} td.not-started"), text_of(f"{row} td.queued")

            assert await step(not_started_and_queued) == ("paused: 1", "0")  # this trigger's
            await step(lambda: shot("triggers-paused"))
            assert await step(lambda: click_and_state("resume", "running")) == "running"
            assert engine.paused_triggers() == {}

            [failed] = await engine.fire("checkout", {"fail": True, "note": "<script>x</script>"})
            await engine.wait_for(failed, timeout=5)
            assert (await store.get_saga(failed)).status is SagaStatus.COMPENSATED  # type: ignore[union-attr]

            def saga_page() -> tuple[str, str, str]:
                driver.get(base + "/sagas?status=compensated")
                shot("sagas-compensated")
                driver.find_element(By.LINK_TEXT, failed).click()
                until(lambda d: failed in d.title)
                shot("saga-compensated")
                charge = 'tr[data-step="charge"]'
                return (
                    text_of("#saga-status"),
                    text_of(f"{charge} td.error"),
                    text_of("#context"),
                )

            status, error, context = await step(saga_page)
            assert status == "compensated"
            assert "card declined" in error
            assert "<script>x</script>" in context  # shown as text, not run

            [dead] = await store.list_dead_letters()
            FAILING["charge"] = False  # the card works now: the replay completes

            def replay() -> str:
                driver.get(base + "/dead-letters")
                shot("dead-letters")
                driver.find_element(By.LINK_TEXT, str(dead.id)).click()
                until(lambda d: "dead letter " in d.title)
                shot("dead-letter")
                driver.find_element(By.ID, "replay").click()
                until(lambda d: d.find_elements(By.ID, "message"))
                shot("dead-letters-replayed")
                return text_of("#message")

            assert await step(replay) == f"{dead.id}: completed"
            assert await store.list_dead_letters() == []
            completed = await store.list_sagas(status=SagaStatus.COMPLETED, limit=10)
            assert len(completed) == 3

            def chart() -> int:
                driver.get(base + "/triggers")
                shot("triggers-chart")
                return len(driver.find_elements(By.CSS_SELECTOR, "#chart rect.completed"))

            assert await step(chart) >= 1
    finally:
        await step(driver.quit)
    assert sorted(p.name for p in screens.iterdir()) == sorted(
        f"{n}.png"
        for n in (
            "triggers-1",
            "triggers-2",
            "triggers-paused",
            "sagas-compensated",
            "saga-compensated",
            "dead-letters",
            "dead-letter",
            "dead-letters-replayed",
            "triggers-chart",
        )
    )
