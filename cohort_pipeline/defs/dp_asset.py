"""The one asset factory every DP asset is built with: the release protocol of
privacy/guard.py (admission, draw once, stored draws only) wired to Dagster.

A DP asset supplies two functions:
- `draw(step)`: the noisy frame, computed from private totals; called at most once per
  reservation (its result is stored in `private.draws_<measurement>` before anything reads it);
- `publish(step, frame, drawn_now)`: writes the release tables from the stored frame and
  returns their MaterializeResult (or yields one per table, naming by asset_key those besides
  its own). It must be a deterministic function of the stored draw and
  public inputs (policy, catalog, other release tables), so re-running it is harmless.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    multi_asset,
)

from cohort_pipeline.defs.common import PRIVATE, private_metadata, release_lock, split_args
from cohort_pipeline.policy import Policy
from cohort_pipeline.privacy.guard import Admission, Refused, admit, draw_once
from cohort_pipeline.privacy.measurements import REGISTRY, mechanisms
from cohort_pipeline.resources import LedgerResource, PipelineResource, WarehouseResource
from cohort_pipeline.storage.warehouse import Draws, draws_table, table_name

Published = MaterializeResult | Iterable[MaterializeResult]


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


def draws_asset(measurement: str) -> str:
    """The asset key of a measurement's stored draws (private.draws_<measurement>)."""
    return table_name(draws_table(measurement))


def _keyed(result: MaterializeResult, key: str) -> MaterializeResult:
    if result.asset_key is not None:
        return result
    return MaterializeResult(
        asset_key=key,
        metadata=result.metadata,
        check_results=result.check_results,
        data_version=result.data_version,
        tags=result.tags,
    )


def dp_asset(
    *,
    name: str,
    measurement: str,
    draw: Callable[[Step], pd.DataFrame | None],
    publish: Callable[[Step, pd.DataFrame | None, bool], Published],
    args: dict,
    also: tuple[AssetSpec, ...] = (),
    check_specs=(),
    **spec_kwargs,
):
    """A Dagster multi-asset `name` that releases under the date's current reservation: holds
    the release lock, admits (guard.admit), returns the draw stored under (reservation_id,
    `measurement`) or draws it once (guard.draw_once), then publishes from the stored draw.
    `draw` may return None (nothing to release: nothing stored, nothing drawn). Refusals
    become dagster.Failure with the guard's message.

    Every table it writes is an asset of it: `name` (its release table, from `args`, the
    common.asset_args, and `spec_kwargs`), the private draws table `draws_<measurement>`, and
    `also` (other release tables `publish` writes; its results name them by asset_key)."""
    if REGISTRY[measurement].asset != name:  # the ledger charges the registry's asset
        raise ValueError(f"measurement {measurement} is charged to {REGISTRY[measurement].asset}")
    spec_args, op_args = split_args(args)
    draws = AssetSpec(
        draws_asset(measurement),
        **{**spec_args, "tags": {"zone": PRIVATE}, "kinds": {"duckdb"}},
        deps=spec_kwargs.get("deps", ()),
        # requested with the release asset, so automation's runs record the draws they store
        automation_condition=spec_kwargs.get("automation_condition"),
        skippable=True,  # recorded when drawn now; nothing new when read back or not drawn
        description=f"The noisy draws of measurement {measurement}, stored in "
        f"{draws_table(measurement)} keyed by reservation_id before anything reads them "
        f"(written once per reservation by {name}).",
    )

    @multi_asset(
        name=name,
        specs=[AssetSpec(name, **spec_args, **spec_kwargs), draws, *also],
        check_specs=list(check_specs),
        # A run of the release asset alone (a retry, a refresh) still stores a draw it makes:
        # the protocol does not depend on what is selected.
        can_subset=True,
        **op_args,
    )
    def _dp_asset(
        context: AssetExecutionContext,
        pipeline: PipelineResource,
        warehouse: WarehouseResource,
        ledger: LedgerResource,
    ) -> Iterator[MaterializeResult]:
        release_date = context.partition_key
        with release_lock(warehouse):
            policy = pipeline.policy()
            try:
                admission = admit(ledger.ledger().reservation(release_date), name, release_date)
                step = Step(context, pipeline, warehouse, policy, admission)
                frame, drawn = draw_once(
                    Draws(warehouse),
                    admission,
                    measurement,
                    lambda: draw(step),
                    policy_hash=policy.hash,
                    mechanism=mechanisms(policy)[measurement],
                )
            except Refused as exc:
                raise Failure(str(exc)) from exc
            published = publish(step, frame, drawn)
            # a generator writes as it is read: read it while the lock is held
            results = [published] if isinstance(published, MaterializeResult) else list(published)
        selected = {key.to_user_string() for key in context.selected_asset_keys}
        if drawn and draws_asset(measurement) in selected:  # written now, not read back
            yield MaterializeResult(
                asset_key=draws_asset(measurement),
                metadata={
                    **private_metadata(draws_table(measurement), frame),
                    "drawn_now": drawn,
                },
            )
        for result in results:
            result = _keyed(result, name)
            if result.asset_key.to_user_string() in selected:
                yield result

    return _dp_asset
