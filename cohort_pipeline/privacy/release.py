"""The DP release functions: pandas in, pandas out, no Dagster.

Each takes the exact per-key sums of a bounded table and the calibrated mechanism of its
measurement (privacy/measurements.py holds the registry: norms, sensitivities, budget shares
and `mechanisms(policy)`). Everything after the noise (coarsening, ratios, clamping, shares)
is post-processing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cohort_pipeline.policy import ALL, Policy
from cohort_pipeline.privacy.ledger import BudgetCap
from cohort_pipeline.privacy.mechanisms import Mechanism, ratio_accuracy95

METRIC_COLUMNS = ("mean_duration_s", "converted", "sessions")  # per-user, bounded in bounding.py
# Each per-user value is scaled to [0, 1] and centred (minus 1/2): a user then moves each
# cohort sum by at most 1/2, which halves the noise against uncentred sums.
METRICS_SENSITIVITY = 0.5 * math.sqrt(len(METRIC_COLUMNS))
# experiments.readout_vectors: per user, 9 values each in [-1, 1] (7 overall, 2 in one cohort).
EXPERIMENT_SENSITIVITY = 3.0


def exact_cohort_counts(totals: pd.DataFrame, policy: Policy) -> pd.Series:
    """Users per cohort over the public key set (0 for empty cohorts), in key order, from
    `cohort_totals` (cohort_key, users). Private.

    Every release function sums its input's rows per key, so per-user rows (users = 1) are
    valid input as well as the per-key sums user_profiles stores."""
    counts = totals.groupby("cohort_key")["users"].sum()
    unknown = set(counts.index) - set(policy.cohort_keys())
    if unknown:
        raise ValueError(
            f"totals hold cohort keys outside the policy's key set: {sorted(unknown)[:3]}"
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
    totals: pd.DataFrame, policy: Policy, mechanism: Mechanism
) -> pd.DataFrame:
    """DP user counts per released cohort, and the coarsening plan.

    In: `cohort_totals` (cohort_key, users: exact users per full key). Consumes the
    `cohort_sizes` share of the budget (Laplace, L1 sensitivity 1). Out: one row per released
    cohort: cohort_key, one column per dimension ('*' where coarsened), members (the full
    keys merged into it, ';'-separated), noisy_users, noise_scale, accuracy_95 (half-width
    covering the exact size with probability ~95%). Every full key is in exactly one row.
    """
    noisy = pd.Series(
        mechanism(exact_cohort_counts(totals, policy).to_numpy()), index=policy.cohort_keys()
    )
    rows = []
    for key, members, n in coarsen(noisy, policy):
        labels = dict(zip((d.name for d in policy.dimensions), key.split("|"), strict=True))
        # A sum of m Laplace draws: exact quantile for m = 1, normal approximation beyond.
        acc = (
            mechanism.accuracy95
            if len(members) == 1
            else 1.959964 * mechanism.std * math.sqrt(len(members))
        )
        rows.append(
            {
                "cohort_key": key,
                **labels,
                "members": ";".join(members),
                "noisy_users": n,
                "noise_scale": mechanism.scale,
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
    totals: pd.DataFrame,
    plan: pd.DataFrame,
    policy: Policy,
    mechanism: Mechanism,
    sizes_mechanism: Mechanism,
) -> pd.DataFrame:
    """DP mean session duration, conversion rate and sessions per user per released cohort.

    In: `cohort_totals` (cohort_key, users and the sums of the bounded per-user values of
    bounding.user_profiles_sql, per full key) and the plan from release_cohort_sizes (its
    noisy_users are the denominators, their noise that of `sizes_mechanism`: no
    extra budget). Consumes the `cohort_metrics` share
    on the per-cohort sums of mean_duration_s/hi, converted and sessions/max_sessions, each
    minus 1/2 per user (L2 sensitivity sqrt(3)/2, L1 3/2). Out: one row per released cohort
    with users, the three means and a 95% half-width for each.
    """
    hi = policy.session_duration_s[1]
    unit = {"mean_duration_s": hi, "converted": 1.0, "sessions": float(policy.max_sessions)}
    summed = (
        totals.assign(released=_released_cohort(totals, plan))
        .groupby("released")[["users", *METRIC_COLUMNS]]
        .sum()
        .reindex(plan["cohort_key"], fill_value=0.0)
    )
    # sum over users of (x / unit - 1/2), from the per-key sums of x and the user count.
    sums = pd.DataFrame(
        {col: summed[col] / unit[col] - 0.5 * summed["users"] for col in METRIC_COLUMNS}
    )
    noisy = mechanism(sums.to_numpy().ravel()).reshape(sums.shape)
    n, n_std = _denominators(plan, sizes_mechanism)
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
            unit[col] * ratio_accuracy95(c, mechanism.std, d, s)
            for c, d, s in zip(centred, n, n_std, strict=True)
        ]
        out[names[col]] = value
        out[f"{names[col]}_accuracy_95"] = acc
    out["noise_scale"] = mechanism.scale
    return out


def release_cohort_affinity(
    totals: pd.DataFrame,
    plan: pd.DataFrame,
    categories: list[str],
    policy: Policy,
    mechanism: Mechanism,
) -> pd.DataFrame:
    """DP category engagement per released cohort x category of the public catalog.

    In: `cohort_category_totals` (cohort_key, category, value): per full key, the sum of the
    users' category vectors, each of L2 norm at most `bounds.category_l2_norm`. Consumes the
    `cohort_category_affinity` share (Gaussian, L2 sensitivity category_l2_norm). Out:
    cohort_key, category, noisy_sum, affinity (noisy mean per user, clamped at 0), share
    (affinity normalised within the cohort), accuracy_95.
    """
    sums = (
        totals.assign(released=_released_cohort(totals, plan))
        .groupby(["released", "category"])["value"]
        .sum()
        .unstack(fill_value=0.0)
        .reindex(index=plan["cohort_key"], columns=categories, fill_value=0.0)
    )
    noisy = mechanism(sums.to_numpy().ravel()).reshape(sums.shape)
    n = np.maximum(plan["noisy_users"].to_numpy(dtype=float), 1.0)[:, None]
    affinity = np.maximum(noisy, 0.0) / n
    per_cohort = affinity.sum(axis=1, keepdims=True)
    share = np.divide(
        affinity,
        per_cohort,
        out=np.full_like(affinity, 1.0 / len(categories)),
        where=per_cohort > 0,
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
    out["accuracy_95"] = mechanism.accuracy95 / np.repeat(n.ravel(), len(categories))
    out["noise_scale"] = mechanism.scale
    return out


def release_item_popularity(
    totals: pd.DataFrame,
    catalog: pd.DataFrame,
    policy: Policy,
    mechanism: Mechanism,
) -> pd.DataFrame:
    """DP global item popularity over the public catalog.

    In: `item_totals` (item_id, value): per item, the sum of the users' item vectors, each of
    L2 norm at most `bounds.item_l2_norm`. Consumes the `item_popularity` share (Gaussian). Out: catalog rows with noisy_popularity and within-category share (clamped at 0).
    """
    sums = totals.groupby("item_id")["value"].sum().reindex(catalog["item_id"], fill_value=0.0)
    out = catalog[["item_id", "category"]].reset_index(drop=True).copy()
    out["noisy_popularity"] = mechanism(sums.to_numpy())
    clamped = out["noisy_popularity"].clip(lower=0.0)
    totals = clamped.groupby(out["category"]).transform("sum")
    out["category_share"] = np.where(totals > 0, clamped / totals.where(totals > 0, 1.0), 0.0)
    return out


def budget_cap(policy: Policy) -> BudgetCap:
    return BudgetCap(
        policy.epsilon_cap,
        policy.window_days,
        policy.delta,
        policy.composition,
        epsilon_horizon_cap=policy.epsilon_horizon_cap,
        horizon_days=policy.horizon_days,
        lookback_days=policy.lookback_days,
        delta_cap=policy.delta_cap,
    )
