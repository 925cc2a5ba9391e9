"""The measurement registry: what a release does with a measurement derives from
measurements.REGISTRY, so a measurement added there alone (no other module edited) is
reserved in the ledger, released through the guard with OpenDP noise, audited end to end and
reported. Also: the budget split is checked against the registry, naming the key at fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from cohort_pipeline.logic import reports
from cohort_pipeline.policy import PolicyError, parse_policy
from cohort_pipeline.privacy import guard, measurements
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import MeasurementSpec
from cohort_pipeline.privacy.release import budget_cap
from cohort_pipeline.storage import warehouse
from cohort_pipeline.tools import end_to_end_audit as e2e
from cohort_pipeline_tests.conftest import POLICY, RELEASE_DATE

DUMMY = "dummy_sessions"
WHAT = "sessions per cohort (a test's measurement)"
HONEST_ALPHA = 1e-4  # as test_end_to_end_audit: keep false alarms rare


def _release_sessions(totals, inputs, policy, mechs) -> pd.DataFrame:
    """Sessions per full cohort key over the public key set. A user is in one cohort and has
    at most bounds.max_sessions sessions (clamped in bounding.py): L1 = L2 = max_sessions."""
    exact = totals.groupby("cohort_key")["sessions"].sum()
    exact = exact.reindex(policy.cohort_keys(), fill_value=0.0)
    return pd.DataFrame(
        {"cohort_key": exact.index, "noisy_sessions": mechs[DUMMY](exact.to_numpy())}
    )


@pytest.fixture
def policy(monkeypatch):
    """The sample policy with 10% of the budget moved to DUMMY, registered for this test."""
    spec = MeasurementSpec(
        DUMMY,
        DUMMY,
        "gaussian",
        l2=lambda p: float(p.max_sessions),
        l1=lambda p: float(p.max_sessions),
        what=WHAT,
        source=warehouse.COHORT_TOTALS,
        release=_release_sessions,
    )
    monkeypatch.setitem(measurements.REGISTRY, DUMMY, spec)
    raw = yaml.safe_load(POLICY.read_text())
    split = raw["budget"]["split"]
    raw["budget"]["split"] = {k: 0.9 * v for k, v in split.items()} | {DUMMY: 0.1}
    return parse_policy(raw)


@pytest.fixture(scope="module")
def population():
    return e2e.base_population(parse_policy(yaml.safe_load(POLICY.read_text())), users=300)


def test_a_measurement_added_to_the_registry_alone_is_reserved_released_audited_reported(
    policy, population, tmp_path
):
    mech = measurements.mechanisms(policy)[DUMMY]
    assert mech.name == "gaussian" and mech.sensitivity == policy.max_sessions

    # Reserved: the ledger's reservation holds its row, charged at its mechanism's spend.
    ledger = Ledger(tmp_path / "ledger.duckdb")
    planned = measurements.planned_measurements(policy)
    ledger.reserve(
        RELEASE_DATE, planned, policy_hash=policy.hash, run_id="test", cap=budget_cap(policy)
    )
    rows = ledger.reservation(RELEASE_DATE)
    assert list(rows["asset"]) == [s.asset for s in measurements.REGISTRY.values()]
    mine = rows[rows["asset"] == DUMMY].iloc[0]
    assert (mine["mechanism"], mine["sensitivity"]) == ("gaussian", policy.max_sessions)
    assert mine["rho"] == pytest.approx(mech.spend.rho)

    # Released: admitted under that reservation, drawn once by OpenDP, stored, read back.
    tables = e2e.bounded(policy, population, population.events)
    inputs = measurements.Inputs(tables, catalog=population.catalog)
    admission = guard.admit(rows, DUMMY, RELEASE_DATE)
    store = e2e.MemoryDraws()

    def draw():
        return guard.draw_once(
            store,
            admission,
            DUMMY,
            lambda: measurements.release_measurement(DUMMY, inputs, policy),
            policy_hash=policy.hash,
            mechanism=mech,
        )

    (first, drawn), (again, drawn_again) = draw(), draw()
    assert drawn and not drawn_again  # a retry reads the stored draw
    pd.testing.assert_frame_equal(first, again)
    exact = tables["cohort_totals"].groupby("cohort_key")["sessions"].sum()
    exact = exact.reindex(policy.cohort_keys(), fill_value=0.0).to_numpy()
    noise = first["noisy_sessions"].to_numpy() - exact
    assert np.all(noise != 0) and np.all(np.abs(noise) < 6 * mech.std)

    # Audited: its claim is the reserved row, and its end-to-end arms (the real bounding SQL,
    # its release function, OpenDP noise) pass; the maximal user moves it by the sensitivity.
    assert DUMMY in measurements.audited()
    claim = e2e.claims(policy)[DUMMY]
    assert (claim.epsilon, claim.rho) == (mine["epsilon"], mine["rho"])
    results = e2e.run_audit(policy, {DUMMY: 1_000}, population, HONEST_ALPHA)
    assert {r.pair for r in results} == set(e2e.PAIRS)
    for r in results:
        assert r.measurement == DUMMY and r.passed, r
        assert r.distance <= mech.sensitivity * (1 + 1e-9)
    maximal = next(r for r in results if r.pair == "add maximal user")
    assert maximal.distance == pytest.approx(mech.sensitivity)

    # Reported: the audit report's measurement table names it and what it measured.
    text = reports.audit_markdown(
        release_date=RELEASE_DATE,
        policy=policy,
        measurements=rows,
        summary=measurements.budget_summary(ledger, policy, as_of=RELEASE_DATE),
        burn=reports.burn_down(ledger.rows(), budget_cap(policy), RELEASE_DATE),
        chart_src="budget_burndown.png",
        coarsened=pd.DataFrame(),
        provenance=pd.DataFrame(),
        code_version="test",
        git_commit=None,
        columns=reports.columns_read(policy, pd.Timestamp(RELEASE_DATE).date()),
    )
    table = text.split("## Measurements")[1].split("## Budget")[0]
    row = next(line for line in table.splitlines() if f"| {DUMMY} " in line)
    assert WHAT in row and "private.cohort_totals" in row and f"{mech.scale:.6g}" in row


def _with_split(split: dict):
    raw = yaml.safe_load(POLICY.read_text())
    raw["budget"]["split"] = split
    return parse_policy(raw)  # loads: the shares are positive and sum to 1


def test_the_split_must_name_exactly_the_registered_measurements():
    split = yaml.safe_load(POLICY.read_text())["budget"]["split"]
    unknown = _with_split({k: 0.9 * v for k, v in split.items()} | {"cohort_metric": 0.1})
    with pytest.raises(PolicyError, match="unknown policy key `budget.split.cohort_metric`"):
        measurements.planned_measurements(unknown)
    fewer = {k: v for k, v in split.items() if k != "experiment_report"}
    fewer["cohort_sizes"] += split["experiment_report"]
    missing = _with_split(fewer)
    with pytest.raises(PolicyError, match="`budget.split` .* missing experiment_report"):
        measurements.planned_measurements(missing)
    # A benchmark may measure fewer: mechanisms() calibrates those it names.
    assert list(measurements.mechanisms(missing)) == list(fewer)


def test_an_old_policy_naming_cohort_recommendations_is_told_the_new_key():
    raw = yaml.safe_load(POLICY.read_text())
    split = raw["budget"]["split"]
    split["cohort_recommendations"] = split.pop("item_popularity")
    with pytest.raises(PolicyError, match="`budget.split.cohort_recommendations` is now"):
        parse_policy(raw)
    with pytest.raises(PolicyError, match="`budget.split.item_popularity`"):
        parse_policy(raw)
