"""Group governance: `privacy_risk_report`, attack simulations on synthetic neighbouring
datasets (never the warehouse's users). Thin wiring around cohort_pipeline.logic.risk."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cohort_pipeline.defs.common import RELEASE, Group, Owner, asset_args
from cohort_pipeline.logic import risk
from cohort_pipeline.resources import PipelineResource

BOUND_CHECK = "attacks_within_bound"


class RiskReportConfig(Config):
    trials: int = 20_000  # per world for the cheap attacks (see risk.run_attacks)
    seed: int = 0  # seeds the synthetic populations only; noise is OpenDP's


@asset(
    # Policy-only input, so not partitioned; it writes no file, so it queues on no pool.
    **asset_args(
        Group.GOVERNANCE, Owner.PRIVACY, RELEASE, {"opendp", "pandas"}, pool=None, daily=False
    ),
    check_specs=[
        AssetCheckSpec(
            BOUND_CHECK,
            asset="privacy_risk_report",
            description="No simulated attacker beats the advantage the policy's epsilon allows "
            "(beyond the 95% interval of the measurement).",
        )
    ],
    description="Attack simulations against the policy's release mechanisms on synthetic "
    "neighbouring datasets: differencing across consecutive releases, averaging over repeated "
    "materializations, singling out a small cohort, reconstruction from a window of releases. "
    "Each attacker's measured advantage beside the bound implied by epsilon.",
)
def privacy_risk_report(
    context: AssetExecutionContext, config: RiskReportConfig, pipeline: PipelineResource
):
    policy = pipeline.policy()
    results = risk.run_attacks(policy, config.trials, config.seed)
    outside = [f"{r.attack} / {r.arm}" for r in results if not r.within_bound]
    if outside:
        context.log.error(f"{BOUND_CHECK}: advantage above the bound for {', '.join(outside)}")
    frame = risk.results_frame(results)
    dp_arms = frame[frame["epsilon"] < float("inf")]
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(risk.report_markdown(results, risk.plot_png(results))),
            "policy_hash": policy.hash,
            "trials": config.trials,
            "max_dp_advantage": float(dp_arms["advantage"].max()),
            **{
                f"advantage:{r.attack}:{r.arm}": MetadataValue.float(round(r.advantage, 4))
                for r in results
            },
        },
        check_results=[
            AssetCheckResult(
                check_name=BOUND_CHECK,
                passed=not outside,
                severity=AssetCheckSeverity.ERROR,
                metadata={"outside_bound": ", ".join(outside) or "none"},
            )
        ],
    )
