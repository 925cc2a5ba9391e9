"""Tamper evidence: edits, deletions, insertions and reorderings of the ledger are found,
and the pipeline refuses to spend (or to draw noise under an existing reservation) on a
ledger that fails verification, saying what it found. The basic edit/delete/reorder/truncate
cases at the ledger level are in test_ledger.py; these add forgeries and the pipeline."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import duckdb
import pytest

from cohort_pipeline.privacy.accounting import Spend
from cohort_pipeline.privacy.ledger import (
    COLUMNS,
    BudgetCap,
    Ledger,
    LedgerCorrupt,
    Measurement,
    row_hash,
)
from cohort_pipeline.tools.cli import main as cli
from cohort_pipeline_tests.conftest import END, RELEASE_DATE, make_data_dir, run_release

DAY0 = date(2024, 3, 1)
CAP = BudgetCap(10.0, 30, 1e-7, "basic")
RECORD = (
    "SELECT seq, release_date, asset, mechanism, epsilon, delta, rho, sensitivity, noise_scale,"
    " policy_hash, reservation_id, kind, reason, run_id, accountant,"
    " epoch_us(recorded_at) AS recorded_at"
    " FROM privacy_spend"
)


def _sql(path, sql: str):
    con = duckdb.connect(str(path))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _forge_next_row(path, **changes) -> None:
    """Append a copy of the last row as the next seq, with a correctly recomputed hash (what
    someone who knows the format would do) but without updating ledger_head."""
    con = duckdb.connect(str(path))
    try:
        last = con.execute(f"{RECORD} ORDER BY seq DESC LIMIT 1").df().iloc[0].to_dict()
        prev_hash = con.execute("SELECT last_hash FROM ledger_head").fetchall()[0][0]
        row = {k: v.item() if hasattr(v, "item") else v for k, v in last.items()}
        row = {**row, "seq": row["seq"] + 1, "release_date": last["release_date"].date(), **changes}
        stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=row["recorded_at"])
        values = [*(row[c] for c in COLUMNS[:-3]), stamp, prev_hash, row_hash(prev_hash, row)]
        con.execute(f"INSERT INTO privacy_spend VALUES ({', '.join('?' * len(values))})", values)
    finally:
        con.close()


TAMPERING = {
    "forged row with a made-up hash": (
        lambda p: _sql(
            p,
            "INSERT INTO privacy_spend SELECT * REPLACE (4 AS seq, 'x' AS row_hash)"
            " FROM privacy_spend WHERE seq = 3",
        ),
        ["seq 4: row_hash does not match", "tail truncated or head altered"],
    ),
    "forged row with a recomputed hash": (
        lambda p: _forge_next_row(p, epsilon=0.0),
        ["ledger_head records seq 3", "ends at seq 4"],
    ),
    "spend moved to another date": (
        lambda p: _sql(
            p, "UPDATE privacy_spend SET release_date = DATE '2023-01-01' WHERE seq = 1"
        ),
        ["seq 1: row_hash does not match"],
    ),
    "release relabelled as a redraw": (
        lambda p: _sql(p, "UPDATE privacy_spend SET kind = 'redraw', reason = 'x' WHERE seq = 2"),
        ["seq 2: row_hash does not match"],
    ),
    "every row deleted, head kept": (
        lambda p: _sql(p, "DELETE FROM privacy_spend"),
        ["ledger_head records seq 3", "ends at seq 0"],
    ),
    "head deleted": (
        lambda p: _sql(p, "DELETE FROM ledger_head"),
        ["ledger_head is missing"],
    ),
}


def _three_releases(path) -> Ledger:
    ledger = Ledger(path)
    for n in range(3):
        ledger.reserve(
            DAY0 + timedelta(days=n),
            [Measurement("cohort_sizes", "laplace", Spend.pure(1.0), 1.0, 1.0)],
            policy_hash="p1",
            run_id="r",
            cap=CAP,
        )
    return ledger


@pytest.mark.parametrize("kind", TAMPERING)
def test_tampering_is_found_and_blocks_spending(tmp_path, kind):
    tamper, found = TAMPERING[kind]
    path = tmp_path / "ledger.duckdb"
    ledger = _three_releases(path)
    tamper(path)
    problems = " ".join(ledger.verify())
    for fragment in found:
        assert fragment in problems
    before = _sql(path, "SELECT count(*) FROM privacy_spend")
    with pytest.raises(LedgerCorrupt, match="refusing to spend") as err:
        ledger.reserve(
            DAY0 + timedelta(days=9),
            [Measurement("cohort_sizes", "laplace", Spend.pure(1.0), 1.0, 1.0)],
            policy_hash="p1",
            run_id="r",
            cap=CAP,
        )
    assert found[0] in str(err.value)
    with pytest.raises(LedgerCorrupt):  # no noise under an existing reservation either
        ledger.reservation(DAY0)
    assert _sql(path, "SELECT count(*) FROM privacy_spend") == before


def _failures(result) -> str:
    def messages(error):
        return "" if error is None else error.message + messages(error.cause)

    return " ".join(
        messages(e.event_specific_data.error) for e in result.all_events if e.is_step_failure
    )


def test_the_pipeline_refuses_a_tampered_ledger_and_says_what_it_found(tmp_path, capsys):
    data = make_data_dir(tmp_path / "data", users=1_000, **{"cohorts.min_size": 20})
    assert run_release(data, selection="*cohort_sizes").success
    ledger_path = data / "ledger.duckdb"
    _sql(ledger_path, "UPDATE privacy_spend SET epsilon = epsilon / 100 WHERE seq = 1")
    rows = _sql(ledger_path, "SELECT count(*) FROM privacy_spend")

    # a new release: the reservation refuses
    day_before = (END - timedelta(days=1)).isoformat()
    blocked = run_release(data, partition=day_before, selection="*privacy_budget_ledger")
    assert not blocked.success
    assert "seq 1: row_hash does not match the row's contents (row edited)" in _failures(blocked)
    assert _sql(ledger_path, "SELECT count(*) FROM privacy_spend") == rows

    # the reserved release: its DP asset refuses to draw noise under a tampered ledger
    guarded = run_release(data, selection="cohort_sizes")
    assert not guarded.success and "refusing to spend" in _failures(guarded)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        dates = con.execute(
            "SELECT DISTINCT CAST(release_date AS VARCHAR) FROM release.cohort_sizes"
        ).fetchall()
    finally:
        con.close()
    assert dates == [(RELEASE_DATE,)]

    assert cli(["--data-dir", str(data), "ledger", "verify"]) == 1
    assert "seq 1: row_hash does not match" in capsys.readouterr().err
