"""PipelineDP, local backend (runs in benchmarks/.venv-pipelinedp).

PipelineDP's accountants compose (epsilon, delta) basically; its Laplace noise is pure DP, so
the run uses the whole epsilon with Laplace (a stricter guarantee than the others' zCDP at
delta). Three aggregations (one per mean; the first also counts) share the budget evenly.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pipeline_dp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402


def main() -> None:
    spec = task()
    keys = spec["keys"]

    def run() -> dict:
        rows = list(
            pd.read_parquet(spec["input"])[["user_id", "cohort_key", *MEANS]].itertuples(
                index=False
            )
        )
        accountant = pipeline_dp.NaiveBudgetAccountant(
            total_epsilon=spec["epsilon"], total_delta=spec["delta"]
        )
        engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
        results = {}
        for i, column in enumerate(MEANS):
            lo, hi = spec["bounds"][column]
            metrics = (
                [pipeline_dp.Metrics.COUNT, pipeline_dp.Metrics.MEAN]
                if i == 0
                else [pipeline_dp.Metrics.MEAN]
            )
            params = pipeline_dp.AggregateParams(
                noise_kind=pipeline_dp.NoiseKind.LAPLACE,
                metrics=metrics,
                max_partitions_contributed=1,
                max_contributions_per_partition=1,
                min_value=lo,
                max_value=hi,
            )
            extractors = pipeline_dp.DataExtractors(
                privacy_id_extractor=lambda r: r[0],
                partition_extractor=lambda r: r[1],
                value_extractor=lambda r, j=2 + i: float(r[j]),
            )
            results[column] = engine.aggregate(rows, params, extractors, public_partitions=keys)
        accountant.compute_budgets()
        out = {key: {} for key in keys}
        for column, result in results.items():
            for key, metrics in result:
                out[key][column] = metrics.mean
                if column == MEANS[0]:
                    out[key]["users"] = metrics.count
        return out

    times, releases = timed(run, spec["repeats"])
    report(
        spec,
        "PipelineDP (local backend)",
        version("pipeline-dp"),
        times,
        releases,
        notes="Laplace, naive composition of total epsilon (pure DP; delta unused)",
    )


if __name__ == "__main__":
    main()
