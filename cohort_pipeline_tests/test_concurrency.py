"""Many releases at once, in separate OS processes, on one data folder.

Three dates and the same date twice (a schedule tick and a manual click) race against a
budget that admits exactly two releases, while another process holds the warehouse file.
Exactly the admissible releases spend, the rest are blocked by `budget_within_limit` with a
reason, the ledger never exceeds its cap, twins release one draw, and no DuckDB lock error
reaches the user.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from cohort_pipeline.logic import reports
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.accounting import worst_window_spend
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import planned_measurements
from cohort_pipeline_tests import release_procs
from cohort_pipeline_tests.conftest import END, make_data_dir, write_policy

HOLD_S = 4.0
TWIN_STALL_S = 8.0  # longer than twin B's run: without the lock B would finish first
RELEASE_TABLES = (
    "cohort_sizes",
    "cohort_metrics",
    "cohort_category_affinity",
    "cohort_recommendations",
)


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    data = make_data_dir(
        tmp_path_factory.mktemp("race") / "data", users=1_000, **{"cohorts.min_size": 20}
    )
    cap = release_procs.cap_for_releases(load_policy(data / "policy.yaml"), 2)
    write_policy(data, **{"cohorts.min_size": 20, "budget.epsilon_cap": cap})
    dates = [(END - timedelta(days=n)).isoformat() for n in (2, 1, 0, 0)]
    outs = [data.parent / f"run{i}.json" for i in range(len(dates))]
    hold_out = data.parent / "hold.json"
    procs = [
        release_procs.start(
            release_procs.hold_file, str(data / "warehouse.duckdb"), HOLD_S, str(hold_out)
        )
    ]
    procs += [
        release_procs.start(release_procs.run_release, str(data), d, str(o))
        for d, o in zip(dates, outs, strict=True)
    ]
    for proc in procs:
        proc.join(240)
        assert proc.exitcode == 0
    runs = [release_procs.read_output(o) for o in outs]
    return data, dates, runs, release_procs.read_output(hold_out)[0]


def test_exactly_the_admissible_releases_spend(race):
    data, dates, runs, _ = race
    policy = load_policy(data / "policy.yaml")
    ledger = Ledger(data / "ledger.duckdb")
    rows = ledger.rows()
    assert ledger.verify() == []
    reserved = {d.isoformat() for d in rows["release_date"].dt.date}
    assert len(reserved) == 2  # the cap admits two of the three dates, whichever came first
    per_release = len(planned_measurements(policy))
    assert len(rows) == 2 * per_release  # the twin of an admitted date reused, never re-spent
    spends = reports.charges(rows)
    for day, _ in spends:
        worst = worst_window_spend(
            spends, policy.window_days, policy.composition, policy.delta, day
        )[0]
        assert worst <= policy.epsilon_cap

    for summary, _ in runs:
        admitted = summary["partition"] in reserved
        assert summary["checks"]["budget_within_limit"] is admitted
        assert summary["success"] is admitted
        if not admitted:
            assert "> cap" in summary["budget_reason"]
            assert "Nothing was recorded" in summary["budget_reason"]


def test_blocked_dates_release_nothing_and_admitted_ones_are_charged(race):
    data, dates, runs, _ = race
    ledger_seqs = set(Ledger(data / "ledger.duckdb").rows()["seq"])
    admitted = {s["partition"] for s, _ in runs if s["checks"]["budget_within_limit"]}
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        for table in RELEASE_TABLES:
            stored = con.execute(
                f"SELECT DISTINCT CAST(release_date AS VARCHAR), ledger_seq FROM release.{table}"
            ).fetchall()
            assert {d for d, _ in stored} == admitted
            assert {seq for _, seq in stored} <= ledger_seqs
            assert len(stored) == len(admitted)  # one reservation per date, even for the twin
    finally:
        con.close()


def test_the_twins_release_one_draw(tmp_path):
    """Twin A draws its cohort sizes and stalls before storing them; twin B runs the same
    release meanwhile. B must wait and release A's draw, never a second one."""
    data = make_data_dir(tmp_path / "data", users=1_000, **{"cohorts.min_size": 20})
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    args = (str(data), END.isoformat())
    a = release_procs.start(
        release_procs.run_release,
        *args,
        str(outs[0]),
        "noise drawn: laplace",
        1,
        TWIN_STALL_S,
        None,
        "*cohort_sizes",
    )
    assert release_procs.wait_for(Path(str(outs[0]) + ".paused"), 240)
    b = release_procs.start(
        release_procs.run_release, *args, str(outs[1]), None, 1, 0.0, None, "*cohort_sizes"
    )
    for proc in (a, b):
        proc.join(240)
        assert proc.exitcode == 0
    (first, _), (second, _) = (release_procs.read_output(o) for o in outs)
    assert first["success"] and second["success"]
    assert first["noisy_users"] and first["noisy_users"] == second["noisy_users"]
    assert len(Ledger(data / "ledger.duckdb").rows()) == len(
        planned_measurements(load_policy(data / "policy.yaml"))
    )


def test_no_lock_error_reaches_the_user_while_another_process_holds_the_warehouse(race):
    _, _, runs, hold = race
    assert hold["finished"] - hold["started"] >= HOLD_S
    # the holder really overlapped the releases (else this test proves nothing)
    assert any(s["started"] < hold["finished"] for s, _ in runs)
    for summary, log in runs:
        for text in (log, *summary["failures"]):
            assert "Could not set lock" not in text and "locked by another process" not in text
        if summary["checks"]["budget_within_limit"]:
            assert summary["failures"] == []
