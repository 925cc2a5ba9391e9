"""The Spark engine: the per-user bounding SQL of privacy/bounding.py, run on Spark.

Selected with COHORT_PIPELINE_ENGINE=spark (needs the `spark` extra and a Java 17+ runtime).
The validated window events and the catalog go to Spark as Parquet in `stage_dir`; Spark runs
the same queries, translated from DuckDB's dialect by sqlglot and the rewrites below,
and writes the bounded tables back as Parquet, which the warehouse loads into its
private schema. Everything after bounding (noise, ledger, checks) is unchanged. Point
`master` at a cluster and `stage_dir` at storage both the warehouse and the executors
can read (docs/scale.md).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlglot
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config
from sqlglot import exp

from cohort_pipeline.engines import BoundingEngine
from cohort_pipeline.privacy.bounding import bounded_totals, working
from cohort_pipeline.storage.warehouse import private_table


def _struct_order(node: exp.Expression) -> exp.Expression:
    # DuckDB orders row tuples lexicographically; Spark orders structs the same way.
    if isinstance(node, exp.Tuple) and isinstance(node.parent, exp.ArgMax | exp.ArgMin):
        return exp.Struct(expressions=node.expressions)
    return node


def _utc_wall_time(node: exp.Expression) -> exp.Expression:
    # The Spark session runs in UTC (see `session`), so a timestamp already reads as UTC.
    if isinstance(node, exp.Anonymous) and node.name.lower() == "timezone":
        zone, value = node.expressions
        if zone.name.upper() != "UTC":
            raise ValueError(f"only timezone('UTC', ...) translates to Spark, not {zone.sql()}")
        return value
    return node


def _day_difference(node: exp.Expression) -> exp.Expression:
    # DATE - DATE is a day count in DuckDB and an interval in Spark.
    if isinstance(node, exp.Sub) and isinstance(node.this, exp.Cast) and node.this.is_type("date"):
        return exp.DateDiff(this=node.this, expression=node.expression, unit=exp.var("DAY"))
    return node


def _no_materialization_hint(node: exp.Expression) -> exp.Expression:
    # `AS [NOT] MATERIALIZED` is a DuckDB planning hint Spark does not parse.
    if isinstance(node, exp.CTE):
        node.set("materialized", None)
    return node


def to_spark_sql(sql: str) -> str:
    """The same query in Spark SQL."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for rewrite in (_struct_order, _utc_wall_time, _day_difference, _no_materialization_hint):
        tree = tree.transform(rewrite)
    return tree.sql(dialect="spark")


def spark_config(master: str, **settings: str) -> dict[str, str]:
    """The session settings the engine runs with; `settings` add or override any."""
    return {
        "spark.master": master,
        "spark.app.name": "cohort_pipeline",
        "spark.sql.session.timeZone": "UTC",  # see _utc_wall_time
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",  # sized for local[2]
        **settings,
    }


class SparkEngine(BoundingEngine):
    """Bounding on Spark, through Dagster's PySpark integration: `pyspark` is a
    `dagster_pyspark.PySparkResource`, whose `spark_config` holds every session setting
    (`spark_config()`; `spark.master` is `local[N]` on one machine or a cluster URL:
    `spark://host:7077`, `yarn`, `k8s://...`)."""

    stage_dir: str
    pyspark: PySparkResource

    def session(self):
        # Dagster starts the session when it initializes the resource for a run; a direct
        # call (a script, a benchmark) starts it the same way.
        return self.pyspark.spark_session or spark_session_from_config(self.pyspark.spark_config)

    @contextmanager
    def bounded_tables(
        self, con, policy, day, events, catalog, progress=None
    ) -> Iterator[list[tuple[str, str]]]:
        # The staged Parquet is removed when the block ends, once the warehouse has loaded it.
        stage = Path(self.stage_dir) / f"bounding-{uuid.uuid4().hex}"
        stage.mkdir(parents=True)
        try:
            spark = self.session()
            for name in (events, catalog):
                con.execute(f"COPY (SELECT * FROM {name}) TO '{stage / name}' "
                            "(FORMAT parquet, PER_THREAD_OUTPUT true)")  # fmt: skip
                spark.read.parquet(str(stage / name)).createOrReplaceTempView(name)
            queries = []
            bounding = bounded_totals(policy, day, events, catalog)
            for done, (name, sql) in enumerate(bounding, start=1):
                target = stage / name
                spark.sql(to_spark_sql(sql)).write.parquet(str(target))
                # Later queries read this table by name, as on DuckDB.
                spark.read.parquet(str(target)).createOrReplaceTempView(name)
                if progress:
                    progress(done, len(bounding))
                if not working(name):
                    queries.append(
                        (private_table(name), f"SELECT * FROM read_parquet('{target}/*.parquet')")
                    )
            yield queries
        finally:
            shutil.rmtree(stage, ignore_errors=True)
