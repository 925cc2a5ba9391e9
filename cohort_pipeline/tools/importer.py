"""Import an external interactions file (ratings, clicks, purchases) into the canonical events
schema and a category catalog, so teams can run the pipeline on their own logs (no Dagster).

`--map` names the source column of each canonical field: user_id, item_id and event_time are
required; event_type, session_id, device_type, session_duration_s, revenue and rating are
optional. Timestamps may be ISO 8601 (naive ones are UTC) or Unix epochs; a numeric column is
read in seconds, milliseconds or microseconds by the magnitude of its median. Without an
event_type column every row gets `event_type` (default click); with a rating column and
`min_rating`, ratings below it are dropped (a low rating is not engagement). Without a
session_id column, a user's events split into sessions at gaps over 30 minutes, and a
session's duration is its span. A device_type outside the canonical ones becomes `other`.

Every row read is either written or rejected with a reason; the counts reconcile. Output:
one Parquet file per UTC day, events/events-YYYY-MM-DD.parquet, and catalog.csv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb

from cohort_pipeline.schema import DEVICE_TYPES, EVENT_COLUMNS, EVENT_TYPES
from cohort_pipeline.settings import DataFolder
from cohort_pipeline.storage.private_files import private_dir

REQUIRED = ("user_id", "item_id", "event_time")
OPTIONAL = ("event_type", "session_id", "device_type", "session_duration_s", "revenue", "rating")
SESSION_GAP_S = 1800
# Common spellings in public interaction logs (e.g. Retailrocket's addtocart/transaction).
EVENT_SYNONYMS = {
    **{e: e for e in EVENT_TYPES},
    "impression": "view",
    "pageview": "view",
    "detail": "view",
    "rating": "click",
    "rate": "click",
    "cart": "add_to_cart",
    "addtocart": "add_to_cart",
    "add-to-cart": "add_to_cart",
    "buy": "purchase",
    "order": "purchase",
    "transaction": "purchase",
}


class ImportInputError(ValueError):
    """An import that cannot run; the message names the file, option or column at fault."""


@dataclass(frozen=True)
class ImportSummary:
    rows_read: int
    rows_written: int
    rejected: dict[str, int] = field(default_factory=dict)
    first_date: date | None = None
    last_date: date | None = None
    files: int = 0
    catalog_items: int = 0


def parse_mapping(text: str, allowed=REQUIRED + OPTIONAL, required=REQUIRED) -> dict[str, str]:
    """'user_id=userId,item_id=movieId,...' -> {canonical field: source column}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, column = part.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not column:
            raise ImportInputError(f"--map entry {part!r} must be FIELD=COLUMN")
        if key not in allowed:
            raise ImportInputError(f"--map field {key!r} is not one of {', '.join(allowed)}")
        if key in mapping:
            raise ImportInputError(f"--map field {key!r} is given twice")
        mapping[key] = column
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ImportInputError(f"--map must name a column for {', '.join(missing)}")
    return mapping


def _reader(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.suffix.lower() == ".parquet":
        return f"read_parquet('{quoted}')"
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".dat"):
        return f"read_csv('{quoted}', header = true, all_varchar = true)"
    raise ImportInputError(f"{path}: unsupported file type {path.suffix!r} (CSV or Parquet)")


def _load(con, path: Path, mapping: dict[str, str], table: str) -> None:
    """Create `table` with one VARCHAR column per mapped field."""
    if not path.exists():
        raise ImportInputError(f"{path}: no such file")
    try:
        present = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()]
    except duckdb.Error as exc:
        raise ImportInputError(f"{path}: cannot read: {exc}") from exc
    for key, column in mapping.items():
        if column not in present:
            raise ImportInputError(
                f"{path}: no column {column!r} (mapped to {key}); columns: {', '.join(present)}"
            )
    cols = ", ".join(f'CAST("{c.replace(chr(34), chr(34) * 2)}" AS VARCHAR) AS {k}'
                     for k, c in mapping.items())  # fmt: skip
    con.execute(f"CREATE TEMP TABLE {table} AS SELECT {cols} FROM {_reader(path)}")


def _epoch_divisor(con) -> float:
    median = con.execute(
        "SELECT median(abs(TRY_CAST(event_time AS DOUBLE))) FROM source"
    ).fetchall()[0][0]
    if median is None:
        return 0.0  # not numeric: ISO timestamps
    return 1e6 if median >= 1e14 else 1e3 if median >= 1e11 else 1.0


def _catalog(con, items: Path, item_map: dict[str, str]) -> int:
    _load(con, items, item_map, "items")
    con.execute("""
        CREATE TEMP TABLE catalog AS
        SELECT trim(item_id) AS item_id, min(trim(category)) AS category FROM items
        WHERE nullif(trim(item_id), '') IS NOT NULL AND nullif(trim(category), '') IS NOT NULL
        GROUP BY 1
    """)
    n = con.execute("SELECT count(*) FROM catalog").fetchall()[0][0]
    if not n:
        raise ImportInputError(f"{items}: no rows with both an item_id and a category")
    return n


def _typed_sql(mapping: dict[str, str], divisor: float, event_type: str,
               min_rating: float | None) -> str:  # fmt: skip
    has = mapping.__contains__
    if divisor:
        time = f"to_timestamp(TRY_CAST(event_time AS DOUBLE) / {divisor})"
        time = f"coalesce({time}, TRY_CAST(event_time AS TIMESTAMPTZ))"
    else:
        time = "TRY_CAST(event_time AS TIMESTAMPTZ)"
    synonyms = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EVENT_SYNONYMS.items())
    etype = (
        f"CASE lower(trim(event_type)) {synonyms} END" if has("event_type") else f"'{event_type}'"
    )
    devices = ", ".join(f"'{d}'" for d in DEVICE_TYPES)
    device = (
        f"CASE WHEN lower(trim(device_type)) IN ({devices}) THEN lower(trim(device_type)) "
        "ELSE 'other' END"
        if has("device_type")
        else "'other'"
    )

    def number(name):
        return f"TRY_CAST({name} AS DOUBLE)" if has(name) else "CAST(NULL AS DOUBLE)"

    checks = [
        "WHEN nullif(trim(user_id), '') IS NULL THEN 'missing user_id'",
        "WHEN nullif(trim(item_id), '') IS NULL THEN 'missing item_id'",
        "WHEN ts IS NULL THEN 'missing or unreadable event_time'",
        "WHEN etype IS NULL THEN 'unknown event_type'",
        "WHEN item_id_c NOT IN (SELECT item_id FROM catalog) THEN 'item_id not in the items file'",
    ]
    if has("session_duration_s"):
        checks.append("WHEN session_duration_s IS NOT NULL AND dur IS NULL "
                      "THEN 'session_duration_s is not a number'")  # fmt: skip
    if has("revenue"):
        checks.append("WHEN revenue IS NOT NULL AND rev IS NULL THEN 'revenue is not a number'")
    if has("rating") and min_rating is not None:
        checks.append("WHEN rating_v IS NULL THEN 'rating is not a number'")
        checks.append(f"WHEN rating_v < {float(min_rating)} THEN 'rating below --min-rating'")
    rating = number("rating")
    session = "nullif(trim(session_id), '')" if has("session_id") else "CAST(NULL AS VARCHAR)"
    return f"""
        SELECT *, CASE {" ".join(checks)} END AS reason FROM (
            SELECT *, trim(user_id) AS user_id_c, trim(item_id) AS item_id_c, {time} AS ts,
                   {etype} AS etype, {device} AS device, {session} AS session_c,
                   {number("session_duration_s")} AS dur, {number("revenue")} AS rev,
                   {rating} AS rating_v
            FROM source)
    """


def import_interactions(
    source: str | Path,
    mapping: dict[str, str],
    items: str | Path,
    data_dir: str | Path,
    *,
    item_map: dict[str, str] | None = None,
    event_type: str = "click",
    min_rating: float | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Write `source`'s mappable rows as canonical daily Parquet files under
    `data_dir`/events and the items file as `data_dir`/catalog.csv. Refuses to replace
    existing files unless `overwrite`."""
    source, items, data_dir = Path(source), Path(items), Path(data_dir)
    if event_type not in EVENT_TYPES:
        raise ImportInputError(
            f"--event-type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}"
        )
    if min_rating is not None and "rating" not in mapping:
        raise ImportInputError("--min-rating needs a rating column in --map (rating=COLUMN)")
    item_map = item_map or {"item_id": "item_id", "category": "category"}
    folder = DataFolder(data_dir)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        n_items = _catalog(con, items, item_map)
        _load(con, source, mapping, "source")
        divisor = _epoch_divisor(con)
        con.execute(
            "CREATE TEMP TABLE typed AS " + _typed_sql(mapping, divisor, event_type, min_rating)
        )
        rows_read = con.execute("SELECT count(*) FROM typed").fetchall()[0][0]
        reasons = (
            "SELECT reason, count(*) FROM typed WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 2 DESC"
        )
        rejected = dict(con.execute(reasons).fetchall())
        con.execute(_canonical_sql(mapping))
        days = [
            r[0] for r in con.execute("SELECT DISTINCT day FROM canonical ORDER BY 1").fetchall()
        ]
        targets = [folder.event_file(d) for d in days]
        existing = [p for p in [folder.catalog, *targets] if p.exists()]
        if existing and not overwrite:
            raise ImportInputError(
                f"{existing[0]} exists ({len(existing)} target file(s) in all); pass --overwrite "
                "to replace them or import into an empty data folder"
            )
        private_dir(data_dir)
        folder.events.mkdir(parents=True, exist_ok=True)
        cols = ", ".join(EVENT_COLUMNS)
        for day, path in zip(days, targets, strict=True):
            tmp = path.with_name(f".{path.name}.tmp")
            con.execute(
                f"COPY (SELECT {cols} FROM canonical WHERE day = ? ORDER BY user_id, event_time) "
                f"TO '{str(tmp).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)",
                [day],
            )
            tmp.replace(path)
        catalog = str(folder.catalog).replace("'", "''")
        con.execute(f"COPY (SELECT item_id, category FROM catalog ORDER BY item_id) TO '{catalog}' "
                    "(HEADER, DELIMITER ',')")  # fmt: skip
        written = con.execute("SELECT count(*) FROM canonical").fetchall()[0][0]
    finally:
        con.close()
    return ImportSummary(rows_read, written, rejected, days[0] if days else None,
                         days[-1] if days else None, len(days), n_items)  # fmt: skip


def _canonical_sql(mapping: dict[str, str]) -> str:
    # Sessions: the given id, else a new session after a gap of over SESSION_GAP_S.
    duration = (
        "dur"
        if "session_duration_s" in mapping
        else "nullif(epoch(max(ts) OVER s) - epoch(min(ts) OVER s), 0)"
    )
    return f"""
        CREATE TEMP TABLE canonical AS
        WITH ok AS (
            SELECT * FROM typed WHERE reason IS NULL
        ),
        gaps AS (
            SELECT *, CASE WHEN epoch(ts) - epoch(lag(ts) OVER (PARTITION BY user_id_c ORDER BY ts))
                           <= {SESSION_GAP_S} THEN 0 ELSE 1 END AS starts
            FROM ok
        ),
        numbered AS (
            SELECT *, coalesce(session_c, user_id_c || '-s' || sum(starts) OVER (
                PARTITION BY user_id_c ORDER BY ts ROWS UNBOUNDED PRECEDING)) AS sid
            FROM gaps
        )
        SELECT user_id_c AS user_id, ts AS event_time, sid AS session_id, etype AS event_type,
               item_id_c AS item_id, device AS device_type, {duration} AS session_duration_s,
               rev AS revenue, CAST(timezone('UTC', ts) AS DATE) AS day
        FROM numbered
        WINDOW s AS (PARTITION BY user_id_c, sid)
    """
