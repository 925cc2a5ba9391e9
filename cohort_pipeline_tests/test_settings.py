"""Settings: every environment variable is read in settings.py alone, checked there (a bad
value names its variable), documented in the README's table, and one settings object gives
the code location both its partitions and its resources."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

import cohort_pipeline
from cohort_pipeline.definitions import resources_for
from cohort_pipeline.defs.common import FALLBACK_PARTITIONS_START, partitions_start
from cohort_pipeline.settings import VARIABLES, DataFolder, Settings, SettingsError
from cohort_pipeline.tools.cli import main as cli_main
from cohort_pipeline_tests.conftest import write_policy

PACKAGE = Path(cohort_pipeline.__file__).parent
REPO = PACKAGE.parent
ENV_READERS = {"environ", "getenv", "getenvb"}


def environment_reads(source: str) -> list[int]:
    """Lines of `source` that touch the process environment: os.environ (any use, including
    .get and subscripts), os.getenv, or `from os import environ/getenv`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ENV_READERS:
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for alias in node.names if alias.name in ENV_READERS]
    return lines


def test_the_scan_finds_every_way_of_reading_the_environment():
    for source in (
        "import os\nx = os.environ.get('A')",
        "import os\nx = os.environ['A']",
        "import os\nx = os.getenv('A', '')",
        "from os import environ\nx = environ.get('A')",
        "from os import getenv",
        "import os as o\nx = dict(o.environ)",
    ):
        assert environment_reads(source), source
    assert not environment_reads("import os\nos.replace('a', 'b')\nenv = {'A': 1}.get('A')")


def test_no_module_but_settings_reads_the_environment():
    offenders = {
        f"{path.relative_to(REPO)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "settings.py"
        for line in environment_reads(path.read_text())
    }
    assert not offenders, f"read the environment through cohort_pipeline.settings: {offenders}"


def test_defaults_and_empty_variables():
    assert Settings.from_env({}) == Settings()
    blank = {name: "  " for name in VARIABLES}
    assert Settings.from_env(blank) == Settings()  # empty counts as unset
    s = Settings()
    assert s.data_dir == Path("data") and s.policy_path == Path("data/policy.yaml")
    assert (s.partitions_start, s.keep_windows, s.engine) == (None, 8, "duckdb")
    assert (s.spark_master, s.spark_stage, s.alert_webhook) == (
        "local[2]",
        Path("data/spark_stage"),
        "",
    )


def test_every_variable_is_read(tmp_path):
    env = {
        "COHORT_PIPELINE_DATA_DIR": str(tmp_path),
        "COHORT_PIPELINE_POLICY": "/etc/p.yaml",
        "COHORT_PIPELINE_PARTITIONS_START": "1997-11-01",
        "COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT": "2GB",
        "COHORT_PIPELINE_DUCKDB_TEMP_DIR": "/tmp/spill",
        "COHORT_PIPELINE_KEEP_WINDOWS": " 3 ",
        "COHORT_PIPELINE_ENGINE": "Spark",
        "COHORT_PIPELINE_SPARK_MASTER": "yarn",
        "COHORT_PIPELINE_SPARK_STAGE_DIR": "/mnt/stage",
        "COHORT_PIPELINE_ALERT_WEBHOOK": "http://hook",
    }
    assert set(env) == set(VARIABLES)
    s = Settings.from_env(env)
    assert s == Settings(
        data_dir=tmp_path,
        policy=Path("/etc/p.yaml"),
        partitions_start=date(1997, 11, 1),
        duckdb_memory_limit="2GB",
        duckdb_temp_dir="/tmp/spill",
        keep_windows=3,
        engine="spark",
        spark_master="yarn",
        spark_stage_dir=Path("/mnt/stage"),
        alert_webhook="http://hook",
    )
    assert s.policy_path == Path("/etc/p.yaml") and s.spark_stage == Path("/mnt/stage")


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("COHORT_PIPELINE_KEEP_WINDOWS", "abc", "whole number"),
        ("COHORT_PIPELINE_KEEP_WINDOWS", "0", "at least 1"),
        ("COHORT_PIPELINE_KEEP_WINDOWS", "-1", "whole number"),
        ("COHORT_PIPELINE_KEEP_WINDOWS", "2.5", "whole number"),
        ("COHORT_PIPELINE_PARTITIONS_START", "2024-13-01", "YYYY-MM-DD"),
        ("COHORT_PIPELINE_PARTITIONS_START", "yesterday", "YYYY-MM-DD"),
        ("COHORT_PIPELINE_ENGINE", "sprak", "duckdb, spark"),
    ],
)
def test_a_bad_value_names_its_variable(name, value, expected):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    message = str(error.value)
    assert message.startswith(f"{name}={value!r}: ") and expected in message


def test_a_bad_value_stops_the_code_location_and_the_cli_with_its_name(monkeypatch, capsys):
    monkeypatch.setenv("COHORT_PIPELINE_KEEP_WINDOWS", "abc")
    with pytest.raises(SettingsError, match="COHORT_PIPELINE_KEEP_WINDOWS='abc'"):
        resources_for()
    assert cli_main(["latest-date"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "SettingsError: COHORT_PIPELINE_KEEP_WINDOWS='abc'" in line


def test_the_layout_of_the_data_folder(tmp_path):
    folder = Settings(data_dir=tmp_path).folder
    assert folder == DataFolder(tmp_path)
    assert {
        name: getattr(folder, name).relative_to(tmp_path).as_posix()
        for name in (
            "events",
            "catalog",
            "opt_outs",
            "policy",
            "warehouse",
            "ledger",
            "alerts",
            "exports",
            "spark_stage",
            "dagster_home",
        )
    } == {
        "events": "events",
        "catalog": "catalog.csv",
        "opt_outs": "opt_outs.csv",
        "policy": "policy.yaml",
        "warehouse": "warehouse.duckdb",
        "ledger": "ledger.duckdb",
        "alerts": "alerts.jsonl",
        "exports": "exports",
        "spark_stage": "spark_stage",
        "dagster_home": "dagster_home",
    }
    assert folder.event_file(date(2026, 11, 30)) == tmp_path / "events/events-2026-11-30.parquet"
    resources = resources_for(settings=Settings(data_dir=tmp_path))
    assert resources["warehouse"].path == str(folder.warehouse)
    assert resources["ledger"].path == str(folder.ledger)
    assert resources["pipeline"].catalog_path == folder.catalog


def readme_settings() -> dict[str, str]:
    """The README's settings table: variable -> documented default."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Settings", 1)[1].split("\n\n", 2)[1]
    documented = {}
    for row in table.splitlines()[2:]:
        names, default, _ = (cell.strip() for cell in row.strip("|").split("|", 2))
        for name in re.findall(r"`(COHORT_PIPELINE_\w+)`", names):
            documented[name] = default
    return documented


def test_the_readme_lists_every_variable_with_its_default():
    assert readme_settings() == VARIABLES


def test_the_readme_names_every_file_of_the_data_folder(tmp_path):
    folder = DataFolder(tmp_path)
    layout = [folder.event_file(date(2026, 11, 30))]
    properties = [name for name, value in vars(DataFolder).items() if isinstance(value, property)]
    layout += [getattr(folder, name) for name in properties]
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| `COHORT_PIPELINE_DATA_DIR` |"))  # fmt: skip
    for path in layout:
        name = path.name if path.suffix else f"{path.name}/"
        assert f"`{name}`" in row or path.name.startswith("events-"), name
    assert "`events-YYYY-MM-DD.parquet`" in row


def test_the_makefile_keeps_dagster_home_in_the_data_folder():
    makefile = (REPO / "Makefile").read_text()
    home = DataFolder(Path("$(DATA)")).dagster_home.name
    assert f"export DAGSTER_HOME := $(abspath $(DATA))/{home}\n" in makefile
    assert "DATA := $(or $(COHORT_PIPELINE_DATA_DIR),data)\n" in makefile  # Settings' default


def test_partitions_start_from_the_policy_the_runs_use(tmp_path):
    policy = write_policy(tmp_path, **{"release.partitions_start": "2023-05-01"})
    settings = Settings(data_dir=tmp_path)
    assert partitions_start(settings) == date(2023, 5, 1)
    resources = resources_for(settings=settings)
    assert resources["pipeline"].policy_path == str(policy)
    assert resources["pipeline"].policy().partitions_start == date(2023, 5, 1)

    # COHORT_PIPELINE_PARTITIONS_START moves both, and rescues an unreadable policy.
    moved = Settings(data_dir=tmp_path, partitions_start=date(1997, 11, 1))
    assert partitions_start(moved) == date(1997, 11, 1)
    assert resources_for(settings=moved)["pipeline"].policy().partitions_start == date(1997, 11, 1)
    missing = Settings(data_dir=tmp_path / "nowhere")
    assert partitions_start(missing) == FALLBACK_PARTITIONS_START
    assert partitions_start(replace(missing, partitions_start=date(1997, 11, 1))) == date(
        1997, 11, 1
    )


def test_the_code_location_reads_one_policy_for_partitions_and_runs(tmp_path):
    """The partitions' start and the runs' policy come from one settings object: a policy
    named by COHORT_PIPELINE_POLICY outside the data folder sets both."""
    data = tmp_path / "data"
    data.mkdir()
    write_policy(data, **{"release.partitions_start": "2020-01-01"})
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    policy = write_policy(elsewhere, **{"release.partitions_start": "2022-02-02"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_PIPELINE_")}
    env.update(COHORT_PIPELINE_DATA_DIR=str(data), COHORT_PIPELINE_POLICY=str(policy))
    probe = (
        "from cohort_pipeline.definitions import DAILY, defs; "
        "pipeline = defs.resources['pipeline']; "
        "print(DAILY.start.date(), pipeline.policy_path, pipeline.policy().partitions_start)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2022-02-02", str(policy), "2022-02-02"]
