"""Reading and validating event files in DuckDB (Dagster-free).

Raw input is never modified. Each row read is either accepted, quarantined with a reason,
excluded because its user opted out, or outside the release window; the counts reconcile
per file. A file that cannot be read at all (missing column, corrupt) is a clear error
naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from cohort_pipeline.policy import DEVICE_TYPES, EVENT_TYPES

COLUMNS = {
    "user_id": "VARCHAR",
    "event_time": "TIMESTAMPTZ",
    "session_id": "VARCHAR",
    "event_type": "VARCHAR",
    "item_id": "VARCHAR",
    "device_type": "VARCHAR",
    "session_duration_s": "DOUBLE",
    "revenue": "DOUBLE",
}
REQUIRED = ("user_id", "event_time", "session_id", "event_type", "item_id", "device_type")
# Sessions longer than a day are instrumentation errors, not behaviour.
MAX_SESSION_S = 86_400.0


class InputError(ValueError):
    """An input file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class IngestResult:
    data_version: str
    report: pd.DataFrame  # per file: rows_read, accepted, quarantined, opted_out, out_of_window


def event_files(events_dir: Path) -> list[Path]:
    files = sorted(p for p in Path(events_dir).glob("*") if p.suffix in (".parquet", ".csv"))
    if not files:
        raise InputError(f"no event files (*.parquet, *.csv) in {events_dir}")
    return files


def _reader(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.suffix == ".csv":
        return f"read_csv('{quoted}', header = true, all_varchar = true)"
    return f"read_parquet('{quoted}')"


def _typed_select(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    try:
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()}
    except duckdb.Error as exc:
        raise InputError(f"{path}: cannot read events file: {exc}") from exc
    missing = [c for c in COLUMNS if c not in present and c in REQUIRED]
    if missing:
        raise InputError(f"{path}: missing required column(s) {', '.join(missing)}")
    parts = []
    for name, sql_type in COLUMNS.items():
        source = f'"{name}"' if name in present else "NULL"
        parts.append(f"TRY_CAST({source} AS {sql_type}) AS {name}")
        parts.append(f"CAST({source} AS VARCHAR) AS {name}_raw")
    quoted = str(path).replace("'", "''")
    return f"SELECT '{quoted}' AS source_file, {', '.join(parts)} FROM {_reader(path)}"


def _reason_sql(now_sql: str) -> str:
    events = ", ".join(f"'{e}'" for e in EVENT_TYPES)
    devices = ", ".join(f"'{d}'" for d in DEVICE_TYPES)
    checks = [
        *(f"WHEN {c} IS NULL OR CAST({c} AS VARCHAR) = '' THEN 'missing or invalid {c}'" for c in REQUIRED),
        f"WHEN event_type NOT IN ({events}) THEN 'unknown event_type'",
        f"WHEN device_type NOT IN ({devices}) THEN 'unknown device_type'",
        "WHEN session_duration_s_raw IS NOT NULL AND session_duration_s IS NULL THEN 'session_duration_s is not a number'",
        f"WHEN NOT isfinite(session_duration_s) OR session_duration_s < 0 OR session_duration_s > {MAX_SESSION_S}"
        " THEN 'session_duration_s out of range'",
        "WHEN revenue_raw IS NOT NULL AND revenue IS NULL THEN 'revenue is not a number'",
        "WHEN NOT isfinite(revenue) OR revenue < 0 THEN 'revenue out of range'",
        f"WHEN event_time > {now_sql} + INTERVAL 1 DAY THEN 'event_time in the future'",
        "WHEN catalog_item IS NULL THEN 'item_id not in catalog'",
    ]
    return "CASE " + " ".join(checks) + " END"


def load_window(con: duckdb.DuckDBPyConnection, events_dir: Path, catalog: str, opt_outs: str,
                first: date, last: date, now: pd.Timestamp | None = None) -> IngestResult:
    """Create temp tables `window_events` (accepted rows in [first, last]) and
    `window_rejected` (quarantined rows with a reason) from every file in `events_dir`.

    `catalog` and `opt_outs` name relations with item_id and user_id columns.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    selects = " UNION ALL ".join(_typed_select(con, f) for f in event_files(events_dir))
    start, end = f"TIMESTAMPTZ '{first} 00:00:00+00'", f"TIMESTAMPTZ '{last + timedelta(days=1)} 00:00:00+00'"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE classified AS
        SELECT *, {_reason_sql(f"TIMESTAMPTZ '{now.isoformat()}'")} AS reason,
               coalesce(user_id IN (SELECT user_id FROM {opt_outs}), false) AS opted_out,
               event_time >= {start} AND event_time < {end} AS in_window
        FROM (SELECT f.*, c.item_id AS catalog_item FROM ({selects}) f
              LEFT JOIN (SELECT DISTINCT item_id FROM {catalog}) c ON f.item_id = c.item_id)
    """)
    cols = ", ".join(COLUMNS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE window_events AS
        SELECT {cols} FROM classified WHERE reason IS NULL AND in_window AND NOT opted_out
    """)
    # Quarantine what would have been in the window, or whose time cannot be read.
    raw_cols = ", ".join(f"{c}_raw AS {c}" for c in COLUMNS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE window_rejected AS
        SELECT source_file, reason, {raw_cols} FROM classified
        WHERE reason IS NOT NULL AND (in_window OR event_time IS NULL) AND NOT coalesce(opted_out, false)
    """)
    report = con.execute("""
        SELECT source_file,
               count(*) AS rows_read,
               count(*) FILTER (reason IS NULL AND in_window AND NOT opted_out) AS accepted,
               count(*) FILTER (reason IS NOT NULL AND (in_window OR event_time IS NULL)
                                AND NOT coalesce(opted_out, false)) AS quarantined,
               count(*) FILTER (opted_out) AS opted_out,
               count(*) FILTER (NOT coalesce(opted_out, false) AND event_time IS NOT NULL
                                AND NOT in_window) AS out_of_window
        FROM classified GROUP BY source_file ORDER BY source_file
    """).df()
    # Content fingerprint of exactly what the release uses (order-independent), plus the
    # catalog: the same inputs give the same version however the files are laid out.
    digest = con.execute(f"""
        SELECT (SELECT count(*) FROM window_events),
               (SELECT coalesce(sum(hash({cols})::HUGEINT), 0) FROM window_events),
               (SELECT coalesce(sum(hash(item_id, category)::HUGEINT), 0) FROM {catalog})
    """).fetchall()[0]
    version = hashlib.sha256(":".join(map(str, digest)).encode()).hexdigest()[:16]
    return IngestResult(data_version=version, report=report)
