"""Release dates the events on file allow (public: dates of daily event files, the policy).

`make run` starts the daily partitions at `first_release_date`, so the UI offers only dates
whose lookback window the events cover, not every day since the policy's
`release.partitions_start` (`cohort-pipeline first-date`, `cohort-pipeline latest-date`).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from cohort_pipeline.policy import Policy
from cohort_pipeline.settings import EVENT_FILE_PREFIX, DataFolder
from cohort_pipeline.storage.events import InputError, event_files


def event_dates(data: Path | str) -> list[date]:
    """The dates of the daily event files (events-YYYY-MM-DD.*), sorted."""
    events = DataFolder(Path(data)).events
    dates = []
    for path in event_files(events):
        stem = path.stem.removeprefix(EVENT_FILE_PREFIX)
        try:
            dates.append(date.fromisoformat(stem))
        except ValueError:
            continue  # not a daily file: its rows still count, its name dates nothing
    if not dates:
        raise InputError(f"no daily event files (events-YYYY-MM-DD.parquet|csv) in {events}")
    return sorted(dates)


def latest_event_date(data: Path | str) -> date:
    """The newest event date on file: the release `make run` materializes."""
    return event_dates(data)[-1]


def first_release_date(data: Path | str, policy: Policy) -> date:
    """The first release date whose whole lookback window (ending on it) has event files, or
    the policy's release.partitions_start if later; the latest event date when the files
    span less than one window."""
    dates = event_dates(data)
    covered = min(dates[0] + timedelta(days=policy.lookback_days - 1), dates[-1])
    return max(covered, policy.partitions_start)
