"""Where the per-user bounding SQL runs: in the DuckDB warehouse (default) or on Spark.

An engine is the resource under the key "engine"; `definitions.resources_for` picks it from
COHORT_PIPELINE_ENGINE (`duckdb` or `spark`). Either way the bounded tables (per-user profiles
and the per-key sums the mechanisms noise) land in the warehouse's private schema, so noise,
the ledger and the checks never see a difference.
The SQL itself is written once, in privacy/bounding.py (DuckDB dialect); the Spark engine
translates it, and a parity test holds the two engines to the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date

import duckdb
from dagster import ConfigurableResource

from cohort_pipeline.policy import Policy
from cohort_pipeline.privacy.bounding import (
    HASHES,
    IDS,
    bounded_totals,
    unique_hashes_sql,
    working,
)
from cohort_pipeline.settings import Settings, use_this_python_for_spark
from cohort_pipeline.storage.warehouse import private_table

Progress = Callable[[int, int], None]  # (done, total)


class BoundingEngine(ConfigurableResource):
    """Runs the bounding queries of a release; the resource under the key "engine"."""

    def bounded_tables(
        self,
        con: duckdb.DuckDBPyConnection,
        policy: Policy,
        day: date,
        events: str,
        catalog: str,
        progress: Progress | None = None,
    ) -> AbstractContextManager[list[tuple[str, str]]]:
        """A context yielding (private table, query over `con`) pairs, valid inside the block.
        `events` (validated window events) and `catalog` name relations of `con`;
        `progress(done, total)` is called after each bounding query."""
        raise NotImplementedError


class DuckDBEngine(BoundingEngine):
    """Bounding inside the warehouse connection: nothing leaves DuckDB."""

    @contextmanager
    def bounded_tables(
        self, con, policy, day, events, catalog, progress=None
    ) -> Iterator[list[tuple[str, str]]]:
        names = []
        profiles, *sums = bounded_totals(policy, day, events, catalog)

        def create(name: str, sql: str) -> None:
            # A temp table under its own name: the next queries read it as such.
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
            names.append(name)
            if progress:
                progress(len(names), 1 + len(sums))

        try:
            create(*profiles)
            # The profiles need no keys; the sums use hash keys when they are unique in this
            # window, else the ids (same sums, slower).
            unique = con.execute(unique_hashes_sql(profiles[0], catalog)).fetchone()[0]
            keys = HASHES if unique else IDS
            for name, sql in bounded_totals(policy, day, events, catalog, keys)[1:]:
                create(name, sql)
            for name in filter(working, names):
                con.execute(f"DROP TABLE temp.{name}")  # its memory is needed for storing the rest
            stored = [name for name in names if not working(name)]
            yield [(private_table(name), f"SELECT * FROM {name}") for name in stored]
        finally:
            for name in names:
                con.execute(f"DROP TABLE IF EXISTS temp.{name}")


def engine_for(settings: Settings) -> BoundingEngine:
    """The engine settings.engine (COHORT_PIPELINE_ENGINE) names; Spark stages its Parquet in
    settings.spark_stage."""
    if settings.engine == "spark":
        from dagster_pyspark import PySparkResource

        from cohort_pipeline.engines.spark import SparkEngine, spark_config

        use_this_python_for_spark()  # before Dagster starts the session
        return SparkEngine(
            stage_dir=str(settings.spark_stage),
            pyspark=PySparkResource(spark_config=spark_config(settings.spark_master)),
        )
    return DuckDBEngine()
