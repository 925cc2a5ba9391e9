"""Release dates the events on file allow: `make run` starts the partitions there."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from cohort_pipeline.logic.calendar import event_dates, first_release_date, latest_event_date
from cohort_pipeline.policy import load_policy
from cohort_pipeline.storage.events import InputError
from cohort_pipeline.tools.cli import main
from cohort_pipeline_tests.conftest import END, POLICY


def _events(tmp_path, days):
    (tmp_path / "events").mkdir()
    for day in days:
        (tmp_path / "events" / f"events-{day}.parquet").write_bytes(b"")
    return tmp_path


def test_first_release_date_covers_a_whole_window(tmp_path, capsys):
    data = _events(tmp_path, [f"2026-11-{d:02d}" for d in range(1, 29)] + ["2026-10-30"])
    policy = load_policy(POLICY)  # 28-day lookback, partitions from 2024-01-01
    assert event_dates(data)[0] == date(2026, 10, 30)
    assert latest_event_date(data) == END
    assert first_release_date(data, policy) == date(2026, 11, 26)  # 10-30 + 27 days
    later = dataclasses.replace(policy, partitions_start=date(2026, 11, 27))
    assert first_release_date(data, later) == date(2026, 11, 27)
    (data / "policy.yaml").write_text(POLICY.read_text())
    assert main(["--data-dir", str(data), "first-date"]) == 0
    assert capsys.readouterr().out.strip() == "2026-11-26"


def test_fewer_days_than_a_window_start_at_the_latest(tmp_path):
    data = _events(tmp_path, ["2026-11-27", "2026-11-28"])
    assert first_release_date(data, load_policy(POLICY)) == END


def test_no_daily_files_is_an_error_naming_the_folder(tmp_path, capsys):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "all.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="no daily event files"):
        event_dates(tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY.read_text())  # a data folder, no daily files
    assert main(["--data-dir", str(tmp_path), "latest-date"]) == 2
    assert str(tmp_path / "events") in capsys.readouterr().err
