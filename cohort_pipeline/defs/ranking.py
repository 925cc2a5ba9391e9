"""Group ranking (release zone): ranking weights with their blocking checks, and top-N
recommendations per cohort exported for serving."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cohort_pipeline.defs.common import (
    AFTER_BLOCKING_CHECKS,
    RELEASE,
    Group,
    Owner,
    asset_args,
    private_totals,
    release_rows,
    table_preview,
    write_release,
)
from cohort_pipeline.defs.dp_asset import Step, dp_asset, draws_table
from cohort_pipeline.defs.metrics import cohort_category_affinity
from cohort_pipeline.defs.privacy import cohort_sizes
from cohort_pipeline.defs.tables import constants_metadata, release_table_metadata
from cohort_pipeline.logic.ranking import (
    max_weight_change,
    recommendations,
)
from cohort_pipeline.logic.ranking import (
    ranking_weights as compute_weights,
)
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.release import release_item_popularity
from cohort_pipeline.resources import PipelineResource, WarehouseResource, replace_partition

CHANGE_CHECK = "weight_change_within_limit"
FLOOR_CHECK = "fairness_floor_met"


@asset(
    **asset_args(Group.RANKING, Owner.RANKING, RELEASE, {"duckdb", "pandas"}),
    automation_condition=AFTER_BLOCKING_CHECKS,
    deps=[cohort_category_affinity, cohort_sizes],
    check_specs=[
        AssetCheckSpec(
            CHANGE_CHECK,
            asset="ranking_weights",
            blocking=True,
            description="No weight moves more than ranking.max_change from the previous release.",
        ),
        AssetCheckSpec(
            FLOOR_CHECK,
            asset="ranking_weights",
            blocking=True,
            description="Every category keeps at least ranking.fairness_floor of every cohort's weight.",
        ),
    ],
    description="Per cohort x category weights from the DP affinities: shrinkage toward the global profile "
    "(more for smaller cohorts), bounded change versus the previous release, fairness floor. "
    "Post-processing only. Table release.ranking_weights.",
)
def ranking_weights(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    policy = pipeline.policy()
    release_date = context.partition_key
    affinity = release_rows(warehouse, "release.cohort_category_affinity", release_date)
    sizes = release_rows(warehouse, "release.cohort_sizes", release_date)
    previous = warehouse.read(
        "SELECT * FROM release.ranking_weights WHERE release_date = "
        "(SELECT max(release_date) FROM release.ranking_weights WHERE release_date < ?)",
        [release_date],
    )
    weights = compute_weights(affinity, sizes, None if previous.empty else previous, policy)
    change, floor = max_weight_change(weights), float(weights["weight"].min())
    change_ok = change <= policy.max_change + 1e-9
    floor_ok = floor >= policy.fairness_floor - 1e-9
    # Checked values are stored before their checks run: store only weights that pass.
    stored = {}
    if change_ok and floor_ok:
        released = weights.assign(policy_hash=policy.hash)
        with warehouse.connect() as con:
            replace_partition(con, "release.ranking_weights", release_date, released)
        stored = release_table_metadata("release.ranking_weights", released)
    return MaterializeResult(
        metadata={
            **stored,
            "max_weight_change": change,
            "min_weight": floor,
            "previous_release": str(previous["release_date"].iloc[0])
            if not previous.empty
            else "none",
            "mean_shrinkage": float(weights.groupby("cohort_key")["shrinkage"].first().mean()),
            "top_boosts": table_preview(weights.sort_values("boost", ascending=False).head(10)),
        },
        check_results=[
            AssetCheckResult(
                check_name=CHANGE_CHECK,
                passed=change_ok,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "release_date": release_date,
                    "max_weight_change": change,
                    **constants_metadata(limit=policy.max_change),
                },
            ),
            AssetCheckResult(
                check_name=FLOOR_CHECK,
                passed=floor_ok,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "release_date": release_date,
                    "min_weight": floor,
                    **constants_metadata(floor=policy.fairness_floor),
                },
            ),
        ],
    )


def _draw_popularity(step: Step) -> pd.DataFrame:
    items = private_totals(step.warehouse, "private.item_totals", step.release_date)
    mech = mechanisms(step.policy)["item_popularity"]
    return release_item_popularity(items, _catalog(step), step.policy, mech)


def _catalog(step: Step) -> pd.DataFrame:
    return pd.read_csv(step.pipeline.catalog_path, dtype=str).dropna().drop_duplicates("item_id")


def _publish_recommendations(step: Step, popularity: pd.DataFrame, drawn: bool):
    # Both tables are post-processing of the stored popularity draw: writing them again on a
    # retry (after a failure between them) releases nothing new.
    write_release(step.warehouse, "release.item_popularity", step.admission, popularity)
    weights = release_rows(step.warehouse, "release.ranking_weights", step.release_date)
    recs = recommendations(weights, popularity, step.policy.top_n)
    recs = write_release(step.warehouse, "release.cohort_recommendations", step.admission, recs)
    path = step.pipeline.exports_dir(step.release_date) / "cohort_recommendations.csv"
    recs[["cohort_key", "rank", "item_id", "category", "score"]].to_csv(path, index=False)
    return MaterializeResult(
        metadata={
            **release_table_metadata("release.cohort_recommendations", recs),
            "drawn_now": drawn,
            "export": MetadataValue.path(str(path)),
            "cohorts": int(recs["cohort_key"].nunique()),
            "distinct_items": int(recs["item_id"].nunique()),
            "top_items": table_preview(
                recs[recs["rank"] <= 3][["cohort_key", "rank", "item_id", "category", "score"]]
            ),
        }
    )


cohort_recommendations = dp_asset(
    name="cohort_recommendations",
    measurement="item_popularity",
    draw=_draw_popularity,
    publish=_publish_recommendations,
    **asset_args(Group.RANKING, Owner.RANKING, RELEASE, {"duckdb", "opendp", "csv"}),
    automation_condition=AFTER_BLOCKING_CHECKS,
    deps=[ranking_weights],
    description="Top-N items per cohort: cohort category weights x DP global item popularity (Gaussian). "
    f"The popularity draw is stored first in {draws_table('item_popularity')}, keyed by reservation_id; "
    "tables release.item_popularity and release.cohort_recommendations are computed from it, and "
    "exported to exports/<date>/cohort_recommendations.csv.",
)
