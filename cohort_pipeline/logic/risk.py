"""Attack simulations against the DP release, on synthetic neighbouring datasets only.

Each attack plays an attacker against the real release functions and the real calibrated
OpenDP mechanisms of a policy, in two worlds that differ by one target user (or one target
value), and measures the attacker's advantage: P(guess "world 1" | world 1) minus
P(guess "world 1" | world 0), i.e. TPR - FPR. An (epsilon, delta)-DP view of the target
caps any attacker's advantage at (e^epsilon - 1 + 2 delta) / (e^epsilon + 1) (Kairouz, Oh
& Viswanath 2015), which is printed next to each measurement.

- differencing: two consecutive daily releases, the target joins between them; the attacker
  subtracts the two noisy sizes of the target's cohort.
- averaging: the same date materialized R times; the attacker averages the target cohort's
  size. A released date is final: re-runs return its stored draw (privacy/guard.py:
  draw_once), so R copies are one draw; the naive arm draws fresh noise every time.
- singling_out: the target is one of a handful of users in a rare full cohort. Without
  coarsening, a released row describes that handful; with coarsening (cohorts.min_size),
  no released row is that small. The attacker also infers the target's conversion from
  the row (knowing everyone else's), which DP caps either way.
- reconstruction: all releases of a window (the policy's window_days), with cohort
  memberships that change daily and are known to the attacker (worst case); least squares
  over the noisy per-cohort conversion sums recovers every user's conversion bit without
  noise, and what DP leaves of it with noise.

Synthetic populations are drawn with numpy (seeded); no real user is ever read. A crowd
is its per-key sums (`synthetic_totals`, the cohort_totals every release function reads),
not one row per user, so a simulation's memory and time do not grow with k or the crowd's
size; only the handful of users an attack reasons about one by one are rows of their own.
Noise comes only from OpenDP through cohort_pipeline.privacy. Nothing here is a release path.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from cohort_pipeline.policy import Policy
from cohort_pipeline.privacy.accounting import epsilon_from_rho, rho_from_epsilon
from cohort_pipeline.privacy.measurements import mechanisms
from cohort_pipeline.privacy.release import (
    exact_cohort_counts,
    release_cohort_metrics,
    release_cohort_sizes,
)

ISOLATING_ROW = 10  # a released row about this many users or fewer singles them out
AVERAGING_REPEATS = (1, 5, 20, 50)


@dataclass(frozen=True)
class AttackResult:
    attack: str
    arm: str
    advantage: float  # measured TPR - FPR
    low: float  # its 95% interval (measured_advantage)
    high: float
    epsilon: float  # the epsilon of the attacker's view under the arm's accounting
    bound: float  # the largest advantage that epsilon (at delta) allows
    trials: int  # per world
    detail: str = ""
    isolating_rows: float = math.nan  # singling out: share of releases isolating the target

    @property
    def within_bound(self) -> bool:
        return self.low <= self.bound


def advantage_bound(epsilon: float, delta: float) -> float:
    """Largest TPR - FPR of any test between the outputs of an (epsilon, delta)-DP mechanism
    on two neighbouring datasets."""
    return min(1.0, (math.expm1(epsilon) + 2.0 * delta) / (math.exp(epsilon) + 1.0))


# Each rate's two-sided 97.5% interval, so TPR - FPR's interval covers at >= 95% (Bonferroni).
Z = 2.241403


def _wilson(p: float, n: int) -> tuple[float, float]:
    # Wilson's score interval: sound at the few trials and the 0% / 100% rates a normal
    # approximation gets wrong (it gives a zero-width interval there).
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def measured_advantage(
    guess_world1: np.ndarray, guess_world0: np.ndarray
) -> tuple[float, float, float]:
    """(TPR - FPR, low, high) from the attacker's boolean guesses in each world; [low, high]
    is its 95% interval."""
    tpr, fpr = float(np.mean(guess_world1)), float(np.mean(guess_world0))
    tpr_low, tpr_high = _wilson(tpr, len(guess_world1))
    fpr_low, fpr_high = _wilson(fpr, len(guess_world0))
    return tpr - fpr, tpr_low - fpr_high, tpr_high - fpr_low


def _result(attack, arm, guesses1, guesses0, epsilon, delta, detail="", **extra) -> AttackResult:
    adv, low, high = measured_advantage(guesses1, guesses0)
    bound = advantage_bound(epsilon, delta)
    return AttackResult(attack, arm, adv, low, high, epsilon, bound, len(guesses1), detail, **extra)


def synthetic_totals(
    policy: Policy, users_per_key: int, rng: np.random.Generator, keys: list[str] | None = None
) -> pd.DataFrame:
    """The per-key sums of a synthetic crowd of `users_per_key` users in each of `keys`
    (default: every public cohort key), shaped like `cohort_totals` (what user_profiles
    stores). Every release function sums its input per key, so these rows give the release
    exactly the input a crowd of per-user rows would, in O(|keys|) memory whatever k is."""
    keys = keys or policy.cohort_keys()
    lo, hi = policy.session_duration_s
    users = np.full(len(keys), users_per_key)
    return pd.DataFrame(
        {
            "user_id": [f"crowd:{key}" for key in keys],
            "cohort_key": keys,
            "users": users.astype(float),
            # Sums of per-user values uniform over their bounded ranges.
            "mean_duration_s": users * (lo + hi) / 2.0,
            "converted": rng.binomial(users, 0.5).astype(float),
            "sessions": users * (1 + policy.max_sessions) / 2.0,
        }
    )


def synthetic_population(
    policy: Policy, users: int, rng: np.random.Generator, keys: list[str] | None = None
) -> pd.DataFrame:
    """A few synthetic per-user rows shaped like bounding.user_profiles_sql's output (users
    = 1), spread over `keys`; for the handful of users an attack reasons about one by one."""
    keys = keys or policy.cohort_keys()
    lo, hi = policy.session_duration_s
    return pd.DataFrame(
        {
            "user_id": [f"synthetic-{i}" for i in range(users)],
            "cohort_key": rng.choice(keys, users),
            "users": 1.0,
            "mean_duration_s": rng.uniform(lo, hi, users),
            "converted": rng.integers(0, 2, users),
            "sessions": rng.integers(1, policy.max_sessions + 1, users),
        }
    )


def _row_of(plan: pd.DataFrame, full_key: str) -> int:
    """Position of the released row whose members include `full_key`."""
    return int(np.flatnonzero(plan["members"].str.split(";").apply(lambda m: full_key in m))[0])


def _target(policy: Policy, key: str, converted: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["target"],
            "cohort_key": [key],
            "users": [1.0],
            "mean_duration_s": [policy.session_duration_s[1]],
            "converted": [converted],
            "sessions": [policy.max_sessions],
        }
    )


def _noisy_target_size(totals: pd.DataFrame, policy: Policy, runs: int) -> np.ndarray:
    """`runs` independent releases of the target cohort's size (the first public key), by
    the real cohort_sizes mechanism: one OpenDP call on the exact count repeated `runs`
    times. The attacker reads only this coordinate and the others' noise is independent of
    it, so drawing it alone is the same experiment; coarsening is post-processing (and the
    cohorts here are far above k)."""
    exact = exact_cohort_counts(totals, policy).iloc[0]
    return mechanisms(policy)["cohort_sizes"](np.full(runs, exact))


def _crowd(policy: Policy, rng: np.random.Generator) -> pd.DataFrame:
    # Every cohort well above k, so coarsening never interferes with the differencing.
    return synthetic_totals(policy, 3 * policy.min_size, rng)


def differencing_attack(policy: Policy, trials: int, seed: int = 0) -> list[AttackResult]:
    """Release D on day 1 and D (+ target) on day 2; guess "joined" if the target cohort's
    noisy size grew by more than 1/2."""
    crowd = _crowd(policy, np.random.default_rng([seed, 1]))
    joined = pd.concat([crowd, _target(policy, policy.cohort_keys()[0])], ignore_index=True)
    guesses = {}
    for world, day2 in ((1, joined), (0, crowd)):
        diff = _noisy_target_size(day2, policy, trials) - _noisy_target_size(crowd, policy, trials)
        guesses[world] = diff > 0.5
    spend = mechanisms(policy)["cohort_sizes"].spend
    return [
        _result(
            "differencing", "two consecutive releases", guesses[1], guesses[0],
            spend.epsilon, spend.delta, "bound: cohort_sizes epsilon (day 2 alone sees the target)",
        )
    ]  # fmt: skip


def averaging_attack(
    policy: Policy, trials: int, seed: int = 0, repeats=AVERAGING_REPEATS
) -> list[AttackResult]:
    """Materialize the same date R times and average the target cohort's noisy size."""
    crowd = _crowd(policy, np.random.default_rng([seed, 2]))
    key = policy.cohort_keys()[0]
    worlds = {1: pd.concat([crowd, _target(policy, key)], ignore_index=True), 0: crowd}
    exact = float(crowd.loc[crowd["cohort_key"] == key, "users"].sum())  # background knowledge
    spend = mechanisms(policy)["cohort_sizes"].spend
    most = max(repeats)
    draws = {
        w: _noisy_target_size(data, policy, trials * most).reshape(trials, most)
        for w, data in worlds.items()
    }
    out = []
    for r in repeats:
        # Consistent releases: every re-run returns the first (stored) draw.
        consistent = {w: np.repeat(draws[w][:, :1], r, axis=1).mean(axis=1) for w in worlds}
        naive = {w: draws[w][:, :r].mean(axis=1) for w in worlds}
        # r fresh draws compose: the tighter of basic (r epsilon, r delta) and zCDP (r rho).
        naive_eps, naive_delta = min(
            (r * spend.epsilon, r * spend.delta),
            (epsilon_from_rho(r * spend.rho, policy.delta), policy.delta),
            key=lambda ed: advantage_bound(*ed),
        )
        for arm, est, eps, delta in (
            ("consistent", consistent, spend.epsilon, spend.delta),
            ("naive (fresh noise)", naive, naive_eps, naive_delta),
        ):
            out.append(
                _result(
                    "averaging", f"{arm}, R={r}", est[1] > exact + 0.5, est[0] > exact + 0.5,
                    eps, delta, f"R={r}",
                )
            )  # fmt: skip
    return out


def singling_out_attack(policy: Policy, trials: int, seed: int = 0) -> list[AttackResult]:
    """A rare cohort of a few users, the target among them; world 1: the target converted."""
    rng = np.random.default_rng([seed, 3])
    keys = policy.cohort_keys()
    rare = keys[-1]
    crowd = synthetic_totals(policy, 2 * policy.min_size, rng, keys[:-1])
    rare_others = synthetic_population(policy, 3, rng, [rare]).assign(
        user_id=lambda f: "rare-" + f["user_id"]
    )
    mech, sizes = (mechanisms(policy)[m] for m in ("cohort_metrics", "cohort_sizes"))
    out = []
    for arm, pol in (("coarsened (k = cohorts.min_size)", policy),
                     ("not coarsened (k = 0)", replace(policy, min_size=0))):  # fmt: skip
        guesses, isolated = {}, []
        for world in (1, 0):
            data = pd.concat([crowd, rare_others, _target(policy, rare, world)], ignore_index=True)
            g = []
            for _ in range(trials):
                plan = release_cohort_sizes(data, pol, sizes)
                row = _row_of(plan, rare)
                members = plan["members"].iloc[row].split(";")
                exact_n = int(data.loc[data["cohort_key"].isin(members), "users"].sum())
                isolated.append(exact_n <= ISOLATING_ROW)
                metrics = release_cohort_metrics(data, plan, pol, mech, sizes)
                # Undo the ratio: rate x noisy size ~ the noisy conversion sum (post-processing).
                noisy_sum = metrics["conversion_rate"].iloc[row] * max(
                    plan["noisy_users"].iloc[row], 1.0
                )
                in_row = data["cohort_key"].isin(members) & (data["user_id"] != "target")
                others = float(data["converted"][in_row].sum())  # background knowledge
                g.append(noisy_sum > others + 0.5)
            guesses[world] = np.array(g)
        out.append(
            _result(
                "singling_out", arm, guesses[1], guesses[0], mech.spend.epsilon, mech.spend.delta,
                f"rows isolating the target (<= {ISOLATING_ROW} users): {np.mean(isolated):.0%}",
                isolating_rows=float(np.mean(isolated)),
            )
        )  # fmt: skip
    return out


def reconstruction_attack(
    policy: Policy, users: int = 120, seed: int = 0, trials: int = 5
) -> list[AttackResult]:
    """Least-squares reconstruction of every user's conversion bit from window_days daily
    releases of per-cohort conversion sums, memberships known to the attacker."""
    rng = np.random.default_rng([seed, 4])
    days, n_keys = policy.window_days, len(policy.cohort_keys())
    mech = mechanisms(policy)["cohort_metrics"]
    results = {"exact aggregates (no DP)": ([], []), "DP releases": ([], [])}
    for _ in range(trials):
        bits = rng.integers(0, 2, users)
        membership = rng.integers(0, n_keys, (days, users))
        # A[d * n_keys + c, u] = 1 when user u is in cohort c on day d.
        design = np.zeros((days * n_keys, users))
        design[np.arange(days)[:, None] * n_keys + membership, np.arange(users)] = 1.0
        exact = design @ bits
        for arm, released in (("exact aggregates (no DP)", exact), ("DP releases", mech(exact))):
            estimate, *_ = np.linalg.lstsq(design, released, rcond=None)
            guess = estimate > 0.5
            results[arm][0].extend(guess[bits == 1])
            results[arm][1].extend(guess[bits == 0])
    rho_release = rho_from_epsilon(policy.epsilon_per_release, policy.delta)
    window_eps = epsilon_from_rho(days * rho_release, policy.delta)
    return [
        _result(
            "reconstruction", arm, np.array(g1), np.array(g0),
            math.inf if arm.startswith("exact") else window_eps, policy.delta,
            f"{days} releases x {n_keys} cohorts, {users} users; bound: all releases in the window",
        )
        for arm, (g1, g0) in results.items()
    ]  # fmt: skip


def run_attacks(policy: Policy, trials: int = 20_000, seed: int = 0) -> list[AttackResult]:
    """Every attack; `trials` per world for the cheap ones, fewer where each trial runs the
    full sizes + metrics release (singling out) or a least-squares solve (reconstruction)."""
    return [
        *differencing_attack(policy, trials, seed),
        *averaging_attack(policy, max(trials // 10, 10), seed),
        *singling_out_attack(policy, max(trials // 500, 10), seed),
        *reconstruction_attack(policy, seed=seed, trials=max(trials // 4000, 1)),
    ]


def results_frame(results: list[AttackResult]) -> pd.DataFrame:
    return pd.DataFrame([{**asdict(r), "within_bound": r.within_bound} for r in results])


def plot_png(results: list[AttackResult]) -> bytes:
    """Measured advantage (with 95% interval) beside the bound epsilon implies, per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = results_frame(results)
    labels = [f"{a}\n{b}" for a, b in zip(frame["attack"], frame["arm"], strict=True)]
    y = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(frame) + 1.2), dpi=90)
    ax.barh(y + 0.2, frame["bound"], height=0.4, color="#c8d6e5", label="bound implied by ε")
    shown = frame["advantage"].clip(lower=0)
    spread = [shown - frame["low"].clip(upper=shown), (frame["high"] - shown).clip(lower=0)]
    ax.barh(y - 0.2, shown, height=0.4, xerr=spread, color="#ee5253",
            label="measured advantage (95% interval)")  # fmt: skip
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("attacker advantage (TPR − FPR)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_markdown(results: list[AttackResult], png: bytes | None = None) -> str:
    frame = results_frame(results)
    table = frame[["attack", "arm", "advantage", "low", "high", "epsilon", "bound", "within_bound",
                   "trials", "detail"]].round(4).to_markdown(index=False)  # fmt: skip
    parts = [
        "## Attack simulations (synthetic neighbouring datasets, never real users)",
        "Advantage = TPR − FPR of the attacker's guess between two worlds that differ in one "
        "target user; the bound is the largest advantage the ε (at δ) of the attacker's view "
        "allows.",
        table,
    ]
    if png is not None:
        parts.append(
            f"![attack advantage vs bound](data:image/png;base64,{base64.b64encode(png).decode()})"
        )
    return "\n\n".join(parts)
