"""Tumult Analytics on Spark local[2] (runs in benchmarks/.venv-tumult).

One row per user, so AddOneRow protects a user. Four queries (count and three averages over
the public key set) share the zCDP budget rho evenly. The Spark session's start is reported
separately as setup; every repeat builds a fresh Session (a Session's budget is spent once).
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402


def main() -> None:
    spec = task()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from tmlt.analytics import AddOneRow, KeySet, QueryBuilder, RhoZCDPBudget, Session

    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    setup_s = time.perf_counter() - t0
    keys = KeySet.from_dict({"cohort_key": spec["keys"]})
    share = RhoZCDPBudget(spec["rho"] / (1 + len(MEANS)))

    def run() -> dict:
        frame = spark.read.parquet(spec["input"]).select("cohort_key", *MEANS)
        session = Session.from_dataframe(
            privacy_budget=RhoZCDPBudget(spec["rho"]),
            source_id="profiles",
            dataframe=frame,
            protected_change=AddOneRow(),
        )
        out = {key: {} for key in spec["keys"]}
        for row in session.evaluate(
            QueryBuilder("profiles").groupby(keys).count(), share
        ).collect():
            out[row["cohort_key"]]["users"] = float(row["count"])
        for column in MEANS:
            lo, hi = spec["bounds"][column]
            query = (
                QueryBuilder("profiles").groupby(keys).average(column, low=lo, high=hi, name="mean")
            )
            for row in session.evaluate(query, share).collect():
                out[row["cohort_key"]][column] = float(row["mean"])
        return out

    times, releases = timed(run, spec["repeats"])
    report(
        spec,
        "Tumult Analytics (Spark local[2])",
        f"tmlt.analytics {version('tmlt.analytics')}",
        times,
        releases,
        setup_s=setup_s,
        notes="zCDP rho split evenly over 4 queries",
    )


if __name__ == "__main__":
    main()
