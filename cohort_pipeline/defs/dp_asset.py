"""The one asset factory every DP asset is built with: the release protocol of
privacy/guard.py (admission, draw once, stored draws only) wired to Dagster.

A DP asset supplies two functions:
- `draw(step)`: the noisy frame, computed from private totals; called at most once per
  reservation (its result is stored in `private.draws_<measurement>` before anything reads it);
- `publish(step, frame, drawn_now)`: writes the release tables from the stored frame and
  returns the MaterializeResult. It must be a deterministic function of the stored draw and
  public inputs (policy, catalog, other release tables), so re-running it is harmless.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from cohort_pipeline.defs.common import release_lock
from cohort_pipeline.policy import Policy
from cohort_pipeline.privacy.guard import Admission, Refused, admit, draw_once
from cohort_pipeline.privacy.measurements import REGISTRY, mechanisms
from cohort_pipeline.resources import LedgerResource, PipelineResource, WarehouseResource

DRAWS_SCHEMA = "private.draws_"


def draws_table(measurement: str) -> str:
    return f"{DRAWS_SCHEMA}{measurement}"


class WarehouseDraws:
    """guard.DrawStore in the warehouse's private schema: one table per measurement, keyed by
    reservation_id (and release_date, for pruning and reading by hand)."""

    def __init__(self, warehouse: WarehouseResource):
        self.warehouse = warehouse

    def load(self, measurement: str, reservation_id: str) -> pd.DataFrame | None:
        found = self.warehouse.read(
            f"SELECT * EXCLUDE (release_date, reservation_id) FROM {draws_table(measurement)}"
            " WHERE reservation_id = ?",
            [reservation_id],
        )
        return None if found.empty else found

    def save(
        self, measurement: str, reservation_id: str, release_date: str, frame: pd.DataFrame
    ) -> None:
        if frame.empty:  # an empty draw could not be told from a missing one
            raise ValueError(f"draw {measurement} of {release_date} has no rows")
        table = draws_table(measurement)
        select = (
            f"SELECT DATE '{release_date}' AS release_date, '{reservation_id}' AS reservation_id,"
            " * FROM _draw"
        )
        with self.warehouse.connect() as con:
            con.register("_draw", frame)
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS {select} LIMIT 0")
            con.execute(f"INSERT INTO {table} BY NAME {select}")  # one statement: atomic


@dataclass(frozen=True)
class Step:
    """What draw and publish see of one DP asset's run."""

    context: AssetExecutionContext
    pipeline: PipelineResource
    warehouse: WarehouseResource
    policy: Policy  # the policy file now (post-processing); the reservation's hash is admission's
    admission: Admission

    @property
    def release_date(self) -> str:
        return self.admission.release_date


def dp_asset(
    *,
    name: str,
    measurement: str,
    draw: Callable[[Step], pd.DataFrame | None],
    publish: Callable[[Step, pd.DataFrame | None, bool], MaterializeResult],
    **asset_kwargs,
):
    """A Dagster asset `name` that releases under the date's current reservation: holds the
    release lock, admits (guard.admit), returns the draw stored under (reservation_id,
    `measurement`) or draws it once (guard.draw_once), then publishes from the stored draw.
    `draw` may return None (nothing to release: nothing stored, nothing drawn). Refusals
    become dagster.Failure with the guard's message."""
    if REGISTRY[measurement].asset != name:  # the ledger charges the registry's asset
        raise ValueError(f"measurement {measurement} is charged to {REGISTRY[measurement].asset}")

    @asset(name=name, **asset_kwargs)
    def _dp_asset(
        context: AssetExecutionContext,
        pipeline: PipelineResource,
        warehouse: WarehouseResource,
        ledger: LedgerResource,
    ):
        release_date = context.partition_key
        with release_lock(warehouse):
            policy = pipeline.policy()
            try:
                admission = admit(ledger.ledger().reservation(release_date), name, release_date)
                step = Step(context, pipeline, warehouse, policy, admission)
                frame, drawn = draw_once(
                    WarehouseDraws(warehouse),
                    admission,
                    measurement,
                    lambda: draw(step),
                    policy_hash=policy.hash,
                    mechanism=mechanisms(policy)[measurement],
                )
            except Refused as exc:
                raise Failure(str(exc)) from exc
            return publish(step, frame, drawn)

    return _dp_asset
