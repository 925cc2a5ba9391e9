"""Governance on real releases: the audit report, the privacy notice, the scorecard with its
drift and density checks, the drift sensor's ranking refresh, and the ledger CLI.

One module fixture runs two consecutive releases in one Dagster instance; the second under a
re-banded policy (engagement edges moved), a real population shift the drift check must call
a breach.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    build_sensor_context,
    evaluate_automation_conditions,
)

from cohort_pipeline.definitions import defs
from cohort_pipeline.defs.sensors import drift_ranking_refresh
from cohort_pipeline.defs.tables import TABLES, table_columns
from cohort_pipeline.logic import reports
from cohort_pipeline.logic.alerts import PSI_BREACH, read_alerts
from cohort_pipeline.policy import load_policy, parse_policy
from cohort_pipeline.privacy.ledger import BudgetCap, Ledger
from cohort_pipeline.privacy.measurements import planned_measurements, release_spend, yearly_spend
from cohort_pipeline.privacy.release import budget_cap, exact_cohort_counts
from cohort_pipeline.tools.cli import main
from cohort_pipeline_tests.conftest import (
    BOUNDED,
    POLICY,
    RELEASE_DATE,
    check_results,
    make_data_dir,
    run_release,
    write_policy,
)

PREVIOUS_DATE = (dt.date.fromisoformat(RELEASE_DATE) - dt.timedelta(days=1)).isoformat()
K = 50
BUDGET = {"budget.epsilon_per_release": 1.0, "budget.epsilon_cap": 8.0}  # 2 releases: < 80%
PLOTTED = (
    "epsilon_remaining",
    "budget_used",
    "min_noisy_size_over_k",
    "cohort_share_psi",
    "median_conversion_rate_accuracy_95",
    "affinity_psi",
)
RESERVATION = [
    "catalog",
    "opt_outs",
    "raw_events",
    *BOUNDED,
    "cohort_assignments",
    "privacy_budget_ledger",
]
REFRESH = [AssetKey(k) for k in ("ranking_weights", "cohort_recommendations", "item_popularity")]


def _scorecard(result) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == AssetKey("privacy_scorecard"):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError("privacy_scorecard was not materialized")


def _sensor_requests(instance) -> list:
    context = build_sensor_context(instance=instance, definitions=defs)
    return drift_ranking_refresh.evaluate_tick(context).run_requests


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    data = make_data_dir(
        tmp_path_factory.mktemp("governance") / "data", **{"cohorts.min_size": K, **BUDGET}
    )
    instance = DagsterInstance.ephemeral()
    first = run_release(data, PREVIOUS_DATE, instance=instance)
    requests_after_first = _sensor_requests(instance)
    # Re-band engagement: most users change cohort, so released cohort shares shift.
    write_policy(
        data, **{"cohorts.min_size": K, **BUDGET, "cohorts.dimensions.engagement.edges": [2, 6]}
    )
    second = run_release(data, RELEASE_DATE, instance=instance)
    return SimpleNamespace(
        data=data,
        instance=instance,
        first=first,
        second=second,
        requests_after_first=requests_after_first,
    )


def test_both_releases_pass_their_blocking_and_budget_checks(releases):
    for result in (releases.first, releases.second):
        checks = check_results(result)
        assert result.success, checks
        for name in ("budget_within_limit", "min_cohort_size"):
            assert checks[name] is True
        # At most two releases of epsilon 1 against a cap of 8: far below 80%.
        assert checks["budget_below_80_percent"] and checks["budget_below_95_percent"]


def test_audit_report_holds_policy_measurements_budget_and_provenance(releases):
    data, day = releases.data, RELEASE_DATE
    text = (data / "exports" / day / "audit_report.md").read_text()
    policy = load_policy(data / "policy.yaml")
    assert policy.hash in text
    for m in planned_measurements(policy):
        row = next(line for line in text.splitlines() if f"| {m.asset} " in line)
        assert (
            m.mechanism in row and f"{m.noise_scale:.6g}" in row and f"{m.sensitivity:.6g}" in row
        )
    ledger_rows = Ledger(data / "ledger.duckdb").rows()
    release_rows = ledger_rows[ledger_rows["release_date"].astype(str).str[:10] == day]
    assert set(release_rows["run_id"]) == {releases.second.run_id}
    assert f"reserved by run `{releases.second.run_id}`" in text
    # Provenance names the run that produced every upstream asset of this partition.
    provenance = text.split("## Provenance")[1].split("## Data minimization")[0]
    for asset in (
        "raw_events",
        "cohort_assignments",
        "privacy_budget_ledger",
        "cohort_sizes",
        "cohort_recommendations",
    ):
        assert re.search(rf"\| {asset}\s+\| {releases.second.run_id} ", provenance), asset
    # Remaining budget is the ledger's own figure; the chart is a real PNG beside the report.
    summary = Ledger(data / "ledger.duckdb").summary(budget_cap(policy), as_of=day)
    assert summary["releases"] and f"remaining **{summary['epsilon_remaining']:.6g}**" in text
    png = (data / "exports" / day / "budget_burndown.png").read_bytes()
    assert (
        png.startswith(b"\x89PNG\r\n\x1a\n") and "![budget burn-down](budget_burndown.png)" in text
    )
    assert "read by no measurement: revenue" in text
    assert f"someone active every day for a year: ε = {yearly_spend(policy)[0]:.4g}" in text
    assert f"horizon containing {day}, as recorded: ε = {summary['horizon_epsilon']:.4g}" in text


def test_audit_report_renders_chart_inline_for_the_ui(releases):
    events = releases.second.get_asset_materialization_events()
    audit = next(e for e in events if e.asset_key == AssetKey("audit_report"))
    markdown = audit.materialization.metadata["audit_report"].value
    assert "![budget burn-down](data:image/png;base64,iVBORw0KGgo" in markdown


def test_audit_report_leaks_no_user_id_nor_exact_count(releases):
    data = releases.data
    text = (data / "exports" / RELEASE_DATE / "audit_report.md").read_text()
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        assignments = con.execute(
            "SELECT user_id, cohort_key FROM private.cohort_assignments WHERE release_date = ?",
            [RELEASE_DATE],
        ).df()
        rows = con.execute(
            "SELECT count(*) FROM private.raw_events WHERE release_date = ?", [RELEASE_DATE]
        ).fetchall()[0][0]
    assert not any(uid in text for uid in assignments["user_id"].head(500))
    # Run metadata (storage ids, timestamps) is not data; every other number must not be an
    # exact cohort count (or an exact sum of merged cohorts) or the private row count.
    body = text.split("## Provenance")[0] + text.split("## Data minimization")[1]
    # The policy file's path is not data; its digits (pytest-133/...) are pytest's counter.
    body = body.replace(str(data.parent), "<tmp>")
    exact = exact_cohort_counts(assignments.assign(users=1), load_policy(data / "policy.yaml"))
    sizes = (
        duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
        .execute("SELECT members FROM release.cohort_sizes WHERE release_date = ?", [RELEASE_DATE])
        .fetchall()
    )
    private = {int(rows)} | {int(sum(exact[m] for m in ms.split(";"))) for (ms,) in sizes}
    numbers = {int(n) for n in re.findall(r"(?<![\w.])(\d+)(?![\w.])", body)}
    # The policy's constants are public (k = 50 may equal a cohort's exact count by chance).
    public = {
        int(n) for n in re.findall(r"(?<![\w.])(\d+)(?![\w.])", (data / "policy.yaml").read_text())
    }
    assert not (private - set(range(0, 40))) & (numbers - public)


def test_scorecard_reports_numbers_and_drift_breach(releases):
    first, second = _scorecard(releases.first), _scorecard(releases.second)
    assert first["previous_release"] == "none" and first["drift_psi"] == 0.0
    assert second["previous_release"] == PREVIOUS_DATE
    for card in (first, second):  # numeric, so the UI plots them across releases
        for key in PLOTTED:
            assert isinstance(card[key], float), key
    assert second["epsilon_remaining"] < first["epsilon_remaining"]
    assert second["horizon_epsilon"] > first["horizon_epsilon"] > 0
    assert "someone active every day for a year: ε = " in second["scorecard"]
    assert second["cohort_share_psi"] >= PSI_BREACH and second["drift_level"] == "breach"
    drift = {e.asset_check_key.name: e for e in releases.second.get_asset_check_evaluations()}
    assert drift["release_drift"].passed is False
    assert drift["release_drift"].severity.value == "ERROR"
    assert any(
        a["kind"] == "drift" and a["level"] == "critical" for a in read_alerts(releases.data)
    )


def test_drift_breach_requests_a_ranking_refresh_of_that_release(releases):
    assert releases.requests_after_first == []  # first release: nothing to drift from
    requests = _sensor_requests(releases.instance)
    assert len(requests) == 1 and requests[0].partition_key == RELEASE_DATE
    job = defs.resolve_job_def(drift_ranking_refresh.job_name)
    assert set(job.asset_layer.executable_asset_keys) == set(REFRESH)
    # The refresh itself: post-processing plus the stored DP release; nothing is spent.
    before = len(Ledger(releases.data / "ledger.duckdb").rows())
    refresh = run_release(releases.data, RELEASE_DATE, releases.instance, selection=REFRESH)
    assert refresh.success
    assert len(Ledger(releases.data / "ledger.duckdb").rows()) == before


def test_privacy_notice_is_generated_from_the_policy(releases):
    exports = releases.data / "exports"
    html = (exports / "privacy_notice.html").read_text()
    markdown = (exports / "privacy_notice.md").read_text()
    policy = load_policy(releases.data / "policy.yaml")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html
    for text in (html, markdown):
        assert f"at least about {policy.min_size} people" in text
        assert f"epsilon = {policy.epsilon_per_release:g}" in text
        assert f"any {policy.window_days} days" in text
        yearly = yearly_spend(policy)[0]
        assert f"Someone active every day for a year: epsilon = {yearly:.3g}" in text
        assert f"epsilon = {policy.epsilon_horizon_cap:g}" in text
        assert "add up too" not in text  # zcdp: every figure is at the policy's delta
        assert "cohort-pipeline opt-out add" in text
        for label in (label for d in policy.dimensions for label in d.labels):
            assert label in text
    # A policy change changes the notice.
    raw = yaml.safe_load(POLICY.read_text())
    raw["cohorts"]["min_size"] = 321
    assert "at least about 321 people" in reports.notice_markdown(parse_policy(raw))
    # Under basic composition deltas add up, and the notice states their cap.
    raw["budget"]["composition"] = "basic"
    assert "their sum stays at or below 1e-05" in reports.notice_markdown(parse_policy(raw))


def test_ledger_cli_shows_and_verifies_then_catches_tampering(releases, tmp_path, capsys):
    copy = tmp_path / "data"
    copy.mkdir()
    shutil.copy(releases.data / "ledger.duckdb", copy / "ledger.duckdb")
    shutil.copy(releases.data / "policy.yaml", copy / "policy.yaml")
    assert main(["--data-dir", str(copy), "ledger", "show"]) == 0
    shown = capsys.readouterr().out
    assert "cohort_sizes" in shown and RELEASE_DATE in shown and "remaining" in shown
    yearly = yearly_spend(load_policy(copy / "policy.yaml"))
    assert f"someone active every day for a year: ε = {yearly[0]:.4g} at δ = 1e-06" in shown
    assert main(["--data-dir", str(copy), "ledger", "verify"]) == 0
    with duckdb.connect(str(copy / "ledger.duckdb")) as con:  # an edit that lowers a spend
        con.execute("UPDATE privacy_spend SET epsilon = epsilon / 2 WHERE seq = 2")
    capsys.readouterr()
    assert main(["--data-dir", str(copy), "ledger", "verify"]) == 1
    assert "seq 2: row_hash does not match" in capsys.readouterr().err


def test_automation_starts_dp_assets_only_after_blocking_checks_pass(small_dir):
    instance = DagsterInstance.ephemeral()
    # The automation tick as of the morning after the release date (its latest partition).
    tick_time = dt.datetime.combine(
        dt.date.fromisoformat(RELEASE_DATE) + dt.timedelta(days=1), dt.time(4), dt.UTC
    )

    def requested_after(policy_cap: float):
        write_policy(small_dir, **{"cohorts.min_size": K, "budget.epsilon_cap": policy_cap})
        result = run_release(small_dir, instance=instance, selection=RESERVATION)
        tick = evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=tick_time, cursor=state["cursor"]
        )
        state["cursor"] = tick.cursor
        return check_results(result)["budget_within_limit"], tick.get_requested_partitions(
            AssetKey("cohort_sizes")
        )

    state = {"cursor": evaluate_automation_conditions(defs, instance, None, tick_time).cursor}
    assert requested_after(0.5) == (False, set())  # blocked: cohort_sizes must not start
    assert requested_after(8.0) == (True, {RELEASE_DATE})


def test_coarsening_table_keeps_each_cohort_key_in_one_cell():
    policy = load_policy(POLICY)
    sizes = pd.DataFrame(
        {
            "cohort_key": ["low|recent|*", "mid|none|mobile"],
            "members": ["low|recent|mobile;low|recent|desktop", "mid|none|mobile"],
            "noisy_users": [250.5, 900.0],
        }
    )
    table = reports.md_table(reports.coarsened_cohorts(sizes, policy))
    rows = table.splitlines()[2:]
    assert len(rows) == 1  # only the merged cohort
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]
    reason = f"members' noisy sizes below k = {policy.min_size}"
    assert cells == [r"low\|recent\|*", "2", "device", "250.5", reason]


def _ledger_metadata(result) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == AssetKey("privacy_budget_ledger")
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_backfill_shows_the_enforced_figure_as_ledger_show_does(tmp_path, capsys):
    """Release the latest date, then the day before: the backfill's metadata shows the worst
    window containing it (both releases), the figure `ledger show` gives and the cap bounds."""
    data = make_data_dir(tmp_path / "data", users=1_000, **{"cohorts.min_size": 20})
    for day in (RELEASE_DATE, PREVIOUS_DATE):
        result = run_release(data, day, selection="*privacy_budget_ledger")
        assert check_results(result)["budget_within_limit"] is True
    shown = _ledger_metadata(result)
    assert (
        main(["--data-dir", str(data), "ledger", "show", "--json", "--as-of", PREVIOUS_DATE]) == 0
    )
    cli = yaml.safe_load(capsys.readouterr().out)
    policy = load_policy(data / "policy.yaml")
    two_releases = release_spend(policy, 2)[0]
    assert cli["epsilon_spent"] == pytest.approx(two_releases)
    assert shown["epsilon_spent_window"] == pytest.approx(cli["epsilon_spent"])
    assert shown["epsilon_remaining"] == pytest.approx(cli["epsilon_remaining"])
    assert shown["horizon_epsilon"] == pytest.approx(cli["horizon_epsilon"])
    assert cli["horizon_days"] == 365 and cli["yearly_epsilon"] == pytest.approx(
        yearly_spend(policy)[0]
    )
    [check] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key.name == "budget_within_limit"
    ]
    assert check.metadata["epsilon_spent"].value == pytest.approx(two_releases)


def test_burn_down_thresholds_sit_on_the_spent_scale():
    cap = BudgetCap(epsilon_cap=8.0, window_days=3, delta=1e-6, composition="basic")
    rows = pd.DataFrame(
        {
            "release_date": pd.to_datetime(["2026-11-27", "2026-11-28"]),
            "mechanism": ["laplace", "laplace"],
            "epsilon": [1.0, 1.0],
            "delta": [0.0, 0.0],
            "rho": [0.5, 0.5],
            "sensitivity": [1.0, 1.0],
            "noise_scale": [1.0, 1.0],
        }
    )
    burn = reports.burn_down(rows, cap, "2026-11-28")
    # each day's enforced figure: the worst 3-day window containing it holds both releases
    assert list(burn["epsilon_spent"]) == [2.0, 2.0, 2.0]
    ax = reports.burn_down_figure(burn, cap).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    # Alerts fire when 80% / 95% of the cap is spent: the lines sit at 6.4 and 7.6 on the
    # axis the spent line is drawn on, not at what would remain (1.6, 0.4).
    thresholds = sorted(
        line.get_ydata()[0] for label, line in lines.items() if "of the cap spent" in label
    )
    assert thresholds == pytest.approx([6.4, 7.6])
    assert list(lines["epsilon spent"].get_ydata()) == [2.0, 2.0, 2.0]
    assert list(lines["epsilon remaining"].get_ydata()) == [6.0, 6.0, 6.0]


def test_budget_status_shows_the_ledgers_current_figures(releases, capsys):
    events = releases.second.get_asset_materialization_events()
    status = next(e for e in events if e.asset_key == AssetKey("privacy_budget_status"))
    meta = {k: v.value for k, v in status.materialization.metadata.items()}
    assert main(["--data-dir", str(releases.data), "ledger", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert meta["epsilon_remaining"] == pytest.approx(shown["epsilon_remaining"])
    assert meta["epsilon_spent"] == pytest.approx(shown["epsilon_spent"])
    assert f"{shown['epsilon_remaining']:.4f} left" in meta["budget_left"]
    assert meta["epsilon_cap"] == "8"  # a constant: text, never a plotted number
    releases_table = meta["releases"]
    assert sorted(r.data["release_date"] for r in releases_table.records) == sorted(
        [PREVIOUS_DATE, RELEASE_DATE]
    )


def test_budget_status_refreshes_after_every_ledger_change(small_dir):
    instance = DagsterInstance.ephemeral()
    tick_time = dt.datetime.combine(
        dt.date.fromisoformat(RELEASE_DATE) + dt.timedelta(days=1), dt.time(4), dt.UTC
    )
    status = AssetKey("privacy_budget_status")
    cursor = evaluate_automation_conditions(defs, instance, None, tick_time).cursor

    def tick():
        nonlocal cursor
        result = evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=tick_time, cursor=cursor
        )
        cursor = result.cursor
        return result.get_num_requested(status) == 1

    assert run_release(small_dir, instance=instance, selection=RESERVATION).success
    assert tick(), "a new reservation makes the budget view stale"
    assert run_release(small_dir, None, instance=instance, selection=[status.path[0]]).success
    assert not tick(), "refreshed: nothing new in the ledger"
    assert run_release(small_dir, PREVIOUS_DATE, instance=instance, selection=RESERVATION).success
    assert tick(), "a backfilled date changes the budget too"


def test_release_tables_are_described_as_written(releases):
    # assets/tables.py describes every release table's columns for the UI: a column added,
    # renamed or dropped in a release table must be described there too.
    with duckdb.connect(str(releases.data / "warehouse.duckdb"), read_only=True) as con:
        written = {
            f"release.{name}": [c[0] for c in con.execute(f"DESCRIBE release.{name}").fetchall()]
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'release'"
            ).fetchall()
        }
    assert set(written) - {"release.experiment_results"} <= set(TABLES)
    for table, columns in written.items():
        assert columns == table_columns(table), table
    events = releases.second.get_asset_materialization_events()
    similarity = next(e for e in events if e.asset_key == AssetKey("cohort_similarity"))
    meta = similarity.materialization.metadata
    assert meta["dagster/table_name"].value == "warehouse.release.cohort_similarity"
    assert meta["dagster/row_count"].value == len(
        release_rows_of(releases.data, "cohort_similarity")
    )


def release_rows_of(data, table: str) -> pd.DataFrame:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(
            f"SELECT * FROM release.{table} WHERE release_date = ?", [RELEASE_DATE]
        ).df()
