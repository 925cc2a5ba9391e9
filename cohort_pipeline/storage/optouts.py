"""The opt-out list (`opt_outs.csv` in the data folder): add, remove, list.

Pure (no Dagster). The `opt_outs` asset reads this file at the start of every release and
`raw_events` drops the listed users' events before anything else, so an opt-out applies
from the next release on. Writes are atomic (temp file + rename, under an exclusive lock):
a crash or a concurrent command never leaves a half-written or lost list.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from cohort_pipeline.storage.private_files import private_dir, private_umask

COLUMNS = ["user_id", "opted_out_at"]


def read(path: Path | str) -> pd.DataFrame:
    """The list as (user_id, opted_out_at), one row per user; empty when the file is missing."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="string") for c in COLUMNS})
    frame = pd.read_csv(path, dtype="string", keep_default_na=False)
    if "user_id" not in frame.columns:
        raise ValueError(f"{path}: an opt-out list needs a user_id column")
    if "opted_out_at" not in frame.columns:  # a hand-written list of ids is fine too
        frame["opted_out_at"] = ""
    frame = frame[frame["user_id"].str.strip() != ""]
    return frame[COLUMNS].drop_duplicates("user_id").reset_index(drop=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    private_dir(path.parent)
    with private_umask():
        lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - closed below
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, frame: pd.DataFrame) -> None:
    # mkstemp creates the file 0600: the list holds user ids.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old list or the new one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ids(user_ids: Iterable[str]) -> list[str]:
    ids = [str(u).strip() for u in user_ids]
    if not ids or any(not u or "," in u or "\n" in u for u in ids):
        raise ValueError(f"user ids must be non-empty and contain no comma or newline: {ids!r}")
    return ids


def add(path: Path | str, user_ids: Iterable[str], now: datetime | None = None) -> list[str]:
    """Add users to the list; returns those that were not on it yet."""
    path, ids = Path(path), _ids(user_ids)
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    with _locked(path):
        current = read(path)
        new = [u for u in dict.fromkeys(ids) if u not in set(current["user_id"])]
        if new:
            rows = pd.DataFrame({"user_id": new, "opted_out_at": stamp}, dtype="string")
            _write(path, pd.concat([current, rows], ignore_index=True))
    return new


def remove(path: Path | str, user_ids: Iterable[str]) -> list[str]:
    """Remove users from the list (they are included again from the next release); returns
    those that were on it."""
    path, ids = Path(path), set(_ids(user_ids))
    with _locked(path):
        current = read(path)
        gone = current["user_id"].isin(ids)
        if gone.any():
            _write(path, current[~gone])
    return list(current.loc[gone, "user_id"])
