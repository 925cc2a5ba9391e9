"""The bad-input corpus: broken events files, built here and written to tmp folders.

Every case ends in either an InputError naming the file and the problem, or row-level
quarantine with a reason; the per-file counts reconcile with an independent count of the
rows in the file; the input files are byte-for-byte unchanged. Add a case for every bug found.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.bounding import (
    user_categories_sql,
    user_items_sql,
    user_pairs_sql,
    user_profiles_sql,
)
from cohort_pipeline.storage.events import EARLIEST_EVENT, InputError, load_window
from cohort_pipeline.tools.generate import generate
from cohort_pipeline_tests.conftest import POLICY, run_release, write_policy

FIRST, LAST = date(2026, 11, 1), date(2026, 11, 28)
NOW = pd.Timestamp("2026-11-29 12:00", tz="UTC")
ITEMS = [f"i{n}" for n in range(1, 6)]
OPTED_OUT = "u-opted-out"


def event(n: int = 0, **changes) -> dict:
    """A valid canonical event in the window; `changes` break it."""
    row = {
        "user_id": f"u{n % 7}",
        "event_time": f"2026-11-{10 + n % 15:02d}T12:{n % 60:02d}:00+00:00",
        "session_id": f"s{n}",
        "event_type": "view",
        "item_id": ITEMS[n % len(ITEMS)],
        "device_type": "mobile",
        "session_duration_s": 120.0,
        "revenue": None,
    }
    return {**row, **changes}


def good(count: int = 5, start: int = 0) -> list[dict]:
    return [event(n) for n in range(start, start + count)]


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def write_parquet(path: Path, rows: list[dict], **types) -> None:
    """Rows as given (NaN stays NaN, unlike pandas' conversion); event_time as a UTC
    timestamp unless `types` says otherwise."""
    if "event_time" not in types:
        rows = [
            {**r, "event_time": pd.Timestamp(r["event_time"]).to_pydatetime()}
            if r.get("event_time") is not None
            else r
            for r in rows
        ]
    table = pa.Table.from_pylist(rows)
    for name, typ in types.items():
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(typ))
    pq.write_table(table, path)


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@dataclass
class Case:
    name: str
    build: Callable[[Path], None]  # writes the case's files into an events folder
    error: str | None = None  # expected InputError fragment (the file name is checked too)
    error_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # expected quarantine reasons
    accepted: int | None = None
    check: Callable[[duckdb.DuckDBPyConnection], None] | None = None


def _truncated_parquet(d: Path) -> None:
    write_parquet(d / "whole.tmp", good(50))
    data = (d / "whole.tmp").read_bytes()
    (d / "whole.tmp").unlink()
    write_bytes(d / "cut.parquet", data[: len(data) // 2])


def _duplicate_file(d: Path) -> None:
    write_parquet(d / "day.parquet", good(6))
    write_parquet(d / "day-copy.parquet", good(6))


def _mixed_zones(d: Path) -> None:
    rows = [
        event(1, event_time="2026-11-20T10:00:00+02:00"),
        event(2, event_time="2026-11-20 10:00:00Z"),
        event(3, event_time="2026-11-20 10:00:00"),  # no offset: UTC
        event(4, event_time="2026-11-20 10:00:00 America/New_York"),
        event(5, event_time="2026-11-20T03:00:00-05:00"),
        # the event of row 1 again, logged from a UTC clock: a duplicate
        event(1, event_time="2026-11-20T08:00:00Z"),
    ]
    write_csv(d / "zones.csv", rows)


def _mixed_zone_times(con) -> None:
    times = con.execute("SELECT session_id, event_time FROM window_events").fetchall()
    utc = {s: t.isoformat() for s, t in times}
    assert utc == {
        "s1": "2026-11-20T08:00:00+00:00",
        "s2": "2026-11-20T10:00:00+00:00",
        "s3": "2026-11-20T10:00:00+00:00",
        "s4": "2026-11-20T15:00:00+00:00",
        "s5": "2026-11-20T08:00:00+00:00",
    }


def _opted_out_rows_are_not_kept(con) -> None:
    kept = con.execute(
        "SELECT count(*) FROM (SELECT user_id FROM window_events UNION ALL "
        "SELECT user_id FROM window_rejected) WHERE user_id = ?",
        [OPTED_OUT],
    ).fetchall()
    assert kept == [(0,)]


def _naive_parquet_times(con) -> None:
    first = con.execute("SELECT min(event_time) FROM window_events").fetchall()[0][0]
    assert first.isoformat() == "2026-11-10T12:00:00+00:00"


CASES = [
    # -- whole files that cannot be used: a clear error naming the file ------------------
    Case(
        "missing column",
        lambda d: write_parquet(
            d / "e.parquet", [{k: v for k, v in r.items() if k != "user_id"} for r in good()]
        ),
        error="missing required column(s) user_id",
    ),
    Case(
        "renamed columns (camelCase)",
        lambda d: write_csv(
            d / "e.csv",
            [{"userId" if k == "user_id" else k: v for k, v in r.items()} for r in good()],
        ),
        error="missing required column(s) user_id (found: userId",
    ),
    Case("empty csv", lambda d: write_bytes(d / "e.csv", b""), error="file is empty"),
    Case("empty parquet", lambda d: write_bytes(d / "e.parquet", b""), error="file is empty"),
    Case("truncated parquet", _truncated_parquet, error="truncated or corrupt", error_file="cut"),
    Case(
        "csv text named .parquet",
        lambda d: write_bytes(d / "e.parquet", b"user_id,event_time\nu1,2026-11-20\n" * 50),
        error="truncated or corrupt",
    ),
    Case(
        "not UTF-8",
        lambda d: write_bytes(
            d / "e.csv",
            "user_id,event_time,session_id,event_type,item_id,device_type\n"
            "Jos\xe9,2026-11-20,s1,view,i1,mobile\n".encode("latin-1"),
        ),
        error="not valid UTF-8",
    ),
    Case(
        "ragged csv",
        lambda d: write_bytes(
            d / "e.csv",
            b"user_id,event_time,session_id,event_type,item_id,device_type\n"
            b"u1,2026-11-20,s1,view,i1,mobile\nu2,2026-11-20,s2,view,i1,mobile,extra,fields\n",
        ),
        error="ragged or malformed CSV",
    ),
    Case(
        "semicolon-delimited",
        lambda d: write_bytes(
            d / "e.csv",
            b"user_id;event_time;session_id;event_type;item_id;device_type\n"
            b"u1;2026-11-20;s1;view;i1;mobile\n",
        ),
        error="missing required column(s) user_id",
    ),
    Case(
        "no header row",
        lambda d: write_bytes(d / "e.csv", b"u1,2026-11-20,s1,view,i1,mobile\n" * 3),
        error="missing required column(s)",
    ),
    Case(
        "unsupported file in the folder",
        lambda d: (write_parquet(d / "ok.parquet", good()), write_bytes(d / "more.json", b"{}")),
        error="not an events file",
        error_file="more.json",
    ),
    Case("empty events folder", lambda d: None, error="no event files"),
    # -- rows quarantined with a reason ----------------------------------------------------
    Case(
        "nulls in required fields",
        lambda d: write_parquet(
            d / "e.parquet",
            [
                *good(2),
                *(
                    event(10 + i, **{c: None})
                    for i, c in enumerate(
                        [
                            "user_id",
                            "event_time",
                            "session_id",
                            "event_type",
                            "item_id",
                            "device_type",
                        ]
                    )
                ),
            ],
        ),
        reasons={
            "missing user_id": 1,
            "missing event_time": 1,
            "missing session_id": 1,
            "missing event_type": 1,
            "missing item_id": 1,
            "missing device_type": 1,
        },
        accepted=2,
    ),
    Case(
        "empty and blank strings in csv",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(2),
                event(10, user_id="   "),
                event(11, session_id=""),
                event(12, event_time=" "),
            ],
        ),
        reasons={"missing user_id": 1, "missing session_id": 1, "missing event_time": 1},
        accepted=2,
    ),
    Case(
        "whitespace around user_id",
        lambda d: write_csv(d / "e.csv", [*good(2), event(10, user_id=" u1")]),
        reasons={"user_id has leading or trailing whitespace": 1},
        accepted=2,
    ),
    Case(
        "epoch integers as event_time",
        lambda d: write_parquet(
            d / "e.parquet",
            [event(n, event_time=1_763_640_000 + n) for n in range(3)],
            event_time=pa.int64(),
        ),
        reasons={"event_time is not a timestamp": 3},
        accepted=0,
    ),
    Case(
        "unparseable timestamps",
        lambda d: write_csv(
            d / "e.csv",
            [*good(1), event(10, event_time="20/11/2026 10:00"), event(11, event_time="yesterday")],
        ),
        reasons={"event_time is not a timestamp": 2},
        accepted=1,
    ),
    Case(
        "header repeated mid-file (concatenated csv)",
        lambda d: write_csv(d / "e.csv", [*good(2), {k: k for k in event()}, *good(2, 5)]),
        reasons={"event_time is not a timestamp": 1},
        accepted=4,
    ),
    Case(
        "numbers as text",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(2),
                event(10, session_duration_s="12s"),
                event(11, revenue="$5.00", event_type="purchase"),
            ],
        ),
        reasons={"session_duration_s is not a number": 1, "revenue is not a number": 1},
        accepted=2,
    ),
    Case(
        "negative and absurd durations",
        lambda d: write_parquet(
            d / "e.parquet",
            [*good(1), event(10, session_duration_s=-5.0), event(11, session_duration_s=1e9)],
        ),
        reasons={"session_duration_s out of range": 2},
        accepted=1,
    ),
    Case(
        "NaN and infinities in parquet",
        lambda d: write_parquet(
            d / "e.parquet",
            [
                *good(1),
                event(10, session_duration_s=math.nan),
                event(11, session_duration_s=math.inf),
                event(12, revenue=-math.inf, event_type="purchase"),
            ],
        ),
        reasons={"session_duration_s out of range": 2, "revenue out of range": 1},
        accepted=1,
    ),
    Case(
        "NaN and Infinity as csv text",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(1),
                event(10, session_duration_s="NaN"),
                event(11, revenue="Infinity", event_type="purchase"),
            ],
        ),
        reasons={"session_duration_s out of range": 1, "revenue out of range": 1},
        accepted=1,
    ),
    Case(
        "negative revenue",
        lambda d: write_parquet(
            d / "e.parquet", [*good(1), event(10, revenue=-9.99, event_type="purchase")]
        ),
        reasons={"revenue out of range": 1},
        accepted=1,
    ),
    Case(
        "future timestamps",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(2),
                event(10, event_time="2099-01-01T00:00:00Z"),
                event(11, event_time="2026-12-05T00:00:00Z"),
            ],
        ),
        reasons={"event_time in the future": 2},
        accepted=2,
    ),
    Case(
        "far-past timestamps",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(2),
                event(10, event_time="1970-01-01T00:00:00Z"),
                event(11, event_time="1900-01-01"),
            ],
        ),
        reasons={f"event_time before {EARLIEST_EVENT}": 2},
        accepted=2,
    ),
    Case(
        "unknown event types",
        lambda d: write_csv(
            d / "e.csv", [*good(2), event(10, event_type="VIEW"), event(11, event_type="scroll")]
        ),
        reasons={"unknown event_type": 2},
        accepted=2,
    ),
    Case(
        "unknown devices",
        lambda d: write_csv(
            d / "e.csv",
            [*good(2), event(10, device_type="smartwatch"), event(11, device_type="Mobile")],
        ),
        reasons={"unknown device_type": 2},
        accepted=2,
    ),
    Case(
        "items missing from the catalog",
        lambda d: write_parquet(d / "e.parquet", [*good(2), event(10, item_id="i999")]),
        reasons={"item_id not in catalog": 1},
        accepted=2,
    ),
    Case(
        "duplicate events in a file",
        lambda d: write_parquet(d / "e.parquet", [*good(4), event(1), event(1), event(2)]),
        reasons={"duplicate event": 3},
        accepted=4,
    ),
    Case("the same file twice", _duplicate_file, reasons={"duplicate event": 6}, accepted=6),
    Case(
        "mixed time zones",
        _mixed_zones,
        reasons={"duplicate event": 1},
        accepted=5,
        check=_mixed_zone_times,
    ),
    Case(
        "naive parquet timestamps (nanoseconds)",
        lambda d: write_parquet(
            d / "e.parquet",
            [{**r, "event_time": pd.Timestamp(r["event_time"]).tz_localize(None)} for r in good(3)],
            event_time=pa.timestamp("ns"),
        ),
        accepted=3,
        check=_naive_parquet_times,
    ),
    Case(
        "out of window and opted-out rows, some also broken",
        lambda d: write_csv(
            d / "e.csv",
            [
                *good(3),
                event(10, event_time="2026-10-01T00:00:00Z"),
                event(11, event_time="2026-10-01T00:00:00Z", device_type="toaster"),
                event(12, user_id=OPTED_OUT),
                event(13, user_id=OPTED_OUT, event_type="nonsense"),
            ],
        ),
        accepted=3,
        check=_opted_out_rows_are_not_kept,
    ),
    Case(
        "extra columns, shuffled order, optional columns absent",
        lambda d: write_csv(
            d / "e.csv",
            [{**r, "browser": "x"} for r in good(4)],
            [
                "browser",
                "device_type",
                "item_id",
                "user_id",
                "event_type",
                "session_id",
                "event_time",
            ],
        ),
        accepted=4,
    ),
    Case(
        "header only, upper-case suffix",
        lambda d: write_bytes(
            d / "e.CSV", b"user_id,event_time,session_id,event_type,item_id,device_type\n"
        ),
        accepted=0,
    ),
]


def _sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _rows_in(path: Path) -> int:
    """An independent count of the rows in a file (not DuckDB's)."""
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        "CREATE TEMP TABLE catalog AS SELECT * FROM (VALUES "
        + ", ".join(f"('{i}', 'c{n % 2}')" for n, i in enumerate(ITEMS))
        + ") t(item_id, category)"
    )
    con.execute(f"CREATE TEMP TABLE opt_outs AS SELECT '{OPTED_OUT}' AS user_id")
    return con


def _load(con, events: Path):
    return load_window(con, events, "catalog", "opt_outs", FIRST, LAST, now=NOW)


def test_the_corpus_covers_at_least_25_kinds():
    assert len({case.name for case in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error_or_quarantine(case: Case, tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    case.build(events)
    before = _sha256(events)
    con = _connection()
    try:
        if case.error:
            with pytest.raises(InputError) as err:
                _load(con, events)
            message = str(err.value)
            assert case.error in message
            named = case.error_file or (next(iter(before)) if before else str(events))
            assert named in message
            return
        result = _load(con, events)
        rejected = con.execute("SELECT source_file, reason FROM window_rejected").df()
        assert Counter(rejected["reason"]) == Counter(case.reasons)
        accepted = con.execute("SELECT count(*) FROM window_events").fetchall()[0][0]
        assert accepted == case.accepted
        report = result.report.set_index("source_file")
        assert sorted(report.index) == sorted(str(p) for p in events.iterdir())
        for path in events.iterdir():
            counts = report.loc[str(path)]
            parts = counts[["accepted", "quarantined", "opted_out", "out_of_window"]].sum()
            assert counts["rows_read"] == parts == _rows_in(path)
            assert counts["quarantined"] == (rejected["source_file"] == str(path)).sum()
        assert report["accepted"].sum() == accepted
        if case.check:
            case.check(con)
    finally:
        con.close()
        assert _sha256(events) == before  # input files are never modified


def test_a_bot_with_a_million_events_is_accepted_but_bounded(tmp_path):
    """One user with 1M events in 10k sessions: accepted (no bot heuristic), and every
    per-user vector the mechanisms sum stays within the policy's contribution bounds, so
    the bot moves no released aggregate more than any other single user could."""
    events = tmp_path / "events"
    events.mkdir()
    write_parquet(events / "people.parquet", good(50))
    con = _connection()
    con.execute(f"""
        COPY (SELECT 'bot' AS user_id,
                     TIMESTAMPTZ '2026-11-05 00:00:00+00' + to_seconds(2 * i) AS event_time,
                     'bot-' || (i // 100) AS session_id,
                     ['view', 'click', 'add_to_cart', 'purchase'][1 + i % 4] AS event_type,
                     'i' || (1 + i % 5) AS item_id, 'desktop' AS device_type,
                     86000.0 AS session_duration_s, 1.0e6 AS revenue
              FROM range(1000000) t(i)) TO '{events / "bot.parquet"}' (FORMAT parquet)
    """)
    result = _load(con, events)
    assert result.report["accepted"].sum() == 1_000_050
    policy = load_policy(POLICY)
    con.execute(f"CREATE TEMP TABLE profiles AS {user_profiles_sql(policy, LAST, 'window_events')}")
    con.execute(f"CREATE TEMP TABLE pairs AS {user_pairs_sql(policy, 'window_events')}")
    con.execute(f"CREATE TEMP TABLE cats AS {user_categories_sql(policy, 'pairs', 'catalog')}")
    con.execute(f"CREATE TEMP TABLE items AS {user_items_sql(policy, 'pairs')}")
    lo, hi = policy.session_duration_s
    bot = con.execute(
        "SELECT count(*), max(sessions), max(mean_duration_s), min(mean_duration_s),"
        " max(converted) FROM profiles WHERE user_id = 'bot'"
    ).fetchall()[0]
    assert bot == (1, policy.max_sessions, hi, hi, 1)  # one cohort member, clamped values
    for table, bound in (("cats", policy.category_l2_norm), ("items", policy.item_l2_norm)):
        norms = con.execute(
            f"SELECT user_id, sqrt(sum(value * value)) FROM {table} GROUP BY user_id"
        ).fetchall()
        assert max(n for _, n in norms) <= bound + 1e-9
        assert dict(norms)["bot"] == pytest.approx(bound)  # the bot weighs as much as anyone
    con.close()


def test_events_from_1997_are_accepted_once_the_partitions_reach_back(tmp_path):
    """A 1997-98 log had every row quarantined as 'before 2000-01-01'; the floor now follows
    the policy's first release window, and default values (epoch 0) stay quarantined."""
    from dataclasses import replace

    from cohort_pipeline.storage.events import earliest_event

    events = tmp_path / "events"
    events.mkdir()
    old = [event(n, event_time=f"1997-11-{10 + n % 15:02d}T12:00:00Z") for n in range(6)]
    write_csv(events / "e.csv", [*old, event(9, event_time="1970-01-01T00:00:00Z")])
    first, last = date(1997, 11, 1), date(1997, 11, 28)
    policy = replace(load_policy(POLICY), partitions_start=date(1997, 11, 20))
    assert earliest_event(policy) == date(1997, 10, 24)  # 1997-11-20 minus 27 days
    assert earliest_event(load_policy(POLICY)) == EARLIEST_EVENT  # 2024 partitions: unchanged

    refused = load_window(_connection(), events, "catalog", "opt_outs", first, last, now=NOW)
    assert refused.report["accepted"].sum() == 0 and refused.window_quarantined

    con = _connection()
    result = load_window(
        con, events, "catalog", "opt_outs", first, last, now=NOW, earliest=earliest_event(policy)
    )
    assert result.report["accepted"].sum() == 6 and not result.window_quarantined
    reasons = con.execute("SELECT reason FROM window_rejected").fetchall()
    assert reasons == [("event_time before 1997-10-24",)]


def test_a_wholly_quarantined_window_is_said_in_the_report_and_the_log(tmp_path):
    """Events from 1997 under partitions from 2024: every row is implausibly old. The run
    log says so without a count; private.ingest_report flags it."""
    data = tmp_path / "data"
    data.mkdir()
    generate(data, users=200, days=10, seed=3, end_date=dt.date(1997, 11, 28))
    write_policy(data)
    instance = DagsterInstance.ephemeral()
    result = run_release(data, instance=instance, selection=["catalog", "opt_outs", "raw_events"])
    assert result.success
    logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    (warning,) = [m for m in logged if "was quarantined" in m]
    assert "partitions_start" in warning and "before 2000-01-01" in warning
    assert not re.search(r"\b\d+ (rows?|events?)\b", warning)  # counts stay in the warehouse
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        flags = con.execute(
            "SELECT DISTINCT window_quarantined FROM private.ingest_report"
        ).fetchall()
    assert flags == [(True,)]
