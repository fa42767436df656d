"""Instructions per saga of ``stores.py``'s pipeline on the SQLite store, counted by valgrind.

Run: ``python benchmarks/sqlite_instructions.py [--events 2000] [--stores sqlite,memory]
[--redeliver LAG]``
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
import sys
import tempfile
from pathlib import Path

from _cachegrind import instructions, require_valgrind, start

WARM_UP = 500
_LAYERS = {"memory": "memory", "suspending": "suspending", "nosql": "sqlite, no SQL"}
_LAYERS["sqlite"] = "sqlite"


async def _child(kind: str, events: int, redeliver: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import sqlite_layers
    import stores

    layer = _LAYERS[kind]
    with tempfile.TemporaryDirectory() as folder:
        await stores.throughput(sqlite_layers.make(layer, Path(folder)), WARM_UP)
        if events:
            store = sqlite_layers.make(layer, Path(folder))
            await stores.throughput(store, events, None, redeliver)


def main(events: int, kinds: list[str], redeliver: int) -> None:
    require_valgrind()
    print(f"events: {events}")
    for kind in kinds:  # one store at a time: two valgrind processes beside each other
        base = start(__file__, "--child", kind, "--events", "0")
        run = start(
            __file__, "--child", kind, "--events", str(events), "--redeliver", str(redeliver)
        )
        per = (instructions(run) - instructions(base)) / events
        print(f"{kind:<8} instructions per saga: {per:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument(
        "--redeliver", type=int, default=0, metavar="LAG", help="as stores.py's (0: none)"
    )
    parser.add_argument("--child", choices=tuple(_LAYERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.events, args.redeliver))
    else:
        main(args.events, args.stores.split(","), args.redeliver)
