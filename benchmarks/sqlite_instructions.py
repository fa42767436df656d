"""Instructions per saga of ``stores.py``'s pipeline on the SQLite store, counted by valgrind.

Run: ``python benchmarks/sqlite_instructions.py [--events 2000] [--stores sqlite,memory]``
(needs ``valgrind`` on the PATH; about half a minute per store). The stores are those of
``sqlite_layers.py``: ``memory``, ``suspending``, ``nosql`` (``sqlite, no SQL``), ``sqlite``.

``stores.py``'s CPU µs per saga moves by ±10% and more from run to run on a shared machine;
the instructions a process executes do not depend on the other jobs. Each store's run of
``stores.throughput`` (20 producers, 100 concurrent sagas, a one-step no-op saga; a fresh
file) goes under ``valgrind --tool=cachegrind --cache-sim=no`` with ``PYTHONHASHSEED=0`` in a
process of its own, after a warm-up of 500 sagas on the same kind of store; a process that
only warms up is subtracted, and the rest divided by ``--events``. User-space only: the
kernel's writes and the ``COMMIT``'s sync are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WARM_UP = 500
_LAYERS = {"memory": "memory", "suspending": "suspending", "nosql": "sqlite, no SQL"}
_LAYERS["sqlite"] = "sqlite"
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def _child(kind: str, events: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import sqlite_layers
    import stores

    layer = _LAYERS[kind]
    with tempfile.TemporaryDirectory() as folder:
        await stores.throughput(sqlite_layers.make(layer, Path(folder)), WARM_UP)
        if events:
            await stores.throughput(sqlite_layers.make(layer, Path(folder)), events)


def _start(kind: str, events: int) -> subprocess.Popen[str]:
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        kind,
        "--events",
        str(events),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def _instructions(process: subprocess.Popen[str]) -> int:
    _, err = process.communicate()
    found = _REFS.search(err)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind failed:\n{err[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(events: int, kinds: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print(f"events: {events}")
    for kind in kinds:  # one store at a time: two valgrind processes beside each other
        base, run = _start(kind, 0), _start(kind, events)
        per = (_instructions(run) - _instructions(base)) / events
        print(f"{kind:<8} instructions per saga: {per:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument("--child", choices=tuple(_LAYERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.events))
    else:
        main(args.events, args.stores.split(","))
