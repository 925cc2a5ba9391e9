"""The daily release graph, run for real: DuckDB files, OpenDP noise, a Dagster instance."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import REGISTRY, mechanisms
from cohort_pipeline.privacy.release import release_cohort_metrics, release_cohort_sizes
from cohort_pipeline_tests.conftest import (
    BOUNDED,
    RELEASE_DATE,
    check_results,
    run_release,
    write_policy,
)

CHARGED_ASSETS = sorted(s.asset for s in REGISTRY.values())  # one ledger row each

PREPARE_AND_RESERVE = [
    "catalog",
    "opt_outs",
    "raw_events",
    *BOUNDED,
    "cohort_assignments",
    "privacy_budget_ledger",
]
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
    checks = check_results(first)
    # the sample's first release has no ranking release 7 days earlier to evaluate: a WARN
    assert checks.pop("experiment_readable") is False
    assert all(checks.values())
    assert {
        "budget_within_limit",
        "min_cohort_size",
        "weight_change_within_limit",
        "fairness_floor_met",
    } <= set(check_results(first))
    before = {t: release_rows(sample_dir, t) for t in RELEASE_TABLES}
    assert all(len(rows) for rows in before.values())
    spent = ledger_rows(sample_dir)
    assert sorted(spent["asset"]) == CHARGED_ASSETS
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
    dates keep theirs. Releasing an older date again re-ingests it from the untouched files;
    the date is already released, so its stored release is returned and nothing is spent."""
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
        small_dir,
        instance=instance,
        selection=["catalog", "opt_outs", "raw_events", *BOUNDED],
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


def _without_provenance(value):
    """The audit report's provenance table lists the run's own ids, storage ids and times."""
    if isinstance(value, str) and "## Provenance" in value:
        head, rest = value.split("## Provenance", 1)
        return head + rest[rest.index("## Data minimization") :]
    return value


def _published(result) -> dict:
    """Every materialization's metadata and every check's outcome and metadata of a run: what
    Dagster shows of it, but for the run's own ids in the audit report's provenance."""
    found = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        found[m.asset_key.to_user_string()] = {
            k: _without_provenance(v.value) for k, v in m.metadata.items()
        }
    for e in result.get_asset_check_evaluations():
        found[e.asset_check_key.name] = (e.passed, {k: v.value for k, v in e.metadata.items()})
    return found


def _window_users(data_dir) -> set[str]:
    sql = f"SELECT DISTINCT user_id FROM private.raw_events WHERE release_date = DATE '{RELEASE_DATE}'"
    return set(read(data_dir / "warehouse.duckdb", sql)["user_id"])


def test_a_released_date_is_final_whoever_opts_out(small_dir):
    """Opting out a user who has events in the window and one who has none, then re-running
    the released date, gives identical release tables, ledger and Dagster metadata: the
    opt-out takes effect from the next release date, and the two cases cannot be told apart."""
    assert run_release(small_dir).success
    baseline = run_release(small_dir)  # a plain re-run: what every later run must show
    assert baseline.success
    tables = {t: release_rows(small_dir, t) for t in [*RELEASE_TABLES, "item_popularity"]}
    ledger = ledger_rows(small_dir)
    present = sorted(_window_users(small_dir))[0]
    absent = "u_never_seen"
    assert absent not in _window_users(small_dir)
    for user in (present, absent):
        (small_dir / "opt_outs.csv").write_text(f"user_id\n{user}\n")
        again = run_release(small_dir)
        assert again.success
        assert user not in _window_users(small_dir)  # the window itself did change
        for table, before in tables.items():
            pd.testing.assert_frame_equal(release_rows(small_dir, table), before, obj=table)
        pd.testing.assert_frame_equal(ledger_rows(small_dir), ledger)
        assert _published(again) == _published(baseline)


def test_a_redraw_is_explicit_charged_in_full_and_replaces_the_release(small_dir):
    from cohort_pipeline.defs.privacy import REDRAW_TAG

    assert run_release(small_dir).success
    first = ledger_rows(small_dir)
    sizes = release_rows(small_dir, "cohort_sizes")
    assert set(first["kind"]) == {"release"} and set(first["reason"]) == {""}

    empty = run_release(small_dir, tags={REDRAW_TAG: " "})
    assert not empty.success  # a redraw needs a reason
    assert len(ledger_rows(small_dir)) == len(first)

    redraw = run_release(small_dir, tags={REDRAW_TAG: "catalog fix"})  # unchanged data
    assert redraw.success
    spent = ledger_rows(small_dir)
    new = spent[spent["seq"] > first["seq"].max()]
    assert sorted(new["asset"]) == CHARGED_ASSETS  # charged in full
    assert set(new["kind"]) == {"redraw"} and set(new["reason"]) == {"catalog fix"}
    assert new["reservation_id"].nunique() == 1
    assert new["reservation_id"].iloc[0] not in set(first["reservation_id"])
    assert new["epsilon"].tolist() == first["epsilon"].tolist()
    redrawn = release_rows(small_dir, "cohort_sizes")
    assert set(redrawn["reservation_id"]) == set(new["reservation_id"])
    assert set(redrawn["noisy_users"]).isdisjoint(sizes["noisy_users"])  # new draws
    for table in ("cohort_metrics", "cohort_category_affinity", "cohort_recommendations"):
        assert set(release_rows(small_dir, table)["reservation_id"]) == set(new["reservation_id"])

    assert run_release(small_dir).success  # without the tag: the redraw's values, no spend
    pd.testing.assert_frame_equal(ledger_rows(small_dir), spent)
    pd.testing.assert_frame_equal(release_rows(small_dir, "cohort_sizes"), redrawn)


def test_a_policy_change_keeps_the_release_and_a_draw_under_it_is_refused(small_dir):
    """The date's reservation stays final under a changed policy file: stored draws come
    back without a policy match, but a draw that is still missing is refused."""
    upstream = ["catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments"]
    assert run_release(
        small_dir, selection=[*upstream, "privacy_budget_ledger", "cohort_sizes"]
    ).success
    spent = ledger_rows(small_dir)
    sizes = release_rows(small_dir, "cohort_sizes")
    write_policy(small_dir, **{"cohorts.min_size": 50, "ranking.top_n": 7})
    assert run_release(small_dir, selection=["privacy_budget_ledger", "cohort_sizes"]).success
    pd.testing.assert_frame_equal(ledger_rows(small_dir), spent)
    pd.testing.assert_frame_equal(release_rows(small_dir, "cohort_sizes"), sizes)
    alone = run_release(small_dir, selection=["cohort_metrics"])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
    assert "request a redraw" in failure.event_specific_data.error.to_string()
    assert release_rows(small_dir, "cohort_metrics").empty


def test_a_failure_after_the_popularity_draw_never_draws_it_again(small_dir, monkeypatch):
    """Recommendations fail once after item popularity is drawn (and written); the retry
    reads the stored draw: one popularity draw per reservation, nothing spent again."""
    from cohort_pipeline.defs import ranking

    draws = []
    real_draw, real_recs = ranking.release_item_popularity, ranking.recommendations

    def counted(*args, **kwargs):
        draws.append(1)
        return real_draw(*args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault between the popularity draw and the recommendations")

    monkeypatch.setattr(ranking, "release_item_popularity", counted)
    monkeypatch.setattr(ranking, "recommendations", broken)
    assert not run_release(small_dir).success
    assert len(draws) == 1
    spent = ledger_rows(small_dir)
    popularity = release_rows(small_dir, "item_popularity")
    monkeypatch.setattr(ranking, "recommendations", real_recs)
    assert run_release(small_dir).success
    assert len(draws) == 1
    pd.testing.assert_frame_equal(ledger_rows(small_dir), spent)
    pd.testing.assert_frame_equal(release_rows(small_dir, "item_popularity"), popularity)
    assert len(release_rows(small_dir, "cohort_recommendations"))


def test_an_empty_window_releases_noise_over_the_public_keys(small_dir):
    """No events at all in the window: the release reaches its draws (charged) over every
    public key instead of failing on missing rows; only min_cohort_size, a function of the
    noisy sizes, may stop it."""
    from cohort_pipeline.policy import load_policy

    day = "2026-09-01"  # the sample's events start in late October
    result = run_release(small_dir, day)
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed <= {"cohort_sizes"}
    checks = check_results(result)
    assert checks["budget_within_limit"] and "min_cohort_size" in checks
    assert not failed or checks["min_cohort_size"] is False
    assert sorted(ledger_rows(small_dir)["asset"]) == CHARGED_ASSETS
    keys = load_policy(small_dir / "policy.yaml").cohort_keys()
    draw = read(
        small_dir / "warehouse.duckdb",
        f"SELECT members FROM private.draws_cohort_sizes WHERE release_date = DATE '{day}'",
    )
    assert sorted(m for members in draw["members"] for m in members.split(";")) == sorted(keys)
    if checks["min_cohort_size"]:
        for table in [*RELEASE_TABLES, "item_popularity"]:
            assert len(release_rows(small_dir, table, day)), table


def test_a_window_without_category_engagement_releases_noise(small_dir):
    """Events, but every category weight 0: no user has a category vector, and affinity is
    still released as noise over every released cohort x catalog category."""
    write_policy(
        small_dir,
        **{
            "cohorts.min_size": 50,
            "bounds.category_weights": {"view": 0, "click": 0, "add_to_cart": 0, "purchase": 0},
        },
    )
    assert run_release(small_dir).success
    totals = read(small_dir / "warehouse.duckdb", "SELECT * FROM private.cohort_category_totals")
    assert totals.empty
    affinity = release_rows(small_dir, "cohort_category_affinity")
    sizes = release_rows(small_dir, "cohort_sizes")
    categories = pd.read_csv(small_dir / "catalog.csv")["category"].nunique()
    assert len(affinity) == len(sizes) * categories
    assert (affinity["noisy_sum"] != 0).all()


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
    query = f"SELECT noisy_users FROM private.draws_cohort_sizes WHERE release_date = DATE '{RELEASE_DATE}'"
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
    upstream = ["catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments"]
    steps = [*upstream, "privacy_budget_ledger", "cohort_sizes"]
    assert run_release(small_dir, selection=steps).success
    spent = ledger_rows(small_dir)
    from cohort_pipeline.defs import dp_asset
    from cohort_pipeline.privacy.mechanisms import gaussian

    def costlier(policy):
        mechs = mechanisms(policy)
        metrics = mechs["cohort_metrics"]
        return {**mechs, "cohort_metrics": gaussian(metrics.sensitivity, 2 * metrics.spend.rho,
                                                    policy.delta)}  # fmt: skip

    monkeypatch.setattr(dp_asset, "mechanisms", costlier)
    alone = run_release(small_dir, selection=["cohort_metrics"])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
    assert "more than the ledger reserved" in failure.event_specific_data.error.to_string()
    assert release_rows(small_dir, "cohort_metrics").empty
    pd.testing.assert_frame_equal(ledger_rows(small_dir), spent)
    monkeypatch.setattr(dp_asset, "mechanisms", mechanisms)
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
    mechs = mechanisms(policy)
    for _ in range(60):
        per_user = profiles.assign(users=1.0)  # per-user rows: each a key's sum over one user
        sizes = release_cohort_sizes(per_user, policy, mechs["cohort_sizes"])
        metrics = release_cohort_metrics(
            per_user, sizes, policy, mechs["cohort_metrics"], mechs["cohort_sizes"]
        ).set_index("cohort_key")
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


@pytest.mark.parametrize("smallest, passes", [(49.5, False), (50.0, True)])
def test_min_cohort_size_holds_exactly_at_k(small_dir, smallest, passes):
    """k = 50 (small_dir): a stored draw whose smallest noisy cohort is k - 0.5 fails the check
    and writes nothing; one at exactly k passes and is released. The draw is planted under the
    date's real reservation, so the real asset reads it instead of drawing."""
    assert run_release(small_dir, selection=PREPARE_AND_RESERVE).success
    policy = load_policy(small_dir / "policy.yaml")
    empty = pd.DataFrame({"cohort_key": policy.cohort_keys(), "users": 0.0})
    sizes = mechanisms(policy)["cohort_sizes"]
    planted = release_cohort_sizes(empty, policy, sizes).assign(noisy_users=1_000.0)
    planted.loc[3, "noisy_users"] = smallest
    reservation = Ledger(small_dir / "ledger.duckdb").reservation(RELEASE_DATE)
    with duckdb.connect(str(small_dir / "warehouse.duckdb")) as con:
        con.register("planted", planted)
        con.execute(
            f"CREATE TABLE private.draws_cohort_sizes AS SELECT DATE '{RELEASE_DATE}' AS"
            " release_date, ? AS reservation_id, * FROM planted",
            [reservation["reservation_id"].iloc[0]],
        )
    result = run_release(small_dir, selection=["cohort_sizes"])
    assert check_results(result) == {"min_cohort_size": passes}
    released = release_rows(small_dir, "cohort_sizes")
    assert len(released) == (len(planted) if passes else 0)
    if passes:
        assert released["noisy_users"].min() == 50.0
