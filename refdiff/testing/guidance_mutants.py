"""Hand-written guidance candidates with planted slips (``bug=``) and correct controls.

In the manner of :mod:`refdiff.testing.mutants`: each of :data:`GUIDANCE_MUTANTS` must be
caught by the public check named with it (:func:`~refdiff.testing.check_guidance_interval`,
:func:`~refdiff.testing.check_apg`, :func:`~refdiff.testing.check_cfgpp`), and each of
:data:`GUIDANCE_CONTROLS` (correct, written differently from refdiff) must pass.
:func:`run_guidance_case` runs one case.

References
----------
.. [GI] Kynkäänniemi et al., arXiv:2404.07724v2, §3.1 and Eq. 6 (guidance in (σ_lo, σ_hi]).
.. [APG] Sadat, Hilliges, Weber, arXiv:2410.02416v1, Eqs. 6–9 and Algorithm 1.
.. [CFGPP] Chung et al., arXiv:2406.08070v1, Algorithm 1 (CFG++ with DDIM).
"""

from __future__ import annotations

import math
from typing import Callable

import array_api_compat
import numpy as np

import refdiff as rd
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult
from refdiff.testing.apg_check import check_apg
from refdiff.testing.checks import Target
from refdiff.testing.guidance_checks import check_cfgpp, check_guidance_interval
from refdiff.testing.mutants import Case  # a candidate, the check that judges it, its options


def hand_interval(bug: str | None = None, *, form: str = "compare") -> Callable:
    """The guidance interval in the σ convention, tutorial style.

    ``form="compare"``: s where σ_lo < σ ≤ σ_hi; ``form="indices"`` (a control written
    differently): the first and last guided steps counted from the list, then
    ``first <= i <= last``. Bugs: ``"closed_below"`` (σ_lo ≤ σ < σ_hi: the wrong end open),
    ``"closed_both"`` (σ_lo ≤ σ ≤ σ_hi), ``"fractions"`` (the σ bounds turned into
    diffusers-style start/stop fractions of the run as if σ fell linearly from σ_0 to
    σ_{n−1}, then int(start·n) ≤ i < int(stop·n))."""
    def scales(sigmas, scale, sigma_lo, sigma_hi):
        n = len(sigmas)
        if bug == "fractions":
            span = sigmas[0] - sigmas[-1] or 1.0
            frac = lambda v: min(max((sigmas[0] - v) / span, 0.0), 1.0)  # noqa: E731
            start, stop = (0.0 if sigma_hi == math.inf else frac(sigma_hi)), frac(sigma_lo)
            if sigma_lo < sigmas[-1]:
                stop = 1.0
            return [scale if int(start * n) <= i < int(stop * n) else 1.0 for i in range(n)]
        if form == "indices":
            first = sum(v > sigma_hi for v in sigmas)
            last = sum(v > sigma_lo for v in sigmas) - 1
            return [scale if first <= i <= last else 1.0 for i in range(n)]
        if bug == "closed_below":
            inside = lambda v: sigma_lo <= v < sigma_hi  # noqa: E731
        elif bug == "closed_both":
            inside = lambda v: sigma_lo <= v <= sigma_hi  # noqa: E731
        else:
            inside = lambda v: sigma_lo < v <= sigma_hi  # noqa: E731
        return [scale if inside(v) else 1.0 for v in sigmas]
    return scales


def hand_interval_steps() -> Callable:
    """The official guidance-interval code's test, ``i >= first and i <= last`` (for
    ``convention="steps"``)."""
    def scales(sigmas, scale, first, last):
        return [scale if first <= i <= last else 1.0 for i in range(len(sigmas))]
    return scales


def _unit(xp, v, axes):
    """v/‖v‖ per sample (0 where v = 0)."""
    norm = xp.sqrt(xp.sum(v * v, axis=axes, keepdims=True))
    return v / xp.where(norm > 0, norm, xp.ones_like(norm))


def hand_apg(bug: str | None = None, *, projection: str = "dtype",
             formulation: str = "paper") -> Callable:
    """APG, tutorial style (unit vector of D_c first, as diffusers writes it), for
    :func:`check_apg`'s adapter (single step, or with ``momentum=``/``state=``).

    ``projection="float64"``: the projection in float64 and cast back (diffusers' choice).
    ``formulation="diffusers"``: D_u + s·update. Bugs: ``"onto_delta"`` (Δ projected onto
    Δ itself instead of D_c), ``"threshold_after"`` (the norm threshold applied to the
    update after the projection), ``"threshold_inverted"`` (min(1, ‖Δ‖/r) for
    min(1, r/‖Δ‖)), ``"uncond_form"`` (D_u + s·update where D_c + (s − 1)·update is meant)."""
    def guide(pred_uncond, pred_cond, scale, *, eta, norm_threshold, **run):
        xp = array_api_compat.array_namespace(pred_cond)
        axes = tuple(range(1, pred_cond.ndim))
        diff = pred_cond - pred_uncond
        if run and run.get("momentum") and run.get("state") is not None:
            diff = diff + run["momentum"] * run["state"]
        state = diff

        def clip(v):
            norm = xp.sqrt(xp.sum(v * v, axis=axes, keepdims=True))
            safe = xp.where(norm > 0, norm, xp.ones_like(norm))
            f = safe / norm_threshold if bug == "threshold_inverted" else norm_threshold / safe
            return v * xp.where(f < 1, f, xp.ones_like(f))

        if norm_threshold > 0 and bug != "threshold_after":
            diff = clip(diff)
        onto = diff if bug == "onto_delta" else pred_cond
        v0, v1 = diff, onto
        if projection == "float64":
            v0, v1 = xp.astype(v0, xp.float64), xp.astype(v1, xp.float64)
        unit = _unit(xp, v1, axes)
        par = xp.sum(v0 * unit, axis=axes, keepdims=True) * unit
        orth = v0 - par
        par, orth = xp.astype(par, diff.dtype), xp.astype(orth, diff.dtype)
        update = orth + eta * par
        if norm_threshold > 0 and bug == "threshold_after":
            update = clip(update)
        if formulation == "diffusers" or bug == "uncond_form":
            out = pred_uncond + scale * update
        else:
            out = pred_cond + (scale - 1) * update
        return (out, state) if run else out
    return guide


def hand_apg_ratio() -> Callable:
    """A control written another way: c = ⟨Δ, D_c⟩/⟨D_c, D_c⟩, then D_c + (s − 1)·(Δ − (1 −
    η)·c·D_c), the threshold as a where on the norm."""
    def guide(pred_uncond, pred_cond, scale, *, eta, norm_threshold, **run):
        xp = array_api_compat.array_namespace(pred_cond)
        axes = tuple(range(1, pred_cond.ndim))
        d = pred_cond - pred_uncond
        if run and run.get("momentum") and run.get("state") is not None:
            d = d + run["momentum"] * run["state"]
        state = d
        if norm_threshold > 0:
            norm = xp.sqrt(xp.sum(d * d, axis=axes, keepdims=True))
            d = xp.where(norm > norm_threshold,
                         d * (norm_threshold / xp.where(norm > 0, norm, xp.ones_like(norm))), d)
        c = (xp.sum(d * pred_cond, axis=axes, keepdims=True)
             / xp.sum(pred_cond * pred_cond, axis=axes, keepdims=True))
        out = pred_cond + (scale - 1) * (d - (1 - eta) * c * pred_cond)
        return (out, state) if run else out
    return guide


def hand_cfgpp(schedule: rd.Schedule, bug: str | None = None, *, table: str = "refdiff",
               form: str = "renoise") -> Callable:
    """CFG++ with DDIM, tutorial style: x̂_0 from ε_λ, then renoise with ε_u.

    ``table="official"``: the official code's table with 1.0 prepended (the level of
    timestep t is ᾱ_{t−1}); correct under ``check_cfgpp(alpha_bar_index="t_minus_1")``.
    ``form="correction"`` (a control): the unconditional DDIM step minus
    √ᾱ_prev·σ_t·λ·(ε_c − ε_u). Bugs: ``"renoise_guided"`` (renoised with ε_λ: plain
    CFG-DDIM at scale λ), ``"swapped"`` (x̂_0 from ε_u, renoised with ε_λ), ``"index_shift"``
    (the official table under refdiff's index convention: the same as ``table="official"``)."""
    ab = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    if table == "official" or bug == "index_shift":
        ab = np.concatenate([[1.0], ab])          # ab[t] is the original ᾱ_{t−1}

    def step(x_t, eps_uncond, eps_cond, lam, t, t_prev):
        a_t, a_p = float(ab[t]), (float(ab[t_prev]) if t_prev >= 0 else 1.0)
        eps_l = eps_uncond + lam * (eps_cond - eps_uncond)
        if form == "correction":
            x0_u = (x_t - math.sqrt(1 - a_t) * eps_uncond) / math.sqrt(a_t)
            ddim = math.sqrt(a_p) * x0_u + math.sqrt(1 - a_p) * eps_uncond
            return ddim - (math.sqrt(a_p) * math.sqrt((1 - a_t) / a_t) * lam) * (
                eps_cond - eps_uncond)
        x0 = (x_t - math.sqrt(1 - a_t) * (eps_uncond if bug == "swapped" else eps_l)) / math.sqrt(a_t)
        renoise = eps_l if bug in ("renoise_guided", "swapped") else eps_uncond
        return math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * renoise
    return step


GUIDANCE_MUTANTS = [
    Case("interval: [lo, hi) (wrong end open)", check_guidance_interval,
                 lambda s: hand_interval("closed_below")),
    Case("interval: [lo, hi] (closed at both ends)", check_guidance_interval,
                 lambda s: hand_interval("closed_both")),
    Case("interval: step fractions taken for sigma", check_guidance_interval,
                 lambda s: hand_interval("fractions")),
    Case("APG: projected onto delta, not D_c", check_apg,
                 lambda s: hand_apg("onto_delta")),
    Case("APG: threshold after the projection", check_apg,
                 lambda s: hand_apg("threshold_after")),
    Case("APG: threshold min(1, |delta|/r) inverted", check_apg,
                 lambda s: hand_apg("threshold_inverted")),
    Case("APG: D_u + s*update under the paper's form", check_apg,
                 lambda s: hand_apg("uncond_form")),
    Case("CFG++: renoised with eps_lambda (CFG-DDIM)", check_cfgpp,
                 lambda s: hand_cfgpp(s, "renoise_guided")),
    Case("CFG++: x0 from eps_u, renoised with eps_lambda", check_cfgpp,
                 lambda s: hand_cfgpp(s, "swapped")),
    Case("CFG++: alpha_bar index shifted by one", check_cfgpp,
                 lambda s: hand_cfgpp(s, "index_shift")),
]

GUIDANCE_CONTROLS = [
    Case("interval: compare", check_guidance_interval, lambda s: hand_interval()),
    Case("interval: via step indices", check_guidance_interval,
                 lambda s: hand_interval(form="indices")),
    Case("interval: official inclusive steps", check_guidance_interval,
                 lambda s: hand_interval_steps(), {"convention": "steps"}),
    Case("APG: unit vector in the dtype", check_apg, lambda s: hand_apg()),
    Case("APG: projection in float64", check_apg,
                 lambda s: hand_apg(projection="float64")),
    Case("APG: coefficient form, momentum -0.5", check_apg, lambda s: hand_apg_ratio(),
                 {"momentum": -0.5}),
    Case("APG: diffusers formulation", check_apg,
                 lambda s: hand_apg(formulation="diffusers"), {"formulation": "diffusers"}),
    Case("CFG++: x0 then renoise", check_cfgpp, lambda s: hand_cfgpp(s)),
    Case("CFG++: DDIM plus correction", check_cfgpp,
                 lambda s: hand_cfgpp(s, form="correction")),
    Case("CFG++: official table, t-1 convention", check_cfgpp,
                 lambda s: hand_cfgpp(s, table="official"), {"alpha_bar_index": "t_minus_1"}),
]


def run_guidance_case(case: Case, *, seed: int | None = None,
                      max_examples: int | None = None, target: Target | None = None,
                      schedule=None) -> CheckResult:
    """Run ``case.check`` on the case's candidate (linear T = 1000 schedule by default)."""
    spec = S.ScheduleSpec("linear", 1000) if schedule is None else schedule
    sched = spec.build() if isinstance(spec, S.ScheduleSpec) else spec
    kwargs = dict(case.options, seed=seed)
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    if case.check is check_cfgpp:
        kwargs["schedule"] = spec
    if target is not None and case.check is not check_guidance_interval:
        kwargs["target"] = target
    return case.check(case.make(sched), **kwargs)
