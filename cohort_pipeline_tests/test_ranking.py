import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort_pipeline.logic.ranking import (
    max_weight_change,
    project,
    ranking_weights,
    recommendations,
)
from cohort_pipeline.policy import load_policy
from cohort_pipeline_tests.conftest import POLICY

CATEGORIES = ["books", "garden", "toys", "music"]


@pytest.fixture
def policy():
    return load_policy(POLICY)


def affinity_for(profiles: dict[str, list[float]], n: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [
        {"cohort_key": key, "category": c, "noisy_sum": v * n, "share": v / sum(vals)}
        for key, vals in profiles.items()
        for c, v in zip(CATEGORIES, vals, strict=True)
    ]
    sizes = pd.DataFrame({"cohort_key": list(profiles), "noisy_users": n})
    return pd.DataFrame(rows), sizes


@settings(max_examples=200, deadline=None)
@given(
    target=st.lists(st.floats(-1, 2), min_size=4, max_size=4),
    prev=st.lists(st.floats(0.05, 1), min_size=4, max_size=4),
    change=st.floats(0.01, 0.5),
)
def test_projection_respects_sum_floor_and_change_bound(target, prev, change):
    prev = np.array(prev) / np.sum(prev)
    floor = min(0.02, prev.min())
    lo, hi = np.maximum(floor, prev - change), prev + change
    w = project(np.array(target), lo, hi)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert (w >= lo - 1e-12).all() and (w <= hi + 1e-12).all()


def test_smaller_cohorts_are_shrunk_more_toward_the_global_profile(policy):
    aff, sizes = affinity_for({"a|b|c": [0.7, 0.1, 0.1, 0.1], "d|e|f": [0.1, 0.1, 0.1, 0.7]}, 1000)
    sizes.loc[1, "noisy_users"] = 100
    w = ranking_weights(aff, sizes, None, policy)
    shrink = w.groupby("cohort_key")["shrinkage"].first()
    assert shrink["d|e|f"] > shrink["a|b|c"]
    assert w.groupby("cohort_key")["weight"].sum().to_numpy() == pytest.approx([1.0, 1.0])


def test_fairness_floor_and_change_bound_hold_against_the_previous_release(policy):
    aff, sizes = affinity_for({"a|b|c": [0.97, 0.01, 0.01, 0.01]}, 100_000)
    previous = pd.DataFrame({"cohort_key": "a|b|c", "category": CATEGORIES, "weight": [0.25] * 4})
    w = ranking_weights(aff, sizes, previous, policy)
    assert w["weight"].min() >= policy.fairness_floor - 1e-9
    assert max_weight_change(w) <= policy.max_change + 1e-9
    # Without the bound the top category would have jumped far beyond max_change.
    free = ranking_weights(aff, sizes, None, policy)
    assert (free["weight"] - 0.25).abs().max() > policy.max_change


def test_fairness_floor_must_be_satisfiable(policy):
    raw = {**policy.raw, "ranking": {**policy.raw["ranking"], "fairness_floor": 0.3}}
    from cohort_pipeline.policy import parse_policy

    aff, sizes = affinity_for({"a|b|c": [0.25] * 4}, 1000)
    with pytest.raises(ValueError, match="fairness_floor"):
        ranking_weights(aff, sizes, None, parse_policy(raw))


def test_recommendations_rank_items_by_weight_times_category_share():
    weights = pd.DataFrame(
        {"cohort_key": ["x"] * 2, "category": ["books", "toys"], "weight": [0.9, 0.1]}
    )
    popularity = pd.DataFrame({
        "item_id": ["b1", "b2", "t1"], "category": ["books", "books", "toys"],
        "category_share": [0.3, 0.7, 1.0],
    })  # fmt: skip
    recs = recommendations(weights, popularity, top_n=2)
    assert recs["item_id"].tolist() == ["b2", "b1"]
    assert recs["rank"].tolist() == [1, 2]


def _floor_binds(policy, previous):
    """A huge cohort (no shrinkage) that never engages with `music`, in a population that
    never does either: without the fairness floor its `music` weight would be 0."""
    aff, sizes = affinity_for({"a|b|c": [0.5, 0.3, 0.2, 0.0]}, 1e9)
    return ranking_weights(aff, sizes, previous, policy).set_index("category")["weight"]


def test_fairness_floor_binds_exactly_without_a_previous_release(policy):
    weights = _floor_binds(policy, None)
    assert weights["music"] == pytest.approx(policy.fairness_floor, abs=1e-9)
    assert weights.sum() == pytest.approx(1.0)


def test_fairness_floor_binds_exactly_against_a_previous_release(policy):
    # The previous release gave music 0.03: the change bound alone would allow 0.
    previous = pd.DataFrame(
        {"cohort_key": "a|b|c", "category": CATEGORIES, "weight": [0.47, 0.3, 0.2, 0.03]}
    )
    weights = _floor_binds(policy, previous)
    assert weights["music"] == pytest.approx(policy.fairness_floor, abs=1e-9)
    assert weights.sum() == pytest.approx(1.0)
