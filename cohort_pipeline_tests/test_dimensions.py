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

from cohort_pipeline.engines import DuckDBEngine
from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy.bounding import window
from cohort_pipeline.tools.generate import generate
from cohort_pipeline_tests.conftest import END, POLICY

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


def reference_profiles(policy: Policy, events: pd.DataFrame) -> pd.DataFrame:
    """The default policy's dimensions read in pandas: engagement bands the user's sessions,
    recency the days from their last purchase before the outcome period to its start (none
    without one), device groups the device of most of their sessions (a session's device is
    its first event's; ties to the last name)."""
    _, outcome_start, _ = window(policy, END)
    start = pd.Timestamp(outcome_start, tz="UTC")
    ordered = events.sort_values("event_time")
    sessions = ordered.groupby(["user_id", "session_id"]).agg(
        duration=("session_duration_s", "max"), device=("device_type", "first")
    )
    users = sessions.groupby("user_id").agg(n=("duration", "size"), mean=("duration", "mean"))
    per_device = sessions.groupby(["user_id", "device"]).size().reset_index(name="k")
    users["device_type"] = per_device.groupby("user_id").apply(
        lambda g: max(zip(g["k"], g["device"], strict=True))[1], include_groups=False
    )
    buys = events[events["event_type"] == "purchase"]
    last_before = (
        buys[buys["event_time"] < start]
        .groupby("user_id")["event_time"]
        .max()
        .map(lambda t: (outcome_start - t.date()).days)
    )
    converted = set(buys.loc[buys["event_time"] >= start, "user_id"])
    eng_edges, eng_labels = (4, 12), ("low", "mid", "high")
    rec_edges, rec_labels = (8,), ("recent", "lapsed")
    groups = {"mobile": ("mobile", "tablet"), "desktop": ("desktop", "other")}
    lo, hi = policy.session_duration_s
    rows = []
    for user_id, u in users.iterrows():
        engagement = eng_labels[bisect.bisect_right(eng_edges, u["n"])]
        days = last_before.get(user_id)
        recency = "none" if days is None else rec_labels[bisect.bisect_right(rec_edges, days)]
        device = next(g for g, members in groups.items() if u["device_type"] in members)
        rows.append(
            {
                "user_id": user_id,
                "cohort_key": f"{engagement}|{recency}|{device}",
                "engagement": engagement,
                "recency": recency,
                "device": device,
                "sessions": min(u["n"], policy.max_sessions),
                "mean_duration_s": min(hi, max(lo, lo if pd.isna(u["mean"]) else u["mean"])),
                "converted": int(user_id in converted),
            }
        )
    return pd.DataFrame(rows)


def test_the_default_policy_assigns_users_as_its_three_dimensions_say(events):
    profiles = bounded(DEFAULT, events)["user_profiles"]
    expected = reference_profiles(DEFAULT, events)
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
