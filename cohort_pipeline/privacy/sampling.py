"""Poisson sampling of users for a measurement (amplification by sampling).

Each user is kept independently with probability `rate`, from the operating system's
CSPRNG (`secrets`), never from numpy's or Python's `random` generators: a predictable sample
would void the amplification that privacy/accounting.sampled_spend credits. A measurement
draws a fresh sample every time it is released.
"""

from __future__ import annotations

import secrets

import numpy as np

_BITS = 64


def poisson_sample(users: int, rate: float) -> np.ndarray:
    """A boolean mask over `users` rows: each True independently with probability `rate`
    (up to 2^-64), from `secrets`. numpy only compares the drawn integers."""
    if not 0 <= rate <= 1:
        raise ValueError(f"need 0 <= rate <= 1, got {rate}")
    if users < 0:
        raise ValueError(f"need users >= 0, got {users}")
    if rate == 1:
        return np.ones(users, dtype=bool)
    draws = np.frombuffer(secrets.token_bytes(8 * users), dtype=np.uint64)
    return draws < np.uint64(int(rate * 2**_BITS))
