"""Resources: where the inputs live and which policy governs them, the DuckDB warehouse and
the ledger store (their settings come from settings.py).

Assets name resource keys only ("pipeline", "warehouse", "ledger"), so another engine is a
swap of the resources dict in definitions.py, not an edit of every asset.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
from dagster import ConfigurableResource

from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.settings import DataFolder
from cohort_pipeline.storage import warehouse
from cohort_pipeline.storage.locking import connect_with_retry
from cohort_pipeline.storage.private_files import private_dir, private_umask, restrict


class PipelineResource(ConfigurableResource):
    """Where the inputs and exports live, and the policy that governs them."""

    data_dir: str
    policy_path: str
    # YYYY-MM-DD that replaces the policy's release.partitions_start; empty: the policy's.
    partitions_start: str = ""
    alert_webhook: str = ""  # URL alerts are POSTed to; empty: recorded only

    def policy(self) -> Policy:
        # Parsed once per file content, not once per asset (~9 ms each, 14 per release).
        try:
            stat = Path(self.policy_path).stat()
        except OSError:
            return load_policy(self.policy_path)  # its error names the file
        return _parsed_policy(
            self.policy_path, self.partitions_start, stat.st_mtime_ns, stat.st_size
        )

    @property
    def folder(self) -> DataFolder:
        return DataFolder(Path(self.data_dir))

    @property
    def events_dir(self) -> Path:
        return self.folder.events

    @property
    def catalog_path(self) -> Path:
        return self.folder.catalog

    @property
    def opt_outs_path(self) -> Path:
        return self.folder.opt_outs

    def exports_dir(self, release_date: str) -> Path:
        path = self.folder.exports / release_date
        path.mkdir(parents=True, exist_ok=True)
        return path


@functools.lru_cache(maxsize=8)
def _parsed_policy(path: str, partitions_start: str, mtime_ns: int, size: int) -> Policy:
    start = date.fromisoformat(partitions_start) if partitions_start else None
    return load_policy(path, partitions_start=start)  # frozen: sharing one instance is safe


class WarehouseResource(ConfigurableResource):
    """The embedded DuckDB warehouse: schemas `private` (exact, never released), `public`
    and `release` (storage/warehouse.py)."""

    path: str
    memory_limit: str = ""
    temp_directory: str = ""
    lock_timeout_s: float = 120.0
    # Release dates whose validated window (private.raw_events) is kept. Each is a copy of a
    # whole lookback window (1.7 GB at 100M events), so keeping every date grows without end;
    # 8 keeps a week of experiment readouts re-runnable. An older date is re-ingested from the
    # event files if it is materialized again.
    keep_windows: int = 8

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # Short-lived connections: DuckDB allows one writing process per file (design §5).
        # Private: the file (and its WAL) 0600 in a 0700 folder, created so from the start.
        private_dir(Path(self.path).parent)
        new = not Path(self.path).exists()
        with private_umask() if new else nullcontext():
            con = connect_with_retry(self.path, self.lock_timeout_s, "warehouse")
        try:
            restrict(self.path)
            if self.temp_directory:
                # Spilled pages are private rows; the default spill folder (<file>.tmp) is
                # inside the private data folder already.
                private_dir(self.temp_directory)
            warehouse.configure(con, self.memory_limit, self.temp_directory)
            yield con
        finally:
            con.close()
            restrict(self.path, f"{self.path}.wal")

    def read(self, sql: str, params=None) -> pd.DataFrame:
        return warehouse.read(self, sql, params)


class LedgerResource(ConfigurableResource):
    """The privacy-budget ledger in its own DuckDB file (never the warehouse's)."""

    path: str
    lock_timeout_s: float = 120.0

    def ledger(self) -> Ledger:
        # Public figures only, but kept 0600 in the private folder like the rest.
        private_dir(Path(self.path).parent)
        restrict(self.path)
        return Ledger(self.path, lock_timeout_s=self.lock_timeout_s)
