"""This project's release functions on the shared task (runs in the project's venv).

The query's budget is shared as cohort_sizes 0.4 (counts, which are also the means'
denominators) and cohort_metrics 0.6 (sums), and the mechanisms are the project's own
(`measurements.mechanisms`) under the task's composition: `zcdp` (the default policy's: Laplace
counts, Gaussian sums, shares of rho) or `basic` (pure-epsilon Laplace for both, shares of
epsilon, the accounting PipelineDP uses).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402

from cohort_pipeline.policy import load_policy  # noqa: E402
from cohort_pipeline.privacy.measurements import mechanisms  # noqa: E402
from cohort_pipeline.privacy.release import (  # noqa: E402
    release_cohort_metrics,
    release_cohort_sizes,
)

NAMES = {"mean_duration_s": "mean_session_duration_s", "converted": "conversion_rate",
         "sessions": "sessions_per_user"}  # fmt: skip


def main() -> None:
    spec = task()
    policy = replace(
        load_policy(spec["policy"]),
        epsilon_per_release=spec["epsilon"],
        delta=spec["delta"],
        composition=spec["composition"],
        split={"cohort_sizes": 0.4, "cohort_metrics": 0.6},
    )
    mechs = mechanisms(policy)
    sizes, metrics = mechs["cohort_sizes"], mechs["cohort_metrics"]

    def run() -> dict:
        # Per-user rows (users = 1), summed per key by the release functions themselves.
        profiles = pd.read_parquet(spec["input"]).assign(users=1.0)
        plan = release_cohort_sizes(profiles, policy, sizes)
        out = release_cohort_metrics(profiles, plan, policy, metrics, sizes)
        return {row["cohort_key"]: {"users": row["users"], **{m: row[NAMES[m]] for m in MEANS}}
                for _, row in out.iterrows()}  # fmt: skip

    times, releases = timed(run, spec["repeats"])
    budget = "rho" if spec["composition"] == "zcdp" else "epsilon (pure DP; delta unused)"
    notes = (
        f"{spec['composition']} composition: counts {sizes.name}, means {metrics.name} sums / "
        f"noisy counts; {budget} split 0.4/0.6"
    )
    name = f"cohort_pipeline ({spec['composition']})"
    report(spec, name, version("cohort_pipeline"), times, releases, notes=notes)


if __name__ == "__main__":
    main()
