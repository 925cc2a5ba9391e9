"""Group experiments (release zone): the cohort arm versus the popularity arm, with DP readouts."""

from datetime import date

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cohort_pipeline.assets.common import (
    RELEASE,
    Group,
    Owner,
    admitted_release,
    asset_args,
    release_lock,
    stored_release,
    write_release,
)
from cohort_pipeline.assets.ranking import cohort_recommendations
from cohort_pipeline.experiments import (
    EVAL_DAYS,
    HEADLINE,
    OVERALL,
    UPLIFT_ARM,
    experiment_results,
    mean_weight_change,
    ranking_date,
    relevant_items,
    report_markdown,
    stability_rows,
)
from cohort_pipeline.privacy.release import mechanisms
from cohort_pipeline.resources import LedgerResource, PipelineResource, WarehouseResource

TABLE = "release.experiment_results"


def _at(warehouse, table, day, where="", params=()):
    return warehouse.read(f"SELECT * FROM {table} WHERE release_date = ? {where}", [day, *params])


def _evaluation_inputs(warehouse: WarehouseResource, ranked: str, release_date: str):
    """The ranking release of `ranked` and the evaluation window's items, or a reason why not."""
    recs = _at(warehouse, "release.cohort_recommendations", ranked)
    if recs.empty:
        return (
            None,
            f"no release of cohort_recommendations for {ranked} (release date - {EVAL_DAYS} days)",
        )
    ref = recs.iloc[0]
    match = "AND policy_hash = ? AND data_version = ?"
    plan = _at(
        warehouse, "release.cohort_sizes", ranked, match, (ref.policy_hash, ref.data_version)
    )
    popularity = _at(
        warehouse, "release.item_popularity", ranked, "AND ledger_seq = ?", (int(ref.ledger_seq),)
    )
    assignments = _at(
        warehouse, "private.cohort_assignments", ranked, "AND data_version = ?", (ref.data_version,)
    )
    found = {
        "release.cohort_sizes": plan,
        "release.item_popularity": popularity,
        "private.cohort_assignments": assignments,
    }
    missing = [name for name, frame in found.items() if frame.empty]
    if missing:
        return None, f"the release of {ranked} lacks {', '.join(missing)} of the same data version"
    events = warehouse.read(
        "SELECT user_id, item_id, event_time FROM private.raw_events "
        "WHERE release_date = ? AND event_time >= ?",
        [release_date, pd.Timestamp(ranked, tz="UTC")],
    )
    relevant = relevant_items(events, date.fromisoformat(ranked), date.fromisoformat(release_date))
    return (recs, plan, popularity, assignments, relevant), ""


def _stability(
    warehouse: WarehouseResource, ranked: str, release_date: str, uplift: float
) -> pd.DataFrame:
    weights = _at(warehouse, "release.ranking_weights", ranked)
    before = warehouse.read(
        "SELECT * FROM release.ranking_weights WHERE release_date = "
        "(SELECT max(release_date) FROM release.ranking_weights WHERE release_date < ?)",
        [ranked],
    )
    change = mean_weight_change(weights, before) if len(weights) and len(before) else float("nan")
    previous = warehouse.read(
        f"SELECT value FROM {TABLE} WHERE arm = ? AND metric = ? AND cohort_key = ? "
        "AND release_date = "
        f"(SELECT max(release_date) FROM {TABLE} WHERE release_date < ?)",
        [UPLIFT_ARM, f"{HEADLINE}_uplift", OVERALL, release_date],
    )
    return stability_rows(
        change, uplift, float(previous["value"].iloc[0]) if len(previous) else float("nan")
    )


@asset(
    **asset_args(Group.EXPERIMENTS, Owner.RANKING, RELEASE, {"duckdb", "opendp"}),
    deps=[cohort_recommendations],
    description=f"The ranking released {EVAL_DAYS} days earlier, evaluated on users' events "
    "since then (temporal split): cohort arm vs popularity arm (DP popularity of the same "
    "release): HR@10, NDCG@10, Recall@20, catalog coverage, per-cohort NDCG@10 uplift, "
    "stability. Means are DP readouts (Gaussian, share budget.split.experiment_report). "
    "Table release.experiment_results.",
)
def experiment_report(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    # Held from the reservation check to the write, as every DP asset: two concurrent runs
    # of this release draw once (release_lock).
    with release_lock(warehouse):
        release = admitted_release(
            context, "experiment_report", pipeline, warehouse, ledger, "private.cohort_assignments"
        )
        mech = mechanisms(release.policy)["experiment_report"]
        ranked = ranking_date(date.fromisoformat(release.release_date)).isoformat()
        noise = (
            f"Gaussian (OpenDP), std {mech.std:.4g} on each summed per-user value (L2 sensitivity "
            f"{mech.sensitivity:g}; rho {mech.spend.rho:.4g}, epsilon {mech.spend.epsilon:.4g} "
            f"at delta {mech.spend.delta:g})"
        )
        results = stored_release(warehouse, TABLE, release)
        reused = results is not None
        if not reused:
            inputs, reason = _evaluation_inputs(warehouse, ranked, release.release_date)
            if inputs is None:
                # Nothing to evaluate is not a failed release: say so, record nothing, draw no noise.
                context.log.warning(
                    f"experiment_report {release.release_date}: nothing evaluated: {reason}"
                )
                status = (
                    f"**No experiment for {release.release_date}**: {reason}. Materialize that "
                    "release first. Nothing was recorded and no noise was drawn (this release's "
                    "reserved readout share stays unused)."
                )
                return MaterializeResult(
                    metadata={"status": MetadataValue.md(status), "ranking_release": ranked}
                )
            recs, plan, popularity, assignments, relevant = inputs
            catalog_size = pd.read_csv(pipeline.catalog_path, dtype=str)["item_id"].nunique()
            figures, noisy_users = experiment_results(
                relevant,
                assignments,
                plan,
                recs,
                popularity,
                release.policy.top_n,
                catalog_size,
                mech,
            )
            uplift = figures[
                (figures.metric == f"{HEADLINE}_uplift") & (figures.cohort_key == OVERALL)
            ]["value"]
            figures = pd.concat(
                [
                    figures,
                    _stability(warehouse, ranked, release.release_date, float(uplift.iloc[0])),
                ]
            )
            figures["noisy_evaluated_users"] = noisy_users
            figures["noise_std"] = mech.std
            figures["ranking_release"] = date.fromisoformat(ranked)
            results = write_release(warehouse, TABLE, release, figures)
    return MaterializeResult(
        metadata={
            "status": "reused the stored release" if reused else "released",
            "ranking_release": ranked,
            "evaluation_window": f"{ranked} (exclusive) .. {release.release_date}",
            "noise": noise,
            "noisy_evaluated_users": float(results["noisy_evaluated_users"].iloc[0]),
            "report": MetadataValue.md(report_markdown(results)),
        }
    )
