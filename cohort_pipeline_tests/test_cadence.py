"""release.every_days > 1: the yearly projection counts only the policy's release dates, so
a date off that schedule gets no new reservation (nothing spent) and the schedule skips it;
a date already reserved stays final and is reused."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from dagster import RunRequest, SkipReason, build_schedule_context

from cohort_pipeline.definitions import daily_release_schedule, resources_for
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import cadence_problem
from cohort_pipeline_tests.conftest import (
    BOUNDED,
    END,
    POLICY,
    RELEASE_DATE,
    check_results,
    run_release,
    write_policy,
)

RESERVE = [
    "catalog",
    "opt_outs",
    "raw_events",
    *BOUNDED,
    "cohort_assignments",
    "privacy_budget_ledger",
]


def policy_starting(data, days_before_end: int):
    """Weekly releases counted from `days_before_end` days before the sample's last day."""
    start = (END - dt.timedelta(days=days_before_end)).isoformat()
    return write_policy(data, **{"cohorts.min_size": 50, "release.every_days": 7,
                          "release.partitions_start": start})  # fmt: skip


def test_cadence_problem_names_the_next_release_date():
    weekly = replace(load_policy(POLICY), every_days=7, partitions_start=dt.date(2026, 11, 1))
    assert cadence_problem(weekly, dt.date(2026, 11, 8)) is None
    assert cadence_problem(weekly, dt.date(2026, 11, 1)) is None
    problem = cadence_problem(weekly, dt.date(2026, 11, 9))
    assert "2026-11-09 is not a release date" in problem
    assert "(next: 2026-11-15)" in problem
    assert cadence_problem(replace(weekly, every_days=1), dt.date(2026, 11, 9)) is None


def tick(data, day: dt.date):
    """The schedule's evaluation at 03:00 UTC the day after `day`, over `data`."""
    at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(3), tzinfo=dt.UTC)
    context = build_schedule_context(
        scheduled_execution_time=at, resources={"pipeline": resources_for(data)["pipeline"]}
    )
    return daily_release_schedule(context)


def test_an_off_schedule_date_is_refused_without_spending_and_skipped_by_the_schedule(small_dir):
    ledger = Ledger(small_dir / "ledger.duckdb")
    policy_starting(small_dir, 1)  # the release date is one day past a release date
    skipped = tick(small_dir, END)
    assert isinstance(skipped, SkipReason)
    assert f"{RELEASE_DATE} is not a release date" in skipped.skip_message
    result = run_release(small_dir, selection=RESERVE)
    assert check_results(result)["budget_within_limit"] is False
    assert ledger.rows().empty  # refused before any spend

    policy_starting(small_dir, 7)  # now the release date is on the schedule
    requested = tick(small_dir, END)
    assert isinstance(requested, RunRequest) and requested.partition_key == RELEASE_DATE
    assert check_results(run_release(small_dir, selection=RESERVE))["budget_within_limit"]
    spent = ledger.rows()
    assert len(spent) > 0

    # Off the schedule again: the date's reservation is final and is reused, nothing new.
    policy_starting(small_dir, 1)
    assert check_results(run_release(small_dir, selection=RESERVE))["budget_within_limit"]
    assert len(ledger.rows()) == len(spent)
