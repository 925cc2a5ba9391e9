"""Peers side by side: the same cohort counts and means, same data, same bounds and budget.

    .venv/bin/python benchmarks/compare_peers.py --size 10M --repeats 5

Input for every system: the window's per-user table from privacy/bounding.py (one row per
user: cohort_key, sessions, mean_duration_s, converted), so the privacy unit (a user), the
value bounds and the public cohort key set are the same for all. Budget: the query gets
epsilon=1 at delta=1e-7 (as zCDP rho where a system speaks zCDP). Each peer runs from its own
virtual environment under benchmarks/ (see README.md); a peer whose environment is missing
or that fails is reported with its error. Writes results/peers.json and results/peers.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import RELEASE_DATE, RESULTS, USERS, data_dir_for, ensure_data  # noqa: E402

from cohort_pipeline.policy import load_policy  # noqa: E402
from cohort_pipeline.privacy.accounting import rho_from_epsilon  # noqa: E402
from cohort_pipeline.privacy.bounding import user_profiles_sql, window  # noqa: E402

EPSILON, DELTA = 1.0, 1e-7
STATS = ("users", "mean_duration_s", "converted", "sessions")
SYSTEMS = [  # (name, interpreter, script, task settings of its own)
    ("cohort_pipeline", Path(sys.executable), "cohort_pipeline_peer.py", {"composition": "zcdp"}),
    # Our release under the same accounting as PipelineDP's (pure epsilon, basic composition).
    ("cohort_pipeline-basic", Path(sys.executable), "cohort_pipeline_peer.py",
     {"composition": "basic"}),
    ("PipelineDP", HERE / ".venv-pipelinedp/bin/python", "pipelinedp_peer.py", {}),
    ("OpenDP Polars", HERE / ".venv-opendp-polars/bin/python", "opendp_polars_peer.py", {}),
    ("Tumult Analytics", HERE / ".venv-tumult/bin/python", "tumult_peer.py", {}),
]  # fmt: skip


def prepare(size: str, policy, work: Path) -> dict:
    """Write the per-user input table; return the exact per-cohort values (private truth,
    kept in results/ only to score the releases)."""
    data = data_dir_for(size)
    first, _, last = window(policy, dt.date.fromisoformat(RELEASE_DATE))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"""CREATE TEMP TABLE events AS
                    SELECT * FROM read_parquet('{data}/events/*.parquet')
                    WHERE event_time >= TIMESTAMPTZ '{first} 00:00:00+00'
                      AND event_time < TIMESTAMPTZ '{last + dt.timedelta(days=1)} 00:00:00+00'""")
    sql = user_profiles_sql(policy, dt.date.fromisoformat(RELEASE_DATE), "events")
    con.execute(f"COPY ({sql}) TO '{work / 'profiles.parquet'}' (FORMAT parquet)")
    rows = con.execute(f"""
        SELECT cohort_key, count(*), avg(mean_duration_s), avg(converted), avg(sessions)
        FROM read_parquet('{work / "profiles.parquet"}') GROUP BY ALL""").fetchall()
    return {key: dict(zip(STATS, values, strict=True)) for key, *values in rows}


def relative_errors(release: dict, truth: dict) -> dict[str, list[float]]:
    errors = {stat: [] for stat in STATS}
    for key, exact in truth.items():
        for stat in STATS:
            value = release.get(key, {}).get(stat)
            if value is not None and exact[stat]:
                errors[stat].append(abs(float(value) - exact[stat]) / abs(exact[stat]))
    return errors


def score(result: dict, truth: dict) -> dict:
    pooled = {stat: [] for stat in STATS}
    for release in result["releases"]:
        for stat, errs in relative_errors(release, truth).items():
            pooled[stat] += errs
    everything = [e for errs in pooled.values() for e in errs]
    return {
        "time_s": statistics.median(result["times"]),
        "median_rel_error": statistics.median(everything),
        **{
            f"median_rel_error_{stat}": statistics.median(errs)
            for stat, errs in pooled.items()
            if errs
        },
    }


def run_system(name: str, python: Path, script: str, spec: dict, work: Path) -> dict:
    if not python.exists():
        return {"system": name, "error": f"no environment at {python} (see benchmarks/README.md)"}
    task_file, out = work / f"task-{name}.json", work / f"out-{name}.json"
    task_file.write_text(json.dumps({**spec, "out": str(out)}))
    # Run inside `work`: Spark-based peers leave a spark-warehouse/ folder where they start.
    proc = subprocess.run([str(python), str(HERE / "peers" / script), str(task_file)],
                          capture_output=True, text=True, cwd=work)  # fmt: skip
    if proc.returncode != 0:
        return {
            "system": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
        }
    return json.loads(out.read_text())


def markdown(size: str, users: int, rows: list[dict], repeats: int) -> str:
    ours = next((r for r in rows if r["system"].startswith("cohort_pipeline") and "time_s" in r),
                None)  # fmt: skip
    lines = [
        f"{size} events ({users:,} users), {len(next(iter(rows))['truth_keys'])} cohorts, "
        f"epsilon={EPSILON}, delta={DELTA}, {repeats} repeats (time: median; error: median over "
        "cohorts x statistics x repeats of |noisy - exact| / exact).",
        "",
        "| system | version | time (s) | setup (s) | ours faster by | median rel. error | count | "
        "mean duration | conversion | sessions/user | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | | | | | | | | | | could not run: {r['error']} |")
            continue
        speedup = f"{r['time_s'] / ours['time_s']:.1f}x" if ours else ""
        errs = " | ".join(f"{r.get(f'median_rel_error_{s}', float('nan')):.4f}" for s in STATS)
        lines.append(
            f"| {r['system']} | {r['version']} | {r['time_s']:.2f} | {r['setup_s']:.1f} "
            f"| {speedup} | {r['median_rel_error']:.4f} | {errs} | {r['notes']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="10M", choices=list(USERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--systems", nargs="+", default=[s[0] for s in SYSTEMS],
                        choices=[s[0] for s in SYSTEMS])  # fmt: skip
    args = parser.parse_args()
    ensure_data(args.size)
    policy = load_policy(HERE.parent / "data" / "policy.yaml")
    work = RESULTS / "peers" / args.size
    work.mkdir(parents=True, exist_ok=True)
    truth = prepare(args.size, policy, work)
    spec = {
        "input": str(work / "profiles.parquet"),
        "policy": str(HERE.parent / "data" / "policy.yaml"),
        "keys": policy.cohort_keys(),
        "bounds": {
            "mean_duration_s": list(policy.session_duration_s),
            "converted": [0, 1],
            "sessions": [0, policy.max_sessions],
        },  # fmt: skip
        "epsilon": EPSILON,
        "delta": DELTA,
        "rho": rho_from_epsilon(EPSILON, DELTA),
        # A public bound on any cohort's size (the generator's user count), for OpenDP's means.
        "max_length": USERS[args.size],
        "repeats": args.repeats,
    }
    rows = []
    for name, python, script, settings in SYSTEMS:
        if name not in args.systems:
            continue
        result = run_system(name, python, script, {**spec, **settings}, work)
        row = {**result, **score(result, truth)} if "error" not in result else result
        row.pop("releases", None)
        row["truth_keys"] = sorted(truth)
        print(json.dumps({k: v for k, v in row.items() if k != "truth_keys"}), flush=True)
        rows.append(row)
    (RESULTS / "peers.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "peers.md").write_text(markdown(args.size, USERS[args.size], rows, args.repeats))
    print((RESULTS / "peers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
