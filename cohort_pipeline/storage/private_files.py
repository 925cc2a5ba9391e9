"""File modes of the private zone on disk (no Dagster).

The data folder holds raw events, the warehouse (per-user profiles), the opt-out list (user
ids) and the ledger: it is created 0700 and the files the pipeline creates in it 0600, so no
other local user can read them. An existing folder is never changed behind the user's back:
`too_open` says when it is more open than that, and the CLI and the first step of a run warn.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: Path | str) -> Path:
    """`path` as a folder; created (with its missing parents' last level) with mode 0700."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask; be exact
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are 0600 and folders 0700 from the start (no window in which
    another user could open them). The umask is per process: keep the block short."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def restrict(*paths: Path | str) -> None:
    """chmod 0600 each existing file among `paths` (e.g. a database and its WAL)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if stat.S_IMODE(os.stat(path).st_mode) != FILE_MODE:
                os.chmod(path, FILE_MODE)


def too_open(folder: Path | str) -> str | None:
    """A warning when other local users may enter or read `folder`, else None."""
    try:
        mode = stat.S_IMODE(os.stat(folder).st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"data folder {folder} is open to other local users (mode {mode:04o}): it holds raw "
        f"events, per-user profiles and opt-outs; restrict it with `chmod 700 {folder}`"
    )
