"""Tumult Analytics on Spark local[2] (runs in benchmarks/.venv-tumult; Spark needs Java 17).

Events mode: Spark reads the window's event files and bounds per user with DataFrame
operations (one row per user, the same bounds as our SQL), as a Tumult user would prepare
the source table; Tumult's own truncation caps rows per user, it cannot derive a user's
cohort from the user's whole history. Rows mode: the per-user Parquet file from our SQL.

The release, in the shared formulation (common.py): one row per user, so `AddOneRow`
protects a user; over the public KeySet a count (0.4 of rho) and one sum per centred value
in [-1/2, 1/2] (0.2 of rho each: the same noise as one Gaussian vector at 0.6), Gaussian
noise (`mechanism="GAUSSIAN"`; Tumult's count under zCDP is its discrete Gaussian). Every
repeat builds a fresh Session (a Session's budget is spent once). The Spark session's start
is in `setup_s`; the first repeat (`cold`) pays the JVM's warm-up.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, centred, release_means, report, task, timed  # noqa: E402, I001

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
from pyspark.sql import SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402, N812
from tmlt.analytics import AddOneRow, KeySet, QueryBuilder, RhoZCDPBudget, Session  # noqa: E402


def _band(value, dim: dict):
    labels, edges = dim["labels"], dim["edges"]
    expr = F.lit(labels[len(edges)])
    for edge, label in reversed(list(zip(edges, labels, strict=False))):
        expr = F.when(value < edge, F.lit(label)).otherwise(expr)
    if dim["none_label"] is not None:
        expr = F.when(value.isNull(), F.lit(dim["none_label"])).otherwise(expr)
    return expr


def _group(value, dim: dict):
    expr = F.lit(None).cast("string")
    for group, members in reversed(dim["groups"]):
        expr = F.when(value.isin(members), F.lit(group)).otherwise(expr)
    return expr


def bound(spark, b: dict):
    """One row per user from the window's events, with the same bounds as our SQL."""
    lo, hi = b["duration"]
    outcome = F.to_timestamp(F.lit(b["outcome_start"] + " 00:00:00"))
    columns = sorted({d["column"] for d in b["dimensions"] if d["column"]})
    events = spark.read.parquet(*b["files"]).where(
        (F.col("event_time") >= F.to_timestamp(F.lit(b["start"][:19].replace("T", " "))))
        & (F.col("event_time") < F.to_timestamp(F.lit(b["end"][:19].replace("T", " "))))
    )
    sessions = events.groupBy("user_id", "session_id").agg(
        F.max("session_duration_s").alias("duration_s"),
        *(F.min_by(c, "event_time").alias(c) for c in columns),
    )
    per_user = sessions.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("session_count"),
        F.coalesce(F.avg("duration_s"), F.lit(float(lo))).alias("raw_mean"),
    )
    for c in columns:  # the value of most sessions, ties to the last name
        counts = sessions.groupBy("user_id", c).agg(F.count(F.lit(1)).alias("n"))
        order = Window.partitionBy("user_id").orderBy(F.desc("n"), F.desc(c))
        top = counts.withColumn("r", F.row_number().over(order)).where("r = 1")
        per_user = per_user.join(top.select("user_id", c), "user_id")
    purchases = (
        events.where(F.col("event_type") == "purchase")
        .groupBy("user_id")
        .agg(
            F.max(F.when(F.col("event_time") < outcome, F.col("event_time"))).alias("last"),
            F.max((F.col("event_time") >= outcome).cast("int")).alias("converted"),
        )
    )
    users = per_user.join(purchases, "user_id", "left").select(
        "*",
        F.datediff(F.to_date(F.lit(b["outcome_start"])), F.to_date("last"))
        .alias("days_since_purchase"),
        F.least(F.col("session_count"), F.lit(b["max_sessions"])).alias("sessions"),
        F.greatest(F.lit(float(lo)), F.least(F.lit(float(hi)), "raw_mean"))
        .alias("mean_duration_s"),
    ).withColumn("converted", F.coalesce("converted", F.lit(0)))  # fmt: skip
    labels = [
        _group(F.col(d["column"]), d) if d["column"] else _band(F.col(d["quantity"]), d)
        for d in b["dimensions"]
    ]
    return users.select(F.concat_ws("|", *labels).alias("cohort_key"), *MEANS)


def release(spec: dict, frame) -> dict:
    # Materialised once per run, as a Spark user would: Tumult evaluates each of the four
    # queries on the source's plan, which would otherwise re-run the bounding four times.
    frame = frame.select(
        "cohort_key",
        *(centred(F.col(m).cast("double"), *spec["bounds"][m]).alias(m) for m in MEANS),
    ).localCheckpoint()
    session = Session.from_dataframe(
        privacy_budget=RhoZCDPBudget(spec["rho"]),
        source_id="users",
        dataframe=frame,
        protected_change=AddOneRow(),
    )
    keys = KeySet.from_dict({"cohort_key": spec["keys"]})
    count_budget = RhoZCDPBudget(spec["rho"] * spec["split"]["count"])
    sum_budget = RhoZCDPBudget(spec["rho"] * spec["split"]["sums"] / len(MEANS))
    counts = session.evaluate(QueryBuilder("users").groupby(keys).count(), count_budget)
    n = {r["cohort_key"]: float(r["count"]) for r in counts.collect()}
    sums = {key: {} for key in spec["keys"]}
    for m in MEANS:
        query = QueryBuilder("users").groupby(keys).sum(m, low=-0.5, high=0.5, name="s",
                                                        mechanism="GAUSSIAN")  # fmt: skip
        for r in session.evaluate(query, sum_budget).collect():
            sums[r["cohort_key"]][m] = float(r["s"])
    return release_means(spec, n, sums)


def exact(frame) -> dict:
    rows = frame.groupBy("cohort_key").agg(
        F.count(F.lit(1)).cast("double").alias("users"),
        *(F.sum(m).cast("double").alias(m) for m in MEANS),
    )
    return {r["cohort_key"]: {k: r[k] for k in ("users", *MEANS)} for r in rows.collect()}


def main() -> None:
    spec = task()
    events = spec["mode"] == "events"
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    def frame():
        return bound(spark, spec["bounding"]) if events else spark.read.parquet(spec["input"])

    times, releases, setup_s = timed(lambda: release(spec, frame()), spec["repeats"])
    report(
        spec,
        "Tumult Analytics (Spark local[2])",
        f"tmlt.analytics {version('tmlt.analytics')}",
        times,
        releases,
        setup_s,
        notes="rho split 0.4 count / 0.2 per sum; Gaussian; Spark start in setup"
        + ("; per-user bounding in Spark" if events else ""),
        check=exact(frame()) if events else None,
    )


if __name__ == "__main__":
    main()
