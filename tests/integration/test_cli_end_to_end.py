"""The operator's loop as a user runs it, each ``sagaz`` command its own process: ``sagaz run
--progress`` until a saga is dead-lettered, ``sagas show`` says which step failed and what was
compensated, the cause is fixed, ``dlq replay`` completes the same saga and the dead letter
leaves the list."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import sagaz

APP = textwrap.dedent(
    """
    from pathlib import Path

    from sagaz import Fire, Saga, Skip, Trigger, action, compensate, trigger

    FIXED = Path(__file__).with_name("fixed")  # the cause is fixed once this file exists


    class Orders(Trigger):
        name = "orders"
        poll_interval = 0.05

        def __init__(self):
            self.left = [10, 250, 30]

        async def poll(self):
            return Fire({"amount": self.left.pop(0)}) if self.left else Skip


    class Shop(Saga):
        saga_name = "e2e-shop"

        @trigger(source="custom", trigger=Orders())
        def on_order(self, ctx: dict) -> dict:
            return dict(ctx)

        @action("reserve")
        async def reserve(self, ctx) -> dict:
            return {"reserved": True}

        @compensate("reserve")
        async def release(self, ctx) -> None:
            return None

        @action("charge", depends_on=["reserve"])
        async def charge(self, ctx) -> dict:
            if ctx["amount"] > 100 and not FIXED.exists():
                raise RuntimeError(f"card declined: {ctx['amount']}")
            return {"charged": ctx["amount"]}
    """
)


async def test_run_progress_then_show_fix_and_replay_a_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "e2e_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    src = str(Path(sagaz.__file__).parents[1])  # the sagaz under test, in the subprocesses too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["SAGAZ_TRIGGER_BASE_POLL_INTERVAL"] = "0.05"

    async def command(*argv: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "sagaz.cli.main", *argv, "--store", url),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await process.communicate()
        assert process.returncode is not None
        assert "Traceback" not in err.decode(), err.decode()
        return process.returncode, out.decode(), err.decode()

    run = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sagaz.cli.main", "run", "e2e_app", "--progress"),
        *("--progress-every", "0.05", "--store", url),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert run.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while "received 3  running 0  completed 2  dead-lettered 1" not in seen:
                line = await run.stdout.readline()
                assert line, f"sagaz run ended early: {seen}"
                seen.append(line.decode().rstrip("\n"))
    finally:
        run.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            out, err = await run.communicate()
    assert run.returncode == 0, (seen, out, err)
    assert seen[0] == "sagaz: running 1 trigger(s); Ctrl-C to stop"
    assert all(s.startswith("received ") for s in seen[1:])  # not a TTY: one line per change
    assert "sagaz: stopping (finishing in-flight sagas)..." in out.decode()

    code, out, _ = await command("sagas", "list", "--status", "compensated", "--json")
    [failed] = json.loads(out)["sagas"]
    saga_id = failed["saga_id"]
    code, out, _ = await command("sagas", "show", saga_id)
    assert code == 0
    assert "failed step  charge: RuntimeError: card declined: 250" in out
    assert "compensated  reserve" in out

    code, out, _ = await command("dlq", "list", "--json")
    [dead] = json.loads(out)["dead_letters"]
    assert dead["saga_id"] == saga_id

    (tmp_path / "fixed").touch()  # the cause is fixed
    code, out, _ = await command("dlq", "replay", str(dead["id"]))
    assert (code, out) == (0, f"replayed dead letter {dead['id']}: saga {saga_id} completed\n")

    code, out, err = await command("dlq", "list")
    assert (code, out, err) == (0, "", "no dead letters\n")  # it left the list
    code, out, _ = await command("sagas", "show", saga_id, "--json")
    shown = json.loads(out)
    assert (shown["status"], shown["attempt"]) == ("completed", 2)  # the same saga, again
    assert shown["context"]["charged"] == 250
    code, out, _ = await command("sagas", "list", "--status", "completed", "--json")
    assert len(json.loads(out)["sagas"]) == 3
