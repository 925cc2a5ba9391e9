"""Group cohorts (private zone): bounded per-user profiles, the exact per-key sums the DP
assets noise, and the user -> cohort map."""

from datetime import date

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    asset,
    multi_asset,
)

from cohort_pipeline.defs.common import (
    PRIVATE,
    Group,
    Owner,
    asset_args,
    private_metadata,
    progress_log,
    split_args,
)
from cohort_pipeline.defs.ingest import catalog, raw_events
from cohort_pipeline.engines import BoundingEngine
from cohort_pipeline.privacy.measurements import REGISTRY
from cohort_pipeline.resources import PipelineResource, WarehouseResource
from cohort_pipeline.storage.warehouse import (
    COHORT_ASSIGNMENTS,
    USER_PROFILES,
    assignments_view,
    catalog_view,
    columns,
    drop_legacy,
    private_table,
    replace_partition,
    table_name,
    window_view,
)

_SPECS, _OP = split_args(asset_args(Group.COHORTS, Owner.DATA, PRIVATE, {"duckdb"}))
# The bounded sums the measurements read (measurements.REGISTRY's sources), in its order.
TOTALS = list(dict.fromkeys(table_name(s.source) for s in REGISTRY.values() if s.source))
# Assets downstream name the one table they read, not the whole multi-asset.
PROFILES = AssetKey(table_name(USER_PROFILES))


def totals(measurement: str) -> AssetKey:
    """The asset of the bounded sums `measurement` reads."""
    return AssetKey(table_name(REGISTRY[measurement].source))


@multi_asset(
    name="user_profiles",
    specs=[
        AssetSpec(
            table_name(USER_PROFILES),
            **_SPECS,
            deps=[raw_events, catalog],
            description="Per-user bands (the policy's cohort dimensions) and contribution-bounded "
            f"values ({USER_PROFILES}), computed with the exact per-key sums beside it.",
        ),
        *[
            AssetSpec(
                name,
                **_SPECS,
                deps=[raw_events, catalog],
                description=f"Exact per-key sums of the bounded values ({private_table(name)}), written with "
                "user_profiles: private, only a mechanism sees them.",
            )
            for name in TOTALS
        ],
    ],
    # The bounded tables are computed together: a run materializes all of them or none.
    **_OP,
)
def user_profiles(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    engine: BoundingEngine,
):
    policy = pipeline.policy()
    release_date = context.partition_key
    day = date.fromisoformat(release_date)
    schemas = {}
    with warehouse.connect() as con:
        events, items = window_view(con, release_date), catalog_view(con, release_date)
        # DuckDB or Spark, by COHORT_PIPELINE_ENGINE; the tables land in the warehouse either way.
        progress = progress_log(context, "bounding queries done", every_s=0)
        with engine.bounded_tables(con, policy, day, events, items, progress) as tables:
            context.log.info(f"storing {len(tables)} bounded tables in the private schema")
            for table, sql in tables:
                replace_partition(con, table, release_date, sql)
                schemas[table] = columns(con, table)
        drop_legacy(con)
    for name in [table_name(USER_PROFILES), *TOTALS]:
        table = private_table(name)
        yield MaterializeResult(asset_key=name, metadata=private_metadata(table, schemas[table]))


@asset(
    **asset_args(Group.COHORTS, Owner.DATA, PRIVATE, {"duckdb"}),
    deps=[PROFILES],
    description="user -> cohort key (one full key of the policy's public key set per user): "
    f"a view of {USER_PROFILES}, so it always matches the stored profiles.",
)
def cohort_assignments(context: AssetExecutionContext, warehouse: WarehouseResource):
    with warehouse.connect() as con:
        assignments_view(con)
    return MaterializeResult(
        metadata=private_metadata(
            COHORT_ASSIGNMENTS, {"user_id": "VARCHAR", "cohort_key": "VARCHAR"}
        )
    )
