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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from cohort_pipeline.policy import Policy
from cohort_pipeline.schema import DEVICE_TYPES, EVENT_COLUMNS, EVENT_TYPES, REQUIRED_COLUMNS
from cohort_pipeline.storage.warehouse import (
    INGEST_REPORT,
    RAW_EVENTS,
    REJECTED_EVENTS,
    replace_partition,
)

# Two rows with the same key are one event logged twice (retries, re-exported files).
EVENT_KEY = ("user_id", "event_time", "session_id", "event_type", "item_id")
SUFFIXES = (".parquet", ".csv")
# Sessions longer than a day are instrumentation errors, not behaviour.
MAX_SESSION_S = 86_400.0
# Earlier times are default values (epoch 0, 1900-01-01), not events, unless the policy's
# partitions reach further back (earliest_event).
EARLIEST_EVENT = date(2000, 1, 1)
# Clock skew allowed for events stamped slightly ahead of the pipeline's clock.
FUTURE_SLACK = timedelta(days=1)
OUTCOMES = ("accepted", "quarantined", "opted_out", "out_of_window")


def earliest_event(policy: Policy) -> date:
    """The earliest plausible event date: the first day of the first release's window
    (release.partitions_start - lookback_days + 1), or EARLIEST_EVENT if that is earlier.
    Older logs (e.g. from 1997) are accepted once release.partitions_start covers them;
    default values such as epoch 0 stay quarantined; rows older than every release window
    but after EARLIEST_EVENT are out of window, not quarantined again in every release."""
    first_window = policy.partitions_start - timedelta(days=policy.lookback_days - 1)
    return min(first_window, EARLIEST_EVENT)


class InputError(ValueError):
    """An input file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class IngestResult:
    report: pd.DataFrame  # per file: rows_read, accepted, quarantined, opted_out, out_of_window

    @property
    def window_quarantined(self) -> bool:
        """Rows were read for the window and every one was quarantined: an input problem
        (e.g. logs older than the earliest plausible date), not an empty window."""
        return int(self.report["accepted"].sum()) == 0 and int(self.report["quarantined"].sum()) > 0


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
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        found = ", ".join(list(present)[:10])
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)} (found: {found})"
        )
    parts = []
    for name, sql_type in EVENT_COLUMNS.items():
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


def _missing(name: str) -> str:
    if EVENT_COLUMNS[name] == "VARCHAR":
        return f"nullif(trim({name}), '') IS NULL"
    return f"{name} IS NULL AND nullif(trim({name}_raw), '') IS NULL"


def _time_reason(now: pd.Timestamp, earliest: date) -> str:
    """Why a row's event_time places it in no window at all (NULL if it is usable)."""
    latest = f"TIMESTAMPTZ '{(now + FUTURE_SLACK).isoformat()}'"
    return f"""CASE
        WHEN {_missing("event_time")} THEN 'missing event_time'
        WHEN event_time IS NULL THEN 'event_time is not a timestamp'
        WHEN event_time > {latest} THEN 'event_time in the future'
        WHEN event_time < TIMESTAMPTZ '{earliest} 00:00:00+00'
            THEN 'event_time before {earliest}'
    END"""


def _row_reason() -> str:
    events = ", ".join(f"'{e}'" for e in EVENT_TYPES)
    devices = ", ".join(f"'{d}'" for d in DEVICE_TYPES)
    checks = [
        *(f"WHEN {_missing(c)} THEN 'missing {c}'" for c in REQUIRED_COLUMNS if c != "event_time"),
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


RAW_KEPT = [c for c, t in EVENT_COLUMNS.items() if t != "VARCHAR"]


def _checked(
    con, path: Path, file_no: int, catalog: str, opt_outs: str, first, last, now, earliest
) -> str:
    """SELECT of one file's rows with their outcome before deduplication and (if bad) reason."""
    start = f"TIMESTAMPTZ '{first} 00:00:00+00'"
    end = f"TIMESTAMPTZ '{last + timedelta(days=1)} 00:00:00+00'"
    return f"""
        WITH checked AS (
            SELECT s.*, {_time_reason(now, earliest)} AS time_reason, {_row_reason()} AS row_reason,
                   coalesce(s.user_id IN (SELECT user_id FROM {opt_outs}), false) AS opted_out,
                   coalesce(s.event_time >= {start} AND s.event_time < {end}, false) AS in_window
            FROM ({_typed_select(con, path)}) s
            LEFT JOIN (SELECT DISTINCT item_id AS catalog_item FROM {catalog}) c
                   ON s.item_id = c.catalog_item
        )
        SELECT *, {file_no} AS file_no,
               CASE WHEN opted_out THEN 'opted_out'
                    WHEN time_reason IS NOT NULL THEN 'quarantined'
                    WHEN NOT in_window THEN 'out_of_window'
                    WHEN row_reason IS NOT NULL THEN 'quarantined'
                    ELSE 'accepted' END AS outcome,
               coalesce(time_reason, row_reason) AS reason
        FROM checked
    """


def _as_read() -> str:
    """The columns of a quarantined row as read (text), from typed values and `<col>_raw`."""
    return ", ".join(
        f"coalesce({c}_raw, CAST({c} AS VARCHAR)) AS {c}" if c in RAW_KEPT else c
        for c in EVENT_COLUMNS
    )


def _read_files(
    con, files: list[Path], catalog, opt_outs, first, last, now, earliest, progress
) -> None:
    """One pass per file: accepted candidates (typed, plus raw text only where it differs from
    the typed value, for the rare duplicate) into `window_events`, quarantined rows as read
    into `window_rejected`, and outcome counts into
    `file_outcomes`. Only one file's rows are held with all their columns at a time."""
    typed = ", ".join(f"{n} {t}" for n, t in EVENT_COLUMNS.items())
    raw = ", ".join(f"{c}_raw VARCHAR" for c in RAW_KEPT)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE window_events ({typed}, file_no INTEGER, key_hash UBIGINT,"
        f" {raw})"
    )
    as_text = ", ".join(f"{n} VARCHAR" for n in EVENT_COLUMNS)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE window_rejected (source_file VARCHAR, reason VARCHAR,"
        f" {as_text})"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE file_outcomes (file_no INTEGER, outcome VARCHAR, n BIGINT)"
    )
    # NULL where the typed value prints as the text read (always for typed Parquet columns).
    kept = ", ".join(
        f"CASE WHEN {c}_raw IS DISTINCT FROM CAST({c} AS VARCHAR) THEN {c}_raw END"
        for c in RAW_KEPT
    )
    for file_no, path in enumerate(files):
        try:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE file_checked AS "
                + _checked(con, path, file_no, catalog, opt_outs, first, last, now, earliest)
            )
        except duckdb.Error as exc:  # e.g. bad bytes past the sniffed sample
            raise InputError(f"{path}: {_problem(exc)}") from exc
        con.execute(f"""
            INSERT INTO window_events
            SELECT {", ".join(EVENT_COLUMNS)}, file_no, hash({", ".join(EVENT_KEY)}), {kept}
            FROM file_checked
            WHERE outcome = 'accepted'
        """)
        con.execute(f"""
            INSERT INTO window_rejected
            SELECT source_file, reason, {_as_read()} FROM file_checked
            WHERE outcome = 'quarantined'
        """)
        con.execute("""
            INSERT INTO file_outcomes
            SELECT file_no, outcome, count(*) FROM file_checked GROUP BY ALL
        """)
        if progress:
            progress(file_no + 1, len(files))
    con.execute("DROP TABLE IF EXISTS file_checked")


def _drop_duplicates(con) -> None:
    """Among accepted candidates, keep one copy per event key; the others are quarantined as
    'duplicate event'. The order only breaks ties deterministically, so the kept copy does
    not depend on file layout. Keys that may repeat are found by grouping their hashes (far
    cheaper than grouping the five text columns of every row); only the rows of those keys are
    then compared on the key itself."""
    key = ", ".join(EVENT_KEY)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE repeated AS
        SELECT key_hash FROM window_events GROUP BY key_hash HAVING count(*) > 1
    """)
    # Usually none: then the candidates are not scanned again.
    found = con.execute("SELECT count(*) > 0 FROM repeated").fetchone()[0]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE duplicates AS
        SELECT * EXCLUDE (copy) FROM (
            SELECT w.rowid AS row_id, w.*, f.source_file, row_number() OVER (
                PARTITION BY {key}
                ORDER BY device_type, session_duration_s, revenue, f.source_file) AS copy
            FROM window_events w JOIN files_read f USING (file_no)
            WHERE {found} AND key_hash IN (SELECT key_hash FROM repeated)
        ) WHERE copy > 1
    """)
    con.execute(f"""
        INSERT INTO window_rejected
        SELECT source_file, 'duplicate event', {_as_read()} FROM duplicates
    """)
    if found:
        con.execute("DELETE FROM window_events WHERE rowid IN (SELECT row_id FROM duplicates)")
    for column in ["file_no", "key_hash", *(f"{c}_raw" for c in RAW_KEPT)]:
        con.execute(f"ALTER TABLE window_events DROP COLUMN {column}")


def load_window(
    con: duckdb.DuckDBPyConnection,
    events_dir: Path,
    catalog: str,
    opt_outs: str,
    first: date,
    last: date,
    now: pd.Timestamp | None = None,
    progress: Callable[[int, int], None] | None = None,
    earliest: date = EARLIEST_EVENT,
) -> IngestResult:
    """Create temp tables `window_events` (accepted rows in [first, last]) and
    `window_rejected` (quarantined rows, as read, with a reason) from every file in
    `events_dir`. Raises InputError, naming the file, for a file that cannot be used.

    `catalog` and `opt_outs` name relations with item_id and user_id columns.
    `progress(done, total)` is called after each file is validated. Events before
    `earliest` (earliest_event of the policy) are quarantined as implausibly old.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    con.execute("SET TimeZone = 'UTC'")  # naive timestamps are UTC, whoever opened `con`
    files = event_files(events_dir)
    # Every file appears, even one with no rows, so the report accounts for all input.
    con.execute("CREATE OR REPLACE TEMP TABLE files_read (file_no INTEGER, source_file VARCHAR)")
    con.executemany(
        "INSERT INTO files_read VALUES (?, ?)", [[n, str(p)] for n, p in enumerate(files)]
    )
    _read_files(con, files, catalog, opt_outs, first, last, now, earliest, progress)
    _drop_duplicates(con)
    counts = ", ".join(
        f"CAST(coalesce(sum(o.n) FILTER (o.outcome = '{o}'), 0) AS BIGINT) AS {o}" for o in OUTCOMES
    )
    report = con.execute(f"""
        WITH by_file AS (
            SELECT f.source_file, CAST(coalesce(sum(o.n), 0) AS BIGINT) AS rows_read, {counts}
            FROM files_read f LEFT JOIN file_outcomes o USING (file_no)
            GROUP BY f.source_file
        ),
        dups AS (SELECT source_file, count(*) AS n FROM duplicates GROUP BY ALL)
        SELECT source_file, rows_read, accepted - coalesce(d.n, 0) AS accepted,
               quarantined + coalesce(d.n, 0) AS quarantined, opted_out, out_of_window
        FROM by_file LEFT JOIN dups d USING (source_file)
        ORDER BY source_file
    """).df()
    return IngestResult(report=report)


def store_window(con: duckdb.DuckDBPyConnection, release_date: str, result: IngestResult) -> None:
    """What load_window left in `con` as the release's private.raw_events, rejected_events
    and ingest_report (per file counts, and whether the whole window was quarantined)."""
    replace_partition(con, RAW_EVENTS, release_date, "SELECT * FROM window_events")
    # Write the window out now, so that the checkpoint at the step's close (after the small
    # writes below) is the one that vacuums (merges) its part-filled row groups; otherwise
    # the next asset to write a table pays for it (~0.25 s at 10M events).
    con.execute("CHECKPOINT")
    replace_partition(con, REJECTED_EVENTS, release_date, "SELECT * FROM window_rejected")
    report = result.report.assign(window_quarantined=result.window_quarantined)
    replace_partition(con, INGEST_REPORT, release_date, report)
