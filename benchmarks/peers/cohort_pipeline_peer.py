"""This project's release functions on the shared task (runs in the project's venv).

The query's budget rho is shared as cohort_sizes 0.4 (Laplace counts, which are also the
means' denominators) and cohort_metrics 0.6 (Gaussian sums), as the policy's split does.
"""

from __future__ import annotations

import math
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402

from cohort_pipeline.policy import load_policy  # noqa: E402
from cohort_pipeline.privacy.mechanisms import gaussian, laplace  # noqa: E402
from cohort_pipeline.privacy.release import (  # noqa: E402
    METRICS_SENSITIVITY,
    release_cohort_metrics,
    release_cohort_sizes,
)

NAMES = {"mean_duration_s": "mean_session_duration_s", "converted": "conversion_rate",
         "sessions": "sessions_per_user"}  # fmt: skip


def main() -> None:
    spec = task()
    policy = load_policy(spec["policy"])
    rho = spec["rho"]
    sizes = laplace(1.0, math.sqrt(2.0 * 0.4 * rho))
    metrics = gaussian(METRICS_SENSITIVITY, 0.6 * rho, spec["delta"])

    def run() -> dict:
        profiles = pd.read_parquet(spec["input"])
        plan = release_cohort_sizes(profiles[["user_id", "cohort_key"]], policy, sizes)
        out = release_cohort_metrics(profiles, plan, policy, metrics)
        return {row["cohort_key"]: {"users": row["users"], **{m: row[NAMES[m]] for m in MEANS}}
                for _, row in out.iterrows()}  # fmt: skip

    times, releases = timed(run, spec["repeats"])
    notes = "counts: Laplace; means: Gaussian sums / noisy counts; rho split 0.4/0.6"
    report(spec, "cohort_pipeline", version("cohort_pipeline"), times, releases, notes=notes)


if __name__ == "__main__":
    main()
