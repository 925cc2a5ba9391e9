"""Ranking weights and recommendations from DP releases (post-processing only).

A cohort's category weights are a probability vector: its DP affinity shares shrunk toward
the global profile (more for noisier, i.e. smaller, cohorts), then projected so that each
weight moves at most `ranking.max_change` from the previous release and keeps at least
`ranking.fairness_floor`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohort_pipeline.policy import Policy


def global_profile(affinity: pd.DataFrame, sizes: pd.DataFrame) -> pd.Series:
    """Category shares of the whole population, from the cohorts' noisy sums."""
    total = affinity.groupby("category", sort=False)["noisy_sum"].sum().clip(lower=0.0)
    if total.sum() <= 0:
        return pd.Series(1.0 / len(total), index=total.index)
    return total / total.sum()


def project(target: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The point of {w : sum(w) = 1, lo <= w <= hi} nearest to `target` (Euclidean).

    Bisection on the shift t in clip(target + t, lo, hi); requires sum(lo) <= 1 <= sum(hi).
    """
    if lo.sum() > 1 + 1e-12 or hi.sum() < 1 - 1e-12:
        raise ValueError(
            f"no weights fit the bounds: sum(lo)={lo.sum():.4f}, sum(hi)={hi.sum():.4f}"
        )
    a, b = (lo - target).min() - 1.0, (hi - target).max() + 1.0
    for _ in range(100):
        mid = (a + b) / 2
        if np.clip(target + mid, lo, hi).sum() < 1:
            a = mid
        else:
            b = mid
    return np.clip(target + (a + b) / 2, lo, hi)


def ranking_weights(
    affinity: pd.DataFrame, sizes: pd.DataFrame, previous: pd.DataFrame | None, policy: Policy
) -> pd.DataFrame:
    """Per cohort x category: weight (sums to 1 per cohort), boost (weight / global share),
    shrinkage (the global profile's part) and previous_weight (NaN without a previous)."""
    g = global_profile(affinity, sizes)
    categories = list(g.index)
    floor = policy.fairness_floor
    if floor * len(categories) >= 1:
        raise ValueError(
            f"policy key `ranking.fairness_floor` ({floor}) times {len(categories)} categories must be below 1"
        )
    prev = (
        {}
        if previous is None
        else {
            key: grp.set_index("category")["weight"].reindex(categories)
            for key, grp in previous.groupby("cohort_key")
        }
    )
    rows = []
    for row in sizes.itertuples():
        share = (
            affinity[affinity["cohort_key"] == row.cohort_key]
            .set_index("category")["share"]
            .reindex(categories)
        )
        n = max(row.noisy_users, 0.0)
        lam = policy.shrinkage / (n + policy.shrinkage) if n + policy.shrinkage > 0 else 1.0
        target = (1 - lam) * share.to_numpy() + lam * g.to_numpy()
        target = floor + (1 - floor * len(categories)) * target
        before = prev.get(row.cohort_key)
        if before is None or before.isna().any():
            lo, hi, before_values = (
                np.full(len(categories), floor),
                np.ones(len(categories)),
                np.full(len(categories), np.nan),
            )
        else:
            before_values = before.to_numpy()
            lo = np.maximum(floor, before_values - policy.max_change)
            hi = np.maximum(before_values + policy.max_change, lo)
        weight = project(target, lo, hi)
        rows.append(
            pd.DataFrame(
                {
                    "cohort_key": row.cohort_key,
                    "category": categories,
                    "weight": weight,
                    "boost": weight / np.maximum(g.to_numpy(), 1e-12),
                    "shrinkage": lam,
                    "previous_weight": before_values,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def max_weight_change(weights: pd.DataFrame) -> float:
    """Largest |weight - previous_weight| (0 where there is no previous release)."""
    change = (weights["weight"] - weights["previous_weight"]).abs()
    return float(change.max()) if change.notna().any() else 0.0


def recommendations(weights: pd.DataFrame, popularity: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """Top-N items per cohort by weight(cohort, category) x item share within its category."""
    scored = weights[["cohort_key", "category", "weight"]].merge(
        popularity[["item_id", "category", "category_share"]], on="category"
    )
    scored["score"] = scored["weight"] * scored["category_share"]
    scored = scored.sort_values(["cohort_key", "score", "item_id"], ascending=[True, False, True])
    top = scored.groupby("cohort_key", sort=False).head(top_n).copy()
    top["rank"] = top.groupby("cohort_key", sort=False).cumcount() + 1
    return top[["cohort_key", "rank", "item_id", "category", "score"]].reset_index(drop=True)
