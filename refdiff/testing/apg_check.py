"""Conformance check for adaptive projected guidance (APG) against :func:`refdiff.apg`.

Adapter signature (single step; with ``momentum=β`` the check runs one run of
:data:`APG_STEPS` steps and threads the candidate's state):

=========================  ==================================================================
check                       candidate
=========================  ==================================================================
check_apg                   ``candidate(pred_uncond, pred_cond, scale, *, eta,
                            norm_threshold) -> guided``; with ``momentum=β``:
                            ``candidate(..., momentum=β, state=state) -> (guided, state)``
=========================  ==================================================================

The check draws arrays in float64, rounds them to the target's dtype, compares with refdiff
in NumPy float64 on the rounded values, and judges with a first-order error bound in the
target's dtype derived in :func:`_apg_bound` (the machinery of :mod:`refdiff.testing.bounds`).
The guidance interval and CFG++ checks are in :mod:`refdiff.testing.guidance_checks`; the
hand-written candidates with planted slips in :mod:`refdiff.testing.guidance_mutants`.

References
----------
.. [APG] Sadat, Hilliges, Weber, arXiv:2410.02416v1, Eqs. 6–9 and Algorithm 1.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff import _xp
from refdiff.testing import bounds as B
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, run
from refdiff.testing.checks import Target, compare, snippet

FORMULATIONS = ("paper", "diffusers")
APG_STEPS = 3          # steps of a run with momentum
COND_FLOOR = 0.25      # max|D_c| per sample is at least this (module-level note in check_apg)


def _with_floor(a: np.ndarray) -> np.ndarray:
    """``a`` with max|a_b| ≥ COND_FLOOR in every sample b (the first element raised if not)."""
    a = a.copy()
    for b in range(a.shape[0]):
        if np.max(np.abs(a[b])) < COND_FLOOR:
            a[b].flat[0] = 1.0
    return a


@functools.lru_cache(maxsize=None)
def _apg_pairs(shape: tuple, k: int):
    """k pairs (D_u, D_c) of one shape, |entries| ≤ 4, D_c floored (see check_apg)."""
    pair = st.tuples(S.model_outputs(shape), S.model_outputs(shape).map(_with_floor))
    return st.tuples(*[pair] * k)


def _apg_examples(k: int, eta, norm_threshold):
    shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3)
    etas = S.etas() if eta is None else st.just(float(eta))
    # r relative to the first step's median ‖Δ‖ (0 = off, half the time), or as given
    rs = (st.one_of(st.just(0.0), st.just(0.0), st.floats(0.1, 2.0)) if norm_threshold is None
          else st.just(None))
    return st.tuples(shapes.flatmap(lambda sh: _apg_pairs(tuple(sh), k)), S.guidance_scales(),
                     etas, rs)


def _threshold_of(steps, ratio, norm_threshold) -> float:
    """r: ``norm_threshold`` when given, else ratio × the median over samples of ‖Δ‖ of the
    first step, to 3 significant digits (a ratio 0 is "off")."""
    if ratio is None:
        return float(norm_threshold)
    if ratio == 0:
        return 0.0
    du, dc = steps[0]
    d = (dc - du).reshape(dc.shape[0], -1)
    med = float(np.median(np.sqrt(np.sum(d * d, axis=1))))
    return float(f"{ratio * (med if med > 0 else 1.0):.3g}")


def _apg_update(du, dc, eta, r, beta, running):
    """refdiff's (update, running): apg at s = 2 is D_c + update."""
    g, running = rd.apg(du, dc, 2.0, eta=eta, norm_threshold=r, momentum=beta, running=running)
    return g - dc, running


def _apg_reference(du, dc, s, eta, r, beta, running, formulation):
    """refdiff.apg in NumPy float64; ``formulation="diffusers"``: D_u + s·update."""
    if formulation == "paper":
        return rd.apg(du, dc, s, eta=eta, norm_threshold=r, momentum=beta, running=running)
    update, running = _apg_update(du, dc, eta, r, beta, running)
    return du + s * update, running


def _apg_bound(du, dc, s, eta, r, beta, running, e_running, dtype, formulation):
    """(bound of the guided output, running Δ̄, its error) for one APG step in ``dtype``.

    First-order forward error analysis with unit roundoff u, γ_k = k·u/(1 − k·u); the inputs
    D_u, D_c are exact (already rounded to the dtype); N = the number of elements of a
    sample; sums, norms and inner products are per sample. Magnitudes written |·| are
    elementwise.

    1. Δ = D_c − D_u (+ β·Δ̄_prev): e_Δ = u·|D_c − D_u| (+ |β|·e_Δ̄prev + γ_2·(|D_c − D_u| +
       |β|·|Δ̄_prev|)), where e_Δ̄prev is the error of the candidate's own running value
       (carried from the previous step's e_Δ: the running value is Δ before the threshold).
    2. Threshold f = min(1, r/‖Δ‖). The computed norm has relative error
       ρ ≤ ‖e_Δ‖₂/‖Δ‖ + γ_{N+3} (the inputs: ‖·‖ is 1-Lipschitz; a sum of N squares, the
       square root, a rescaling by max|Δ| as refdiff does). f is continuous in ‖Δ‖ (the min
       has no jump at ‖Δ‖ = r), so no margin is needed there: |f̃ − f| ≤ f·(ρ + 3u)/(1 − ρ)
       (r's rounding, the quotient, the min at the kink moves f by at most the same). Then
       Δ' = f·Δ: e_Δ' = f·e_Δ + |Δ|·e_f + u·f·|Δ|.
    3. The projection coefficient c = ⟨Δ', D_c⟩/⟨D_c, D_c⟩ (or ⟨Δ', D_c/‖D_c‖⟩ with the
       unit vector formed first, as diffusers does): the inner product cancels, so its error is
       relative to Σ|Δ'_i·D_c,i|, not to |⟨Δ', D_c⟩|:
       e_c ≤ (Σ e_Δ',i·|D_c,i| + γ_{2N+8}·Σ|Δ'_i·D_c,i|)/‖D_c‖²  (both inner products, the
       normalisation, the quotient; |c| ≤ Σ|Δ'_i D_c,i|/‖D_c‖² absorbs the relative error of
       ⟨D_c, D_c⟩). Δ∥ = c·D_c: e_∥ = e_c·|D_c| + γ_2·|c|·|D_c|. Draws keep
       max|D_c| ≥ 1/4 per sample, so ‖D_c‖² ≥ 1/16 never underflows and e_c stays finite.
    4. update = (Δ' − Δ∥) + η·Δ∥ (or Δ' − (1 − η)·Δ∥): e_upd = e_Δ' + (1 + |η|)·e_∥ +
       γ_3·(|Δ'| + (1 + |η| + |1 − η|)·|Δ∥|); a float64 projection cast back to the dtype
       (diffusers) rounds Δ∥ and Δ⊥ once each, inside γ_3.
    5. paper: D_c + (s − 1)·update; diffusers: D_u + s·update: e = |s − 1|·e_upd (|s|·e_upd)
       + γ_4·(|D_c| + |D_u| + (|s| + |s − 1|)·|update|) (s − 1 rounded; CFG's form
       D_u + s·Δ, which refdiff uses at η = 1, r = 0, is inside). For "diffusers" the
       reference's update is refdiff's apg at s = 2 minus D_c: u₆₄·|s|·(|D_c| + |update|)
       more.

    The bound is (S + u₆₄/u)·e (:func:`refdiff.testing.bounds.factor`).
    """
    p = B.Precision(dtype)
    u, g = p.u, p.gamma
    axes = tuple(range(1, dc.ndim))
    n_el = int(np.prod(dc.shape[1:]))
    ssum = functools.partial(np.sum, axis=axes, keepdims=True)
    d = dc - du
    e_d = u * np.abs(d)
    if beta != 0 and running is not None:
        delta = d + beta * running
        e_delta = e_d + abs(beta) * e_running + g(2) * (np.abs(d) + abs(beta) * np.abs(running))
    else:
        delta, e_delta = d, e_d
    new_running, e_new_running = delta, e_delta
    if r > 0:
        norm = np.sqrt(ssum(delta * delta))
        safe = np.where(norm > 0, norm, 1.0)
        rho = np.where(norm > 0, np.sqrt(ssum(e_delta * e_delta)) / safe + g(n_el + 3), 0.0)
        f = np.where(norm > r, r / safe, 1.0)
        e_f = np.where(rho < 1, f * (rho + 3 * u) / np.maximum(1 - rho, 1e-300), np.inf)
        e_delta = f * e_delta + np.abs(delta) * e_f + u * f * np.abs(delta)
        delta = f * delta
    dd = ssum(dc * dc)
    c = ssum(delta * dc) / dd
    e_c = (ssum(e_delta * np.abs(dc)) + g(2 * n_el + 8) * ssum(np.abs(delta * dc))) / dd
    par = c * dc
    e_par = e_c * np.abs(dc) + g(2) * np.abs(c) * np.abs(dc)
    upd = (delta - par) + eta * par
    e_upd = (e_delta + (1 + abs(eta)) * e_par
             + g(3) * (np.abs(delta) + (1 + abs(eta) + abs(1 - eta)) * np.abs(par)))
    w = s - 1.0 if formulation == "paper" else s
    e = abs(w) * e_upd + g(4) * (np.abs(dc) + np.abs(du) + (abs(s) + abs(s - 1)) * np.abs(upd))
    if formulation == "diffusers":
        e = e + B.UNIT_ROUNDOFF["float64"] * abs(s) * (np.abs(dc) + np.abs(upd))
    return B.factor(p) * e, new_running, e_new_running


def check_apg(candidate: Callable, *, formulation: str = "paper", eta: float | None = None,
              norm_threshold: float | None = None, momentum: float = 0.0,
              target: Target = Target(), max_examples: int = 100,
              seed: int | None = None) -> CheckResult:
    """Adaptive projected guidance against :func:`refdiff.apg` (APG Algorithm 1).

    .. math::
        Δ = D_c − D_u\\ (+\\,β\\,\\bar Δ_{prev}),\\quad Δ ← Δ·\\min(1, r/‖Δ‖),\\quad
        Δ_∥ = \\frac{⟨Δ, D_c⟩}{⟨D_c, D_c⟩}D_c,\\quad
        \\mathrm{update} = (Δ − Δ_∥) + η\\,Δ_∥

    paper: D̃ = D_c + (s − 1)·update; diffusers: D̃ = D_u + s·update.

    Parameters
    ----------
    candidate : callable
        ``candidate(pred_uncond, pred_cond, scale, *, eta, norm_threshold) -> guided``:
        arrays of ``target``, shape (B, C, ...) (at least two axes; norms and inner products
        per sample over all non-batch axes), ``scale`` s a Python float (refdiff's CFG scale,
        the paper's w), ``eta`` η and ``norm_threshold`` r ≥ 0 (0 = off) Python floats.
        With ``momentum=β`` ≠ 0 the check runs 3 steps of one run and calls
        ``candidate(pred_uncond, pred_cond, scale, eta=..., norm_threshold=..., momentum=β,
        state=state) -> (guided, state)``, ``state`` None at the first step and then what
        the candidate returned (its running average Δ̄; the check does not look inside).
    formulation : {"paper", "diffusers"}
        "paper": D_c + (s − 1)·update (APG Eq. 9 with w = s; refdiff). "diffusers":
        D_u + s·update, what diffusers' ``normalized_guidance`` returns by default
        (``use_original_formulation=False``); the two agree only where update = Δ (η = 1,
        no threshold, no momentum).
    eta : float, optional
        Fixed η; default: drawn in [0, 1] (0, 1 and 0.5 favoured).
    norm_threshold : float, optional
        Fixed r; default: 0 (off) in half of the examples, else a ratio in [0.1, 2] of the
        median per-sample ‖Δ‖ of the first step (some samples rescaled, some not).
    momentum : float
        β in [−1, 1]; 0: single steps.
    target : Target
        Backend, dtype and device of the candidate's arrays.
    max_examples, seed
        The search.

    Returns
    -------
    CheckResult

    Notes
    -----
    D_u, D_c have entries in [−4, 4]; max|D_c| ≥ 1/4 in every sample (by construction: the
    first element is set to 1 otherwise). An all-zero D_c, where refdiff takes Δ∥ = 0, is
    not drawn: the paper leaves it undefined and implementations differ there. s is drawn
    in [−10, 10] with 0, 1, 0.5, −1, 7.5 favoured. The tolerance is the first-order bound
    of :func:`_apg_bound` (it follows the cancellation in ⟨Δ, D_c⟩).

    References
    ----------
    APG, arXiv:2410.02416v1, Eqs. 6–9 and Algorithm 1.

    Examples
    --------
    >>> import refdiff as rd
    >>> def mine(pred_uncond, pred_cond, scale, *, eta, norm_threshold):
    ...     return rd.apg(pred_uncond, pred_cond, scale, eta=eta,
    ...                   norm_threshold=norm_threshold)[0]
    >>> bool(check_apg(mine, max_examples=20))
    True
    """
    _xp.choice("formulation", formulation, FORMULATIONS)
    beta = float(rd.APG(momentum=momentum).momentum)
    k = APG_STEPS if beta != 0 else 1

    def trial(ex):
        _apg_trial(candidate, ex, beta, k, norm_threshold, formulation, target)

    def describe(ex):
        return _apg_describe(ex, beta, k, norm_threshold)

    def reproduce(d):
        return _apg_reproduction(d, k, formulation, target.dtype)

    name = "APG" + (f" ({formulation} formulation)" if formulation != "paper" else "")
    return run(name + (f", momentum {beta:g}" if k > 1 else ""),
               _apg_examples(k, eta, norm_threshold), trial,
               describe=describe, reproduce=reproduce, max_examples=max_examples, seed=seed)


def _apg_trial(candidate, ex, beta, k, norm_threshold, formulation, target) -> None:
    """One example of :func:`check_apg`: k steps of one run, each compared within its bound."""
    steps, s, eta_, ratio = ex
    r = _threshold_of(steps, ratio, norm_threshold)
    state = running = e_running = None
    for i, (du, dc) in enumerate(steps):
        du, dc = target.rounded(du), target.rounded(dc)
        args = (target.put(du), target.put(dc), s)
        if beta != 0:
            actual, state = candidate(*args, eta=eta_, norm_threshold=r, momentum=beta,
                                      state=state)
        else:
            actual = candidate(*args, eta=eta_, norm_threshold=r)
        bound, _, e_next = _apg_bound(du, dc, s, eta_, r, beta, running, e_running,
                                      target.dtype, formulation)
        expected, running = _apg_reference(du, dc, s, eta_, r, beta, running, formulation)
        e_running = e_next
        compare(actual, expected, dtype=target.dtype, device=target.device, bound=bound,
                what="guided" if k == 1 else f"guided at step {i} of {k}")


def _apg_describe(ex, beta, k, norm_threshold) -> dict:
    """The counterexample of :func:`check_apg` by the adapter's argument names."""
    steps, s, eta_, ratio = ex
    named = ({"pred_uncond": steps[0][0], "pred_cond": steps[0][1]} if k == 1 else
             {"pred_uncond": [a for a, _ in steps], "pred_cond": [b for _, b in steps]})
    return {**named, "scale": s, "eta": eta_,
            "norm_threshold": _threshold_of(steps, ratio, norm_threshold),
            **({"momentum": beta} if k > 1 else {})}


def _apg_reproduction(d: dict, k: int, formulation: str, dtype: str) -> str:
    """A runnable reproduction of a :func:`check_apg` counterexample (a loop over the run's
    steps with momentum)."""
    ac = "import numpy as np\nfrom refdiff.testing import apg_check as AC"
    if k == 1:
        ref = ("rd.apg(pred_uncond, pred_cond, scale, eta=eta, "
               "norm_threshold=norm_threshold)[0]")
        if formulation == "diffusers":
            ref = ("pred_uncond + scale * (rd.apg(pred_uncond, pred_cond, 2.0, eta=eta, "
                   "norm_threshold=norm_threshold)[0] - pred_cond)")
        call = "candidate(pred_uncond, pred_cond, scale, eta=eta, norm_threshold=norm_threshold)"
        bnd = ("AC._apg_bound(pred_uncond, pred_cond, scale, eta, norm_threshold, 0.0, None, "
               f"None, DTYPE, {formulation!r})[0]")
        return snippet(ref, call, d, None, bnd, dtype).replace("import numpy as np", ac, 1)
    lines = snippet("None", "None", d).replace("import numpy as np", ac, 1).splitlines()[:-3]
    lines += ["expected = None  # per step, below",
              "state = running = None",
              "for i, (du, dc) in enumerate(zip(pred_uncond, pred_cond)):",
              "    actual, state = candidate(du, dc, scale, eta=eta, "
              "norm_threshold=norm_threshold, momentum=momentum, state=state)  # your adapter",
              "    expected, running = AC._apg_reference(du, dc, scale, eta, norm_threshold, "
              f"momentum, running, {formulation!r})",
              "    print(i, np.abs(np.asarray(actual, dtype=float) - expected).max())"]
    return "\n".join(lines)
