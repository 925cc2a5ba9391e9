"""SIGKILL a release between every pair of writes of every DP asset; no retry draws twice.

A full run is recorded first: its kill points are the points of the release protocol (the
ledger's reservation and each DP asset from admission to its release tables) just before or
after a write, and just after a noise draw (release_procs.kill_target). Then one data folder
is released again and again, each run killed at the first such point not yet killed (a
retry passes the points earlier runs died at), the way an unlucky operator would retry a
flaky host, until a run completes. After every kill the ledger verifies and holds all of the
date's reservation or none of it, never a second one; every released row is charged under
the reservation it names; what is released stays as it was. Each child logs its draws and
stored draws per (reservation, measurement): a measurement is drawn again only when the
process that drew it died before storing it, never after a draw was stored.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import date, timedelta

import duckdb

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import REGISTRY, planned_measurements
from cohort_pipeline_tests import release_procs
from cohort_pipeline_tests.conftest import RELEASE_DATE, make_data_dir

# Release tables written under a reservation, and the asset each is charged to.
CHARGED = {
    "cohort_sizes": "cohort_sizes",
    "cohort_metrics": "cohort_metrics",
    "cohort_category_affinity": "cohort_category_affinity",
    "item_popularity": "cohort_recommendations",
    "cohort_recommendations": "cohort_recommendations",
    "experiment_results": "experiment_report",
}
ASSET_OF = {s.name: s.asset for s in REGISTRY.values()}  # measurement -> asset charged
UPSTREAM = "*cohort_assignments"  # ingest and cohorts: no noise, prepared once
# The reservation and every DP asset, with the post-processing steps between them.
PROTOCOL = [
    "privacy_budget_ledger",
    "cohort_sizes",
    "cohort_metrics",
    "cohort_category_affinity",
    "cohort_similarity",
    "ranking_weights",
    "cohort_recommendations",
    "experiment_report",
]


def _released(data) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        found = {}
        for table in CHARGED:
            try:
                found[table] = con.execute(
                    f"SELECT ledger_seq, reservation_id, * EXCLUDE (ledger_seq, reservation_id)"
                    f" FROM release.{table} WHERE release_date = DATE '{RELEASE_DATE}' ORDER BY ALL"
                ).fetchall()
            except duckdb.CatalogException:
                found[table] = []
        return found
    finally:
        con.close()


def _date_rows(data):
    rows = Ledger(data / "ledger.duckdb").rows()
    return rows[rows["release_date"].dt.date == date.fromisoformat(RELEASE_DATE)]


def _check_consistent(data, per_release: int) -> None:
    assert Ledger(data / "ledger.duckdb").verify() == []
    rows = _date_rows(data)
    assert len(rows) in (0, per_release)  # all of a reservation or none of it, never twice
    charged = {(int(r.seq), r.reservation_id): r.asset for r in rows.itertuples()}
    for table, released in _released(data).items():
        for seq, reservation_id, *_ in released:  # every released value was charged first
            assert charged.get((seq, reservation_id)) == CHARGED[table], table


def _check_draws(log: str, killed_at: list[str]) -> dict[str, int]:
    """Draws per (reservation, measurement) key. No draw follows a logged store of the same
    key, and each key is drawn once plus once per kill that came after its draw and before
    the draw's INSERT committed (that process stored nothing, so nothing read its draw)."""
    stored: set[str] = set()
    drawn: dict[str, int] = defaultdict(int)
    for line in log.splitlines():
        _, event, key = line.split(" ", 2)
        assert key not in stored, f"{key} drawn again after it was stored"
        if event == "drawn":
            drawn[key] += 1
        else:
            stored.add(key)
    for key, count in drawn.items():
        region = f"{ASSET_OF[key.split()[1]]} | "
        lost = [
            point
            for point in killed_at
            if point.startswith(region)
            and ("| noise drawn" in point or "private.draws_" in point)
            and "INSERT INTO private.draws_" not in point
        ]
        assert count == 1 + len(lost), (key, count, lost)
    return dict(drawn)


def _run(data, out, **kwargs):
    args = [str(data), RELEASE_DATE, str(out), None, 1, 0.0]
    args += [kwargs.get("points_log"), kwargs.get("selection", PROTOCOL)]
    args += [kwargs.get("visited"), kwargs.get("draws_log")]
    run = release_procs.start(release_procs.run_release, *args)
    run.join(300)
    return run.exitcode


def test_sigkill_between_every_write_of_every_dp_asset_never_draws_twice(tmp_path):
    data = make_data_dir(tmp_path / "data", users=1_000, **{"cohorts.min_size": 20})
    per_release = len(planned_measurements(load_policy(data / "policy.yaml")))
    # The ranking released a week earlier, so that experiment_report has something to draw.
    week_before = (date.fromisoformat(RELEASE_DATE) - timedelta(days=7)).isoformat()
    args = [str(data), week_before, str(tmp_path / "before.json")]
    release_procs.start(release_procs.run_release, *args).join(300)
    assert release_procs.read_output(tmp_path / "before.json")[0]["success"]
    assert _run(data, tmp_path / "up.json", selection=UPSTREAM) == 0

    # Record the kill points of a full run, on a copy of the prepared folder.
    full = tmp_path / "full"
    shutil.copytree(data, full)
    assert _run(full, tmp_path / "full.json", points_log=str(tmp_path / "points")) == 0
    recorded = (tmp_path / "points").read_text().splitlines()
    seen: dict[str, int] = defaultdict(int)
    targets = []
    for label in recorded:  # as release_procs numbers them: label, then its occurrence
        if release_procs.kill_target(label):
            seen[label] += 1
            targets.append(f"{label} #{seen[label]}")
    regions = {t.split(" | ")[0] for t in targets}
    assert regions == {"privacy_budget_ledger", *set(CHARGED.values())}

    visited, draws = tmp_path / "visited", tmp_path / "draws"
    reserved, released, kills = None, {}, 0
    for n in range(len(targets) + 5):
        code = _run(data, tmp_path / f"run{n}.json", visited=str(visited), draws_log=str(draws))
        if code == 0:
            break
        assert code == -9, f"run {n} ended with {code}"
        kills += 1
        _check_consistent(data, per_release)
        rows = _date_rows(data)
        if reserved is not None:  # a committed reservation is reused, never spent again
            assert rows["row_hash"].tolist() == reserved
        elif len(rows):
            reserved = rows["row_hash"].tolist()
        now = _released(data)
        for table, before in released.items():  # released values stay as they were
            assert now[table] == before, f"release.{table} changed by run {n}"
        released = {table: rows for table, rows in now.items() if rows}
    summary, log = release_procs.read_output(tmp_path / f"run{n}.json")
    assert summary and summary["success"], log[-3000:]
    killed_at = visited.read_text().splitlines()
    assert set(targets) <= set(killed_at)  # every point of the full run was a kill point
    assert kills == len(killed_at)

    _check_consistent(data, per_release)
    assert _date_rows(data)["row_hash"].tolist() == reserved
    final = _released(data)
    assert all(final[table] for table in CHARGED)
    for table, before in released.items():
        assert final[table] == before
    counts = _check_draws(draws.read_text(), killed_at)
    assert {key.split()[1] for key in counts} == {
        "cohort_sizes",
        "cohort_metrics",
        "cohort_category_affinity",
        "item_popularity",
        "experiment_report",
    }
    assert len({key.split()[0] for key in counts}) == 1  # one reservation
