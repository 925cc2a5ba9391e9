"""Sensors: a drift breach in a release's privacy scorecard requests a ranking refresh.

The sensor reads only Dagster's event log (the scorecard's materialization metadata), never
the warehouse, so it never contends for DuckDB's write lock with a running release.
"""

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset_sensor,
    define_asset_job,
)

from cohort_pipeline.defs.common import DAILY
from cohort_pipeline.defs.governance import privacy_scorecard
from cohort_pipeline.defs.ranking import ranking_weights
from cohort_pipeline.storage.warehouse import ITEM_POPULARITY, table_name

ranking_refresh = define_asset_job(
    "ranking_refresh",
    # item_popularity is rewritten with the recommendations (from the stored draw); the draw
    # itself is read back, not written.
    selection=AssetSelection.assets(
        ranking_weights, "cohort_recommendations", table_name(ITEM_POPULARITY)
    ),
    partitions_def=DAILY,
    description="Recompute ranking weights, item popularity and recommendations of one release date "
    "(post-processing of its stored DP releases; the recommendations' reservation is reused, "
    "nothing is spent).",
)


@asset_sensor(
    asset_key=privacy_scorecard.key,
    job=ranking_refresh,
    default_status=DefaultSensorStatus.RUNNING,
    description="When a release's drift check breaches (PSI >= 0.25), request a ranking refresh "
    "run for that release date.",
)
def drift_ranking_refresh(context: SensorEvaluationContext, asset_event: EventLogEntry):
    materialization = asset_event.asset_materialization
    level = materialization.metadata.get("drift_level")
    partition = materialization.partition
    if level is None or level.value != "breach" or partition is None:
        return SkipReason(f"release {partition}: drift {getattr(level, 'value', 'unknown')}")
    psi = materialization.metadata["drift_psi"].value
    return RunRequest(
        run_key=f"drift-refresh:{partition}:{asset_event.run_id}",
        partition_key=partition,
        tags={"cohort_pipeline/trigger": "drift", "cohort_pipeline/drift_psi": f"{psi:.4f}"},
    )
