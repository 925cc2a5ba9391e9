"""The noise-calibration check: real OpenDP noise, real calibrated mechanisms of the policy.

It must pass every honest mechanism and catch a broken one (half the noise, claiming the
original cost), or it proves nothing. The Laplace claim is tight, so an honest lower bound
exceeds it with probability <= alpha: the honest tests use a small alpha to stay stable.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.tools import calibration
from cohort_pipeline_tests.conftest import POLICY

ALPHA = 0.01  # broken mechanisms: caught with margin at 50,000 trials
HONEST_ALPHA = 0.001  # the Laplace claim is tight: keep false alarms <= 0.1%
BROKEN_TRIALS = 50_000


def test_clopper_pearson_matches_known_values():
    # Two-sided 95% interval for 5/100 is [0.01643, 0.11284] (standard tables).
    assert calibration.cp_upper(5, 100, 0.025) == pytest.approx(0.11284, abs=2e-5)
    assert calibration.cp_lower(5, 100, 0.025) == pytest.approx(0.01643, abs=2e-5)
    assert calibration.cp_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert calibration.cp_upper(100, 100, 0.05) == 1.0


def test_bounds_from_error_rates():
    # A perfect attack needs infinite epsilon; a coin flip needs none.
    assert calibration.epsilon_bound(fpr=0.5, fnr=0.5, delta=0.0) == 0.0
    assert calibration.epsilon_bound(fpr=0.0, fnr=0.0, delta=0.0) == math.inf
    assert calibration.epsilon_bound(fpr=0.25, fnr=0.5, delta=0.0) == pytest.approx(math.log(2))
    # delta pays for part of the error: (1 - delta - fnr) / fpr
    assert calibration.epsilon_bound(fpr=0.25, fnr=0.5, delta=0.1) == pytest.approx(math.log(1.6))
    assert calibration.rho_bound(tpr=0.3, fpr=0.3) == 0.0
    assert calibration.rho_bound(tpr=0.6, fpr=0.4) == pytest.approx(
        0.6 * math.log(1.5) + 0.4 * math.log(0.4 / 0.6)
    )


def test_every_release_mechanism_passes_the_check():
    policy = load_policy(POLICY)
    results = calibration.check_policy(policy, trials=10_000, alpha=HONEST_ALPHA)
    assert [r.mechanism for r in results] == list(mechanisms(policy))
    for r in results:
        assert r.trials == 10_000
        assert r.epsilon_lower_bound <= r.claimed_epsilon, r
        assert r.rho_lower_bound <= r.claimed_rho, r
        assert r.passed


@pytest.mark.parametrize("asset", ["cohort_sizes", "cohort_metrics"])
def test_the_check_catches_half_the_noise(asset):
    honest = mechanisms(load_policy(POLICY))[asset]
    broken = calibration.half_noise(honest)
    assert math.isclose(broken.scale, honest.scale / 2) and broken.spend == honest.spend
    result = calibration.check_mechanism(f"broken {asset}", broken, BROKEN_TRIALS, ALPHA)
    assert not result.passed, result
    assert result.rho_lower_bound > result.claimed_rho


def test_outputs_without_noise_are_caught_at_any_trial_count():
    honest = mechanisms(load_policy(POLICY))["cohort_sizes"]
    d = np.zeros(1000)
    d1 = np.full(1000, honest.sensitivity)
    eps_lb, rho_lb = calibration.lower_bounds(d, d1, delta=0.0, alpha=ALPHA)
    assert eps_lb > 3 * honest.spend.epsilon and rho_lb > honest.spend.rho


def test_cli_prints_table_and_json(capsys, tmp_path):
    out = tmp_path / "calibration.json"
    code = calibration.main(
        [
            "--trials",
            "2000",
            "--policy",
            str(POLICY),
            "--alpha",
            str(HONEST_ALPHA),
            "--workers",
            "1",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "| mechanism" in printed and "ε lower bound" in printed
    payload = json.loads(out.read_text())
    assert {r["mechanism"] for r in payload["results"]} == set(mechanisms(load_policy(POLICY)))
    for r in payload["results"]:
        assert {"claimed_epsilon", "epsilon_lower_bound", "trials", "passed"} <= set(r)
        assert r["trials"] == 2000


def test_verdict_wants_honest_mechanisms_passed_and_broken_ones_caught():
    def result(name: str, eps_lb: float) -> calibration.CalibrationResult:
        return calibration.CalibrationResult(
            name, "laplace", 1.0, 1.0, 10, 1.0, 0.0, eps_lb, 0.5, 0.0, 0.0
        )

    honest_ok, honest_bad = result("cohort_sizes", 0.5), result("cohort_sizes", 1.5)
    caught, missed = (
        result(calibration.BROKEN + "cohort_sizes", 1.5),
        result(calibration.BROKEN + "x", 0.5),
    )
    assert calibration.verdict([honest_ok, caught]) == []
    assert calibration.verdict([honest_bad, missed]) == [
        "cohort_sizes: lower bound above the claim",
        f"{calibration.BROKEN}x: not caught",
    ]
