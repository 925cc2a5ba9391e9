"""Group experiments (release zone): the cohort arm versus the popularity arm, with DP readouts."""

import warnings
from datetime import date

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    BetaWarning,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
)

from cohort_pipeline.defs.common import RELEASE, Group, Owner, asset_args, write_release
from cohort_pipeline.defs.dp_asset import Step, dp_asset
from cohort_pipeline.defs.ingest import catalog, raw_events
from cohort_pipeline.defs.privacy import privacy_budget_ledger
from cohort_pipeline.defs.tables import release_table_metadata
from cohort_pipeline.logic.experiments import (
    EVAL_DAYS,
    HEADLINE,
    OVERALL,
    UPLIFT_ARM,
    experiment_results,
    mean_weight_change,
    no_experiment_reason,
    ranking_date,
    readability,
    relevant_items,
    report_markdown,
    stability_rows,
)
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.resources import WarehouseResource
from cohort_pipeline.storage.warehouse import (
    COHORT_ASSIGNMENTS,
    COHORT_RECOMMENDATIONS,
    COHORT_SIZES,
    EXPERIMENT_RESULTS,
    ITEM_POPULARITY,
    RANKING_WEIGHTS,
    draws_table,
    events_since,
    partition,
    previous_date,
    previous_partition,
    read_catalog,
    release_dates,
    table_name,
)

READABLE_CHECK = "experiment_readable"
# The releases it reads of the ranking date (release date - EVAL_DAYS), declared as such.
with warnings.catch_warnings():  # the parameter is a beta API of Dagster 1.13
    warnings.simplefilter("ignore", BetaWarning)
    # The first EVAL_DAYS release dates have no ranking date among the partitions.
    RANKED = TimeWindowPartitionMapping(
        start_offset=-EVAL_DAYS, end_offset=-EVAL_DAYS, allow_nonexistent_upstream_partitions=True
    )


def _evaluation_inputs(warehouse: WarehouseResource, ranked: str, release_date: str):
    """The ranking release of `ranked` and the evaluation window's items, or a reason why not."""
    recs = partition(warehouse, COHORT_RECOMMENDATIONS, ranked)
    if recs.empty:
        return (
            None,
            f"no release of cohort_recommendations for {ranked} (release date - {EVAL_DAYS} days)",
        )
    # Every release table of a date is drawn under one reservation: join on it. The users'
    # cohorts of that date may be none at all (an empty window): that is data, not a reason.
    same = recs["reservation_id"].iloc[0]
    plan = partition(warehouse, COHORT_SIZES, ranked, reservation_id=same)
    popularity = partition(warehouse, ITEM_POPULARITY, ranked, reservation_id=same)
    found = {COHORT_SIZES: plan, ITEM_POPULARITY: popularity}
    missing = [name for name, frame in found.items() if frame.empty]
    if missing:
        return None, f"the release of {ranked} lacks {', '.join(missing)} of the same reservation"
    assignments = partition(warehouse, COHORT_ASSIGNMENTS, ranked, "user_id, cohort_key")
    if assignments.empty:
        assignments = pd.DataFrame(
            {"user_id": pd.Series(dtype=str), "cohort_key": pd.Series(dtype=str)}
        )
    events = events_since(warehouse, release_date, pd.Timestamp(ranked, tz="UTC"))
    relevant = relevant_items(events, date.fromisoformat(ranked), date.fromisoformat(release_date))
    return (recs, plan, popularity, assignments, relevant), ""


def _stability(
    warehouse: WarehouseResource, ranked: str, release_date: str, uplift: float
) -> pd.DataFrame:
    weights = partition(warehouse, RANKING_WEIGHTS, ranked)
    before = previous_partition(warehouse, RANKING_WEIGHTS, ranked)
    change = mean_weight_change(weights, before) if len(weights) and len(before) else float("nan")
    day = previous_date(warehouse, EXPERIMENT_RESULTS, release_date)
    previous = (
        pd.DataFrame()
        if day is None
        else partition(
            warehouse,
            EXPERIMENT_RESULTS,
            day,
            "value",
            arm=UPLIFT_ARM,
            metric=f"{HEADLINE}_uplift",
            cohort_key=OVERALL,
        )
    )
    return stability_rows(
        change, uplift, float(previous["value"].iloc[0]) if len(previous) else float("nan")
    )


def _draw_report(step: Step) -> pd.DataFrame | None:
    mech = mechanisms(step.policy)["experiment_report"]
    ranked = ranking_date(date.fromisoformat(step.release_date)).isoformat()
    inputs, reason = _evaluation_inputs(step.warehouse, ranked, step.release_date)
    if inputs is None:
        # Nothing to evaluate (public: which releases exist) is not a failed release: say so,
        # record nothing, draw no noise.
        step.context.log.warning(
            f"experiment_report {step.release_date}: nothing evaluated: {reason}"
        )
        return None
    recs, plan, popularity, assignments, relevant = inputs
    catalog_size = read_catalog(step.warehouse, step.release_date)["item_id"].nunique()
    figures, noisy_users = experiment_results(
        relevant, assignments, plan, recs, popularity, step.policy.top_n, catalog_size, mech
    )
    uplift = figures[(figures.metric == f"{HEADLINE}_uplift") & (figures.cohort_key == OVERALL)]
    stability = _stability(
        step.warehouse, ranked, step.release_date, float(uplift["value"].iloc[0])
    )
    figures = pd.concat([figures, stability])
    figures["noisy_evaluated_users"] = noisy_users
    figures["noise_std"] = mech.std
    figures["ranking_release"] = date.fromisoformat(ranked)
    return figures


def _readable_check(step: Step, results: pd.DataFrame | None, reason: str) -> AssetCheckResult:
    """WARN when there is nothing to read (no ranking release D - EVAL_DAYS: why, and when
    one will exist) or when the readout's interval is wider than the effect it must detect
    (how many users, or how much epsilon, would make it readable). Public inputs only."""
    day = date.fromisoformat(step.release_date)
    if results is None:
        dates = release_dates(step.warehouse, COHORT_RECOMMENDATIONS)
        if ranking_date(day) not in dates:
            reason = no_experiment_reason(day, dates)
        passed, text = False, reason
    else:
        verdict = readability(results, step.policy)
        passed, text = not verdict.inconclusive, verdict.message()
    return AssetCheckResult(
        check_name=READABLE_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata={"release_date": step.release_date, "reason": MetadataValue.text(text)},
    )


def _publish_report(step: Step, results: pd.DataFrame | None, drawn: bool) -> MaterializeResult:
    mech = mechanisms(step.policy)["experiment_report"]
    ranked = ranking_date(date.fromisoformat(step.release_date)).isoformat()
    if results is None:
        # Which releases exist is public; the reason is found before any private row is read.
        _, reason = _evaluation_inputs(step.warehouse, ranked, step.release_date)
        status = (
            f"**No experiment for {step.release_date}**: {reason}. Materialize that release "
            "first. Nothing was recorded and no noise was drawn (this release's reserved "
            "readout share stays unused)."
        )
        return MaterializeResult(
            metadata={"status": MetadataValue.md(status), "ranking_release": ranked},
            check_results=[_readable_check(step, None, reason)],
        )
    results = write_release(step.warehouse, EXPERIMENT_RESULTS, step.admission, results)
    noise = (
        f"Gaussian (OpenDP), std {mech.std:.4g} on each summed per-user value (L2 sensitivity "
        f"{mech.sensitivity:g}; rho {mech.spend.rho:.4g}, epsilon {mech.spend.epsilon:.4g} "
        f"at delta {mech.spend.delta:g})"
    )
    return MaterializeResult(
        metadata={
            **release_table_metadata(EXPERIMENT_RESULTS, results),
            "status": "released" if drawn else "returned the stored draw",
            "ranking_release": ranked,
            "evaluation_window": f"{ranked} (exclusive) .. {step.release_date}",
            "noise": noise,
            "noisy_evaluated_users": float(results["noisy_evaluated_users"].iloc[0]),
            "report": MetadataValue.md(report_markdown(results)),
        },
        check_results=[_readable_check(step, results, "")],
    )


experiment_report = dp_asset(
    name="experiment_report",
    measurement="experiment_report",
    draw=_draw_report,
    publish=_publish_report,
    args=asset_args(Group.EXPERIMENTS, Owner.RANKING, RELEASE, {"duckdb", "opendp"}),
    deps=[
        privacy_budget_ledger,  # this date's reservation
        *[
            AssetDep(key, partition_mapping=RANKED)
            for key in (
                "cohort_recommendations",
                "cohort_sizes",
                table_name(ITEM_POPULARITY),
                "cohort_assignments",
                "ranking_weights",
            )
        ],
        raw_events,  # this date's window: the events since the ranking date
        catalog,
    ],
    check_specs=[
        AssetCheckSpec(
            READABLE_CHECK,
            asset="experiment_report",
            description=f"WARN: there is a ranking release {EVAL_DAYS} days earlier to evaluate, and the "
            "headline readout's 95% interval is narrower than the effect it has to detect (else: why, "
            "and what would make it readable).",
        )
    ],
    description=f"The ranking released {EVAL_DAYS} days earlier, evaluated on users' events "
    "since then (temporal split): cohort arm vs popularity arm (DP popularity of the same "
    "release): HR@10, NDCG@10, Recall@20, catalog coverage, per-cohort NDCG@10 uplift, "
    "stability. Means are DP readouts (Gaussian, share budget.split.experiment_report). "
    f"Table {EXPERIMENT_RESULTS}; the draw is stored first in {draws_table('experiment_report')}, "
    "keyed by reservation_id.",
)
