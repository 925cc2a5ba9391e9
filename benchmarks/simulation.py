"""Long-term simulation of ranking arms on synthetic users (synthetic data only, no releases).

Each simulated user belongs to a cohort and has planted category preferences (a population
base, a cohort offset and a personal offset). Every simulated day a retained user visits
with probability `visit_p`, sees their arm's top-N, and engages with each item with a
probability rising with its relevance to them. A user whose engagement stays low (an
exponential moving average per visit below `churn_below`) churns with probability `churn_p`
after each visit, for good.

Arms are lists served to cohorts: `cohort` ranks items by the cohort's mean relevance,
`popularity` by the population's. Arms face the same random draws each day (common random
numbers), so their differences come from the rankings only; results are deterministic for a
seed. numpy randomness is fine here: nothing is released.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ARMS = ("cohort", "popularity")


@dataclass(frozen=True)
class Population:
    users: int = 5_000
    items: int = 500
    categories: int = 20
    cohorts: int = 12
    cohort_spread: float = 1.2  # SD of a cohort's preference offset (logit)
    personal_spread: float = 0.8  # SD of a user's own offset (logit)
    item_zipf: float = 1.1  # item popularity within a category


@dataclass(frozen=True)
class Behaviour:
    top_n: int = 10
    visit_p: float = 0.5
    engage_base: float = -3.5  # logit of engaging with an irrelevant item
    engage_slope: float = 4.0  # logit gain at relevance 1
    memory: float = 0.3  # weight of the latest visit in the engagement average
    churn_below: float = 0.6  # engaged items per visit (moving average)
    churn_p: float = 0.15


@dataclass(frozen=True)
class World:
    cohort: np.ndarray  # user -> cohort
    relevance: np.ndarray  # users x items, in [0, 1]


def make_world(pop: Population, seed: int) -> World:
    """Planted preferences: relevance(u, i) = p_u(category of i) x within-category
    popularity of i, scaled so each user's best item has relevance 1."""
    rng = np.random.default_rng([seed, 0])
    base = -np.log(np.arange(1, pop.categories + 1))
    offsets = rng.normal(0.0, pop.cohort_spread, (pop.cohorts, pop.categories))
    cohort = rng.integers(0, pop.cohorts, pop.users)
    logits = (
        base + offsets[cohort] + rng.normal(0.0, pop.personal_spread, (pop.users, pop.categories))
    )
    pref = np.exp(logits - logits.max(axis=1, keepdims=True))
    pref /= pref.sum(axis=1, keepdims=True)
    category = rng.integers(0, pop.categories, pop.items)
    rank = np.empty(pop.items)
    for c in range(pop.categories):
        members = np.flatnonzero(category == c)
        rank[members] = rng.permutation(len(members)) + 1.0
    quality = rank**-pop.item_zipf
    score = pref[:, category] * quality
    return World(cohort, score / score.max(axis=1, keepdims=True))


def arm_lists(world: World, top_n: int) -> dict[str, np.ndarray]:
    """Per arm, a cohorts x top_n array of item indices."""
    n_cohorts = world.cohort.max() + 1
    per_cohort = np.stack(
        [world.relevance[world.cohort == c].mean(axis=0) for c in range(n_cohorts)]
    )
    overall = world.relevance.mean(axis=0)
    top = lambda scores: np.argsort(-scores, axis=-1, kind="stable")[..., :top_n]  # noqa: E731
    return {"cohort": top(per_cohort), "popularity": np.tile(top(overall), (n_cohorts, 1))}


def simulate(pop: Population, beh: Behaviour, days: int, seed: int) -> pd.DataFrame:
    """Per arm and day: retention (share of users not churned), engagement (engaged items
    per retained user) and satisfaction (mean relevance of the lists visitors saw)."""
    world = make_world(pop, seed)
    lists = arm_lists(world, beh.top_n)
    rows = []
    for arm in ARMS:
        retained = np.ones(pop.users, dtype=bool)
        average = np.full(pop.users, np.nan)  # no visit yet
        shown_rel = np.take_along_axis(world.relevance, lists[arm][world.cohort], axis=1)
        p_engage = 1.0 / (1.0 + np.exp(-(beh.engage_base + beh.engage_slope * shown_rel)))
        for day in range(days):
            rng = np.random.default_rng([seed, 1, day])  # the same draws for every arm
            visits = retained & (rng.random(pop.users) < beh.visit_p)
            engaged = (rng.random(p_engage.shape) < p_engage).sum(axis=1)
            leave = rng.random(pop.users) < beh.churn_p
            latest = np.where(
                np.isnan(average), engaged, (1 - beh.memory) * average + beh.memory * engaged
            )
            average = np.where(visits, latest, average)
            retained &= ~(visits & (average < beh.churn_below) & leave)
            rows.append({
                "arm": arm,
                "day": day + 1,
                "retention": retained.mean(),
                "engagement": engaged[visits].sum() / max(retained.sum(), 1),
                "satisfaction": shown_rel[visits].mean() if visits.any() else np.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def summary(daily: pd.DataFrame) -> pd.DataFrame:
    """Per arm: retention at the end, mean daily engagement and satisfaction."""
    last = daily[daily["day"] == daily["day"].max()].set_index("arm")["retention"]
    means = daily.groupby("arm")[["engagement", "satisfaction"]].mean()
    return means.assign(final_retention=last).reindex(list(ARMS)).reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    daily = simulate(Population(), Behaviour(), 7 * args.weeks, args.seed)
    print(summary(daily).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    daily.to_csv(args.out / "simulation.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, part in daily.groupby("arm"):
        ax.plot(part["day"], part["retention"], label=arm)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("retention (share of users not churned)")
    ax.set_title(f"Long-term simulation, seed {args.seed}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "simulation_retention.png", dpi=120)
    print(f"wrote {args.out / 'simulation_retention.png'}")


if __name__ == "__main__":
    main()
