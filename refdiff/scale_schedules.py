"""Guidance scales that change over a sampling run: the guidance interval and scale schedules.

Symbols: ``scale`` = s (CFG's ε_u + s·(ε_c − ε_u); s = 1 is the conditional prediction, no
guidance), w = s − 1 the paper's guidance weight (Ho & Salimans), ``step`` = i (0 for the
first, noisiest step of the run), ``num_steps`` = n, p = i/(n − 1) the progress of the run (0
at the first step, 1 at the last; 0 when n = 1), σ = √((1 − ᾱ)/ᾱ) the noise level of a step in
the σ (variance-exploding) parameterisation, x_t/√ᾱ = x_0 + σ·ε.

Every schedule is a pure function of (i, n, σ_i) evaluated on the host in float64:
:func:`scheduled_scale`. The sampling loop evaluates it once per step before the first model
call; a step whose scale is exactly 1 evaluates only the conditional branch.

Kinds (:class:`ScaleSchedule`):

- ``"constant"``: s at every step (plain CFG).
- ``"interval"``: s where σ_lo < σ ≤ σ_hi, 1 elsewhere (GI Eq. 6: open below, closed above;
  σ_lo = 0 and σ_hi = ∞ is plain CFG, an empty interval the conditional sampler).
- ``"step"``: s at the steps ⌊start·n⌋ ≤ i < ⌊stop·n⌋, 1 elsewhere (diffusers' guiders'
  ``start``/``stop`` fractions, half-open in steps).
- ``"linear"``, ``"cosine"``: w rises from 0 at the first step to 2w at the last, linearly
  (w·2p) or along a half cosine (w·(1 − cos πp)), so its mean over p ∈ [0, 1] is w; the
  monotonically increasing family analysed by Wang et al. Their paper's exact normalisation
  and time variable are not restated here: these two are refdiff's definitions, named so.

How the others state the interval, and how it maps onto the σ form (:func:`interval_from_steps`):
the official guidance-interval code guides the steps i with ``first <= i <= last`` (inclusive
indices into its σ list); diffusers' guiders guide ``int(start·n) <= i < int(stop·n)``. On a
strictly descending list σ_0 > σ_1 > … the steps first … last are exactly those with
σ ∈ (σ_{last+1}, σ_first] (σ_n = 0), so both are the σ form with bounds taken from the list.

References
----------
.. [GI] T. Kynkäänniemi, M. Aittala, T. Karras, S. Laine, T. Aila, J. Lehtinen, "Applying
   Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion
   Models", arXiv:2404.07724v2, §3.1, Eqs. 5–6.
.. [WANG] X. Wang, N. Dufour, N. Andreou, M.-P. Cani, V. F. Abrevaya, D. Picard,
   V. Kalogeiton, "Analysis of Classifier-Free Guidance Weight Schedulers",
   arXiv:2404.13040 (TMLR 2024), the heuristic increasing schedulers.
.. [EDM] T. Karras, M. Aittala, T. Aila, S. Laine, arXiv:2206.00364v2, §2 (σ, x = y + σ·n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from refdiff import _xp

SCHEDULE_KINDS = ("constant", "interval", "step", "linear", "cosine")


def sigma_from_alpha_bar(alpha_bar: float) -> float:
    """The noise level σ = √((1 − ᾱ)/ᾱ) of a VP level ᾱ (∞ at ᾱ = 0, 0 at ᾱ = 1).

    Parameters
    ----------
    alpha_bar : float
        ᾱ in [0, 1].

    Returns
    -------
    float
        σ, formed in float64 on the host.

    References
    ----------
    EDM, arXiv:2206.00364v2, §2 and Table 1 (the VP row: σ(t) = √(e^{…} − 1), i.e.
    σ² = (1 − ᾱ)/ᾱ).

    Examples
    --------
    >>> sigma_from_alpha_bar(0.2)
    2.0
    """
    ab = _xp.number("alpha_bar", alpha_bar, lo=0.0, hi=1.0)
    return math.inf if ab == 0 else math.sqrt((1.0 - ab) / ab)


@dataclass(frozen=True)
class ScaleSchedule:
    """A guidance scale per step: ``kind`` and its parameters (checked at construction).

    Attributes
    ----------
    kind : {"constant", "interval", "step", "linear", "cosine"}
        See the module docstring.
    scale : float
        s: the scale inside the interval or steps, or the constant; for "linear" and "cosine"
        the scale whose weight w = s − 1 is the mean of the ramp.
    sigma_lo, sigma_hi : float
        "interval" only: 0 ≤ σ_lo ≤ σ_hi ≤ ∞ (σ_lo = σ_hi: empty).
    start, stop : float
        "step" only: fractions of the run, 0 ≤ start, stop ≤ 1.

    Examples
    --------
    >>> g = ScaleSchedule("interval", 4.0, sigma_lo=0.28, sigma_hi=5.42)
    >>> scheduled_scale(g, 0, 50, 14.6), scheduled_scale(g, 20, 50, 1.3)
    (1.0, 4.0)
    """

    kind: str
    scale: float
    sigma_lo: float = 0.0
    sigma_hi: float = math.inf
    start: float = 0.0
    stop: float = 1.0

    def __post_init__(self) -> None:
        _xp.choice("ScaleSchedule.kind", self.kind, SCHEDULE_KINDS)
        if _xp.is_array(self.scale):
            raise TypeError("ScaleSchedule.scale must be a Python float (one s for the batch); "
                            "use Guidance.scale for a per-sample array")
        object.__setattr__(self, "scale", _xp.number("ScaleSchedule.scale", self.scale))
        lo = _xp.number("ScaleSchedule.sigma_lo", self.sigma_lo, lo=0.0)
        hi = self.sigma_hi if self.sigma_hi == math.inf else _xp.number(
            "ScaleSchedule.sigma_hi", self.sigma_hi, lo=0.0)
        if lo > hi:
            raise ValueError(f"ScaleSchedule needs sigma_lo <= sigma_hi, got sigma_lo={lo} and "
                             f"sigma_hi={hi}")
        start = _xp.number("ScaleSchedule.start", self.start, lo=0.0, hi=1.0)
        stop = _xp.number("ScaleSchedule.stop", self.stop, lo=0.0, hi=1.0)
        for name, value, default, owner in (("sigma_lo", lo, 0.0, "interval"),
                                            ("sigma_hi", hi, math.inf, "interval"),
                                            ("start", start, 0.0, "step"),
                                            ("stop", stop, 1.0, "step")):
            if value != default and self.kind != owner:
                raise ValueError(f"ScaleSchedule.{name} applies to kind={owner!r} only, got "
                                 f"{name}={value} with kind={self.kind!r}")
            object.__setattr__(self, name, float(value))


def _progress(i: int, n: int) -> float:
    return i / (n - 1) if n > 1 else 0.0


def _scheduled_scale(g: ScaleSchedule, i: int, n: int, sigma: float) -> float:
    s, w = g.scale, g.scale - 1.0
    if g.kind == "constant":
        return s
    if g.kind == "interval":
        return s if g.sigma_lo < sigma <= g.sigma_hi else 1.0        # GI Eq. 6
    if g.kind == "step":
        return s if int(g.start * n) <= i < int(g.stop * n) else 1.0  # diffusers' start/stop
    p = _progress(i, n)
    if g.kind == "linear":
        return 1.0 + 2.0 * w * p                                      # w(p) = 2w·p, mean w
    return 1.0 + w * (1.0 - math.cos(math.pi * p))                   # w(p) = w(1 − cos πp)


def scheduled_scale(schedule: ScaleSchedule, step: int, num_steps: int, sigma: float) -> float:
    """The scale s of step ``step`` of ``num_steps`` at noise level σ.

    Parameters
    ----------
    schedule : ScaleSchedule
    step : int
        i in [0, n − 1]; 0 is the first (noisiest) step.
    num_steps : int
        n ≥ 1.
    sigma : float
        σ_i ≥ 0 of the step's level (:func:`sigma_from_alpha_bar`); ∞ allowed.

    Returns
    -------
    float
        s_i; exactly 1.0 at the steps a schedule leaves unguided, and exactly ``scale`` for
        "constant" (and inside "interval" and "step").

    References
    ----------
    GI, arXiv:2404.07724v2, Eq. 6; WANG, arXiv:2404.13040 (module docstring).

    Examples
    --------
    >>> g = ScaleSchedule("linear", 3.0)
    >>> [scheduled_scale(g, i, 3, 1.0) for i in range(3)]  # w = 2 ramps 0, 2, 4
    [1.0, 3.0, 5.0]
    """
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(f"schedule must be a refdiff.ScaleSchedule, got "
                        f"{type(schedule).__name__}")
    n = _xp.integer("num_steps", num_steps, lo=1)
    i = _xp.integer("step", step, lo=0, hi=n - 1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise ValueError(f"sigma must be a float >= 0 (inf allowed), got {sigma!r}")
    return _scheduled_scale(schedule, i, n, float(sigma))


def interval_from_steps(sigmas: Sequence[float], first: int, last: int) -> tuple[float, float]:
    """(σ_lo, σ_hi) of the σ interval that guides exactly the steps first … last (inclusive).

    The official guidance-interval code states its interval as inclusive step indices
    (``first <= i <= last``); diffusers' guiders as fractions, ``int(start·n) <= i <
    int(stop·n)``, i.e. ``first = int(start·n)``, ``last = int(stop·n) − 1``. On the step
    levels σ_0 > σ_1 > … > σ_{n−1} (> σ_n = 0) the answer is (σ_{last+1}, σ_first]; an empty
    range (first > last) gives (0, 0], which contains no σ.

    Parameters
    ----------
    sigmas : sequence of float
        σ of each step of the run, strictly descending, each > 0; a list that ends with the
        0 after the last step (EDM's ``t_steps``) is taken without it.
    first, last : int
        Step indices, 0 ≤ first and last ≤ n − 1 (any order: first > last is empty).

    Returns
    -------
    (float, float)
        (σ_lo, σ_hi) for ``ScaleSchedule("interval", s, sigma_lo=..., sigma_hi=...)``.

    References
    ----------
    GI, arXiv:2404.07724v2, §3.1 (σ_hi = σ_i, σ_lo = σ_j at step boundaries) and Eq. 6.

    Examples
    --------
    >>> interval_from_steps([8.0, 4.0, 2.0, 1.0], 1, 2)
    (1.0, 4.0)
    """
    sig = [_xp.number("sigmas[i]", v, lo=0.0) for v in sigmas]
    if len(sig) > 1 and sig[-1] == 0:  # EDM's list ends with σ_n = 0, the level after the last step
        sig = sig[:-1]
    if any(v == 0 for v in sig):
        raise ValueError("sigmas must be > 0 at every step (a final 0 after the last step is "
                         f"allowed), got {sig[:8]}{'...' if len(sig) > 8 else ''}")
    if not sig or any(a <= b for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas must be a non-empty, strictly descending list, got "
                         f"{sig[:8]}{'...' if len(sig) > 8 else ''}")
    n = len(sig)
    first = _xp.integer("first", first, lo=0, hi=n)
    last = _xp.integer("last", last, lo=-1, hi=n - 1)
    if first > last:
        return 0.0, 0.0
    return (sig[last + 1] if last + 1 < n else 0.0), sig[first]
