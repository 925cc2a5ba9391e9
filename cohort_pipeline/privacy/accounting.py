"""Privacy accounting: zCDP calibration, and the composition of ledger rows.

Pure math, no Dagster, no noise. Each measurement is *calibrated* in zero-concentrated DP
(zCDP, Bun & Steinke 2016): a pure epsilon-DP measurement is (epsilon^2 / 2)-zCDP, Gaussian
noise of scale sigma on an L2-sensitivity-s query is (s^2 / (2 sigma^2))-zCDP, and rho-zCDP
implies (rho + 2 sqrt(rho ln(1/delta)), delta)-DP. measurements.py splits one release's budget
with these formulas; they are conservative.

Many releases are *composed* under the policy's `budget.composition`:
- "zcdp": the zCDP-calibrated mechanisms, composed by Google's dp-accounting privacy-loss-
  distribution (PLD) accountant at the policy's delta. PLD composes the noise itself (each
  ledger row is a Laplace or Gaussian event of noise multiplier noise_scale / sensitivity),
  so it is tighter than adding rhos and converting once, for the same noise.
- "basic": epsilons add up and deltas add up (valid for any mix, loose over many releases).

`sampled_spend` composes releases that each read a Poisson sample of users (amplification
by sampling, as dp-accounting computes it).

Neighbouring datasets differ by adding or removing one user.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from importlib.metadata import version

import dp_accounting
from dp_accounting.pld import PLDAccountant

from cohort_pipeline.policy import COMPOSITIONS

ACCOUNTANTS = {
    "zcdp": f"dp-accounting {version('dp-accounting')} PLD",
    "basic": "basic composition (sums of epsilon and delta)",
}
MECHANISMS = ("laplace", "gaussian")
# PLD grid step in privacy-loss units. The PLD is rounded pessimistically (never below the true
# loss); 1e-3 moves a year of daily releases by under 1e-3 and composes it ten times faster
# than dp-accounting's default 1e-4.
PLD_DISCRETIZATION = 1e-3


def epsilon_from_rho(rho: float, delta: float) -> float:
    """The epsilon that rho-zCDP implies at `delta` (Bun & Steinke 2016, Prop. 1.3)."""
    if rho < 0 or not 0 < delta < 1:
        raise ValueError(f"need rho >= 0 and 0 < delta < 1, got rho={rho}, delta={delta}")
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def rho_from_epsilon(epsilon: float, delta: float) -> float:
    """The largest rho whose conversion at `delta` is at most `epsilon` (inverse of the above)."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    log_term = math.log(1.0 / delta)
    # epsilon = (sqrt(rho) + sqrt(L))^2 - L  =>  sqrt(rho) = sqrt(epsilon + L) - sqrt(L)
    return (math.sqrt(epsilon + log_term) - math.sqrt(log_term)) ** 2


@dataclass(frozen=True)
class Spend:
    """The privacy cost of one measurement, as recorded in the ledger.

    `delta` is 0 for a pure-DP measurement; a zCDP measurement carries `rho` and its
    `epsilon` is the conversion at the policy's delta.
    """

    epsilon: float
    delta: float
    rho: float

    @classmethod
    def pure(cls, epsilon: float) -> Spend:
        return cls(epsilon=epsilon, delta=0.0, rho=epsilon * epsilon / 2.0)

    @classmethod
    def zcdp(cls, rho: float, delta: float) -> Spend:
        return cls(epsilon=epsilon_from_rho(rho, delta), delta=delta, rho=rho)

    def within(self, reserved: Spend) -> bool:
        """True when this spend is covered by `reserved` in epsilon, delta and rho (up to
        float rounding): noise may only be drawn under a reservation that covers it."""
        return all(
            mine <= theirs * (1 + 1e-9) + 1e-15
            for mine, theirs in (
                (self.epsilon, reserved.epsilon),
                (self.delta, reserved.delta),
                (self.rho, reserved.rho),
            )
        )


@dataclass(frozen=True)
class Charge:
    """One ledger row as an accountant composes it: its recorded spend (summed under basic
    composition) and its noise (composed by PLD): `mechanism` laplace | gaussian, and
    `noise_multiplier` = noise scale / sensitivity (L1 for Laplace, L2 for Gaussian)."""

    spend: Spend
    mechanism: str
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if not self.noise_multiplier > 0:  # NaN too
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")

    @classmethod
    def of(cls, mechanism: str, spend: Spend, sensitivity: float, noise_scale: float) -> Charge:
        # a zero sensitivity makes any noise infinitely large relative to it: no privacy loss
        multiplier = math.inf if sensitivity == 0 else noise_scale / sensitivity
        return cls(spend, mechanism, multiplier)


def _check(composition: str) -> None:
    if composition not in COMPOSITIONS:
        raise ValueError(f"budget.composition must be one of {COMPOSITIONS}, got {composition!r}")


def compose(charges: Iterable[Charge], composition: str, delta: float) -> tuple[float, float]:
    """The (epsilon, delta) guarantee of all `charges` together under `composition`; under
    zcdp, epsilon is PLD's at `delta`."""
    _check(composition)
    charges = list(charges)
    if composition == "basic":
        return sum(c.spend.epsilon for c in charges), sum(c.spend.delta for c in charges)
    if not charges:
        return 0.0, 0.0
    return _pld_epsilon(_events(Counter((c.mechanism, c.noise_multiplier) for c in charges)), delta)


def _events(counts: Counter) -> tuple:
    """A canonical, hashable key of a multiset of (mechanism, noise multiplier)."""
    return tuple(sorted((event, n) for event, n in counts.items() if n > 0))


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"need 0 < delta < 1, got {delta}")


def _pld_composed(parts: list, delta: float) -> tuple[float, float]:
    """dp-accounting's PLD accountant over the composition of `parts`, at `delta`."""
    if not parts:
        return 0.0, delta
    accountant = PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, PLD_DISCRETIZATION
    )
    accountant.compose(dp_accounting.ComposedDpEvent(parts))
    return max(0.0, float(accountant.get_epsilon(delta))), delta


@functools.lru_cache(maxsize=4096)
def _pld_epsilon(events: tuple, delta: float) -> tuple[float, float]:
    """PLD epsilon at `delta` of identical events grouped and self-composed. Gaussian events
    are first merged into one: Gaussians of multipliers s_i compose exactly to one Gaussian of
    multiplier (sum s_i^-2)^-1/2 (Dong, Roth & Su 2019), which PLD composes in one step."""
    _check_delta(delta)
    parts = [
        dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(multiplier), n)
        for (mechanism, multiplier), n in events
        if mechanism == "laplace" and math.isfinite(multiplier)
    ]
    inverse_square = sum(
        n / multiplier**2 for (mechanism, multiplier), n in events if mechanism == "gaussian"
    )
    if inverse_square > 0:
        parts.append(dp_accounting.GaussianDpEvent(inverse_square**-0.5))
    return _pld_composed(parts, delta)


def worst_window_spend(
    charges: list[tuple[date, Charge]],
    window_days: int,
    composition: str,
    delta: float,
    around: date,
) -> tuple[float, float]:
    """The largest composed epsilon, and the largest composed delta, over any `window_days`
    consecutive release dates that contain `around`: what a cap must bound when a release for
    `around` is added (backfills of old dates included). Serves the cap window and the
    horizon span alike.

    Fast over a year of rows: spans slide one date at a time, identical multisets of events
    are composed once, and a span whose events are a subset of another's is skipped (adding
    a measurement never lowers the composed loss)."""
    _check(composition)
    first = around - timedelta(days=window_days - 1)
    last = around + timedelta(days=window_days - 1)
    per_day: dict[date, list[Charge]] = {}
    for day, charge in charges:
        if first <= day <= last:
            per_day.setdefault(day, []).append(charge)
    if composition == "basic":
        daily = [
            (sum(c.spend.epsilon for c in cs), sum(c.spend.delta for c in cs))
            for cs in (
                per_day.get(first + timedelta(days=i), []) for i in range(2 * window_days - 1)
            )
        ]
        return tuple(
            max(sum(day[i] for day in daily[o : o + window_days]) for o in range(window_days))
            for i in (0, 1)
        )

    counts: Counter = Counter()
    for day in per_day:
        if day <= around:
            counts.update((c.mechanism, c.noise_multiplier) for c in per_day[day])
    spans = {_events(counts)}
    for offset in range(1, window_days):  # slide: drop the day before the start, add the end
        counts.subtract(
            (c.mechanism, c.noise_multiplier)
            for c in per_day.get(first + timedelta(days=offset - 1), [])
        )
        counts.update(
            (c.mechanism, c.noise_multiplier)
            for c in per_day.get(around + timedelta(days=offset), [])
        )
        spans.add(_events(counts))
    maximal: list[dict] = []
    for span in sorted(spans, key=lambda s: -sum(n for _, n in s)):
        if not any(all(big.get(e, 0) >= n for e, n in span) for big in maximal):
            maximal.append(dict(span))
    composed = [_pld_epsilon(tuple(sorted(m.items())), delta) for m in maximal if m]
    return max(composed, default=(0.0, 0.0))


def sampled_spend(
    charges: Iterable[Charge], sampling_rate: float, releases: int, delta: float
) -> tuple[float, float]:
    """The (epsilon, delta) of `releases` releases of `charges` in which each measurement
    reads its own Poisson sample of users (each user kept independently with probability
    `sampling_rate`, a fresh sample per measurement and release): dp-accounting's
    PoissonSampledDpEvent around each Laplace or Gaussian event, composed by its PLD
    accountant at `delta`. Amplification by sampling is dp-accounting's, never a hand bound.

    A sample per measurement, not per release: dp-accounting samples one Laplace or one
    Gaussian event, and a release mixes both. At rate 1 there is no sampling: the figure is
    `compose`'s (zcdp), whose exact Gaussian merge is tighter than sampled events composed."""
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"need 0 < sampling_rate <= 1, got {sampling_rate}")
    if releases < 0:
        raise ValueError(f"need releases >= 0, got {releases}")
    charges = list(charges)
    if sampling_rate == 1:
        return compose(charges * releases, "zcdp", delta)
    counts = Counter((c.mechanism, c.noise_multiplier) for c in charges)
    return _sampled_epsilon(
        _events(Counter({event: n * releases for event, n in counts.items()})),
        sampling_rate,
        delta,
    )


@functools.lru_cache(maxsize=256)
def _sampled_epsilon(events: tuple, sampling_rate: float, delta: float) -> tuple[float, float]:
    _check_delta(delta)
    kinds = {"laplace": dp_accounting.LaplaceDpEvent, "gaussian": dp_accounting.GaussianDpEvent}
    parts = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(sampling_rate, kinds[mechanism](multiplier)), n
        )
        for (mechanism, multiplier), n in events
        if math.isfinite(multiplier)
    ]
    return _pld_composed(parts, delta)
