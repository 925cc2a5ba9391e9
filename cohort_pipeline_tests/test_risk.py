"""Attack simulations: real release functions and OpenDP noise on synthetic data.

Each attack is also run where it must succeed (no noise, a large epsilon, no coarsening),
so a simulation that measured nothing would fail here."""

from __future__ import annotations

import base64
import math
from dataclasses import replace

import numpy as np
import pytest
from dagster import materialize

from cohort_pipeline.defs.risk import BOUND_CHECK, privacy_risk_report
from cohort_pipeline.logic import risk
from cohort_pipeline.policy import load_policy
from cohort_pipeline.resources import PipelineResource
from cohort_pipeline_tests.conftest import POLICY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def policy():
    return load_policy(POLICY)


def loose(policy, epsilon: float):
    """The policy with a (hypothetical, unvalidated) large per-release epsilon."""
    return replace(policy, epsilon_per_release=epsilon)


def test_advantage_bound():
    assert risk.advantage_bound(0.0, 0.0) == 0.0
    assert risk.advantage_bound(1.0, 0.0) == pytest.approx(math.tanh(0.5))
    assert risk.advantage_bound(0.0, 0.1) == pytest.approx(0.1)
    assert risk.advantage_bound(50.0, 0.0) == pytest.approx(1.0)


def test_the_interval_is_honest_at_few_trials_and_decisive_at_many():
    # 8/10 against 1/10 is chance-compatible with the singling-out bound (0.32); a normal
    # approximation called it significant and failed the check about once in 60 results.
    adv, low, high = risk.measured_advantage(np.arange(10) < 8, np.arange(10) < 1)
    assert adv == pytest.approx(0.7) and low < 0.32 < high
    # Every guess right over 1,000 trials: far outside any small epsilon's bound.
    adv, low, high = risk.measured_advantage(np.ones(1000, bool), np.zeros(1000, bool))
    assert adv == 1.0 and low > 0.98 and high == pytest.approx(1.0)
    result = risk.AttackResult("a", "b", adv, low, high, 0.5, risk.advantage_bound(0.5, 0), 1000)
    assert not result.within_bound


def test_differencing_stays_within_the_bound_and_succeeds_without_privacy(policy):
    (honest,) = risk.differencing_attack(policy, trials=4000)
    assert honest.within_bound, honest
    assert honest.bound < 0.05  # cohort_sizes' epsilon is small
    (weak,) = risk.differencing_attack(loose(policy, 10.0), trials=4000)
    assert weak.within_bound, weak
    assert weak.advantage > 0.08  # the attack works when epsilon allows it (bound ~0.3)


def test_averaging_gains_nothing_from_consistent_releases(policy):
    # A large epsilon makes the naive arm's gain unmistakable with few trials.
    results = risk.averaging_attack(loose(policy, 10.0), trials=400, repeats=(1, 50))
    by_arm = {r.arm: r for r in results}
    consistent = [r for r in results if r.arm.startswith("consistent")]
    assert len({r.advantage for r in consistent}) == 1  # R re-runs are one draw
    assert (
        by_arm["naive (fresh noise), R=50"].advantage > by_arm["consistent, R=50"].advantage + 0.2
    )
    assert all(r.within_bound for r in results)


def test_coarsening_defeats_singling_out(policy):
    coarsened, not_coarsened = risk.singling_out_attack(policy, trials=6)
    assert coarsened.arm.startswith("coarsened") and coarsened.isolating_rows == 0.0
    assert not_coarsened.isolating_rows > 0.0
    assert coarsened.within_bound and not_coarsened.within_bound


def test_reconstruction_needs_exact_aggregates(policy):
    # 5 trials (400 bits): the DP arm's advantage is 0.26 +/- 0.05 over repeated runs, so the
    # 0.6 bound is 7 standard deviations away (one trial, 0.29 +/- 0.12, failed it by chance)
    exact, noisy = risk.reconstruction_attack(policy, users=80, trials=5)
    assert exact.advantage == 1.0  # the attack recovers every bit without noise
    assert noisy.within_bound
    assert noisy.advantage < 0.6


def test_report_renders_every_attack_with_its_plot(policy):
    results = risk.differencing_attack(policy, trials=200) + risk.reconstruction_attack(
        policy, users=40, trials=1
    )
    png = risk.plot_png(results)
    assert png.startswith(PNG_MAGIC)
    text = risk.report_markdown(results, png)
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in text
    for r in results:
        assert r.attack in text and r.arm in text


def test_privacy_risk_report_materializes_without_any_warehouse(tmp_path):
    """The asset reads only the policy: its data folder here holds no events or warehouse."""
    result = materialize(
        [privacy_risk_report],
        resources={"pipeline": PipelineResource(data_dir=str(tmp_path), policy_path=str(POLICY))},
        run_config={"ops": {"privacy_risk_report": {"config": {"trials": 2000}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("privacy_risk_report")[0].metadata
    assert "data:image/png;base64," in meta["report"].value
    assert meta["trials"].value == 2000
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == BOUND_CHECK and check.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_crowd_is_per_key_sums_so_k_of_ten_million_stays_small(policy):
    """At k = 10^7 a crowd of per-user rows was 3·k·|keys| = 7.2e8 users (OOM-killed at
    23 GiB); as per-key sums it is one row per key, and every attack still runs and holds."""
    huge = replace(policy, min_size=10_000_000)
    crowd = risk.synthetic_totals(huge, 3 * huge.min_size, np.random.default_rng(0))
    assert len(crowd) == len(huge.cohort_keys()) and crowd["users"].sum() == 3e7 * len(crowd)
    results = risk.run_attacks(huge, trials=2000)
    assert {r.attack for r in results} == {
        "differencing", "averaging", "singling_out", "reconstruction"
    }  # fmt: skip
    assert all(r.within_bound for r in results if math.isfinite(r.epsilon))
    coarsened = next(r for r in results if r.arm.startswith("coarsened"))
    assert coarsened.isolating_rows == 0.0  # the rare cohort is merged into ~2·10^7 users
    # The attack still works on sums where epsilon allows it (as on per-user rows).
    (weak,) = risk.differencing_attack(replace(huge, epsilon_per_release=10.0), trials=4000)
    assert weak.advantage > 0.08 and weak.within_bound


def test_an_absurd_min_size_is_a_policy_error_naming_the_key():
    from cohort_pipeline.policy import MAX_K, PolicyError, parse_policy

    raw = load_policy(POLICY).raw
    too_big = {**raw, "cohorts": {**raw["cohorts"], "min_size": 10 * MAX_K}}
    with pytest.raises(PolicyError, match=r"`cohorts.min_size` must be <= 1000000000"):
        parse_policy(too_big)
