"""Group privacy (release zone): the ledger reservation and DP cohort sizes, with their
blocking checks `budget_within_limit` and `min_cohort_size`."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from cohort_pipeline import alerts
from cohort_pipeline.assets.cohorts import cohort_assignments, user_profiles
from cohort_pipeline.assets.common import (
    AFTER_BLOCKING_CHECKS,
    RELEASE,
    Group,
    Owner,
    admitted_release,
    asset_args,
    data_version_of,
    private_totals,
    release_lock,
    stored_release,
    table_preview,
    write_release,
)
from cohort_pipeline.assets.tables import constants_metadata
from cohort_pipeline.policy import budget_problem
from cohort_pipeline.privacy.ledger import BudgetExceeded
from cohort_pipeline.privacy.release import budget_cap, planned_measurements, release_cohort_sizes
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
)

BUDGET_CHECK = "budget_within_limit"
MIN_SIZE_CHECK = "min_cohort_size"
SIZE_DRAWS = "private.cohort_size_draws"


@asset(
    **asset_args(Group.PRIVACY, Owner.PRIVACY, RELEASE, {"duckdb"}, pool="ledger"),
    deps=[cohort_assignments],
    check_specs=[
        AssetCheckSpec(
            BUDGET_CHECK,
            asset="privacy_budget_ledger",
            blocking=True,
            description="The release's composed spend over any budget.window_days stays within budget.epsilon_cap; "
            "when it would not, nothing is spent and no DP asset of the release runs.",
        ),
        *[
            AssetCheckSpec(
                name,
                asset="privacy_budget_ledger",
                description=f"WARN: the window's spend is below {share:.0%} of "
                "budget.epsilon_cap (else an alert is recorded and sent to "
                "$COHORT_PIPELINE_ALERT_WEBHOOK).",
            )
            for name, share in alerts.BUDGET_THRESHOLDS.items()
        ],
    ],
    description="Atomic reservation of this release's privacy spend in ledger.privacy_spend, recorded before "
    "any noise is drawn. Re-running an unchanged release reuses its reservation and spends nothing.",
)
def privacy_budget_ledger(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    policy = pipeline.policy()
    release_date = context.partition_key
    version = data_version_of(warehouse, "private.cohort_assignments", release_date)
    cap = budget_cap(policy)
    store = ledger.ledger()
    measurements = planned_measurements(policy)
    try:
        if problem := budget_problem(policy):  # no release could ever fit: leave the ledger alone
            raise BudgetExceeded(problem)
        reservation = store.reserve(
            release_date,
            measurements,
            policy_hash=policy.hash,
            data_version=version,
            run_id=context.run_id,
            cap=cap,
        )
        passed, reason = (
            True,
            "reused an identical release's reservation" if reservation.reused else "reserved",
        )
    except BudgetExceeded as exc:
        passed, reason = False, str(exc)
        context.log.error(f"{BUDGET_CHECK} failed for {release_date}: {reason}")
    summary = store.summary(cap, as_of=release_date)
    spent, remaining = summary["epsilon_spent"], summary["epsilon_remaining"]
    blocked = None if passed else reason
    fired = alerts.budget_alerts(release_date, spent, policy.epsilon_cap, blocked=blocked)
    for error in alerts.send_alerts(fired, pipeline.data_dir)[1]:
        context.log.error(error)
    constants = constants_metadata(
        epsilon_per_release=policy.epsilon_per_release,
        delta=policy.delta,
        epsilon_cap=policy.epsilon_cap,
        window_days=policy.window_days,
    )
    check_meta = {
        "release_date": release_date,
        "epsilon_spent": spent,
        **constants,
        "composition": policy.composition,
        "reason": reason,
    }
    plan = [
        {
            "asset": m.asset,
            "mechanism": m.mechanism,
            "epsilon": m.spend.epsilon,
            "delta": m.spend.delta,
            "rho": m.spend.rho,
            "sensitivity": m.sensitivity,
            "noise_scale": m.noise_scale,
        }
        for m in measurements
    ]
    return MaterializeResult(
        metadata={
            **constants,
            "epsilon_spent_window": spent,
            "epsilon_remaining": remaining,
            "policy_hash": policy.hash,
            "data_version": version,
            "reserved": passed,
            "measurements": table_preview(pd.DataFrame(plan), 6),
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
                for name, ok, meta in alerts.budget_checks(spent, policy.epsilon_cap)
            ],
        ],
    )


@asset(
    **asset_args(Group.PRIVACY, Owner.PRIVACY, RELEASE, {"duckdb", "opendp"}),
    automation_condition=AFTER_BLOCKING_CHECKS,
    deps=[privacy_budget_ledger, cohort_assignments, user_profiles],
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
    "whose noisy size is below k are merged into their parents. Table release.cohort_sizes.",
)
def cohort_sizes(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    with release_lock(warehouse):
        release = admitted_release(
            context, "cohort_sizes", pipeline, warehouse, ledger, "private.cohort_totals"
        )
        policy = release.policy
        # Every draw is kept (privately) under its reservation, even when the check below
        # refuses it, so a retry reuses it instead of drawing again (no averaging).
        sizes = stored_release(warehouse, SIZE_DRAWS, release)
        reused = sizes is not None
        if not reused:
            totals = private_totals(warehouse, "private.cohort_totals", release)
            sizes = release_cohort_sizes(totals, policy)
            write_release(warehouse, SIZE_DRAWS, release, sizes)
        smallest = float(sizes["noisy_users"].min())
        passed = smallest >= policy.min_size
        if passed:
            write_release(warehouse, "release.cohort_sizes", release, sizes)
    check = AssetCheckResult(
        check_name=MIN_SIZE_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={"min_noisy_size": smallest, "min_size": policy.min_size},
    )
    if not passed:
        context.log.error(
            f"{MIN_SIZE_CHECK} failed: a cohort would be released with noisy size "
            f"{smallest:.0f} < k = {policy.min_size}; nothing released"
        )
        return MaterializeResult(
            metadata={"released_cohorts": 0, "reused_stored_draw": reused}, check_results=[check]
        )
    coarsened = int((sizes["members"].str.count(";") > 0).sum())
    return MaterializeResult(
        metadata={
            "released_cohorts": len(sizes),
            "coarsened_cohorts": coarsened,
            "min_noisy_size": smallest,
            "noise_scale": float(sizes["noise_scale"].iloc[0]),
            "accuracy_95": float(sizes["accuracy_95"].min()),
            "reused_stored_release": reused,
            **{
                f"noisy_users:{row.cohort_key}": float(row.noisy_users)
                for row in sizes.itertuples()
            },
            "cohort_sizes": table_preview(
                sizes[["cohort_key", "members", "noisy_users", "accuracy_95"]], 1
            ),
        },
        check_results=[check],
    )
