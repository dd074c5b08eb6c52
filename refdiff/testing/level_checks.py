"""Conformance checks for lists of noise levels (Karras σ's, shifted flow times), and the
strategies of σ and flow-time lists that the solver checks draw their steps from.

=====================  ===============================================================
check                   candidate
=====================  ===============================================================
check_karras_sigmas     ``candidate(n, sigma_min, sigma_max) -> n + 1 floats``
check_flow_times        ``candidate(n, shift) -> n + 1 floats``
=====================  ===============================================================

Both compare the length first, then every element within a bound from the rounding of the
arithmetic in ``dtype`` (the precision the candidate claims, float64 by default: k-diffusion's
``get_sigmas_karras`` builds its ramp in float32 and claims ``dtype="float32"``); the final
level 0 of ``final="zero"`` must be exactly 0.

Bound (first order, :mod:`refdiff.testing.bounds`' :class:`~refdiff.testing.bounds.Level`
algebra, each operation one rounding u·|result|): σ_min, σ_max, ρ, 1/ρ, the shift s and
t_min as the candidate holds them (u·|v| each); the fraction f = i/(n − 1) within 3u·f (a
linspace forms it as start + i·step); ramp = a + f·(b − a), a = σ_max^{1/ρ}, b = σ_min^{1/ρ};
a power y = z^r moves by y·(((z + e_z)/z)^r − 1) + y·|log z|·e_r and rounds within 2u·y
(a libm pow is within an ulp or two); the shift s·τ/(1 + (s − 1)·τ), τ = 1 + f·(t_min − 1).
The bound is (S + u₆₄/u) times that error (:func:`refdiff.testing.bounds.factor`).

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Eq. 5 and Table 1 (σ_N = 0).
.. [SD3] P. Esser et al., arXiv:2403.03206v1, §5.3.2, Eq. 23 (the shift).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from hypothesis import assume, strategies as st

import refdiff as rd
from refdiff import _xp
from refdiff.testing import bounds as B
from refdiff.testing._engine import CheckResult, disagree, run
from refdiff.testing.checks import snippet
from refdiff.testing.tolerance import notify, to_numpy

# (σ_min, σ_max): EDM's, and the σ range of SD's scaled_linear and of the linear VP table
KARRAS_RANGES = ((0.002, 80.0), (0.0292, 14.6146), (0.01, 157.4))
SHIFTS = (1.0, 3.0, 0.5, 2.0, 6.0)
FINAL_LEVELS = ("zero", "sigma_min")


# ----- strategies -------------------------------------------------------------------------

def _vp_list(kind: str, n: int, spacing: str) -> list[float]:
    sched = rd.linear_schedule(1000) if kind == "linear" else rd.scaled_linear_schedule(1000)
    return [float(v) for v in rd.vp_sigmas(sched, rd.inference_timesteps(1000, n, spacing))]


@st.composite
def sigma_lists(draw, max_steps: int = 10) -> list[float]:
    """n + 1 σ's of a run, strictly descending (Python floats): a Karras list on EDM's or a
    VP table's range, a VP table's σ at listed timesteps, or random; the final level 0
    (favoured) or a positive one (diffusers' ``final_sigmas_type="sigma_min"``)."""
    n = draw(st.integers(1, max_steps))
    kind = draw(st.sampled_from(["karras", "karras", "vp", "random"]))
    if kind == "karras":
        lo, hi = draw(st.sampled_from(KARRAS_RANGES))
        sig = [float(v) for v in rd.karras_sigmas(n, lo, hi)]
    elif kind == "vp":
        sig = _vp_list(draw(st.sampled_from(["linear", "scaled_linear"])), n,
                       draw(st.sampled_from(rd.SPACINGS)))
    else:
        vals = draw(st.lists(st.floats(1e-3, 100.0), min_size=n, max_size=n, unique=True))
        sig = sorted(vals, reverse=True) + [0.0]
    if draw(st.sampled_from([False, False, True])):              # a last level above 0
        sig[-1] = sig[-2] * draw(st.floats(0.05, 0.9))
    assume(all(a > b for a, b in zip(sig, sig[1:])))
    return sig


@st.composite
def sigma_pairs(draw) -> tuple[float, float]:
    """(σ, σ') of one step of a run of :func:`sigma_lists`; the last step favoured."""
    sig = draw(sigma_lists())
    n = len(sig) - 1
    i = draw(st.one_of(st.just(n - 1), st.integers(0, n - 1), st.just(n - 1)))
    return sig[i], sig[i + 1]


@st.composite
def time_pairs(draw) -> tuple[float, float]:
    """(t, t') of one flow step: shifted flow times (SD3) or random, t' = 0 favoured."""
    n = draw(st.integers(1, 10))
    if draw(st.booleans()):
        s = draw(st.one_of(st.sampled_from(SHIFTS), st.floats(0.25, 8.0)))
        ts = [float(v) for v in rd.flow_times(n, shift=s)]
    else:
        vals = draw(st.lists(st.floats(1e-3, 1.0), min_size=n, max_size=n, unique=True))
        ts = sorted(vals, reverse=True) + [0.0]
    i = draw(st.one_of(st.just(n - 1), st.integers(0, n - 1)))
    return ts[i], ts[i + 1]


# ----- bounds -------------------------------------------------------------------------------

def _held(p: B.Precision, v: float) -> B.Level:
    """A Python float as the candidate holds it: rounded to the dtype (u·|v|)."""
    return p.level(v, p.u * abs(v))


def power(z: B.Level, r: B.Level) -> B.Level:
    """z^r for z > 0 (module docstring)."""
    v = z.v ** r.v
    lo = max(z.v - z.e, 0.0)
    moved = max(((z.v + z.e) / z.v) ** r.v - 1.0, 1.0 - (lo / z.v) ** r.v)
    return B.Level(v, v * (moved + abs(math.log(z.v)) * r.e) + 2 * z.p.u * v, z.p)


def _fraction(p: B.Precision, i: int, n: int) -> B.Level:
    f = i / (n - 1) if n > 1 else 0.0
    return p.level(f, 3 * p.u * f)


def karras_bound(n: int, sigma_min: float, sigma_max: float, rho: float, dtype: str,
                 final: str = "zero") -> np.ndarray:
    """Elementwise bound of :func:`refdiff.karras_sigmas` computed in ``dtype`` (n + 1)."""
    p = B.Precision(dtype)
    inv = p.level(1.0 / rho, p.u / rho)
    a, b = power(_held(p, sigma_max), inv), power(_held(p, sigma_min), inv)
    errs = [power(a + _fraction(p, i, n) * (b - a), _held(p, rho)).e for i in range(n)]
    errs.append(0.0 if final == "zero" else max(errs[-1], p.u * sigma_min))
    return B.factor(p) * np.asarray(errs)


def flow_times_bound(n: int, shift: float, t_min: float, dtype: str,
                     final: str = "zero") -> np.ndarray:
    """Elementwise bound of :func:`refdiff.flow_times` (t_max = 1) computed in ``dtype``."""
    p = B.Precision(dtype)
    s, lo = _held(p, shift), _held(p, t_min)

    def shifted(tau: B.Level) -> float:
        return (s * tau / (1.0 + (s - 1.0) * tau)).e
    errs = [shifted(1.0 + _fraction(p, i, n) * (lo - 1.0)) for i in range(n)]
    errs.append(0.0 if final == "zero" else max(errs[-1], shifted(lo)))
    return B.factor(p) * np.asarray(errs)


def compare_levels(actual, expected: list[float], bound: np.ndarray, what: str) -> None:
    """Length first, then |actual_i − expected_i| ≤ bound_i (0: exactly)."""
    got = [float(v) for v in (to_numpy(actual).ravel() if hasattr(actual, "shape") else actual)]
    if len(got) != len(expected):
        err, where = math.inf, f"{len(got)} levels, expected {len(expected)}"
    else:
        diff = np.abs(np.asarray(got) - np.asarray(expected))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = np.flatnonzero(~(diff <= bound))
        if bad.size == 0:
            notify({"what": what, "dtype": "float64", "device": "cpu", "actual": got,
                    "expected": expected, "bound": bound, "passed": True,
                    "ratio": float(np.max(np.where(diff == 0, 0.0, diff / np.where(
                        bound > 0, bound, 1.0)), initial=0.0))})
            return
        i = int(bad[0])
        err = float(diff.max())
        where = (f"{bad.size} level(s) off, first at index {i}: got {got[i]!r}, expected "
                 f"{expected[i]!r} (bound {bound[i]:.3e})")
    notify({"what": what, "dtype": "float64", "device": "cpu", "actual": got,
            "expected": expected, "bound": bound, "ratio": math.inf, "passed": False})
    raise disagree(f"{what}: {where}", got, expected, err, err)


# ----- checks -------------------------------------------------------------------------------

@st.composite
def _karras_examples(draw):
    n = draw(st.one_of(st.integers(1, 12), st.integers(1, 60)))
    if draw(st.booleans()):
        lo, hi = draw(st.sampled_from(KARRAS_RANGES))
    else:
        lo = draw(st.floats(1e-3, 1.0))
        hi = draw(st.floats(1.5 * lo, 200.0))
    return n, lo, hi


def check_karras_sigmas(candidate: Callable, *, rho: float = 7.0, final: str = "zero",
                        dtype: str = "float64", max_examples: int = 100,
                        seed: int | None = None) -> CheckResult:
    """EDM's σ list against :func:`refdiff.karras_sigmas` (EDM Eq. 5).

    Parameters
    ----------
    candidate : callable
        ``candidate(n, sigma_min, sigma_max) -> n + 1 floats`` (any sequence or 1-d
        array), descending from σ_max, σ_{n−1} = σ_min, then the final level.
    rho : float
        EDM's ρ (7).
    final : {"zero", "sigma_min"}
        The level the candidate's last step goes to: 0 (exactly) or σ_min.
    dtype : str
        The precision the candidate's arithmetic claims (module docstring).
    max_examples, seed
        The search (:func:`refdiff.testing._engine.run`).

    Returns
    -------
    CheckResult

    Notes
    -----
    n from 1 to 60; (σ_min, σ_max) EDM's (0.002, 80), a VP table's (0.0292, 14.6146),
    (0.01, 157.4), or random. The bound is :func:`karras_bound`.

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_karras
    >>> bool(check_karras_sigmas(hand_karras, max_examples=20))
    True
    """
    _xp.choice("final", final, FINAL_LEVELS)

    def trial(ex):
        n, lo, hi = ex
        expected = [float(v) for v in rd.karras_sigmas(n, lo, hi, rho, final=final)]
        compare_levels(candidate(n, lo, hi), expected,
                       karras_bound(n, lo, hi, rho, dtype, final), "karras sigmas")

    def reproduce(d):
        return _levels_snippet(
            f"rd.karras_sigmas(n, sigma_min, sigma_max, {rho!r}, final={final!r})",
            "candidate(n, sigma_min, sigma_max)",
            f"LC.karras_bound(n, sigma_min, sigma_max, {rho!r}, {dtype!r}, {final!r})", d)

    return run(f"karras sigmas (rho={rho:g}, final={final})", _karras_examples(), trial,
               describe=lambda ex: dict(zip(("n", "sigma_min", "sigma_max"), ex)),
               reproduce=reproduce, max_examples=max_examples, seed=seed)


def check_flow_times(candidate: Callable, *, shift: float | None = None, t_min: float = 1e-3,
                     final: str = "zero", dtype: str = "float64", max_examples: int = 100,
                     seed: int | None = None) -> CheckResult:
    """Shifted flow times against :func:`refdiff.flow_times` (SD3 Eq. 23), t_max = 1.

    Parameters
    ----------
    candidate : callable
        ``candidate(n, shift) -> n + 1 floats``: shift(linspace(1, t_min, n)), then the
        final level.
    shift : float, optional
        The SD3 shift s; None draws it (1, 3, 0.5, 2, 6 favoured, any in [0.25, 10]).
    t_min : float
        The unshifted end of the linspace (1/T; diffusers' bare ``set_timesteps`` uses the
        already-shifted table end: ``t_min=refdiff.time_shift(1/T, s)`` with a fixed shift).
    final : {"zero", "sigma_min"}
        0 (exactly) or the shifted t_min.
    dtype, max_examples, seed
        As in :func:`check_karras_sigmas`.

    Returns
    -------
    CheckResult

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_flow_times
    >>> bool(check_flow_times(hand_flow_times, max_examples=20))
    True
    """
    _xp.choice("final", final, FINAL_LEVELS)
    shifts = (st.just(float(shift)) if shift is not None
              else st.one_of(st.sampled_from(SHIFTS), st.floats(0.25, 10.0)))
    strategy = st.tuples(st.one_of(st.integers(1, 12), st.integers(1, 60)), shifts)

    def trial(ex):
        n, s = ex
        expected = [float(v) for v in rd.flow_times(n, shift=s, t_min=t_min, final=final)]
        compare_levels(candidate(n, s), expected, flow_times_bound(n, s, t_min, dtype, final),
                       "flow times")

    def reproduce(d):
        return _levels_snippet(
            f"rd.flow_times(n, shift=shift, t_min={t_min!r}, final={final!r})",
            "candidate(n, shift)",
            f"LC.flow_times_bound(n, shift, {t_min!r}, {dtype!r}, {final!r})", d)

    return run(f"flow times (t_min={t_min:g}, final={final})", strategy, trial,
               describe=lambda ex: {"n": ex[0], "shift": ex[1]}, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def _levels_snippet(ref: str, call: str, bound: str, d: dict) -> str:
    text = snippet(f"[float(v) for v in {ref}]", call, d)
    text = text.replace("import numpy as np",
                        "import numpy as np\nfrom refdiff.testing import level_checks as LC", 1)
    return text.replace("assert_close(actual, expected)  # with dtype=/device= of your run",
                        f"LC.compare_levels(actual, expected, {bound}, 'levels')")
