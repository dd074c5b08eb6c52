"""Conformance checks for the σ-space samplers (Euler, Heun, Euler-ancestral, DPM-Solver++(2M))
and the flow-matching Euler step.

==========================  ============================================================
check                        candidate
==========================  ============================================================
check_euler_step             ``candidate(x, denoised, sigma, sigma_next) -> x_next``
check_heun_step              ``candidate(denoiser, x, sigma, sigma_next) -> x_next``
check_euler_ancestral_step   ``candidate(x, denoised, sigma, sigma_next, *, eta, noise)``
check_flow_euler_step        ``candidate(x, velocity, t, t_next) -> x_next``
check_dpmpp_2m               ``candidate(denoiser, x, sigmas) -> x at sigmas[-1]``
==========================  ============================================================

σ, σ', t, t' are Python floats (σ' = 0 and t' = 0 allowed and favoured); arrays are of the
Target. ``denoiser(x, sigma) -> D`` is supplied by the check: the exact denoiser of a
diagonal Gaussian N(μ, diag λ), D(x; σ) = μ + (x − μ)·λ/(λ + σ²) (:class:`GaussianDenoiser`),
evaluated in the target's backend and dtype. References are refdiff's steps in NumPy float64
on the inputs rounded to the target's dtype; x ∈ [−3, 3]·(1 + σ), D, μ, noise ∈ [−3, 3],
λ ∈ [0.01, 4].

Tolerance: a first-order bound in the target's dtype (:mod:`refdiff.testing.solver_bounds`,
with the Level/Array algebra of :mod:`refdiff.testing.bounds`), the widest over the algebraic
forms in use:

- inputs (x, D, noise, μ, λ) are the rounded values the reference sees: not counted;
- σ and σ' (t, t') as the candidate holds them, rounded to the dtype (diffusers keeps σ in
  float32): u·σ each, carried through every coefficient;
- every coefficient computed from them rounds once per operation (u·|result|);
- the array arithmetic: γ_k·Σ|terms| (k roundings on the longest path);
- Euler: r·x + (1 − r)·D, x + (σ' − σ)·((x − D)/σ), x + ((σ' − σ)/σ)·(x − D), and DDIM on
  the VP path (x_VP = x/√(1 + σ²), ε = (x_VP − √ᾱ·D)/√(1 − ᾱ), x'_VP = √ᾱ'·D + √(1 − ᾱ')·ε,
  x' = x'_VP/√ᾱ'); Euler-ancestral: the same with σ_down and + σ_up·z, and DDIM with η;
  Heun: refdiff's ½(x + x_e) + ½(1 − σ/σ')·(x_e − D') and EDM's x + (σ' − σ)·(d + d')/2,
  with the denoiser's own evaluation at x_e (:func:`denoised`); flow Euler: x + (t' − t)·u
  and (1 − t')·x̂_0 + t'·ε̂ with x̂_0 = x − t·u, ε̂ = x + (1 − t)·u;
- DPM-Solver++(2M), a loop: each step's state error (x and the previous D) is carried
  through the step, which for the Gaussian denoiser is affine elementwise, and the step adds
  its own bound, the widest of refdiff's convex form, k-diffusion's (σ'/σ from e^{−t},
  −expm1(−h), 1/(2r) with r = h_prev/h) and diffusers' VP form (x'_VP = (σ'_VP/σ_VP)·x_VP −
  α'(e^{−h} − 1)·(D + ½·(D − D_prev)/r), λ = log(α/σ_VP)); the step to σ' = 0 is the Euler
  step in any of its forms;
- the result is (S + u₆₄/u) times that (:func:`refdiff.testing.bounds.factor`).

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Algorithm 1, Eq. 4.
.. [DPMPP] C. Lu et al., arXiv:2211.01095v2, Algorithm 2.
.. [DDIM] Song, Meng, Ermon, arXiv:2010.02502v4, Eqs. 12, 16.
.. [FM] Y. Lipman et al., arXiv:2210.02747v2, Eq. 23.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, run
from refdiff.testing.checks import Target, compare, snippet
from refdiff.testing.level_checks import sigma_lists, sigma_pairs, time_pairs
from refdiff.testing.solver_bounds import (GaussianDenoiser, ancestral_bound, dpmpp_bound,
                                           dpmpp_reference, euler_bound, flow_euler_bound,
                                           heun_bound, heun_reference)



# ----- strategies and the checks --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _gauss_arrays(shape: tuple):
    """(x, μ, λ) of one shape: x, μ in [−3, 3], λ in [0.01, 4]."""
    lam = hnp.arrays(np.float64, shape, elements=st.floats(0.01, 4.0))
    return st.tuples(S.arrays(shape), S.arrays(shape), lam)


def _arrays(k: int):
    return S.shapes().flatmap(lambda sh: st.tuples(*[S.arrays(tuple(sh))] * k))


def _gauss():
    return S.shapes().flatmap(lambda sh: _gauss_arrays(tuple(sh)))


def _check(name, strategy, trial, describe, ref, call, bound, dtype, max_examples, seed):
    """:func:`refdiff.testing._engine.run` with a reproduction that imports this module."""
    def reproduce(d):
        text = snippet(ref, call, d, None, bound, dtype)
        return text.replace("import numpy as np",
                            "import numpy as np\nfrom refdiff.testing import solver_checks as SC", 1)
    return run(name, strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_euler_step(candidate: Callable, *, target: Target = Target(), max_examples: int = 100,
                     seed: int | None = None) -> CheckResult:
    """One Euler step x' = x + (σ' − σ)·(x − D)/σ against :func:`refdiff.euler_step`.

    Parameters
    ----------
    candidate : callable
        ``candidate(x, denoised, sigma, sigma_next) -> x_next``: arrays of ``target`` of one
        shape (B, ...), σ > 0 and 0 ≤ σ' < σ Python floats (σ' = 0, the last step, favoured).
    target, max_examples, seed
        As in :func:`refdiff.testing.check_ddim_step`.

    Returns
    -------
    CheckResult

    Notes
    -----
    σ pairs from Karras lists (EDM's 0.002–80, the VP tables' 0.0292–14.61 and 0.01–157.4),
    a VP table's σ at listed timesteps, or random. Bound: :func:`euler_bound`.

    References
    ----------
    EDM, arXiv:2206.00364v2, Algorithm 1, lines 4–5.

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_euler
    >>> bool(check_euler_step(hand_euler, max_examples=20))
    True
    """
    def trial(ex):
        x, d, s, sn = _described(ex)
        x, d = target.rounded(x), target.rounded(d)
        compare(candidate(target.put(x), target.put(d), s, sn), rd.euler_step(x, d, s, sn),
                dtype=target.dtype, device=target.device, bound=euler_bound(x, d, s, sn, target.dtype),
                what="x_next")

    def describe(ex):
        return dict(zip(("x", "denoised", "sigma", "sigma_next"), _described(ex)))

    return _check("Euler step", st.tuples(_arrays(2), sigma_pairs()), trial, describe,
                  "rd.euler_step(x, denoised, sigma, sigma_next)",
                  "candidate(x, denoised, sigma, sigma_next)",
                  "SC.euler_bound(x, denoised, sigma, sigma_next, DTYPE)", target.dtype,
                  max_examples, seed)


def _described(ex):
    """(x·(1 + σ), the other arrays..., σ, σ') of an example ((arrays), (σ, σ'))."""
    arrays, (s, sn) = ex
    return (arrays[0] * (1.0 + s), *arrays[1:], s, sn)


def check_heun_step(candidate: Callable, *, target: Target = Target(), max_examples: int = 100,
                    seed: int | None = None) -> CheckResult:
    """One Heun step (EDM Algorithm 1) with an exact Gaussian denoiser.

    Parameters
    ----------
    candidate : callable
        ``candidate(denoiser, x, sigma, sigma_next) -> x_next``; ``denoiser(x, sigma) -> D``
        is a :class:`GaussianDenoiser` on the target (σ a float, or an array of shape () or
        (B,)). σ' may be 0: the step is then Euler (no correction, EDM Alg. 1, line 8).
    target, max_examples, seed
        As in :func:`check_euler_step`.

    Returns
    -------
    CheckResult

    Notes
    -----
    Reference: :func:`heun_reference`; bound: :func:`heun_bound` (the denoiser's own
    rounding included, at x and at the candidate's Euler point x_e).

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_heun
    >>> bool(check_heun_step(hand_heun, max_examples=20))
    True
    """
    def trial(ex):
        x, mu, lam, s, sn = (target.rounded(v) if isinstance(v, np.ndarray) else v
                             for v in _described(ex))
        den = GaussianDenoiser(target.put(mu), target.put(lam))
        compare(candidate(den, target.put(x), s, sn), heun_reference(mu, lam, x, s, sn),
                dtype=target.dtype, device=target.device, what="x_next",
                bound=heun_bound(mu, lam, x, s, sn, target.dtype))

    def describe(ex):
        return dict(zip(("x", "mean", "variance", "sigma", "sigma_next"), _described(ex)))

    return _check("Heun step", st.tuples(_gauss(), sigma_pairs()), trial, describe,
                  "SC.heun_reference(mean, variance, x, sigma, sigma_next)",
                  "candidate(SC.GaussianDenoiser(mean, variance), x, sigma, sigma_next)",
                  "SC.heun_bound(mean, variance, x, sigma, sigma_next, DTYPE)", target.dtype,
                  max_examples, seed)


def check_euler_ancestral_step(candidate: Callable, *, eta: float = 1.0,
                               target: Target = Target(), max_examples: int = 100,
                               seed: int | None = None) -> CheckResult:
    """One Euler-ancestral step against :func:`refdiff.euler_ancestral_step`.

    Parameters
    ----------
    candidate : callable
        ``candidate(x, denoised, sigma, sigma_next, *, eta, noise) -> x_next``: Euler to
        σ_down, then + σ_up·noise, with k-diffusion's σ_up = min(σ', η·√(σ'²(σ² − σ'²)/σ²)),
        σ_down = √(σ'² − σ_up²) (:func:`refdiff.ancestral_sigmas`).
    eta : float
        η ≥ 0 passed to the candidate (1: DDPM's ancestral step).
    target, max_examples, seed
        As in :func:`check_euler_step`.

    Returns
    -------
    CheckResult

    Notes
    -----
    Bound: :func:`ancestral_bound`. An η² slip shows only at η ∉ {0, 1}.

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_euler_ancestral
    >>> bool(check_euler_ancestral_step(hand_euler_ancestral, max_examples=20))
    True
    """
    eta = float(eta)

    def trial(ex):
        x, d, z, s, sn = _described(ex)
        x, d, z = target.rounded(x), target.rounded(d), target.rounded(z)
        actual = candidate(target.put(x), target.put(d), s, sn, eta=eta, noise=target.put(z))
        compare(actual, rd.euler_ancestral_step(x, d, s, sn, z, eta=eta), dtype=target.dtype,
                device=target.device, what="x_next",
                bound=ancestral_bound(x, d, z, s, sn, eta, target.dtype))

    def describe(ex):
        return dict(zip(("x", "denoised", "noise", "sigma", "sigma_next"), _described(ex)))

    return _check(f"Euler-ancestral step (eta={eta:g})", st.tuples(_arrays(3), sigma_pairs()),
                  trial, describe,
                  f"rd.euler_ancestral_step(x, denoised, sigma, sigma_next, noise, eta={eta!r})",
                  f"candidate(x, denoised, sigma, sigma_next, eta={eta!r}, noise=noise)",
                  f"SC.ancestral_bound(x, denoised, noise, sigma, sigma_next, {eta!r}, DTYPE)",
                  target.dtype, max_examples, seed)


def check_flow_euler_step(candidate: Callable, *, target: Target = Target(),
                          max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """One flow-matching Euler step x' = x + (t' − t)·u against
    :func:`refdiff.flow_euler_step` (FM Eq. 23).

    Parameters
    ----------
    candidate : callable
        ``candidate(x, velocity, t, t_next) -> x_next``: x on the flow path, u = ε − x_0,
        1 ≥ t > t' ≥ 0 Python floats (SD3-shifted lists or random; t' = 0 favoured).
    target, max_examples, seed
        As in :func:`check_euler_step`.

    Returns
    -------
    CheckResult

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_flow_euler
    >>> bool(check_flow_euler_step(hand_flow_euler, max_examples=20))
    True
    """
    def trial(ex):
        (x, u), (t, tn) = ex
        x, u = target.rounded(x), target.rounded(u)
        compare(candidate(target.put(x), target.put(u), t, tn), rd.flow_euler_step(x, u, t, tn),
                dtype=target.dtype, device=target.device, what="x_next",
                bound=flow_euler_bound(x, u, t, tn, target.dtype))

    def describe(ex):
        (x, u), (t, tn) = ex
        return {"x": x, "velocity": u, "t": t, "t_next": tn}

    return _check("flow Euler step", st.tuples(_arrays(2), time_pairs()), trial, describe,
                  "rd.flow_euler_step(x, velocity, t, t_next)", "candidate(x, velocity, t, t_next)",
                  "SC.flow_euler_bound(x, velocity, t, t_next, DTYPE)", target.dtype,
                  max_examples, seed)


def check_dpmpp_2m(candidate: Callable, *, lower_order_final: bool = False,
                   target: Target = Target(), max_examples: int = 50,
                   seed: int | None = None) -> CheckResult:
    """A whole DPM-Solver++(2M) run (DPMPP Algorithm 2) with an exact Gaussian denoiser.

    Parameters
    ----------
    candidate : callable
        ``candidate(denoiser, x, sigmas) -> x at sigmas[-1]``: ``sigmas`` a list of Python
        floats, strictly descending, the last possibly 0; ``denoiser`` as in
        :func:`check_heun_step`; the first step and a step to σ' = 0 are first order.
    lower_order_final : bool
        The last step first order as well (diffusers' ``lower_order_final``).
    target, max_examples, seed
        As in :func:`check_euler_step`.

    Returns
    -------
    CheckResult

    Notes
    -----
    Reference: :func:`dpmpp_reference` (refdiff's :func:`refdiff.dpmpp_2m_step` in a loop);
    bound: :func:`dpmpp_bound`. 1 to 10 steps of :func:`refdiff.testing.level_checks.sigma_lists`.

    Examples
    --------
    >>> from refdiff.testing.solver_mutants import hand_dpmpp_2m
    >>> bool(check_dpmpp_2m(hand_dpmpp_2m, max_examples=20))
    True
    """
    low = bool(lower_order_final)

    def parts(ex):
        (x, mu, lam), sig = ex
        return x * (1.0 + sig[0]), mu, lam, list(sig)

    def trial(ex):
        x, mu, lam, sig = parts(ex)
        x, mu, lam = target.rounded(x), target.rounded(mu), target.rounded(lam)
        den = GaussianDenoiser(target.put(mu), target.put(lam))
        compare(candidate(den, target.put(x), list(sig)),
                dpmpp_reference(mu, lam, x, sig, low), dtype=target.dtype, device=target.device,
                what="x at sigmas[-1]", bound=dpmpp_bound(mu, lam, x, sig, target.dtype, low))

    return _check(f"DPM-Solver++(2M) run (lower_order_final={low})",
                  st.tuples(_gauss(), sigma_lists()), trial,
                  lambda ex: dict(zip(("x", "mean", "variance", "sigmas"), parts(ex))),
                  f"SC.dpmpp_reference(mean, variance, x, sigmas, {low})",
                  "candidate(SC.GaussianDenoiser(mean, variance), x, sigmas)",
                  f"SC.dpmpp_bound(mean, variance, x, sigmas, DTYPE, {low})", target.dtype,
                  max_examples, seed)
