"""Opening a DuckDB file another process may hold.

DuckDB allows one read-write process per file (design §5): a notebook, a sensor or an
overlapping run holding the warehouse or the ledger makes `duckdb.connect` fail at once. Both
files are opened here: retry with backoff and jitter, then fail with an error that says why.
"""

from __future__ import annotations

import os
import time

import duckdb


class FileBusy(TimeoutError):
    """Another process kept a DuckDB file locked for longer than the timeout."""


def _jitter() -> float:
    # Retry jitter only (never noise): os.urandom keeps `random` out of the privacy package.
    return int.from_bytes(os.urandom(2), "big") / 65535.0


def connect_with_retry(
    path: str, timeout_s: float, what: str = "DuckDB file", error: type[FileBusy] = FileBusy
) -> duckdb.DuckDBPyConnection:
    """A read-write connection to `path`, waiting up to `timeout_s` while another process
    holds it; then `error`, naming `what`."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise error(
                    f"{what} {path} is locked by another process (DuckDB allows one read-write"
                    " process per file; close notebooks or other runs using it); gave up after"
                    f" {timeout_s:.0f} s: {exc}"
                ) from exc
            attempt += 1
            pause = min(0.5, 0.02 * 2 ** min(attempt, 5)) * (0.5 + _jitter())
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
