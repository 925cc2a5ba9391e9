"""Noise mechanisms, built from OpenDP measurements only.

A `Mechanism` carries the sensitivity it was calibrated for, its noise scale, its privacy
cost and its 95% accuracy, so no loose float travels apart from the object that earned it.
OpenDP's own privacy map is asked to confirm the cost before any noise is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import opendp.prelude as dp

from cohort_pipeline.privacy.accounting import Spend

dp.enable_features("contrib")

_Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class Mechanism:
    """Additive noise on a float vector whose neighbouring-dataset distance is at most
    `sensitivity` in the mechanism's norm (L1 for laplace, L2 for gaussian)."""

    name: str  # "laplace" | "gaussian"
    sensitivity: float
    scale: float
    spend: Spend
    _measurement: dp.Measurement = field(repr=False, compare=False)

    def __call__(self, values) -> np.ndarray:
        exact = [float(v) for v in np.asarray(values, dtype=float)]
        return np.asarray(self._measurement(exact), dtype=float)

    @property
    def std(self) -> float:
        """Standard deviation of the noise on one coordinate."""
        return self.scale * math.sqrt(2.0) if self.name == "laplace" else self.scale

    @property
    def accuracy95(self) -> float:
        """Half-width that covers the exact value of one coordinate with probability 95%."""
        return self.scale * math.log(20.0) if self.name == "laplace" else _Z95 * self.scale


def laplace(sensitivity: float, epsilon: float) -> Mechanism:
    """Pure epsilon-DP Laplace noise for an L1-sensitivity-`sensitivity` vector."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    scale = sensitivity / epsilon
    meas = dp.m.make_laplace(*space, scale=scale)
    _confirm(meas.map(sensitivity), epsilon, "laplace epsilon")
    return Mechanism("laplace", sensitivity, scale, Spend.pure(epsilon), meas)


def gaussian(sensitivity: float, rho: float, delta: float) -> Mechanism:
    """rho-zCDP Gaussian noise for an L2-sensitivity-`sensitivity` vector; its recorded
    epsilon is the conversion at `delta`."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
    scale = sensitivity / math.sqrt(2.0 * rho)
    meas = dp.m.make_gaussian(*space, scale=scale)
    _confirm(meas.map(sensitivity), rho, "gaussian rho")
    return Mechanism("gaussian", sensitivity, scale, Spend.zcdp(rho, delta), meas)


def _confirm(opendp_cost: float, claimed: float, what: str) -> None:
    # OpenDP rounds conservatively; allow only float noise, never an under-claim.
    if opendp_cost > claimed * (1 + 1e-6):
        raise AssertionError(
            f"OpenDP privacy map gives {what}={opendp_cost}, above the claimed {claimed}"
        )


def ratio_accuracy95(
    value: float, numerator_std: float, denominator: float, denominator_std: float
) -> float:
    """95% half-width of a ratio of two independent noisy sums (delta method)."""
    if denominator <= 0:
        return math.inf
    return _Z95 * math.sqrt(numerator_std**2 + (value * denominator_std) ** 2) / denominator
