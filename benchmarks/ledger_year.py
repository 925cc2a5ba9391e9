"""Ledger admission over a long history: `Ledger.reserve` and `Ledger.summary` with a year
and more of daily releases of the default policy on record.

Builds a ledger of `--releases` consecutive daily releases (5 rows each) through
`Ledger.reserve` itself, then times, in a fresh process state (the accountant's cache
emptied), one more reservation (the date after the last) and one summary. Every reservation
composes the worst cap window and the worst horizon span containing its date with
dp-accounting's PLD accountant.

    .venv/bin/python benchmarks/ledger_year.py --releases 400
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy import accounting
from cohort_pipeline.privacy.ledger import Ledger
from cohort_pipeline.privacy.measurements import planned_measurements
from cohort_pipeline.privacy.release import budget_cap

POLICY = Path(__file__).resolve().parents[1] / "data" / "policy.yaml"
FIRST = date(2025, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=400)
    args = parser.parse_args()
    policy = load_policy(POLICY)
    cap, measurements = budget_cap(policy), planned_measurements(policy)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.duckdb")
        started = time.perf_counter()
        for n in range(args.releases):
            ledger.reserve(
                FIRST + timedelta(days=n), measurements,
                policy_hash=policy.hash, run_id=f"r{n}", cap=cap,
            )  # fmt: skip
        build = time.perf_counter() - started
        accounting._pld_epsilon.cache_clear()  # time a cold accountant
        started = time.perf_counter()
        res = ledger.reserve(
            FIRST + timedelta(days=args.releases), measurements,
            policy_hash=policy.hash, run_id="last", cap=cap,
        )  # fmt: skip
        reserve_s = time.perf_counter() - started
        accounting._pld_epsilon.cache_clear()
        started = time.perf_counter()
        summary = ledger.summary(cap)
        summary_s = time.perf_counter() - started
    print(f"{args.releases} releases x {len(measurements)} rows built in {build:.1f} s")
    print(f"reserve (cold accountant): {reserve_s:.3f} s; window epsilon {res.epsilon_spent:.4f}")
    print(
        f"summary (cold accountant): {summary_s:.3f} s; window epsilon"
        f" {summary['epsilon_spent']:.4f}, horizon epsilon {summary['horizon_epsilon']:.4f}"
        f" over {summary['horizon_days']} days ({summary['accountant']})"
    )


if __name__ == "__main__":
    main()
