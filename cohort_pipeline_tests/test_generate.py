"""Tests of the synthetic sample-data generator (small sizes; the whole file runs in seconds)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_pipeline.schema import DEVICE_TYPES, EVENT_ARROW_SCHEMA, EVENT_TYPES
from cohort_pipeline.tools.generate import generate

END = dt.date(2026, 11, 30)
SMALL = {"users": 2_000, "days": 10, "end_date": END}


def read_events(data_dir: Path) -> pd.DataFrame:
    files = sorted((data_dir / "events").glob("events-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("small")
    generate(data_dir, **SMALL)
    return data_dir


@pytest.fixture(scope="module")
def window(tmp_path_factory) -> Path:
    """A full 28-day release window, for the planted cohort differences."""
    data_dir = tmp_path_factory.mktemp("window")
    generate(data_dir, users=4_000, days=28, end_date=END)
    return data_dir


def test_files_schema_and_values(small):
    files = sorted((small / "events").glob("events-*.parquet"))
    expected = [f"events-{END - dt.timedelta(days=k)}.parquet" for k in range(9, -1, -1)]
    assert [f.name for f in files] == expected
    for f in files:
        schema = pq.read_schema(f)
        assert schema.names == EVENT_ARROW_SCHEMA.names
        assert schema.types == EVENT_ARROW_SCHEMA.types
        assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")

    df = read_events(small)
    assert set(df.event_type) == set(EVENT_TYPES)
    assert set(df.device_type) == set(DEVICE_TYPES)
    assert df.user_id.str.fullmatch(r"u\d{6}").all() and df.item_id.str.fullmatch(r"i\d{5}").all()
    for col in ["user_id", "event_time", "session_id", "event_type", "item_id", "device_type"]:
        assert df[col].notna().all(), col
    # Revenue exactly on purchases, positive.
    purchase = df.event_type == "purchase"
    assert df.revenue.notna().eq(purchase).all() and (df.revenue[purchase] > 0).all()
    # Each event lies on its file's day; a session is one device, one duration, one day.
    days = df.event_time.dt.date
    assert days.min() == END - dt.timedelta(days=9) and days.max() == END
    per_session = df.groupby("session_id").agg(
        users=("user_id", "nunique"),
        devices=("device_type", "nunique"),
        durations=("session_duration_s", lambda s: s.fillna(-1).nunique()),
        days=("event_time", lambda s: s.dt.date.nunique()),
    )
    assert (per_session == 1).all().all()
    # Sessions are contiguous runs of rows, in time order.
    same = df.session_id.eq(df.session_id.shift())
    assert (~same).sum() == len(per_session)
    assert (df.event_time.diff()[same] >= pd.Timedelta(0)).all()
    # Durations: heavy-tailed, median of a few minutes, a few nulls.
    duration = df.drop_duplicates("session_id").session_duration_s
    assert 180 < duration.median() < 600 and duration.max() > 3600
    assert 0 < duration.isna().mean() < 0.05


def test_deterministic_and_independent_of_chunk_size(small, tmp_path):
    summary = generate(tmp_path, **SMALL, chunk_users=1_000)
    pd.testing.assert_frame_equal(read_events(tmp_path), read_events(small))
    assert (tmp_path / "catalog.csv").read_bytes() == (small / "catalog.csv").read_bytes()
    assert summary.events == len(read_events(small))
    assert (summary.files, summary.users, summary.items) == (10, 2_000, 2_000)
    assert (summary.first_date, summary.last_date) == (END - dt.timedelta(days=9), END)


def test_streams_row_groups_per_chunk(tmp_path):
    generate(tmp_path, users=2_000, days=1, end_date=END, chunk_users=1_000)
    (path,) = (tmp_path / "events").glob("events-*.parquet")
    assert pq.ParquetFile(path).num_row_groups == 2


def test_different_seed_gives_different_data(small, tmp_path):
    generate(tmp_path, **SMALL, seed=1)
    a, b = read_events(small), read_events(tmp_path)
    assert len(a) != len(b) or not a.equals(b)
    assert (tmp_path / "catalog.csv").read_text() != (small / "catalog.csv").read_text()


def test_end_date_shift_only_shifts_dates(small, tmp_path):
    generate(tmp_path, **{**SMALL, "end_date": END + dt.timedelta(days=3)})
    a, b = read_events(small), read_events(tmp_path)
    b["event_time"] -= pd.Timedelta(days=3)
    # Session ids carry their date: compare them without it.
    for df in (a, b):
        df["session_id"] = df.session_id.str.replace(r"-\d{8}-", "-", regex=True)
    pd.testing.assert_frame_equal(a, b)


def test_fewer_users_is_a_prefix(small, tmp_path):
    generate(tmp_path, **{**SMALL, "users": 1_500})
    a = read_events(small)
    a = a[a.user_id <= "u001500"].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_events(tmp_path), a)


def test_catalog_consistent_with_events(small):
    catalog = pd.read_csv(small / "catalog.csv")
    assert list(catalog.columns) == ["item_id", "category"]
    assert len(catalog) == 2_000 and catalog.item_id.is_unique
    assert catalog.category.nunique() == 20 and catalog.category.str.fullmatch(r"[a-z]+").all()
    assert set(read_events(small).item_id) <= set(catalog.item_id)


def test_more_categories_than_names(tmp_path):
    generate(tmp_path, users=100, days=1, end_date=END, items=100, categories=35)
    assert pd.read_csv(tmp_path / "catalog.csv").category.nunique() == 35


def test_opt_outs_created_never_overwritten_and_stale_files_removed(tmp_path):
    generate(tmp_path, users=100, days=2, end_date=END)
    opt_outs = tmp_path / "opt_outs.csv"
    assert opt_outs.read_text() == "user_id\n"
    opt_outs.write_text("user_id\nu000007\n")
    stale = tmp_path / "events" / "events-2001-01-01.parquet"
    stale.write_bytes(b"old")
    generate(tmp_path, users=100, days=2, end_date=END)
    assert opt_outs.read_text() == "user_id\nu000007\n"
    assert not stale.exists()
    assert len(list((tmp_path / "events").iterdir())) == 2  # no temp files left behind


def test_progress_once_per_day_and_default_end_date(tmp_path):
    messages = []
    summary = generate(tmp_path, users=100, days=3, progress=messages.append)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert summary.last_date in (yesterday, yesterday - dt.timedelta(days=1))  # midnight race
    assert len(messages) == 3
    assert messages[0].startswith(f"day 1/3 {summary.first_date}: ")
    assert messages[-1].endswith(" events")


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, items=10, categories=20)
    with pytest.raises(ValueError):
        generate(tmp_path, users=0)


# Per-user cohort labels as the pipeline defines them, for a window ending at END.
COHORTS_SQL = f"""
WITH ev AS (SELECT *, CAST(event_time AS DATE) AS day FROM read_parquet($events)),
sess AS (SELECT user_id, session_id, any_value(device_type) AS device FROM ev GROUP BY ALL),
dev AS (
    SELECT user_id, count(*) AS sessions,
           CASE WHEN avg((device IN ('mobile', 'tablet'))::INT) > 0.5
                THEN 'mobile' ELSE 'desktop' END AS device
    FROM sess GROUP BY user_id),
last_buy AS (
    SELECT user_id, max(day) AS day FROM ev
    WHERE event_type = 'purchase' AND day <= DATE '{END}' - 7 GROUP BY user_id),
outcome AS (
    SELECT DISTINCT user_id FROM ev
    WHERE event_type = 'purchase' AND day > DATE '{END}' - 7)
SELECT user_id, device,
       CASE WHEN sessions < 4 THEN 'low' WHEN sessions < 12 THEN 'mid' ELSE 'high' END AS eng,
       CASE WHEN last_buy.day IS NULL THEN 'none'
            WHEN DATE '{END}' - 7 - last_buy.day <= 7 THEN 'recent' ELSE 'lapsed' END AS rec,
       outcome.user_id IS NOT NULL AS converted
FROM dev LEFT JOIN last_buy USING (user_id) LEFT JOIN outcome USING (user_id)
"""


def test_planted_cohort_differences(window):
    con = duckdb.connect()
    params = {"events": str(window / "events" / "events-*.parquet")}
    users = con.execute(COHORTS_SQL, params).df()
    assert len(users) > 0.85 * 4_000  # most users active in the window
    assert set(users.eng) == {"low", "mid", "high"} and set(users.rec) == {
        "recent",
        "lapsed",
        "none",
    }
    conv = users.groupby("rec").converted.mean()
    assert conv["recent"] > conv["none"] + 0.15 and conv["none"] > 0.05
    # Conversion differs across engagement bands too.
    by_eng = users.groupby("eng").converted.mean()
    assert by_eng["high"] > by_eng["low"] + 0.1

    # Category shares of mobile vs desktop users' events differ clearly.
    con.register("users", users)
    shares = con.execute(
        """SELECT u.device, c.category, count(*) AS n
        FROM read_parquet($events) e JOIN read_csv($catalog) c USING (item_id)
        JOIN users u USING (user_id) GROUP BY ALL""",
        {**params, "catalog": str(window / "catalog.csv")},
    ).df()
    table = shares.pivot(index="category", columns="device", values="n").fillna(0)
    table = table / table.sum()
    total_variation = 0.5 * np.abs(table.mobile - table.desktop).sum()
    assert total_variation > 0.1
