"""The daily release graph, run for real: DuckDB files, OpenDP noise, a Dagster instance."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from cohort_pipeline.policy import MEASURED_ASSETS
from cohort_pipeline.privacy.release import (
    mechanisms,
    release_cohort_metrics,
    release_cohort_sizes,
)
from cohort_pipeline_tests.conftest import RELEASE_DATE, check_results, run_release, write_policy

RELEASE_TABLES = [
    "cohort_sizes",
    "cohort_metrics",
    "cohort_category_affinity",
    "ranking_weights",
    "cohort_recommendations",
]


def read(path, sql):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).df()
    except duckdb.CatalogException:
        return pd.DataFrame()
    finally:
        con.close()


def release_rows(data_dir, table, date=RELEASE_DATE):
    return read(
        data_dir / "warehouse.duckdb",
        f"SELECT * FROM release.{table} WHERE release_date = DATE '{date}'",
    )


def ledger_rows(data_dir):
    if not (data_dir / "ledger.duckdb").exists():
        return pd.DataFrame()
    return read(data_dir / "ledger.duckdb", "SELECT * FROM privacy_spend ORDER BY seq")


def test_release_then_rerun_spends_nothing_and_returns_identical_values(sample_dir):
    first = run_release(sample_dir)
    assert first.success
    assert all(check_results(first).values())
    assert {
        "budget_within_limit",
        "min_cohort_size",
        "weight_change_within_limit",
        "fairness_floor_met",
    } <= set(check_results(first))
    before = {t: release_rows(sample_dir, t) for t in RELEASE_TABLES}
    assert all(len(rows) for rows in before.values())
    spent = ledger_rows(sample_dir)
    assert sorted(spent["asset"]) == sorted(MEASURED_ASSETS)
    assert (spent["release_date"].astype(str) == RELEASE_DATE).all()
    assert set(spent["mechanism"]) == {"laplace", "gaussian"}

    again = run_release(sample_dir)
    assert again.success
    assert len(ledger_rows(sample_dir)) == len(spent)  # no new spend
    for table in (
        "cohort_sizes",
        "cohort_metrics",
        "cohort_category_affinity",
        "cohort_recommendations",
    ):
        pd.testing.assert_frame_equal(release_rows(sample_dir, table), before[table])
    assert (sample_dir / "exports" / RELEASE_DATE / "cohort_recommendations.csv").exists()


def test_old_windows_are_removed_and_an_old_date_reruns_from_the_event_files(
    small_dir, monkeypatch
):
    """Each release date stores a whole validated window: only COHORT_PIPELINE_KEEP_WINDOWS
    dates keep theirs. Releasing an older date again re-ingests it from the untouched files:
    the same data version, so the stored release is returned and nothing is spent."""
    monkeypatch.setenv("COHORT_PIPELINE_KEEP_WINDOWS", "1")
    earlier = "2026-11-27"

    def windows() -> set[str]:
        sql = "SELECT DISTINCT CAST(release_date AS VARCHAR) AS d FROM private.raw_events"
        return set(read(small_dir / "warehouse.duckdb", sql)["d"])

    assert run_release(small_dir, earlier).success
    sizes = release_rows(small_dir, "cohort_sizes", earlier)
    assert run_release(small_dir).success
    assert windows() == {RELEASE_DATE}
    spent = len(ledger_rows(small_dir))

    assert run_release(small_dir, earlier).success
    assert windows() == {earlier}  # the date being released always keeps its window
    assert len(ledger_rows(small_dir)) == spent
    pd.testing.assert_frame_equal(release_rows(small_dir, "cohort_sizes", earlier), sizes)


def test_long_steps_log_their_progress_in_counts_only(small_dir):
    """The ingest logs how many event files it has validated, and user_profiles each bounding
    query it has finished: counts only, no file names (they stay in private.ingest_report)."""
    instance = DagsterInstance.ephemeral()
    result = run_release(
        small_dir, instance=instance, selection=["opt_outs", "raw_events", "user_profiles"]
    )
    assert result.success
    logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    files = sorted(p.name for p in (small_dir / "events").iterdir())
    assert len(files) > 1
    validated = [m for m in logged if m.startswith("event files validated:")]
    assert validated[0] == f"event files validated: 1 of {len(files)}"
    assert validated[-1] == f"event files validated: {len(files)} of {len(files)}"
    bounding = [m for m in logged if m.startswith("bounding queries done:")]
    assert bounding == [f"bounding queries done: {n} of 5" for n in range(1, 6)]
    assert not [m for m in validated + bounding if any(name in m for name in files)]


def test_keep_windows_must_be_a_positive_count(monkeypatch):
    from cohort_pipeline.definitions import keep_windows

    for bad in ("0", "-1", "all", "2.5"):
        monkeypatch.setenv("COHORT_PIPELINE_KEEP_WINDOWS", bad)
        with pytest.raises(ValueError, match="COHORT_PIPELINE_KEEP_WINDOWS"):
            keep_windows()


def test_changed_inputs_are_a_new_release_that_spends(sample_dir):
    assert run_release(sample_dir).success
    sizes_before = release_rows(sample_dir, "cohort_sizes")
    (sample_dir / "opt_outs.csv").write_text("user_id\nu000001\nu000002\n")
    assert run_release(sample_dir).success
    spent = ledger_rows(sample_dir)
    assert len(spent) == 2 * len(MEASURED_ASSETS) and spent["data_version"].nunique() == 2
    assert not np.allclose(
        release_rows(sample_dir, "cohort_sizes")["noisy_users"], sizes_before["noisy_users"]
    )


def test_cap_below_one_release_blocks_everything_and_spends_nothing(small_dir):
    write_policy(small_dir, **{"cohorts.min_size": 50, "budget.epsilon_cap": 0.5})
    result = run_release(small_dir)
    assert not result.success
    assert check_results(result)["budget_within_limit"] is False
    assert ledger_rows(small_dir).empty
    for table in RELEASE_TABLES:
        assert release_rows(small_dir, table).empty
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert not started & {
        "cohort_sizes",
        "cohort_metrics",
        "cohort_category_affinity",
        "ranking_weights",
    }


def test_min_size_above_population_blocks_metrics_and_a_retry_draws_nothing_new(small_dir):
    write_policy(small_dir, **{"cohorts.min_size": 1_000_000})
    result = run_release(small_dir)
    assert not result.success
    assert check_results(result)["min_cohort_size"] is False
    assert release_rows(small_dir, "cohort_sizes").empty
    assert release_rows(small_dir, "cohort_metrics").empty
    published = result.asset_materializations_for_node("cohort_sizes")[0].metadata
    assert not any(key.startswith("noisy_users") for key in published)
    # A retry under the same reservation reuses the refused draw: no averaging of redraws.
    query = f"SELECT noisy_users FROM private.cohort_size_draws WHERE release_date = DATE '{RELEASE_DATE}'"
    draw = read(small_dir / "warehouse.duckdb", query)
    assert not run_release(small_dir).success
    pd.testing.assert_frame_equal(read(small_dir / "warehouse.duckdb", query), draw)


def test_dp_asset_launched_alone_after_a_blocked_release_refuses(small_dir):
    instance = DagsterInstance.ephemeral()
    write_policy(small_dir, **{"cohorts.min_size": 50, "budget.epsilon_cap": 0.5})
    assert not run_release(small_dir, instance=instance).success
    alone = run_release(small_dir, instance=instance, selection=[AssetKey("cohort_sizes")])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no reservation" in failure.event_specific_data.error.to_string()
    assert release_rows(small_dir, "cohort_sizes").empty


def test_a_dp_asset_refuses_to_draw_more_than_its_reservation(small_dir, monkeypatch):
    """The spend is fixed when reserved: code whose noise would now cost more (here the
    metrics' rho doubled) finds the reservation and still refuses, drawing nothing."""
    upstream = ["opt_outs", "raw_events", "user_profiles", "cohort_assignments"]
    steps = [*upstream, "privacy_budget_ledger", "cohort_sizes"]
    assert run_release(small_dir, selection=steps).success
    spent = ledger_rows(small_dir)
    from cohort_pipeline.assets import common
    from cohort_pipeline.privacy.mechanisms import gaussian

    def costlier(policy):
        mechs = mechanisms(policy)
        metrics = mechs["cohort_metrics"]
        return {**mechs, "cohort_metrics": gaussian(metrics.sensitivity, 2 * metrics.spend.rho,
                                                    policy.delta)}  # fmt: skip

    monkeypatch.setattr(common, "mechanisms", costlier)
    alone = run_release(small_dir, selection=["cohort_metrics"])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
    assert "more than the ledger reserved" in failure.event_specific_data.error.to_string()
    assert release_rows(small_dir, "cohort_metrics").empty
    pd.testing.assert_frame_equal(ledger_rows(small_dir), spent)
    monkeypatch.setattr(common, "mechanisms", mechanisms)
    assert run_release(small_dir, selection=["cohort_metrics"]).success


def test_metrics_launched_alone_without_released_sizes_refuse(small_dir):
    write_policy(small_dir, **{"cohorts.min_size": 1_000_000})
    assert not run_release(small_dir).success  # reserved, but min_cohort_size failed
    alone = run_release(small_dir, selection=[AssetKey("cohort_metrics")])
    assert not alone.success
    assert release_rows(small_dir, "cohort_metrics").empty


def test_accuracy_on_the_sample_at_the_default_policy(sample_dir):
    """Median relative error <= 5% for cohort sizes and conversion rates, and the stated 95%
    accuracy covers the exact value 90-99% of the time over many draws."""
    assert run_release(sample_dir).success
    warehouse = sample_dir / "warehouse.duckdb"
    profiles = read(
        warehouse, f"SELECT * FROM private.user_profiles WHERE release_date = DATE '{RELEASE_DATE}'"
    )
    exact_n = profiles.groupby("cohort_key").size()
    exact_conv = profiles.groupby("cohort_key")["converted"].mean()
    from cohort_pipeline.policy import load_policy

    policy = load_policy(sample_dir / "policy.yaml")
    errors_n, errors_c, cover_n, cover_c = [], [], [], []
    for _ in range(60):
        per_user = profiles.assign(users=1.0)  # per-user rows: each a key's sum over one user
        sizes = release_cohort_sizes(per_user, policy)
        metrics = release_cohort_metrics(per_user, sizes, policy).set_index("cohort_key")
        single = sizes[~sizes["members"].str.contains(";")].set_index("cohort_key")
        assert len(single) >= 15  # the default policy keeps almost all sample cohorts whole
        n_true = exact_n.reindex(single.index).to_numpy()
        c_true = exact_conv.reindex(single.index).to_numpy()
        n_err = np.abs(single["noisy_users"].to_numpy() - n_true)
        c_err = np.abs(metrics.loc[single.index, "conversion_rate"].to_numpy() - c_true)
        errors_n.append(np.median(n_err / n_true))
        errors_c.append(np.median(c_err / c_true))
        cover_n.append(np.mean(n_err <= single["accuracy_95"].to_numpy()))
        cover_c.append(
            np.mean(c_err <= metrics.loc[single.index, "conversion_rate_accuracy_95"].to_numpy())
        )
    assert np.median(errors_n) <= 0.05
    assert np.median(errors_c) <= 0.05
    assert 0.90 <= np.mean(cover_n) <= 0.99
    assert 0.90 <= np.mean(cover_c) <= 0.99
