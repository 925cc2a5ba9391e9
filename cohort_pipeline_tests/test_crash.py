"""SIGKILL a release at many points; the ledger and the release tables stay consistent.

Each case kills a release process at one point (see release_procs: before/after a DuckDB
statement, after a noise draw), then checks what survived: the ledger verifies, holds at most
one reservation for the date, every released row's ledger_seq is a reservation of the same
date and asset; a re-run completes, spends nothing more and keeps what was already released.
"""

from __future__ import annotations

import shutil

import duckdb
import pytest

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.release import planned_measurements
from cohort_pipeline_tests import release_procs
from cohort_pipeline_tests.conftest import RELEASE_DATE, make_data_dir

# Release tables written under a reservation, by the asset the ledger charges for them.
CHARGED = {
    "cohort_sizes": "cohort_sizes",
    "cohort_metrics": "cohort_metrics",
    "cohort_category_affinity": "cohort_category_affinity",
    "cohort_recommendations": "cohort_recommendations",
}
# (label fragment, occurrence): where the process dies.
KILL_POINTS = [
    ("before warehouse.duckdb: COMMIT", 1),  # ingest, mid-transaction
    ("before ledger.duckdb: COMMIT", 1),  # reservation written, not committed
    ("after ledger.duckdb: COMMIT", 1),  # reserved, no noise yet
    ("noise drawn: laplace", 1),  # noise drawn, nothing stored
    ("after warehouse.duckdb: INSERT INTO release.cohort_sizes", 1),  # uncommitted release
    ("after warehouse.duckdb: INSERT INTO release.cohort_metrics", 1),
    ("noise drawn: gaussian", 2),  # some metrics released, others not
    ("after warehouse.duckdb: INSERT INTO release.cohort_recommendations", 1),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("crash") / "data", users=1_000, **{"cohorts.min_size": 20}
    )


def _released(data) -> dict[str, list[tuple]]:
    path = data / "warehouse.duckdb"
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = {}
        for table in CHARGED:
            try:
                found[table] = con.execute(
                    f"SELECT CAST(release_date AS VARCHAR), ledger_seq, * EXCLUDE (release_date,"
                    f" ledger_seq) FROM release.{table} ORDER BY ALL"
                ).fetchall()
            except duckdb.CatalogException:
                found[table] = []
        return found
    finally:
        con.close()


def _check_consistent(data, per_release: int) -> None:
    ledger = Ledger(data / "ledger.duckdb")
    assert ledger.verify() == []
    rows = ledger.rows()
    assert len(rows) in (0, per_release)  # all of a reservation or none of it, never twice
    by_seq = {int(r.seq): (r.release_date.date().isoformat(), r.asset) for r in rows.itertuples()}
    for table, released in _released(data).items():
        for day, seq, *_ in released:  # every released value was charged first
            assert by_seq.get(seq) == (day, CHARGED[table])


@pytest.mark.parametrize(
    "kill_at, occurrence", KILL_POINTS, ids=[f"{k} #{n}" for k, n in KILL_POINTS]
)
def test_sigkill_anywhere_leaves_a_consistent_ledger_and_a_rerun_completes(
    template, tmp_path, kill_at, occurrence
):
    data = tmp_path / "data"
    shutil.copytree(template, data)
    per_release = len(planned_measurements(load_policy(data / "policy.yaml")))

    killed = release_procs.start(
        release_procs.run_release,
        str(data),
        RELEASE_DATE,
        str(tmp_path / "killed.json"),
        kill_at,
        occurrence,
    )
    killed.join(300)
    assert killed.exitcode == -9  # it really died at that point
    _check_consistent(data, per_release)
    reserved = Ledger(data / "ledger.duckdb").rows()
    survived = _released(data)

    rerun = release_procs.start(
        release_procs.run_release, str(data), RELEASE_DATE, str(tmp_path / "rerun.json")
    )
    rerun.join(300)
    summary, log = release_procs.read_output(tmp_path / "rerun.json")
    assert rerun.exitcode == 0 and summary["success"], log[-3000:]
    _check_consistent(data, per_release)
    after = Ledger(data / "ledger.duckdb").rows()
    assert len(after) == per_release
    if len(reserved):  # the crashed run's reservation is reused, not spent again
        assert after["row_hash"].tolist() == reserved["row_hash"].tolist()
    released = _released(data)
    for table, rows in released.items():
        assert rows, f"release.{table} is empty after the re-run"
        if survived.get(table):  # what was released before the crash stays as it was
            assert rows == survived[table]
