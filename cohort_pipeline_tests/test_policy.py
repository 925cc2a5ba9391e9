"""Invalid or dangerous policies: rejected before any data is read, naming the key.

A cap below one release is the exception by design (a valid policy whose budget admits
nothing): it loads, and the blocking check `budget_within_limit` refuses with that reason.
Changing the policy mid-window keeps past spend counted.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import duckdb
import pytest
import yaml

from cohort_pipeline.policy import PolicyError, load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import (
    budget_problem,
    release_spend,
    yearly_releases,
    yearly_spend,
)
from cohort_pipeline_tests.conftest import (
    END,
    POLICY,
    RELEASE_DATE,
    check_results,
    make_data_dir,
    run_release,
    write_policy,
)
from cohort_pipeline_tests.release_procs import cap_for_releases

UP_TO_LEDGER = "*privacy_budget_ledger"

BAD = [
    ({"budget.epsilon_per_release": 0}, "budget.epsilon_per_release"),
    ({"budget.epsilon_per_release": -1.0}, "budget.epsilon_per_release"),
    ({"budget.epsilon_per_release": float("nan")}, "budget.epsilon_per_release"),
    ({"budget.epsilon_per_release": "1.0"}, "budget.epsilon_per_release"),
    ({"budget.epsilon_cap": 0}, "budget.epsilon_cap"),
    ({"budget.delta": 0.5}, "budget.delta"),
    ({"budget.composition": "advanced"}, "budget.composition"),
    ({"budget.split.cohort_sizes": 0.9}, "budget.split"),
    ({"budget.window_days": 0}, "budget.window_days"),
    ({"budget.horizon_days": 0}, "budget.horizon_days"),
    ({"budget.horizon_days": 36.5}, "budget.horizon_days"),
    ({"budget.epsilon_horizon_cap": 0}, "budget.epsilon_horizon_cap"),
    ({"budget.delta_cap": 1e-7}, "budget.delta_cap"),  # below budget.delta
    ({"budget.delta_cap": 0.01}, "budget.delta_cap"),
    ({"budget.composition": "pld"}, "budget.composition"),
    ({"cohorts.min_size": 5}, "cohorts.min_size"),
    ({"cohorts.min_size": True}, "cohorts.min_size"),
    ({"cohorts.dimensions.engagement.edges": [12, 4]}, "cohorts.dimensions.engagement.edges"),
    ({"cohorts.dimensions.engagement.edges": [4, 4]}, "cohorts.dimensions.engagement.edges"),
    ({"cohorts.dimensions.recency.edges": [0]}, "cohorts.dimensions.recency.edges"),
    (
        {"cohorts.dimensions.engagement.labels": ["low", "high"]},
        "cohorts.dimensions.engagement.edges",
    ),
    (
        {"cohorts.dimensions.device.groups": {"all": ["mobile", "tablet", "desktop"]}},
        "cohorts.dimensions.device.groups",
    ),
    ({"cohorts.dimensions.engagement.labelz": ["x"]}, "cohorts.dimensions.engagement.labelz"),
    # A dimension reads a known per-user quantity or event column, and only one.
    (
        {
            "cohorts.dimensions.tenure": {
                "quantity": "account_age",
                "edges": [9],
                "labels": ["a", "b"],
            }
        },
        "cohorts.dimensions.tenure.quantity",
    ),
    (
        {"cohorts.dimensions.country": {"column": "country", "groups": {"eu": ["de"]}}},
        "cohorts.dimensions.country.column",
    ),
    ({"cohorts.dimensions.engagement.column": "device_type"}, "cohorts.dimensions.engagement"),
    ({"cohorts.dimensions.device.quantity": None}, "cohorts.dimensions.device"),
    ({"cohorts.dimensions.recency.none_label": None}, "cohorts.dimensions.recency.none_label"),
    ({"cohorts.dimensions.recency.none_label": "recent"}, "cohorts.dimensions.recency.none_label"),
    (
        {"cohorts.dimensions.engagement.none_label": "idle"},
        "cohorts.dimensions.engagement.none_label",
    ),
    ({"cohorts.dimensions.device.groups": {"all": "mobile"}}, "cohorts.dimensions.device.groups"),
    (
        {"cohorts.dimensions.members": {"quantity": "session_count", "edges": [], "labels": ["a"]}},
        "cohorts.dimensions.members",
    ),
    (
        {"cohorts.dimensions.Big": {"quantity": "session_count", "edges": [], "labels": ["a"]}},
        "cohorts.dimensions.Big",
    ),
    (
        {"cohorts.dimensions.extra": {"quantity": "session_count", "edges": [], "labels": ["a"]}},
        "cohorts.coarsening_order",
    ),
    ({"cohorts.dimensions": {}}, "cohorts.dimensions"),
    ({"budget.epsilon_per_releas": 1.0}, "budget.epsilon_per_releas"),
    ({"budgett": {}}, "budgett"),
    ({"bounds.session_duration_s": [100, 10]}, "bounds.session_duration_s"),
    ({"bounds.category_l2_norm": 0}, "bounds.category_l2_norm"),
    ({"release.outcome_days": 28}, "release.outcome_days"),
    ({"release.every_days": 0}, "release.every_days"),
    ({"release.every_days": 29}, "release.every_days"),  # beyond one window
    ({"release.every_days": 1.5}, "release.every_days"),
]


def _write(tmp_path, overrides: dict):
    raw = yaml.safe_load(POLICY.read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("overrides, key", BAD, ids=[k for _, k in BAD])
def test_bad_policy_is_rejected_naming_the_key(tmp_path, overrides, key):
    path = _write(tmp_path, overrides)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert f"`{key}`" in str(err.value) and str(path) in str(err.value)


def test_a_key_given_twice_is_rejected(tmp_path):
    text = POLICY.read_text().replace(
        "  epsilon_per_release: 1.0\n", "  epsilon_per_release: 1.0\n  epsilon_per_release: 50\n"
    )
    assert text.count("epsilon_per_release:") == 2
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="`epsilon_per_release` appears twice"):
        load_policy(path)


def test_a_bad_policy_stops_the_release_before_any_data_is_read(tmp_path):
    data = make_data_dir(tmp_path / "data", users=300)
    write_policy(data, **{"cohorts.min_size": 3})
    result = run_release(data)
    assert not result.success
    failures = [
        _messages(e.event_specific_data.error) for e in result.all_events if e.is_step_failure
    ]
    assert failures and all("`cohorts.min_size`" in f for f in failures)
    assert not (data / "ledger.duckdb").exists()
    warehouse = data / "warehouse.duckdb"
    if warehouse.exists():  # nothing from the data folder reached it
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            tables = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        finally:
            con.close()
        assert tables == []


def _messages(error) -> str:
    """An error and its causes, as Dagster recorded them."""
    return "" if error is None else error.message + _messages(error.cause)


@pytest.fixture(scope="module")
def budget_data(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("budget") / "data", users=1_000, **{"cohorts.min_size": 20}
    )


def test_a_cap_below_one_release_loads_but_the_budget_check_refuses(budget_data):
    policy_path = write_policy(budget_data, **{"cohorts.min_size": 20, "budget.epsilon_cap": 0.5})
    policy = load_policy(policy_path)  # a valid policy: its budget just admits nothing
    assert budget_problem(policy).startswith("budget.epsilon_cap (0.5) is below one release's")
    assert budget_problem(load_policy(POLICY)) is None
    horizon = dataclasses.replace(load_policy(POLICY), epsilon_horizon_cap=0.5)
    assert budget_problem(horizon).startswith("budget.epsilon_horizon_cap (0.5)")

    result = run_release(budget_data, selection=UP_TO_LEDGER)
    assert not result.success and check_results(result)["budget_within_limit"] is False
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key.name == "budget_within_limit"
    ]
    assert evaluation.metadata["reason"].value == budget_problem(policy)
    assert Ledger(budget_data / "ledger.duckdb").rows().empty  # nothing spent


def test_changing_the_policy_mid_window_keeps_past_spend_counted(budget_data):
    one = cap_for_releases(load_policy(POLICY), 1)
    write_policy(budget_data, **{"cohorts.min_size": 20, "budget.epsilon_cap": one})
    first = run_release(budget_data, selection=UP_TO_LEDGER)
    assert check_results(first)["budget_within_limit"] is True

    # a new policy (different hash, same cap): yesterday's spend still fills the window
    changed = write_policy(
        budget_data, **{"cohorts.min_size": 20, "budget.epsilon_cap": one, "ranking.top_n": 5}
    )
    assert (
        load_policy(changed).hash
        != Ledger(budget_data / "ledger.duckdb").rows()["policy_hash"].iloc[0]
    )
    day_before = (END - timedelta(days=1)).isoformat()
    second = run_release(budget_data, partition=day_before, selection=UP_TO_LEDGER)
    assert check_results(second)["budget_within_limit"] is False
    rows = Ledger(budget_data / "ledger.duckdb").rows()
    assert {d.isoformat() for d in rows["release_date"].dt.date} == {RELEASE_DATE}


def test_every_days_defaults_to_daily_and_keeps_the_hash(tmp_path):
    default = load_policy(POLICY)
    assert default.every_days == 1
    assert all(default.is_release_day(default.partitions_start + timedelta(days=n))
               for n in range(10))  # fmt: skip
    assert load_policy(_write(tmp_path, {})).hash == default.hash


def test_every_days_sets_release_days_and_the_yearly_projection(tmp_path):
    weekly = load_policy(_write(tmp_path, {"release.every_days": 7}))
    start = weekly.partitions_start
    assert [n for n in range(15) if weekly.is_release_day(start + timedelta(days=n))] == [0, 7, 14]
    assert yearly_releases(weekly) == 56  # (365 + 28 - 1) / 7 release dates read a year
    assert yearly_spend(weekly) == release_spend(weekly, 56)
    assert yearly_spend(weekly)[0] < yearly_spend(load_policy(POLICY))[0] / 2


def test_the_notice_states_the_yearly_figure_of_the_cadence(tmp_path):
    from cohort_pipeline.logic.reports import notice_markdown

    weekly = load_policy(_write(tmp_path, {"release.every_days": 7}))
    text = notice_markdown(weekly)
    assert (
        f"epsilon = {yearly_spend(weekly)[0]:.3g} (at delta = 1e-06) if we release every 7 days"
        in text
    )
    assert "if we release every day." in notice_markdown(load_policy(POLICY))
