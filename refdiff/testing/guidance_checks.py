"""Conformance checks for the guidance interval and CFG++.

Adapter signatures (t, t_prev are training timesteps; t_prev = −1 after the last listed one):

=========================  ==================================================================
check                       candidate
=========================  ==================================================================
check_guidance_interval     ``candidate(sigmas, scale, sigma_lo, sigma_hi) -> sequence of
                            float`` (the scale of each step; ``convention="steps"``:
                            ``candidate(sigmas, scale, first, last)``, inclusive indices)
check_cfgpp                 ``candidate(x_t, eps_uncond, eps_cond, lam, t, t_prev) -> x_prev``
=========================  ==================================================================

The interval check compares exactly (every scale is s or 1). The CFG++ check draws arrays in
float64, rounds them to the target's dtype, compares with refdiff in NumPy float64 on the
rounded values, and judges with a first-order error bound in the target's dtype derived in
:func:`_cfgpp_bound` (the machinery of :mod:`refdiff.testing.bounds`).

Adaptive projected guidance (APG) is checked in :mod:`refdiff.testing.apg_check`. Hand-written
candidates with planted slips, in the manner of :mod:`refdiff.testing.mutants`, are in
:mod:`refdiff.testing.guidance_mutants`.

References
----------
.. [GI] Kynkäänniemi et al., arXiv:2404.07724v2, §3.1 and Eq. 6 (guidance in (σ_lo, σ_hi]).
.. [CFGPP] Chung et al., arXiv:2406.08070v1, Algorithm 1 (CFG++ with DDIM).
.. [DDIM] Song, Meng, Ermon, arXiv:2010.02502v4, Eq. 12.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
from hypothesis import assume, strategies as st

import refdiff as rd
from refdiff import _xp
from refdiff.testing import bounds as B
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, disagree, run
from refdiff.testing.checks import Target, compare, resolve_schedule, snippet
from refdiff.testing.tolerance import notify, to_numpy

CONVENTIONS = ("sigma", "steps")
ALPHA_BAR_INDICES = ("t", "t_minus_1")


# ----- guidance interval ------------------------------------------------------------------

def _karras(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """EDM's σ list (arXiv:2206.00364v2, Eq. 5), n levels from σ_max down to σ_min."""
    if n == 1:
        return [sigma_max]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]


@st.composite
def _sigma_lists(draw) -> list[float]:
    """Strictly descending σ of a run's steps: EDM/Karras, a VP schedule's listed levels, or
    random."""
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["karras", "vp", "random"]))
    if kind == "karras":
        hi = draw(st.one_of(st.sampled_from([80.0, 14.6146]), st.floats(1.0, 100.0)))
        sig = _karras(n, hi, draw(st.floats(0.002, 0.5)))
    elif kind == "vp":
        sched = rd.linear_schedule(1000)
        ts = rd.inference_timesteps(1000, n, draw(st.sampled_from(rd.SPACINGS)))
        sig = [rd.sigma_from_alpha_bar(sched.alpha_bar(int(t))) for t in ts]
    else:
        vals = draw(st.lists(st.floats(1e-3, 100.0), min_size=n, max_size=n, unique=True))
        sig = sorted(vals, reverse=True)
    assume(all(a > b > 0 for a, b in zip(sig, sig[1:])) and sig[-1] > 0)
    return sig


def _interval_scales():
    """s ≠ 1 (at s = 1 every schedule is invisible)."""
    return st.one_of(st.sampled_from([7.5, 2.0, 0.0, -1.0, 4.0]),
                     st.floats(-10.0, 10.0).filter(lambda s: s != 1.0))


@st.composite
def _interval_examples(draw, convention: str):
    sig = draw(_sigma_lists())
    s = draw(_interval_scales())
    if convention == "steps":
        n = len(sig)
        first, last = draw(st.integers(0, n - 1)), draw(st.integers(-1, n - 1))
        return sig, s, first, last
    ends = st.one_of(st.sampled_from(sig), st.sampled_from(sig), st.just(0.0),
                     st.just(math.inf), st.floats(0.0, 2.0 * sig[0]))
    lo, hi = sorted([draw(ends), draw(ends)])
    if lo == math.inf:
        lo = sig[0]
    return sig, s, lo, hi


def _interval_reference(sig: list[float], s: float, a: float, b: float, convention: str):
    lo, hi = rd.interval_from_steps(sig, a, b) if convention == "steps" else (a, b)
    g = rd.ScaleSchedule("interval", s, sigma_lo=lo, sigma_hi=hi)
    return [rd.scheduled_scale(g, i, len(sig), v) for i, v in enumerate(sig)]


def check_guidance_interval(candidate: Callable, *, convention: str = "sigma",
                            max_examples: int = 200, seed: int | None = None) -> CheckResult:
    """The scale of every step of a run under a guidance interval, exactly (GI Eq. 6).

    Parameters
    ----------
    candidate : callable
        ``convention="sigma"``: ``candidate(sigmas, scale, sigma_lo, sigma_hi) -> sequence of
        float``, the scale applied at each step of a run whose steps have noise levels
        ``sigmas`` (a list of Python floats, strictly descending, σ_i > 0); ``sigma_lo`` may
        be 0 and ``sigma_hi`` ∞. ``convention="steps"``: ``candidate(sigmas, scale, first,
        last)`` with inclusive step indices (0 ≤ first, −1 ≤ last ≤ n − 1; first > last
        is the empty interval), the official guidance-interval code's form.
    convention : {"sigma", "steps"}
        "sigma": s where σ_lo < σ_i ≤ σ_hi, else 1 (open below, closed above).
        "steps": s where first ≤ i ≤ last, else 1, judged through
        :func:`refdiff.interval_from_steps`, which maps the indices onto the σ form.
    max_examples, seed
        The search (:func:`refdiff.testing._engine.run`).

    Returns
    -------
    CheckResult

    Notes
    -----
    Reference: ``[rd.scheduled_scale(rd.ScaleSchedule("interval", s, sigma_lo=σ_lo,
    sigma_hi=σ_hi), i, n, σ_i) for i ...]``. The comparison is exact: each scale is s or 1.
    The σ lists are EDM's (Karras) lists, the levels σ = √((1 − ᾱ)/ᾱ) of a linear VP
    schedule's listed timesteps, or random; σ_lo and σ_hi are often exactly an element of the
    list (where an open and a closed end differ), sometimes 0, ∞ or anywhere; s ≠ 1.

    An implementation stated in step indices (``i >= first and i <= last``) is checked with
    ``convention="steps"``. To check one against given σ bounds, wrap it: with
    ``first = sum(v > sigma_hi for v in sigmas)`` and ``last = sum(v > sigma_lo for v in
    sigmas) - 1`` the steps first … last are exactly those with σ in (σ_lo, σ_hi]; the
    reverse map is :func:`refdiff.interval_from_steps`.

    References
    ----------
    GI, arXiv:2404.07724v2, §3.1 and Eq. 6.

    Examples
    --------
    >>> from refdiff.testing.guidance_mutants import hand_interval
    >>> bool(check_guidance_interval(hand_interval(), max_examples=20))
    True
    """
    _xp.choice("convention", convention, CONVENTIONS)
    ends = ("first", "last") if convention == "steps" else ("sigma_lo", "sigma_hi")

    def trial(ex):
        sig, s, a, b = ex
        expected = _interval_reference(sig, s, a, b, convention)
        actual = [float(v) for v in to_numpy(np.asarray(candidate(list(sig), s, a, b))).ravel()]
        if actual != expected:
            diff = [i for i, (x, y) in enumerate(zip(actual, expected)) if x != y]
            where = (f"{len(actual)} scales for {len(sig)} steps" if len(actual) != len(sig)
                     else f"{len(diff)} step(s) differ, first at step {diff[0]} "
                          f"(sigma = {sig[diff[0]]!r}: got {actual[diff[0]]!r}, "
                          f"expected {expected[diff[0]]!r})")
            err = (max(abs(x - y) for x, y in zip(actual, expected))
                   if len(actual) == len(sig) else math.inf)
            notify({"what": "scales", "dtype": "float64", "device": "cpu", "actual": actual,
                    "expected": expected, "bound": 0.0, "ratio": math.inf, "passed": False})
            raise disagree(f"scales: {where}", actual, expected, err, err)

    def describe(ex):
        sig, s, a, b = ex
        return {"sigmas": list(sig), "scale": s, ends[0]: a, ends[1]: b}

    def reproduce(d):
        a, b = ends
        bounds = ("*rd.interval_from_steps(sigmas, first, last)" if convention == "steps"
                  else "sigma_lo, sigma_hi")
        ref = (f"GC._interval_reference(sigmas, scale, {a}, {b}, {convention!r})  "
               f"# scheduled_scale of ScaleSchedule('interval', scale, ({bounds}))")
        lines = snippet(ref, f"[float(v) for v in candidate(sigmas, scale, {a}, {b})]",
                        {k: d[k] for k in ("sigmas", "scale", a, b)})
        lines = lines.replace("import numpy as np",
                              "import numpy as np\nfrom refdiff.testing import guidance_checks as GC", 1)
        return lines.replace("assert_close(actual, expected)  # with dtype=/device= of your run",
                             "assert actual == expected, (actual, expected)")

    return run(f"guidance interval ({convention})", _interval_examples(convention), trial,
               describe=describe, reproduce=reproduce, max_examples=max_examples, seed=seed)


# ----- CFG++ --------------------------------------------------------------------------------

@st.composite
def _cfgpp_pairs(draw, T: int, spacings):
    """(n, spacing, t, t_prev) of a listed run; any step, the first and the last favoured
    (a step to ᾱ_prev < 1 is where the renoising direction shows)."""
    n, spacing, ts = draw(S.timestep_lists(T, spacings))
    i = draw(st.one_of(st.integers(0, n - 1), st.just(0), st.just(n - 1)))
    return n, spacing, ts[i], (ts[i + 1] if i + 1 < n else -1)


@functools.lru_cache(maxsize=None)
def _cfgpp_arrays(shape: tuple):
    return st.tuples(S.arrays(shape), S.arrays(shape), S.arrays(shape))


def _lams():
    """λ in [0, 1], with 0, 1 and 0.5 favoured."""
    return st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))


def cfgpp_levels(sched: rd.Schedule, t: int, t_prev: int, alpha_bar_index: str = "t"):
    """(ᾱ_t, ᾱ_prev, t index, t_prev index, prev exact) of a CFG++ step under a convention.

    "t": ᾱ_t = table[t], ᾱ_prev = table[t_prev] (1 for t_prev = −1). "t_minus_1": the
    table with 1.0 prepended (the official CFG++ code): ᾱ(t) = table[t − 1], ᾱ(0) = 1, and
    t_prev = −1 also 1. Indices are those of the original table (None for the exact 1)."""
    if alpha_bar_index == "t":
        if t_prev < 0:
            return sched.alpha_bar(t), 1.0, t, None, True
        return sched.alpha_bar(t), sched.alpha_bar(t_prev), t, t_prev, False
    ab_t = sched.alpha_bar(t - 1) if t >= 1 else 1.0
    if t_prev >= 1:
        return ab_t, sched.alpha_bar(t_prev - 1), t - 1, t_prev - 1, False
    return ab_t, 1.0, t - 1, None, True


def _cfgpp_bound(x_t, eps_u, eps_c, lam, ab_t, ab_prev, dtype, *, prev_exact=False, t=None,
                 t_prev=None):
    """Bound for a CFG++ DDIM step in ``dtype``: the wider of two forms, each bounded as in
    :mod:`refdiff.testing.bounds` (rounding of the inputs along every path; levels as a
    table holds them; γ_k·M for the arithmetic):

    - the paper's: ε_λ = ε_u + λ·(ε_c − ε_u), x̂_0 = (x_t − √(1−ᾱ_t)·ε_λ)/√ᾱ_t,
      x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε_u (CFG++ Algorithm 1);
    - refdiff's: DDIM(x_t, ε_u) − (√ᾱ_prev·√((1−ᾱ_t)/ᾱ_t)·λ)·(ε_c − ε_u) (one coefficient).

    (1 − λ)·ε_u + λ·ε_c has terms no larger than the first form's, as λ ∈ [0, 1]."""
    p = B.Precision(dtype)
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_prev, prev_exact, t_prev)
    x, eu, ec, lam_ = p.array(x_t), p.array(eps_u), p.array(eps_c), p.scale(lam)
    eps_l = eu + lam_ * (ec - eu)
    paper = A_p.sqrt() * ((x - C_t.sqrt() * eps_l) / A_t.sqrt()) + C_p.sqrt() * eu
    ddim_u = A_p.sqrt() * ((x - C_t.sqrt() * eu) / A_t.sqrt()) + C_p.sqrt() * eu
    folded = ddim_u - (A_p.sqrt() * (C_t / A_t).sqrt() * lam_) * (ec - eu)
    return np.maximum(paper.bound(), folded.bound())


def check_cfgpp(candidate: Callable, *, schedule=None, alpha_bar_index: str = "t",
                spacings=rd.SPACINGS, target: Target = Target(), max_examples: int = 100,
                seed: int | None = None) -> CheckResult:
    """One CFG++ DDIM step against :func:`refdiff.cfgpp_ddim_step` (CFG++ Algorithm 1).

    .. math::
        ε_λ = ε_u + λ(ε_c − ε_u),\\quad
        \\hat x_0 = \\frac{x_t − \\sqrt{1 − \\bar α_t}\\,ε_λ}{\\sqrt{\\bar α_t}},\\quad
        x_{prev} = \\sqrt{\\bar α_{prev}}\\,\\hat x_0 + \\sqrt{1 − \\bar α_{prev}}\\,ε_u

    Parameters
    ----------
    candidate : callable
        ``candidate(x_t, eps_uncond, eps_cond, lam, t, t_prev) -> x_prev``: arrays of
        ``target`` of one shape (B, ...), ``lam`` λ a Python float in [0, 1], t and t_prev
        consecutive training timesteps of a listed run (refdiff's lists for ``spacings``),
        t_prev = −1 after the last one (ᾱ_prev = 1).
    schedule : ScheduleSpec or refdiff.Schedule, optional
        The schedule the candidate uses (default linear, T = 1000).
    alpha_bar_index : {"t", "t_minus_1"}
        Which level belongs to a timestep. "t" (refdiff, diffusers): ᾱ_t = alphas_cumprod[t].
        "t_minus_1": the official CFG++ code's table with 1.0 prepended, so that the level of
        timestep t is the original ᾱ_{t−1} (ᾱ_{−1} = 1): ᾱ_t → ᾱ_{t−1}, ᾱ_prev →
        ᾱ_{t_prev−1} (1 for t_prev ≤ 0). Steps from t = 0 are then not drawn (ᾱ = 1 there,
        no step).
    spacings, target, max_examples, seed
        As in :func:`refdiff.testing.check_ddim_step`.

    Returns
    -------
    CheckResult

    Notes
    -----
    Reference: ``rd.cfgpp_ddim_step(x_t, ε_u, ε_c, λ, ᾱ_t, ᾱ_prev)`` in NumPy float64 on the
    rounded inputs, with the levels of ``alpha_bar_index``; x_t, ε_u, ε_c in [−3, 3]. The
    tolerance is :func:`_cfgpp_bound` (the step checks' analysis with the guidance term).
    CFG++ at λ equals CFG-DDIM at s = λ·σ_t/(σ_t − σ_prev): a candidate that renoises with
    ε_λ (plain CFG-DDIM at s = λ) fails wherever λ > 0, ε_c ≠ ε_u and ᾱ_prev < 1.

    References
    ----------
    CFGPP, arXiv:2406.08070v1, Algorithm 1; DDIM, arXiv:2010.02502v4, Eq. 12.

    Examples
    --------
    >>> from refdiff.testing.guidance_mutants import hand_cfgpp
    >>> bool(check_cfgpp(hand_cfgpp(rd.linear_schedule(1000)), max_examples=20))
    True
    """
    _xp.choice("alpha_bar_index", alpha_bar_index, ALPHA_BAR_INDICES)
    sched, src = resolve_schedule(schedule)

    def trial(ex):
        _cfgpp_trial(candidate, ex, sched, alpha_bar_index, target)

    def describe(ex):
        (x, eu, ec), (n, spacing, t, t_prev), lam = ex
        return {"x_t": x, "eps_uncond": eu, "eps_cond": ec, "lam": lam, "t": t,
                "t_prev": t_prev, "n": n, "spacing": spacing}

    def reproduce(d):
        return _cfgpp_reproduction(d, src, alpha_bar_index, target.dtype)

    name = "CFG++ DDIM step" + ("" if alpha_bar_index == "t" else " (alpha_bar index t-1)")
    return run(name, _cfgpp_examples(sched, spacings, alpha_bar_index), trial,
               describe=describe, reproduce=reproduce, max_examples=max_examples, seed=seed)


def _cfgpp_examples(sched: rd.Schedule, spacings, alpha_bar_index: str):
    """((x_t, ε_u, ε_c), (n, spacing, t, t_prev), λ), steps whose ᾱ_t > 0 under the
    convention (no t = 0 under "t_minus_1")."""
    def usable(pair):
        _, _, t, _ = pair
        return (alpha_bar_index == "t" or t >= 1) and cfgpp_levels(
            sched, t, -1, alpha_bar_index)[0] > 0

    return st.tuples(S.shapes().flatmap(lambda sh: _cfgpp_arrays(tuple(sh))),
                     _cfgpp_pairs(sched.num_train_timesteps, spacings).filter(usable),
                     _lams())


def _cfgpp_trial(candidate, ex, sched, alpha_bar_index: str, target: Target) -> None:
    """One example of :func:`check_cfgpp`, compared within :func:`_cfgpp_bound`."""
    arrays, (_, _, t, t_prev), lam = ex
    ab_t, ab_prev, it, ip, exact = cfgpp_levels(sched, t, t_prev, alpha_bar_index)
    x, eu, ec = (target.rounded(a) for a in arrays)
    actual = candidate(target.put(x), target.put(eu), target.put(ec), lam, t, t_prev)
    expected = rd.cfgpp_ddim_step(x, eu, ec, lam, ab_t, ab_prev)
    bound = _cfgpp_bound(x, eu, ec, lam, ab_t, ab_prev, target.dtype, prev_exact=exact,
                         t=it, t_prev=ip)
    compare(actual, expected, dtype=target.dtype, device=target.device, bound=bound,
            what="x_prev")


def _cfgpp_reproduction(d: dict, src: str, alpha_bar_index: str, dtype: str) -> str:
    """A runnable reproduction of a :func:`check_cfgpp` counterexample."""
    text = snippet("rd.cfgpp_ddim_step(x_t, eps_uncond, eps_cond, lam, ab_t, ab_prev)",
                   "candidate(x_t, eps_uncond, eps_cond, lam, t, t_prev)", d,
                   src + "\nfrom refdiff.testing import guidance_checks as GC",
                   "GC._cfgpp_bound(x_t, eps_uncond, eps_cond, lam, ab_t, ab_prev, DTYPE, "
                   "prev_exact=exact, t=it, t_prev=ip)", dtype)
    levels = (f"ab_t, ab_prev, it, ip, exact = GC.cfgpp_levels(schedule, t, t_prev, "
              f"{alpha_bar_index!r})")
    return text.replace("\nexpected = ", f"\n{levels}\nexpected = ", 1)
