"""Interleaved timing: warm-up, synchronisation before reading the clock, median and spread.

Candidates that are compared are timed in rounds: each round times every candidate once, in
a rotated order, so that slow phases of a noisy machine (another process, frequency changes)
fall on all of them alike. Each sample times ``number`` calls back to back, with ``number``
chosen so that one sample lasts at least ``min_sample_s``; the reported value is the median
over rounds of the time per call, with the interquartile range as the spread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class Stats:
    """Time per call in seconds: median, quartiles, min; ``n`` samples of ``number`` calls."""

    median: float
    q1: float
    q3: float
    min: float
    n: int
    number: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict:
        return dict(asdict(self), spread=self.spread)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def _sample(fn: Callable[[], object], sync: Callable[[], None], number: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - t0) / number


def _no_sync() -> None:
    pass


def measure(cases: dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 2,
            min_sample_s: float = 0.005, max_number: int = 100_000,
            sync: Callable[[], None] | None = None,
            budget_s: float | None = None) -> dict[str, Stats]:
    """Time several zero-argument callables against each other, interleaved.

    Parameters
    ----------
    cases : dict name -> callable
        Each callable runs the operation once (outputs are discarded).
    rounds : int
        Samples per candidate (fewer if ``budget_s`` runs out; at least 3).
    warmup : int
        Untimed calls per candidate before calibration.
    min_sample_s : float
        Calibrate ``number`` (calls per sample) so a sample lasts at least this long.
    sync : callable, optional
        Called before starting and before stopping the clock (``torch.cuda.synchronize``).
    budget_s : float, optional
        Stop adding rounds after this many seconds (keeps the full run bounded).
    """
    sync = sync or _no_sync
    names = list(cases)
    numbers = {}
    for name in names:
        fn = cases[name]
        for _ in range(warmup):
            fn()
        number, t = 1, _sample(fn, sync, 1)
        while t * number < min_sample_s and number < max_number:
            number = min(max_number, max(number * 2, int(min_sample_s / max(t, 1e-9)) + 1))
            t = _sample(fn, sync, number)
        numbers[name] = number
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            samples[name].append(_sample(cases[name], sync, numbers[name]))
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    out = {}
    for name, xs in samples.items():
        q1, q3 = _quartiles(xs)
        out[name] = Stats(statistics.median(xs), q1, q3, min(xs), len(xs), numbers[name])
    return out
