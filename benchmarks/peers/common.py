"""What every peer script shares: the task file in, the result file out, the timer, and the
one formulation every system releases.

Each peer runs in its own virtual environment (their pinned stacks conflict with the
project's), so this module uses the standard library only. A peer script imports it before
its library, so `STARTED` marks the process start: `setup_s` is the time from there to the
first run (imports, and Spark's session where there is one).

The formulation (the project's, `privacy/release.py`): per cohort one noisy count (the
`count` share of the budget) and the noisy sums of the three per-user values scaled to
[0, 1] and centred (minus 1/2), so a user moves each sum by at most 1/2 (the `sums` share,
split evenly over the three sums where a library releases them one by one: for Laplace and
Gaussian noise alike that is the same noise as one vector of the three). Each mean is
(noisy centred sum / noisy count + 1/2), back on its scale and clamped to its bounds: the
count is spent once and shared by the three means.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

# The released statistics, in the order every system reports them.
MEANS = ("mean_duration_s", "converted", "sessions")


def task() -> dict:
    """The task file named on the command line: input, keys, bounds, budget, split."""
    return json.loads(Path(sys.argv[1]).read_text())


def report(spec: dict, system: str, version: str, times: list[float], releases: list[dict],
           setup_s: float, notes: str = "", check: dict | None = None) -> None:  # fmt: skip
    """`releases`: one {cohort_key: {"users": .., <mean>: ..}} per repeat. `check`: the exact
    per-key totals of the system's own bounding (events mode), compared with ours."""
    Path(spec["out"]).write_text(json.dumps({
        "system": system, "version": version, "setup_s": setup_s, "times": times,
        "releases": releases, "notes": notes, "check": check,
    }))  # fmt: skip


def timed(run, repeats: int) -> tuple[list[float], list[dict], float]:
    """Run `repeats` times; returns the times (the first is the cold run), the releases, and
    the setup time (process start to the first run)."""
    setup_s = time.perf_counter() - STARTED
    times, releases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        releases.append(run())
        times.append(time.perf_counter() - t0)
    return times, releases, setup_s


def centred(value, lo: float, hi: float):
    """A per-user value on [0, 1], minus 1/2 (works on floats and on dataframe columns)."""
    return (value - lo) / (hi - lo) - 0.5


def release_means(spec: dict, counts: dict, sums: dict) -> dict:
    """Post-processing shared by the peers: {key: {"users", <mean>...}} from the noisy counts
    {key: n} and the noisy centred sums {key: {<mean>: s}}, as release_cohort_metrics does."""
    out = {}
    for key in spec["keys"]:
        n = counts[key]
        row = {"users": n}
        for column in MEANS:
            lo, hi = spec["bounds"][column]
            value = (sums[key][column] / max(n, 1.0) + 0.5) * (hi - lo) + lo
            row[column] = min(max(value, lo), hi)
        out[key] = row
    return out
