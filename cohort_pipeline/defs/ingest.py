"""Group ingest: the public catalog, and (private zone) opt-outs and validated events of a
release window."""

from datetime import date

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from cohort_pipeline.defs.common import (
    PRIVATE,
    PUBLIC,
    Group,
    Owner,
    asset_args,
    private_metadata,
    progress_log,
)
from cohort_pipeline.privacy.bounding import window
from cohort_pipeline.resources import PipelineResource, WarehouseResource
from cohort_pipeline.schema import EVENT_COLUMNS
from cohort_pipeline.storage import optouts
from cohort_pipeline.storage.events import earliest_event, load_window, store_window
from cohort_pipeline.storage.private_files import too_open
from cohort_pipeline.storage.warehouse import (
    CATALOG,
    INGEST_REPORT,
    OPT_OUTS,
    RAW_EVENTS,
    REJECTED_EVENTS,
    catalog_view,
    opt_outs_table,
    prune_windows,
    read_catalog,
    replace_partition,
    store_catalog,
)


@asset(
    **asset_args(Group.INGEST, Owner.DATA, PUBLIC, {"duckdb", "csv"}),
    description="The public item catalog (catalog.csv: item_id, category) as of this release, "
    f"read once per release into {CATALOG}; every later step reads it from there.",
)
def catalog(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    pipeline.policy()  # a first step too: a bad policy stops the release before anything is read
    with warehouse.connect() as con:
        store_catalog(con, context.partition_key, pipeline.catalog_path)
        items = read_catalog(con, context.partition_key)
    return MaterializeResult(
        metadata={
            "table": MetadataValue.text(CATALOG),
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(str(name), "string") for name in items.columns]
            ),
            # Public: the catalog is no user's data, so its size may be shown.
            "dagster/row_count": len(items),
            "categories": int(items["category"].nunique()),
            "zone": PUBLIC,
        }
    )


@asset(
    **asset_args(Group.INGEST, Owner.DATA, PRIVATE, {"duckdb", "csv"}),
    description="Users who opted out (opt_outs.csv), as of this release: excluded before anything else.",
)
def opt_outs(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    pipeline.policy()  # the first step: a bad policy stops the release before any data is read
    if warning := too_open(pipeline.data_dir):
        context.log.warning(warning)
    frame = optouts.read(pipeline.opt_outs_path)[["user_id"]]
    with warehouse.connect() as con:
        replace_partition(con, OPT_OUTS, context.partition_key, frame)
    return MaterializeResult(metadata=private_metadata(OPT_OUTS, frame))


@asset(
    **asset_args(Group.INGEST, Owner.DATA, PRIVATE, {"duckdb", "parquet"}),
    deps=[opt_outs, catalog],
    description="Validated events of the release window (lookback_days ending on the release date); "
    f"bad rows quarantined in {REJECTED_EVENTS} with a reason. Windows of older release dates "
    "are removed beyond COHORT_PIPELINE_KEEP_WINDOWS (default 8).",
)
def raw_events(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    policy = pipeline.policy()
    release_date = context.partition_key
    first, _, last = window(policy, date.fromisoformat(release_date))
    with warehouse.connect() as con:
        result = load_window(
            con,
            pipeline.events_dir,
            catalog_view(con, release_date),
            opt_outs_table(con, release_date, "current_opt_outs"),
            first,
            last,
            progress=progress_log(context, "event files validated"),
            earliest=earliest_event(policy),
        )
        context.log.info(f"storing the validated window in {RAW_EVENTS}")
        store_window(con, release_date, result)
        pruned = prune_windows(con, release_date, warehouse.keep_windows)
    context.log.info(
        f"release {release_date}: window {first}..{last}, "
        f"{len(result.report)} files read (counts in {INGEST_REPORT})"
    )
    if result.window_quarantined:
        # No count and no row: where and why stay in the warehouse.
        context.log.warning(
            f"release {release_date}: every event read for the window {first}..{last} was "
            f"quarantined (reasons in {REJECTED_EVENTS}, counts in {INGEST_REPORT}). "
            f"Events before {earliest_event(policy)} are taken for default values: for older "
            "logs, move release.partitions_start (or COHORT_PIPELINE_PARTITIONS_START) back to "
            "their first release date."
        )
    if pruned:
        context.log.info(
            f"removed the validated windows of {len(pruned)} older release date(s) "
            f"({pruned[0]} .. {pruned[-1]}): {warehouse.keep_windows} are kept "
            "(COHORT_PIPELINE_KEEP_WINDOWS); the event files are untouched"
        )
    return MaterializeResult(
        metadata={
            **private_metadata(RAW_EVENTS, EVENT_COLUMNS),
            "window": f"{first} .. {last}",
            "files_read": len(result.report),
        },
    )
