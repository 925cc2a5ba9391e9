"""The end-to-end audit: real events, real bounding SQL, real release functions, real OpenDP
noise, against the ledger's claims. It must pass the real code and catch a planted bug the
noise-calibration check cannot see (a bounding that no longer clamps `max_sessions`), or it
proves nothing. Few trials and a small population keep it in CI's budget."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy import bounding, measurements, release
from cohort_pipeline.tools import end_to_end_audit as e2e
from cohort_pipeline_tests.conftest import POLICY

POL = load_policy(POLICY)
HONEST_ALPHA = 1e-4  # the Laplace and the rho claims are tight: keep false alarms rare
TRIALS = {
    "cohort_sizes": 3_000,
    "cohort_metrics": 1_000,
    "cohort_category_affinity": 200,
    "item_popularity": 100,
}


@pytest.fixture(scope="module")
def population() -> e2e.Population:
    return e2e.base_population(POL, users=300)


def test_the_real_pipeline_passes_and_its_maximal_user_moves_every_vector_by_the_sensitivity(
    population,
):
    results = e2e.run_audit(POL, TRIALS, population, HONEST_ALPHA)
    claimed = e2e.claims(POL)
    assert {(r.measurement, r.pair) for r in results} == {
        (name, pair)
        for name in measurements.audited()
        for pair in ("add maximal user", "add user to emptied cohort", "remove heaviest user")
    } | {
        (name, f"{pair}, re-run")
        for name in ("cohort_sizes", "cohort_metrics")
        for pair in ("add maximal user", "add user to emptied cohort", "remove heaviest user")
    }
    for r in results:
        assert r.passed, r
        assert r.trials == TRIALS[r.measurement] and r.coordinates >= 1
        assert r.claimed_epsilon == claimed[r.measurement].epsilon
        assert r.pld_epsilon <= r.claimed_epsilon + 1e-4  # PLD's discretization rounds up
    mechs = measurements.mechanisms(POL)
    for r in results:
        if r.pair.endswith("re-run"):
            assert r.coordinates % (1 + e2e.RERUNS) == 0 and r.distance is None
        if r.pair == "add maximal user":
            assert math.isclose(r.distance, mechs[r.measurement].sensitivity, rel_tol=1e-9), r


def test_the_band_edge_user_is_alone_in_their_cohort_and_on_its_edges(population):
    arms = {(a.measurement, a.name): a for a in e2e.mechanism_arms(POL, population)}
    sizes = arms["cohort_sizes", "add user to emptied cohort"]
    assert [list(x) for x in sizes.exact] == [[0.0], [1.0]]  # one full key, empty in D
    # One session fewer or more moves them to a neighbouring engagement band.
    user = e2e.band_edge_user(POL, "mid|none|mobile", "i00001")
    engagement = next(d for d in POL.dimensions if d.name == "engagement")
    assert user["session_id"].nunique() == engagement.edges[0]


def test_an_unclamped_max_sessions_is_caught(population, monkeypatch):
    """The bug the noise-calibration check passes: its mechanisms are right, the vector they
    get is not. The maximal user's sessions then move the metrics ~10x their sensitivity."""
    clamped = bounding.user_profiles_sql

    def unclamped(policy, release_date, events):
        sql = clamped(policy, release_date, events)
        clamp = f"least(p.n_sessions, {policy.max_sessions})"
        assert clamp in sql
        return sql.replace(clamp, "p.n_sessions")

    monkeypatch.setattr(bounding, "user_profiles_sql", unclamped)
    results = e2e.run_audit(POL, {"cohort_metrics": 1_000}, population, alpha=0.01)
    failed = [r for r in results if not r.passed]
    assert "add maximal user" in {r.pair for r in failed}
    # The bug moves the heaviest user's vector past the sensitivity too (~3x), so that pair
    # may be caught as well, and each re-run arm sees its pair's vectors. A pair the bug
    # leaves within the sensitivity must not be flagged.
    distance = {r.pair: r.distance for r in results if r.distance is not None}
    for r in failed:
        assert distance[r.pair.removesuffix(", re-run")] > release.METRICS_SENSITIVITY, r
    caught = [r for r in failed if r.pair == "add maximal user"]
    assert caught[0].epsilon_lower_bound > caught[0].claimed_epsilon
    assert caught[0].rho_lower_bound > caught[0].claimed_rho
    assert caught[0].distance > 5 * release.METRICS_SENSITIVITY


def test_a_black_box_arm_needs_only_sample(population):
    """The hook for further paths (e.g. a re-run with an opt-out in between): an arm with no
    known direction has it estimated on the selection half."""

    class Replayed:
        measurement, name, direction = "cohort_sizes", "replayed", None

        def sample(self, world, n):
            return measurements.mechanisms(POL)["cohort_sizes"]([float(world) * 40.0] * n).reshape(
                n, 1
            )  # far beyond the sensitivity: must be flagged

    claim = e2e.claims(POL)["cohort_sizes"]
    result = e2e.audit_arm(Replayed(), claim, trials=2_000, alpha=0.01)
    assert result.distance is None and not result.passed


def _rerun_arm(population, measurement: str) -> e2e.RerunArm:
    arms = [a for a in e2e.mechanism_arms(POL, population) if a.name == "add maximal user"]
    (arm,) = [a for a in e2e.rerun_arms(arms) if a.measurement == measurement]
    return arm


def test_a_rerun_after_the_data_changed_returns_the_first_draw(population):
    """Each trial releases the date under a fresh reservation through guard.draw_once, then
    re-runs it RERUNS times on the other window: every run returns the stored draw."""
    arm = _rerun_arm(population, "cohort_metrics")
    k = len(arm.exact[0])
    for world in (0, 1):
        runs = arm.sample(world, 50).reshape(50, 1 + e2e.RERUNS, k)
        assert (runs == runs[:, :1]).all()
        assert len(np.unique(runs[:, 0], axis=0)) == 50  # a fresh draw per trial


def test_a_rerun_that_draws_again_is_caught(population, monkeypatch):
    """The planted bug: a store that forgets a draw once read, so every re-run of a released
    date draws again (on the changed data). The re-runs then compose, each moving against
    the first run, and the bound exceeds the single release's claim that the ledger made."""
    monkeypatch.setattr(e2e.MemoryDraws, "load", lambda self, m, r: self.frames.pop((m, r), None))
    # 40 re-runs: their composed loss is ~40x one release's, which few trials can show.
    arm = replace(_rerun_arm(population, "cohort_metrics"), reruns=40)
    runs = arm.sample(0, 5).reshape(5, 1 + arm.reruns, -1)
    assert not (runs == runs[:, :1]).all()

    class SuspectingRedraws:  # the attack that knows what a redraw does (no estimation noise)
        measurement, name, direction, sample = (
            arm.measurement,
            arm.name,
            arm.redraw_direction,
            arm.sample,
        )

    claim = e2e.claims(POL)["cohort_metrics"]
    result = e2e.audit_arm(SuspectingRedraws(), claim, trials=800, alpha=0.01)
    assert not result.passed and result.rho_lower_bound > claim.rho, result


def test_cli_prints_tables_and_json(tmp_path, capsys):
    out = tmp_path / "audit.json"
    code = e2e.main(
        ["--policy", str(POLICY), "--users", "300", "--trials", "100", "--workers", "1"]
        + ["--alpha", str(HONEST_ALPHA), "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "| measurement" in printed and "ε lower bound" in printed and "PLD ε" in printed
    payload = json.loads(out.read_text())
    assert [r["measurement"] for r in payload["per_measurement"]] == list(measurements.audited())
    assert len(payload["results"]) == 3 * (len(measurements.audited()) + len(e2e.RERUN_AUDITED))
    assert all(r["passed"] and r["trials"] == 100 for r in payload["results"])
