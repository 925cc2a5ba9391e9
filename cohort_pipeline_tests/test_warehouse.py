"""storage/warehouse.py on a real DuckDB file: partitions, the atomic replace, the write-once
draws, the catalog, and table names that resolve to the tables a release writes."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from cohort_pipeline.storage import warehouse as wh
from cohort_pipeline_tests.conftest import RELEASE_DATE, run_release


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    wh.configure(connection)
    yield connection
    connection.close()


def _weights(value: float) -> pd.DataFrame:
    return pd.DataFrame({"cohort_key": ["a", "b"], "weight": [value, value + 1]})


def test_partition_reads_one_date_and_filters(con):
    for day, value in (("2026-01-01", 1.0), ("2026-01-02", 2.0)):
        wh.replace_partition(con, wh.RANKING_WEIGHTS, day, _weights(value))
    rows = wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-02")
    assert sorted(rows["weight"]) == [2.0, 3.0]
    assert list(wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-02", cohort_key="b")["weight"]) == [
        3.0
    ]
    assert wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-03").empty
    assert wh.partition(con, wh.COHORT_SIMILARITY, "2026-01-01").empty  # no table yet
    assert wh.release_dates(con, wh.RANKING_WEIGHTS) == [
        pd.Timestamp(d).date() for d in ("2026-01-01", "2026-01-02")
    ]


def test_previous_partition_is_the_latest_strictly_before(con):
    for day, value in (("2026-01-01", 1.0), ("2026-01-03", 3.0), ("2026-01-05", 5.0)):
        wh.replace_partition(con, wh.RANKING_WEIGHTS, day, _weights(value))
    assert wh.previous_partition(con, wh.RANKING_WEIGHTS, "2026-01-01").empty
    assert wh.previous_date(con, wh.RANKING_WEIGHTS, "2026-01-01") is None
    before = wh.previous_partition(con, wh.RANKING_WEIGHTS, "2026-01-05")
    assert set(before["weight"]) == {3.0, 4.0}
    assert str(before["release_date"].iloc[0])[:10] == "2026-01-03"
    assert wh.previous_date(con, wh.RANKING_WEIGHTS, "2026-01-04") == "2026-01-03"
    assert wh.previous_partition(con, wh.COHORT_SIZES, "2026-01-04").empty  # no table


def test_replace_partition_replaces_one_date_only(con):
    wh.replace_partition(con, wh.RANKING_WEIGHTS, "2026-01-01", _weights(1.0))
    wh.replace_partition(con, wh.RANKING_WEIGHTS, "2026-01-02", _weights(2.0))
    wh.replace_partition(con, wh.RANKING_WEIGHTS, "2026-01-02", _weights(7.0).head(1))
    assert list(wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-02")["weight"]) == [7.0]
    assert sorted(wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-01")["weight"]) == [1.0, 2.0]


def test_a_failing_replace_leaves_the_old_partition(con):
    wh.replace_partition(con, wh.RANKING_WEIGHTS, "2026-01-01", _weights(1.0))
    # The DELETE runs, then the INSERT fails (a string where the table holds doubles).
    bad = pd.DataFrame({"cohort_key": ["a"], "weight": ["not a number"]})
    with pytest.raises(duckdb.Error):
        wh.replace_partition(con, wh.RANKING_WEIGHTS, "2026-01-01", bad)
    assert sorted(wh.partition(con, wh.RANKING_WEIGHTS, "2026-01-01")["weight"]) == [1.0, 2.0]


def test_draws_are_read_back_as_stored_and_keyed_by_reservation(con):
    frame = pd.DataFrame({"cohort_key": ["a", "b"], "noisy_users": [10.5, -2.25]})
    assert wh.load_draw(con, "cohort_sizes", "r1") is None  # no table yet
    wh.save_draw(con, "cohort_sizes", "r1", "2026-01-01", frame)
    pd.testing.assert_frame_equal(wh.load_draw(con, "cohort_sizes", "r1"), frame)
    assert wh.load_draw(con, "cohort_sizes", "r2") is None
    with pytest.raises(ValueError, match="no rows"):  # empty would read back as missing
        wh.save_draw(con, "cohort_sizes", "r2", "2026-01-01", frame.head(0))
    assert wh.load_draw(con, "cohort_sizes", "r2") is None


def test_a_failing_draw_insert_stores_nothing(con):
    frame = pd.DataFrame({"cohort_key": ["a"], "noisy_users": [1.0]})
    wh.save_draw(con, "cohort_sizes", "r1", "2026-01-01", frame)
    bad = pd.DataFrame({"cohort_key": ["a", "b"], "noisy_users": [2.0, "x"]})
    with pytest.raises(duckdb.Error):
        wh.save_draw(con, "cohort_sizes", "r2", "2026-01-01", bad)
    assert wh.load_draw(con, "cohort_sizes", "r2") is None  # not half a draw
    (n,) = con.execute(f"SELECT count(*) FROM {wh.draws_table('cohort_sizes')}").fetchone()
    assert n == 1


def test_the_catalog_is_stored_per_release_as_read(con, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,category\ni1,books\ni2,\n007,toys\n")
    wh.store_catalog(con, "2026-01-01", path)
    items = wh.read_catalog(con, "2026-01-01")
    assert list(items["item_id"]) == ["i1", "i2", "007"]  # strings: leading zeros kept
    assert items["category"].isna().tolist() == [False, True, False]
    view = wh.catalog_view(con, "2026-01-01")
    assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (3,)
    with pytest.raises(LookupError):
        wh.read_catalog(con, "2026-01-02")


@pytest.mark.slow
def test_every_table_constant_names_a_table_a_release_writes(small_dir):
    assert run_release(small_dir).success
    constants = [
        value
        for name, value in vars(wh).items()
        if name.isupper() and isinstance(value, str) and not value.endswith("_")
        and value.split(".")[0] in wh.SCHEMAS
    ]  # fmt: skip
    assert len(constants) == 18
    # No ranking release 7 days earlier: nothing to evaluate, so no experiment results.
    later = {wh.EXPERIMENT_RESULTS}
    draws = [wh.draws_table(m) for m in ("cohort_sizes", "cohort_metrics", "item_popularity")]
    with duckdb.connect(str(small_dir / "warehouse.duckdb"), read_only=True) as con:
        found = {
            f"{schema}.{name}"
            for schema, name in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
        assert not found & set(wh.LEGACY)
        for table in [*constants, *draws]:
            if table in later:
                continue
            assert table in found, table
            if table not in (wh.OPT_OUTS, wh.REJECTED_EVENTS):  # none in the sample
                assert not wh.partition(con, table, RELEASE_DATE).empty, table
