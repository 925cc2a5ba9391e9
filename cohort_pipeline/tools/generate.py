"""Synthetic sample data: daily event logs, an item catalog and an (empty) opt-out list.

Plants the structure the pipeline measures: heavy-tailed activity (plus a small bot-like
tail), a primary device per user, purchase propensity, category preferences that shift with
device, engagement and propensity, and per-user traits that persist over time.

Randomness is seeded per block of BLOCK_USERS users, from [seed, stream, ...]:
- user traits from [seed, TRAITS, block]: independent of dates, days and chunking;
- a day's behaviour from [seed, DAY, days_ago, block], days_ago counted back from end_date,
  so moving end_date only moves dates and adding days only adds older history.
Whole blocks are always generated and then cut to `users`, so a smaller `users` yields a
prefix of the users of a larger one. Not a release path: no privacy guarantees here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cohort_pipeline.schema import DEVICE_TYPES, EVENT_ARROW_SCHEMA, EVENT_TYPES
from cohort_pipeline.settings import EVENT_FILE_PREFIX, DataFolder
from cohort_pipeline.storage.private_files import private_dir, private_umask

# Indices into EVENT_TYPES and DEVICE_TYPES.
VIEW, CLICK, ADD_TO_CART, PURCHASE = range(len(EVENT_TYPES))
DESKTOP, MOBILE, TABLET, OTHER = range(len(DEVICE_TYPES))

CATEGORY_NAMES = (
    "books", "electronics", "garden", "toys", "fashion", "beauty", "sports", "home",
    "kitchen", "music", "movies", "games", "grocery", "pets", "health", "automotive",
    "office", "baby", "jewelry", "shoes", "outdoors", "tools", "crafts", "travel",
    "software", "furniture", "lighting", "watches", "bags", "stationery",
)  # fmt: skip

# The unit the random streams are seeded by; chunks are whole blocks.
BLOCK_USERS = 1_000
_CATALOG, _TRAITS, _DAY = range(3)  # stream tags

# Tuned so that the 18 cohorts of a 28-day window each hold roughly 300..2500 of 20k users.
ACTIVITY_LOG_MEDIAN = -1.6  # log sessions/day of the median user (~0.2/day)
ACTIVITY_LOG_SD = 1.0
HEAVY_SHARE, HEAVY_FACTOR = 0.002, 20.0  # bot-like tail
CONVERT_BASE, CONVERT_PROPENSITY, CONVERT_ACTIVITY = -1.8, 2.2, 1.3  # per-session logit
# Per-user shopping waves (random phase): amplitude on the log session rate and on the
# conversion logit. Makes purchase recency predictive of the next week's conversion.
WAVE_PERIOD_DAYS, WAVE_ACTIVITY, WAVE_INTENT = 80.0, 0.7, 1.5
PRIMARY_DEVICE_P = (0.35, 0.50, 0.10, 0.05)  # desktop, mobile, tablet, other
PRIMARY_DEVICE_SHARE = 0.85  # sessions on the primary device, the rest uniform
DURATION_NULL_SHARE = 0.01  # tracking loss: a few sessions report no duration
MAX_DURATION_S = 4 * 3600.0
_DURATION_SHIFT = np.log([1.3, 0.85, 1.1, 1.0])  # desktop sessions last longest, mobile least
# Category preference logit = base + these x (device sign, activity z, propensity z) x a
# per-category direction, plus per-user noise (the persistent personal taste).
PREF_DEVICE, PREF_ACTIVITY, PREF_PROPENSITY, PREF_NOISE = 0.8, 0.6, 0.5, 0.8
_HOUR_P = 1.0 + 0.6 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)  # evening peak (UTC)
_HOUR_P /= _HOUR_P.sum()


@dataclass(frozen=True)
class GenerateSummary:
    events: int
    files: int
    first_date: dt.date
    last_date: dt.date
    users: int
    items: int


def generate(
    data_dir: str | Path,
    users: int = 20_000,
    days: int = 30,
    seed: int = 0,
    end_date: dt.date | None = None,
    items: int = 2_000,
    categories: int = 20,
    progress: Callable[[str], None] | None = None,
    *,
    chunk_users: int = 50_000,
) -> GenerateSummary:
    """Write `days` daily event files ending at `end_date` (default: yesterday, UTC).

    Streams: each day is written in row groups of `chunk_users` users (rounded up to whole
    blocks of BLOCK_USERS), so memory is bounded by one chunk. Output does not depend on
    `chunk_users`.
    """
    if min(users, days, items, categories, chunk_users) < 1 or seed < 0:
        raise ValueError("users, days, items, categories, chunk_users must be >= 1, seed >= 0")
    if items < categories:
        raise ValueError(f"need items >= categories, got {items} < {categories}")
    if end_date is None:
        end_date = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    folder = DataFolder(private_dir(data_dir))
    events_dir = folder.events
    events_dir.mkdir(parents=True, exist_ok=True)
    # Clean re-generation: no file of an earlier run may survive next to the new ones.
    written = f"{EVENT_FILE_PREFIX}*.parquet"
    for stale in [*events_dir.glob(written), *events_dir.glob(f".{EVENT_FILE_PREFIX}*.tmp")]:
        stale.unlink()

    cat = _Catalog(seed, items, categories)
    _write_atomic(folder.catalog, cat.csv())
    try:  # never overwrite: engineers add opt-outs by hand
        with private_umask(), open(folder.opt_outs, "x") as f:
            f.write("user_id\n")
    except FileExistsError:
        pass

    blocks_per_chunk = math.ceil(chunk_users / BLOCK_USERS)
    n_blocks = math.ceil(users / BLOCK_USERS)
    user_width = max(6, len(str(users)))
    first_date = end_date - dt.timedelta(days=days - 1)
    total = 0
    for d in range(days):
        day = first_date + dt.timedelta(days=d)
        path = folder.event_file(day)
        tmp = events_dir / f".{path.name}.tmp"  # not matched by events-*.parquet readers
        n_day = 0
        with pq.ParquetWriter(tmp, EVENT_ARROW_SCHEMA) as writer:
            for b0 in range(0, n_blocks, blocks_per_chunk):
                parts = [
                    _block_day(seed, days - 1 - d, b, users, cat)
                    for b in range(b0, min(b0 + blocks_per_chunk, n_blocks))
                ]
                table = _to_table(parts, day, cat, user_width)
                if table.num_rows:
                    writer.write_table(table)  # one row group per chunk
                    n_day += table.num_rows
        os.replace(tmp, path)
        total += n_day
        if progress is not None:
            progress(f"day {d + 1}/{days} {day.isoformat()}: {n_day:,} events")
    return GenerateSummary(total, days, first_date, end_date, users, items)


class _Catalog:
    """Items, their categories and popularity, and the category preference directions."""

    def __init__(self, seed: int, items: int, categories: int):
        rng = np.random.default_rng([seed, _CATALOG])
        reps = math.ceil(categories / len(CATEGORY_NAMES))
        names = [n if r == 0 else f"{n}-{r + 1}" for r in range(reps) for n in CATEGORY_NAMES]
        self.names = names[:categories]
        # Zipf-ish category popularity, in a seed-dependent order.
        pop = 1.0 / (rng.permutation(categories) + 1.0)
        pop /= pop.sum()
        self.base_logit = np.log(pop)
        # Every category gets an item; the rest go to categories by popularity^0.5.
        share = np.sqrt(pop) / np.sqrt(pop).sum()
        extra = rng.choice(categories, size=items - categories, p=share)
        self.item_category = rng.permutation(np.concatenate([np.arange(categories), extra]))
        # Zipf(1.1) item popularity within each category, in a random rank order.
        self.item_order = np.lexsort((rng.permutation(items), self.item_category))
        cat_sorted = self.item_category[self.item_order]
        starts = np.searchsorted(cat_sorted, np.arange(categories))
        rank = np.arange(items) - starts[cat_sorted]
        self.item_keys = _segment_cdf_keys(cat_sorted, (rank + 1.0) ** -1.1, categories)
        self.item_ids = _ids("i", np.arange(1, items + 1), max(5, len(str(items))))
        # Directions along which device, activity and propensity shift preferences.
        self.affinity = rng.standard_normal((3, categories))

    def sample_items(self, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.item_keys, category + u, side="right")
        return self.item_order[np.minimum(pos, len(self.item_keys) - 1)]

    def csv(self) -> str:
        rows = (
            f"{i},{self.names[c]}"
            for i, c in zip(self.item_ids.to_pylist(), self.item_category, strict=True)
        )
        return "item_id,category\n" + "\n".join(rows) + "\n"


def _segment_cdf_keys(segment: np.ndarray, weights: np.ndarray, n_segments: int) -> np.ndarray:
    """segment + within-segment CDF of `weights`, for sorted `segment`.

    The keys increase monotonically, so one searchsorted of (segment + uniform) samples
    from every segment's own distribution at once.
    """
    totals = np.bincount(segment, weights, minlength=n_segments)
    cum = np.cumsum(weights)
    before = cum - weights
    first = np.searchsorted(segment, np.arange(n_segments))
    within = (cum - before[first][segment]) / totals[segment]
    last = np.r_[segment[1:] != segment[:-1], True]
    within[last] = 1.0  # exact, so no uniform draw falls past its segment
    return segment + within


class _Traits:
    """Latent per-user traits of one block, drawn once from [seed, TRAITS, block]."""

    def __init__(self, seed: int, block: int, cat: _Catalog):
        rng = np.random.default_rng([seed, _TRAITS, block])
        n, n_cat = BLOCK_USERS, len(cat.names)
        z_act = rng.standard_normal(n)
        z_prop = rng.standard_normal(n)
        heavy = rng.random(n) < HEAVY_SHARE
        self.rate = np.exp(ACTIVITY_LOG_MEDIAN + ACTIVITY_LOG_SD * z_act)
        self.rate[heavy] *= HEAVY_FACTOR
        # Per-session conversion: driven by propensity, lower for very active browsers.
        self.convert_logit = CONVERT_BASE + CONVERT_PROPENSITY * z_prop - CONVERT_ACTIVITY * z_act
        self.primary = rng.choice(4, size=n, p=PRIMARY_DEVICE_P)
        # More active users have longer sessions; the bot-like tail has short ones.
        self.log_duration = np.log(330.0) + 0.2 * z_act - 1.5 * heavy
        self.p_stop = np.clip(0.3 - 0.04 * z_act, 0.12, 0.6)  # geometric events/session
        sign = np.where(np.isin(self.primary, (MOBILE, TABLET)), 1.0, -1.0)
        logits = (
            cat.base_logit
            + PREF_DEVICE * sign[:, None] * cat.affinity[0]
            + PREF_ACTIVITY * z_act[:, None] * cat.affinity[1]
            + PREF_PROPENSITY * z_prop[:, None] * cat.affinity[2]
            + PREF_NOISE * rng.standard_normal((n, n_cat))
        )
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        cdf[:, -1] = 1.0
        self.n_cat = n_cat
        self.wave_phase = rng.uniform(0.0, 2 * np.pi, n)
        self.pref_keys = (np.arange(n)[:, None] + cdf).ravel()

    def sample_category(self, user: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.pref_keys, user + u, side="right") - user * self.n_cat
        return np.minimum(pos, self.n_cat - 1)


def _block_day(seed: int, days_ago: int, block: int, users: int, cat: _Catalog) -> dict:
    """One day of one block's events as numpy columns, in user, session, time order."""
    tr = _Traits(seed, block, cat)
    rng = np.random.default_rng([seed, _DAY, days_ago, block])
    n = BLOCK_USERS

    # Shopping comes in slow waves (visits and buying intent rise together), so users who
    # bought recently tend to come back and buy again soon.
    wave = np.sin(2 * np.pi * days_ago / WAVE_PERIOD_DAYS + tr.wave_phase)

    # Sessions.
    n_sess = rng.poisson(tr.rate * np.exp(WAVE_ACTIVITY * wave))
    s_user = np.repeat(np.arange(n), n_sess)
    n_s = len(s_user)
    s_no = np.arange(n_s) - np.repeat(np.cumsum(n_sess) - n_sess, n_sess)
    device = np.where(
        rng.random(n_s) < PRIMARY_DEVICE_SHARE, tr.primary[s_user], rng.integers(0, 4, n_s)
    )
    duration = np.minimum(
        rng.lognormal(tr.log_duration[s_user] + _DURATION_SHIFT[device], 1.0), MAX_DURATION_S
    ).round(3)
    start = (rng.choice(24, size=n_s, p=_HOUR_P) + rng.random(n_s)) * 3600.0
    start = np.clip(start, 0.0, 86_399.0 - duration)  # the whole session inside its day
    p_convert = 1.0 / (1.0 + np.exp(-(tr.convert_logit + WAVE_INTENT * wave)))
    converts = rng.random(n_s) < p_convert[s_user]
    s_cat = tr.sample_category(s_user, rng.random(n_s))
    n_ev = rng.geometric(tr.p_stop[s_user]) + converts  # a purchase is one extra event

    # Events.
    e_sess = np.repeat(np.arange(n_s), n_ev)
    n_e = len(e_sess)
    first = np.cumsum(n_ev) - n_ev
    pos = np.arange(n_e) - first[e_sess]
    to_end = n_ev[e_sess] - 1 - pos  # 0 on a session's last event
    etype = np.searchsorted([0.6, 0.9], rng.random(n_e), side="right")  # view/click/cart
    etype[pos == 0] = VIEW
    buy = converts[e_sess]
    etype[buy & (to_end == 1)] = ADD_TO_CART
    etype[buy & (to_end == 0)] = PURCHASE
    # Mostly the session's category, sometimes another of the user's tastes.
    e_cat = np.where(
        rng.random(n_e) < 0.8, s_cat[e_sess], tr.sample_category(s_user[e_sess], rng.random(n_e))
    )
    item = cat.sample_items(e_cat, rng.random(n_e))
    last_buy = np.flatnonzero(etype == PURCHASE)
    item[last_buy] = item[last_buy - 1]  # buy what was just added to the cart
    # Ordered times: exponential gaps, scaled to the session's duration.
    gap = rng.exponential(size=n_e)
    cum = np.cumsum(gap) - gap
    span = np.add.reduceat(gap, first) if n_s else gap
    offset = (cum - cum[first][e_sess]) / span[e_sess]
    seconds = start[e_sess] + offset * duration[e_sess]
    revenue = np.where(etype == PURCHASE, rng.lognormal(np.log(30.0), 0.8, n_e).round(2), np.nan)
    duration[rng.random(n_s) < DURATION_NULL_SHARE] = np.nan

    user = block * BLOCK_USERS + s_user[e_sess]
    keep = user < users  # whole blocks were drawn; cut to `users` only now
    return {
        "user": user[keep],
        "session_no": s_no[e_sess][keep],
        "seconds": seconds[keep],
        "etype": etype[keep],
        "item": item[keep],
        "device": device[e_sess][keep],
        "duration": duration[e_sess][keep],
        "revenue": revenue[keep],
    }


_EVENT_TYPE_STRINGS = pa.array(EVENT_TYPES)
_DEVICE_STRINGS = pa.array(DEVICE_TYPES)


def _to_table(parts: list[dict], day: dt.date, cat: _Catalog, user_width: int) -> pa.Table:
    col = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    day_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 10**6
    user_id = _ids("u", col["user"] + 1, user_width)
    session_id = pc.binary_join_element_wise(
        user_id, day.strftime("%Y%m%d"), pa.array(col["session_no"]).cast(pa.string()), "-"
    )
    micros = day_us + (col["seconds"] * 1e6).astype(np.int64)
    return pa.table(
        [
            user_id,
            pa.array(micros, type=pa.timestamp("us", tz="UTC")),
            session_id,
            _EVENT_TYPE_STRINGS.take(col["etype"]),
            cat.item_ids.take(col["item"]),
            _DEVICE_STRINGS.take(col["device"]),
            pa.array(col["duration"], mask=np.isnan(col["duration"])),
            pa.array(col["revenue"], mask=np.isnan(col["revenue"])),
        ],
        schema=EVENT_ARROW_SCHEMA,
    )


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-date", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--chunk-users", type=int, default=50_000)
    a = parser.parse_args(argv)
    summary = generate(
        a.data_dir, a.users, a.days, a.seed, a.end_date, a.items, a.categories, print,
        chunk_users=a.chunk_users,
    )  # fmt: skip
    print(summary)


if __name__ == "__main__":
    main()
