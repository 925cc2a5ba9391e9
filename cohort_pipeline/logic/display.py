"""How released figures read: rounded to their accuracy, with their 95% interval.

A noisy value carries no more digits than its noise allows: 362.127654 with a 95% half-width
of 44.3 reads "362 ± 44". The half-width keeps two significant digits and the value is
rounded to the same decimal place. Pure functions, post-processing of released values only.
"""

from __future__ import annotations

import math

SIGNIFICANT = 2  # significant digits of a 95% half-width


def accuracy_decimals(half_width: float) -> int | None:
    """Decimal places at which a value with this 95% half-width is shown, never fewer than
    none (a half-width of 987 keeps its units); None when the half-width is not a positive
    finite number."""
    if not (isinstance(half_width, int | float) and math.isfinite(half_width) and half_width > 0):
        return None
    return max(0, significant_decimals(half_width, SIGNIFICANT))


def significant_decimals(value: float, significant: int) -> int:
    """Decimal places that keep `significant` significant digits of `value`."""
    return significant - 1 - math.floor(math.log10(abs(value))) if value else 0


def _round(value: float, decimals: int) -> float:
    rounded = round(value, decimals)
    return float(rounded) + 0.0  # -0.0 reads as 0


def round_to_accuracy(value: float, half_width: float, significant: int = 6) -> float:
    """`value` rounded to the decimal place of its 95% half-width (to `significant`
    significant digits, but never above the units, when it has none)."""
    if not math.isfinite(value):
        return value
    decimals = accuracy_decimals(half_width)
    if decimals is None:  # no noise to go by: `significant` digits, the units always kept
        decimals = max(0, significant_decimals(value, significant))
    return _round(value, decimals)


def round_half_width(half_width: float) -> float:
    decimals = accuracy_decimals(half_width)
    return half_width if decimals is None else _round(half_width, decimals)


def _text(value: float, decimals: int | None) -> str:
    if decimals is None:
        return f"{value:.6g}"
    return f"{_round(value, decimals):.{max(decimals, 0)}f}"


def with_accuracy(value: float, half_width: float) -> str:
    """'362 ± 44': the value and its 95% half-width, both at the half-width's accuracy."""
    decimals = accuracy_decimals(half_width)
    if decimals is None:
        return _text(value, None)
    return f"{_text(value, decimals)} ± {_text(half_width, decimals)}"


def interval_95(value: float, half_width: float) -> str:
    """'362 ± 44 (95%: 318 to 406)': the value, its half-width and the interval it spans,
    so that a change between releases that stays inside the noise reads as such."""
    decimals = accuracy_decimals(half_width)
    if decimals is None:
        return _text(value, None)
    low, high = value - half_width, value + half_width
    return (
        f"{with_accuracy(value, half_width)} (95%: {_text(low, decimals)} to "
        f"{_text(high, decimals)})"
    )


def constant_text(value) -> str:
    """A policy constant (cap, delta, k) shown once as text rather than as a number that
    Dagster would plot as a trend across releases."""
    return f"{value:g}" if isinstance(value, float) else str(value)
