import math
from datetime import date, timedelta

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.accounting import (
    Charge,
    Spend,
    compose,
    epsilon_from_rho,
    rho_from_epsilon,
    worst_window_spend,
)
from cohort_pipeline.privacy.measurements import planned_measurements, release_spend, yearly_spend
from cohort_pipeline_tests.conftest import POLICY


@given(st.floats(1e-3, 20), st.sampled_from([1e-9, 1e-7, 1e-6, 1e-5]))
def test_rho_from_epsilon_inverts_the_conversion(epsilon, delta):
    assert epsilon_from_rho(rho_from_epsilon(epsilon, delta), delta) == pytest.approx(
        epsilon, rel=1e-9
    )


def test_conversion_matches_bun_steinke():
    rho, delta = 0.5, 1e-6
    assert epsilon_from_rho(rho, delta) == pytest.approx(
        rho + 2 * math.sqrt(rho * math.log(1 / delta))
    )


def test_pure_dp_is_half_epsilon_squared_zcdp():
    assert Spend.pure(0.2).rho == pytest.approx(0.02)
    assert Spend.pure(0.2).delta == 0


def test_a_spend_is_within_a_reservation_only_if_covered_in_every_coordinate():
    reserved = Spend.zcdp(0.01, 1e-6)
    assert reserved.within(reserved)
    assert Spend.zcdp(0.005, 1e-6).within(reserved)
    assert not Spend.zcdp(0.02, 1e-6).within(reserved)
    assert not Spend.zcdp(0.01, 1e-5).within(reserved)  # same rho, larger delta
    assert Spend.pure(0.1).within(Spend.pure(0.1 * (1 + 1e-12)))  # float rounding only


def lap(epsilon: float) -> Charge:
    return Charge(Spend.pure(epsilon), "laplace", 1.0 / epsilon)


def independent_pld(policy, releases: int, interval: float = 1e-4) -> float:
    """dp-accounting's PLD on the default policy's measurements, without our grouping (each
    measurement self-composed on its own, no Gaussian merge), at its default grid."""
    events = [
        dp_accounting.SelfComposedDpEvent(
            (dp_accounting.LaplaceDpEvent if m.mechanism == "laplace" else
             dp_accounting.GaussianDpEvent)(m.noise_scale / m.sensitivity),
            releases,
        )
        for m in planned_measurements(policy)
    ]  # fmt: skip
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, interval)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(policy.delta)


@pytest.mark.parametrize("releases", [1, 30])
def test_pld_composition_matches_dp_accounting_and_beats_the_zcdp_conversion(releases):
    policy = load_policy(POLICY)
    ours, delta = release_spend(policy, releases)
    theirs = independent_pld(policy, releases)
    # our grid is coarser and rounds pessimistically: never below, and within 1e-3
    assert theirs - 1e-9 <= ours <= theirs + 1e-3
    assert delta == policy.delta
    rho = sum(m.spend.rho for m in planned_measurements(policy))
    assert ours < epsilon_from_rho(releases * rho, policy.delta)  # tighter than the conversion


def test_yearly_epsilon_of_the_default_policy():
    """A user active every day of a year is in 365 + 28 - 1 = 392 daily releases."""
    policy = load_policy(POLICY)
    assert policy.lookback_days == 28
    epsilon, delta = yearly_spend(policy)
    assert (epsilon, delta) == release_spend(policy, 392)
    assert epsilon == pytest.approx(independent_pld(policy, 392, interval=1e-3), abs=1e-3)
    assert epsilon == pytest.approx(23.75, abs=0.01)  # the figure the README and policy state
    assert epsilon <= policy.epsilon_horizon_cap  # the default policy runs daily for a year
    rho = sum(m.spend.rho for m in planned_measurements(policy))
    assert epsilon < epsilon_from_rho(392 * rho, policy.delta) == pytest.approx(26.30, abs=0.01)


def test_gaussians_merge_exactly_and_grouping_does_not_change_the_figure():
    delta = 1e-6
    g = [
        Charge(Spend.zcdp(0.01, delta), "gaussian", 7.0),
        Charge(Spend.zcdp(0.02, delta), "gaussian", 5.0),
    ]
    merged = compose(g * 3, "zcdp", delta)[0]
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, 1e-4)
    accountant.compose(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(c.noise_multiplier) for c in g * 3]
    ))  # fmt: skip
    assert merged == pytest.approx(accountant.get_epsilon(delta), abs=1e-3)


def test_basic_composition_sums_epsilon_and_delta():
    delta = 1e-6
    daily = Charge(Spend.zcdp(rho_from_epsilon(1.0, delta), delta), "gaussian", 3.0)
    eps_basic, delta_basic = compose([daily] * 30, "basic", delta)
    assert eps_basic == pytest.approx(30.0)
    assert delta_basic == pytest.approx(30 * delta)


def test_compose_rejects_unknown_rule_and_mechanism():
    with pytest.raises(ValueError, match="budget.composition"):
        compose([lap(1)], "advanced", 1e-6)
    with pytest.raises(ValueError, match="mechanism"):
        Charge(Spend.pure(1.0), "exponential", 1.0)


def test_worst_window_counts_every_window_containing_the_date():
    day = date(2026, 1, 10)
    spends = [(day - timedelta(days=5), lap(1.0)), (day + timedelta(days=5), lap(1.0))]
    # A 7-day window holds at most one of them with `day`; a 11-day window can hold both.
    assert worst_window_spend(spends + [(day, lap(1.0))], 7, "basic", 1e-6, day)[0] == 2.0
    assert worst_window_spend(spends + [(day, lap(1.0))], 11, "basic", 1e-6, day)[0] == 3.0
    assert worst_window_spend([], 30, "zcdp", 1e-6, day) == (0.0, 0.0)
    # under PLD the worst window is the one holding the most events
    two = compose([lap(1.0)] * 2, "zcdp", 1e-6)
    assert worst_window_spend(spends + [(day, lap(1.0))], 7, "zcdp", 1e-6, day) == two


@settings(max_examples=25, deadline=None)
@given(
    offsets=st.lists(st.integers(-12, 12), max_size=10),
    multipliers=st.lists(st.sampled_from([1.0, 2.0, 5.0]), min_size=10, max_size=10),
    gaussian=st.lists(st.booleans(), min_size=10, max_size=10),
    window=st.integers(1, 8),
)
def test_worst_window_equals_brute_force(offsets, multipliers, gaussian, window):
    """The sliding, de-duplicated, subset-pruned search finds the same figure as composing
    every window containing the date."""
    day = date(2026, 1, 10)
    charges = [
        (day + timedelta(days=o), Charge(Spend.pure(1 / m), "gaussian" if g else "laplace", m))
        for o, m, g in zip(offsets, multipliers, gaussian, strict=False)
    ]
    brute = max(
        (
            compose(
                [c for d, c in charges if 0 <= (d - day).days + window - 1 - k < window],
                "zcdp",
                1e-6,
            )
            for k in range(window)
        ),
        default=(0.0, 0.0),
    )
    assert worst_window_spend(charges, window, "zcdp", 1e-6, day) == pytest.approx(brute)
