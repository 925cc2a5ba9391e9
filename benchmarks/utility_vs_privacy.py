"""Utility vs privacy: NDCG@10 per arm against epsilon per release, on the default sample.

Runs the real pipeline (Dagster, in process) for the ranking release R = D - 7 and the
report release D, then replays the cohort method on R's private tables at several epsilons
(and without noise) and evaluates every ranking exactly on the events of (R, D]. Also checks
the issue's done criteria on the pipeline's own release of R, with bootstrap intervals over
users. Synthetic data, run on demand; the no-noise arm is never released.

    .venv/bin/python benchmarks/utility_vs_privacy.py [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from dagster import materialize  # noqa: E402

from cohort_pipeline.definitions import all_assets, resources_for  # noqa: E402
from cohort_pipeline.logic.experiments import (  # noqa: E402
    ARMS,
    HEADLINE,
    REFERENCE_ARM,
    Ranking,
    RankingInputs,
    arms_of,
    bootstrap_ci,
    evaluated_users,
    per_user_metrics,
    ranking_date,
    relevant_items,
    replay_ranking,
)
from cohort_pipeline.policy import load_policy, parse_policy  # noqa: E402
from cohort_pipeline.resources import WarehouseResource  # noqa: E402
from cohort_pipeline.storage import warehouse  # noqa: E402
from cohort_pipeline.tools.generate import generate  # noqa: E402

EPSILONS = (0.1, 0.3, 1.0, 3.0, 10.0)
END = date(2026, 11, 28)  # the default sample of the tests: 20k users, 30 days, seed 7
REPO = Path(__file__).resolve().parents[1]


def load(data: Path, ranked: str, release_date: str):
    wh = WarehouseResource(path=str(data / "warehouse.duckdb"))
    inputs = RankingInputs(
        *(
            warehouse.partition(wh, table, ranked)
            for table in (
                warehouse.COHORT_TOTALS,
                warehouse.COHORT_CATEGORY_TOTALS,
                warehouse.ITEM_TOTALS,
            )
        ),
        warehouse.read_catalog(wh, ranked),
    )
    released = Ranking(
        *(
            warehouse.partition(wh, table, ranked)
            for table in (
                warehouse.COHORT_SIZES,
                warehouse.COHORT_RECOMMENDATIONS,
                warehouse.ITEM_POPULARITY,
            )
        )
    )
    events = warehouse.partition(
        wh, warehouse.RAW_EVENTS, release_date, "user_id, item_id, event_time"
    )
    relevant = relevant_items(events, date.fromisoformat(ranked), date.fromisoformat(release_date))
    readouts = warehouse.partition(wh, warehouse.EXPERIMENT_RESULTS, release_date)
    return inputs, released, relevant, readouts


def score(ranking: Ranking, relevant, users, top_n: int, name: str) -> pd.DataFrame:
    key_map, cohort_lists, pop_lists = arms_of(ranking, top_n)
    return per_user_metrics(
        relevant, users, {name: (key_map, cohort_lists), "popularity": (key_map, pop_lists)}
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="replays per epsilon (fresh noise)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    out = args.out
    data = out / "utility_sample"
    if not (data / "catalog.csv").exists():
        generate(data, users=20_000, days=30, seed=7, end_date=END)
    shutil.copy(REPO / "data" / "policy.yaml", data / "policy.yaml")
    for stale in data.glob("*.duckdb*"):  # a fresh ledger each run: repeated runs never hit the cap
        stale.unlink()
    release_date = END.isoformat()
    ranked = ranking_date(END).isoformat()
    for day in (ranked, release_date):
        start = time.perf_counter()
        result = materialize(all_assets, partition_key=day, resources=resources_for(data))
        assert result.success, f"release {day} failed"
        print(f"release {day}: {time.perf_counter() - start:.1f} s")

    policy = load_policy(data / "policy.yaml")
    inputs, released, relevant, readouts = load(data, ranked, release_date)
    users = evaluated_users(relevant, inputs.assignments)
    top_n = policy.top_n

    # Done criteria on the pipeline's own release of R, exact evaluation + bootstrap.
    reference = score(
        replay_ranking(inputs, policy, noise=False), relevant, users, top_n, REFERENCE_ARM
    )
    dp = score(released, relevant, users, top_n, "cohort")
    dp[f"{REFERENCE_ARM}_{HEADLINE}"] = reference[f"{REFERENCE_ARM}_{HEADLINE}"]
    uplift = bootstrap_ci(dp, "cohort", "popularity")
    kept = bootstrap_ci(dp, "cohort", REFERENCE_ARM)
    criteria = {
        "ndcg_cohort": bootstrap_ci(dp, "cohort"),
        "ndcg_popularity": bootstrap_ci(dp, "popularity"),
        "ndcg_cohort_no_noise": bootstrap_ci(dp, REFERENCE_ARM),
        "uplift_cohort_vs_popularity": uplift,
        "dp_over_no_noise": (kept[0] + 1, kept[1] + 1, kept[2] + 1),
        "target_uplift_met": uplift[0] >= 0.10 and uplift[1] > 0,
        "target_dp_kept_met": kept[0] + 1 >= 0.95,
    }
    print(json.dumps(criteria, indent=2))

    # Utility against epsilon per release: replays with fresh OpenDP noise.
    rows = []
    for eps in EPSILONS:
        raw = copy.deepcopy(policy.raw)
        raw["budget"]["epsilon_per_release"] = eps
        at_eps = parse_policy(raw)
        for rep in range(args.repeats):
            scores = score(replay_ranking(inputs, at_eps), relevant, users, top_n, "cohort")
            for arm in ARMS:
                rows.append({"epsilon": eps, "repeat": rep, "arm": arm,
                             "ndcg_at_10": scores[f"{arm}_{HEADLINE}"].mean()})  # fmt: skip
    for arm in ARMS:
        col = f"{REFERENCE_ARM if arm == 'cohort' else 'popularity'}_{HEADLINE}"
        rows.append(
            {"epsilon": float("inf"), "repeat": 0, "arm": arm, "ndcg_at_10": reference[col].mean()}
        )
    curve = pd.DataFrame(rows)
    summary = (
        curve.groupby(["arm", "epsilon"])["ndcg_at_10"]
        .agg(["mean", "std", "min", "max"])
        .reset_index()
    )
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    out.mkdir(parents=True, exist_ok=True)
    curve.to_csv(out / "utility_vs_privacy.csv", index=False)
    readouts.to_csv(out / "experiment_results_dp.csv", index=False)
    (out / "done_criteria.json").write_text(json.dumps(criteria, indent=2, default=str))
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, marker in zip(ARMS, "os", strict=True):
        part = summary[(summary["arm"] == arm) & (summary["epsilon"] < float("inf"))]
        ax.errorbar(
            part["epsilon"], part["mean"], yerr=part["std"], marker=marker, capsize=3, label=arm
        )
        no_noise = summary[(summary["arm"] == arm) & (summary["epsilon"] == float("inf"))][
            "mean"
        ].iloc[0]
        ax.axhline(no_noise, linestyle="--", linewidth=1, color=ax.lines[-1].get_color(),
                   label=f"{arm}, no noise (reference)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon per release (delta {policy.delta:.0e}, zCDP)")
    ax.set_ylabel("NDCG@10 on the next 7 days")
    ax.set_title("Utility vs privacy (20k synthetic users)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "utility_vs_privacy.png", dpi=120)
    print(f"wrote {out / 'utility_vs_privacy.png'}")


if __name__ == "__main__":
    main()
