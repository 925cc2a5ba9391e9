"""Group privacy (release zone): the ledger reservation and DP cohort sizes, with their
blocking checks `budget_within_limit` and `min_cohort_size`."""

from datetime import date

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    asset,
)

from cohort_pipeline.defs import common
from cohort_pipeline.defs.cohorts import PROFILES, cohort_assignments, totals
from cohort_pipeline.defs.dp_asset import Step, dp_asset
from cohort_pipeline.defs.tables import (
    constants_metadata,
    noisy_metadata,
    release_table_metadata,
)
from cohort_pipeline.logic import alerts
from cohort_pipeline.privacy.ledger import BudgetExceeded
from cohort_pipeline.privacy.measurements import (
    budget_problem,
    budget_summary,
    cadence_problem,
    mechanisms,
    planned_measurements,
)
from cohort_pipeline.privacy.release import budget_cap, release_cohort_sizes
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
)
from cohort_pipeline.storage.warehouse import COHORT_SIZES, COHORT_TOTALS, draws_table

BUDGET_CHECK = "budget_within_limit"
# Run tag asking for a fresh draw of a released date; its value is the operator's reason.
REDRAW_TAG = "cohort_pipeline/redraw"
PLAN_COLUMNS = ["asset", "mechanism", "epsilon", "delta", "rho", "sensitivity", "noise_scale"]
MIN_SIZE_CHECK = "min_cohort_size"


def redraw_reason(context) -> str | None:
    """The run's redraw request (tag cohort_pipeline/redraw), None without one."""
    tags = context.run.tags
    if REDRAW_TAG not in tags:
        return None
    reason = tags[REDRAW_TAG].strip()
    if not reason:
        raise Failure(
            f"run tag {REDRAW_TAG} is empty: give the reason for redrawing this release date "
            "as its value (it is recorded in the ledger)"
        )
    return reason


@asset(
    **common.asset_args(
        common.Group.PRIVACY, common.Owner.PRIVACY, common.RELEASE, {"duckdb"}, pool="ledger"
    ),
    deps=[cohort_assignments],
    check_specs=[
        AssetCheckSpec(
            BUDGET_CHECK,
            asset="privacy_budget_ledger",
            blocking=True,
            description="The composed spend of every budget.window_days window containing the release stays "
            "within budget.epsilon_cap, and that of every per-user horizon (budget.horizon_days) within "
            "budget.epsilon_horizon_cap (summed delta within budget.delta_cap under basic composition); "
            "when it would not, nothing is spent and no DP asset of the release runs.",
        ),
        *[
            AssetCheckSpec(
                name,
                asset="privacy_budget_ledger",
                description=f"WARN: the spend of the worst window containing the release is below "
                f"{share:.0%} of budget.epsilon_cap, and that of the worst horizon span below "
                f"{share:.0%} of budget.epsilon_horizon_cap (else an alert is recorded and sent "
                "to $COHORT_PIPELINE_ALERT_WEBHOOK).",
            )
            for name, share in alerts.BUDGET_THRESHOLDS.items()
        ],
    ],
    description="Atomic reservation of this release's privacy spend in ledger.privacy_spend, recorded before "
    "any noise is drawn, under a random reservation_id. A date that has a reservation is final: every "
    "later run reuses it and spends nothing, whatever the data or policy hold now. A fresh draw of the "
    f"date happens only when the run carries the tag {REDRAW_TAG}=<reason>: a new reservation of kind "
    "redraw, charged in full. Under release.every_days > 1 a date off that schedule gets no new "
    "reservation.",
)
def privacy_budget_ledger(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    policy = pipeline.policy()
    release_date = context.partition_key
    redraw = redraw_reason(context)
    cap = budget_cap(policy)
    store = ledger.ledger()
    measurements = planned_measurements(policy)
    reservation = None
    try:
        if problem := budget_problem(policy):  # no release could ever fit: leave the ledger alone
            raise BudgetExceeded(problem)
        off_schedule = cadence_problem(policy, date.fromisoformat(release_date))
        if off_schedule and store.reservation(release_date).empty:
            raise BudgetExceeded(off_schedule)
        reservation = store.reserve(
            release_date,
            measurements,
            policy_hash=policy.hash,
            run_id=context.run_id,
            cap=cap,
            redraw_reason=redraw,
        )
        passed = True
        if reservation.reused:
            reason = f"the date's {reservation.kind} reservation is final: reused, nothing spent"
        else:
            reason = "reserved" if redraw is None else f"redraw reserved ({redraw})"
    except BudgetExceeded as exc:
        passed, reason = False, str(exc)
        context.log.error(f"{BUDGET_CHECK} failed for {release_date}: {reason}")
    # the enforced figures (worst window and horizon containing the date), as `ledger show`
    summary = budget_summary(store, policy, as_of=release_date)
    spent, remaining = summary["epsilon_spent"], summary["epsilon_remaining"]
    blocked = None if passed else reason
    horizon = (summary["horizon_epsilon"], policy.epsilon_horizon_cap)
    fired = alerts.budget_alerts(release_date, spent, policy.epsilon_cap, blocked, horizon)
    for error in alerts.send_alerts(fired, pipeline.data_dir, pipeline.alert_webhook)[1]:
        context.log.error(error)
    constants = constants_metadata(
        epsilon_per_release=policy.epsilon_per_release,
        delta=policy.delta,
        epsilon_cap=policy.epsilon_cap,
        window_days=policy.window_days,
        epsilon_horizon_cap=policy.epsilon_horizon_cap,
        horizon_days=policy.horizon_days,
        yearly_epsilon=round(summary["yearly_epsilon"], 4),
    )
    check_meta = {
        "release_date": release_date,
        "epsilon_spent": spent,
        "epsilon_remaining": remaining,
        "horizon_epsilon": summary["horizon_epsilon"],
        **constants,
        "composition": policy.composition,
        "accountant": summary["accountant"],
        "reason": reason,
    }
    if policy.composition == "basic":
        check_meta |= {"delta_spent": summary["delta_spent"], "delta_cap": policy.delta_cap}
    plan = (
        reservation.rows[PLAN_COLUMNS]
        if reservation is not None
        else pd.DataFrame(
            [
                (m.asset, m.mechanism, m.spend.epsilon, m.spend.delta, m.spend.rho)
                + (m.sensitivity, m.noise_scale)
                for m in measurements
            ],
            columns=PLAN_COLUMNS,
        )
    )
    return MaterializeResult(
        metadata={
            **constants,
            "epsilon_spent_window": spent,
            "epsilon_remaining": remaining,
            "horizon_epsilon": summary["horizon_epsilon"],
            "accountant": summary["accountant"],
            "policy_hash": policy.hash,
            "reserved": passed,
            "reservation_id": "" if reservation is None else reservation.reservation_id,
            "kind": "" if reservation is None else reservation.kind,
            "redraw_reason": redraw or "",
            "measurements": common.table_preview(plan, 6),
        },
        check_results=[
            AssetCheckResult(
                check_name=BUDGET_CHECK,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                metadata=check_meta,
            ),
            *[
                AssetCheckResult(
                    check_name=name,
                    passed=ok,
                    severity=AssetCheckSeverity.WARN,
                    metadata={
                        "release_date": release_date,
                        **meta,
                        **constants_metadata(
                            threshold=meta["threshold"], epsilon_cap=meta["epsilon_cap"]
                        ),
                    },
                )
                for name, ok, meta in alerts.budget_checks(spent, policy.epsilon_cap, horizon)
            ],
        ],
    )


def _draw_sizes(step: Step) -> pd.DataFrame:
    sums = common.private_totals(step.warehouse, COHORT_TOTALS, step.release_date)
    return release_cohort_sizes(sums, step.policy, mechanisms(step.policy)["cohort_sizes"])


def _publish_sizes(step: Step, sizes: pd.DataFrame, drawn: bool) -> MaterializeResult:
    # The draw is kept privately under its reservation even when the check refuses it, so a
    # retry re-reads it instead of drawing again (no averaging).
    policy = step.policy
    smallest = float(sizes["noisy_users"].min())
    passed = smallest >= policy.min_size
    if passed:  # the checked table is stored before its check runs: store only what passes
        stored = common.write_release(step.warehouse, COHORT_SIZES, step.admission, sizes)
    check = AssetCheckResult(
        check_name=MIN_SIZE_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "release_date": step.release_date,
            "min_noisy_size": smallest,
            **constants_metadata(min_size=policy.min_size),
        },
    )
    if not passed:
        step.context.log.error(
            f"{MIN_SIZE_CHECK} failed: a cohort would be released with noisy size "
            f"{smallest:.0f} < k = {policy.min_size}; nothing released"
        )
        return MaterializeResult(
            metadata={"released_cohorts": 0, "drawn_now": drawn}, check_results=[check]
        )
    coarsened = int((sizes["members"].str.count(";") > 0).sum())
    return MaterializeResult(
        metadata={
            **release_table_metadata(
                COHORT_SIZES, stored, tuple(d.name for d in policy.dimensions)
            ),
            "released_cohorts": len(sizes),
            "coarsened_cohorts": coarsened,
            "min_noisy_size": smallest,
            "noise_scale": float(sizes["noise_scale"].iloc[0]),
            "accuracy_95": float(sizes["accuracy_95"].min()),
            "drawn_now": drawn,
            "reservation_id": step.admission.reservation_id,
            **{
                label: value
                for row in sizes.itertuples()
                for label, value in noisy_metadata(
                    f"noisy_users:{row.cohort_key}", row.noisy_users, row.accuracy_95
                ).items()
            },
            "cohort_sizes": common.table_preview(
                sizes[["cohort_key", "members", "noisy_users", "accuracy_95"]], 1
            ),
        },
        check_results=[check],
    )


cohort_sizes = dp_asset(
    name="cohort_sizes",
    measurement="cohort_sizes",
    draw=_draw_sizes,
    publish=_publish_sizes,
    args=common.asset_args(
        common.Group.PRIVACY, common.Owner.PRIVACY, common.RELEASE, {"duckdb", "opendp"}
    ),
    automation_condition=common.AFTER_BLOCKING_CHECKS,
    deps=[privacy_budget_ledger, cohort_assignments, PROFILES, totals("cohort_sizes")],
    check_specs=[
        AssetCheckSpec(
            MIN_SIZE_CHECK,
            asset="cohort_sizes",
            blocking=True,
            description="Every released cohort's noisy size is at least cohorts.min_size (k) after coarsening; "
            "otherwise nothing is written and no metric is released.",
        )
    ],
    description="DP user counts (Laplace) over the public cohort key set, and the coarsening plan: cohorts "
    f"whose noisy size is below k are merged into their parents. Table {COHORT_SIZES}; the draw is "
    f"stored first in {draws_table('cohort_sizes')}, keyed by reservation_id.",
)
