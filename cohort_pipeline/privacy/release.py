"""The DP release functions the assets call: pandas in, pandas out, no Dagster.

Privacy parameters come from the policy: `budget.epsilon_per_release` at `budget.delta` is
turned into a zCDP budget rho and shared across the five measurements by `budget.split`.
Neighbouring datasets differ by adding or removing one user (all their window events).

| measurement              | mechanism | norm | sensitivity                 |
|--------------------------|-----------|------|-----------------------------|
| cohort_sizes             | laplace   | L1   | 1 (a user is in one cohort) |
| cohort_metrics           | gaussian  | L2   | sqrt(3)/2 (3 values in [-1/2, 1/2]) |
| cohort_category_affinity | gaussian  | L2   | bounds.category_l2_norm     |
| cohort_recommendations   | gaussian  | L2   | bounds.item_l2_norm         |
| experiment_report        | gaussian  | L2   | 3 (9 values in [-1,1])      |

Everything after the noise (coarsening, ratios, clamping, shares) is post-processing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cohort_pipeline.policy import ALL, Policy
from cohort_pipeline.privacy.accounting import rho_from_epsilon
from cohort_pipeline.privacy.ledger import BudgetCap, Measurement
from cohort_pipeline.privacy.mechanisms import Mechanism, gaussian, laplace, ratio_accuracy95

METRIC_COLUMNS = ("mean_duration_s", "converted", "sessions")  # per-user, bounded in bounding.py
# Each per-user value is scaled to [0, 1] and centred (minus 1/2): a user then moves each
# cohort sum by at most 1/2, which halves the noise against uncentred sums.
METRICS_SENSITIVITY = 0.5 * math.sqrt(len(METRIC_COLUMNS))
# experiments.readout_vectors: per user, 9 values each in [-1, 1] (7 overall, 2 in one cohort).
EXPERIMENT_SENSITIVITY = 3.0


def mechanisms(policy: Policy) -> dict[str, Mechanism]:
    """The calibrated mechanism of each measured asset; together they cost exactly
    `epsilon_per_release` at `delta` under zCDP composition."""
    rho = rho_from_epsilon(policy.epsilon_per_release, policy.delta)
    share = {asset: rho * part for asset, part in policy.split.items()}
    return {
        "cohort_sizes": laplace(1.0, math.sqrt(2.0 * share["cohort_sizes"])),
        "cohort_metrics": gaussian(METRICS_SENSITIVITY, share["cohort_metrics"], policy.delta),
        "cohort_category_affinity": gaussian(
            policy.category_l2_norm, share["cohort_category_affinity"], policy.delta
        ),
        "cohort_recommendations": gaussian(
            policy.item_l2_norm, share["cohort_recommendations"], policy.delta
        ),
        "experiment_report": gaussian(
            EXPERIMENT_SENSITIVITY, share["experiment_report"], policy.delta
        ),
    }


def exact_cohort_counts(assignments: pd.DataFrame, policy: Policy) -> pd.Series:
    """Users per cohort over the public key set (0 for empty cohorts), in key order. Private."""
    counts = assignments["cohort_key"].value_counts()
    unknown = set(counts.index) - set(policy.cohort_keys())
    if unknown:
        raise ValueError(
            f"assignments hold cohort keys outside the policy's key set: {sorted(unknown)[:3]}"
        )
    return counts.reindex(policy.cohort_keys(), fill_value=0).astype(float)


def coarsen(noisy: pd.Series, policy: Policy) -> list[tuple[str, list[str], float]]:
    """Merge cohorts whose noisy size is below k into their parents, dropping dimensions in
    `cohorts.coarsening_order`. Post-processing of noisy counts only.

    Small siblings are pooled under their parent key (e.g. `low|recent|*`); a pool still
    below k absorbs already-released cohorts under the same parent, smallest first, until
    it reaches k. What is below k after the last dimension is dropped is returned as it is,
    for the `min_cohort_size` check to refuse. Returns (key, members, noisy size) with every
    full key in exactly one entry.
    """
    k = policy.min_size
    names = [d.name for d in policy.dimensions]
    dropped: list[int] = []
    pending = [(key, [key], float(n)) for key, n in noisy.items()]
    released: list[tuple[str, list[str], float]] = []
    for dim in policy.coarsening_order:
        dropped.append(names.index(dim))
        released += [c for c in pending if c[2] >= k]
        pools: dict[str, tuple[list[str], float]] = {}
        for key, members, n in (c for c in pending if c[2] < k):
            parent = _drop(key, dropped)
            pooled, total = pools.get(parent, ([], 0.0))
            pools[parent] = (pooled + members, total + n)
        pending = []
        for parent, (members, n) in sorted(pools.items()):
            siblings = sorted(
                (c for c in released if _drop(c[0], dropped) == parent), key=lambda c: (c[2], c[0])
            )
            for sibling in siblings:
                if n >= k:
                    break
                released.remove(sibling)
                members, n = members + sibling[1], n + sibling[2]
            pending.append((parent, sorted(members), n))
    released += pending
    order = {key: i for i, key in enumerate(noisy.index)}
    return sorted(released, key=lambda c: min(order[m] for m in c[1]))


def _drop(key: str, indices: list[int]) -> str:
    labels = key.split("|")
    for index in indices:
        labels[index] = ALL
    return "|".join(labels)


def release_cohort_sizes(
    assignments: pd.DataFrame, policy: Policy, mechanism: Mechanism | None = None
) -> pd.DataFrame:
    """DP user counts per released cohort, and the coarsening plan.

    In: `assignments` (user_id, cohort_key) with one row per user. Consumes the
    `cohort_sizes` share of the budget (Laplace, L1 sensitivity 1). Out: one row per released
    cohort: cohort_key, one column per dimension ('*' where coarsened), members (the full
    keys merged into it, ';'-separated), noisy_users, noise_scale, accuracy_95 (half-width
    covering the exact size with probability ~95%). Every full key is in exactly one row.
    """
    mech = mechanism or mechanisms(policy)["cohort_sizes"]
    noisy = pd.Series(
        mech(exact_cohort_counts(assignments, policy).to_numpy()), index=policy.cohort_keys()
    )
    rows = []
    for key, members, n in coarsen(noisy, policy):
        labels = dict(zip((d.name for d in policy.dimensions), key.split("|"), strict=True))
        # A sum of m Laplace draws: exact quantile for m = 1, normal approximation beyond.
        acc = (
            mech.accuracy95 if len(members) == 1 else 1.959964 * mech.std * math.sqrt(len(members))
        )
        rows.append(
            {
                "cohort_key": key,
                **labels,
                "members": ";".join(members),
                "noisy_users": n,
                "noise_scale": mech.scale,
                "accuracy_95": acc,
            }
        )
    return pd.DataFrame(rows)


def plan_map(plan: pd.DataFrame) -> dict[str, str]:
    """Full cohort key -> released cohort key."""
    return {m: row.cohort_key for row in plan.itertuples() for m in row.members.split(";")}


def _released_cohort(frame: pd.DataFrame, plan: pd.DataFrame) -> pd.Series:
    return frame["cohort_key"].map(plan_map(plan))


def _denominators(plan: pd.DataFrame, sizes_mechanism: Mechanism) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(plan["noisy_users"].to_numpy(dtype=float), 1.0)
    n_std = sizes_mechanism.std * np.sqrt(plan["members"].str.count(";").to_numpy() + 1.0)
    return n, n_std


def release_cohort_metrics(
    profiles: pd.DataFrame, plan: pd.DataFrame, policy: Policy, mechanism: Mechanism | None = None
) -> pd.DataFrame:
    """DP mean session duration, conversion rate and sessions per user per released cohort.

    In: `profiles` from bounding.user_profiles_sql (one row per user, bounded values), and the
    plan from release_cohort_sizes (its noisy_users are the denominators: no extra budget).
    Consumes the `cohort_metrics` share (Gaussian, L2 sensitivity sqrt(3)/2 on the per-cohort
    sums of mean_duration_s/hi, converted and sessions/max_sessions, each minus 1/2). Out: one
    row per released cohort with users, the three means and a 95% half-width for each.
    """
    mechs = mechanisms(policy)
    mech = mechanism or mechs["cohort_metrics"]
    hi = policy.session_duration_s[1]
    unit = {"mean_duration_s": hi, "converted": 1.0, "sessions": float(policy.max_sessions)}
    scaled = profiles.assign(released=_released_cohort(profiles, plan))
    for col in METRIC_COLUMNS:
        scaled[col] = scaled[col] / unit[col] - 0.5
    sums = (
        scaled.groupby("released")[list(METRIC_COLUMNS)]
        .sum()
        .reindex(plan["cohort_key"], fill_value=0.0)
    )
    noisy = mech(sums.to_numpy().ravel()).reshape(sums.shape)
    n, n_std = _denominators(plan, mechs["cohort_sizes"])
    out = pd.DataFrame(
        {"cohort_key": plan["cohort_key"].to_numpy(), "users": plan["noisy_users"].to_numpy()}
    )
    bounds = {
        "mean_duration_s": policy.session_duration_s,
        "converted": (0.0, 1.0),
        "sessions": (0.0, float(policy.max_sessions)),
    }
    names = {
        "mean_duration_s": "mean_session_duration_s",
        "converted": "conversion_rate",
        "sessions": "sessions_per_user",
    }
    for j, col in enumerate(METRIC_COLUMNS):
        centred = noisy[:, j] / n  # the noisy count's error scales with the centred mean
        value = np.clip((centred + 0.5) * unit[col], *bounds[col])
        acc = [
            unit[col] * ratio_accuracy95(c, mech.std, d, s)
            for c, d, s in zip(centred, n, n_std, strict=True)
        ]
        out[names[col]] = value
        out[f"{names[col]}_accuracy_95"] = acc
    out["noise_scale"] = mech.scale
    return out


def release_cohort_affinity(
    user_categories: pd.DataFrame,
    assignments: pd.DataFrame,
    plan: pd.DataFrame,
    categories: list[str],
    policy: Policy,
    mechanism: Mechanism | None = None,
) -> pd.DataFrame:
    """DP category engagement per released cohort x category of the public catalog.

    In: `user_categories` (user_id, category, value) with each user's vector of L2 norm at
    most `bounds.category_l2_norm`. Consumes the `cohort_category_affinity` share (Gaussian,
    L2 sensitivity category_l2_norm). Out: cohort_key, category, noisy_sum, affinity (noisy
    mean per user, clamped at 0), share (affinity normalised within the cohort), accuracy_95.
    """
    mech = mechanism or mechanisms(policy)["cohort_category_affinity"]
    cohort = assignments.set_index("user_id")["cohort_key"].map(plan_map(plan))
    frame = user_categories.assign(released=user_categories["user_id"].map(cohort))
    sums = (
        frame.groupby(["released", "category"])["value"]
        .sum()
        .unstack(fill_value=0.0)
        .reindex(index=plan["cohort_key"], columns=categories, fill_value=0.0)
    )
    noisy = mech(sums.to_numpy().ravel()).reshape(sums.shape)
    n = np.maximum(plan["noisy_users"].to_numpy(dtype=float), 1.0)[:, None]
    affinity = np.maximum(noisy, 0.0) / n
    totals = affinity.sum(axis=1, keepdims=True)
    share = np.divide(
        affinity, totals, out=np.full_like(affinity, 1.0 / len(categories)), where=totals > 0
    )
    out = pd.DataFrame(
        {
            "cohort_key": np.repeat(plan["cohort_key"].to_numpy(), len(categories)),
            "category": np.tile(categories, len(plan)),
            "noisy_sum": noisy.ravel(),
            "affinity": affinity.ravel(),
            "share": share.ravel(),
        }
    )
    out["accuracy_95"] = mech.accuracy95 / np.repeat(n.ravel(), len(categories))
    out["noise_scale"] = mech.scale
    return out


def release_item_popularity(
    user_items: pd.DataFrame,
    catalog: pd.DataFrame,
    policy: Policy,
    mechanism: Mechanism | None = None,
) -> pd.DataFrame:
    """DP global item popularity over the public catalog.

    In: `user_items` (user_id, item_id, value), each user's vector of L2 norm at most
    `bounds.item_l2_norm`. Consumes the `cohort_recommendations` share (Gaussian). Out:
    catalog rows with noisy_popularity and within-category share (clamped at 0).
    """
    mech = mechanism or mechanisms(policy)["cohort_recommendations"]
    sums = user_items.groupby("item_id")["value"].sum().reindex(catalog["item_id"], fill_value=0.0)
    out = catalog[["item_id", "category"]].reset_index(drop=True).copy()
    out["noisy_popularity"] = mech(sums.to_numpy())
    clamped = out["noisy_popularity"].clip(lower=0.0)
    totals = clamped.groupby(out["category"]).transform("sum")
    out["category_share"] = np.where(totals > 0, clamped / totals.where(totals > 0, 1.0), 0.0)
    return out


def budget_cap(policy: Policy) -> BudgetCap:
    return BudgetCap(policy.epsilon_cap, policy.window_days, policy.delta, policy.composition)


def planned_measurements(policy: Policy) -> list[Measurement]:
    """The ledger rows one release reserves, before any noise is drawn."""
    return [
        Measurement(asset, m.name, m.spend, m.sensitivity, m.scale)
        for asset, m in mechanisms(policy).items()
    ]
