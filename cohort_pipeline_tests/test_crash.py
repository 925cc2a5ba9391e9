"""SIGKILL a release at many points; the ledger and the release tables stay consistent.

One data folder, one release date, crashed again and again: each run is killed at the next
point (see release_procs: before/after a DuckDB statement, after a noise draw), the way an
unlucky operator would retry a flaky host. After every kill the ledger verifies, holds all
of one reservation or none, and every released row's ledger_seq is a reservation row of the
same date and asset; once reserved, the reservation never changes and what is released stays
released. The last run completes without spending again.
"""

from __future__ import annotations

import duckdb

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.release import planned_measurements
from cohort_pipeline_tests import release_procs
from cohort_pipeline_tests.conftest import RELEASE_DATE, make_data_dir

# Release tables written under a reservation; each is charged as the asset of the same name.
CHARGED = ("cohort_sizes", "cohort_metrics", "cohort_category_affinity", "cohort_recommendations")
# (label fragment, occurrence) where each successive run dies, in the order a release
# reaches them; each point exists in the state the previous crash left.
KILL_POINTS = [
    ("before warehouse.duckdb: COMMIT", 1),  # ingest, mid-transaction
    ("before ledger.duckdb: DELETE FROM ledger_head", 1),  # spend rows written, head not yet
    ("before ledger.duckdb: COMMIT", 1),  # reservation written, not committed
    ("after ledger.duckdb: COMMIT", 1),  # reserved, no noise yet
    ("noise drawn: laplace", 1),  # noise drawn, nothing stored
    ("after warehouse.duckdb: INSERT INTO release.cohort_sizes", 1),  # uncommitted release
    ("after warehouse.duckdb: INSERT INTO release.cohort_metrics", 1),
    ("noise drawn: gaussian", 2),  # some metrics released, others not
    ("after warehouse.duckdb: INSERT INTO release.cohort_recommendations", 1),
]


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
            assert by_seq.get(seq) == (day, table)


def test_sigkill_at_every_point_leaves_a_consistent_ledger_and_a_rerun_completes(tmp_path):
    data = make_data_dir(tmp_path / "data", users=1_000, **{"cohorts.min_size": 20})
    per_release = len(planned_measurements(load_policy(data / "policy.yaml")))
    reserved, released = None, {}
    for n, (kill_at, occurrence) in enumerate(KILL_POINTS):
        run = release_procs.start(
            release_procs.run_release,
            str(data),
            RELEASE_DATE,
            str(tmp_path / f"run{n}.json"),
            kill_at,
            occurrence,
        )
        run.join(300)
        assert run.exitcode == -9, f"run {n} did not die at {kill_at!r}"
        _check_consistent(data, per_release)
        rows = Ledger(data / "ledger.duckdb").rows()
        if reserved is not None:  # a committed reservation is reused, never spent again
            assert rows["row_hash"].tolist() == reserved, f"after the kill at {kill_at!r}"
        elif len(rows):
            reserved = rows["row_hash"].tolist()
        now = _released(data)
        for table, before in released.items():  # released values stay as they were
            assert now[table] == before, f"release.{table} changed after the kill at {kill_at!r}"
        released = {table: rows for table, rows in now.items() if rows}
    # the chain got as far as intended: reserved, partly released, recommendations not
    assert reserved is not None and "cohort_sizes" in released
    assert "cohort_recommendations" not in released

    last = release_procs.start(
        release_procs.run_release, str(data), RELEASE_DATE, str(tmp_path / "last.json")
    )
    last.join(300)
    summary, log = release_procs.read_output(tmp_path / "last.json")
    assert last.exitcode == 0 and summary["success"], log[-3000:]
    _check_consistent(data, per_release)
    assert Ledger(data / "ledger.duckdb").rows()["row_hash"].tolist() == reserved
    final = _released(data)
    assert all(final[table] for table in CHARGED)
    for table, before in released.items():
        assert final[table] == before
