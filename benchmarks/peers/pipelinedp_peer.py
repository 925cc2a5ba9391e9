"""PipelineDP, local backend (runs in benchmarks/.venv-pipelinedp).

Events mode: pandas (the local backend's natural companion) reads the window's event files
and bounds per user, one row per user with the same bounds as our SQL. PipelineDP's own
contribution bounding caps rows per (user, partition); it cannot derive a user's cohort from
the user's whole history, so that step is the dataframe's in any case. Rows mode: the
per-user Parquet file from our bounding SQL.

The release, in the shared formulation (common.py), with the rows already one per user and
already in the public partitions (`contribution_bounds_already_enforced`,
`public_partitions_already_filtered`): one COUNT aggregation (budget weight 0.4) and one SUM
per centred value in [-1/2, 1/2] (weight 0.2 each: the same Laplace noise as ours, L1
sensitivity 3/2 at 0.6 epsilon). VECTOR_SUM would say it in one aggregation, but 0.3.1 fails
on public partitions (the empty partitions' accumulator is None in `_clip_vector`). PipelineDP's accountants compose (epsilon, delta) basically
and its Laplace noise is pure DP: epsilon = 1, delta unused, as our `basic` row.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, centred, release_means, report, task, timed  # noqa: E402, I001

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pipeline_dp  # noqa: E402

COLUMNS = ["user_id", "event_time", "session_id", "event_type", "device_type",
           "session_duration_s"]  # fmt: skip


def _band(value: pd.Series, dim: dict) -> np.ndarray:
    labels, edges = dim["labels"], dim["edges"]
    conditions = [value < edge for edge in edges]
    out = np.select(conditions, labels[: len(edges)], default=labels[len(edges)])
    if dim["none_label"] is not None:
        out = np.where(value.isna(), dim["none_label"], out)
    return out


def _group(value: pd.Series, dim: dict) -> pd.Series:
    return value.map({m: group for group, members in dim["groups"] for m in members})


def bound(b: dict) -> pd.DataFrame:
    """One row per user from the window's events, with the same bounds as our SQL."""
    start, end = (pd.Timestamp(b[k]) for k in ("start", "end"))
    outcome = pd.Timestamp(b["outcome_start"] + "T00:00:00+00:00")
    lo, hi = b["duration"]
    columns = sorted({d["column"] for d in b["dimensions"] if d["column"]})
    events = pd.concat([pd.read_parquet(f, columns=COLUMNS) for f in b["files"]])
    events = events[(events["event_time"] >= start) & (events["event_time"] < end)]
    events = events.reset_index(drop=True)
    by_session = events.groupby(["user_id", "session_id"], sort=False, dropna=False)
    sessions = by_session.agg(duration_s=("session_duration_s", "max"),
                              first=("event_time", "idxmin")).reset_index()  # fmt: skip
    for c in columns:  # the session's value at its first event
        sessions[c] = events[c].to_numpy()[sessions["first"].to_numpy()]
    by_user = sessions.groupby("user_id", sort=False)
    users = by_user.agg(
        session_count=("duration_s", "size"), raw_mean=("duration_s", "mean")
    ).fillna({"raw_mean": lo})
    for c in columns:  # the value of most sessions, ties to the last name
        counts = sessions.groupby(["user_id", c]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=sorted(b["column_values"][c], reverse=True), fill_value=0)
        users[c] = counts.idxmax(axis=1)
    purchases = events[events["event_type"] == "purchase"]
    before = purchases[purchases["event_time"] < outcome].groupby("user_id")["event_time"].max()
    users["days_since_purchase"] = (outcome.normalize() - before.dt.floor("D")).dt.days
    converted = purchases.loc[purchases["event_time"] >= outcome, "user_id"].unique()
    users["converted"] = users.index.isin(converted).astype(int)
    users["sessions"] = users["session_count"].clip(upper=b["max_sessions"])
    users["mean_duration_s"] = users["raw_mean"].clip(lo, hi)
    labels = [
        _group(users[d["column"]], d) if d["column"] else _band(users[d["quantity"]], d)
        for d in b["dimensions"]
    ]
    key = pd.Series(labels[0], index=users.index).astype(str)
    for label in labels[1:]:
        key = key + "|" + pd.Series(label, index=users.index).astype(str)
    return users.assign(cohort_key=key)[["cohort_key", *MEANS]].reset_index(drop=True)


def release(spec: dict, frame: pd.DataFrame) -> dict:
    vectors = np.column_stack([centred(frame[m].to_numpy(float), *spec["bounds"][m])
                               for m in MEANS])  # fmt: skip
    rows = list(zip(frame["cohort_key"], vectors, strict=True))
    accountant = pipeline_dp.NaiveBudgetAccountant(
        total_epsilon=spec["epsilon"], total_delta=spec["delta"]
    )
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    common = dict(
        noise_kind=pipeline_dp.NoiseKind.LAPLACE,
        max_partitions_contributed=1,
        max_contributions_per_partition=1,
        contribution_bounds_already_enforced=True,
        public_partitions_already_filtered=True,
    )
    extract = pipeline_dp.DataExtractors(
        partition_extractor=lambda r: r[0], value_extractor=lambda r: r[1]
    )
    counts = engine.aggregate(
        rows,
        pipeline_dp.AggregateParams(
            metrics=[pipeline_dp.Metrics.COUNT], budget_weight=spec["split"]["count"], **common
        ),
        extract,
        public_partitions=spec["keys"],
    )
    sums = {
        m: engine.aggregate(
            rows,
            pipeline_dp.AggregateParams(
                metrics=[pipeline_dp.Metrics.SUM],
                budget_weight=spec["split"]["sums"] / len(MEANS),
                min_value=-0.5,
                max_value=0.5,
                **common,
            ),
            pipeline_dp.DataExtractors(
                partition_extractor=lambda r: r[0], value_extractor=lambda r, j=j: r[1][j]
            ),
            public_partitions=spec["keys"],
        )
        for j, m in enumerate(MEANS)
    }
    accountant.compute_budgets()
    n = {key: m.count for key, m in counts}
    s = {key: {} for key in spec["keys"]}
    for m, result in sums.items():
        for key, metrics in result:
            s[key][m] = metrics.sum
    return release_means(spec, n, s)


def exact(frame: pd.DataFrame) -> dict:
    totals = frame.groupby("cohort_key")[list(MEANS)].sum().astype(float)
    totals.insert(0, "users", frame.groupby("cohort_key").size().astype(float))
    return {key: row.to_dict() for key, row in totals.iterrows()}


def main() -> None:
    spec = task()
    events = spec["mode"] == "events"

    def frame() -> pd.DataFrame:
        return bound(spec["bounding"]) if events else pd.read_parquet(spec["input"])

    times, releases, setup_s = timed(lambda: release(spec, frame()), spec["repeats"])
    report(
        spec,
        "PipelineDP (local backend)",
        version("pipeline-dp"),
        times,
        releases,
        setup_s,
        notes="Laplace, pure epsilon (delta unused), weights 0.4/0.6; bounds already enforced,"
        " partitions already filtered" + ("; per-user bounding in pandas" if events else ""),
        check=exact(frame()) if events else None,
    )


if __name__ == "__main__":
    main()
