"""Group metrics (release zone): DP cohort metrics, category affinity, and similarity."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from cohort_pipeline.assets.cohorts import user_profiles
from cohort_pipeline.assets.common import (
    AFTER_BLOCKING_CHECKS,
    RELEASE,
    Group,
    Owner,
    admitted_release,
    asset_args,
    private_totals,
    release_lock,
    released_plan,
    stored_release,
    table_preview,
    write_release,
)
from cohort_pipeline.assets.privacy import cohort_sizes
from cohort_pipeline.assets.tables import release_table_metadata
from cohort_pipeline.privacy.release import release_cohort_affinity, release_cohort_metrics
from cohort_pipeline.resources import (
    LedgerResource,
    PipelineResource,
    WarehouseResource,
    replace_partition,
)

DP_ASSET = dict(
    **asset_args(Group.METRICS, Owner.PRIVACY, RELEASE, {"duckdb", "opendp"}),
    automation_condition=AFTER_BLOCKING_CHECKS,
)


def measured(context, asset_name, table, pipeline, warehouse, ledger, source, compute):
    """Guard, then return the stored release or compute (once) and store it."""
    with release_lock(warehouse):
        release = admitted_release(context, asset_name, pipeline, warehouse, ledger, source)
        stored = stored_release(warehouse, table, release)
        if stored is not None:
            return release, stored, True
        plan = released_plan(warehouse, release)
        return release, write_release(warehouse, table, release, compute(release, plan)), False


@asset(
    **DP_ASSET,
    deps=[cohort_sizes, user_profiles],
    description="DP per released cohort: users (from cohort_sizes), mean session duration, 7-day conversion "
    "rate and sessions per user (Gaussian, zCDP), each with a 95% half-width. Table release.cohort_metrics.",
)
def cohort_metrics(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    def compute(release, plan):
        totals = private_totals(warehouse, "private.cohort_totals", release)
        return release_cohort_metrics(totals, plan, release.policy)

    _, metrics, reused = measured(
        context,
        "cohort_metrics",
        "release.cohort_metrics",
        pipeline,
        warehouse,
        ledger,
        "private.cohort_totals",
        compute,
    )
    meta = {"reused_stored_release": reused, "noise_scale": float(metrics["noise_scale"].iloc[0])}
    for row in metrics.itertuples():
        meta[f"conversion_rate:{row.cohort_key}"] = float(row.conversion_rate)
    for col in ("mean_session_duration_s", "conversion_rate", "sessions_per_user"):
        meta[f"median_{col}_accuracy_95"] = float(metrics[f"{col}_accuracy_95"].median())
    cols = [
        "cohort_key",
        "users",
        "mean_session_duration_s",
        "conversion_rate",
        "conversion_rate_accuracy_95",
        "sessions_per_user",
    ]
    meta["cohort_metrics"] = table_preview(metrics[cols])
    return MaterializeResult(metadata=meta)


@asset(
    **DP_ASSET,
    deps=[cohort_sizes, user_profiles],
    description="DP engagement per released cohort x catalog category (each user's category vector bounded "
    "in L2 norm, Gaussian noise under zCDP). Table release.cohort_category_affinity.",
)
def cohort_category_affinity(
    context: AssetExecutionContext,
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    ledger: LedgerResource,
):
    def compute(release, plan):
        totals = private_totals(warehouse, "private.cohort_category_totals", release)
        categories = sorted(
            pd.read_csv(pipeline.catalog_path, dtype=str)["category"].dropna().unique()
        )
        return release_cohort_affinity(totals, plan, categories, release.policy)

    _, affinity, reused = measured(
        context,
        "cohort_category_affinity",
        "release.cohort_category_affinity",
        pipeline,
        warehouse,
        ledger,
        "private.cohort_category_totals",
        compute,
    )
    top = affinity.sort_values("share", ascending=False).groupby("cohort_key").head(3)
    return MaterializeResult(
        metadata={
            "reused_stored_release": reused,
            "noise_scale": float(affinity["noise_scale"].iloc[0]),
            "median_affinity_accuracy_95": float(affinity["accuracy_95"].median()),
            "categories": int(affinity["category"].nunique()),
            "top_categories": table_preview(
                top[["cohort_key", "category", "share", "accuracy_95"]]
            ),
        }
    )


def cosine_similarity(affinity: pd.DataFrame) -> pd.DataFrame:
    """Cohort x cohort cosine similarity of category shares (post-processing)."""
    shares = affinity.pivot(index="cohort_key", columns="category", values="share").fillna(0.0)
    m = shares.to_numpy()
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    unit = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
    sim = unit @ unit.T
    keys = shares.index.to_numpy()
    return pd.DataFrame(
        {
            "cohort_key": np.repeat(keys, len(keys)),
            "other_cohort_key": np.tile(keys, len(keys)),
            "similarity": sim.ravel(),
        }
    )


@asset(
    **asset_args(Group.METRICS, Owner.RANKING, RELEASE, {"duckdb", "pandas"}),
    deps=[cohort_category_affinity],
    description="Cosine similarity between cohorts' DP category profiles (post-processing, no budget). "
    "Table release.cohort_similarity.",
)
def cohort_similarity(context: AssetExecutionContext, warehouse: WarehouseResource):
    affinity = warehouse.read(
        "SELECT * FROM release.cohort_category_affinity WHERE release_date = ?",
        [context.partition_key],
    )
    if affinity.empty:
        raise Failure(f"release.cohort_category_affinity has no rows for {context.partition_key}")
    sim = cosine_similarity(affinity)
    with warehouse.connect() as con:
        replace_partition(con, "release.cohort_similarity", context.partition_key, sim)
    off = sim[sim["cohort_key"] != sim["other_cohort_key"]]["similarity"]
    return MaterializeResult(
        metadata={
            **release_table_metadata("release.cohort_similarity", sim),
            "mean_similarity": float(off.mean()) if len(off) else 1.0,
            "min_similarity": float(off.min()) if len(off) else 1.0,
        }
    )
