"""What every peer script shares: the task file in, the result file out, the timer.

Each peer runs in its own virtual environment (their pinned stacks conflict with the
project's), so this module uses the standard library only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# The released statistics, in the order every system reports them.
MEANS = ("mean_duration_s", "converted", "sessions")


def task() -> dict:
    """The task file named on the command line: input Parquet, keys, bounds, budget."""
    return json.loads(Path(sys.argv[1]).read_text())


def report(spec: dict, system: str, version: str, times: list[float], releases: list[dict],
           setup_s: float = 0.0, notes: str = "") -> None:  # fmt: skip
    """`releases`: one {cohort_key: {"users": .., <mean>: ..}} per repeat."""
    Path(spec["out"]).write_text(json.dumps({
        "system": system, "version": version, "setup_s": setup_s, "times": times,
        "releases": releases, "notes": notes,
    }))  # fmt: skip


def timed(run, repeats: int) -> tuple[list[float], list[dict]]:
    times, releases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        releases.append(run())
        times.append(time.perf_counter() - t0)
    return times, releases
