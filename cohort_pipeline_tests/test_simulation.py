"""The long-term simulation: deterministic per seed, fair between arms, churn behaves."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from benchmarks.simulation import (
    ARMS,
    Behaviour,
    Population,
    arm_lists,
    make_world,
    simulate,
    summary,
)

POP = Population(users=1_500, items=200, categories=10, cohorts=6)
BEH = Behaviour()


def test_deterministic_for_a_seed_and_different_across_seeds():
    first = simulate(POP, BEH, days=21, seed=4)
    pd.testing.assert_frame_equal(first, simulate(POP, BEH, days=21, seed=4))
    assert not first.equals(simulate(POP, BEH, days=21, seed=5))


def test_retention_curves_per_arm_never_rise():
    daily = simulate(POP, BEH, days=28, seed=0)
    assert set(daily["arm"]) == set(ARMS)
    for _, curve in daily.groupby("arm"):
        retention = curve.sort_values("day")["retention"].to_numpy()
        assert (np.diff(retention) <= 0).all() and 0 <= retention.min() <= retention.max() <= 1
    assert daily[["engagement", "satisfaction"]].ge(0).all().all()


def test_with_planted_cohort_preferences_the_cohort_arm_retains_more():
    result = summary(simulate(POP, BEH, days=42, seed=1)).set_index("arm")
    assert result.loc["cohort", "final_retention"] > result.loc["popularity", "final_retention"]
    assert result.loc["cohort", "satisfaction"] > result.loc["popularity", "satisfaction"]


def test_identical_users_make_the_arms_identical():
    # Without any preference spread every list is the popularity list, and both arms face the
    # same random draws: their outcomes must match exactly.
    same = replace(POP, cohort_spread=0.0, personal_spread=0.0)
    lists = arm_lists(make_world(same, 2), BEH.top_n)
    assert (lists["cohort"] == lists["popularity"]).all()
    daily = simulate(same, BEH, days=14, seed=2)
    by_arm = {
        arm: part.drop(columns="arm").reset_index(drop=True) for arm, part in daily.groupby("arm")
    }
    pd.testing.assert_frame_equal(by_arm["cohort"], by_arm["popularity"])


def test_engaged_users_never_churn_and_disengaged_ones_do():
    engaged = simulate(POP, replace(BEH, engage_base=8.0), days=14, seed=0)
    assert (engaged["retention"] == 1.0).all()
    bored = simulate(POP, replace(BEH, engage_base=-12.0, engage_slope=0.0), days=28, seed=0)
    assert bored.groupby("arm")["retention"].min().lt(0.5).all()
