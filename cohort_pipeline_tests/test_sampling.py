import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.accounting import (
    PLD_DISCRETIZATION,
    Charge,
    Spend,
    compose,
    sampled_spend,
)
from cohort_pipeline.privacy.measurements import planned_measurements
from cohort_pipeline.privacy.sampling import poisson_sample
from cohort_pipeline_tests.conftest import POLICY


def charges():
    return [m.charge for m in planned_measurements(load_policy(POLICY))]


def direct(charges, rate, releases, delta, interval=PLD_DISCRETIZATION):
    """dp-accounting on its own: every measurement of every release a PoissonSampledDpEvent."""
    kinds = {"laplace": dp_accounting.LaplaceDpEvent, "gaussian": dp_accounting.GaussianDpEvent}
    events = [
        dp_accounting.PoissonSampledDpEvent(rate, kinds[c.mechanism](c.noise_multiplier))
        for c in charges
    ] * releases
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, interval)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("rate, releases", [(0.3, 1), (0.1, 20), (0.5, 7)])
def test_sampled_spend_is_dp_accountings_figure(rate, releases):
    ours, delta = sampled_spend(charges(), rate, releases, 1e-6)
    assert delta == 1e-6
    assert ours == pytest.approx(direct(charges(), rate, releases, 1e-6), abs=1e-6)
    # and dp-accounting's default finer grid is never above ours (pessimistic rounding)
    assert direct(charges(), rate, releases, 1e-6, interval=1e-4) <= ours + 1e-9


def test_rate_one_is_the_unsampled_figure():
    assert sampled_spend(charges(), 1.0, 30, 1e-6) == compose(charges() * 30, "zcdp", 1e-6)
    # sampled events at a rate just below 1 land next to it (Gaussians then compose apart)
    near = sampled_spend(charges(), 1 - 1e-6, 30, 1e-6)[0]
    assert near == pytest.approx(compose(charges() * 30, "zcdp", 1e-6)[0], rel=0.01)


def test_a_smaller_rate_loses_less():
    figures = [sampled_spend(charges(), q, 392, 1e-6)[0] for q in (1.0, 0.5, 0.25, 0.1, 0.01)]
    assert all(a > b for a, b in zip(figures, figures[1:], strict=False))
    assert figures[-1] > 0


def test_sampled_spend_rejects_bad_rates_and_skips_noiseless_events():
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            sampled_spend(charges(), bad, 1, 1e-6)
    free = Charge(Spend.pure(0.0), "gaussian", math.inf)
    assert sampled_spend([free], 0.5, 10, 1e-6) == (0.0, 1e-6)
    assert sampled_spend(charges(), 0.5, 0, 1e-6) == (0.0, 1e-6)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.25, 0.5, 1.0])
def test_poisson_sample_keeps_the_rate(rate):
    n = 200_000
    kept = poisson_sample(n, rate)
    assert kept.dtype == bool and kept.shape == (n,)
    # binomial: within 5 standard deviations
    assert abs(kept.sum() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)) + 1e-9


def test_poisson_samples_are_fresh_and_independent():
    a, b = poisson_sample(100_000, 0.5), poisson_sample(100_000, 0.5)
    both = np.mean(a & b)  # 0.25 if independent
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 100_000)
    assert not np.array_equal(a, b)


def test_poisson_sample_rejects_bad_arguments():
    with pytest.raises(ValueError):
        poisson_sample(10, 1.2)
    with pytest.raises(ValueError):
        poisson_sample(-1, 0.5)
