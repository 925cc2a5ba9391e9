"""Group cohorts (private zone): bounded per-user profiles and the user -> cohort map."""


from datetime import date

from dagster import AssetExecutionContext, MaterializeResult, asset

from cohort_pipeline.assets.common import (
    CODE_VERSION,
    DAILY,
    PRIVATE_TAGS,
    Group,
    Owner,
    data_version_of,
    private_metadata,
)
from cohort_pipeline.assets.ingest import raw_events
from cohort_pipeline.privacy.bounding import user_categories_sql, user_items_sql, user_profiles_sql
from cohort_pipeline.resources import PipelineResource, WarehouseResource, replace_partition


@asset(
    partitions_def=DAILY,
    group_name=Group.COHORTS,
    owners=[Owner.DATA],
    kinds={"duckdb"},
    tags=PRIVATE_TAGS,
    code_version=CODE_VERSION,
    pool="warehouse",
    deps=[raw_events],
    description="Per-user bands (engagement, purchase recency, primary device) and contribution-bounded "
    "values; also each user's L2-bounded category and item vectors (private.user_categories, "
    "private.user_items).",
)
def user_profiles(context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource):
    policy = pipeline.policy()
    release_date = context.partition_key
    version = data_version_of(warehouse, "private.ingest_report", release_date)
    catalog = str(pipeline.catalog_path).replace("'", "''")
    with warehouse.connect() as con:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE events AS SELECT * EXCLUDE (release_date, data_version) "
            "FROM private.raw_events WHERE release_date = ?",
            [release_date],
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE catalog AS SELECT item_id, category FROM read_csv('{catalog}', "
            "header = true, all_varchar = true)"
        )
        day = date.fromisoformat(release_date)
        for table, sql in (
            ("private.user_profiles", user_profiles_sql(policy, day, "events")),
            ("private.user_categories", user_categories_sql(policy, "events", "catalog")),
            ("private.user_items", user_items_sql(policy, "events")),
        ):
            replace_partition(con, table, release_date, sql, data_version=version)
        schema = con.execute("DESCRIBE SELECT * FROM private.user_profiles").fetchall()
    return MaterializeResult(
        metadata={**private_metadata("private.user_profiles", {r[0]: r[1] for r in schema}), "data_version": version}
    )


@asset(
    partitions_def=DAILY,
    group_name=Group.COHORTS,
    owners=[Owner.DATA],
    kinds={"duckdb"},
    tags=PRIVATE_TAGS,
    code_version=CODE_VERSION,
    pool="warehouse",
    deps=[user_profiles],
    description="user -> cohort key (one full key of the policy's public key set per user).",
)
def cohort_assignments(context: AssetExecutionContext, warehouse: WarehouseResource):
    release_date = context.partition_key
    version = data_version_of(warehouse, "private.user_profiles", release_date)
    with warehouse.connect() as con:
        replace_partition(
            con,
            "private.cohort_assignments",
            release_date,
            f"SELECT user_id, cohort_key FROM private.user_profiles WHERE release_date = DATE '{release_date}'",
            data_version=version,
        )
    return MaterializeResult(
        metadata={**private_metadata("private.cohort_assignments", {"user_id": "VARCHAR", "cohort_key": "VARCHAR"}),
                  "data_version": version}
    )
