"""Group governance (release zone): the audit report, the privacy notice and the privacy
scorecard, with the drift and cohort-density checks. Thin wiring: the documents are rendered
by cohort_pipeline.logic.reports and the alert logic lives in cohort_pipeline.logic.alerts, from public
policy values and DP releases only."""

import base64
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetRecordsFilter,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cohort_pipeline.defs.common import (
    CODE_VERSION,
    RELEASE,
    Group,
    Owner,
    asset_args,
    release_rows,
)
from cohort_pipeline.defs.metrics import cohort_similarity
from cohort_pipeline.defs.privacy import privacy_budget_ledger
from cohort_pipeline.defs.ranking import ranking_weights
from cohort_pipeline.defs.tables import constants_metadata
from cohort_pipeline.logic import alerts, reports
from cohort_pipeline.logic.experiments import HEADLINE, OVERALL
from cohort_pipeline.privacy.measurements import REGISTRY, budget_summary
from cohort_pipeline.privacy.release import budget_cap
from cohort_pipeline.resources import LedgerResource, PipelineResource, WarehouseResource
from cohort_pipeline.storage.warehouse import (
    COHORT_CATEGORY_AFFINITY,
    COHORT_METRICS,
    COHORT_SIZES,
    EXPERIMENT_RESULTS,
    partition,
    previous_date,
)

# The assets charged in the ledger (measurements.REGISTRY): the scorecard reads every one; the
# audit report those released from bounded tables, with their post-processing.
MEASURED_ASSETS = list(dict.fromkeys(s.asset for s in REGISTRY.values()))
BOUNDED_ASSETS = [s.asset for s in REGISTRY.values() if s.source]
DRIFT_CHECK = "release_drift"
DENSITY_CHECK = "cohort_density"


def governance_args(kinds: set[str], daily: bool = True) -> dict:
    # Reports read released tables and write exports only: no warehouse pool.
    return asset_args(Group.GOVERNANCE, Owner.PRIVACY, RELEASE, kinds, pool=None, daily=daily)


def git_commit() -> str | None:
    """The checked-out commit of this code, when it runs from a git work tree."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def provenance(context: AssetExecutionContext) -> pd.DataFrame:
    """The latest materialization of every upstream asset for this partition: what this
    release consumed (run ids, storage ids, data and code versions)."""
    graph = context.job_def.asset_layer.asset_graph
    rows = []
    for key in sorted(graph.get_ancestor_asset_keys(context.asset_key), key=str):
        found = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
        ).records
        if not found:
            rows.append({"asset": key.to_user_string(), "run_id": "never materialized"})
            continue
        record = found[0]
        tags = record.asset_materialization.tags or {}
        rows.append(
            {
                "asset": key.to_user_string(),
                "run_id": record.run_id,
                "storage_id": record.storage_id,
                "materialized_at": datetime.fromtimestamp(record.timestamp, UTC).isoformat(
                    timespec="seconds"
                ),
                "dagster_data_version": tags.get("dagster/data_version", ""),
                "code_version": tags.get("dagster/code_version", ""),
            }
        )
    return pd.DataFrame(rows)


@asset(
    **governance_args({"markdown", "duckdb"}),
    deps=[privacy_budget_ledger, *BOUNDED_ASSETS, cohort_similarity, ranking_weights],
    description="The audit trail of one release: policy and hash, every measurement (mechanism, "
    "privacy parameters, sensitivity, noise scale), budget spent and remaining with a burn-down "
    "chart, coarsened cohorts, provenance (upstream materializations, data and code versions, run "
    "ids) and data minimization. Also written to exports/<date>/audit_report.md.",
)
def audit_report(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    policy, release_date = pipeline.policy(), context.partition_key
    store, cap = ledger.ledger(), budget_cap(policy)
    measurements = store.reservation(release_date)  # the date's current reservation
    if measurements.empty:
        raise Failure(
            f"no ledger reservation for release {release_date}: nothing was released to audit"
        )
    summary = budget_summary(store, policy, as_of=release_date)
    burn = reports.burn_down(store.rows(), cap, release_date)
    chart = reports.burn_down_png(burn, cap)
    sizes = release_rows(warehouse, COHORT_SIZES, release_date)
    commit = git_commit()
    inputs = dict(
        release_date=release_date,
        policy=policy,
        measurements=measurements,
        summary=summary,
        burn=burn,
        coarsened=reports.coarsened_cohorts(sizes, policy),
        provenance=provenance(context),
        code_version=CODE_VERSION,
        git_commit=commit,
        columns=reports.columns_read(policy, date.fromisoformat(release_date)),
    )
    out = pipeline.exports_dir(release_date)
    (out / "budget_burndown.png").write_bytes(chart)
    path = out / "audit_report.md"
    path.write_text(reports.audit_markdown(chart_src="budget_burndown.png", **inputs))
    # The UI renders Markdown metadata; a data URI carries the chart inline.
    inline = f"data:image/png;base64,{base64.b64encode(chart).decode()}"
    return MaterializeResult(
        metadata={
            "audit_report": MetadataValue.md(reports.audit_markdown(chart_src=inline, **inputs)),
            "export": MetadataValue.path(str(path)),
            "policy_hash": policy.hash,
            "reservation_id": str(measurements["reservation_id"].iloc[0]),
            "git_commit": commit or "unknown",
            "epsilon_remaining": summary["epsilon_remaining"],
            "horizon_epsilon": summary["horizon_epsilon"],
            "yearly_epsilon": summary["yearly_epsilon"],
            "ledger_verified": summary["verified"],
        }
    )


@asset(
    **governance_args({"markdown", "html"}, daily=False),
    description="A plain-language privacy notice for users, generated from the policy: what is "
    "used, the cohort dimensions, the minimum cohort size, what epsilon means here, how to opt "
    "out. Written to exports/privacy_notice.md and a standalone exports/privacy_notice.html.",
)
def privacy_notice(context: AssetExecutionContext, pipeline: PipelineResource):
    policy = pipeline.policy()
    out = pipeline.folder.exports
    out.mkdir(parents=True, exist_ok=True)
    text = reports.notice_markdown(policy)
    (out / "privacy_notice.md").write_text(text)
    (out / "privacy_notice.html").write_text(reports.notice_html(policy))
    return MaterializeResult(
        metadata={
            "privacy_notice": MetadataValue.md(text),
            "html": MetadataValue.path(str(out / "privacy_notice.html")),
            "policy_hash": policy.hash,
        }
    )


def experiment_uplift(warehouse: WarehouseResource, release_date: str) -> dict:
    """The experiment's overall DP uplift readout of this date, once there is one."""
    found = partition(
        warehouse,
        EXPERIMENT_RESULTS,
        release_date,
        "value",
        metric=f"{HEADLINE}_uplift",
        cohort_key=OVERALL,
    )
    return {} if found.empty else {f"experiment_{HEADLINE}_uplift": float(found.iloc[0, 0])}


@asset(
    **governance_args({"markdown", "duckdb"}),
    deps=[privacy_budget_ledger, *MEASURED_ASSETS, ranking_weights],
    check_specs=[
        AssetCheckSpec(
            DRIFT_CHECK,
            asset="privacy_scorecard",
            description=f"PSI of released cohort shares and category affinities versus "
            f"the previous release: WARN from {alerts.PSI_WARN}, ERROR (breach, ranking "
            f"refresh requested) from {alerts.PSI_BREACH}.",
        ),
        AssetCheckSpec(
            DENSITY_CHECK,
            asset="privacy_scorecard",
            description=f"No released cohort's noisy size is within "
            f"{alerts.DENSITY_MARGIN:.0%} above k (it would be coarsened soon).",
        ),
    ],
    description="Privacy health beside utility for one release: budget used and remaining, cohort "
    "sizes against k, coarsening, ledger integrity; accuracy of the released values, drift from "
    "the previous release, experiment uplift. Numeric metadata, so the UI plots trends across "
    "releases.",
)
def privacy_scorecard(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    policy, release_date = pipeline.policy(), context.partition_key
    summary = budget_summary(ledger.ledger(), policy, as_of=release_date)
    sizes = release_rows(warehouse, COHORT_SIZES, release_date)
    metrics = release_rows(warehouse, COHORT_METRICS, release_date)
    affinity = release_rows(warehouse, COHORT_CATEGORY_AFFINITY, release_date)
    previous = previous_date(warehouse, COHORT_SIZES, release_date)
    drift = {"cohort_share_psi": 0.0, "affinity_psi": 0.0, "drift_psi": 0.0}
    if previous:
        drift = alerts.release_drift(
            release_rows(warehouse, COHORT_SIZES, previous),
            sizes,
            release_rows(warehouse, COHORT_CATEGORY_AFFINITY, previous),
            affinity,
            policy.shrinkage,
        )
    level = alerts.drift_level(drift["drift_psi"])
    near = alerts.cohorts_near_k(sizes, policy.min_size)
    privacy = {
        "epsilon_remaining": summary["epsilon_remaining"],
        "budget_used": summary["epsilon_spent"] / summary["epsilon_cap"],
        "horizon_epsilon": summary["horizon_epsilon"],
        "horizon_budget_used": summary["horizon_epsilon"] / summary["epsilon_horizon_cap"],
        "yearly_epsilon": summary["yearly_epsilon"],
        "releases_on_record": len(summary["releases"]),
        "ledger_verified": summary["verified"],
        "min_noisy_size_over_k": float(sizes["noisy_users"].min()) / policy.min_size,
        "cohorts_near_k": len(near),
        "coarsened_cohorts": int(sizes["members"].str.contains(";").sum()),
        "released_cohorts": len(sizes),
    }
    utility = {
        "median_size_relative_accuracy_95": float(
            (sizes["accuracy_95"] / sizes["noisy_users"].clip(lower=1.0)).median()
        ),
        "median_conversion_rate_accuracy_95": float(
            metrics["conversion_rate_accuracy_95"].median()
        ),
        "median_affinity_accuracy_95": float(affinity["accuracy_95"].median()),
        **drift,
        **experiment_uplift(warehouse, release_date),
    }
    fired = [
        *alerts.density_alerts(release_date, sizes, policy.min_size),
        *alerts.drift_alerts(release_date, drift),
    ]
    new, errors = alerts.send_alerts(fired, pipeline.data_dir, pipeline.alert_webhook)
    for alert in new:
        context.log.warning(f"alert ({alert.level}): {alert.message}")
    for error in errors:
        context.log.error(error)
    drift_meta = {
        "release_date": release_date,
        **drift,
        "level": level,
        "previous_release": previous or "none",
        **constants_metadata(warn=alerts.PSI_WARN, breach=alerts.PSI_BREACH),
    }
    return MaterializeResult(
        metadata={
            **privacy,
            **utility,
            "drift_level": level,
            "previous_release": previous or "none",
            "alerts_sent": len(new),
            "scorecard": MetadataValue.md(
                reports.scorecard_markdown(
                    release_date, privacy, utility, reports.horizon_words(summary)
                )
            ),
        },
        check_results=[
            AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=level == "stable",
                metadata=drift_meta,
                severity=AssetCheckSeverity.ERROR if level == "breach" else AssetCheckSeverity.WARN,
            ),
            AssetCheckResult(
                check_name=DENSITY_CHECK,
                passed=near.empty,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "release_date": release_date,
                    "cohorts_near_k": len(near),
                    **constants_metadata(k=policy.min_size, margin=alerts.DENSITY_MARGIN),
                    "near": ", ".join(near["cohort_key"]) or "none",
                },
            ),
        ],
    )
