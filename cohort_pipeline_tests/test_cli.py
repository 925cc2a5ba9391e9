"""The documented commands, run as a user runs them: subprocesses on a real data folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

from cohort_pipeline_tests.conftest import RELEASE_DATE, write_policy

BIN = Path(sys.executable).parent


def run(args, data_dir, home):
    env = {**os.environ, "COHORT_PIPELINE_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(home)}
    env.pop("COHORT_PIPELINE_POLICY", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def materialize(data_dir, home):
    return run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "cohort_pipeline.definitions",
            "--select",
            "*",
            "--partition",
            RELEASE_DATE,
        ],
        data_dir,
        home,
    )


def test_materialize_command_then_blocked_by_budget_and_ledger_show(small_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = materialize(small_dir, home)
    assert done.returncode == 0, done.stderr[-3000:]

    shown = run([str(BIN / "cohort-pipeline"), "ledger", "show", "--json"], small_dir, home)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert {"epsilon_cap", "window_days", "epsilon_spent", "releases"} <= set(summary)
    assert [r["release_date"] for r in summary["releases"]] == [RELEASE_DATE]
    assert {"release_date", "epsilon", "delta"} <= set(summary["releases"][0])
    assert 0 < summary["epsilon_spent"] <= summary["epsilon_cap"]

    # The same release under a policy whose cap is below what is already spent.
    write_policy(
        small_dir, **{"cohorts.min_size": 50, "budget.epsilon_cap": 0.5, "budget.window_days": 7}
    )
    blocked = materialize(small_dir, home)
    assert blocked.returncode != 0
    assert "budget_within_limit" in blocked.stdout + blocked.stderr
    after = json.loads(
        run([str(BIN / "cohort-pipeline"), "ledger", "show", "--json"], small_dir, home).stdout
    )
    assert len(after["releases"]) == 1  # nothing more was spent

    verified = run([str(BIN / "cohort-pipeline"), "ledger", "verify"], small_dir, home)
    assert verified.returncode == 0 and "verified" in verified.stdout


def test_generate_and_latest_date(tmp_path):
    data = tmp_path / "d"
    made = run(
        [
            str(BIN / "cohort-pipeline"),
            "--data-dir",
            str(data),
            "generate",
            "--users",
            "300",
            "--days",
            "3",
            "--end-date",
            "2026-01-05",
        ],
        data,
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "day 3/3" in made.stderr  # progress is shown
    latest = run(
        [str(BIN / "cohort-pipeline"), "--data-dir", str(data), "latest-date"], data, tmp_path
    )
    assert latest.stdout.strip() == "2026-01-05"


def test_errors_are_one_clear_line(tmp_path):
    missing = run(
        [str(BIN / "cohort-pipeline"), "--data-dir", str(tmp_path / "nowhere"), "latest-date"],
        tmp_path,
        tmp_path,
    )
    assert missing.returncode == 2
    assert "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_ledger_show_json_keys_and_yearly_projection_before_any_spend(tmp_path):
    from cohort_pipeline.policy import load_policy
    from cohort_pipeline.privacy.release import yearly_spend

    data = tmp_path / "d"
    data.mkdir()
    write_policy(data)
    shown = run([str(BIN / "cohort-pipeline"), "ledger", "show", "--json"], data, tmp_path)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    keys = ("epsilon_spent", "epsilon_remaining", "horizon_epsilon", "horizon_days")
    assert {*keys, "yearly_epsilon", "accountant"} <= set(summary)
    assert summary["epsilon_spent"] == summary["horizon_epsilon"] == 0.0
    assert summary["horizon_days"] == 365
    # projected from the policy before any spend: 392 daily releases under PLD
    yearly = yearly_spend(load_policy(data / "policy.yaml"))[0]
    assert summary["yearly_epsilon"] == yearly and 23 < yearly < 24
    plain = run([str(BIN / "cohort-pipeline"), "ledger", "show"], data, tmp_path).stdout
    assert f"someone active every day for a year: ε = {yearly:.4g} at δ = 1e-06" in plain
