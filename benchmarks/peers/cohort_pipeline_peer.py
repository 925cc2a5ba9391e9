"""This project's bounding SQL and release functions on the shared task (the project's venv).

Events mode: DuckDB reads the window's event files, `bounding.user_profiles_sql` bounds per
user and the `cohort_totals` query of `bounding.bounded_totals` sums per cohort key (as the
release's `user_profiles` step runs them); the release functions take those 18 rows. Rows
mode: the per-user Parquet file, summed per key by the release functions themselves.

The release: `release_cohort_sizes` (counts, the task's `count` share) and
`release_cohort_metrics` (centred sums over the noisy counts, the `sums` share), with the
project's mechanisms (`measurements.mechanisms`) under the task's accounting: `zcdp` (the
default policy's: Laplace counts, Gaussian sums, shares of rho) or `basic` (pure-epsilon
Laplace for both, shares of epsilon; PipelineDP's accounting). k-coarsening is off
(min_size -inf): every full key is released, as the peers release them.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402, I001

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402

from cohort_pipeline.policy import load_policy  # noqa: E402
from cohort_pipeline.privacy.bounding import bounded_totals  # noqa: E402
from cohort_pipeline.privacy.measurements import mechanisms  # noqa: E402
from cohort_pipeline.privacy.release import (  # noqa: E402
    release_cohort_metrics,
    release_cohort_sizes,
)

NAMES = {"mean_duration_s": "mean_session_duration_s", "converted": "conversion_rate",
         "sessions": "sessions_per_user"}  # fmt: skip
RELEASE_DATE = dt.date(2026, 11, 28)


def cohort_totals(policy, b: dict) -> pd.DataFrame:
    """Per cohort key: users and the sums of the bounded per-user values, from the events."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"""CREATE VIEW events AS SELECT * FROM read_parquet({b["files"]})
                    WHERE event_time >= TIMESTAMPTZ '{b["start"]}'
                      AND event_time < TIMESTAMPTZ '{b["end"]}'""")
    (_, profiles), (_, totals) = bounded_totals(policy, RELEASE_DATE, "events", "catalog")[:2]
    con.execute(f"CREATE TEMP TABLE user_profiles AS {profiles}")
    return con.execute(totals).df()


def main() -> None:
    spec = task()
    policy = replace(
        load_policy(spec["policy"]),
        epsilon_per_release=spec["epsilon"],
        delta=spec["delta"],
        composition=spec["accounting"],
        split={"cohort_sizes": spec["split"]["count"], "cohort_metrics": spec["split"]["sums"]},
        min_size=-math.inf,
    )
    mechs = mechanisms(policy)
    sizes, metrics = mechs["cohort_sizes"], mechs["cohort_metrics"]
    events = spec["mode"] == "events"

    def run() -> dict:
        if events:
            totals = cohort_totals(policy, spec["bounding"])
        else:  # per-user rows (users = 1)
            totals = pd.read_parquet(spec["input"]).assign(users=1.0)
        plan = release_cohort_sizes(totals, policy, sizes)
        out = release_cohort_metrics(totals, plan, policy, metrics, sizes)
        return {row["cohort_key"]: {"users": row["users"], **{m: row[NAMES[m]] for m in MEANS}}
                for _, row in out.iterrows()}  # fmt: skip

    times, releases, setup_s = timed(run, spec["repeats"])
    check = None
    if events:
        totals = cohort_totals(policy, spec["bounding"]).set_index("cohort_key")
        check = {key: row.to_dict() for key, row in totals.iterrows()}
    budget = "rho" if spec["accounting"] == "zcdp" else "epsilon (pure DP; delta unused)"
    notes = (
        f"counts {sizes.name}, centred sums {metrics.name}; {budget} split "
        f"{spec['split']['count']}/{spec['split']['sums']}"
        + ("; bounding SQL in DuckDB" if events else "")
    )
    name = f"cohort_pipeline ({spec['accounting']})"
    report(spec, name, version("cohort_pipeline"), times, releases, setup_s, notes, check)


if __name__ == "__main__":
    main()
