"""The documented commands, run as a user runs them: subprocesses on a real data folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from cohort_pipeline_tests.conftest import BOUNDED, RELEASE_DATE, write_policy

BIN = Path(sys.executable).parent


def run(args, data_dir, home):
    env = {**os.environ, "COHORT_PIPELINE_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(home)}
    env.pop("COHORT_PIPELINE_POLICY", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


# Keeps the risk report quick inside the whole graph's run (its default 20,000 trials per
# world cost ~25 s of CPU; test_risk tests the report itself).
RISK_CONFIG = {"ops": {"privacy_risk_report": {"config": {"trials": 2000}}}}


def materialize(data_dir, home):
    """The README's whole-graph command, the risk report included."""
    return run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "cohort_pipeline.definitions",
         "--select", "*", "--partition", RELEASE_DATE, "--config-json", json.dumps(RISK_CONFIG)],
        data_dir, home,
    )  # fmt: skip


def release_job(data_dir, home):
    """`make release`'s command: a run of the daily_release job (no risk report)."""
    tags = {
        "dagster/partition": RELEASE_DATE,
        ".dagster/repository": "__repository__@cohort_pipeline",
    }
    return run(
        [str(BIN / "dagster"), "job", "execute", "-m", "cohort_pipeline.definitions",
         "-j", "daily_release", "--tags", json.dumps(tags)],
        data_dir, home,
    )  # fmt: skip


def test_materialize_command_then_the_release_command_blocked_by_budget_and_ledger_show(
    small_dir, tmp_path, capsys, monkeypatch
):
    """Both documented release commands, each on the outcome it adds: the whole graph's
    succeeds, the daily_release job's is refused by the budget (it runs no risk report)."""
    from cohort_pipeline.tools.cli import main

    monkeypatch.delenv("COHORT_PIPELINE_POLICY", raising=False)
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
    blocked = release_job(small_dir, home)
    assert blocked.returncode != 0
    assert "budget_within_limit" in blocked.stdout + blocked.stderr
    # The same entry point in process (the subprocess above already ran it as a user does).
    capsys.readouterr()
    assert main(["--data-dir", str(small_dir), "ledger", "show", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert len(after["releases"]) == 1  # nothing more was spent

    assert main(["--data-dir", str(small_dir), "ledger", "verify"]) == 0
    assert "verified" in capsys.readouterr().out


def test_generate_and_latest_date(tmp_path, capsys):
    from cohort_pipeline.tools.cli import main

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
    assert main(["--data-dir", str(data), "latest-date"]) == 0  # in process: one import less
    assert capsys.readouterr().out.strip() == "2026-01-05"


def test_errors_are_one_clear_line(tmp_path):
    missing = run(
        [str(BIN / "cohort-pipeline"), "--data-dir", str(tmp_path / "nowhere"), "latest-date"],
        tmp_path,
        tmp_path,
    )
    assert missing.returncode == 2
    assert "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_ledger_show_json_keys_and_yearly_projection_before_any_spend(
    tmp_path, capsys, monkeypatch
):
    from cohort_pipeline.policy import load_policy
    from cohort_pipeline.privacy.measurements import yearly_spend
    from cohort_pipeline.tools.cli import main

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
    monkeypatch.delenv("COHORT_PIPELINE_POLICY", raising=False)
    assert main(["--data-dir", str(data), "ledger", "show"]) == 0  # in process: one import less
    plain = capsys.readouterr().out
    assert f"someone active every day for a year: ε = {yearly:.4g} at δ = 1e-06" in plain


def test_a_policy_typo_keeps_the_code_location_loading_and_fails_the_run_naming_it(
    small_dir, tmp_path
):
    """The policy was read at import (the partitions' start), so one typo took the whole
    code location down, schedule and sensors included. It loads now; the run fails at its
    first step with the error that names the key."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (small_dir / "policy.yaml").read_text().replace("epsilon_cap:", "epsilon_capp:")
    )
    env = {**os.environ, "COHORT_PIPELINE_DATA_DIR": str(small_dir), "DAGSTER_HOME": str(tmp_path)}
    env["COHORT_PIPELINE_POLICY"] = str(broken)
    env.pop("COHORT_PIPELINE_PARTITIONS_START", None)
    loaded = subprocess.run(
        [sys.executable, "-c", "from cohort_pipeline.definitions import defs; "
         "repo = defs.get_repository_def(); "
         "print(len(repo.schedule_defs), len(repo.sensor_defs), repo.get_job('daily_release').name)"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    schedules, sensors, job = loaded.stdout.split()
    assert int(schedules) >= 1 and int(sensors) >= 1 and job == "daily_release"
    assert "budget.epsilon_capp" in loaded.stderr  # the load-time warning names it too

    failed = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "cohort_pipeline.definitions",
         "--select", "*", "--partition", RELEASE_DATE],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "PolicyError" in output and "unknown policy key `budget.epsilon_capp`" in output
    assert not (small_dir / "ledger.duckdb").exists()  # nothing was reserved


def cli(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_PIPELINE_")}
    return subprocess.run(
        [str(BIN / "cohort-pipeline"), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_subcommand_refuses_a_mistyped_data_dir_and_names_the_fix(
    tmp_path, capsys, monkeypatch
):
    """`opt-out add` created the mistyped folder and recorded the opt-out where no release
    reads it; `opt-out list` printed an empty list; `ledger show/verify` blamed the policy."""
    from cohort_pipeline.tools.cli import main

    data = tmp_path / "data"
    data.mkdir()
    write_policy(data)
    typo = tmp_path / "dta"
    monkeypatch.delenv("COHORT_PIPELINE_POLICY", raising=False)

    # As a user runs it (a subprocess), for the case that lost an opt-out.
    done = cli("--data-dir", str(typo), "opt-out", "add", "u1")
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert f"data folder {typo} does not exist" in line and "DataDirError" in line
    assert f"did you mean {data}?" in line and "--data-dir" in line
    assert not typo.exists()  # nothing was created

    # Every subcommand that reads a data folder, through the same entry point in process.
    for case in [
        ("opt-out", "remove", "u1"),
        ("opt-out", "list"),
        ("ledger", "show"),
        ("ledger", "show", "--json"),
        ("ledger", "verify"),
        ("latest-date",),
    ]:
        assert main(["--data-dir", str(typo), *case]) == 2, case
        out, err = capsys.readouterr()
        assert out == "", case
        assert f"data folder {typo} does not exist" in err and f"did you mean {data}?" in err
        assert "policy file" not in err, (case, err)
    assert not typo.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data-dir", str(empty), "opt-out", "add", "u1"]) == 2
    assert "holds neither events/ nor policy.yaml" in capsys.readouterr().err
    assert list(empty.iterdir()) == []

    # The right folder works, relative to where the command runs as well.
    monkeypatch.chdir(tmp_path)
    assert main(["--data-dir", "data", "opt-out", "add", "u1"]) == 0
    assert main(["--data-dir", "data", "opt-out", "list"]) == 0
    assert "u1" in capsys.readouterr().out


def test_logs_from_1997_release_once_the_partitions_reach_back(tmp_path):
    """Every 1997 row was quarantined ('before 2000-01-01') and the release failed at
    cohort_assignments ('private.user_profiles has no rows')."""
    from cohort_pipeline.tools.cli import main

    data = tmp_path / "data"
    made = main(["--data-dir", str(data), "generate", "--users", "300", "--days", "10",
                 "--end-date", "1997-11-28"])  # fmt: skip
    assert made == 0
    write_policy(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_PIPELINE_")}
    env.update(
        COHORT_PIPELINE_DATA_DIR=str(data),
        COHORT_PIPELINE_PARTITIONS_START="1997-11-01",
        DAGSTER_HOME=str(tmp_path),
    )
    done = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "cohort_pipeline.definitions",
         "--select", f"catalog,opt_outs,raw_events,{','.join(BOUNDED)},cohort_assignments",
         "--partition", "1997-11-28"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        (accepted,) = con.execute("SELECT sum(accepted) FROM private.ingest_report").fetchall()[0]
        (quarantined,) = con.execute(
            "SELECT count(*) FROM private.rejected_events WHERE reason LIKE 'event_time before%'"
        ).fetchall()[0]
        (assigned,) = con.execute("SELECT count(*) FROM private.cohort_assignments").fetchall()[0]
    assert accepted > 0 and quarantined == 0 and assigned > 0
