"""Privacy accounting: conversions between zCDP and (epsilon, delta)-DP, and composition.

Pure math, no Dagster, no noise. Every measurement of the project is accounted in
zero-concentrated DP (zCDP, Bun & Steinke 2016): a pure epsilon-DP measurement is
(epsilon^2 / 2)-zCDP, Gaussian noise of scale sigma on an L2-sensitivity-s query is
(s^2 / (2 sigma^2))-zCDP, zCDP composes by adding rho, and rho-zCDP implies
(rho + 2 sqrt(rho ln(1/delta)), delta)-DP for every delta > 0.

Two composition rules over a window of releases are offered (policy `budget.composition`):
- "basic": epsilons add up and deltas add up (valid for any mix, loose over many releases);
- "zcdp": rhos add up, then one conversion at the policy's delta (far tighter: the
  composed epsilon grows with the square root of the number of releases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

COMPOSITIONS = ("zcdp", "basic")


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


def compose(spends: list[Spend], composition: str, delta: float) -> tuple[float, float]:
    """The (epsilon, delta) guarantee of all `spends` together under `composition`."""
    if not spends:
        return 0.0, 0.0
    if composition == "basic":
        return sum(s.epsilon for s in spends), sum(s.delta for s in spends)
    if composition == "zcdp":
        return epsilon_from_rho(sum(s.rho for s in spends), delta), delta
    raise ValueError(f"budget.composition must be one of {COMPOSITIONS}, got {composition!r}")


def worst_window_spend(
    spends: list[tuple[date, Spend]],
    window_days: int,
    composition: str,
    delta: float,
    around: date,
) -> tuple[float, float]:
    """The largest composed spend over any `window_days` consecutive release dates that
    contain `around`: the figure a cap must bound when a release for `around` is added
    (backfills of old dates included)."""
    worst = (0.0, 0.0)
    for offset in range(window_days):
        start = around - timedelta(days=window_days - 1 - offset)
        end = start + timedelta(days=window_days - 1)
        window = [s for d, s in spends if start <= d <= end]
        worst = max(worst, compose(window, composition, delta))
    return worst
