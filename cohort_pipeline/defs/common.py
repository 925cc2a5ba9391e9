"""What every asset module shares: partitions, groups, owners, the release lock and the
release-table writes. Nothing here computes a private value."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import pandas as pd
from dagster import (
    AutomationCondition,
    DailyPartitionsDefinition,
    Failure,
    MetadataValue,
    TableColumn,
    TableSchema,
)

from cohort_pipeline.defs.tables import preview_table
from cohort_pipeline.engines import Progress
from cohort_pipeline.policy import PolicyError, load_policy
from cohort_pipeline.privacy.guard import Admission
from cohort_pipeline.resources import WarehouseResource
from cohort_pipeline.settings import Settings, current
from cohort_pipeline.storage.warehouse import partition, replace_partition

CODE_VERSION = "0.1.0"


class Group:
    INGEST = "ingest"
    COHORTS = "cohorts"
    PRIVACY = "privacy"
    METRICS = "metrics"
    RANKING = "ranking"
    EXPERIMENTS = "experiments"
    GOVERNANCE = "governance"


class Owner:
    DATA = "team:data-engineering"
    PRIVACY = "team:privacy-engineering"
    RANKING = "team:recsys"


# Where the partitions start while the policy cannot be read (the sample policy's default).
FALLBACK_PARTITIONS_START = date(2024, 1, 1)


def partitions_start(settings: Settings) -> date:
    """The first release date: COHORT_PIPELINE_PARTITIONS_START, else release.partitions_start
    of the policy the runs use (settings.policy_path). A policy that does not load must not
    take the code location (schedule and sensors included) down with it: the partitions then
    start at the environment's date if set, else FALLBACK_PARTITIONS_START, and every run fails
    at its first step (opt_outs), whose error names the policy key at fault."""
    try:
        return load_policy(settings.policy_path, settings.partitions_start).partitions_start
    except PolicyError as exc:
        start = settings.partitions_start or FALLBACK_PARTITIONS_START
        logging.getLogger(__name__).warning(
            f"{exc}: every run will fail until it is fixed; partitions start at {start} meanwhile"
        )
        return start


# Release dates: one partition per day from the policy's (or environment's) start date; the
# same settings give definitions.py its resources, so the partitions and the runs read one
# policy file.
DAILY = DailyPartitionsDefinition(start_date=partitions_start(current()).isoformat())

# DP assets: materialize automatically once upstream is updated, but only if every blocking
# check upstream (budget_within_limit, min_cohort_size, ...) passed: a failed check stops
# downstream only within its own run, so automation must not start them afterwards.
AFTER_BLOCKING_CHECKS = (
    AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager_after_blocking_checks")

# zones (design §1), shown as the asset tag `zone`
PRIVATE, PUBLIC, RELEASE = "private", "public", "release"


def asset_args(
    group: str,
    owner: str,
    zone: str,
    kinds: set[str],
    pool: str | None = "warehouse",
    daily: bool = True,
) -> dict:
    """What every asset's spec shares: group, owner, zone, kinds, code version and the
    concurrency pool of the file it writes; daily-partitioned by release date unless not."""
    args = dict(
        group_name=group,
        owners=[owner],
        kinds=kinds,
        tags={"zone": zone},
        code_version=CODE_VERSION,
        pool=pool,
    )
    return {**args, "partitions_def": DAILY} if daily else args


def split_args(args: dict) -> tuple[dict, dict]:
    """asset_args as (AssetSpec arguments, multi_asset arguments)."""
    op = {"pool": args["pool"]}
    if "partitions_def" in args:
        op["partitions_def"] = args["partitions_def"]
    return {k: v for k, v in args.items() if k != "pool"}, op


def private_metadata(table: str, columns: pd.DataFrame | dict) -> dict:
    """Schema only: row counts of private tables are exact counts, so they stay in the
    warehouse (private.ingest_report) rather than in Dagster's storage, which is a release."""
    dtypes = columns.dtypes.items() if isinstance(columns, pd.DataFrame) else columns.items()
    schema = TableSchema(columns=[TableColumn(str(name), str(dtype)) for name, dtype in dtypes])
    return {"table": MetadataValue.text(table), "dagster/column_schema": schema, "zone": "private"}


def table_preview(frame: pd.DataFrame, digits: int = 3) -> MetadataValue:
    """Released rows as a typed, sortable table: noisy values rounded to their 95%
    half-width, other numbers to at least `digits` significant digits (see tables.py)."""
    return preview_table(frame, significant=max(digits, 3))


def progress_log(context, what: str, every_s: float = 5.0) -> Progress:
    """A `progress(done, total)` callback for long steps: logs "<what>: done of total" at
    most every `every_s` seconds, and always the first and the last. Counts of files or
    queries only: names and row counts stay in the warehouse."""
    last = -float("inf")

    def report(done: int, total: int) -> None:
        nonlocal last
        if done in (1, total) or time.monotonic() - last >= every_s:
            last = time.monotonic()
            context.log.info(f"{what}: {done} of {total}")

    return report


@contextmanager
def release_lock(warehouse: WarehouseResource) -> Iterator[None]:
    """Hold the warehouse file while a DP asset checks its reservation, looks for its stored
    release, draws noise and stores it. DuckDB lets one process open the file read-write, so
    a concurrent run of the same release (a schedule tick and a manual click) waits here and
    then finds the stored values: one reservation never releases two noise draws. While it
    is held, every read and write of the asset reuses the open database instead of opening
    the file again (~15 ms each)."""
    with warehouse.connect():
        yield


def write_release(
    warehouse: WarehouseResource, table: str, admission: Admission, frame: pd.DataFrame
) -> pd.DataFrame:
    """Replace `table`'s rows of the date with `frame`, stamped with the reservation it was
    drawn under (its policy hash, random reservation id and ledger seq)."""
    stamped = frame.assign(
        policy_hash=admission.policy_hash,
        reservation_id=admission.reservation_id,
        ledger_seq=admission.ledger_seq,
    )
    with warehouse.connect() as con:
        replace_partition(con, table, admission.release_date, stamped)
    return stamped


def release_rows(warehouse: WarehouseResource, table: str, release_date: str) -> pd.DataFrame:
    """A released table's rows for one date; refuses when that date has none."""
    rows = partition(warehouse, table, release_date)
    if rows.empty:
        raise Failure(f"{table} has no rows for {release_date}: materialize it for this date first")
    return rows


def private_totals(warehouse: WarehouseResource, table: str, release_date: str) -> pd.DataFrame:
    """One release's exact per-key sums from user_profiles (private: only a mechanism sees them).
    Empty when the window has no users: every key then sums to 0."""
    return partition(warehouse, table, release_date)
