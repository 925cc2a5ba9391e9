"""The canonical event schema (design §3), spelled once: columns with their types, the event
types and the device types. Event files (Parquet or CSV under the data folder's `events/`)
carry these columns; ingest validates against them, the generator and the importer write them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
DEVICE_TYPES = ("desktop", "mobile", "tablet", "other")


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # DuckDB's
    arrow_type: pa.DataType  # Parquet's
    nullable: bool = False


EVENT_SCHEMA = (
    Column("user_id", "VARCHAR", pa.string()),
    Column("event_time", "TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    Column("session_id", "VARCHAR", pa.string()),
    Column("event_type", "VARCHAR", pa.string()),
    Column("item_id", "VARCHAR", pa.string()),
    Column("device_type", "VARCHAR", pa.string()),
    Column("session_duration_s", "DOUBLE", pa.float64(), nullable=True),
    Column("revenue", "DOUBLE", pa.float64(), nullable=True),
)
# Column name -> DuckDB type, in file order.
EVENT_COLUMNS = {column.name: column.sql_type for column in EVENT_SCHEMA}
# A file without one of these is refused; the nullable columns may be absent.
REQUIRED_COLUMNS = tuple(column.name for column in EVENT_SCHEMA if not column.nullable)
EVENT_ARROW_SCHEMA = pa.schema([(column.name, column.arrow_type) for column in EVENT_SCHEMA])
