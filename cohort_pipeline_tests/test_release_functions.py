"""The DP release functions on their own: public key set, coarsening, denominators."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cohort_pipeline.policy import load_policy, parse_policy
from cohort_pipeline.privacy.ledger import Measurement
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.release import (
    coarsen,
    plan_map,
    release_cohort_affinity,
    release_cohort_metrics,
    release_cohort_sizes,
)
from cohort_pipeline_tests.conftest import POLICY


@pytest.fixture
def policy():
    return load_policy(POLICY)


def with_k(policy, k):
    raw = {**policy.raw, "cohorts": {**policy.raw["cohorts"], "min_size": k}}
    return parse_policy(raw)


@pytest.mark.parametrize("composition", ["zcdp", "basic"])
def test_mechanisms_spend_exactly_the_release_budget(policy, composition):
    """One release is calibrated to cost epsilon_per_release at delta under either composition
    (zcdp: its rhos sum to the release's rho; basic: epsilons and deltas sum); the PLD
    accountant composes the zcdp release to less (under basic, zCDP-calibrated Gaussian
    shares converted one by one once summed to 1.83 at 4 deltas)."""
    from cohort_pipeline.privacy.accounting import compose, epsilon_from_rho

    mechs = mechanisms(replace(policy, composition=composition))
    spends = [m.spend for m in mechs.values()]
    if composition == "zcdp":
        epsilon, delta = epsilon_from_rho(sum(s.rho for s in spends), policy.delta), policy.delta
    else:
        epsilon, delta = sum(s.epsilon for s in spends), sum(s.delta for s in spends)
    assert epsilon == pytest.approx(policy.epsilon_per_release)
    assert delta == pytest.approx(policy.delta)
    charges = [
        Measurement(a, m.name, m.spend, m.sensitivity, m.scale).charge for a, m in mechs.items()
    ]
    composed = compose(charges, composition, policy.delta)
    assert composed[0] <= policy.epsilon_per_release * (1 + 1e-9)
    laplace = {asset for asset, m in mechs.items() if m.name == "laplace"}
    expected = {"cohort_sizes"} if composition == "zcdp" else {"cohort_sizes", "cohort_metrics"}
    assert laplace == expected


def test_coarsen_keeps_big_cohorts_and_merges_small_ones_into_parents(policy):
    keys = policy.cohort_keys()
    noisy = pd.Series(1000.0, index=keys)
    noisy["low|recent|mobile"] = 50.0
    noisy["low|recent|desktop"] = 60.0
    released = coarsen(noisy, policy)  # k = 200; device is dropped first
    merged = [c for c in released if len(c[1]) > 1]
    # The pool (110) is still below k, so it climbs to `low|*|*` and absorbs the smallest
    # released cohort under that parent (all are 1000; ties break by key).
    assert merged == [
        ("low|*|*", ["low|lapsed|desktop", "low|recent|desktop", "low|recent|mobile"], 1110.0)
    ]
    assert all(n >= 200 for _, _, n in released)
    covered = sorted(m for _, members, _ in released for m in members)
    assert covered == sorted(keys)  # every full key lands in exactly one released cohort


def test_a_small_pool_absorbs_its_smallest_sibling(policy):
    noisy = pd.Series(1000.0, index=policy.cohort_keys())
    noisy["low|recent|mobile"] = 50.0  # its only sibling on device is low|recent|desktop
    noisy["low|recent|desktop"] = 400.0
    released = {key: (members, n) for key, members, n in coarsen(noisy, policy)}
    assert released["low|recent|*"] == (["low|recent|desktop", "low|recent|mobile"], 450.0)


def test_population_below_k_is_left_below_k_for_the_check(policy):
    tiny = with_k(policy, 100_000)
    released = coarsen(pd.Series(10.0, index=tiny.cohort_keys()), tiny)
    assert len(released) == 1
    key, members, n = released[0]
    assert key == "*|*|*" and len(members) == 18 and n == pytest.approx(180.0)


def test_release_cohort_sizes_covers_the_public_key_set_including_empty_cohorts(policy):
    totals = pd.DataFrame({"cohort_key": ["mid|none|mobile"], "users": [3000.0]})
    sizes = release_cohort_sizes(totals, policy, mechanisms(policy)["cohort_sizes"])
    assert sorted(plan_map(sizes)) == sorted(policy.cohort_keys())
    # All other cohorts are empty, so they are merged; the populated one may be absorbed.
    home = sizes.set_index("cohort_key").loc[plan_map(sizes)["mid|none|mobile"]]
    assert abs(home["noisy_users"] - 3000) < 300
    assert (sizes["noisy_users"] >= policy.min_size).all()
    assert sizes["noise_scale"].iloc[0] == pytest.approx(mechanisms(policy)["cohort_sizes"].scale)


def test_release_cohort_sizes_rejects_keys_outside_the_policy(policy):
    with pytest.raises(ValueError, match="outside the policy's key set"):
        release_cohort_sizes(
            pd.DataFrame({"cohort_key": ["vip|x|y"], "users": [1.0]}),
            policy,
            mechanisms(policy)["cohort_sizes"],
        )


def _plan(policy, n=1000.0):
    keys = policy.cohort_keys()
    return pd.DataFrame({"cohort_key": keys, "members": keys, "noisy_users": n})


def test_metrics_are_clamped_to_their_bounds_even_for_empty_cohorts(policy):
    plan = _plan(policy)
    totals = pd.DataFrame(
        {
            "cohort_key": [plan.cohort_key[0]],
            "users": [1.0],
            "sessions": [3.0],
            "mean_duration_s": [100.0],
            "converted": [1.0],
        }
    )
    mechs = mechanisms(policy)
    out = release_cohort_metrics(
        totals, plan, policy, mechs["cohort_metrics"], mechs["cohort_sizes"]
    )
    assert len(out) == len(plan)
    assert out["conversion_rate"].between(0, 1).all()
    assert out["mean_session_duration_s"].between(*policy.session_duration_s).all()
    assert out["sessions_per_user"].between(0, policy.max_sessions).all()
    assert np.isfinite(out.filter(like="accuracy_95")).all().all()


def test_affinity_gives_every_cohort_and_category_a_value(policy):
    plan = _plan(policy)
    totals = pd.DataFrame(
        {"cohort_key": plan.cohort_key[0], "category": ["books", "toys"], "value": [0.6, 0.8]}
    )
    mech = mechanisms(policy)["cohort_category_affinity"]
    out = release_cohort_affinity(totals, plan, ["books", "garden", "toys"], policy, mech)
    assert len(out) == len(plan) * 3
    assert (out["share"] >= 0).all()
    assert out.groupby("cohort_key")["share"].sum().to_numpy() == pytest.approx(np.ones(len(plan)))


def test_affinity_shares_follow_a_planted_preference(policy):
    """Each cohort of 20,000 users gives 70% of its (unit-norm) engagement to its own
    favourite category: the released shares must find each favourite near 0.7 (the noise on
    a sum of 20,000 is ~1e-4 of it), not a uniform or shuffled profile."""
    categories = ["books", "garden", "music", "toys"]
    plan = _plan(policy, n=20_000.0)
    favourite = {key: categories[i % len(categories)] for i, key in enumerate(plan.cohort_key)}
    totals = pd.DataFrame(
        [
            {"cohort_key": key, "category": c, "value": 20_000 * (0.7 if c == fav else 0.1)}
            for key, fav in favourite.items()
            for c in categories
        ]
    )
    mech = mechanisms(policy)["cohort_category_affinity"]
    out = release_cohort_affinity(totals, plan, categories, policy, mech)
    shares = out.pivot(index="cohort_key", columns="category", values="share")
    assert shares.idxmax(axis=1).to_dict() == favourite
    for key, fav in favourite.items():
        assert shares.loc[key, fav] == pytest.approx(0.7, abs=0.01)
        assert shares.loc[key].drop(fav).to_numpy() == pytest.approx([0.1] * 3, abs=0.01)
