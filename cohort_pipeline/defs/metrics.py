"""Group metrics (release zone): DP cohort metrics, category affinity, and similarity."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from cohort_pipeline.defs import common
from cohort_pipeline.defs.cohorts import PROFILES, totals
from cohort_pipeline.defs.dp_asset import Step, dp_asset
from cohort_pipeline.defs.ingest import catalog
from cohort_pipeline.defs.tables import noisy_metadata, release_table_metadata
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.release import release_cohort_affinity, release_cohort_metrics
from cohort_pipeline.resources import WarehouseResource
from cohort_pipeline.storage.warehouse import (
    COHORT_CATEGORY_AFFINITY,
    COHORT_CATEGORY_TOTALS,
    COHORT_METRICS,
    COHORT_SIMILARITY,
    COHORT_SIZES,
    COHORT_TOTALS,
    draws_table,
    partition,
    read_catalog,
    replace_partition,
)

DP_ASSET = dict(
    args=common.asset_args(
        common.Group.METRICS, common.Owner.PRIVACY, common.RELEASE, {"duckdb", "opendp"}
    ),
    automation_condition=common.AFTER_BLOCKING_CHECKS,
)


def released_plan(step: Step) -> pd.DataFrame:
    """The cohort plan (release.cohort_sizes) released under the same reservation."""
    plan = partition(
        step.warehouse,
        COHORT_SIZES,
        step.release_date,
        reservation_id=step.admission.reservation_id,
    )
    if plan.empty:
        raise Failure(
            f"refusing to compute {step.admission.asset} for {step.release_date}: "
            f"{COHORT_SIZES} holds no released cohorts under its reservation "
            f"{step.admission.reservation_id} (its check min_cohort_size must pass first)"
        )
    return plan.drop(columns=["release_date"])


def _draw_metrics(step: Step) -> pd.DataFrame:
    sums = common.private_totals(step.warehouse, COHORT_TOTALS, step.release_date)
    mechs = mechanisms(step.policy)
    return release_cohort_metrics(
        sums, released_plan(step), step.policy, mechs["cohort_metrics"], mechs["cohort_sizes"]
    )


def _publish_metrics(step: Step, metrics: pd.DataFrame, drawn: bool) -> MaterializeResult:
    stored = common.write_release(step.warehouse, COHORT_METRICS, step.admission, metrics)
    meta = {
        **release_table_metadata(COHORT_METRICS, stored),
        "drawn_now": drawn,
        "noise_scale": float(metrics["noise_scale"].iloc[0]),
    }
    for row in metrics.itertuples():
        meta |= noisy_metadata(
            f"conversion_rate:{row.cohort_key}",
            row.conversion_rate,
            row.conversion_rate_accuracy_95,
        )
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
    meta["cohort_metrics"] = common.table_preview(metrics[cols])
    return MaterializeResult(metadata=meta)


cohort_metrics = dp_asset(
    name="cohort_metrics",
    measurement="cohort_metrics",
    draw=_draw_metrics,
    publish=_publish_metrics,
    **DP_ASSET,
    deps=["cohort_sizes", PROFILES, totals("cohort_metrics")],
    description="DP per released cohort: users (from cohort_sizes), mean session duration, 7-day conversion "
    f"rate and sessions per user (Gaussian, zCDP), each with a 95% half-width. Table {COHORT_METRICS}; "
    f"the draw is stored first in {draws_table('cohort_metrics')}, keyed by reservation_id.",
)


def _draw_affinity(step: Step) -> pd.DataFrame:
    sums = common.private_totals(step.warehouse, COHORT_CATEGORY_TOTALS, step.release_date)
    items = read_catalog(step.warehouse, step.release_date)
    categories = sorted(items["category"].dropna().unique())
    mech = mechanisms(step.policy)["cohort_category_affinity"]
    return release_cohort_affinity(sums, released_plan(step), categories, step.policy, mech)


def _publish_affinity(step: Step, affinity: pd.DataFrame, drawn: bool) -> MaterializeResult:
    stored = common.write_release(
        step.warehouse, COHORT_CATEGORY_AFFINITY, step.admission, affinity
    )
    top = affinity.sort_values(["share", "cohort_key", "category"], ascending=False)
    top = top.groupby("cohort_key").head(3)
    return MaterializeResult(
        metadata={
            **release_table_metadata(COHORT_CATEGORY_AFFINITY, stored),
            "drawn_now": drawn,
            "noise_scale": float(affinity["noise_scale"].iloc[0]),
            "median_affinity_accuracy_95": float(affinity["accuracy_95"].median()),
            "categories": int(affinity["category"].nunique()),
            "top_categories": common.table_preview(
                top[["cohort_key", "category", "share", "accuracy_95"]]
            ),
        }
    )


cohort_category_affinity = dp_asset(
    name="cohort_category_affinity",
    measurement="cohort_category_affinity",
    draw=_draw_affinity,
    publish=_publish_affinity,
    **DP_ASSET,
    deps=["cohort_sizes", PROFILES, totals("cohort_category_affinity"), catalog],
    description="DP engagement per released cohort x catalog category (each user's category vector bounded "
    f"in L2 norm, Gaussian noise under zCDP). Table {COHORT_CATEGORY_AFFINITY}; the draw is stored "
    f"first in {draws_table('cohort_category_affinity')}, keyed by reservation_id.",
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
    **common.asset_args(
        common.Group.METRICS, common.Owner.RANKING, common.RELEASE, {"duckdb", "pandas"}
    ),
    deps=["cohort_category_affinity"],
    description="Cosine similarity between cohorts' DP category profiles (post-processing, no budget). "
    f"Table {COHORT_SIMILARITY}.",
)
def cohort_similarity(context: AssetExecutionContext, warehouse: WarehouseResource):
    affinity = common.release_rows(warehouse, COHORT_CATEGORY_AFFINITY, context.partition_key)
    sim = cosine_similarity(affinity)
    with warehouse.connect() as con:
        replace_partition(con, COHORT_SIMILARITY, context.partition_key, sim)
    off = sim[sim["cohort_key"] != sim["other_cohort_key"]]["similarity"]
    return MaterializeResult(
        metadata={
            **release_table_metadata(COHORT_SIMILARITY, sim),
            "mean_similarity": float(off.mean()) if len(off) else 1.0,
            "min_similarity": float(off.min()) if len(off) else 1.0,
        }
    )
