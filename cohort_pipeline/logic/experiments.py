"""Offline experiments: rankings of one release evaluated on the users' next window (no Dagster).

Temporal split: the ranking released for `ranking_date = D - EVAL_DAYS` was built from events
up to ranking_date only; it is evaluated on each user's events in (ranking_date, D]. A user
is evaluated when they were assigned a cohort in that earlier release and have at least one
event in the evaluation window; their relevant items are the distinct items they touched.

Arms: `cohort` (the released cohort_recommendations), `popularity` (the top items of the
DP global popularity of the same release, i.e. same window and budget) and, for tests and
benchmarks only, `cohort_no_noise` (the same cohort method on exact values).

Per-user metrics are in [0, 1]:
- HR@10: 1 if any of the top 10 is relevant;
- NDCG@10: DCG of the top 10 over the ideal DCG of min(|relevant|, 10) hits;
- Recall@20: hits in the top 20 over min(|relevant|, 20), so a perfect list scores 1.

DP readouts (`release_readouts`): per user, 9 values each in [-1, 1] are summed (a count,
the cohort arm's three metrics, the cohort-minus-popularity differences of the three, and
the NDCG@10 value and difference in the user's own cohort), and one Gaussian measurement
with L2 sensitivity 3 noises all sums at once. Means, uplifts and their 95% intervals are
post-processing of those sums. The intervals cover DP noise plus sampling error, the latter
bounded by the noisy sums themselves (for x in [0,1], sum((x - mean)^2) <= sum(x)), since a
bootstrap over private users would itself be an unprotected release. Bootstrap intervals
over users (`bootstrap_ci`) are for the non-private analysis in tests and benchmarks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from cohort_pipeline.logic.ranking import ranking_weights, recommendations
from cohort_pipeline.policy import MAX_EPSILON_PER_RELEASE, Policy
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.mechanisms import Mechanism
from cohort_pipeline.privacy.release import (
    EXPERIMENT_SENSITIVITY,
    plan_map,
    release_cohort_affinity,
    release_cohort_sizes,
    release_item_popularity,
)

EVAL_DAYS = 7  # the ranking of D - 7 is evaluated on the events of (D - 7, D]
METRICS = ("hr_at_10", "ndcg_at_10", "recall_at_20")
HEADLINE = "ndcg_at_10"  # the metric of per-cohort uplift
ARMS = ("cohort", "popularity")
REFERENCE_ARM = "cohort_no_noise"  # tests and benchmarks only: never released
UPLIFT_ARM = "cohort_vs_popularity"
OVERALL = "*"  # cohort_key of figures over all evaluated users
_Z95 = 1.959963984540054
# The range of each released figure (post-processing clamps estimates and intervals to it):
# per-user metrics are in [0, 1], so are their means; a difference of means is in [-1, 1];
# a relative uplift (cohort / popularity - 1) is at least -1.
MEAN_RANGE, DIFFERENCE_RANGE, UPLIFT_RANGE = (0.0, 1.0), (-1.0, 1.0), (-1.0, math.inf)
# The effect a readout has to detect is the difference of mean NDCG@10 it reports (cohort
# minus popularity), and at least 0.01 (about a 5-10% relative uplift at the NDCG@10 of
# 0.1-0.2 usual for top-10 lists). A readout whose 95% half-width on that difference exceeds
# the effect is inconclusive: it cannot tell the reported uplift from none, nor rule out one
# of 0.01.
MIN_EFFECT = 0.01


def ranking_date(release_date: date) -> date:
    """The release whose ranking the report of `release_date` evaluates."""
    return release_date - timedelta(days=EVAL_DAYS)


def next_experiment_date(release_date: date, ranking_releases) -> date:
    """The first date from `release_date` on whose report has a ranking to evaluate:
    `EVAL_DAYS` after a release of cohort_recommendations (`ranking_releases`), counting
    `release_date`'s own ranking, which its run releases before the report."""
    due = [d + timedelta(days=EVAL_DAYS) for d in ranking_releases]
    return min([d for d in due if d >= release_date] or [release_date + timedelta(days=EVAL_DAYS)])


def no_experiment_reason(release_date: date, ranking_releases) -> str:
    """Why `release_date` has no experiment readout and when one will exist: the report of
    D evaluates the ranking released on D - EVAL_DAYS (public release dates only)."""
    ranked = ranking_date(release_date)
    due = next_experiment_date(release_date, [*ranking_releases, release_date])
    return (
        f"no experiment for {release_date}: its report evaluates the ranking released on "
        f"{ranked} ({EVAL_DAYS} days earlier), and {ranked} has no release of "
        f"cohort_recommendations. The next report with a ranking to evaluate is due on {due}; "
        f"release {ranked} to have one for {release_date}."
    )


# -- per-user metrics (private) ------------------------------------------------------------


def relevant_items(events: pd.DataFrame, after: date, through: date) -> pd.DataFrame:
    """Distinct (user_id, item_id) touched in (after, through] (UTC days)."""
    day = pd.to_datetime(events["event_time"], utc=True).dt.date
    window = events[(day > after) & (day <= through)]
    return window[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)


def evaluated_users(relevant: pd.DataFrame, assignments: pd.DataFrame) -> pd.DataFrame:
    """Users with a cohort in the ranking's release and an event in the evaluation window:
    user_id, cohort_key (the full key)."""
    active = relevant["user_id"].drop_duplicates()
    return assignments[assignments["user_id"].isin(active)][["user_id", "cohort_key"]].reset_index(
        drop=True
    )


def popularity_lists(popularity: pd.DataFrame, list_keys, top_n: int) -> pd.DataFrame:
    """The global top-N by noisy popularity, served under every list key: cohort_key, rank,
    item_id."""
    top = popularity.sort_values(["noisy_popularity", "item_id"], ascending=[False, True]).head(
        top_n
    )
    return pd.DataFrame(
        {
            "cohort_key": np.repeat(list(list_keys), len(top)),
            "rank": np.tile(np.arange(1, len(top) + 1), len(list_keys)),
            "item_id": np.tile(top["item_id"].to_numpy(), len(list_keys)),
        }
    )


def _ideal_dcg(n_relevant: np.ndarray, k: int) -> np.ndarray:
    gains = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    return gains[np.minimum(n_relevant, k) - 1]


def arm_metrics(relevant: pd.DataFrame, list_key: pd.Series, lists: pd.DataFrame) -> pd.DataFrame:
    """Per-user HR@10, NDCG@10 and Recall@20 of one arm, indexed by user_id.

    `list_key` maps user_id -> the key of the list the user is served; `lists` holds
    (cohort_key, rank, item_id). Users whose key has no list score 0."""
    users = list_key.index
    rel = relevant[relevant["user_id"].isin(users)]
    n_rel = rel.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
    served = rel.assign(cohort_key=rel["user_id"].map(list_key))
    hits = served.merge(lists[["cohort_key", "item_id", "rank"]], on=["cohort_key", "item_id"])
    hits = hits.assign(
        h10=hits["rank"] <= 10,
        h20=hits["rank"] <= 20,
        dcg=np.where(hits["rank"] <= 10, 1.0 / np.log2(hits["rank"] + 1.0), 0.0),
    )
    per = hits.groupby("user_id")[["h10", "h20", "dcg"]].sum().reindex(users, fill_value=0)
    n = np.maximum(n_rel, 1)
    return pd.DataFrame(
        {
            "hr_at_10": (per["h10"].to_numpy() > 0).astype(float),
            "ndcg_at_10": per["dcg"].to_numpy() / _ideal_dcg(n, 10),
            "recall_at_20": per["h20"].to_numpy() / np.minimum(n, 20),
        },
        index=users,
    )


def per_user_metrics(
    relevant: pd.DataFrame, users: pd.DataFrame, arms: dict[str, tuple[dict, pd.DataFrame]]
) -> pd.DataFrame:
    """One row per evaluated user: user_id, cohort_key and `<arm>_<metric>` for each arm.

    `arms` maps an arm name to (full cohort key -> list key, lists). `cohort_key` in the
    result is the user's key in the first arm (the released cohort of the DP ranking)."""
    out = users[["user_id"]].copy()
    for i, (arm, (key_map, lists)) in enumerate(arms.items()):
        keys = users["cohort_key"].map(key_map)
        keys.index = users["user_id"]
        if i == 0:
            out["cohort_key"] = keys.to_numpy()
        scores = arm_metrics(relevant, keys, lists)
        for metric in METRICS:
            out[f"{arm}_{metric}"] = scores[metric].to_numpy()
    return out.reset_index(drop=True)


# -- DP readouts ---------------------------------------------------------------------------


def readout_layout(cohort_keys) -> list[tuple[str, str]]:
    """(cohort_key, quantity) of each coordinate of the readout vector."""
    overall = [(OVERALL, "users")]
    overall += [(OVERALL, f"cohort_{m}") for m in METRICS]
    overall += [(OVERALL, f"diff_{m}") for m in METRICS]
    own = [(k, q) for k in cohort_keys for q in (f"cohort_{HEADLINE}", f"diff_{HEADLINE}")]
    return overall + own


def user_readouts(per_user: pd.DataFrame, cohort_keys) -> np.ndarray:
    """Each user's readout vector (one row per user, columns as readout_layout).

    A user has 7 overall values and 2 in their own cohort's columns, each in [-1, 1] given
    metrics in [0, 1]: L2 norm <= 3 = EXPERIMENT_SENSITIVITY, so adding or removing one user
    moves the summed vector by at most 3 in L2."""
    keys = list(cohort_keys)
    rows = np.zeros((len(per_user), len(readout_layout(keys))))
    rows[:, 0] = 1.0
    for j, m in enumerate(METRICS):
        cohort, pop = per_user[f"cohort_{m}"].to_numpy(), per_user[f"popularity_{m}"].to_numpy()
        rows[:, 1 + j] = cohort
        rows[:, 1 + len(METRICS) + j] = cohort - pop
    position = per_user["cohort_key"].map({k: i for i, k in enumerate(keys)})
    if position.isna().any():
        raise ValueError("per-user rows hold cohort keys outside the released cohorts")
    col = 1 + 2 * len(METRICS) + 2 * position.to_numpy(dtype=int)
    idx = np.arange(len(per_user))
    rows[idx, col] = per_user[f"cohort_{HEADLINE}"].to_numpy()
    rows[idx, col + 1] = (
        per_user[f"cohort_{HEADLINE}"] - per_user[f"popularity_{HEADLINE}"]
    ).to_numpy()
    return rows


def release_readouts(
    per_user: pd.DataFrame, cohort_keys, mechanism: Mechanism
) -> tuple[pd.DataFrame, float]:
    """The DP figures of one experiment: rows (arm, metric, cohort_key, value, ci_low,
    ci_high) and the noisy number of evaluated users. Consumes `mechanism` once (the
    `experiment_report` share: Gaussian, L2 sensitivity EXPERIMENT_SENSITIVITY)."""
    if mechanism.sensitivity < EXPERIMENT_SENSITIVITY:
        raise ValueError(
            f"experiment readouts need L2 sensitivity {EXPERIMENT_SENSITIVITY}, the mechanism "
            f"is calibrated for {mechanism.sensitivity}"
        )
    keys = list(cohort_keys)
    sums = user_readouts(per_user, keys).sum(axis=0)
    noisy = dict(zip(readout_layout(keys), mechanism(sums), strict=True))
    return readouts_from_sums(noisy, keys, mechanism.std), noisy[(OVERALL, "users")]


def readouts_from_sums(noisy: dict, cohort_keys, noise_std: float) -> pd.DataFrame:
    """Post-processing of the noisy sums into means, uplifts and 95% intervals."""
    n = max(noisy[(OVERALL, "users")], 1.0)
    var = noise_std**2
    rows = []

    def add(arm, metric, key, value, half, scale, bounds):
        # Clamped to the quantity's range (a mean of values in [0, 1] is in [0, 1]): on
        # small data the noise alone leaves it, e.g. NDCG@10 = -3 from 21 noisy users.
        value, lo, hi = np.clip([value / scale, (value - half) / scale, (value + half) / scale],
                                *bounds)  # fmt: skip
        rows.append((arm, metric, key, float(value), float(lo), float(hi)))

    for m in METRICS:
        cohort = noisy[(OVERALL, f"cohort_{m}")]
        diff = noisy[(OVERALL, f"diff_{m}")]
        pop = cohort - diff  # noise variance 2 var: two independent coordinates
        add("cohort", m, OVERALL, cohort, _Z95 * math.sqrt(var + max(cohort, 0.0)), n, MEAN_RANGE)
        add("popularity", m, OVERALL, pop, _Z95 * math.sqrt(2 * var + max(pop, 0.0)), n,
            MEAN_RANGE)  # fmt: skip
        diff_half = _Z95 * math.sqrt(var + max(cohort + pop, 0.0))
        add(UPLIFT_ARM, f"{m}_difference", OVERALL, diff, diff_half, n, DIFFERENCE_RANGE)
        _add_relative(rows, m, OVERALL, diff, diff_half, pop, noise_std)
    for key in cohort_keys:
        cohort = noisy[(key, f"cohort_{HEADLINE}")]
        diff = noisy[(key, f"diff_{HEADLINE}")]
        pop = cohort - diff
        half = _Z95 * math.sqrt(var + max(cohort + pop, 0.0))
        _add_relative(rows, HEADLINE, key, diff, half, pop, noise_std)
    return pd.DataFrame(rows, columns=["arm", "metric", "cohort_key", "value", "ci_low", "ci_high"])


def _add_relative(rows, metric, key, diff, half, pop, noise_std):
    # Relative uplift (cohort / popularity - 1); its interval is the difference's interval
    # over the popularity sum. Below two noise SDs that sum is no denominator: no value.
    if pop > 2 * noise_std * math.sqrt(2):
        value, lo, hi = np.clip([diff / pop, (diff - half) / pop, (diff + half) / pop],
                                *UPLIFT_RANGE)  # fmt: skip
        rows.append((UPLIFT_ARM, f"{metric}_uplift", key, float(value), float(lo), float(hi)))
    else:
        rows.append((UPLIFT_ARM, f"{metric}_uplift", key, math.nan, math.nan, math.nan))


# -- public figures (post-processing of releases) ------------------------------------------


@dataclass(frozen=True)
class Readability:
    """Whether a released readout can tell `effect` from no effect, and what would let it.
    Post-processing of released figures and the public policy only."""

    inconclusive: bool
    half_width: float  # 95% half-width of the headline difference of means, per user
    effect: float  # the difference it has to detect: |reported difference|, >= min_effect
    evaluated_users: float  # noisy
    users_needed: float  # evaluated users that make half_width <= effect at this epsilon
    # budget.epsilon_per_release (same split) that makes it at these users; inf when no
    # epsilon the policy allows can (sampling error alone is wider than the effect).
    epsilon_needed: float

    def message(self) -> str:
        verdict = "inconclusive" if self.inconclusive else "readable"
        eps = (
            f"or with budget.epsilon_per_release >= {self.epsilon_needed:.3g} at this many users"
            if math.isfinite(self.epsilon_needed)
            else "(no epsilon the policy allows does it at this many users: sampling error "
            "alone is wider)"
        )
        return (
            f"{verdict}: the 95% interval of the {HEADLINE} difference is +/- "
            f"{self.half_width:.3g} for an effect of {self.effect:g}, from ~"
            f"{self.evaluated_users:.0f} evaluated users (a noisy count); readable from ~"
            f"{math.ceil(self.users_needed):,} evaluated users at this budget {eps}"
        )


def readability(
    results: pd.DataFrame, policy: Policy, min_effect: float = MIN_EFFECT
) -> Readability:
    """Readability of one release's experiment figures (release.experiment_results rows of a
    date: arm, metric, cohort_key, value, noisy_evaluated_users, noise_std). The effect is
    the reported NDCG@10 difference of means, or `min_effect` if that is smaller.

    The half-width is the one readouts_from_sums gives the headline difference, as a
    function of the evaluated users n and the noise std sigma: z sqrt(sigma^2 + n s) / n,
    where s is the sum of both arms' mean NDCG@10 (its sampling-variance bound). Solving
    half-width = effect for n gives the users needed; for sigma, the largest noise allowed,
    whose epsilon is found on the policy's own calibration (mechanisms)."""

    def overall(arm: str, metric: str, bounds: tuple[float, float]) -> float:
        hit = results[(results.arm == arm) & (results.metric == metric)
                      & (results.cohort_key == OVERALL)]  # fmt: skip
        return float(np.clip(hit["value"].iloc[0], *bounds))

    n = max(float(results["noisy_evaluated_users"].iloc[0]), 1.0)
    sigma = float(results["noise_std"].iloc[0])
    s = overall("cohort", HEADLINE, MEAN_RANGE) + overall("popularity", HEADLINE, MEAN_RANGE)
    difference = overall(UPLIFT_ARM, f"{HEADLINE}_difference", DIFFERENCE_RANGE)
    effect = max(abs(difference), min_effect)
    half = _Z95 * math.sqrt(sigma**2 + n * s) / n
    z2 = _Z95**2
    users = (z2 * s + math.sqrt(z2 * z2 * s * s + 4 * effect**2 * z2 * sigma**2)) / (2 * effect**2)
    return Readability(
        half > effect,
        half,
        effect,
        n,
        users,
        _epsilon_for_std(policy, (effect * n) ** 2 / z2 - n * s),
    )


def _epsilon_for_std(policy: Policy, max_variance: float) -> float:
    """The smallest epsilon_per_release whose experiment_report noise has variance at most
    `max_variance` (inf if none up to MAX_EPSILON_PER_RELEASE); by bisection on the real calibration."""

    def variance(epsilon: float) -> float:
        return (
            mechanisms(replace(policy, epsilon_per_release=epsilon))["experiment_report"].std ** 2
        )

    if max_variance <= 0 or variance(MAX_EPSILON_PER_RELEASE) > max_variance:
        return math.inf
    lo, hi = 0.0, MAX_EPSILON_PER_RELEASE
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if variance(mid) <= max_variance else (mid, hi)
    return hi


def catalog_coverage(lists: pd.DataFrame, catalog_size: int, k: int = 10) -> float:
    """Share of the catalog that appears in some served top-k list."""
    return lists.loc[lists["rank"] <= k, "item_id"].nunique() / max(catalog_size, 1)


def mean_weight_change(weights: pd.DataFrame, previous: pd.DataFrame) -> float:
    """Mean |weight - previous weight| over cohort x category keys in both releases."""
    both = weights.merge(previous, on=["cohort_key", "category"], suffixes=("", "_prev"))
    return float((both["weight"] - both["weight_prev"]).abs().mean()) if len(both) else math.nan


# -- non-private analysis: tests and benchmarks only ---------------------------------------


def bootstrap_ci(
    per_user: pd.DataFrame,
    arm: str,
    baseline: str | None = None,
    metric: str = HEADLINE,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of an arm's mean `metric`, or of its relative uplift over
    `baseline` (mean(arm) / mean(baseline) - 1), by resampling users with replacement.
    Reads exact per-user values: never on a release path."""
    a = per_user[f"{arm}_{metric}"].to_numpy()
    b = per_user[f"{baseline}_{metric}"].to_numpy() if baseline else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))

    def stat(x, y):
        return x.mean(axis=-1) if y is None else x.mean(axis=-1) / y.mean(axis=-1) - 1.0

    boots = stat(a[idx], None if b is None else b[idx])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(stat(a, b)), float(lo), float(hi)


class _NoNoise:
    """Identity 'mechanism' for the no-noise reference arm. Never on a release path."""

    name, sensitivity, scale, std, accuracy95 = "none", math.inf, 0.0, 0.0, 0.0

    def __call__(self, values) -> np.ndarray:
        return np.asarray(values, dtype=float)


@dataclass(frozen=True)
class RankingInputs:
    """The private per-key sums of one release (as in the warehouse) and the catalog."""

    cohort_totals: pd.DataFrame  # cohort_key, users, ...
    category_totals: pd.DataFrame  # cohort_key, category, value
    item_totals: pd.DataFrame  # item_id, value
    catalog: pd.DataFrame  # item_id, category


@dataclass(frozen=True)
class Ranking:
    plan: pd.DataFrame  # released cohorts (cohort_key, members, noisy_users, ...)
    recommendations: pd.DataFrame  # cohort_key, rank, item_id, category, score
    popularity: pd.DataFrame  # item_id, category, noisy_popularity, category_share


def replay_ranking(
    inputs: RankingInputs, policy: Policy, noise: bool = True, mechs: Mapping | None = None
) -> Ranking:
    """The release's cohort method (sizes, affinity, weights without a previous release,
    popularity, top-N) at `policy`'s budget, or on exact values with noise=False, or with
    `mechs` in place of the policy's mechanisms (benchmarks/year.py: noise summed over
    several releases).

    Tests and benchmarks only: it draws noise without the ledger, so nothing it returns
    may be stored as a release."""
    if mechs is None:
        mechs = mechanisms(policy) if noise else defaultdict(_NoNoise)
    plan = release_cohort_sizes(inputs.cohort_totals, policy, mechs["cohort_sizes"])
    categories = sorted(inputs.catalog["category"].unique())
    affinity = release_cohort_affinity(
        inputs.category_totals, plan, categories, policy, mechs["cohort_category_affinity"]
    )
    weights = ranking_weights(affinity, plan, None, policy)
    popularity = release_item_popularity(
        inputs.item_totals, inputs.catalog, policy, mechs["item_popularity"]
    )
    return Ranking(plan, recommendations(weights, popularity, policy.top_n), popularity)


def arms_of(ranking: Ranking, top_n: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(full key -> released key, cohort lists, popularity lists) of one ranking."""
    key_map = plan_map(ranking.plan)
    return (
        key_map,
        ranking.recommendations,
        popularity_lists(ranking.popularity, ranking.plan["cohort_key"], top_n),
    )


# -- the report ----------------------------------------------------------------------------


def experiment_results(
    relevant: pd.DataFrame,
    assignments: pd.DataFrame,
    plan: pd.DataFrame,
    cohort_lists: pd.DataFrame,
    popularity: pd.DataFrame,
    top_n: int,
    catalog_size: int,
    mechanism: Mechanism,
) -> tuple[pd.DataFrame, float]:
    """The released figures of one experiment and the noisy number of evaluated users.

    In: the evaluation window's relevant items and the ranking release's private
    assignments (both private), its plan, cohort lists and popularity (released). DP
    readouts consume `mechanism` once; coverage is post-processing of released lists."""
    key_map = plan_map(plan)
    pop_lists = popularity_lists(popularity, plan["cohort_key"], top_n)
    users = evaluated_users(relevant, assignments)
    per_user = per_user_metrics(
        relevant, users, {"cohort": (key_map, cohort_lists), "popularity": (key_map, pop_lists)}
    )
    rows, noisy_users = release_readouts(per_user, plan["cohort_key"], mechanism)
    coverage = pd.DataFrame(
        [(arm, "catalog_coverage", OVERALL, catalog_coverage(lists, catalog_size))
         for arm, lists in (("cohort", cohort_lists), ("popularity", pop_lists))],
        columns=["arm", "metric", "cohort_key", "value"],
    )  # fmt: skip
    coverage["ci_low"] = coverage["ci_high"] = coverage["value"]  # exact: public lists
    return pd.concat([rows, coverage], ignore_index=True), noisy_users


def stability_rows(weight_change: float, uplift: float, previous_uplift: float) -> pd.DataFrame:
    """Change of the evaluated ranking's weights versus the release before it, and of the
    NDCG@10 uplift versus the previous report (post-processing; NaN when there is none)."""
    return pd.DataFrame(
        [("cohort", "weight_mean_abs_change", OVERALL, weight_change),
         (UPLIFT_ARM, f"{HEADLINE}_uplift_change", OVERALL, uplift - previous_uplift)],
        columns=["arm", "metric", "cohort_key", "value"],
    ).assign(ci_low=math.nan, ci_high=math.nan)  # fmt: skip


def report_markdown(results: pd.DataFrame) -> str:
    """The released figures as Markdown: arms, uplift, per-cohort uplift, stability, noise."""

    def fmt(row, pct=False):
        if pd.isna(row.value):  # uplift: denominator within noise; stability: no earlier figure
            return "n/a"
        f = (lambda v: f"{100 * v:+.1f}%") if pct else (lambda v: f"{v:.4f}")
        exact = pd.isna(row.ci_low) or row.ci_low == row.ci_high
        return f(row.value) if exact else f"{f(row.value)} [{f(row.ci_low)}, {f(row.ci_high)}]"

    def cell(arm, metric, key=OVERALL, pct=False):
        hit = results[
            (results.arm == arm) & (results.metric == metric) & (results.cohort_key == key)
        ]
        return fmt(hit.iloc[0], pct) if len(hit) else "n/a"

    lines = ["| arm | " + " | ".join(METRICS) + " | catalog_coverage |", "|---" * 5 + "|"]
    for arm in ARMS:
        cells = [cell(arm, m) for m in (*METRICS, "catalog_coverage")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| cohort vs popularity | difference of means | relative uplift |",
        "|---|---|---|",
    ]
    for m in METRICS:
        lines.append(f"| {m} | {cell(UPLIFT_ARM, f'{m}_difference')} | "
                     f"{cell(UPLIFT_ARM, f'{m}_uplift', pct=True)} |")  # fmt: skip
    keys = [k for k in results["cohort_key"].unique() if k != OVERALL]
    lines += ["", f"| cohort | {HEADLINE} uplift (n/a: too noisy) |", "|---|---|"]
    # Cohort keys join labels with '|', which would split a Markdown table cell.
    escaped = {k: k.replace("|", "\\|") for k in keys}
    lines += [
        f"| {escaped[k]} | {cell(UPLIFT_ARM, f'{HEADLINE}_uplift', k, pct=True)} |" for k in keys
    ]
    first = results.iloc[0]
    lines += [
        "",
        f"Stability: mean |weight change| vs the release before the ranking "
        f"{cell('cohort', 'weight_mean_abs_change')}; change of the {HEADLINE} uplift vs the "
        f"previous report {cell(UPLIFT_ARM, f'{HEADLINE}_uplift_change', pct=True)}.",
        "",
        f"Means over ~{first.noisy_evaluated_users:.0f} evaluated users (a noisy count). Every "
        f"figure is a DP readout: Gaussian noise of std {first.noise_std:.4g} on each summed "
        "per-user value; intervals are 95% and cover that noise and sampling error. Coverage is "
        "computed from the released lists (no noise).",
    ]
    return "\n".join(lines)
