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

from cohort_pipeline.assets.common import (
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
from cohort_pipeline.assets.metrics import cohort_category_affinity, measured
from cohort_pipeline.assets.privacy import cohort_sizes
from cohort_pipeline.assets.tables import constants_metadata, release_table_metadata
from cohort_pipeline.privacy.release import release_item_popularity
from cohort_pipeline.ranking import (
    max_weight_change,
    recommendations,
)
from cohort_pipeline.ranking import (
    ranking_weights as compute_weights,
)
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
    replace_partition,
)

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


@asset(
    **asset_args(Group.RANKING, Owner.RANKING, RELEASE, {"duckdb", "opendp", "csv"}),
    automation_condition=AFTER_BLOCKING_CHECKS,
    deps=[ranking_weights],
    description="Top-N items per cohort: cohort category weights x DP global item popularity (Gaussian). "
    "Table release.cohort_recommendations, exported to exports/<date>/cohort_recommendations.csv.",
)
def cohort_recommendations(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    policy = pipeline.policy()
    release_date = context.partition_key

    def compute(release, plan):
        weights = release_rows(warehouse, "release.ranking_weights", release_date)
        items = private_totals(warehouse, "private.item_totals", release)
        catalog = pd.read_csv(pipeline.catalog_path, dtype=str).dropna().drop_duplicates("item_id")
        popularity = release_item_popularity(items, catalog, release.policy)
        # Stored for experiment_report's popularity arm: same window, same budget.
        write_release(warehouse, "release.item_popularity", release, popularity)
        return recommendations(weights, popularity, policy.top_n)

    _, recs, reused = measured(
        context,
        "cohort_recommendations",
        "release.cohort_recommendations",
        pipeline,
        warehouse,
        ledger,
        "private.item_totals",
        compute,
    )
    path = pipeline.exports_dir(release_date) / "cohort_recommendations.csv"
    recs[["cohort_key", "rank", "item_id", "category", "score"]].to_csv(path, index=False)
    return MaterializeResult(
        metadata={
            "reused_stored_release": reused,
            "export": MetadataValue.path(str(path)),
            "cohorts": int(recs["cohort_key"].nunique()),
            "distinct_items": int(recs["item_id"].nunique()),
            "top_items": table_preview(
                recs[recs["rank"] <= 3][["cohort_key", "rank", "item_id", "category", "score"]]
            ),
        }
    )
