"""Helpers for the reliability tests: releases in separate OS processes, budget caps.

Children come from a forkserver that has already imported Dagster and the pipeline (and made
one ephemeral Dagster instance: forkserver_warmup), so each release process starts in
milliseconds instead of seconds, and the test process's own DuckDB state is never forked. A child can be told to SIGKILL itself at its n-th "point": just before
or after any statement it sends to DuckDB (warehouse or ledger), or right after a noise draw.
Points inside a DP asset's release protocol are prefixed with the asset (`<asset> | ...`),
and a child can log every draw and stored draw per (reservation, measurement) to a file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

# The release itself; governance, experiments and reports downstream are not under test here.
CORE = ("ingest", "cohorts", "privacy", "metrics", "ranking")
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(
    ["cohort_pipeline.definitions", "dagster", "duckdb", "cohort_pipeline_tests.forkserver_warmup"]
)


def cap_for_releases(policy, n: int) -> float:
    """The composed epsilon of exactly n releases of `policy`: a cap that admits n."""
    from cohort_pipeline.privacy.measurements import release_spend

    return release_spend(policy, n)[0] * (1 + 1e-9)


# Statements that change a DuckDB file; the points around them are where the crash test kills.
WRITES = ("INSERT", "DELETE", "UPDATE", "COMMIT", "CREATE TABLE", "DROP", "ALTER")


# Statements inside a release table's write transaction (replace_partition): until its
# COMMIT nothing is durable, so the point after its INSERT stands for every point inside it.
IN_TRANSACTION = (
    "CREATE TABLE IF NOT EXISTS release.",
    "DELETE FROM release.",
    "DELETE FROM ledger_head",
)


def kill_target(label: str) -> bool:
    """A point of a DP asset's protocol (or of the ledger's reservation) between two writes:
    just after a write statement or a noise draw, or just before the reservation's first
    write. Nothing is written between one write and the next, so the point just before a
    write is the gap the point after the previous one already covers."""
    if " | " not in label or "ledger.duckdb: CREATE TABLE IF NOT EXISTS" in label:
        return False  # outside the protocol, or the ledger's no-op schema statements
    what = label.split(" | ", 1)[1]
    statement = what.split(": ", 1)[-1]
    return (
        what.startswith("noise drawn")
        or (
            what.startswith("after ")
            and statement.startswith(WRITES)
            and not statement.startswith(IN_TRANSACTION)
        )
        or what.startswith("before ledger.duckdb: INSERT INTO privacy_spend")
    )


class _Points:
    """Calls each instrumented point. At the `occurrence`-th point whose label contains
    `stop_at`, SIGKILLs this process, or pauses it for `pause_s` seconds if given. With
    `visited` (a file of point ids), SIGKILLs at the first kill_target point whose id
    (label, occurrence of that label in this run) is not yet in the file, after adding it."""

    def __init__(
        self,
        stop_at: str | None,
        occurrence: int,
        pause_s: float,
        log: Path | None,
        paused: Path,
        visited: Path | None = None,
    ):
        self.stop_at, self.left, self.pause_s, self.log = stop_at, occurrence, pause_s, log
        self.paused = paused  # touched when the pause starts
        self.visited, self.seen, self.region = visited, {}, None
        self.done = set(visited.read_text().splitlines()) if visited and visited.exists() else set()

    def __call__(self, label: str) -> None:
        if self.region:
            label = f"{self.region} | {label}"
        if self.visited and kill_target(label):
            self.seen[label] = self.seen.get(label, 0) + 1
            point = f"{label} #{self.seen[label]}"
            if point not in self.done:
                with self.visited.open("a") as f:
                    f.write(point + "\n")
                os.kill(os.getpid(), signal.SIGKILL)
        if self.log:
            with self.log.open("a") as f:
                f.write(label + "\n")
        if self.stop_at is not None and self.stop_at in label:
            self.left -= 1
            if self.left == 0 and self.pause_s:
                self.paused.touch()
                time.sleep(self.pause_s)
            elif self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)


class _Connection:
    """A DuckDB connection that passes each statement through the points counter."""

    def __init__(self, con, name: str, points: _Points):
        self._con, self._name, self._points = con, name, points

    def _statement(self, method: str, sql: str, *args):
        label = f"{self._name}: {' '.join(str(sql).split())[:60]}"
        self._points(f"before {label}")
        result = getattr(self._con, method)(sql, *args)
        self._points(f"after {label}")
        return result

    def execute(self, sql, *args):
        return self._statement("execute", sql, *args)

    def executemany(self, sql, *args):
        return self._statement("executemany", sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _instrument(points: _Points, draws_log: Path | None = None) -> None:
    import contextlib

    import duckdb

    from cohort_pipeline.defs import dp_asset
    from cohort_pipeline.privacy import ledger as ledger_module
    from cohort_pipeline.privacy import mechanisms

    connect = duckdb.connect

    def connect_counted(database=":memory:", *args, **kwargs):
        return _Connection(connect(database, *args, **kwargs), Path(str(database)).name, points)

    duckdb.connect = connect_counted
    draw = mechanisms.Mechanism.__call__

    def draw_counted(self, values):
        noisy = draw(self, values)
        points(f"noise drawn: {self.name}")
        return noisy

    mechanisms.Mechanism.__call__ = draw_counted

    # Regions: the DP asset named by its admission, from the lock to its release.
    admit, lock, draw_once = dp_asset.admit, dp_asset.release_lock, dp_asset.draw_once

    def admit_marked(rows, asset, release_date):
        points.region = asset
        return admit(rows, asset, release_date)

    @contextlib.contextmanager
    def lock_marked(warehouse):
        try:
            with lock(warehouse):
                yield
        finally:
            points.region = None

    def logged(line: str) -> None:
        if draws_log:
            with draws_log.open("a") as f:
                f.write(f"{os.getpid()} {line}\n")

    def draw_once_logged(store, admission, measurement, draw, **kwargs):
        key = f"{admission.reservation_id} {measurement}"

        def counted():
            logged(f"drawn {key}")
            return draw()

        frame, drawn = draw_once(store, admission, measurement, counted, **kwargs)
        if drawn:
            logged(f"stored {key}")
        return frame, drawn

    dp_asset.admit, dp_asset.release_lock = admit_marked, lock_marked
    dp_asset.draw_once = draw_once_logged
    reserve = ledger_module.Ledger.reserve

    def reserve_marked(self, *args, **kwargs):
        points.region = "privacy_budget_ledger"
        try:
            return reserve(self, *args, **kwargs)
        finally:
            points.region = None

    ledger_module.Ledger.reserve = reserve_marked


def run_release(
    data_dir: str,
    partition: str,
    out: str,
    stop_at: str | None = None,
    occurrence: int = 1,
    pause_s: float = 0.0,
    points_log: str | None = None,
    selection: str | list[str] | None = None,
    visited: str | None = None,
    draws_log: str | None = None,
) -> None:
    """Child body: materialize `selection` (default: the core release graph, ingest through
    ranking) for `partition`; write a JSON summary to `out`. stdout/stderr (Dagster's log
    lines: what a user sees) go to `out` + '.log'."""
    log = os.open(out + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    if stop_at is not None or points_log or visited or draws_log:
        points = _Points(
            stop_at,
            occurrence,
            pause_s,
            Path(points_log) if points_log else None,
            Path(out + ".paused"),
            Path(visited) if visited else None,
        )
        _instrument(points, Path(draws_log) if draws_log else None)

    from dagster import AssetSelection

    from cohort_pipeline_tests.conftest import check_results
    from cohort_pipeline_tests.conftest import run_release as materialize_release

    started = time.time()
    result = materialize_release(
        Path(data_dir), partition, selection=selection or AssetSelection.groups(*CORE)
    )
    budget = [
        e.metadata.get("reason")
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key.name == "budget_within_limit"
    ]
    failures = [
        e.event_specific_data.error.message
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data.error
    ]
    sizes = {
        k: v.value
        for m in result.asset_materializations_for_node("cohort_sizes")
        for k, v in m.metadata.items()
        if k.startswith("noisy_users:")
    }
    summary = {
        "partition": partition,
        "success": result.success,
        "checks": check_results(result),
        "budget_reason": budget[0].value if budget and budget[0] is not None else None,
        "failures": failures,
        "noisy_users": sizes,
        "started": started,
        "finished": time.time(),
    }
    Path(out).write_text(json.dumps(summary))


def hold_file(path: str, seconds: float, out: str) -> None:
    """Child body: hold `path` open read-write (DuckDB's process lock) for `seconds`, like a
    notebook or another run would."""
    from cohort_pipeline.storage.locking import connect_with_retry

    con = connect_with_retry(path, timeout_s=120)  # a release may have opened it first
    start = time.time()
    time.sleep(seconds)
    con.close()
    Path(out).write_text(json.dumps({"started": start, "finished": time.time()}))


def wait_for(path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def start(target, *args) -> multiprocessing.Process:
    proc = CONTEXT.Process(target=target, args=args)
    proc.start()
    return proc


def read_output(out: Path) -> tuple[dict | None, str]:
    """The child's summary (None if it died first) and everything it printed."""
    log = Path(str(out) + ".log")
    text = log.read_text(errors="replace") if log.exists() else ""
    return (json.loads(out.read_text()) if out.exists() else None), text
