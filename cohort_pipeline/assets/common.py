"""What every asset module shares: partitions, groups, owners, the reservation guard and
the consistent-release lookup. Nothing here computes a private value."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
from dagster import (
    AutomationCondition,
    DailyPartitionsDefinition,
    Failure,
    MetadataValue,
    TableColumn,
    TableSchema,
)

from cohort_pipeline.assets.tables import preview_table
from cohort_pipeline.engines import Progress
from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy.accounting import Spend
from cohort_pipeline.privacy.release import mechanisms
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
    policy_path,
    replace_partition,
)

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


# Release dates: one partition per day from the policy's (or environment's) start date.
DAILY = DailyPartitionsDefinition(
    start_date=load_policy(policy_path()).partitions_start.isoformat()
)

# DP assets: materialize automatically once upstream is updated, but only if every blocking
# check upstream (budget_within_limit, min_cohort_size, ...) passed: a failed check stops
# downstream only within its own run, so automation must not start them afterwards.
AFTER_BLOCKING_CHECKS = (
    AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager_after_blocking_checks")

PRIVATE, RELEASE = "private", "release"  # zones (design §1), shown as the asset tag `zone`


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


def data_version_of(warehouse: WarehouseResource, table: str, release_date: str) -> str:
    """The input data version a private table was computed from, for this release date."""
    found = warehouse.read(
        f"SELECT DISTINCT data_version FROM {table} WHERE release_date = ?", [release_date]
    )
    if found.empty:
        raise Failure(
            f"{table} has no rows for {release_date}: materialize its upstream assets for this date first"
        )
    if len(found) > 1:
        raise Failure(f"{table} mixes data versions for {release_date}: re-materialize the release")
    return str(found.iloc[0, 0])


@dataclass(frozen=True)
class Release:
    """One measured asset's part of a release, admitted by the ledger."""

    policy: Policy
    release_date: str
    data_version: str
    asset: str
    ledger_seq: int

    def stamp(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(
            policy_hash=self.policy.hash, data_version=self.data_version, ledger_seq=self.ledger_seq
        )


def admitted_release(
    context,
    asset: str,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
    source: str,
) -> Release:
    """Refuse unless the ledger holds this release's reservation for `asset`.

    Dagster's blocking checks only hold within one run, so every DP asset guards itself: a
    launch from the UI after a failed `budget_within_limit` finds no reservation and stops.
    """
    policy = pipeline.policy()
    release_date = context.partition_key
    version = data_version_of(warehouse, source, release_date)
    rows = ledger.ledger().reservation(release_date, policy.hash, version)
    rows = rows[rows["asset"] == asset] if not rows.empty else rows
    if rows.empty:
        raise Failure(
            f"refusing to compute {asset} for {release_date}: the privacy ledger holds no reservation "
            f"for it (policy {policy.hash}, data version {version}). Materialize privacy_budget_ledger "
            "for this date; its check budget_within_limit must pass."
        )
    reserved = rows.iloc[0]
    drawn = mechanisms(policy)[asset]
    if not drawn.spend.within(Spend(reserved["epsilon"], reserved["delta"], reserved["rho"])):
        # The spend of a release is fixed when it is reserved; code that would now draw
        # costlier noise (another version, another calibration) must not use that reservation.
        raise Failure(
            f"refusing to compute {asset} for {release_date}: its {drawn.name} noise would spend "
            f"epsilon={drawn.spend.epsilon:.6g}, delta={drawn.spend.delta:.3g}, "
            f"rho={drawn.spend.rho:.6g}, more than the ledger reserved for it (seq "
            f"{int(reserved['seq'])}: {reserved['mechanism']}, epsilon={reserved['epsilon']:.6g}, "
            f"delta={reserved['delta']:.3g}, rho={reserved['rho']:.6g}). Run the version of "
            "cohort_pipeline that made the reservation; nothing was drawn."
        )
    return Release(policy, release_date, version, asset, int(reserved["seq"]))


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


def stored_release(
    warehouse: WarehouseResource, table: str, release: Release
) -> pd.DataFrame | None:
    """The values already released under this very reservation, if any (consistent releases:
    re-running an unchanged release must return them, never fresh noise)."""
    stored = warehouse.read(
        f"SELECT * FROM {table} WHERE release_date = ? AND ledger_seq = ?",
        [release.release_date, release.ledger_seq],
    )
    return None if stored.empty else stored.drop(columns=["release_date"])


def released_plan(warehouse: WarehouseResource, release: Release) -> pd.DataFrame:
    """The cohort plan (release.cohort_sizes) of the same release: same policy, same data."""
    plan = warehouse.read(
        "SELECT * FROM release.cohort_sizes WHERE release_date = ? AND policy_hash = ? AND data_version = ?",
        [release.release_date, release.policy.hash, release.data_version],
    )
    if plan.empty:
        raise Failure(
            f"refusing to compute {release.asset} for {release.release_date}: release.cohort_sizes holds no "
            "released cohorts for this release (its check min_cohort_size must pass first)"
        )
    return plan.drop(columns=["release_date"])


def write_release(
    warehouse: WarehouseResource, table: str, release: Release, frame: pd.DataFrame
) -> pd.DataFrame:
    stamped = release.stamp(frame)
    with warehouse.connect() as con:
        replace_partition(con, table, release.release_date, stamped)
    return stamped


def release_rows(warehouse: WarehouseResource, table: str, release_date: str) -> pd.DataFrame:
    """A released table's rows for one date; refuses when that date has none."""
    rows = warehouse.read(f"SELECT * FROM {table} WHERE release_date = ?", [release_date])
    if rows.empty:
        raise Failure(f"{table} has no rows for {release_date}: materialize it for this date first")
    return rows


def private_totals(warehouse: WarehouseResource, table: str, release: Release) -> pd.DataFrame:
    """One release's exact per-key sums from user_profiles (private: only a mechanism sees them).
    Empty when the window has no users: every key then sums to 0."""
    return warehouse.read(f"SELECT * FROM {table} WHERE release_date = ?", [release.release_date])
