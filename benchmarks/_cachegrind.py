"""Counting a benchmark child's instructions with valgrind's ``cachegrind`` (``I refs``).

``instructions.py``, ``sqlite_instructions.py`` and ``pg_instructions.py`` run themselves
again as a child under valgrind (hash seed fixed, no cache simulation) and read the count
it prints: steady to a fraction of a percent where the CPU time of a shared machine moves
by ±10% or more.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

__all__ = ["instructions", "require_valgrind", "start"]

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def require_valgrind() -> None:
    """Exit with what to install when valgrind is missing."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")


def start(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``python script *args`` under cachegrind, in the background."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        script,
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def instructions(process: subprocess.Popen[str]) -> int:
    """The instructions ``process`` (from :func:`start`) ran, once it has ended."""
    _, err = process.communicate()
    found = _REFS.search(err)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind failed:\n{err[-2000:]}")
    return int(found.group(1).replace(",", ""))
