"""Peers side by side: the same cohort counts and means, same data, bounds, budget and split.

    .venv/bin/python benchmarks/compare_peers.py --size 10M --repeats 3

Two comparisons, each system in a fresh process per comparison:

- `events` (end to end): each system reads the window's event files and bounds per user
  itself, with the same bounds, as a user of that library would write it: ours with the
  project's bounding SQL in DuckDB and the release functions on its per-cohort sums, the
  peers in the dataframe engine they run on (pandas for PipelineDP's local backend, Polars
  for OpenDP, Spark for Tumult). Each peer's bounding is checked against ours on the exact
  per-cohort totals (column `bounding`), outside the timed runs.
- `rows`: every system reads the same per-user Parquet file, bounded by our SQL (one row per
  user: cohort_key, sessions in [0, 30], mean_duration_s in [0, 1800], converted in [0, 1]),
  so only the DP release is compared; that file's bounding is not timed.

Every system releases the same formulation (peers/common.py): one noisy count per cohort
(0.4 of the budget) shared by the three means, and the noisy sums of centred values (0.6),
over the public key set of 18 cohorts, at epsilon=1, delta=1e-7 (zCDP rho where a system
speaks zCDP, pure epsilon where it composes epsilons, as PipelineDP does). Our release runs
without k-coarsening here (every full key released, as the peers release them).

Each peer runs from its own virtual environment under benchmarks/ (see README.md); a peer
whose environment is missing or that fails is reported with its error. Writes
results/peers.json and results/peers.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import RELEASE_DATE, RESULTS, USERS, data_dir_for, ensure_data  # noqa: E402

from cohort_pipeline.policy import GROUPED_COLUMNS, load_policy  # noqa: E402
from cohort_pipeline.privacy.accounting import rho_from_epsilon  # noqa: E402
from cohort_pipeline.privacy.bounding import user_profiles_sql, window  # noqa: E402

EPSILON, DELTA = 1.0, 1e-7
SPLIT = {"count": 0.4, "sums": 0.6}  # the project's cohort_sizes / cohort_metrics ratio
STATS = ("users", "mean_duration_s", "converted", "sessions")
MEANS = STATS[1:]
MODES = {
    "events": "end to end: each system reads the window's event files and bounds per user",
    "rows": "per-user rows bounded by our SQL (untimed), the release alone",
}
# A cohort a system does not return scores this relative error for each of its statistics
# (that of releasing 0), and is counted in the `missing` column.
MISSING_ERROR = 1.0
SYSTEMS = [  # (name, interpreter, script, accounting: our row the ratio divides by)
    ("cohort_pipeline (zcdp)", Path(sys.executable), "cohort_pipeline_peer.py", "zcdp"),
    ("cohort_pipeline (basic)", Path(sys.executable), "cohort_pipeline_peer.py", "basic"),
    ("PipelineDP", HERE / ".venv-pipelinedp/bin/python", "pipelinedp_peer.py", "basic"),
    ("OpenDP Polars", HERE / ".venv-opendp-polars/bin/python", "opendp_polars_peer.py", "zcdp"),
    ("Tumult Analytics", HERE / ".venv-tumult/bin/python", "tumult_peer.py", "zcdp"),
]  # fmt: skip
OURS = {"zcdp": SYSTEMS[0][0], "basic": SYSTEMS[1][0]}


def window_files(data: Path, policy) -> tuple[list[str], dict]:
    """The event files of the release window (one per day) and the public bounding
    parameters every system's own bounding uses."""
    first, outcome_start, last = window(policy, dt.date.fromisoformat(RELEASE_DATE))
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    files = [str(data / "events" / f"events-{day}.parquet") for day in days]
    files = [f for f in files if Path(f).exists()]
    bounding = {
        "files": files,
        "start": f"{first}T00:00:00+00:00",
        "end": f"{last + dt.timedelta(days=1)}T00:00:00+00:00",
        "outcome_start": str(outcome_start),
        "max_sessions": policy.max_sessions,
        "duration": list(policy.session_duration_s),
        "dimensions": [
            {
                "name": d.name,
                "labels": list(d.labels),
                "quantity": d.quantity,
                "edges": list(d.edges),
                "none_label": d.none_label,
                "column": d.column,
                "groups": [[g, list(m)] for g, m in d.groups],
            }
            for d in policy.dimensions
        ],
        "column_values": {c: list(v) for c, v in GROUPED_COLUMNS.items()},
    }
    return files, bounding


def prepare(bounding: dict, policy, work: Path) -> dict:
    """Write the per-user input table; return the exact per-cohort totals (private truth,
    kept in results/ only to score the releases and check the peers' bounding)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"""CREATE TEMP TABLE events AS SELECT * FROM read_parquet({bounding["files"]})
                    WHERE event_time >= TIMESTAMPTZ '{bounding["start"]}'
                      AND event_time < TIMESTAMPTZ '{bounding["end"]}'""")
    sql = user_profiles_sql(policy, dt.date.fromisoformat(RELEASE_DATE), "events")
    con.execute(f"COPY ({sql}) TO '{work / 'profiles.parquet'}' (FORMAT parquet)")
    rows = con.execute(f"""
        SELECT cohort_key, count(*), sum(mean_duration_s), sum(converted), sum(sessions)
        FROM read_parquet('{work / "profiles.parquet"}') GROUP BY ALL""").fetchall()
    return {key: dict(zip(STATS, map(float, values), strict=True)) for key, *values in rows}


def relative_errors(release: dict, truth: dict) -> tuple[list[float], int]:
    """|noisy - exact| / exact for every cohort x statistic (means from the exact sums), and
    the number of cohorts the release lacks (scored MISSING_ERROR)."""
    errors, missing = [], 0
    for key, exact in truth.items():
        got = release.get(key)
        if got is None or any(got.get(stat) is None for stat in STATS):
            missing += 1
        for stat in STATS:
            value = exact[stat] / (exact["users"] if stat != "users" else 1.0)
            noisy = (got or {}).get(stat)
            if noisy is None or not math.isfinite(float(noisy)):
                errors.append((stat, MISSING_ERROR))
            elif value:
                errors.append((stat, abs(float(noisy) - value) / abs(value)))
    return errors, missing


def score(result: dict, truth: dict) -> dict:
    pooled = {stat: [] for stat in STATS}
    missing = 0
    for release in result["releases"]:
        errors, lacking = relative_errors(release, truth)
        missing += lacking
        for stat, error in errors:
            pooled[stat].append(error)
    everything = [e for errs in pooled.values() for e in errs]
    return {
        "time_s": statistics.median(result["times"]),
        "cold_s": result["times"][0],
        "median_rel_error": statistics.median(everything),
        "missing": missing,
        "released": len(truth) * len(result["releases"]),
        **{f"median_rel_error_{stat}": statistics.median(errs) for stat, errs in pooled.items()},
        "bounding": bounding_check(result.get("check"), truth),
    }


def bounding_check(check: dict | None, truth: dict) -> str:
    """Whether a system's own per-user bounding gives our exact per-cohort totals."""
    if check is None:
        return ""
    differ = [
        key
        for key in truth.keys() | check.keys()
        if any(
            not math.isclose(
                check.get(key, {}).get(s, 0.0),
                truth.get(key, {}).get(s, 0.0),
                rel_tol=1e-9,
                abs_tol=1e-6,
            )  # fmt: skip
            for s in STATS
        )
    ]
    return "same as ours" if not differ else f"differs in {len(differ)} cohorts"


def run_system(name: str, python: Path, script: str, spec: dict, work: Path) -> dict:
    if not python.exists():
        return {"system": name, "error": f"no environment at {python} (see benchmarks/README.md)"}
    slug = name.split(" (")[0].replace(" ", "_") + f"-{spec['accounting']}-{spec['mode']}"
    task_file, out = work / f"task-{slug}.json", work / f"out-{slug}.json"
    task_file.write_text(json.dumps({**spec, "out": str(out)}))
    # Run inside `work`: Spark-based peers leave a spark-warehouse/ folder where they start.
    proc = subprocess.run([str(python), str(HERE / "peers" / script), str(task_file)],
                          capture_output=True, text=True, cwd=work)  # fmt: skip
    if proc.returncode != 0:
        return {
            "system": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
        }
    return {**json.loads(out.read_text()), "system": name}


def markdown(size: str, users: int, cohorts: int, tables: dict, repeats: int) -> str:
    lines = [
        f"{size} events ({users:,} users), {cohorts} cohorts, epsilon={EPSILON}, delta={DELTA}"
        f" (rho={rho_from_epsilon(EPSILON, DELTA):.5f} for zCDP systems), split count "
        f"{SPLIT['count']} / sums {SPLIT['sums']} for every system, {repeats} repeats. "
        "time: median of the repeats; cold: the first repeat; setup: process start to the "
        "first run (imports, Spark's session). `ours faster by`: the system's time over our "
        "row under the same accounting (pure-epsilon PipelineDP over `cohort_pipeline "
        "(basic)`, zCDP systems over `cohort_pipeline (zcdp)`). Error: median over cohorts x "
        "statistics x repeats of |noisy - exact| / exact; a cohort a system does not return "
        f"scores {MISSING_ERROR} on each statistic and is counted under `missing` "
        "(cohort-runs missing / cohort-runs).",
    ]
    for mode, rows in tables.items():
        timed = {r["system"]: r for r in rows if "time_s" in r}
        lines += [
            "",
            f"### {mode}: {MODES[mode]}",
            "",
            "| system | version | time (s) | cold (s) | setup (s) | ours faster by | "
            "median rel. error | count | mean duration | conversion | sessions/user | "
            "missing | bounding | notes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['system']} |{' |' * 12} could not run: {r['error']} |")
                continue
            ours = timed.get(OURS[r["accounting"]])
            speedup = f"{r['time_s'] / ours['time_s']:.1f}x" if ours and ours is not r else ""
            errs = " | ".join(f"{r[f'median_rel_error_{s}']:.4f}" for s in STATS)
            lines.append(
                f"| {r['system']} | {r['version']} | {r['time_s']:.2f} | {r['cold_s']:.2f} "
                f"| {r['setup_s']:.1f} | {speedup} | {r['median_rel_error']:.4f} | {errs} "
                f"| {r['missing']}/{r['released']} | {r['bounding']} | {r['notes']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="10M", choices=list(USERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--systems", nargs="+", default=[s[0] for s in SYSTEMS],
                        choices=[s[0] for s in SYSTEMS])  # fmt: skip
    args = parser.parse_args()
    ensure_data(args.size)
    policy = load_policy(HERE.parent / "data" / "policy.yaml")
    work = RESULTS / "peers" / args.size
    work.mkdir(parents=True, exist_ok=True)
    _, bounding = window_files(data_dir_for(args.size), policy)
    truth = prepare(bounding, policy, work)
    rho = rho_from_epsilon(EPSILON, DELTA)
    spec = {
        "input": str(work / "profiles.parquet"),
        "bounding": bounding,
        "policy": str(HERE.parent / "data" / "policy.yaml"),
        "keys": policy.cohort_keys(),
        "bounds": {
            "mean_duration_s": list(policy.session_duration_s),
            "converted": [0, 1],
            "sessions": [0, policy.max_sessions],
        },  # fmt: skip
        "epsilon": EPSILON,
        "delta": DELTA,
        "rho": rho,
        "split": SPLIT,
        # A public bound on any cohort's size (the generator's user count), for OpenDP.
        "max_length": USERS[args.size],
        "repeats": args.repeats,
    }
    tables = {}
    for mode in args.modes:
        rows = []
        for name, python, script, accounting in SYSTEMS:
            if name not in args.systems:
                continue
            task = {**spec, "mode": mode, "accounting": accounting}
            result = run_system(name, python, script, task, work)
            row = {**result, **score(result, truth)} if "error" not in result else result
            row.update(mode=mode, accounting=accounting)
            for private in ("releases", "check"):
                row.pop(private, None)
            print(json.dumps(row), flush=True)
            rows.append(row)
        tables[mode] = rows
    (RESULTS / "peers.json").write_text(json.dumps(tables, indent=2))
    text = markdown(args.size, USERS[args.size], len(truth), tables, args.repeats)
    (RESULTS / "peers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
