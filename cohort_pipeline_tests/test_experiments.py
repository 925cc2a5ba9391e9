"""Experiments: metric math, the temporal split, the readouts' sensitivity and noise, and the
experiment_report asset run for real (DuckDB files, OpenDP noise, a Dagster instance)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort_pipeline.logic.experiments import (
    EVAL_DAYS,
    HEADLINE,
    METRICS,
    MIN_EFFECT,
    OVERALL,
    REFERENCE_ARM,
    UPLIFT_ARM,
    RankingInputs,
    _NoNoise,
    arm_metrics,
    bootstrap_ci,
    evaluated_users,
    mean_weight_change,
    next_experiment_date,
    no_experiment_reason,
    ranking_date,
    readability,
    readout_layout,
    readouts_from_sums,
    release_readouts,
    relevant_items,
    replay_ranking,
    report_markdown,
    stability_rows,
    user_readouts,
)
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.mechanisms import gaussian
from cohort_pipeline.privacy.release import EXPERIMENT_SENSITIVITY
from cohort_pipeline_tests.conftest import BOUNDED, END, POLICY, RELEASE_DATE, run_release

KEYS = ["a|x|m", "b|y|d", "c|z|m"]
LIST = pd.DataFrame(
    {"cohort_key": "k", "rank": range(1, 21), "item_id": [f"i{r}" for r in range(1, 21)]}
)


def dcg(ranks):
    return sum(1 / math.log2(r + 1) for r in ranks)


def test_metrics_follow_their_definitions():
    relevant = pd.DataFrame(
        [("hit2", "i1"), ("hit2", "i5"), ("hit2", "zz"), ("miss", "zz"), ("late", "i15")]
        + [("all", f"i{r}") for r in range(1, 26)],
        columns=["user_id", "item_id"],
    )
    users = pd.Series("k", index=pd.Index(["hit2", "miss", "late", "all"], name="user_id"))
    got = arm_metrics(relevant, users, LIST)
    assert got.loc["hit2"].tolist() == pytest.approx([1.0, dcg([1, 5]) / dcg([1, 2, 3]), 2 / 3])
    assert got.loc["miss"].tolist() == [0.0, 0.0, 0.0]
    assert got.loc["late"].tolist() == [0.0, 0.0, 1.0]  # rank 15: outside top 10, in top 20
    assert got.loc["all"].tolist() == pytest.approx([1.0, 1.0, 1.0])  # 25 relevant, 20 slots


def test_temporal_split_uses_only_events_after_the_ranking_release():
    ranked = ranking_date(END)
    assert ranked == END - timedelta(days=EVAL_DAYS)
    times = {
        "on_ranking_day": f"{ranked} 23:59:59",
        "next_day": f"{ranked + timedelta(1)} 00:00:00",
        "release_day": f"{END} 12:00:00",
        "after": f"{END + timedelta(1)} 00:00:01",
    }
    stamps = pd.to_datetime(list(times.values()), utc=True)
    events = pd.DataFrame({"user_id": "u", "item_id": list(times), "event_time": stamps})
    assert sorted(relevant_items(events, ranked, END)["item_id"]) == ["next_day", "release_day"]


def test_evaluated_users_had_a_cohort_and_an_event():
    relevant = pd.DataFrame({"user_id": ["u1", "u2", "new"], "item_id": "i"})
    assignments = pd.DataFrame({"user_id": ["u1", "u2", "quiet"], "cohort_key": KEYS[:3]})
    assert evaluated_users(relevant, assignments)["user_id"].tolist() == ["u1", "u2"]


def per_user_frame(values: np.ndarray, cohorts: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(values))],
                          "cohort_key": [KEYS[c] for c in cohorts]})  # fmt: skip
    for j, m in enumerate(METRICS):
        frame[f"cohort_{m}"] = values[:, j]
        frame[f"popularity_{m}"] = values[:, 3 + j]
    return frame


unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(unit, min_size=6, max_size=6), st.integers(0, 2)), min_size=1,
                max_size=30), st.data())  # fmt: skip
def test_removing_one_user_moves_the_readout_sums_by_at_most_the_sensitivity(users, data):
    frame = per_user_frame(np.array([u[0] for u in users]), [u[1] for u in users])
    drop = data.draw(st.integers(0, len(frame) - 1))
    full = user_readouts(frame, KEYS).sum(axis=0)
    without = user_readouts(frame.drop(index=drop), KEYS).sum(axis=0)
    assert np.linalg.norm(full - without) <= EXPERIMENT_SENSITIVITY + 1e-9
    assert len(full) == len(readout_layout(KEYS))


def test_the_sensitivity_is_tight():
    worst = per_user_frame(np.array([[1.0, 1, 1, 0, 0, 0]]), [0])
    assert np.linalg.norm(user_readouts(worst, KEYS)[0]) == pytest.approx(EXPERIMENT_SENSITIVITY)
    assert (
        mechanisms(load_policy(POLICY))["experiment_report"].sensitivity == EXPERIMENT_SENSITIVITY
    )


def synthetic_users(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.beta(2, 6, size=(n, 6))
    base[:, :3] = np.clip(base[:, :3] + 0.05, 0, 1)  # the cohort arm is better
    return per_user_frame(base, list(rng.integers(0, 3, n)))


def test_without_noise_the_readouts_are_the_exact_means_and_the_interval_is_conservative():
    frame = synthetic_users(4000)
    sums = dict(zip(readout_layout(KEYS), user_readouts(frame, KEYS).sum(axis=0), strict=True))
    rows = readouts_from_sums(sums, KEYS, noise_std=0.0).set_index(["arm", "metric", "cohort_key"])
    for arm in ("cohort", "popularity"):
        exact = frame[f"{arm}_ndcg_at_10"].mean()
        assert rows.loc[(arm, "ndcg_at_10", OVERALL), "value"] == pytest.approx(exact)
        est, lo, hi = bootstrap_ci(frame, arm, n_boot=300)
        row = rows.loc[(arm, "ndcg_at_10", OVERALL)]
        assert row.ci_high - row.ci_low >= hi - lo  # the sampling bound never understates
    uplift = rows.loc[(UPLIFT_ARM, "ndcg_at_10_uplift", OVERALL), "value"]
    assert uplift == pytest.approx(bootstrap_ci(frame, "cohort", "popularity", n_boot=10)[0])
    mine = frame[frame["cohort_key"] == KEYS[1]]
    per_cohort = mine["cohort_ndcg_at_10"].sum() / mine["popularity_ndcg_at_10"].sum() - 1
    assert rows.loc[(UPLIFT_ARM, "ndcg_at_10_uplift", KEYS[1]), "value"] == pytest.approx(
        per_cohort
    )


def test_readouts_from_few_noisy_users_stay_in_their_range():
    """21 noisy evaluated users gave NDCG@10 = -3.04 [-7.8, 1.7]: every figure and interval
    is now clamped to the range of what it estimates."""
    std = mechanisms(load_policy(POLICY))["experiment_report"].std
    noisy = {q: -64.0 for q in readout_layout(KEYS)}
    noisy.update({(OVERALL, "users"): 21.0, (OVERALL, f"cohort_{HEADLINE}"): -64.0})
    noisy.update({(OVERALL, f"diff_{m}"): 90.0 for m in METRICS})
    noisy[(KEYS[0], f"cohort_{HEADLINE}")], noisy[(KEYS[0], f"diff_{HEADLINE}")] = 0.0, -600.0
    rows = readouts_from_sums(noisy, KEYS, std)
    figures = rows[["value", "ci_low", "ci_high"]]
    means = rows["arm"].isin(["cohort", "popularity"])
    assert figures[means].ge(0).all().all() and figures[means].le(1).all().all()
    assert (rows.loc[means & (rows.arm == "cohort"), "value"] == 0).all()  # was -3.05
    differences = rows["metric"].str.endswith("_difference")
    assert figures[differences].abs().le(1).all().all()
    uplifts = rows[rows["metric"].str.endswith("_uplift")].dropna()
    assert len(uplifts) and uplifts[["value", "ci_low", "ci_high"]].ge(-1).all().all()


def readout(users: float, noise_std: float, cohort=0.2, popularity=0.18) -> pd.DataFrame:
    """The release.experiment_results rows readability reads."""
    return pd.DataFrame(
        {"arm": ["cohort", "popularity", UPLIFT_ARM],
         "metric": [HEADLINE, HEADLINE, f"{HEADLINE}_difference"], "cohort_key": OVERALL,
         "value": [cohort, popularity, cohort - popularity], "noisy_evaluated_users": users,
         "noise_std": noise_std}
    )  # fmt: skip


def test_readability_says_how_many_users_or_how_much_epsilon_would_make_it_readable():
    policy = load_policy(POLICY)
    std = mechanisms(policy)["experiment_report"].std
    small = readability(readout(21, std, cohort=0.0, popularity=0.3), policy)
    assert small.inconclusive and small.effect == pytest.approx(0.3)
    assert math.isinf(small.epsilon_needed)  # 21 users' sampling error alone is too wide
    assert "inconclusive" in small.message() and "no epsilon" in small.message()

    # The effect is the reported difference (0.02 here), at least MIN_EFFECT.
    some = readability(readout(100, std), policy)
    assert some.effect == pytest.approx(0.02)
    assert readability(readout(100, std, 0.2, 0.199), policy).effect == MIN_EFFECT
    # At the users it asks for, the readout is readable, and just below, not yet.
    enough = readability(readout(some.users_needed, std), policy)
    assert not enough.inconclusive and enough.half_width == pytest.approx(0.02)
    assert enough.message().startswith("readable:")
    assert readability(readout(0.95 * some.users_needed, std), policy).inconclusive
    # Where sampling error alone fits, the epsilon it names gives noise that fits too.
    mid = readability(readout(0.8 * some.users_needed, std), policy)
    assert mid.inconclusive and policy.epsilon_per_release < mid.epsilon_needed < 10
    at = mechanisms(replace(policy, epsilon_per_release=mid.epsilon_needed))["experiment_report"]
    assert not readability(readout(mid.evaluated_users, at.std), policy).inconclusive
    below = mechanisms(replace(policy, epsilon_per_release=0.95 * mid.epsilon_needed))
    assert readability(
        readout(mid.evaluated_users, below["experiment_report"].std), policy
    ).inconclusive
    assert f"{mid.epsilon_needed:.3g}" in mid.message()


def test_report_markdown_keeps_cohort_keys_in_one_cell_and_states_the_noise():
    frame = synthetic_users(2000)
    mech = mechanisms(load_policy(POLICY))["experiment_report"]
    rows, noisy_users = release_readouts(frame, KEYS, mech)
    text = report_markdown(rows.assign(noisy_evaluated_users=noisy_users, noise_std=mech.std))
    cohort_lines = [line for line in text.splitlines() if "\\|" in line]
    assert len(cohort_lines) == len(KEYS)
    assert all(line.replace("\\|", "").count("|") == 3 for line in cohort_lines)
    assert f"std {mech.std:.4g}" in text and REFERENCE_ARM not in text


def test_dp_readouts_draw_opendp_noise_of_the_stated_size():
    frame = synthetic_users(3000, seed=1)
    mech = mechanisms(load_policy(POLICY))["experiment_report"]
    first, n1 = release_readouts(frame, KEYS, mech)
    second, n2 = release_readouts(frame, KEYS, mech)
    assert n1 != n2 and n1 != len(frame)  # fresh noise each draw, never the exact count
    exact = frame["cohort_ndcg_at_10"].mean()
    got = first.set_index(["arm", "metric", "cohort_key"]).loc[("cohort", "ndcg_at_10", OVERALL)]
    assert abs(got.value - exact) < 6 * mech.std / len(frame) + 1e-3  # 6 SD (+ count noise)
    assert got.ci_low < got.value < got.ci_high
    with pytest.raises(ValueError, match="sensitivity"):
        release_readouts(frame, KEYS, gaussian(1.0, 0.01, 1e-6))


def test_stability_compares_with_the_previous_releases():
    weights = pd.DataFrame({"cohort_key": ["a", "a", "b"], "category": ["x", "y", "x"],
                            "weight": [0.5, 0.5, 1.0]})  # fmt: skip
    before = weights.assign(weight=[0.4, 0.6, 1.0])
    assert mean_weight_change(weights, before) == pytest.approx(0.2 / 3)
    assert math.isnan(mean_weight_change(weights, before.assign(cohort_key="other")))
    rows = stability_rows(0.1, 0.25, 0.2).set_index("metric")["value"]
    assert rows["ndcg_at_10_uplift_change"] == pytest.approx(0.05)
    assert math.isnan(stability_rows(0.1, 0.25, math.nan).set_index("metric")["value"].iloc[1])


def test_bootstrap_is_deterministic_for_a_seed():
    frame = synthetic_users(500)
    assert bootstrap_ci(frame, "cohort", seed=3) == bootstrap_ci(frame, "cohort", seed=3)
    est, lo, hi = bootstrap_ci(frame, "cohort", "popularity")
    assert lo < est < hi


def test_no_noise_reference_is_exact_and_dp_replays_are_noisy():
    rng = np.random.default_rng(0)
    n = 600
    users = [f"u{i}" for i in range(n)]
    policy = load_policy(POLICY)
    keys = policy.cohort_keys()
    catalog = pd.DataFrame(
        {"item_id": [f"i{j}" for j in range(40)], "category": [f"c{j % 4}" for j in range(40)]}
    )
    items = pd.DataFrame(
        {"user_id": np.repeat(users, 3), "item_id": rng.choice(catalog["item_id"], 3 * n)}
    )
    items = items.drop_duplicates().assign(value=1 / math.sqrt(3))
    cats = (
        items.merge(catalog).groupby(["user_id", "category"]).size().rename("value").reset_index()
    )
    cats["value"] /= np.sqrt(cats.groupby("user_id")["value"].transform(lambda v: (v**2).sum()))
    assignments = pd.DataFrame({"user_id": users, "cohort_key": [keys[i % 4] for i in range(n)]})
    # The per-key sums user_profiles stores (bounding.bounded_totals), from these per-user rows.
    totals = assignments.groupby("cohort_key").size().rename("users").reset_index()
    category_totals = (
        cats.merge(assignments).groupby(["cohort_key", "category"])["value"].sum().reset_index()
    )
    item_totals = items.groupby("item_id")["value"].sum().reset_index()
    inputs = RankingInputs(totals, category_totals, item_totals, catalog)
    exact = replay_ranking(inputs, policy, noise=False)
    assert exact.recommendations.equals(replay_ranking(inputs, policy, noise=False).recommendations)
    counts = assignments["cohort_key"].value_counts()
    sizes = exact.plan.set_index("cohort_key")["noisy_users"]
    assert all(sizes[k] == counts[k] for k in counts.index if k in sizes.index)
    noisy = replay_ranking(inputs, policy)
    assert not np.allclose(
        noisy.popularity["noisy_popularity"], exact.popularity["noisy_popularity"]
    )
    assert _NoNoise()([1.5, 2.0]).tolist() == [1.5, 2.0]


# -- the asset, for real ---------------------------------------------------------------------


def results_rows(data_dir, day=RELEASE_DATE):
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            f"SELECT * FROM release.experiment_results WHERE release_date = DATE '{day}'"
        ).df()
    except duckdb.CatalogException:
        return pd.DataFrame()
    finally:
        con.close()


def report_metadata(result):
    mats = result.asset_materializations_for_node("experiment_report")
    assert len(mats) == 1
    return {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()}


def test_report_without_the_earlier_release_says_so_then_evaluates_it_once_it_exists(small_dir):
    instance = DagsterInstance.ephemeral()
    alone = run_release(small_dir, instance=instance)
    assert alone.success  # `--select '*'` for the latest date must not fail
    meta = report_metadata(alone)
    assert "No experiment" in meta["status"] and "cohort_recommendations" in meta["status"]
    assert results_rows(small_dir).empty

    ranked = (date.fromisoformat(RELEASE_DATE) - timedelta(days=EVAL_DAYS)).isoformat()
    assert run_release(small_dir, ranked, instance=instance).success
    report = [AssetKey("experiment_report")]  # this date's reservation exists already
    later = run_release(small_dir, instance=instance, selection=report)
    assert later.success
    rows = results_rows(small_dir)
    assert set(rows["arm"]) == {"cohort", "popularity", UPLIFT_ARM}  # no reference arm
    assert REFERENCE_ARM not in str(report_metadata(later))
    means = rows[rows["arm"].isin(["cohort", "popularity"]) & rows["metric"].isin(METRICS)]
    assert len(means) == 6 and means["value"].between(-0.2, 1.2).all()
    assert (rows["ranking_release"].astype(str) == ranked).all()
    meta = report_metadata(later)
    assert "Gaussian (OpenDP), std" in meta["noise"] and "ndcg_at_10" in meta["report"]
    assert (
        "u0" not in meta["report"]
        and not rows.astype(str).apply(lambda c: c.str.contains("u0")).any().any()
    )

    ledger = duckdb.connect(str(small_dir / "ledger.duckdb"), read_only=True)
    try:
        spent = ledger.execute(
            "SELECT count(*) FROM privacy_spend WHERE asset = 'experiment_report'"
        ).fetchall()
    finally:
        ledger.close()
    again = run_release(small_dir, instance=instance, selection=report)
    assert again.success and report_metadata(again)["status"] == "returned the stored draw"
    assert results_rows(small_dir)["value"].equals(rows["value"])
    ledger = duckdb.connect(str(small_dir / "ledger.duckdb"), read_only=True)
    try:
        assert (
            ledger.execute(
                "SELECT count(*) FROM privacy_spend WHERE asset = 'experiment_report'"
            ).fetchall()
            == spent
        )
    finally:
        ledger.close()
    assert spent[0][0] == 2  # one reservation per release date, none for the re-runs


def test_report_refuses_without_a_reservation(small_dir):
    private = [
        AssetKey(k) for k in ("catalog", "opt_outs", "raw_events", *BOUNDED, "cohort_assignments")
    ]
    assert run_release(small_dir, selection=private).success
    result = run_release(small_dir, selection=[AssetKey("experiment_report")])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no reservation" in str(failure.event_specific_data.error.message)


def test_no_experiment_reason_says_why_and_when():
    day = date(2026, 11, 28)
    # No release 7 days earlier: the first report is due 7 days after this one.
    text = no_experiment_reason(day, [date(2026, 11, 26), date(2026, 11, 27)])
    assert "evaluates the ranking released on 2026-11-21" in text
    assert "due on 2026-12-03" in text  # 2026-11-26 + 7
    assert no_experiment_reason(day, []).count("due on 2026-12-05") == 1  # its own ranking
    assert next_experiment_date(day, [date(2026, 11, 21)]) == day
