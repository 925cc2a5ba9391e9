"""Cohort dimensions: the bounding SQL places each user in one cohort as the policy says.

The default policy's assignments are pinned against an independent pandas reading of its
three dimensions, on generated events plus users planted on every band edge; its public key
set is pinned literally (its order is the order of every released vector).
"""

from __future__ import annotations

import bisect
import tempfile
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pytest
import yaml

from cohort_pipeline.engines import DuckDBEngine
from cohort_pipeline.logic.reports import notice_markdown
from cohort_pipeline.policy import (
    ALL,
    GROUPED_COLUMNS,
    QUANTITIES,
    Dimension,
    Policy,
    load_policy,
    parse_policy,
)
from cohort_pipeline.privacy.bounding import window
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.release import (
    release_cohort_metrics,
    release_cohort_sizes,
)
from cohort_pipeline.tools.end_to_end_audit import Recorder
from cohort_pipeline.tools.generate import generate
from cohort_pipeline_tests.conftest import BOUNDED, END, POLICY

DEFAULT = load_policy(POLICY)


def bounded(policy: Policy, events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The bounded tables the DuckDB engine stores for `events` (catalog: every item)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events_df", events)
    con.execute(
        "CREATE TABLE events AS SELECT * REPLACE (CAST(event_time AS TIMESTAMPTZ) AS event_time,"
        " CAST(session_duration_s AS DOUBLE) AS session_duration_s) FROM events_df"
    )
    con.execute("CREATE TABLE catalog AS SELECT DISTINCT item_id, 'c' AS category FROM events")
    with DuckDBEngine().bounded_tables(con, policy, END, "events", "catalog") as tables:
        return {name.removeprefix("private."): con.execute(sql).df() for name, sql in tables}


def planted_user(user_id: str, sessions: list[tuple[int, str, float | None, str]]):
    """Event rows of one user: per session (day offset from the window's first day, device,
    duration, event type of its one event)."""
    first, _, _ = window(DEFAULT, END)
    return [
        {
            "user_id": user_id,
            "event_time": datetime.combine(first + timedelta(days=day), datetime.min.time(), UTC)
            + timedelta(minutes=s),
            "session_id": f"{user_id}-{s}",
            "event_type": event_type,
            "item_id": "i1",
            "device_type": device,
            "session_duration_s": duration,
        }
        for s, (day, device, duration, event_type) in enumerate(sessions)
    ]


def planted_users() -> pd.DataFrame:
    """Users on the band edges of the default policy (4 and 12 sessions, a purchase 7, 8 or
    9 days before the outcome period), on device ties, and with no duration at all."""
    _, outcome_start, _ = window(DEFAULT, END)
    first, _, _ = window(DEFAULT, END)
    before_outcome = (outcome_start - first).days
    rows = []
    for n in (3, 4, 11, 12, 13):
        rows += planted_user(f"sessions-{n}", [(0, "desktop", 60.0, "view")] * n)
    for days in (1, 7, 8, 9):
        purchase = (before_outcome - days, "mobile", 30.0, "purchase")
        rows += planted_user(f"recency-{days}", [purchase, (0, "mobile", None, "view")])
    rows += planted_user("converted", [(before_outcome, "tablet", 5000.0, "purchase")])
    tie = [(0, "desktop", None, "view"), (1, "mobile", None, "view")]
    rows += planted_user("tie-desktop-mobile", tie)
    rows += planted_user(
        "tie-other-tablet", [(0, "other", 1.0, "view"), (1, "tablet", 2.0, "view")]
    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    """A generated window (1,000 users) and the planted users."""
    first, _, last = window(DEFAULT, END)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, users=1_000, days=DEFAULT.lookback_days, end_date=END, seed=3)
        generated = duckdb.sql(
            f"SELECT * EXCLUDE (revenue) FROM read_parquet('{tmp}/events/*.parquet')"
            f" WHERE event_time >= TIMESTAMPTZ '{first} 00:00:00+00'"
            f" AND event_time < TIMESTAMPTZ '{last + timedelta(days=1)} 00:00:00+00'"
        ).df()
    return pd.concat([generated, planted_users()], ignore_index=True)


def reference_quantities(policy: Policy, events: pd.DataFrame) -> pd.DataFrame:
    """Per user, in pandas: session_count, days_since_purchase (from the last purchase before
    the outcome period to its start; NaN without one), mean_duration_s (clamped),
    device_type (of most of their sessions, a session's being its first event's; ties to the
    last name), sessions (clamped) and converted."""
    _, outcome_start, _ = window(policy, END)
    start = pd.Timestamp(outcome_start, tz="UTC")
    ordered = events.sort_values("event_time")
    sessions = ordered.groupby(["user_id", "session_id"]).agg(
        duration=("session_duration_s", "max"), device=("device_type", "first")
    )
    users = sessions.groupby("user_id").agg(
        session_count=("duration", "size"), mean=("duration", "mean")
    )
    per_device = sessions.groupby(["user_id", "device"]).size().reset_index(name="k")
    most = per_device.sort_values(["user_id", "k", "device"]).groupby("user_id").last()
    users["device_type"] = most["device"]
    buys = events[events["event_type"] == "purchase"]
    users["days_since_purchase"] = (
        buys[buys["event_time"] < start]
        .groupby("user_id")["event_time"]
        .max()
        .map(lambda t: (outcome_start - t.date()).days)
    )
    lo, hi = policy.session_duration_s
    users["mean_duration_s"] = users["mean"].fillna(lo).clip(lo, hi)
    users["sessions"] = users["session_count"].clip(upper=policy.max_sessions)
    users["converted"] = users.index.isin(buys.loc[buys["event_time"] >= start, "user_id"])
    return users.drop(columns="mean").astype({"converted": int})


@pytest.fixture(scope="module")
def quantities(events) -> pd.DataFrame:
    return reference_quantities(DEFAULT, events)


def reference_profiles(users: pd.DataFrame) -> pd.DataFrame:
    """The default policy's three dimensions, read in pandas from reference_quantities."""
    engagement = users["session_count"].map(
        lambda n: ("low", "mid", "high")[bisect.bisect_right((4, 12), n)]
    )
    recency = users["days_since_purchase"].map(
        lambda d: "none" if pd.isna(d) else ("recent", "lapsed")[bisect.bisect_right((8,), d)]
    )
    device = users["device_type"].map(
        {"mobile": "mobile", "tablet": "mobile", "desktop": "desktop", "other": "desktop"}
    )
    return pd.DataFrame(
        {
            "user_id": users.index,
            "cohort_key": engagement + "|" + recency + "|" + device,
            "engagement": engagement,
            "recency": recency,
            "device": device,
            "sessions": users["sessions"],
            "mean_duration_s": users["mean_duration_s"],
            "converted": users["converted"],
        }
    ).reset_index(drop=True)


def test_the_default_policy_assigns_users_as_its_three_dimensions_say(events, quantities):
    profiles = bounded(DEFAULT, events)["user_profiles"]
    expected = reference_profiles(quantities)
    assert len(expected) > 900 and expected["cohort_key"].nunique() > 12
    got = profiles[expected.columns].sort_values("user_id").reset_index(drop=True)
    want = expected.sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)
    planted = got.set_index("user_id")["cohort_key"]
    assert planted["sessions-3"] == "low|none|desktop"
    assert planted["sessions-4"] == "mid|none|desktop"
    assert planted["sessions-12"] == "high|none|desktop"
    assert planted["recency-7"] == "low|recent|mobile"
    assert planted["recency-8"] == "low|lapsed|mobile"
    assert planted["tie-desktop-mobile"].endswith("|mobile")
    assert planted["tie-other-tablet"].endswith("|mobile")


def test_the_default_public_key_set_is_pinned():
    assert DEFAULT.cohort_keys() == [
        f"{e}|{r}|{d}"
        for e in ("low", "mid", "high")
        for r in ("recent", "lapsed", "none")
        for d in ("mobile", "desktop")
    ]
    assert [d.name for d in DEFAULT.dimensions] == ["engagement", "recency", "device"]


def with_dimension(name: str, spec: dict) -> Policy:
    """The default policy with one more dimension, last in the key and coarsened first."""
    raw = yaml.safe_load(POLICY.read_text())
    raw["cohorts"]["dimensions"][name] = spec
    raw["cohorts"]["coarsening_order"].insert(0, name)
    return parse_policy(raw)


def reference_label(dimension: Dimension, value) -> str:
    if dimension.column:
        return next(g for g, members in dimension.groups if value in members)
    if pd.isna(value):
        return dimension.none_label
    return dimension.labels[bisect.bisect_right(dimension.edges, value)]


NEW_DIMENSIONS = {
    "session_count": {
        "quantity": "session_count",
        "edges": [2, 6],
        "labels": ["one", "few", "many"],
    },
    "days_since_purchase": {
        "quantity": "days_since_purchase",
        "edges": [3],
        "labels": ["days", "weeks"],
        "none_label": "never",
    },
    "mean_duration_s": {
        "quantity": "mean_duration_s",
        "edges": [60, 600],
        "labels": ["short", "medium", "long"],
    },
    "device_type": {
        "column": "device_type",
        "groups": {"phone": ["mobile"], "tablet": ["tablet"], "computer": ["desktop", "other"]},
    },
}


def test_every_quantity_and_column_a_dimension_may_read_is_tried():
    assert set(NEW_DIMENSIONS) == set(QUANTITIES) | set(GROUPED_COLUMNS)


@pytest.mark.parametrize("source", sorted(NEW_DIMENSIONS))
def test_a_dimension_added_to_the_policy_alone_splits_every_cohort(events, quantities, source):
    """A policy entry is all a new dimension takes: the key set gains its labels, each user
    gets the label of their own value, and the other labels do not move."""
    policy = with_dimension("extra", NEW_DIMENSIONS[source])
    extra = policy.dimensions[-1]
    assert policy.cohort_keys() == [
        f"{key}|{label}" for key in DEFAULT.cohort_keys() for label in extra.labels
    ]
    profiles = bounded(policy, events)["user_profiles"].set_index("user_id").sort_index()
    want = quantities.sort_index()[source].map(lambda v: reference_label(extra, v))
    pd.testing.assert_series_equal(profiles["extra"], want, check_names=False)
    assert want.nunique() == len(extra.labels)  # the events reach every label
    default = reference_profiles(quantities).set_index("user_id").sort_index()
    assert (profiles["cohort_key"] == default["cohort_key"] + "|" + want).all()


def test_the_new_keys_reach_the_released_cohort_sizes(events):
    """The released sizes cover the extended public key set: the mechanism sees one count per
    new key, each user counted once; every new key is in exactly one released row."""
    policy = with_dimension("duration", NEW_DIMENSIONS["mean_duration_s"])
    tables = bounded(policy, events)
    recorder = Recorder(mechanisms(policy)["cohort_sizes"])
    sizes = release_cohort_sizes(tables["cohort_totals"], policy, recorder)
    counts = tables["user_profiles"]["cohort_key"].value_counts()
    [exact] = recorder.inputs
    assert list(exact) == [counts.get(key, 0) for key in policy.cohort_keys()]
    assert exact.sum() == len(tables["user_profiles"])
    members = [m for row in sizes["members"] for m in row.split(";")]
    assert sorted(members) == sorted(policy.cohort_keys())
    assert "duration" in sizes.columns
    assert {"short", "medium", "long", ALL} >= set(sizes["duration"])


def test_a_dimension_moves_a_user_between_cohorts_never_into_two(events):
    """The dimension changes which cohort a user is in, not how many: removing any planted
    user moves the sizes by exactly 1 (L1) and every metric within its sensitivity."""
    policy = with_dimension("duration", NEW_DIMENSIONS["mean_duration_s"])
    mechs = mechanisms(policy)
    full = bounded(policy, events)
    # A public plan for D and its neighbours alike (here from exact counts: test only).
    plan = release_cohort_sizes(full["cohort_totals"], policy, Recorder(mechs["cohort_sizes"]))

    def vectors(tables):
        sizes, metrics = Recorder(mechs["cohort_sizes"]), Recorder(mechs["cohort_metrics"])
        release_cohort_sizes(tables["cohort_totals"], policy, sizes)
        release_cohort_metrics(
            tables["cohort_totals"], plan, policy, metrics, mechs["cohort_sizes"]
        )
        return sizes, metrics

    before = vectors(full)
    for user in ("sessions-13", "recency-8", "converted", "tie-other-tablet"):
        after = vectors(bounded(policy, events[events["user_id"] != user]))
        (sizes, metrics), (sizes_after, metrics_after) = before, after
        assert sizes.norm(sizes.inputs[0] - sizes_after.inputs[0]) == 1.0
        distance = metrics.norm(metrics.inputs[0] - metrics_after.inputs[0])
        assert distance <= metrics.sensitivity * (1 + 1e-9)


@pytest.mark.parametrize("source", sorted(NEW_DIMENSIONS))
def test_the_notice_describes_a_new_dimension(source):
    policy = with_dimension("extra", NEW_DIMENSIONS[source])
    lines = notice_markdown(policy).splitlines()
    [at] = [i for i, x in enumerate(lines) if x.endswith("exactly one cohort by four traits:")]
    line = [x for x in lines[at + 1 :] if x][3]  # after the default policy's three
    assert all(label in line for label in policy.dimensions[-1].labels), line
    if source == "mean_duration_s":
        assert line.startswith("- how long your sessions lasted on average: short (fewer than 60")


def test_a_dimension_added_to_the_policy_alone_reaches_a_dagster_release(small_dir):
    """The policy file is the only change: a Dagster run bounds, reserves and releases the
    extended key set, and release.cohort_sizes and its column schema carry the new column."""
    from dagster import AssetKey

    from cohort_pipeline_tests.conftest import run_release, write_policy

    raw = yaml.safe_load(POLICY.read_text())
    dimensions = {**raw["cohorts"]["dimensions"], "duration": NEW_DIMENSIONS["mean_duration_s"]}
    order = ["duration", *raw["cohorts"]["coarsening_order"]]
    write_policy(small_dir, **{"cohorts.dimensions": dimensions, "cohorts.coarsening_order": order})
    steps = ["catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments"]
    result = run_release(small_dir, selection=[*steps, "privacy_budget_ledger", "cohort_sizes"])
    assert result.success
    with duckdb.connect(str(small_dir / "warehouse.duckdb"), read_only=True) as con:
        sizes = con.execute("SELECT * FROM release.cohort_sizes").df()
    assert list(sizes.columns[2:6]) == ["engagement", "recency", "device", "duration"]
    assert set(sizes["duration"]) <= {"short", "medium", "long", ALL}
    members = [m for row in sizes["members"] for m in row.split(";")]
    assert len(members) == 18 * 3 and len(set(members)) == 18 * 3  # every new key, once
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == AssetKey("cohort_sizes")
    ]
    schema = event.materialization.metadata["dagster/column_schema"].value
    assert "duration" in {c.name for c in schema.columns}
