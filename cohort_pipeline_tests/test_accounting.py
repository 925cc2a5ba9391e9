import math
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohort_pipeline.privacy.accounting import (
    Spend,
    compose,
    epsilon_from_rho,
    rho_from_epsilon,
    worst_window_spend,
)


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


def test_zcdp_composition_is_far_tighter_than_basic_over_daily_releases():
    delta = 1e-6
    daily = Spend.zcdp(rho_from_epsilon(1.0, delta), delta)
    thirty = [daily] * 30
    eps_zcdp, delta_zcdp = compose(thirty, "zcdp", delta)
    eps_basic, delta_basic = compose(thirty, "basic", delta)
    assert eps_basic == pytest.approx(30.0)
    assert delta_basic == pytest.approx(30 * delta)
    assert eps_zcdp == pytest.approx(epsilon_from_rho(30 * daily.rho, delta))
    assert eps_zcdp < eps_basic / 4  # sqrt growth versus linear growth
    assert delta_zcdp == delta


def test_compose_rejects_unknown_rule():
    with pytest.raises(ValueError, match="budget.composition"):
        compose([Spend.pure(1)], "advanced", 1e-6)


def test_worst_window_counts_every_window_containing_the_date():
    day = date(2026, 1, 10)
    spends = [
        (day - timedelta(days=5), Spend.pure(1.0)),
        (day + timedelta(days=5), Spend.pure(1.0)),
    ]
    # A 7-day window holds at most one of them with `day`; a 11-day window can hold both.
    assert worst_window_spend(spends + [(day, Spend.pure(1.0))], 7, "basic", 1e-6, day)[0] == 2.0
    assert worst_window_spend(spends + [(day, Spend.pure(1.0))], 11, "basic", 1e-6, day)[0] == 3.0
    assert worst_window_spend([], 30, "zcdp", 1e-6, day) == (0.0, 0.0)
