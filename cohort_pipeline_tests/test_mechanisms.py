import math

import numpy as np
import pytest

from cohort_pipeline.privacy.mechanisms import gaussian, laplace


def test_laplace_is_calibrated_to_sensitivity_over_epsilon():
    mech = laplace(2.0, 0.5)
    assert mech.scale == pytest.approx(4.0)
    assert mech.spend.epsilon == 0.5 and mech.spend.delta == 0
    assert mech._measurement.map(2.0) <= 0.5 * (1 + 1e-9)


def test_gaussian_is_calibrated_to_rho():
    mech = gaussian(math.sqrt(3), 0.01, 1e-6)
    assert mech.scale == pytest.approx(math.sqrt(3) / math.sqrt(0.02))
    assert mech.spend.rho == 0.01 and mech.spend.delta == 1e-6
    assert mech._measurement.map(math.sqrt(3)) <= 0.01 * (1 + 1e-9)


@pytest.mark.parametrize(
    "mech", [laplace(1.0, 0.1), gaussian(1.0, 0.005, 1e-6)], ids=["laplace", "gaussian"]
)
def test_stated_95_percent_accuracy_covers_real_opendp_noise(mech):
    exact = np.full(20_000, 100.0)
    noisy = mech(exact)
    covered = np.mean(np.abs(noisy - exact) <= mech.accuracy95)
    assert 0.94 <= covered <= 0.96
    assert np.std(noisy - exact) == pytest.approx(mech.std, rel=0.05)


def test_noise_is_fresh_per_call():
    mech = laplace(1.0, 1.0)
    assert not np.array_equal(mech(np.zeros(50)), mech(np.zeros(50)))
