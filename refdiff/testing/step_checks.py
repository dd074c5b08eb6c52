"""Conformance checks for the DDPM step (fixed or learned variance), the DDIM step (with η)
and a whole sampling loop.

Adapter signatures (t, t_prev are training timesteps of one list of ``num_inference_steps``;
t_prev is the next listed timestep, or −1 after the last one):

============================  =============================================================
check                          candidate
============================  =============================================================
check_ddpm_step                ``candidate(x_t, eps, t, t_prev, *, noise, num_inference_steps)``
check_ddpm_learned_variance    ``candidate(x_t, eps, t, t_prev, *, var_values, noise,
                               num_inference_steps)``; ``var_values`` is the model's variance
                               channel v (shape of x_t): IDDPM Eq. 15's interpolation
                               coefficient ("learned_range") or log σ² ("learned")
check_ddim_step                ``candidate(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps)``
check_sampling_loop            ``candidate(model, x_T, timesteps, noises) -> x_0``,
                               ``model(x_t, t) -> eps``; step i uses ``noises[i]``
============================  =============================================================

Each returns x_prev (x_0 for the loop). The candidate receives nonzero ``noise`` on every
step, the last one included: refdiff's convention is that the last step adds none, so an
implementation that decides by ``t > 0`` instead of by position fails whenever its last-step
variance is not zero. ``num_inference_steps`` is there for implementations that need it (a
stride ``T // n``); refdiff's own steps ignore it. The conventions the candidate claims
(``final_alpha_bar``, ``variance_type``, ``clip_x0``, ``rederive_eps``, ``eta``) are options of the
check; the timestep lists are refdiff's (:func:`refdiff.inference_timesteps`) for every
spacing in ``spacings``. ``clip_x0`` is a bound b (clip x̂_0 to [−b, b]) or a
:class:`refdiff.thresholding.DynamicThreshold` (Imagen's dynamic thresholding: diffusers'
``thresholding=True`` with ``dynamic_thresholding_ratio`` and ``sample_max_value``).

Tolerance: the per-example error bound of :mod:`refdiff.testing.bounds` for the step in the
target's dtype (it follows the cancellation and the division by √ᾱ_t in x̂_0, and the rounding
of the candidate's ᾱ table; a learned variance through the exponent of σ, a threshold through
the quantile and the division by s); for a loop, each step's error is carried into the next
through the Jacobian of the whole step x ↦ step(x, model(x, t)), and each step adds its own
(docs/testing.md "Tolerance policy").

References
----------
DDPM arXiv:2006.11239v2 Algorithm 2, Eqs. 6–7; DDIM arXiv:2010.02502v4 Eq. 12, Eq. 16;
IDDPM arXiv:2102.09672v1 §3.1 (fixed_large) and Eq. 15 (learned_range); Imagen
arXiv:2205.11487v1 §2.3 (dynamic thresholding).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import array_api_compat
import numpy as np
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import bounds as B
from refdiff.testing import references as R
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, run
from refdiff.testing.checks import Target, compare, levels, resolve_schedule, snippet
from refdiff.thresholding import DynamicThreshold


FIXED_VARIANCES = ("fixed_small", "fixed_large")
LEARNED_VARIANCES = ("learned", "learned_range")


def _nonzero(z: np.ndarray) -> np.ndarray:
    return z if z.any() else z + 1.0


@functools.lru_cache(maxsize=None)
def _step_arrays(shape: tuple, variance_type: str | None):
    """(x_t, ε, z[, v]) of one shape (built once per shape: a flatmap would otherwise build
    and validate new strategies for every example)."""
    parts = [S.arrays(shape), S.arrays(shape).map(_nonzero), S.arrays(shape).map(_nonzero)]
    if variance_type is not None:
        parts.append(S.variance_channels(shape, variance_type))
    return st.tuples(*parts)


def _step_examples(T: int, spacings, offset: int, max_steps, eta, variance_type=None):
    """((x_t, eps, noise[, v]), (n, spacing, t, t_prev), η) with x_t, ε, z in [−3, 3]; ε and
    z are never all zero (with both zero, every step returns a multiple of x_t); v, the
    variance channel of a learned ``variance_type``, of the same shape."""
    etas = S.etas() if eta is None else st.just(eta)
    return st.tuples(S.shapes().flatmap(lambda sh: _step_arrays(tuple(sh), variance_type)),
                     S.timestep_pairs(T, spacings, max_steps, offset), etas)


def _step_check(name: str, candidate: Callable, reference: Callable, bound: Callable, *,
                schedule, spacings, offset, max_steps, eta, target: Target, conventions: dict,
                max_examples, seed):
    sched, src = resolve_schedule(schedule)
    with_eta = name == "DDIM step"
    learned = conventions.get("variance_type") in LEARNED_VARIANCES
    strategy = _step_examples(sched.num_train_timesteps, spacings, offset, max_steps, eta,
                              conventions["variance_type"] if learned else None)
    final = conventions.get("final_alpha_bar", "one")
    bound_conventions = {k: v for k, v in conventions.items() if k != "final_alpha_bar"}

    def trial(ex):
        arrays, (n, _, t, t_prev), eta_ = ex
        x_t, eps, noise, *v = (target.rounded(a) for a in arrays)
        extra = {"eta": eta_} if with_eta else {}
        given = {"var_values": target.put(v[0])} if learned else {}
        actual = candidate(target.put(x_t), target.put(eps), t, t_prev, noise=target.put(noise),
                           num_inference_steps=n, **extra, **given)
        extra.update({"var_values": v[0]} if learned else {})
        expected = reference(x_t, eps, t, t_prev, noise=noise, schedule=sched, **extra,
                             **conventions)
        ab_t, ab_prev, exact = levels(sched, t, t_prev, final)
        b = bound(x_t, eps, noise if t_prev >= 0 else None, ab_t, ab_prev, target.dtype,
                  prev_exact=exact, t=t, t_prev=max(t_prev, 0), **extra, **bound_conventions)
        compare(actual, expected, dtype=target.dtype, device=target.device, bound=b,
                what="x_prev")

    def describe(ex):
        (x_t, eps, noise, *v), (n, spacing, t, t_prev), eta_ = ex
        named = {"x_t": x_t, "eps": eps, "noise": noise}
        named.update({"var_values": v[0]} if learned else {})
        named.update({"t": t, "t_prev": t_prev, "n": n, "spacing": spacing})
        return {**named, "eta": eta_} if with_eta else named

    def reproduce(d):
        extra = ", eta=eta" if with_eta else ", var_values=var_values" if learned else ""
        conv = "".join(f", {k}={v!r}" for k, v in conventions.items())
        bconv = "".join(f", {k}={v!r}" for k, v in bound_conventions.items())
        return snippet(f"R.{reference.__name__}(x_t, eps, t, t_prev, noise=noise, "
                       f"schedule=schedule{extra}{conv})",
                       f"candidate(x_t, eps, t, t_prev, noise=noise{extra}, num_inference_steps=n)",
                       d, src,
                       f"B.{bound.__name__}(x_t, eps, noise if t_prev >= 0 else None, "
                       f"schedule.alpha_bar(t), R.alpha_bar_prev(schedule, t_prev, {final!r}), "
                       f"DTYPE, prev_exact={'t_prev < 0' if final == 'one' else False}, "
                       f"t=t, t_prev=max(t_prev, 0){extra}{bconv})",
                       target.dtype)

    return run(name, strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def _clip_option(clip_x0):
    """``clip_x0`` as the checks take it: None, a bound b > 0, or a DynamicThreshold."""
    if clip_x0 is None or isinstance(clip_x0, DynamicThreshold):
        return clip_x0
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be None, a bound > 0 or a "
                         f"refdiff.thresholding.DynamicThreshold, got {clip_x0!r}")
    return clip_x0


def check_ddim_step(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS, offset: int = 0,
                    eta: float | None = None, final_alpha_bar: str = "one", clip_x0=None,
                    rederive_eps: bool = True, max_steps: int | None = None,
                    target: Target = Target(), max_examples: int = 150,
                    seed: int | None = None) -> CheckResult:
    """One DDIM step between consecutive listed timesteps, η drawn in [0, 1] unless given.

    Adapter: ``candidate(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps) -> x_prev``;
    t_prev is the next listed timestep or −1 after the last one (then ᾱ_prev = 1, or ᾱ_0 with
    ``final_alpha_bar="alpha_bar_0"``, and no noise is added); ``noise`` is z, nonzero on
    every step.

    x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z, σ² = η²·β̃ (DDIM Eqs. 12, 16).
    ``clip_x0``: a bound b (x̂_0 clipped to [−b, b]) or a
    :class:`~refdiff.thresholding.DynamicThreshold` (Imagen's dynamic thresholding of x̂_0);
    ``rederive_eps``: ε̂ recomputed from the clipped or thresholded x̂_0.
    """
    conventions = {"final_alpha_bar": final_alpha_bar, "clip_x0": _clip_option(clip_x0),
                   "rederive_eps": rederive_eps}
    return _step_check("DDIM step", candidate, R.ddim_step, B.ddim_step, schedule=schedule,
                       spacings=spacings, offset=offset, max_steps=max_steps, eta=eta,
                       target=target, conventions=conventions, max_examples=max_examples,
                       seed=seed)


def check_ddpm_step(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS, offset: int = 0,
                    variance_type: str = "fixed_small", final_alpha_bar: str = "one", clip_x0=None,
                    max_steps: int | None = None, target: Target = Target(),
                    max_examples: int = 150, seed: int | None = None) -> CheckResult:
    """One DDPM step between consecutive listed timesteps (posterior mean at x̂_0 plus σ·z).

    Adapter: ``candidate(x_t, eps, t, t_prev, *, noise, num_inference_steps) -> x_prev``;
    t_prev as in :func:`check_ddim_step`; ``noise`` is z, nonzero on every step, and must
    not be added after the last listed timestep.

    σ² = β̃ ("fixed_small") or β' = 1 − ᾱ_t/ᾱ_prev ("fixed_large"); no noise on the last step.
    ``clip_x0``: a bound or a :class:`~refdiff.thresholding.DynamicThreshold`, as in
    :func:`check_ddim_step`. A learned variance is :func:`check_ddpm_learned_variance`.
    """
    if variance_type not in FIXED_VARIANCES:
        raise ValueError(f"variance_type must be one of {', '.join(map(repr, FIXED_VARIANCES))} "
                         f"for check_ddpm_step, got {variance_type!r} (a learned variance: "
                         "check_ddpm_learned_variance)")
    conventions = {"variance_type": variance_type, "final_alpha_bar": final_alpha_bar,
                   "clip_x0": _clip_option(clip_x0)}
    return _step_check("DDPM step", candidate, R.ddpm_step, B.ddpm_step, schedule=schedule,
                       spacings=spacings, offset=offset, max_steps=max_steps, eta=0.0,
                       target=target, conventions=conventions, max_examples=max_examples,
                       seed=seed)


def check_ddpm_learned_variance(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS,
                                offset: int = 0, variance_type: str = "learned_range",
                                final_alpha_bar: str = "one", clip_x0=None,
                                max_steps: int | None = None, target: Target = Target(),
                                max_examples: int = 150,
                                seed: int | None = None) -> CheckResult:
    """One DDPM step whose variance comes from the model's variance channel v.

    Adapter: ``candidate(x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps) ->
    x_prev``; ``var_values`` is v, an array of the shape, dtype and device of ``x_t`` (the
    second half of a 2C-channel model output, split off); t_prev and ``noise`` as in
    :func:`check_ddpm_step` (no noise after the last listed timestep).

    ``variance_type="learned_range"`` (IDDPM Eq. 15): log σ² = frac·log β' + (1 − frac)·log β̃,
    frac = (v + 1)/2, β̃ floored at 1e-20 inside the log (where ᾱ_prev = 1); v is drawn in
    [−1.25, 1.25], ±1 and 0 favoured (a network's v may leave [−1, 1]: neither refdiff nor
    the originals clip it). ``variance_type="learned"``: v is log σ² (guided-diffusion's
    LEARNED), drawn in [−20, 1]; diffusers' "learned" reads its channel as σ² itself, so its
    adapter passes exp(v). The mean is DDPM Eq. 7 at x̂_0 (``clip_x0`` as in
    :func:`check_ddim_step`).
    """
    if variance_type not in LEARNED_VARIANCES:
        raise ValueError(f"variance_type must be one of {', '.join(map(repr, LEARNED_VARIANCES))} "
                         f"for check_ddpm_learned_variance, got {variance_type!r} (a fixed "
                         "variance: check_ddpm_step)")
    conventions = {"variance_type": variance_type, "final_alpha_bar": final_alpha_bar,
                   "clip_x0": _clip_option(clip_x0)}
    return _step_check("DDPM step, learned variance", candidate, R.ddpm_step, B.ddpm_step,
                       schedule=schedule, spacings=spacings, offset=offset,
                       max_steps=max_steps, eta=0.0, target=target, conventions=conventions,
                       max_examples=max_examples, seed=seed)


def default_model(x_t: Any, t: int):
    """A smooth test "network" whose ε depends on x_t and on t: 0.9·x + 0.1·sin(x + t/50).

    Its attributes serve the loop's error bound: ``elementwise`` (ε_j depends on x_j only)
    and ``error_terms(x, t)`` = (M, k) of its own evaluation in a dtype (terms 0.9·|x| and
    0.1·(|x| + t/50 + 1) for the argument and value of the sine; 6 roundings on the longest
    path: t/50, the sum, the sine, 0.1, the product, the final sum)."""
    xp = array_api_compat.array_namespace(x_t)
    return 0.9 * x_t + 0.1 * xp.sin(x_t + t / 50.0)


default_model.elementwise = True
default_model.error_terms = lambda x, t: (0.9 * np.abs(x) + 0.1 * (np.abs(x) + t / 50.0 + 1.0),
                                          6)


def check_sampling_loop(candidate: Callable, *, model: Callable = default_model, schedule=None,
                        spacings=rd.SPACINGS, offset: int = 0, sampler: str = "ddim",
                        max_steps: int = 20, target: Target = Target(), max_examples: int = 60,
                        seed: int | None = None, **conventions: Any) -> CheckResult:
    """A whole loop over a listed timestep sequence driven by ``model``, against refdiff's.

    Adapter: ``candidate(model, x_T, timesteps, noises) -> x_0``; ``model(x_t, t) -> eps``
    (t a training timestep), ``timesteps`` refdiff's descending list, step i uses
    ``noises[i]`` (the last step none).

    ``conventions`` are those of :func:`check_ddim_step` (``eta``, ``final_alpha_bar``,
    ``clip_x0``, ``rederive_eps``) or :func:`check_ddpm_step` (``variance_type`` "fixed_small"
    or "fixed_large", ...); with a :class:`~refdiff.thresholding.DynamicThreshold` the
    Jacobian is the full matrix (the threshold couples a sample's elements).
    The bound carries each step's error into the next through the Jacobian of the whole
    step x ↦ step(x, model(x, t)) (central differences in float64; the diagonal only if
    ``model.elementwise``), and adds each step's own (:func:`refdiff.testing.bounds.
    sampling_loop`); the model's own evaluation error is ``model.error_terms`` if it has
    them, else γ_8·(|x_t| + |ε|).
    """
    if conventions.get("variance_type") in LEARNED_VARIANCES:
        raise ValueError(f"check_sampling_loop takes a model that returns eps only; "
                         f"variance_type={conventions['variance_type']!r} needs the variance "
                         "channel: check the step with check_ddpm_learned_variance")
    if "clip_x0" in conventions:
        conventions["clip_x0"] = _clip_option(conventions["clip_x0"])
    sched, src = resolve_schedule(schedule)
    T = sched.num_train_timesteps
    lists = S.timestep_lists(T, spacings, max_steps, offset)
    strategy = st.tuples(lists, S.shapes(max_dims=2)).flatmap(
        lambda ls: st.tuples(st.just(ls[0]), st.tuples(*[S.arrays(ls[1])] * (ls[0][0] + 1))))
    final = conventions.get("final_alpha_bar", "one")

    def trial(ex):
        (n, _, ts), arrays = ex
        x_T, *noises = (target.rounded(a) for a in arrays)
        actual = candidate(model, target.put(x_T), list(ts), [target.put(z) for z in noises])
        expected = R.sample(model, x_T, ts, noises, schedule=sched, sampler=sampler,
                            **conventions)
        _, bound = B.sampling_loop(model, x_T, ts, noises, sched.alpha_bar,
                                   lambda: R.alpha_bar_prev(sched, -1, final), target.dtype,
                                   sampler=sampler, final_exact=final == "one", **conventions)
        compare(actual, expected, dtype=target.dtype, device=target.device, bound=bound,
                what=f"x_0 after {n} steps")

    def describe(ex):
        (n, spacing, ts), (x_T, *noises) = ex
        return {"timesteps": ts, "spacing": spacing, "x_T": x_T, "noises": list(noises)}

    def reproduce(d):
        conv = "".join(f", {k}={v!r}" for k, v in conventions.items())
        head = ("from refdiff.testing.step_checks import default_model as model\n"
                if model is default_model else "model = ...  # your model(x_t, t)\n")
        return head + snippet(f"R.sample(model, x_T, timesteps, noises, schedule=schedule, "
                              f"sampler={sampler!r}{conv})",
                              "candidate(model, x_T, timesteps, noises)", d, src,
                              f"B.sampling_loop(model, x_T, timesteps, noises, schedule.alpha_bar, "
                              f"lambda: R.alpha_bar_prev(schedule, -1, {final!r}), DTYPE, "
                              f"sampler={sampler!r}, final_exact={final == 'one'}{conv})[1]",
                              target.dtype)

    return run(f"{sampler.upper()} sampling loop", strategy, trial, describe=describe,
               reproduce=reproduce, max_examples=max_examples, seed=seed)
