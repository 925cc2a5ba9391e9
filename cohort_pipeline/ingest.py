"""Reading and validating event files in DuckDB (Dagster-free).

Raw input is never modified. Each row read is exactly one of: accepted, quarantined with a
reason, excluded because its user opted out, or outside the release window; the counts
reconcile per file (`IngestResult.report`). A file that cannot be read at all (not UTF-8,
corrupt Parquet, missing column, ragged CSV) is an `InputError` naming the file and the
problem. Rows whose time cannot place them in any window (missing, unreadable, in the future,
implausibly old) are quarantined in every release; other bad rows only in the release whose
window holds them.

Timestamps: offsets and zone names are converted to UTC; a timestamp without an offset is
read as UTC (the canonical schema's zone).
"""

from __future__ import annotations

import hashlib
import hmac
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
# Two rows with the same key are one event logged twice (retries, re-exported files).
EVENT_KEY = ("user_id", "event_time", "session_id", "event_type", "item_id")
SUFFIXES = (".parquet", ".csv")
# Sessions longer than a day are instrumentation errors, not behaviour.
MAX_SESSION_S = 86_400.0
# Earlier times are default values (epoch 0, 1900-01-01), not events; years-old logs are fine.
EARLIEST_EVENT = date(2000, 1, 1)
# Clock skew allowed for events stamped slightly ahead of the pipeline's clock.
FUTURE_SLACK = timedelta(days=1)
OUTCOMES = ("accepted", "quarantined", "opted_out", "out_of_window")


class InputError(ValueError):
    """An input file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class IngestResult:
    data_version: str
    report: pd.DataFrame  # per file: rows_read, accepted, quarantined, opted_out, out_of_window


def event_files(events_dir: Path) -> list[Path]:
    """Every events file, sorted. Anything else in the folder is an error rather than data
    silently left out (hidden files such as .DS_Store excepted)."""
    events_dir = Path(events_dir)
    if not events_dir.is_dir():
        raise InputError(f"events folder {events_dir} does not exist")
    entries = sorted(p for p in events_dir.iterdir() if not p.name.startswith("."))
    for path in entries:
        if not (path.is_file() and path.suffix.lower() in SUFFIXES):
            raise InputError(
                f"{path}: not an events file (only *.parquet and *.csv files directly in"
                f" {events_dir} are read); move it out of the folder"
            )
    if not entries:
        raise InputError(f"no event files (*.parquet, *.csv) in {events_dir}")
    return entries


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _reader(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        # The canonical CSV: comma-separated, header row, UTF-8. Fixed dialect, so a ragged or
        # differently delimited file is an error instead of a silently re-sniffed table.
        return (
            f"read_csv('{_quote(path)}', header = true, all_varchar = true, delim = ',',"
            " quote = '\"', escape = '\"', skip = 0, strict_mode = true)"
        )
    return f"read_parquet('{_quote(path)}')"


def _problem(exc: duckdb.Error) -> str:
    text = str(exc)
    lowered = text.lower()
    if "not utf-8 encoded" in lowered or "invalid unicode" in lowered:
        return "not valid UTF-8 text (re-export it as UTF-8)"
    if "parquet" in lowered and any(
        word in lowered for word in ("magic", "too small", "corrupt", "footer", "metadata")
    ):
        return "not a readable Parquet file (truncated or corrupt)"
    if "number of columns" in lowered or "parsing dialect" in lowered:
        return "rows with a different number of fields than the header (ragged or malformed CSV)"
    return "cannot read events file: " + text.strip().splitlines()[0]


def _typed_select(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """SELECT of the canonical columns, typed, plus `<col>_raw` text where a cast can fail."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()
    except duckdb.Error as exc:
        raise InputError(f"{path}: {_problem(exc)}") from exc
    present = {row[0]: row[1] for row in described}
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        found = ", ".join(list(present)[:10])
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)} (found: {found})"
        )
    parts = []
    for name, sql_type in COLUMNS.items():
        if name not in present:
            parts += [f"CAST(NULL AS {sql_type}) AS {name}", f"NULL AS {name}_raw"]
        elif present[name] == (
            "TIMESTAMP WITH TIME ZONE" if sql_type == "TIMESTAMPTZ" else sql_type
        ):
            # Already the canonical type: the typed value is the raw value.
            parts += [f'"{name}" AS {name}', f"NULL AS {name}_raw"]
        else:
            # Through text, so any source type casts (or becomes NULL) instead of failing.
            raw = f'CAST("{name}" AS VARCHAR)'
            parts += [f"TRY_CAST({raw} AS {sql_type}) AS {name}", f"{raw} AS {name}_raw"]
    return f"SELECT '{_quote(path)}' AS source_file, {', '.join(parts)} FROM {_reader(path)}"


def _stage(con: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
    """Temp table `staged`: every row of every file, typed, tagged with its file."""
    cols = ", ".join(f"{n} {t}, {n}_raw VARCHAR" for n, t in COLUMNS.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE staged (source_file VARCHAR, {cols})")
    for path in files:
        select = _typed_select(con, path)
        try:
            con.execute(f"INSERT INTO staged BY NAME {select}")
        except duckdb.Error as exc:  # e.g. bad bytes past the sniffed sample
            raise InputError(f"{path}: {_problem(exc)}") from exc


def _missing(name: str) -> str:
    if COLUMNS[name] == "VARCHAR":
        return f"nullif(trim({name}), '') IS NULL"
    return f"{name} IS NULL AND nullif(trim({name}_raw), '') IS NULL"


def _time_reason(now: pd.Timestamp) -> str:
    """Why a row's event_time places it in no window at all (NULL if it is usable)."""
    latest = f"TIMESTAMPTZ '{(now + FUTURE_SLACK).isoformat()}'"
    return f"""CASE
        WHEN {_missing("event_time")} THEN 'missing event_time'
        WHEN event_time IS NULL THEN 'event_time is not a timestamp'
        WHEN event_time > {latest} THEN 'event_time in the future'
        WHEN event_time < TIMESTAMPTZ '{EARLIEST_EVENT} 00:00:00+00'
            THEN 'event_time before {EARLIEST_EVENT}'
    END"""


def _row_reason() -> str:
    events = ", ".join(f"'{e}'" for e in EVENT_TYPES)
    devices = ", ".join(f"'{d}'" for d in DEVICE_TYPES)
    checks = [
        *(f"WHEN {_missing(c)} THEN 'missing {c}'" for c in REQUIRED if c != "event_time"),
        "WHEN user_id <> trim(user_id) THEN 'user_id has leading or trailing whitespace'",
        f"WHEN event_type NOT IN ({events}) THEN 'unknown event_type'",
        f"WHEN device_type NOT IN ({devices}) THEN 'unknown device_type'",
        "WHEN session_duration_s IS NULL AND nullif(trim(session_duration_s_raw), '') IS NOT NULL"
        " THEN 'session_duration_s is not a number'",
        f"WHEN NOT isfinite(session_duration_s) OR session_duration_s < 0"
        f" OR session_duration_s > {MAX_SESSION_S} THEN 'session_duration_s out of range'",
        "WHEN revenue IS NULL AND nullif(trim(revenue_raw), '') IS NOT NULL"
        " THEN 'revenue is not a number'",
        "WHEN NOT isfinite(revenue) OR revenue < 0 THEN 'revenue out of range'",
        "WHEN catalog_item IS NULL THEN 'item_id not in catalog'",
    ]
    return "CASE " + " ".join(checks) + " END"


def _classify(con, catalog: str, opt_outs: str, first: date, last: date, now) -> None:
    """Temp table `classified`: staged rows with their outcome and (if quarantined) reason."""
    start = f"TIMESTAMPTZ '{first} 00:00:00+00'"
    end = f"TIMESTAMPTZ '{last + timedelta(days=1)} 00:00:00+00'"
    key = ", ".join(EVENT_KEY)
    # Duplicates: among otherwise acceptable rows, keep one copy per event key; the order only
    # breaks ties deterministically so the data version does not depend on file layout.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE classified AS
        WITH checked AS (
            SELECT s.rowid AS row_id, s.*, {_time_reason(now)} AS time_reason,
                   {_row_reason()} AS row_reason,
                   coalesce(s.user_id IN (SELECT user_id FROM {opt_outs}), false) AS opted_out,
                   coalesce(s.event_time >= {start} AND s.event_time < {end}, false) AS in_window
            FROM staged s
            LEFT JOIN (SELECT DISTINCT item_id AS catalog_item FROM {catalog}) c
                   ON s.item_id = c.catalog_item
        ),
        candidates AS (
            SELECT * FROM checked
            WHERE NOT opted_out AND in_window AND time_reason IS NULL AND row_reason IS NULL
        ),
        repeated AS (SELECT {key} FROM candidates GROUP BY ALL HAVING count(*) > 1),
        copies AS (
            SELECT row_id FROM (
                SELECT row_id, row_number() OVER (
                    PARTITION BY {key}
                    ORDER BY device_type, session_duration_s, revenue, source_file) AS copy
                FROM candidates SEMI JOIN repeated USING ({key})
            ) WHERE copy > 1
        )
        SELECT c.*,
               CASE WHEN opted_out THEN 'opted_out'
                    WHEN time_reason IS NOT NULL THEN 'quarantined'
                    WHEN NOT in_window THEN 'out_of_window'
                    WHEN row_reason IS NOT NULL OR d.row_id IS NOT NULL THEN 'quarantined'
                    ELSE 'accepted' END AS outcome,
               coalesce(time_reason, row_reason,
                        CASE WHEN d.row_id IS NOT NULL THEN 'duplicate event' END) AS reason
        FROM checked c LEFT JOIN copies d USING (row_id)
    """)


def load_window(
    con: duckdb.DuckDBPyConnection,
    events_dir: Path,
    catalog: str,
    opt_outs: str,
    first: date,
    last: date,
    now: pd.Timestamp | None = None,
    secret: bytes = b"",
) -> IngestResult:
    """Create temp tables `window_events` (accepted rows in [first, last]) and
    `window_rejected` (quarantined rows, as read, with a reason) from every file in
    `events_dir`. Raises InputError, naming the file, for a file that cannot be used.

    `catalog` and `opt_outs` name relations with item_id and user_id columns. The data
    version is keyed with the warehouse's private `secret`: it is published (ledger, release
    tables), and an unkeyed hash of the data would let anyone test guesses about it.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    con.execute("SET TimeZone = 'UTC'")  # naive timestamps are UTC, whoever opened `con`
    files = event_files(events_dir)
    _stage(con, files)
    _classify(con, catalog, opt_outs, first, last, now)
    cols = ", ".join(COLUMNS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE window_events AS
        SELECT {cols} FROM classified WHERE outcome = 'accepted'
    """)
    raw_cols = ", ".join(
        f"coalesce({c}_raw, CAST({c} AS VARCHAR)) AS {c}" if t != "VARCHAR" else c
        for c, t in COLUMNS.items()
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE window_rejected AS
        SELECT source_file, reason, {raw_cols} FROM classified WHERE outcome = 'quarantined'
    """)
    # Every file appears, even one with no rows, so the report accounts for all input.
    con.execute("CREATE OR REPLACE TEMP TABLE files_read (source_file VARCHAR)")
    con.executemany("INSERT INTO files_read VALUES (?)", [[str(p)] for p in files])
    counts = ", ".join(f"count(c.outcome) FILTER (c.outcome = '{o}') AS {o}" for o in OUTCOMES)
    report = con.execute(f"""
        SELECT f.source_file, count(c.outcome) AS rows_read, {counts}
        FROM files_read f LEFT JOIN classified c USING (source_file)
        GROUP BY f.source_file ORDER BY f.source_file
    """).df()
    # Content fingerprint of exactly what the release uses (order-independent), plus the
    # catalog: the same inputs give the same version however the files are laid out.
    digest = con.execute(f"""
        SELECT (SELECT count(*) FROM window_events),
               (SELECT coalesce(sum(hash({cols})::HUGEINT), 0) FROM window_events),
               (SELECT coalesce(sum(hash(item_id, category)::HUGEINT), 0) FROM {catalog})
    """).fetchall()[0]
    message = ":".join(map(str, digest)).encode()
    version = hmac.new(secret, message, hashlib.sha256).hexdigest()[:16]
    return IngestResult(data_version=version, report=report)
