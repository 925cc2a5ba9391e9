"""Group ingest (private zone): opt-outs and validated events of a release window."""

from datetime import date

from dagster import AssetExecutionContext, MaterializeResult, asset

from cohort_pipeline.defs.common import (
    PRIVATE,
    Group,
    Owner,
    asset_args,
    private_metadata,
    progress_log,
)
from cohort_pipeline.privacy.bounding import window
from cohort_pipeline.resources import (
    PipelineResource,
    WarehouseResource,
    prune_windows,
    replace_partition,
)
from cohort_pipeline.schema import EVENT_COLUMNS
from cohort_pipeline.storage import optouts
from cohort_pipeline.storage.events import earliest_event, load_window
from cohort_pipeline.storage.private_files import too_open


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
        replace_partition(con, "private.opt_outs", context.partition_key, frame)
    return MaterializeResult(metadata=private_metadata("private.opt_outs", frame))


@asset(
    **asset_args(Group.INGEST, Owner.DATA, PRIVATE, {"duckdb", "parquet"}),
    deps=[opt_outs],
    description="Validated events of the release window (lookback_days ending on the release date); "
    "bad rows quarantined in private.rejected_events with a reason. Windows of older release dates "
    "are removed beyond COHORT_PIPELINE_KEEP_WINDOWS (default 8).",
)
def raw_events(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    policy = pipeline.policy()
    release_date = context.partition_key
    first, _, last = window(policy, date.fromisoformat(release_date))
    catalog = str(pipeline.catalog_path).replace("'", "''")
    with warehouse.connect() as con:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE catalog AS SELECT * FROM read_csv('{catalog}', header = true, all_varchar = true)"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE current_opt_outs AS "
            f"SELECT user_id FROM private.opt_outs WHERE release_date = DATE '{release_date}'"
        )
        result = load_window(
            con,
            pipeline.events_dir,
            "catalog",
            "current_opt_outs",
            first,
            last,
            progress=progress_log(context, "event files validated"),
            earliest=earliest_event(policy),
        )
        context.log.info("storing the validated window in private.raw_events")
        replace_partition(
            con,
            "private.raw_events",
            release_date,
            "SELECT * FROM window_events",
        )
        # Write the window out now, so that the checkpoint at this step's close (after the
        # small writes below) is the one that vacuums (merges) its part-filled row groups;
        # otherwise the next asset to write a table pays for it (~0.25 s at 10M events).
        con.execute("CHECKPOINT")
        replace_partition(
            con,
            "private.rejected_events",
            release_date,
            "SELECT * FROM window_rejected",
        )
        replace_partition(
            con,
            "private.ingest_report",
            release_date,
            result.report.assign(window_quarantined=result.window_quarantined),
        )
        pruned = prune_windows(con, release_date, warehouse.keep_windows)
    context.log.info(
        f"release {release_date}: window {first}..{last}, "
        f"{len(result.report)} files read (counts in private.ingest_report)"
    )
    if result.window_quarantined:
        # No count and no row: where and why stay in the warehouse.
        context.log.warning(
            f"release {release_date}: every event read for the window {first}..{last} was "
            "quarantined (reasons in private.rejected_events, counts in private.ingest_report). "
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
            **private_metadata("private.raw_events", EVENT_COLUMNS),
            "window": f"{first} .. {last}",
            "files_read": len(result.report),
        },
    )
