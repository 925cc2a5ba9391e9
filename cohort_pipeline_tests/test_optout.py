"""Opt-outs: the list's atomic management, the CLI, and exclusion from the next release,
proven on the exact pre-noise aggregates every measurement is computed from."""

from __future__ import annotations

import os
import threading

import duckdb
import numpy as np
import pandas as pd
import pytest

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.release import exact_cohort_counts
from cohort_pipeline.storage import optouts
from cohort_pipeline.tools.cli import main
from cohort_pipeline_tests.conftest import BOUNDED, RELEASE_DATE, run_release

PRIVATE_STEPS = ["catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments"]


def test_add_remove_and_read_round_trip(tmp_path):
    path = tmp_path / "opt_outs.csv"
    assert optouts.read(path).empty
    assert optouts.add(path, ["u1", "u2", "u1"]) == ["u1", "u2"]
    assert optouts.add(path, ["u2", "u3"]) == ["u3"]  # already listed: not added twice
    assert list(optouts.read(path)["user_id"]) == ["u1", "u2", "u3"]
    assert optouts.remove(path, ["u2", "nobody"]) == ["u2"]
    assert list(optouts.read(path)["user_id"]) == ["u1", "u3"]
    assert optouts.read(path)["opted_out_at"].str.match(r"\d{4}-\d\d-\d\dT").all()
    with pytest.raises(ValueError):
        optouts.add(path, ["a,b"])  # would corrupt the CSV
    path.write_text("user_id\nu9\n\n")  # a hand-written list of ids is accepted
    assert list(optouts.read(path)["user_id"]) == ["u9"]


def test_a_failed_write_leaves_the_old_list_intact(tmp_path, monkeypatch):
    path = tmp_path / "opt_outs.csv"
    optouts.add(path, ["u1"])
    before = path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        optouts.add(path, ["u2"])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_concurrent_adds_lose_no_one(tmp_path):
    path = tmp_path / "opt_outs.csv"
    threads = [
        threading.Thread(target=optouts.add, args=(path, [f"u{i}-{j}" for j in range(5)]))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(optouts.read(path)) == 40


def _private(data, table: str) -> pd.DataFrame:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(
            f"SELECT * FROM private.{table} WHERE release_date = ?", [RELEASE_DATE]
        ).df()


def test_opted_out_user_is_excluded_from_every_exact_aggregate(small_dir, capsys):
    assert run_release(small_dir, selection=PRIVATE_STEPS).success
    policy = load_policy(small_dir / "policy.yaml")
    events = _private(small_dir, "raw_events")
    # The most active user: the one whose removal changes the most.
    user = events["user_id"].value_counts().index[0]
    sums = ("cohort_totals", "cohort_category_totals")
    before = {t: _private(small_dir, t) for t in ("cohort_assignments", *sums)}
    cohort = before["cohort_assignments"].set_index("user_id").loc[user, "cohort_key"]

    assert main(["--data-dir", str(small_dir), "opt-out", "add", user]) == 0
    assert main(["--data-dir", str(small_dir), "opt-out", "list"]) == 0
    assert user in capsys.readouterr().out
    assert run_release(small_dir, selection=PRIVATE_STEPS).success

    after = {t: _private(small_dir, t) for t in sums}
    for table in ("raw_events", "user_profiles", "cohort_assignments"):
        assert user not in set(_private(small_dir, table)["user_id"]), table
    assert len(_private(small_dir, "raw_events")) == len(events) - (events["user_id"] == user).sum()
    # Cohort sizes: exactly one fewer in the user's cohort, every other cohort unchanged.
    delta = exact_cohort_counts(before["cohort_totals"], policy) - exact_cohort_counts(
        after["cohort_totals"], policy
    )
    assert delta[cohort] == 1 and delta.drop(cohort).eq(0).all()
    # Category sums: exactly the user's own bounded vector removed, from the user's cohort.
    own = _bounded_categories(small_dir, events[events["user_id"] == user], policy)
    keyed = [
        f["cohort_category_totals"].set_index(["cohort_key", "category"])["value"]
        for f in (before, after)
    ]
    removed = (keyed[0] - keyed[1].reindex(keyed[0].index, fill_value=0.0)).round(9)
    expected = (
        own.assign(cohort_key=cohort)
        .set_index(["cohort_key", "category"])["value"]
        .reindex(removed.index, fill_value=0.0)
    )
    assert removed.abs().sum() > 0
    pd.testing.assert_series_equal(removed, expected.round(9), check_names=False)


def _bounded_categories(data, events: pd.DataFrame, policy) -> pd.DataFrame:
    """The bounded category vector of `events`' users, computed here from the policy's
    definition (not by the product's bounding SQL): each event weighs its type's
    `bounds.category_weights`, items outside the catalog count for nothing, and each user's
    per-category sums are scaled to L2 norm `bounds.category_l2_norm`."""
    catalog = pd.read_csv(data / "catalog.csv", dtype=str)[["item_id", "category"]]
    weighted = events.assign(w=events["event_type"].map(policy.category_weights).fillna(0.0))
    sums = weighted.merge(catalog, on="item_id").groupby(["user_id", "category"])["w"].sum()
    norms = np.sqrt((sums**2).groupby(level="user_id").sum())
    scaled = sums * policy.category_l2_norm / norms.reindex(sums.index, level="user_id")
    return scaled.rename("value").reset_index()
