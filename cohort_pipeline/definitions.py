"""The code location: assets, checks, jobs, schedules and resources, assembled in one place."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import (
    AssetSelection,
    Definitions,
    build_schedule_from_partitioned_job,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from cohort_pipeline.assets import (
    cohorts,
    experiments,
    governance,
    ingest,
    metrics,
    privacy,
    ranking,
    risk,
)
from cohort_pipeline.assets.common import DAILY
from cohort_pipeline.engines import engine_for
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
    data_dir,
    policy_path,
)
from cohort_pipeline.sensors import drift_ranking_refresh, ranking_refresh

ASSET_MODULES = [ingest, cohorts, privacy, metrics, ranking, experiments, governance]


def keep_windows() -> int:
    """COHORT_PIPELINE_KEEP_WINDOWS: how many release dates keep their validated window."""
    raw = os.environ.get("COHORT_PIPELINE_KEEP_WINDOWS", "8").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"COHORT_PIPELINE_KEEP_WINDOWS={raw!r}: expected a whole number of release dates, at"
            " least 1 (the date being released)"
        )
    return int(raw)


def resources_for(data: Path | str | None = None, policy: Path | str | None = None) -> dict:
    """The embedded setup: DuckDB files in the data folder. Another engine swaps this dict."""
    data = Path(data or data_dir())
    return {
        "pipeline": PipelineResource(
            data_dir=str(data), policy_path=str(policy or policy_path(data))
        ),
        "warehouse": WarehouseResource(
            path=str(data / "warehouse.duckdb"),
            memory_limit=os.environ.get("COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT", ""),
            temp_directory=os.environ.get("COHORT_PIPELINE_DUCKDB_TEMP_DIR", ""),
            keep_windows=keep_windows(),
        ),
        "ledger": LedgerResource(path=str(data / "ledger.duckdb")),
        "engine": engine_for(data),  # where the bounding SQL runs: COHORT_PIPELINE_ENGINE
    }


all_assets = load_assets_from_modules(ASSET_MODULES)
# privacy_risk_report simulates attacks on synthetic data from the policy alone (seconds of
# OpenDP sampling): kept out of all_assets, which every in-process test release materializes.
risk_assets = load_assets_from_modules([risk])

# The whole release graph is many small steps over one DuckDB file: the in-process
# executor avoids ~1-2 s of process start per step and any write-lock contention within a run.
daily_release = define_asset_job(
    "daily_release",
    # The risk report depends on the policy alone: `--select '*'` or the UI refresh it on demand.
    selection=AssetSelection.all() - AssetSelection.assets(*risk_assets),
    partitions_def=DAILY,
    description="The daily DP release: ingest -> cohorts -> ledger reservation -> DP metrics -> ranking.",
)

defs = Definitions(
    assets=[*all_assets, *risk_assets],
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=[daily_release, ranking_refresh],
    schedules=[build_schedule_from_partitioned_job(daily_release, hour_of_day=3, minute_of_hour=0)],
    sensors=[drift_ranking_refresh],
    resources=resources_for(),
    executor=in_process_executor,
)
