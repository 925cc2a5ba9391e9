"""Scale benchmark: the whole daily release graph at 1M, 10M and 100M events.

    .venv/bin/python benchmarks/scale.py --sizes 1M 10M 100M

For each size: generates the sample (streaming, once; reused while the files exist), runs the
release graph in a fresh child process (in-process executor, as the daily job does) and
samples the child's whole process tree for peak RSS. Then, in another child, runs the plain
DuckDB floor: the same per-cohort aggregates straight from the validated events, with no
bounding and no noise. Writes results/scale.json, results/scale.md and results/scale.png
(`--name` renames them).

`--repeats N` measures each size N times (each from a fresh warehouse) and reports the run
with the median DP / plain, every run's ratio beside it: the machine is shared, and one run's
ratio moves by about ±0.05.

DuckDB's memory limit and temp directory come from COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT and
COHORT_PIPELINE_DUCKDB_TEMP_DIR (defaults below), as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
RELEASE_DATE = "2026-11-28"
SEED = 7
DAYS = 30
# ~48 events per user over 30 days with the generator's defaults: 210k users ~ 10M events.
USERS = {"1M": 21_000, "10M": 210_000, "100M": 2_100_000}
# The steps that bound, aggregate and add noise: the "DP release step" of the ratio.
DP_STEPS = (
    "user_profiles",
    "cohort_assignments",
    "privacy_budget_ledger",
    "cohort_sizes",
    "cohort_metrics",
    "cohort_category_affinity",
    "cohort_recommendations",
)


def data_dir_for(size: str, extra_days: int = 0) -> Path:
    return RESULTS / "data" / (f"{size}+{extra_days}d" if extra_days else size)


def ensure_data(size: str, extra_days: int = 0) -> dict:
    """Generate the sample for `size` unless it is already on disk; returns generator facts.
    `extra_days` more days of files, older ones, still ending on RELEASE_DATE (the generator
    only adds older history), so that the next-day releases end on a date Dagster's daily
    partitions already offer."""
    from cohort_pipeline.tools.generate import generate

    data = data_dir_for(size, extra_days)
    marker = data / "generated.json"
    if marker.exists():
        return json.loads(marker.read_text())
    t0 = time.perf_counter()
    summary = generate(data, users=USERS[size], days=DAYS + extra_days, seed=SEED,
                       end_date=dt.date.fromisoformat(RELEASE_DATE))  # fmt: skip
    facts = {
        "events": summary.events,
        "users": summary.users,
        "generate_s": time.perf_counter() - t0,
    }
    marker.write_text(json.dumps(facts))
    return facts


def fresh_release_state(data: Path) -> None:
    """Each run starts from no warehouse and no ledger, as a first release would."""
    shutil.copy(REPO / "data" / "policy.yaml", data / "policy.yaml")
    for path in data.glob("*.duckdb*"):
        path.unlink()
    shutil.rmtree(data / "exports", ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it does not exist)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # a spill file may vanish meanwhile
                total += (Path(root) / name).stat().st_size
    return total


def run_child(args: list[str], env: dict) -> tuple[dict, float, int]:
    """Run this script in `child` mode; returns (its JSON result, wall s, peak tree RSS bytes).
    The result also gets `peak_temp_bytes`: the most DuckDB's spill folder held meanwhile."""
    out = RESULTS / f".child-{os.getpid()}.json"
    temp_dir = Path(env["COHORT_PIPELINE_DUCKDB_TEMP_DIR"])
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--out", str(out)], env=env)
    root, peak, peak_temp = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        peak_temp = max(peak_temp, _dir_bytes(temp_dir))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    result = json.loads(out.read_text()) | {"peak_temp_bytes": peak_temp}
    out.unlink()
    # ru_maxrss catches a spike shorter than the sampling interval (single process, KiB).
    return result, wall, max(peak, result["ru_maxrss_kib"] * 1024)


def child_release(data: Path, day: str) -> dict:
    """Materialize the whole graph for release date `day` in this process; per-step times."""
    import resource

    from dagster import DagsterInstance, materialize

    from cohort_pipeline.definitions import all_assets, resources_for

    instance = DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    result = materialize(all_assets, partition_key=day, resources=resources_for(data),
                         instance=instance, raise_on_error=False)  # fmt: skip
    wall = time.perf_counter() - t0
    steps = {
        s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(result.run_id)
    }
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "success": result.success,
        "graph_s": wall,
        "steps": steps,
        "ru_maxrss_kib": usage.ru_maxrss,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def child_plain(data: Path, day: str, user_key: str = "user_id") -> dict:
    """The physical floor: the released aggregates from the validated events in plain DuckDB,
    no per-user clamping, no L2 scaling, no noise. Same bands, so the same cohorts. With the
    exact floor (`user_key` the id), then, on the same connection, the release's own bounding
    SQL (privacy/bounding.py, run by the DuckDB engine into temp tables): the query cost of
    privacy without Dagster's."""
    import resource

    from cohort_pipeline.definitions import resources_for
    from cohort_pipeline.policy import load_policy
    from cohort_pipeline.privacy.bounding import window

    policy = load_policy(data / "policy.yaml")
    warehouse = resources_for(data)["warehouse"]
    day = dt.date.fromisoformat(day)
    _, outcome_start, _ = window(policy, day)
    queries = plain_queries(policy, day, outcome_start, data / "catalog.csv", user_key)
    with warehouse.connect() as con:
        t0 = time.perf_counter()
        for sql in queries:
            con.execute(sql).fetchall()
        result = {"plain_s": time.perf_counter() - t0}
        if user_key == "user_id":  # the bounding SQL once, beside the exact floor
            result["bounding_sql_s"] = _bounding_sql_s(con, policy, day, data)
    return {**result, "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _bounding_sql_s(con, policy, day: dt.date, data: Path) -> float:
    from cohort_pipeline.engines import DuckDBEngine

    con.execute(
        "CREATE TEMP VIEW events AS SELECT * EXCLUDE (release_date) FROM "
        f"private.raw_events WHERE release_date = DATE '{day}'"
    )
    con.execute(
        "CREATE TEMP TABLE catalog AS SELECT item_id, category FROM "
        f"read_csv('{data / 'catalog.csv'}', all_varchar = true)"
    )
    t0 = time.perf_counter()
    with DuckDBEngine().bounded_tables(con, policy, day, "events", "catalog"):
        return time.perf_counter() - t0


def child_read_floor(data: Path, day: str) -> dict:
    """The ingest's floor: a plain DuckDB read of every file in the events folder (as
    raw_events reads them), filtered to the release's window and stored in a fresh database
    file with the warehouse's settings. No typing checks, classification or quarantine."""
    import resource

    import duckdb

    from cohort_pipeline.definitions import resources_for
    from cohort_pipeline.policy import load_policy
    from cohort_pipeline.privacy.bounding import window
    from cohort_pipeline.settings import EVENT_FILE_PREFIX, DataFolder
    from cohort_pipeline.storage import warehouse as wh

    first, _, last = window(load_policy(data / "policy.yaml"), dt.date.fromisoformat(day))
    files = sorted(str(f) for f in DataFolder(data).events.glob(f"{EVENT_FILE_PREFIX}*.parquet"))
    target = data / "read_floor.duckdb"
    target.unlink(missing_ok=True)
    settings = resources_for(data)["warehouse"]
    con = duckdb.connect(str(target))
    wh.configure(con, settings.memory_limit, settings.temp_directory)
    t0 = time.perf_counter()
    con.execute(
        f"CREATE TABLE window_events AS SELECT * FROM read_parquet({files}) "
        f"WHERE event_time >= TIMESTAMPTZ '{first} 00:00:00+00' "
        f"AND event_time < TIMESTAMPTZ '{last + dt.timedelta(days=1)} 00:00:00+00'"
    )
    con.execute("CHECKPOINT")
    floor_s = time.perf_counter() - t0
    con.close()
    stored = target.stat().st_size
    target.unlink()
    return {
        "read_floor_s": floor_s,
        "read_floor_files": len(files),
        "read_floor_bytes": stored,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def plain_queries(
    policy, day: dt.date, outcome_start: dt.date, catalog: Path, user_key="user_id"
) -> list[str]:
    from cohort_pipeline.privacy.bounding import cohort_key_sql

    events = f"(SELECT * FROM private.raw_events WHERE release_date = DATE '{day}')"
    cohort_key = cohort_key_sql(
        policy,
        {
            "session_count": "u.n",
            "days_since_purchase": "days_since_purchase",
            "mean_duration_s": "u.d",
            "device_type": "u.device_type",
        },
    )
    start = f"TIMESTAMPTZ '{outcome_start} 00:00:00+00'"
    users = f"""
        CREATE OR REPLACE TEMP TABLE plain_users AS
        WITH s AS (SELECT user_id, session_id, max(session_duration_s) AS d,
                          arg_min(device_type, event_time) AS device_type
                   FROM {events} GROUP BY ALL),
        u AS (SELECT user_id, count(*) AS n, avg(d) AS d, mode(device_type) AS device_type
              FROM s GROUP BY user_id),
        p AS (SELECT user_id,
                     DATE '{outcome_start}' - max(CASE WHEN event_time < {start}
                         THEN CAST(timezone('UTC', event_time) AS DATE) END) AS days_since_purchase,
                     bool_or(event_time >= {start}) AS converted
              FROM {events} WHERE event_type = 'purchase' GROUP BY user_id)
        SELECT u.user_id, u.n, u.d, coalesce(p.converted, false)::INT AS converted,
               {cohort_key} AS cohort_key
        FROM u LEFT JOIN p USING (user_id)
    """
    weights = " ".join(f"WHEN '{k}' THEN {v}" for k, v in policy.category_weights.items())
    return [
        users,
        "SELECT cohort_key, count(*), avg(d), avg(converted), avg(n) FROM plain_users GROUP BY ALL",
        f"""SELECT u.cohort_key, c.category, sum(CASE e.event_type {weights} ELSE 0 END)
            FROM {events} e JOIN read_csv('{catalog}', all_varchar = true) c USING (item_id)
            JOIN plain_users u USING (user_id) GROUP BY ALL""",
        f"SELECT item_id, count(DISTINCT {user_key}) FROM {events} GROUP BY item_id",
    ]


def measure(size: str, env: dict) -> dict:
    data = data_dir_for(size)
    facts = ensure_data(size)
    fresh_release_state(data)
    return measure_release(size, facts, data, RELEASE_DATE, env)


def measure_release(size: str, facts: dict, data: Path, day: str, env: dict) -> dict:
    """The whole graph for release date `day` on the warehouse in `data`, then its floors."""
    load_before = os.getloadavg()[0]
    release, process_s, peak = run_child(["child-release", str(data), "--date", day], env)
    if not release["success"]:
        raise SystemExit(f"{size}: the release graph failed; see the child's log above")
    plain, _, plain_peak = run_child(["child-plain", str(data), "--date", day], env)
    # The floor counting distinct users per item by hash, as the bounding SQL keys them
    # (inexact if two users collide): the floor at its fastest, in a cold child of its own.
    hashed, _, _ = run_child(["child-plain-hashed", str(data), "--date", day], env)
    read, _, _ = run_child(["child-read-floor", str(data), "--date", day], env)
    dp_s = sum(release["steps"].get(s, 0.0) for s in DP_STEPS)
    return {
        "size": size,
        "events": facts["events"],
        "users": facts["users"],
        "generate_s": facts["generate_s"],
        "graph_s": release["graph_s"],
        "cpu_s": release["cpu_s"],
        # Other work on the machine stretches wall times: record how busy it was.
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "process_s": process_s,
        "peak_rss_gib": peak / 2**30,
        "peak_temp_gib": release["peak_temp_bytes"] / 2**30,
        "events_per_s": facts["events"] / release["graph_s"],
        "steps": release["steps"],
        "dp_step_s": dp_s,
        "plain_s": plain["plain_s"],
        "plain_peak_rss_gib": plain_peak / 2**30,
        "dp_over_plain": dp_s / plain["plain_s"],
        "bounding_sql_s": plain["bounding_sql_s"],
        "bounding_sql_over_plain": plain["bounding_sql_s"] / plain["plain_s"],
        "plain_hashed_s": hashed["plain_s"],
        "dp_over_plain_hashed": dp_s / hashed["plain_s"],
        "read_floor_s": read["read_floor_s"],
        "read_floor_files": read["read_floor_files"],
        "raw_events_over_read_floor": release["steps"]["raw_events"] / read["read_floor_s"],
    }


def measure_repeated(size: str, env: dict, repeats: int) -> dict:
    """`repeats` independent measurements of one size (each from a fresh warehouse): the row
    of the run with the median DP / plain (the upper one for an even count), with every
    run's ratio beside it and every run kept under "runs". On a shared machine one run's
    ratio moves by about ±0.05."""
    runs = [measure(size, env) for _ in range(repeats)]
    median = sorted(runs, key=lambda r: r["dp_over_plain"])[len(runs) // 2]
    return {**median, "dp_over_plain_runs": [r["dp_over_plain"] for r in runs], "runs": runs}


def measure_next_days(size: str, env: dict, next_days: int) -> dict:
    """The steady state: a fresh warehouse and ledger, the first release D (measured as
    `measure` does, floors included), then one new day of event files and the release of the
    next date, `next_days` times. The events folder only ever holds the files up to the date
    being released (hard links into the generated sample), as a daily delivery would."""
    source = data_dir_for(size, next_days)
    facts = ensure_data(size, next_days)
    data = source / "release"
    shutil.rmtree(data, ignore_errors=True)
    (data / "events").mkdir(parents=True)
    for name in ("catalog.csv", "opt_outs.csv"):
        shutil.copy(source / name, data / name)
    fresh_release_state(data)
    last = dt.date.fromisoformat(RELEASE_DATE)
    dates = [str(last - dt.timedelta(days=next_days - i)) for i in range(next_days + 1)]

    def deliver(day: str) -> list[str]:
        """Link the files up to `day` into the events folder; the paths there."""
        for path in sorted((source / "events").glob("events-*.parquet")):
            target = data / "events" / path.name
            if path.stem.removeprefix("events-") <= day and not target.exists():
                os.link(path, target)
        return sorted(str(p) for p in (data / "events").glob("events-*.parquet"))

    first_files = deliver(dates[0])
    facts = {**facts, "events": _count_events(first_files)}
    first = measure_release(size, facts, data, dates[0], env)
    first["warehouse_gib"] = _warehouse_bytes(data) / 2**30
    days = []
    for day in dates[1:]:
        deliver(day)
        release, process_s, peak = run_child(["child-release", str(data), "--date", day], env)
        if not release["success"]:
            raise SystemExit(f"{size}: the release of {day} failed; see the child's log above")
        days.append({
            "date": day,
            "graph_s": release["graph_s"],
            "cpu_s": release["cpu_s"],
            "process_s": process_s,
            "peak_rss_gib": peak / 2**30,
            "peak_temp_gib": release["peak_temp_bytes"] / 2**30,
            "warehouse_gib": _warehouse_bytes(data) / 2**30,
            "load_avg_1min": os.getloadavg()[0],
            "steps": release["steps"],
        })  # fmt: skip
        print(json.dumps(days[-1]), flush=True)
    median = statistics.median(d["graph_s"] for d in days)
    window_bytes = _window_bytes(data, dates[-1])
    return {
        "size": size,
        "dates": [dates[0], dates[-1]],
        "first": first,
        "days": days,
        "next_day_s": median,
        "next_over_first": median / first["graph_s"],
        "next_day_steps": {
            step: statistics.median(d["steps"].get(step, 0.0) for d in days)
            for step in first["steps"]
        },
        "next_day_peak_rss_gib": max(d["peak_rss_gib"] for d in days),
        "next_day_peak_temp_gib": max(d["peak_temp_gib"] for d in days),
        "warehouse_gib": days[-1]["warehouse_gib"],
        "ledger_gib": (data / "ledger.duckdb").stat().st_size / 2**30,
        "window_gib": window_bytes / 2**30,
        "disk_over_window": days[-1]["warehouse_gib"] * 2**30 / window_bytes,
    }


def _count_events(files: list[str]) -> int:
    import duckdb

    return duckdb.sql(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0]


def _warehouse_bytes(data: Path) -> int:
    """The warehouse file, its WAL and DuckDB's default spill folder beside it."""
    return sum(_dir_bytes(p) if p.is_dir() else p.stat().st_size
               for p in data.glob("warehouse.duckdb*"))  # fmt: skip


def _window_bytes(data: Path, day: str) -> int:
    """One window's validated events: the private.raw_events rows of release date `day`,
    copied alone into a fresh DuckDB file (the stored size, compression included)."""
    import duckdb

    target = data / "one_window.duckdb"
    target.unlink(missing_ok=True)
    con = duckdb.connect(str(target))
    con.execute(f"ATTACH '{data / 'warehouse.duckdb'}' AS wh (READ_ONLY)")
    con.execute(
        "CREATE TABLE raw_events AS SELECT * FROM wh.private.raw_events "
        f"WHERE release_date = DATE '{day}'"
    )
    con.execute("DETACH wh")
    con.execute("CHECKPOINT")
    con.close()
    size = target.stat().st_size
    target.unlink()
    return size


def machine(env: dict) -> str:
    """The line every results table opens with: DuckDB's limit and the machine."""
    return (
        f"DuckDB memory_limit={env['COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT']}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB."
    )


def markdown_next_days(rows: list[dict], env: dict) -> str:
    lines = [
        machine(env),
        "",
        "| events (first window's files) | release dates | first release (s) "
        "| peak RSS, first (GiB) | raw_events, first (s) | read + store floor (s) "
        "| raw_events / floor | next day, median (s) | next day, range (s) "
        "| next day / first | last day (s) | last day / first "
        "| peak RSS, next days (GiB) | peak spill (GiB) "
        "| warehouse after the first (GiB) | warehouse after the last (GiB) | one window (GiB) "
        "| warehouse after the last / window |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, times = r["first"], [d["graph_s"] for d in r["days"]]
        lines.append(
            f"| {f['events']:,} | {r['dates'][0]} .. {r['dates'][1]} | {f['graph_s']:.1f} | "
            f"{f['peak_rss_gib']:.2f} | {f['steps']['raw_events']:.1f} | "
            f"{f['read_floor_s']:.1f} | {f['raw_events_over_read_floor']:.1f} | "
            f"{r['next_day_s']:.1f} | {min(times):.1f}–{max(times):.1f} | "
            f"{r['next_over_first']:.2f} | {times[-1]:.1f} | {times[-1] / f['graph_s']:.2f} | "
            f"{r['next_day_peak_rss_gib']:.2f} | "
            f"{max(f['peak_temp_gib'], r['next_day_peak_temp_gib']):.2f} | "
            f"{f['warehouse_gib']:.3f} | {r['warehouse_gib']:.3f} | {r['window_gib']:.3f} | "
            f"{r['disk_over_window']:.1f} |"
        )
    header = "| asset | " + " | ".join(
        f"{r['size']} first | {r['size']} next day | {r['size']} last day" for r in rows
    )
    lines += ["", "Per-asset time (s); next day: the median over the next-day releases:", ""]
    lines += [header + " |", "|---|" + "---:|---:|---:|" * len(rows)]
    for step in rows[0]["first"]["steps"]:
        cells = [
            f"{r['first']['steps'].get(step, 0):.2f} | {r['next_day_steps'].get(step, 0):.2f} | "
            f"{r['days'][-1]['steps'].get(step, 0):.2f}"
            for r in rows
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        machine(env),
        "",
        "| events | users | whole graph (s) | CPU (s) | process (s) | peak RSS, tree (GiB) "
        "| events/s | DP release step (s) | plain DuckDB (s) | DP / plain "
        "| bounding SQL alone (s) | bounding SQL / plain | plain, hashed users (s) "
        "| DP / plain, hashed | read + store floor (s) | raw_events / floor "
        "| load (1 min) before/after | DP / plain, every run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['graph_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['process_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['events_per_s']:,.0f} | "
            f"{r['dp_step_s']:.1f} | {r['plain_s']:.1f} | {r['dp_over_plain']:.2f} | "
            f"{r['bounding_sql_s']:.1f} | {r['bounding_sql_over_plain']:.2f} | "
            f"{r['plain_hashed_s']:.1f} | {r['dp_over_plain_hashed']:.2f} | "
            f"{r['read_floor_s']:.1f} | {r['raw_events_over_read_floor']:.1f} | "
            f"{r['load_avg_1min'][0]:.1f} / {r['load_avg_1min'][1]:.1f} | "
            + " / ".join(f"{x:.2f}" for x in r["dp_over_plain_runs"])
            + " |"
        )
    if len(rows) > 1:
        lines.append("")
        for a, b in zip(rows, rows[1:], strict=False):
            lines.append(
                f"time({b['size']}) / time({a['size']}) = {b['graph_s'] / a['graph_s']:.1f}"
            )
    steps = list(rows[0]["steps"])
    header = "| asset | " + " | ".join(r["size"] for r in rows) + " |"
    lines += ["", "Per-asset time (s):", "", header, "|---|" + "---:|" * len(rows)]
    for step in steps:
        lines.append(
            f"| {step} | " + " | ".join(f"{r['steps'].get(step, 0):.2f}" for r in rows) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    events = [r["events"] for r in rows]
    ax1.loglog(events, [r["graph_s"] for r in rows], "o-", label="whole graph")
    ax1.loglog(events, [r["dp_step_s"] for r in rows], "s-", label="DP release step")
    ax1.loglog(events, [r["plain_s"] for r in rows], "^-", label="plain DuckDB (no DP)")
    ax1.set(xlabel="events", ylabel="seconds", title="Wall time")
    ax1.legend()
    ax2.semilogx(events, [r["peak_rss_gib"] for r in rows], "o-")
    ax2.axhline(6, color="grey", ls="--", label="6 GiB target")
    ax2.set(xlabel="events", ylabel="GiB", title="Peak RSS (process tree)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "mode",
        nargs="?",
        default="bench",
        choices=["bench", "child-release", "child-plain", "child-plain-hashed", "child-read-floor"],
    )
    parser.add_argument("data", nargs="?")
    parser.add_argument("--date", default=RELEASE_DATE, help="release date (child modes)")
    parser.add_argument("--sizes", nargs="+", default=list(USERS), choices=list(USERS))
    parser.add_argument(
        "--repeats", type=int, default=1, help="measurements per size; the median run is reported"
    )
    parser.add_argument(
        "--next-days",
        type=int,
        default=0,
        help="the steady state instead: release D, then N times one more day of files and the "
        "next date's release (results/next-day.* unless --name)",
    )
    parser.add_argument("--out")
    parser.add_argument("--name", help="results/<name>.{json,md,png}")
    args = parser.parse_args()
    if args.mode != "bench":
        children = {
            "child-release": child_release,
            "child-plain": child_plain,
            "child-plain-hashed": lambda data, day: child_plain(data, day, "hash(user_id)"),
            "child-read-floor": child_read_floor,
        }
        Path(args.out).write_text(json.dumps(children[args.mode](Path(args.data), args.date)))
        return 0
    name = args.name or ("next-day" if args.next_days else "scale")
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT", "4GB")
    env.setdefault("COHORT_PIPELINE_DUCKDB_TEMP_DIR", str(RESULTS / "duckdb_tmp"))
    rows = []
    for size in args.sizes:
        if args.next_days:
            row = measure_next_days(size, env, args.next_days)
        else:
            row = measure_repeated(size, env, args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
        # Written after every size: the 100M run is long and partial results still count.
        (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))
        if args.next_days:
            (RESULTS / f"{name}.md").write_text(markdown_next_days(rows, env))
        else:
            (RESULTS / f"{name}.md").write_text(markdown(rows, env))
            plot(rows, RESULTS / f"{name}.png")
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
