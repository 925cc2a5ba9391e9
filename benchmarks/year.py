"""A year of daily releases on one budget: yearly epsilon against ranking quality, per approach.

For each approach (how often each measurement is released, on which data, at which budget),
two figures:

- **yearly epsilon** at the policy's delta of a user active every day of a year: the releases
  that read any of that user's days, composed by the ledger's accountant (privacy/accounting:
  dp-accounting's PLD; with Poisson sampling, `sampled_spend`). A daily release of a 28-day
  window reads a year of activity in 365 + 28 - 1 releases (measurements.yearly_spend).
- **ranking quality**: NDCG@10 of the DP cohort arm on the next 7 days' events, as a ratio of
  the no-noise cohort arm (exact sums of the 28-day window ending on the evaluation date), and
  its uplift over the DP popularity arm of the same release.

Quality is measured on generator data (cohort_pipeline.tools.generate: 41 days ending
END, at 20k and 200k users), bounded by the pipeline's own SQL (privacy/bounding.py) into
per-user rows, summed per cohort in numpy, noised by the registry's OpenDP mechanisms
(measurements.mechanisms) and ranked by the release's own post-processing
(experiments.replay_ranking). No Dagster run, no ledger: nothing here is a release. A year
is not simulated day by day: every daily release of the same approach has the same noise, so
its quality is measured at one evaluation date R = END - 7, averaged over fresh noise
(`--repeats`) and, for an approach that releases every k days, over the k ages (0..k-1 days)
the served ranking can have on R.

Approaches (`Approach`):
- `window`: today's release of a 28-day window, every `every` days (re-served in between);
  `slow_every`: the measurements the ranking does not read (cohort_metrics,
  experiment_report) released only every that many days (cadence split).
- `block` = b: each user's events of each b-day block bounded once (the same per-user bounds,
  applied per block) and released once, at the block's end; a window's sums are the sums of
  its 28 / b latest noisy block sums (post-processing). A user adds at most the per-release
  bound to one block's sums (their blocks' data are disjoint), so each block release has the
  window release's sensitivity, and a year of activity is read by ceil(365 / b) (+1 when
  blocks may straddle its ends) block releases instead of 392 window releases.
- `rate` = q: each measurement reads its own Poisson sample of users (privacy/sampling.py,
  from `secrets`); its noisy sums are divided by q (post-processing).

Simplifications (all in the approaches' favour, none in the accounting): a block's sums are
keyed by the user's cohort at the ranking's release date (a daily pipeline would key them by
the cohort of the block's own release), and noised per released cohort of the window's plan.
Block sizes count active users per block (user-blocks), which the coarsening and shrinkage
then read as cohort sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/year.py            # both sizes, ~8 min on 1 core
    PYTHONPATH=. .venv/bin/python benchmarks/year.py --users 20000 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from cohort_pipeline.logic.experiments import RankingInputs, popularity_lists, replay_ranking
from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy.accounting import Charge, compose, sampled_spend
from cohort_pipeline.privacy.bounding import (
    user_categories_sql,
    user_items_sql,
    user_pairs_sql,
    user_profiles_sql,
)
from cohort_pipeline.privacy.measurements import YEAR_DAYS, mechanisms, yearly_releases
from cohort_pipeline.privacy.mechanisms import Mechanism, gaussian
from cohort_pipeline.privacy.sampling import poisson_sample
from cohort_pipeline.tools.generate import generate

REPO = Path(__file__).resolve().parents[1]
END = date(2026, 11, 28)
EVAL_DAYS = 7
MAX_AGE = 7  # the oldest ranking served: a weekly release is up to 6 days old
RANKING = ("cohort_sizes", "cohort_category_affinity", "item_popularity")
TARGET_EPSILON = 4.0
TARGETS = (0.5, 1.0, 2.0, 4.0)  # yearly epsilons each approach is measured at
SEED = 7


# -- approaches and their yearly epsilon ---------------------------------------------------


@dataclass(frozen=True)
class Approach:
    name: str
    every: int = 1  # window mode: a ranking release every `every` days
    slow_every: int | None = None  # cadence split: metrics and readouts every that many days
    block: int | None = None  # block mode: b-day blocks, each released once
    rate: float = 1.0  # Poisson sampling rate per measurement
    epsilon: float | None = None  # fixed epsilon_per_release (else solved for a target)

    def describe(self) -> str:
        parts = []
        if self.block:
            parts.append(f"{self.block}-day sums released once, windows summed")
        else:
            parts.append(f"28-day window every {self.every} d" if self.every > 1 else "daily")
        if self.slow_every:
            parts.append(f"metrics+readouts every {self.slow_every} d")
        if self.rate < 1:
            parts.append(f"Poisson q={self.rate:g}")
        return "; ".join(parts)

    def releases(self, policy: Policy) -> tuple[int, int]:
        """(ranking releases, other releases) reading a year of daily activity."""
        if self.block:
            n = YEAR_DAYS if self.block == 1 else math.ceil(YEAR_DAYS / self.block) + 1
            return n, n
        slow = max(self.slow_every or self.every, self.every)
        return tuple(yearly_releases(replace(policy, every_days=k)) for k in (self.every, slow))

    def yearly_epsilon(self, policy: Policy, epsilon: float) -> float:
        mechs = mechanisms(replace(policy, epsilon_per_release=epsilon))
        ranking, other = self.releases(policy)
        charges = [
            Charge.of(m.name, m.spend, m.sensitivity, m.scale)
            for name, m in mechs.items()
            for _ in range(ranking if name in RANKING else other)
        ]
        if self.rate < 1:
            return sampled_spend(charges, self.rate, 1, policy.delta)[0]
        return compose(charges, "zcdp", policy.delta)[0]

    def epsilon_for(self, policy: Policy, target: float) -> float:
        """The largest epsilon_per_release (to 0.5%) whose yearly epsilon is at most
        `target`, by bisection on log epsilon."""
        lo, hi = 1e-3, 20.0
        while hi / lo > 1.005:
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if self.yearly_epsilon(policy, mid) <= target else (lo, mid)
        return lo


APPROACHES = (
    Approach("default policy", epsilon=1.0),
    Approach("lower epsilon"),
    Approach("cadence split", slow_every=7),
    Approach("Poisson q=0.5", rate=0.5),
    Approach("Poisson q=0.2", rate=0.2),
    Approach("re-serve k=3", every=3),
    Approach("re-serve k=7", every=7),
    Approach("daily sums once", block=1),
    Approach("weekly sums once", block=7),
    Approach("cadence + re-serve k=3", every=3, slow_every=7),
    Approach("cadence + Poisson q=0.5", slow_every=7, rate=0.5),
    Approach("weekly sums + Poisson q=0.5", block=7, rate=0.5),
)


# -- data: generator events, bounded by the pipeline's SQL ---------------------------------


@dataclass
class Rows:
    """Bounded per-user rows of one window or block: the users counted in sizes, each
    user's category vector (user, category, value) and item vector (user, item, value)."""

    users: np.ndarray
    cat: tuple[np.ndarray, np.ndarray, np.ndarray]
    item: tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Sample:
    users: int
    keys: list[str]
    categories: list[str]
    catalog: pd.DataFrame
    key_of: dict[int, np.ndarray]  # age -> full-key index per user (-1: not in the window)
    window: dict[int, Rows]  # age -> the 28-day window ending R - age
    blocks: dict[tuple[int, int], Rows]  # (b, last day's offset before R) -> block rows
    eval_user: np.ndarray  # relevant (user, item) pairs of evaluated users in (R, R + 7]
    eval_item: np.ndarray


def _rows(con, policy: Policy, first: date, last: date) -> Rows:
    con.execute(
        "CREATE OR REPLACE TEMP VIEW span AS SELECT * FROM events"
        f" WHERE day BETWEEN DATE '{first}' AND DATE '{last}'"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pairs AS {user_pairs_sql(policy, 'span')}")
    users = con.execute("SELECT DISTINCT uid(user_id) FROM _pairs").fetchnumpy()
    cats = con.execute(
        "SELECT uid(user_id) AS u, category_no - 1 AS c, value"
        f" FROM ({user_categories_sql(policy, '_pairs', 'catalog')})"
    ).fetchnumpy()
    items = con.execute(
        f"SELECT uid(user_id) AS u, uid(item_id) AS i, value FROM ({user_items_sql(policy, '_pairs')})"
    ).fetchnumpy()
    return Rows(
        next(iter(users.values())).astype(np.int64),
        (cats["u"].astype(np.int64), cats["c"].astype(np.int64), cats["value"]),
        (items["u"].astype(np.int64), items["i"].astype(np.int64), items["value"]),
    )


def load_sample(users: int, policy: Policy, data: Path, log) -> Sample:
    days = policy.lookback_days + MAX_AGE - 1 + EVAL_DAYS
    folder = data / f"users_{users}"
    if not (folder / "catalog.csv").exists() or len(list(folder.rglob("events-*.parquet"))) < days:
        started = time.perf_counter()
        generate(folder, users=users, days=days, seed=SEED, end_date=END)
        log(f"  generated {users:,} users x {days} days in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 1")
    # integer user and item indices: the generator's ids are u<n> and i<n>, from 1
    con.execute("CREATE MACRO uid(s) AS CAST(substr(s, 2) AS BIGINT) - 1")
    files = sorted(str(f) for f in folder.rglob("events-*.parquet"))
    con.execute(
        "CREATE TABLE events AS SELECT *, CAST(timezone('UTC', event_time) AS DATE) AS day"
        f" FROM read_parquet({files})"
    )
    catalog = pd.read_csv(folder / "catalog.csv", dtype=str)
    con.register("catalog", catalog)
    keys = policy.cohort_keys()
    key_index = {k: i for i, k in enumerate(keys)}
    r = END - timedelta(days=EVAL_DAYS)
    key_of, window, blocks = {}, {}, {}
    for age in range(MAX_AGE):
        released = r - timedelta(days=age)
        first = released - timedelta(days=policy.lookback_days - 1)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW win AS SELECT * FROM events"
            f" WHERE day BETWEEN DATE '{first}' AND DATE '{released}'"
        )
        profiles = con.execute(
            f"SELECT uid(user_id) AS u, cohort_key FROM ({user_profiles_sql(policy, released, 'win')})"
        ).df()
        assigned = np.full(users, -1, dtype=np.int64)
        assigned[profiles["u"].to_numpy()] = profiles["cohort_key"].map(key_index).to_numpy()
        key_of[age] = assigned
        window[age] = _rows(con, policy, first, released)
    for b in (1, 7):
        # the blocks of every served window: ages 0..MAX_AGE-1, 28 / b blocks each
        offsets = {
            age + b * n
            for age in range(MAX_AGE if b > 1 else 1)
            for n in range(policy.lookback_days // b)
        }
        for offset in sorted(offsets):
            last = r - timedelta(days=offset)
            blocks[b, offset] = _rows(con, policy, last - timedelta(days=b - 1), last)
    relevant = con.execute(
        "SELECT DISTINCT uid(user_id) AS u, uid(item_id) AS i FROM events"
        f" WHERE day > DATE '{r}' AND day <= DATE '{END}'"
    ).fetchnumpy()
    evaluated = key_of[0][relevant["u"]] >= 0
    log(f"  bounded windows and blocks in {time.perf_counter() - started:.0f} s")
    return Sample(
        users,
        keys,
        sorted(catalog["category"].unique()),
        catalog,
        key_of,
        window,
        blocks,
        relevant["u"][evaluated].astype(np.int64),
        relevant["i"][evaluated].astype(np.int64),
    )


# -- noise and ranking ---------------------------------------------------------------------


@dataclass(frozen=True)
class Summed:
    """A registry mechanism's noise summed over `draws` releases (a window of block sums),
    on sums divided by `rate` (a Poisson sample's rescaling): post-processing of OpenDP
    draws. Noise is independent of the data, so the window's true sum plus `draws` draws is
    distributed as the sum of the blocks' noisy sums."""

    mechanism: Mechanism
    draws: int = 1
    rate: float = 1.0

    @property
    def name(self) -> str:
        return self.mechanism.name

    @property
    def sensitivity(self) -> float:
        return self.mechanism.sensitivity

    @property
    def scale(self) -> float:
        return self.mechanism.scale

    @property
    def std(self) -> float:
        return self.mechanism.std * math.sqrt(self.draws) / self.rate

    @property
    def accuracy95(self) -> float:
        return 1.959963984540054 * self.std

    def __call__(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        if self.mechanism.name == "gaussian" and self.draws > 1:
            # a sum of n draws of N(0, s^2) is one draw of N(0, n s^2): OpenDP's Gaussian
            # at rho / n has that scale (and is n times faster on the item vector)
            spend = self.mechanism.spend
            once = gaussian(self.sensitivity, spend.rho / self.draws, spend.delta)
            return once(values) / self.rate
        noisy = self.mechanism(values)
        for _ in range(self.draws - 1):
            noisy = noisy + self.mechanism(np.zeros_like(values))
        return noisy / self.rate


def _sums(sample: Sample, key_of: np.ndarray, parts: list[Rows], rate: float) -> RankingInputs:
    """Exact per-key sums of `parts` (each part sampled afresh per measurement at `rate`)."""
    k, c, i = len(sample.keys), len(sample.categories), len(sample.catalog)
    sizes, cats, items = np.zeros(k), np.zeros(k * c), np.zeros(i)

    def kept(users: np.ndarray) -> np.ndarray:
        if rate == 1:
            return np.ones(len(users), dtype=bool)
        return poisson_sample(sample.users, rate)[users]

    for rows in parts:
        users = rows.users[kept(rows.users)]
        sizes += np.bincount(key_of[users], minlength=k)
        u, cat, value = rows.cat
        cats += np.bincount(key_of[u] * c + cat, weights=value * kept(u), minlength=k * c)
        u, item, value = rows.item
        items += np.bincount(item, weights=value * kept(u), minlength=i)
    return RankingInputs(
        pd.DataFrame({"cohort_key": sample.keys, "users": sizes}),
        pd.DataFrame(
            {
                "cohort_key": np.repeat(sample.keys, c),
                "category": np.tile(sample.categories, k),
                "value": cats,
            }
        ),
        pd.DataFrame({"item_id": sample.catalog["item_id"], "value": items}),
        sample.catalog,
    )


def _parts(sample: Sample, approach: Approach, age: int, lookback: int) -> list[Rows]:
    if not approach.block:
        return [sample.window[age]]
    b = approach.block
    return [sample.blocks[b, age + b * n] for n in range(lookback // b)]


def ndcg(sample: Sample, key_of: np.ndarray, plan: pd.DataFrame, lists: pd.DataFrame) -> float:
    """Mean NDCG@10 of the evaluated users served their cohort's list (the metric of
    experiments.arm_metrics, vectorised for repeated rankings)."""
    members = {m: row.cohort_key for row in plan.itertuples() for m in row.members.split(";")}
    list_of = {key: g for key, g in lists[lists["rank"] <= 10].groupby("cohort_key")}
    ranks = np.zeros((len(sample.keys), len(sample.catalog)))
    for f, key in enumerate(sample.keys):
        top = list_of.get(members[key])
        if top is not None:
            ranks[f, top["item_id"].str[1:].astype(int).to_numpy() - 1] = top["rank"].to_numpy()
    r = ranks[key_of[sample.eval_user], sample.eval_item]
    gain = np.where(r > 0, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)
    users, index = np.unique(sample.eval_user, return_inverse=True)
    dcg = np.bincount(index, weights=gain)
    n_relevant = np.bincount(index)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, 12)))[np.minimum(n_relevant, 10) - 1]
    return float(np.mean(dcg / ideal))


def measure(
    sample: Sample, policy: Policy, approach: Approach, epsilon: float, repeats: int
) -> dict:
    at = replace(policy, epsilon_per_release=epsilon)
    mechs = mechanisms(at)
    served = sample.key_of[0]  # users are served by their current cohort
    draws = policy.lookback_days // approach.block if approach.block else 1
    cohort, popularity = [], []
    for _ in range(repeats):
        for age in range(approach.block or approach.every):
            key_of = sample.key_of[age]
            inputs = _sums(
                sample, key_of, _parts(sample, approach, age, policy.lookback_days), approach.rate
            )
            noise = {name: Summed(mechs[name], draws, approach.rate) for name in RANKING}
            ranking = replay_ranking(inputs, at, mechs=noise)
            cohort.append(ndcg(sample, served, ranking.plan, ranking.recommendations))
            pop = popularity_lists(ranking.popularity, ranking.plan["cohort_key"], policy.top_n)
            popularity.append(ndcg(sample, served, ranking.plan, pop))
    return {
        "ndcg": float(np.mean(cohort)),
        "ndcg_sd": float(np.std(cohort)),
        "popularity": float(np.mean(popularity)),
    }


def reference(sample: Sample, policy: Policy, block: int | None = None) -> float:
    """NDCG@10 of the no-noise cohort arm on R: exact sums of the window ending on R (the
    reference of every ratio), or of its `block`-day sums (that estimator's own ceiling)."""
    approach = Approach("no noise", block=block)
    inputs = _sums(sample, sample.key_of[0], _parts(sample, approach, 0, policy.lookback_days), 1)
    ranking = replay_ranking(inputs, policy, noise=False)
    return ndcg(sample, sample.key_of[0], ranking.plan, ranking.recommendations)


# -- main ----------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--repeats", type=int, default=3, help="fresh noise per ranking age")
    parser.add_argument("--data", type=Path, default=Path("benchmarks/results/year"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    policy = load_policy(REPO / "data" / "policy.yaml")
    started = time.perf_counter()
    log = print

    points = []  # (approach, target, per-release epsilon, yearly epsilon)
    for a in APPROACHES:
        targets = [None] if a.epsilon else TARGETS
        for target in targets:
            eps = a.epsilon or a.epsilon_for(policy, target)
            points.append((a, target, eps, a.yearly_epsilon(policy, eps)))
    log(f"accounting: {len(points)} points in {time.perf_counter() - started:.0f} s")

    rows = []
    for users in args.users:
        log(f"{users:,} users")
        sample = load_sample(users, policy, args.data, log)
        exact = reference(sample, policy)
        log(f"  no-noise cohort arm NDCG@10 {exact:.4f}")
        for block in (1, 7):
            ceiling = reference(sample, policy, block)
            rows.append({
                "approach": f"no noise, {block}-day sums", "parameters": "exact block sums",
                "target": math.inf, "epsilon_per_release": math.inf, "yearly_epsilon": math.inf,
                "users": users, "ndcg": ceiling, "ndcg_sd": 0.0, "ndcg_no_noise": exact,
                "ratio": ceiling / exact, "ratio_sd": 0.0, "popularity": math.nan,
                "uplift": math.nan,
            })  # fmt: skip
            log(f"  no-noise {block}-day sums NDCG@10 {ceiling:.4f} ({ceiling / exact:.3f})")
        for a, target, eps, yearly in points:
            t0 = time.perf_counter()
            m = measure(sample, policy, a, eps, args.repeats)
            rows.append({
                "approach": a.name, "parameters": a.describe(), "target": target,
                "epsilon_per_release": eps, "yearly_epsilon": yearly, "users": users,
                "ndcg": m["ndcg"], "ndcg_sd": m["ndcg_sd"], "ndcg_no_noise": exact,
                "ratio": m["ndcg"] / exact, "ratio_sd": m["ndcg_sd"] / exact,
                "popularity": m["popularity"], "uplift": m["ndcg"] / m["popularity"] - 1,
            })  # fmt: skip
            log(
                f"  {a.name:28s} eps/release {eps:.3f} yearly {yearly:6.2f}: ratio"
                f" {m['ndcg'] / exact:.3f} ± {m['ndcg_sd'] / exact:.3f}, vs popularity"
                f" {m['ndcg'] / m['popularity'] - 1:+.1%} ({time.perf_counter() - t0:.1f} s)"
            )
    frame = pd.DataFrame(rows)
    args.data.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.data / "year.csv", index=False)
    write_outputs(frame, args.out, args.users)
    log(f"done in {time.perf_counter() - started:.0f} s; wrote {args.data / 'year.csv'}")


def table(frame: pd.DataFrame, sizes: list[int]) -> str:
    """One row per approach and point, one pair of columns per population size."""
    order = [a.name for a in APPROACHES] + [f"no noise, {b}-day sums" for b in (1, 7)]
    head = "| approach | parameters | ε per release | yearly ε |"
    head += "".join(f" NDCG ratio {n // 1000}k | vs popularity {n // 1000}k |" for n in sizes)
    lines = [head, "|---" * (4 + 2 * len(sizes)) + "|"]
    points = frame.drop_duplicates(["approach", "epsilon_per_release"])
    points = points.assign(rank=points["approach"].map(order.index))
    for point in points.sort_values(["rank", "yearly_epsilon"]).itertuples():
        cells = [
            point.approach,
            point.parameters,
            *(
                f"{v:.3f}" if math.isfinite(v) else "∞ (no noise)"
                for v in (point.epsilon_per_release, point.yearly_epsilon)
            ),
        ]
        for n in sizes:
            at = frame[
                (frame["approach"] == point.approach)
                & (frame["epsilon_per_release"] == point.epsilon_per_release)
                & (frame["users"] == n)
            ].iloc[0]
            cells.append(
                f"{at.ratio:.3f} ± {at.ratio_sd:.3f}" if at.ratio_sd > 0 else f"{at.ratio:.3f}"
            )
            cells.append(f"{at.uplift:+.1%}" if math.isfinite(at.uplift) else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(frame: pd.DataFrame, out: Path, sizes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "year_table.md").write_text(table(frame, sizes) + "\n")
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        part = frame[frame["users"] == n]
        for i, a in enumerate(APPROACHES):
            line = part[part["approach"] == a.name].sort_values("yearly_epsilon")
            line = line[np.isfinite(line["yearly_epsilon"])]
            ax.errorbar(
                line["yearly_epsilon"], line["ratio"], yerr=line["ratio_sd"],
                marker="osD^v<>pP*Xh"[i % 12], markersize=4, capsize=2, label=a.name,
                color=plt.cm.tab20(i / len(APPROACHES)), linestyle="-" if i % 2 else "--",
            )  # fmt: skip
        floor = 0.95 if n >= 200_000 else 0.90
        ax.axvline(TARGET_EPSILON, color="grey", linestyle="--", linewidth=1)
        ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("yearly ε (user active every day, δ = 1e-6, PLD)")
        ax.set_ylabel("NDCG@10, DP cohort arm / no-noise cohort arm")
        ax.set_title(f"{n:,} users")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "year.png", dpi=110)


if __name__ == "__main__":
    main()
