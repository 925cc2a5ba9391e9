"""The code location: assets, checks, jobs, schedules and resources, assembled in one place."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    BetaWarning,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    schedule,
    with_source_code_references,
)

from cohort_pipeline.defs import (
    budget,
    cohorts,
    experiments,
    governance,
    ingest,
    metrics,
    privacy,
    ranking,
    risk,
)
from cohort_pipeline.defs.common import DAILY
from cohort_pipeline.defs.conventions import with_conventions
from cohort_pipeline.defs.sensors import drift_ranking_refresh, ranking_refresh
from cohort_pipeline.engines import engine_for
from cohort_pipeline.policy import PolicyError
from cohort_pipeline.privacy.measurements import cadence_problem
from cohort_pipeline.resources import LedgerResource, PipelineResource, WarehouseResource
from cohort_pipeline.settings import Settings, current

ASSET_MODULES = [ingest, cohorts, privacy, budget, metrics, ranking, experiments, governance]


def resources_for(
    data: Path | str | None = None,
    policy: Path | str | None = None,
    settings: Settings | None = None,
) -> dict:
    """The embedded setup: DuckDB files in the data folder. Another engine swaps this dict.
    `settings` default to the environment's, read now; `data` and `policy` override them."""
    settings = settings or Settings.from_env()
    if data is not None:
        settings = settings.with_data_dir(data)
    start = settings.partitions_start
    return {
        "pipeline": PipelineResource(
            data_dir=str(settings.data_dir),
            policy_path=str(policy or settings.policy_path),
            partitions_start=start.isoformat() if start else "",
            alert_webhook=settings.alert_webhook,
        ),
        "warehouse": WarehouseResource(
            path=str(settings.folder.warehouse),
            memory_limit=settings.duckdb_memory_limit,
            temp_directory=settings.duckdb_temp_dir,
            keep_windows=settings.keep_windows,
        ),
        "ledger": LedgerResource(path=str(settings.folder.ledger)),
        "engine": engine_for(settings),  # where the bounding SQL runs: COHORT_PIPELINE_ENGINE
    }


# Every asset gets the project's conventions in one place (defs/conventions.py: release
# tables' schemas and lineage, docs links, the daily release's freshness policy) and a link to
# its code in the UI.
def _assets(modules: list) -> list:
    with warnings.catch_warnings():  # code references are a beta API of Dagster 1.13
        warnings.simplefilter("ignore", BetaWarning)
        return with_source_code_references(with_conventions(load_assets_from_modules(modules)))


all_assets = _assets(ASSET_MODULES)
# privacy_risk_report simulates attacks on synthetic data from the policy alone (seconds of
# OpenDP sampling): kept out of all_assets, which every in-process test release materializes.
risk_assets = _assets([risk])

# The whole release graph is many small steps over one DuckDB file: the in-process
# executor avoids ~1-2 s of process start per step and any write-lock contention within a run.
daily_release = define_asset_job(
    "daily_release",
    # The risk report depends on the policy alone: `--select '*'` or the UI refresh it on demand.
    selection=AssetSelection.all() - AssetSelection.assets(*risk_assets),
    partitions_def=DAILY,
    description="The daily DP release: ingest -> cohorts -> ledger reservation -> DP metrics -> ranking.",
)


# Automation runs as the README describes it from the first start; turn either off on the
# UI's Automation page (the state is kept in DAGSTER_HOME).
@schedule(
    job=daily_release,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Releases day D at 03:00 UTC on D+1; under release.every_days > 1 only the "
    "policy's release dates, so the yearly figure the policy projects is the one spent.",
)
def daily_release_schedule(context: ScheduleEvaluationContext, pipeline: PipelineResource):
    day = context.scheduled_execution_time.date() - timedelta(days=1)
    if day < DAILY.start.date():
        return SkipReason(f"{day} is before the first release date, {DAILY.start.date()}")
    try:
        off_schedule = cadence_problem(pipeline.policy(), day)
    except (OSError, PolicyError):  # the run itself fails naming the policy's problem
        off_schedule = None
    if off_schedule:
        return SkipReason(off_schedule)
    return RunRequest(run_key=day.isoformat(), partition_key=day.isoformat())


# The DP assets' and the budget view's automation conditions are evaluated by this sensor.
automation = AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions: DP assets after their upstream "
    "blocking checks passed, privacy_budget_status after every ledger change.",
)

defs = Definitions(
    assets=[*all_assets, *risk_assets],
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=[daily_release, ranking_refresh],
    schedules=[daily_release_schedule],
    sensors=[drift_ranking_refresh, automation],
    resources=resources_for(settings=current()),  # the settings DAILY starts from
    executor=in_process_executor,
)
