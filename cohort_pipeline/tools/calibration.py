"""Noise-calibration check of the release mechanisms (Jagielski, Ullman & Oprea 2020 style).

It checks that each OpenDP measurement, fed its *claimed* sensitivity, noises as much as its
claimed cost requires; it takes the sensitivity on trust. That the pipeline's real vectors
move by no more than it is checked by test_sensitivity.py and, end to end from events to
released values, by `privacy.end_to_end_audit` (which reuses the bounds below).

For each registered measurement (`measurements.mechanisms(policy)`), with its real calibrated scale:

1. Worst-case neighbours: D gives the mechanism the exact value 0, D' adds a maximal user,
   i.e. the value `sensitivity` (the largest move one user can make, as the property tests
   in test_sensitivity.py check). A Laplace count's maximal user is one coordinate already;
   for Gaussian noise, which is isotropic, a maximal user's L2 move in any direction is
   equivalent to the same move on one coordinate.
2. N runs on each: the OpenDP measurement is built once and called on a vector of N copies
   of the input; each coordinate is an independent draw of the same calibrated mechanism
   (one call per run costs ~0.1-0.3 ms of FFI overhead, which is most of the work).
3. A threshold attack, "guess D' when the output exceeds t": t is chosen on the first half
   of the runs and evaluated on the second half, so selection does not bias the bound.
4. Clopper-Pearson bounds on the attack's error rates (one-sided, alpha/4 each: the four
   intervals behind the two bounds below hold together with confidence 1 - alpha) turn into
   lower bounds on the privacy parameters:
   - epsilon: any (epsilon, delta)-DP mechanism has TPR <= e^eps FPR + delta and
     TNR <= e^eps FNR + delta, so eps >= log((1 - delta - FNR) / FPR), and symmetrically;
     delta is the one the ledger records (0 for Laplace).
   - rho: rho-zCDP bounds the KL divergence of the outputs (Renyi order 1) by rho, and so,
     by data processing, the KL divergence of the attack's Bernoulli outcome. This is the
     sharper test for zCDP claims, whose (epsilon, delta) conversion is loose.

A lower bound above its claim means the claim is false (with confidence 1 - alpha):
`python -m cohort_pipeline.tools.calibration` exits 1. `--with-broken` adds a half-noise twin of
every mechanism, which the check must flag (else it exits 1 too). No noise here reaches a
release.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.mechanisms import Mechanism, gaussian, laplace
from cohort_pipeline.settings import Settings

ALPHA = 0.05
N_THRESHOLDS = 400  # candidate thresholds (quantiles of the selection half)
_Z_SELECT = 1.96  # Wilson slack used only to rank candidate thresholds


@dataclass(frozen=True)
class CalibrationResult:
    mechanism: str  # the measurement (or a test's label)
    kind: str  # laplace | gaussian
    sensitivity: float
    noise_scale: float
    trials: int  # runs on each of D and D'
    claimed_epsilon: float
    delta: float
    epsilon_lower_bound: float
    claimed_rho: float
    rho_lower_bound: float
    seconds: float

    @property
    def passed(self) -> bool:
        return (
            self.epsilon_lower_bound <= self.claimed_epsilon
            and self.rho_lower_bound <= self.claimed_rho
        )


# -- Clopper-Pearson ----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))])


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), summed in log space (exact enough for n in the millions)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lf = _log_factorials(n)
    i = np.arange(k + 1)
    logs = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on p after k successes in n: P(p <= it) >= 1-alpha."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: the CDF falls as p rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _binomial_cdf(k, n, mid) > alpha else (lo, mid)
    return hi


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on p after k successes in n."""
    return 1.0 - cp_upper(n - k, n, alpha)


# -- bounds from one threshold test ---------------------------------------------------------


def epsilon_bound(fpr: float, fnr: float, delta: float) -> float:
    """The smallest epsilon an (epsilon, delta)-DP mechanism needs to allow these error
    rates (0 if any epsilon allows them)."""
    best = 0.0
    for a, b in ((fnr, fpr), (fpr, fnr)):
        if 1.0 - delta - a > 0.0 and b < 1.0:
            best = max(best, math.log((1.0 - delta - a) / b) if b > 0 else math.inf)
    return best


def bernoulli_kl(a: float, b: float) -> float:
    """KL(Bernoulli(a) || Bernoulli(b))."""

    def term(x: float, y: float) -> float:
        if x == 0.0:
            return 0.0
        return math.inf if y == 0.0 else x * math.log(x / y)

    return term(a, b) + term(1.0 - a, 1.0 - b)


def rho_bound(tpr: float, fpr: float) -> float:
    """The smallest rho a rho-zCDP mechanism needs for these rates (KL <= rho, both ways)."""
    if tpr <= fpr:
        return 0.0
    return max(bernoulli_kl(tpr, fpr), bernoulli_kl(fpr, tpr))


def _counts_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="right")


def _wilson(p: np.ndarray, n: int, sign: float) -> np.ndarray:
    """Wilson score bound (upper for sign=+1, lower for -1): close to Clopper-Pearson and
    cheap, so it ranks candidate thresholds the way the final bound will judge them."""
    z = _Z_SELECT
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + sign * spread) / (1 + z * z / n)


def _select_threshold(d: np.ndarray, d1: np.ndarray, delta: float, which: str) -> float:
    """The threshold whose approximate bound is largest on the selection half."""
    d, d1 = np.sort(d), np.sort(d1)
    n = len(d)
    thresholds = np.quantile(np.concatenate([d, d1]), np.linspace(0.0, 1.0, N_THRESHOLDS + 2)[1:-1])
    fp = _counts_above(d, thresholds) / n
    tp = _counts_above(d1, thresholds) / n
    fpr_hi = _wilson(fp, n, +1)
    if which == "epsilon":
        fnr_hi = _wilson(1.0 - tp, n, +1)
        score = [epsilon_bound(a, b, delta) for a, b in zip(fpr_hi, fnr_hi, strict=True)]
    else:
        tpr_lo = _wilson(tp, n, -1)
        score = [rho_bound(a, b) for a, b in zip(tpr_lo, fpr_hi, strict=True)]
    return float(thresholds[int(np.argmax(score))])


def lower_bounds(
    d: np.ndarray, d1: np.ndarray, delta: float, alpha: float = ALPHA
) -> tuple[float, float]:
    """(epsilon lower bound, rho lower bound) from outputs on D and D' (equal lengths):
    thresholds picked on the first half, Clopper-Pearson bounds on the second. Each bound
    uses two one-sided intervals at alpha/4, so both hold together with confidence 1 - alpha."""
    each = alpha / 4
    half = len(d) // 2
    test_d, test_d1 = np.sort(d[half:]), np.sort(d1[half:])
    n = len(test_d)
    bounds = []
    for which in ("epsilon", "rho"):
        t = _select_threshold(d[:half], d1[:half], delta, which)
        fp = int(_counts_above(test_d, np.array([t]))[0])
        tp = int(_counts_above(test_d1, np.array([t]))[0])
        if which == "epsilon":
            fpr_hi, fnr_hi = cp_upper(fp, n, each), cp_upper(n - tp, n, each)
            bounds.append(epsilon_bound(fpr_hi, fnr_hi, delta))
        else:
            bounds.append(rho_bound(cp_lower(tp, n, each), cp_upper(fp, n, each)))
    return bounds[0], bounds[1]


def check_mechanism(
    name: str, mech: Mechanism, trials: int, alpha: float = ALPHA
) -> CalibrationResult:
    """Run `mech` `trials` times on D (value 0) and on D' (value `sensitivity`), attack it
    and bound its privacy from below. Note the split: half the runs pick the threshold."""
    start = time.perf_counter()
    d = mech(np.zeros(trials))
    d1 = mech(np.full(trials, mech.sensitivity))
    eps_lb, rho_lb = lower_bounds(d, d1, mech.spend.delta, alpha)
    return CalibrationResult(
        mechanism=name,
        kind=mech.name,
        sensitivity=mech.sensitivity,
        noise_scale=mech.scale,
        trials=trials,
        claimed_epsilon=mech.spend.epsilon,
        delta=mech.spend.delta,
        epsilon_lower_bound=eps_lb,
        claimed_rho=mech.spend.rho,
        rho_lower_bound=rho_lb,
        seconds=time.perf_counter() - start,
    )


def half_noise(honest: Mechanism) -> Mechanism:
    """A deliberately broken mechanism: half the noise scale, still claiming the honest
    spend (what a sensitivity under-counted by 2x looks like). The check must flag it."""
    if honest.name == "laplace":
        noisier = laplace(honest.sensitivity, 2 * honest.spend.epsilon)
    else:
        noisier = gaussian(honest.sensitivity, 4 * honest.spend.rho, honest.spend.delta)
    return replace(noisier, spend=honest.spend)


BROKEN = "broken (half noise): "  # label prefix of a half_noise mechanism's result


def _check_policy_mechanism(
    policy: Policy, name: str, trials: int, alpha: float, broken: bool
) -> CalibrationResult:
    # Runs in a worker process: OpenDP measurements do not pickle, the policy does.
    mech = mechanisms(policy)[name]
    if broken:
        return check_mechanism(BROKEN + name, half_noise(mech), trials, alpha)
    return check_mechanism(name, mech, trials, alpha)


def check_policy(
    policy: Policy, trials: int, alpha: float = ALPHA, workers: int = 1, with_broken: bool = False
) -> list[CalibrationResult]:
    """Check every release mechanism of `policy` (and, with_broken, a half-noise twin of
    each, which must fail), in `workers` processes."""
    jobs = [(n, False) for n in mechanisms(policy)]
    jobs += [(n, True) for n, _ in jobs] if with_broken else []
    if workers <= 1:
        return [_check_policy_mechanism(policy, n, trials, alpha, b) for n, b in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        runs = [pool.submit(_check_policy_mechanism, policy, n, trials, alpha, b) for n, b in jobs]
        return [r.result() for r in runs]


def verdict(results: list[CalibrationResult]) -> list[str]:
    """What went wrong: an honest mechanism flagged, or a broken one not caught."""
    return [
        f"{r.mechanism}: "
        + ("not caught" if r.mechanism.startswith(BROKEN) else "lower bound above the claim")
        for r in results
        if r.passed == r.mechanism.startswith(BROKEN)
    ]


def closing_columns(r) -> dict:
    """The columns every audit table ends with: the ρ claim, its bound and the verdict."""
    return {
        "claimed ρ": r.claimed_rho,
        "ρ lower bound": r.rho_lower_bound,
        "passed": r.passed,
        "seconds": round(r.seconds, 1),
    }


def markdown_table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def results_table(results: list[CalibrationResult]) -> str:
    return markdown_table(
        [
            {
                "mechanism": r.mechanism,
                "kind": r.kind,
                "trials": r.trials,
                "claimed ε": r.claimed_epsilon,
                "ε lower bound": r.epsilon_lower_bound,
                "δ": r.delta,
                **closing_columns(r),
            }
            for r in results
        ]
    )


def results_json(results: list[CalibrationResult]) -> list[dict]:
    return [{**asdict(r), "passed": r.passed} for r in results]


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000, help="runs on each of D and D'")
    parser.add_argument(
        "--policy",
        default=str(settings.policy_path),
        help="policy file whose mechanisms are checked",
    )
    parser.add_argument("--alpha", type=float, default=ALPHA, help="1 - confidence")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", dest="json_path", help="also write the JSON to this file")
    parser.add_argument(
        "--with-broken",
        action="store_true",
        help="also check a half-noise twin of every mechanism; each must be flagged",
    )
    args = parser.parse_args(argv)
    if args.trials < 100:
        parser.error("--trials must be at least 100")
    start = time.perf_counter()
    policy = load_policy(args.policy, settings.partitions_start)
    results = check_policy(policy, args.trials, args.alpha, args.workers, args.with_broken)
    payload = {
        "policy": args.policy,
        "alpha": args.alpha,
        "seconds": round(time.perf_counter() - start, 1),
        "results": results_json(results),
    }
    print(results_table(results))
    print(json.dumps(payload, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    problems = verdict(results)
    if problems:
        print("NOISE-CALIBRATION CHECK FAILED: " + "; ".join(problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
