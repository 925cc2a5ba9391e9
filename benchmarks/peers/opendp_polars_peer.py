"""OpenDP's Polars integration (runs in benchmarks/.venv-opendp-polars).

One query: group by cohort over the public key set, dp.len and three dp.means, under the same
zCDP budget rho; OpenDP calibrates one noise scale for the whole query.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import opendp.prelude as dp
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEANS, report, task, timed  # noqa: E402

dp.enable_features("contrib")


def main() -> None:
    spec = task()

    def run() -> dict:
        frame = pl.read_parquet(spec["input"]).select("cohort_key", *MEANS)
        context = dp.Context.compositor(
            data=frame.lazy(),
            privacy_unit=dp.unit_of(contributions=1),  # one row per user
            privacy_loss=dp.loss_of(rho=spec["rho"]),
            split_evenly_over=1,
            margins=[
                dp.polars.Margin(
                    by=["cohort_key"],
                    invariant="keys",
                    max_length=spec["max_length"],
                    max_groups=len(spec["keys"]),
                )
            ],
        )
        aggs = [dp.len().alias("users")]
        for column in MEANS:
            lo, hi = spec["bounds"][column]
            aggs.append(
                pl.col(column).cast(pl.Float64).fill_null(lo).dp.mean((float(lo), float(hi)))
            )
        released = context.query().group_by("cohort_key").agg(aggs).release().collect()
        return {row["cohort_key"]: {k: v for k, v in row.items() if k != "cohort_key"}
                for row in released.iter_rows(named=True)}  # fmt: skip

    times, releases = timed(run, spec["repeats"])
    report(
        spec,
        "OpenDP Polars",
        f"opendp {version('opendp')}, polars {version('polars')}",
        times,
        releases,
        notes="zCDP rho; noise calibrated by OpenDP for the whole query; keys public",
    )


if __name__ == "__main__":
    main()
