"""The private zone on disk: created 0700 / 0600 by the real code paths, and a more open
existing data folder is reported, never silently changed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from cohort_pipeline.definitions import all_assets, resources_for
from cohort_pipeline.resources import WarehouseResource
from cohort_pipeline.storage import optouts
from cohort_pipeline_tests.conftest import BOUNDED, END, run_release, write_policy

BIN = Path(sys.executable).parent


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask():
    previous = os.umask(0o022)  # what makes files 0644 unless the code says otherwise
    yield
    os.umask(previous)


def test_a_new_data_folder_and_its_private_files_are_closed_to_other_users(tmp_path):
    data = tmp_path / "new" / "data"
    made = subprocess.run(
        [str(BIN / "cohort-pipeline"), "--data-dir", str(data), "generate", "--users", "300",
         "--days", "30", "--end-date", END.isoformat()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr
    assert mode(data) == 0o700 and mode(data / "opt_outs.csv") == 0o600
    write_policy(data, **{"cohorts.min_size": 20})
    optouts.add(data / "opt_outs.csv", ["u-1"])
    assert mode(data / "opt_outs.csv") == 0o600

    spill = tmp_path / "spill"  # COHORT_PIPELINE_DUCKDB_TEMP_DIR, outside the data folder
    resources = resources_for(data)
    resources["warehouse"] = WarehouseResource(
        path=str(data / "warehouse.duckdb"), temp_directory=str(spill)
    )
    result = materialize(
        all_assets,
        selection=["catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments",
                   "privacy_budget_ledger", "cohort_sizes"],
        partition_key=END.isoformat(), resources=resources, raise_on_error=False,
    )  # fmt: skip
    assert result.success
    assert mode(data / "warehouse.duckdb") == 0o600
    assert mode(data / "ledger.duckdb") == 0o600
    assert mode(spill) == 0o700
    assert mode(data / "opt_outs.csv.lock") == 0o600


def test_an_existing_open_data_folder_is_reported_not_changed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    write_policy(data)
    listed = subprocess.run(
        [str(BIN / "cohort-pipeline"), "--data-dir", str(data), "opt-out", "list"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert f"data folder {data} is open to other local users (mode 0755)" in listed.stderr
    assert f"chmod 700 {data}" in listed.stderr
    assert mode(data) == 0o755  # the user's folder: reported, not changed

    instance = DagsterInstance.ephemeral()
    result = run_release(data, instance=instance, selection=["opt_outs"])
    assert result.success
    logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any(f"data folder {data} is open to other local users" in m for m in logged)

    os.chmod(data, 0o700)
    instance = DagsterInstance.ephemeral()
    result = run_release(data, instance=instance, selection=["opt_outs"])
    logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert not any("open to other local users" in m for m in logged)
