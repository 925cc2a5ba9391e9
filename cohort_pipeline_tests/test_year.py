"""benchmarks/year.py: its accounting is the ledger's, its noise the registry's, its NDCG the
experiments' metric."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.year import Approach, Sample, Summed, ndcg
from cohort_pipeline.logic.experiments import arm_metrics
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.accounting import sampled_spend
from cohort_pipeline.privacy.measurements import (
    budget_problem,
    mechanisms,
    planned_measurements,
    release_spend,
    yearly_spend,
)
from cohort_pipeline_tests.conftest import POLICY


def test_the_daily_approach_is_the_ledgers_yearly_projection():
    policy = load_policy(POLICY)
    daily = Approach("default", epsilon=policy.epsilon_per_release)
    assert daily.releases(policy) == (365 + policy.lookback_days - 1,) * 2
    assert daily.yearly_epsilon(policy, policy.epsilon_per_release) == yearly_spend(policy)[0]


def test_release_counts_of_a_year_of_activity():
    policy = load_policy(POLICY)
    assert Approach("k7", every=7).releases(policy) == (56, 56)
    assert Approach("cadence", slow_every=7).releases(policy) == (392, 56)
    assert Approach("daily sums", block=1).releases(policy) == (365, 365)
    assert Approach("weekly sums", block=7).releases(policy) == (54, 54)  # may straddle both ends


def test_sampled_approaches_are_charged_by_sampled_spend():
    policy = load_policy(POLICY)
    charges = [m.charge for m in planned_measurements(policy)]
    sampled = Approach("q", rate=0.3).yearly_epsilon(policy, policy.epsilon_per_release)
    assert sampled == sampled_spend(charges, 0.3, 392, policy.delta)[0]


def test_solved_epsilon_meets_the_target_from_below():
    policy = load_policy(POLICY)
    approach = Approach("cadence", slow_every=7)
    eps = approach.epsilon_for(policy, 4.0)
    assert 3.9 <= approach.yearly_epsilon(policy, eps) <= 4.0
    assert approach.yearly_epsilon(policy, eps * 1.01) > 4.0


def test_summed_noise_is_the_sum_of_opendp_draws():
    mechs = mechanisms(load_policy(POLICY))
    for name in ("item_popularity", "cohort_sizes"):  # Gaussian: one draw at rho / 4; Laplace
        summed = Summed(mechs[name], draws=4, rate=0.5)
        assert summed.std == pytest.approx(mechs[name].std * 2 / 0.5)
        values = np.full(4_000, 10.0)
        noisy = summed(values)
        assert noisy.mean() == pytest.approx(20.0, abs=5 * summed.std / math.sqrt(len(values)))
        assert noisy.std() == pytest.approx(summed.std, rel=0.08)


def test_vectorised_ndcg_is_the_experiments_metric():
    rng = np.random.default_rng(0)
    keys = ["a|x", "b|x", "c|y"]
    items = [f"i{n:05d}" for n in range(1, 41)]
    catalog = pd.DataFrame({"item_id": items, "category": "c"})
    plan = pd.DataFrame({"cohort_key": ["a|x", "*|y"], "members": ["a|x", "b|x;c|y"]})
    lists = pd.DataFrame(
        [(key, r + 1, items[i]) for key in plan["cohort_key"]
         for r, i in enumerate(rng.permutation(40)[:20])],
        columns=["cohort_key", "rank", "item_id"],
    )  # fmt: skip
    users, relevant_items = np.arange(300).repeat(3), rng.integers(0, 40, 900)
    pairs = pd.DataFrame({"u": users, "i": relevant_items}).drop_duplicates()
    key_of = rng.integers(0, 3, 300)
    sample = Sample(
        300, keys, ["c"], catalog, {}, {}, {}, pairs["u"].to_numpy(), pairs["i"].to_numpy()
    )
    ours = ndcg(sample, key_of, plan, lists)
    members = {m: row.cohort_key for row in plan.itertuples() for m in row.members.split(";")}
    served = pd.Series([members[keys[k]] for k in key_of], index=[f"u{u}" for u in range(300)])
    relevant = pd.DataFrame(
        {"user_id": [f"u{u}" for u in pairs["u"]], "item_id": [items[i] for i in pairs["i"]]}
    )
    assert ours == pytest.approx(arm_metrics(relevant, served, lists)["ndcg_at_10"].mean())


def test_the_benchmark_runs_on_a_small_sample(tmp_path):
    """Generator events bounded by the pipeline's SQL, then a window and a block approach."""
    from benchmarks.year import load_sample, measure, reference

    policy = load_policy(POLICY)
    sample = load_sample(3_000, policy, tmp_path, lambda _: None)
    window = sample.window[0]
    assert set(window.users) <= set(np.flatnonzero(sample.key_of[0] >= 0))
    # a user's category vector has L2 norm 1 in a window and in each block alike
    for rows in (window, sample.blocks[7, 0], sample.blocks[1, 0]):
        u, _, value = rows.cat
        norms = np.sqrt(np.bincount(u, weights=value**2))
        assert np.allclose(norms[np.unique(u)], policy.category_l2_norm)
    exact = reference(sample, policy)
    assert 0 < exact <= 1
    for approach in (Approach("daily"), Approach("weekly sums", block=7, rate=0.5)):
        m = measure(sample, policy, approach, 1.0, repeats=1)
        assert 0 < m["ndcg"] <= 1 and 0 < m["popularity"] <= 1


def test_the_yearly_epsilon_4_policy_keeps_its_promise_and_differs_only_in_budget():
    """data/policies/yearly_epsilon_4.yaml: daily releases for ever under its own caps, a
    yearly figure below 4, and every other key the default's."""
    path = POLICY.parent / "policies" / "yearly_epsilon_4.yaml"
    policy, default = load_policy(path), load_policy(POLICY)
    epsilon, _ = yearly_spend(policy)
    assert epsilon <= 4.0 and epsilon <= policy.epsilon_horizon_cap
    assert budget_problem(policy) is None
    assert release_spend(policy, policy.window_days)[0] <= policy.epsilon_cap
    changed = {"epsilon_per_release", "epsilon_cap", "epsilon_horizon_cap"}
    differ = {k for k, v in vars(policy).items() if v != getattr(default, k)}
    assert differ - {"raw", "hash", "path"} == changed
    assert f"{epsilon:.2f}" in path.read_text()  # the figure its header states
