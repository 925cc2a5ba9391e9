"""The Spark engine bounds users exactly as DuckDB does: real Spark on local[2], real Dagster
runs selected by COHORT_PIPELINE_ENGINE, real DuckDB warehouses, and the release functions'
own aggregation with the noise taken out."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from dagster_pyspark import PySparkResource

from cohort_pipeline.definitions import resources_for
from cohort_pipeline.engines import DuckDBEngine
from cohort_pipeline.engines.spark import SparkEngine, to_spark_sql
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.release import (
    release_cohort_affinity,
    release_cohort_metrics,
    release_cohort_sizes,
    release_item_popularity,
)
from cohort_pipeline_tests.conftest import BOUNDED, RELEASE_DATE, make_data_dir, run_release

BOUNDING = ["catalog", "opt_outs", "raw_events", *BOUNDED]
TABLES = (
    "private.user_profiles",
    "private.cohort_totals",
    "private.cohort_category_totals",
    "private.item_totals",
)
# Spark and DuckDB may add a user's values in another order: allow the last bits of a double.
RTOL = 1e-12


class NoNoise:
    """Stands in for a mechanism so a release function returns its exact pre-noise vector.
    Test only: never on a release path."""

    scale = std = accuracy95 = 0.0

    def __call__(self, values) -> np.ndarray:
        return np.asarray(values, dtype=float)


def bounded_tables(data_dir, engine: type, monkeypatch) -> dict[str, pd.DataFrame]:
    """Ingest and bound one release date in a real Dagster run on `engine`."""
    monkeypatch.setenv("COHORT_PIPELINE_ENGINE", "spark" if engine is SparkEngine else "duckdb")
    assert isinstance(resources_for(data_dir)["engine"], engine)
    result = run_release(data_dir, selection=BOUNDING)
    assert result.success
    warehouse = resources_for(data_dir)["warehouse"]
    return {
        table: warehouse.read(
            f"SELECT * EXCLUDE (release_date) FROM {table} WHERE release_date = ? ORDER BY ALL",
            [RELEASE_DATE],
        )
        for table in TABLES
    }


def pre_noise_aggregates(tables: dict[str, pd.DataFrame], data_dir) -> dict[str, pd.DataFrame]:
    """Every vector the release would add noise to, computed by the release functions."""
    policy = load_policy(data_dir / "policy.yaml")
    totals = tables["private.cohort_totals"]
    catalog = pd.read_csv(data_dir / "catalog.csv", dtype=str)
    plan = release_cohort_sizes(totals, policy, NoNoise())
    categories = sorted(catalog["category"].unique())
    return {
        "cohort_sizes": plan,
        "cohort_metrics": release_cohort_metrics(totals, plan, policy, NoNoise(), NoNoise()),
        "cohort_category_affinity": release_cohort_affinity(
            tables["private.cohort_category_totals"], plan, categories, policy, NoNoise()
        ),
        "item_popularity": release_item_popularity(
            tables["private.item_totals"], catalog, policy, NoNoise()
        ),
    }


def test_spark_engine_produces_the_same_pre_noise_aggregates_as_duckdb(tmp_path, monkeypatch):
    # Spark's cost here is its fixed start-up and scheduling; a small sample keeps the test quick.
    spark_dir = make_data_dir(tmp_path / "spark", users=1_000, **{"cohorts.min_size": 20})
    duckdb_dir = tmp_path / "duckdb"
    shutil.copytree(spark_dir, duckdb_dir)

    on_spark = bounded_tables(spark_dir, SparkEngine, monkeypatch)
    on_duckdb = bounded_tables(duckdb_dir, DuckDBEngine, monkeypatch)

    for table in TABLES:
        assert len(on_duckdb[table]) > 0, table
        pd.testing.assert_frame_equal(
            on_spark[table], on_duckdb[table], check_dtype=False, rtol=RTOL
        )
    spark_aggs = pre_noise_aggregates(on_spark, spark_dir)
    duckdb_aggs = pre_noise_aggregates(on_duckdb, duckdb_dir)
    for name, frame in duckdb_aggs.items():
        pd.testing.assert_frame_equal(spark_aggs[name], frame, rtol=RTOL, obj=name)
    # The staged Parquet handed to Spark is gone once the warehouse has loaded the results.
    assert not any((spark_dir / "spark_stage").iterdir())


def test_only_utc_wall_time_translates_to_spark():
    assert "TIMEZONE" not in to_spark_sql("SELECT CAST(timezone('UTC', t) AS DATE) FROM e").upper()
    with pytest.raises(ValueError, match="timezone"):
        to_spark_sql("SELECT timezone('Europe/Paris', t) FROM e")


def test_the_spark_session_comes_from_dagsters_pyspark_resource(tmp_path, monkeypatch):
    """In a run, Dagster initializes the engine's PySparkResource (the parity test above runs
    on that session); a direct call outside a run starts one from the same settings."""
    monkeypatch.setenv("COHORT_PIPELINE_ENGINE", "spark")
    engine = resources_for(tmp_path)["engine"]
    assert isinstance(engine.pyspark, PySparkResource)
    assert engine.pyspark.spark_session is None  # not in a run: nothing started yet
    session = engine.session()
    assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    assert session.range(3).count() == 3
