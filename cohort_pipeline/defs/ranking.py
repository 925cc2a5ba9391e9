"""Group ranking (release zone): ranking weights with their blocking checks, and top-N
recommendations per cohort exported for serving."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cohort_pipeline.defs import common
from cohort_pipeline.defs.cohorts import totals
from cohort_pipeline.defs.dp_asset import Step, dp_asset
from cohort_pipeline.defs.ingest import catalog
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
from cohort_pipeline.resources import PipelineResource, WarehouseResource
from cohort_pipeline.storage.warehouse import (
    COHORT_CATEGORY_AFFINITY,
    COHORT_RECOMMENDATIONS,
    COHORT_SIZES,
    ITEM_POPULARITY,
    ITEM_TOTALS,
    RANKING_WEIGHTS,
    draws_table,
    previous_partition,
    read_catalog,
    replace_partition,
    table_name,
)

CHANGE_CHECK = "weight_change_within_limit"
FLOOR_CHECK = "fairness_floor_met"


@asset(
    **common.asset_args(
        common.Group.RANKING, common.Owner.RANKING, common.RELEASE, {"duckdb", "pandas"}
    ),
    automation_condition=common.AFTER_BLOCKING_CHECKS,
    deps=["cohort_category_affinity", "cohort_sizes"],
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
    f"Post-processing only. Table {RANKING_WEIGHTS}.",
)
def ranking_weights(
    context: AssetExecutionContext, pipeline: PipelineResource, warehouse: WarehouseResource
):
    policy = pipeline.policy()
    release_date = context.partition_key
    affinity = common.release_rows(warehouse, COHORT_CATEGORY_AFFINITY, release_date)
    sizes = common.release_rows(warehouse, COHORT_SIZES, release_date)
    previous = previous_partition(warehouse, RANKING_WEIGHTS, release_date)
    weights = compute_weights(affinity, sizes, None if previous.empty else previous, policy)
    change, floor = max_weight_change(weights), float(weights["weight"].min())
    change_ok = change <= policy.max_change + 1e-9
    floor_ok = floor >= policy.fairness_floor - 1e-9
    # Checked values are stored before their checks run: store only weights that pass.
    stored = {}
    if change_ok and floor_ok:
        released = weights.assign(policy_hash=policy.hash)
        with warehouse.connect() as con:
            replace_partition(con, RANKING_WEIGHTS, release_date, released)
        stored = release_table_metadata(RANKING_WEIGHTS, released)
    return MaterializeResult(
        metadata={
            **stored,
            "max_weight_change": change,
            "min_weight": floor,
            "previous_release": str(previous["release_date"].iloc[0])
            if not previous.empty
            else "none",
            "mean_shrinkage": float(weights.groupby("cohort_key")["shrinkage"].first().mean()),
            "top_boosts": common.table_preview(
                weights.sort_values("boost", ascending=False).head(10)
            ),
        },
        check_results=[
            # Each check: its verdict, the figure it judged and the policy constant it used.
            AssetCheckResult(
                check_name=name,
                passed=ok,
                severity=AssetCheckSeverity.ERROR,
                metadata={"release_date": release_date, **figure, **constants_metadata(**limit)},
            )
            for name, ok, figure, limit in (
                (
                    CHANGE_CHECK,
                    change_ok,
                    {"max_weight_change": change},
                    {"limit": policy.max_change},
                ),
                (FLOOR_CHECK, floor_ok, {"min_weight": floor}, {"floor": policy.fairness_floor}),
            )
        ],
    )


def _draw_popularity(step: Step) -> pd.DataFrame:
    items = common.private_totals(step.warehouse, ITEM_TOTALS, step.release_date)
    mech = mechanisms(step.policy)["item_popularity"]
    return release_item_popularity(items, _catalog(step), step.policy, mech)


def _catalog(step: Step) -> pd.DataFrame:
    items = read_catalog(step.warehouse, step.release_date)
    return items.dropna().drop_duplicates("item_id")


def _publish_recommendations(step: Step, popularity: pd.DataFrame, drawn: bool):
    # Both tables are post-processing of the stored popularity draw: writing them again on a
    # retry (after a failure between them) releases nothing new.
    stored = common.write_release(step.warehouse, ITEM_POPULARITY, step.admission, popularity)
    weights = common.release_rows(step.warehouse, RANKING_WEIGHTS, step.release_date)
    recs = recommendations(weights, popularity, step.policy.top_n)
    recs = common.write_release(step.warehouse, COHORT_RECOMMENDATIONS, step.admission, recs)
    path = step.pipeline.exports_dir(step.release_date) / "cohort_recommendations.csv"
    recs[["cohort_key", "rank", "item_id", "category", "score"]].to_csv(path, index=False)
    yield MaterializeResult(
        asset_key=table_name(ITEM_POPULARITY),
        metadata={**release_table_metadata(ITEM_POPULARITY, stored), "drawn_now": drawn},
    )
    yield MaterializeResult(
        metadata={
            **release_table_metadata(COHORT_RECOMMENDATIONS, recs),
            "drawn_now": drawn,
            "export": MetadataValue.path(str(path)),
            "cohorts": int(recs["cohort_key"].nunique()),
            "distinct_items": int(recs["item_id"].nunique()),
            "top_items": common.table_preview(
                recs[recs["rank"] <= 3][["cohort_key", "rank", "item_id", "category", "score"]]
            ),
        }
    )


cohort_recommendations = dp_asset(
    name="cohort_recommendations",
    measurement="item_popularity",
    draw=_draw_popularity,
    publish=_publish_recommendations,
    args=common.asset_args(
        common.Group.RANKING, common.Owner.RANKING, common.RELEASE, {"duckdb", "opendp", "csv"}
    ),
    also=(
        AssetSpec(
            table_name(ITEM_POPULARITY),
            **common.split_args(
                common.asset_args(
                    common.Group.RANKING, common.Owner.RANKING, common.RELEASE, {"duckdb", "opendp"}
                )
            )[0],
            deps=[totals("item_popularity"), catalog],
            description=f"DP global item popularity (Gaussian), table {ITEM_POPULARITY}: "
            "post-processing of the stored draw, written with cohort_recommendations.",
        ),
    ),
    automation_condition=common.AFTER_BLOCKING_CHECKS,
    deps=[ranking_weights, totals("item_popularity"), catalog],
    description="Top-N items per cohort: cohort category weights x DP global item popularity (Gaussian). "
    f"The popularity draw is stored first in {draws_table('item_popularity')}, keyed by reservation_id; "
    f"tables {ITEM_POPULARITY} and {COHORT_RECOMMENDATIONS} are computed from it, and "
    "exported to exports/<date>/cohort_recommendations.csv.",
)
