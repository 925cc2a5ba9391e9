"""Shared fixtures: real sample data on disk, real DuckDB files, real Dagster runs."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import AssetSelection, DagsterInstance, materialize

from cohort_pipeline.definitions import all_assets, resources_for
from cohort_pipeline.defs.cohorts import TOTALS
from cohort_pipeline.tools.generate import generate

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "data" / "policy.yaml"
END = dt.date(2026, 11, 28)  # last day of the generated sample: the release date tests use
RELEASE_DATE = END.isoformat()
# The tables user_profiles writes together: a selection takes all of them or none.
BOUNDED = ["user_profiles", *TOTALS]


def write_policy(data_dir: Path, **overrides) -> Path:
    """Copy the default policy into `data_dir`, with dotted-key overrides such as
    `{"budget.epsilon_cap": 0.5}`."""
    raw = yaml.safe_load(POLICY.read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = Path(data_dir) / "policy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_data_dir(path: Path, users: int = 4_000, days: int = 30, seed: int = 1, **policy) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    generate(path, users=users, days=days, seed=seed, end_date=END)
    write_policy(path, **policy)
    return path


def run_release(
    data_dir: Path,
    partition: str = RELEASE_DATE,
    instance: DagsterInstance | None = None,
    selection=None,
    tags: dict[str, str] | None = None,
):
    """Materialize the release graph (or `selection`) for one date, in process. As in the
    UI, a selection takes the whole of a multi-asset that cannot be split (user_profiles)."""
    if selection is not None:
        selection = AssetSelection.from_coercible(selection).required_multi_asset_neighbors()
    return materialize(
        all_assets,
        selection=selection,
        partition_key=partition,
        resources=resources_for(data_dir),
        instance=instance,
        raise_on_error=False,
        tags=tags,
    )


def check_results(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory) -> Path:
    """The default sample (20k users x 30 days), generated once per session."""
    return make_data_dir(tmp_path_factory.mktemp("sample"), users=20_000, seed=7)


@pytest.fixture
def sample_dir(sample_template, tmp_path) -> Path:
    """A private copy of the default sample: its own warehouse and ledger."""
    target = tmp_path / "data"
    shutil.copytree(sample_template, target, ignore=shutil.ignore_patterns("*.duckdb*", "exports"))
    return target


@pytest.fixture(scope="session")
def small_template(tmp_path_factory) -> Path:
    """A small dataset (4k users) with k lowered so cohorts still pass, generated once per
    session (it is deterministic for its seed)."""
    return make_data_dir(tmp_path_factory.mktemp("small") / "data", **{"cohorts.min_size": 50})


@pytest.fixture
def small_dir(small_template, tmp_path) -> Path:
    """A private copy of the small dataset: its own events, policy, warehouse and ledger."""
    target = tmp_path / "data"
    shutil.copytree(small_template, target)
    return target
