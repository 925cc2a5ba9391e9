"""OpenDP's Polars integration (runs in benchmarks/.venv-opendp-polars).

Events mode: Polars reads the window's event files and bounds per user (one row per user:
cohort key, sessions, mean duration, converted), as an OpenDP user would prepare the frame;
OpenDP's Context then gets one row per user (`contributions=1`). Rows mode: the per-user
Parquet file from our bounding SQL.

The release, in the shared formulation (common.py): one query over the public keys
(`invariant="keys"`): `dp.len()` per cohort and `dp.sum` of the three centred values, the
split set through the sums' scale (see `release`). Under rho OpenDP adds Gaussian noise to
all four (it has no Laplace count under zCDP; ours uses Laplace for the count).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, centred, release_means, report, task, timed  # noqa: E402, I001

import opendp.prelude as dp  # noqa: E402
import polars as pl  # noqa: E402

dp.enable_features("contrib")


def _band(value: pl.Expr, dim: dict) -> pl.Expr:
    labels, edges = dim["labels"], dim["edges"]
    expr = pl.lit(labels[len(edges)])
    for edge, label in reversed(list(zip(edges, labels, strict=False))):
        expr = pl.when(value < edge).then(pl.lit(label)).otherwise(expr)
    if dim["none_label"] is not None:
        expr = pl.when(value.is_null()).then(pl.lit(dim["none_label"])).otherwise(expr)
    return expr


def _group(value: pl.Expr, dim: dict) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for group, members in reversed(dim["groups"]):
        expr = pl.when(value.is_in(members)).then(pl.lit(group)).otherwise(expr)
    return expr


def _most_sessions(column: str, values: list[str]) -> pl.Expr:
    # The value of most of a user's sessions, ties to the last name (as the bounding SQL).
    best, best_n = pl.lit(None, dtype=pl.String), pl.lit(-1, dtype=pl.Int64)
    for value in sorted(values):
        n = (pl.col(column) == value).sum().cast(pl.Int64)
        best = pl.when(n >= best_n).then(pl.lit(value)).otherwise(best)
        best_n = pl.when(n >= best_n).then(n).otherwise(best_n)
    return best.alias(column)


def bound(b: dict) -> pl.LazyFrame:
    """One row per user from the window's events, with the same bounds as our SQL."""
    start, end = (dt.datetime.fromisoformat(b[k]) for k in ("start", "end"))
    outcome = dt.datetime.fromisoformat(b["outcome_start"] + "T00:00:00+00:00")
    lo, hi = b["duration"]
    columns = sorted({d["column"] for d in b["dimensions"] if d["column"]})
    events = pl.scan_parquet(b["files"]).filter(
        (pl.col("event_time") >= start) & (pl.col("event_time") < end)
    )
    sessions = events.group_by("user_id", "session_id").agg(
        pl.col("session_duration_s").max().alias("duration_s"),
        *(pl.col(c).sort_by("event_time").first() for c in columns),
    )
    per_user = sessions.group_by("user_id").agg(
        pl.len().alias("session_count"),
        pl.col("duration_s").mean().fill_null(lo).alias("raw_mean"),
        *(_most_sessions(c, b["column_values"][c]) for c in columns),
    )
    purchases = (
        events.filter(pl.col("event_type") == "purchase")
        .group_by("user_id")
        .agg(
            pl.col("event_time").filter(pl.col("event_time") < outcome).max().alias("last"),
            (pl.col("event_time") >= outcome).any().alias("converted"),
        )
    )
    users = per_user.join(purchases, on="user_id", how="left").with_columns(
        (pl.lit(outcome.date()) - pl.col("last").dt.date()).dt.total_days()
        .alias("days_since_purchase"),
        pl.col("session_count").clip(upper_bound=b["max_sessions"]).alias("sessions"),
        pl.col("raw_mean").clip(lo, hi).alias("mean_duration_s"),
        pl.col("converted").fill_null(False).cast(pl.Int32),
    )  # fmt: skip
    labels = [
        _group(pl.col(d["column"]), d) if d["column"] else _band(pl.col(d["quantity"]), d)
        for d in b["dimensions"]
    ]
    return users.select(pl.concat_str(labels, separator="|").alias("cohort_key"), *MEANS)


def release(spec: dict, frame: pl.LazyFrame) -> dict:
    # One query, so OpenDP calibrates one noise scale for the count and the three sums (its
    # calibration search costs seconds per query, whatever the data size). With one scale a
    # statistic's share of rho is proportional to its squared sensitivity: the centred values
    # are multiplied by c (sensitivity c/2 each, the sums divided by c after the release)
    # where 1 / (1 + 3 c^2 / 4) is the count's share of the split.
    share = spec["split"]["count"]
    c = math.sqrt(4 * (1 - share) / (3 * share))
    frame = frame.select(
        "cohort_key",
        *((c * centred(pl.col(m).cast(pl.Float64), *spec["bounds"][m])).alias(m) for m in MEANS),
    ).collect()  # OpenDP reads a frame, not the plan that bounded it
    context = dp.Context.compositor(
        data=frame.lazy(),
        privacy_unit=dp.unit_of(contributions=1),  # one row per user
        privacy_loss=dp.loss_of(rho=spec["rho"]),
        split_evenly_over=1,
        margins=[
            dp.polars.Margin(
                by=["cohort_key"],
                invariant="keys",
                max_length=spec["max_length"],
                max_groups=len(spec["keys"]),
            )
        ],
    )
    query = (
        context.query()
        .group_by("cohort_key")
        .agg(
            dp.len(signed=True).alias("users"),
            *(pl.col(m).fill_null(0.0).dp.sum((-c / 2, c / 2)) for m in MEANS),
        )
    )
    rows = list(query.release().collect().iter_rows(named=True))
    n = {r["cohort_key"]: r["users"] for r in rows}
    s = {r["cohort_key"]: {m: r[m] / c for m in MEANS} for r in rows}
    return release_means(spec, n, s)


def exact(frame: pl.LazyFrame) -> dict:
    totals = frame.group_by("cohort_key").agg(
        pl.len().alias("users"), *(pl.col(c).sum() for c in MEANS)
    )
    return {r.pop("cohort_key"): r for r in totals.collect().iter_rows(named=True)}


def main() -> None:
    spec = task()
    events = spec["mode"] == "events"

    def frame() -> pl.LazyFrame:
        return bound(spec["bounding"]) if events else pl.scan_parquet(spec["input"])

    times, releases, setup_s = timed(lambda: release(spec, frame()), spec["repeats"])
    report(
        spec,
        "OpenDP Polars",
        f"opendp {version('opendp')}, polars {version('polars')}",
        times,
        releases,
        setup_s,
        notes="rho split 0.4/0.6 in one query; Gaussian count and sums; keys public"
        + ("; per-user bounding in Polars" if events else ""),
        check=exact(frame()) if events else None,
    )


if __name__ == "__main__":
    main()
