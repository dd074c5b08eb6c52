"""Sampling loops over noise levels: σ-space solvers (Euler, Heun, Euler-ancestral,
DPM-Solver++(2M)) and the flow-matching Euler sampler, with CFG, scale schedules, APG and
autoguidance.

Conventions:

- :func:`sample_ode` integrates on the VE path (k-diffusion's): ``x`` is x_0 + σ_0·ε at the
  first level of ``sigmas``, and the result is at the last level (σ = 0 gives samples of the
  data). A VP model's x_T is x_VE·√ᾱ, so x_VE = x_T·√(1 + σ_0²) (:func:`refdiff.change_path`).
- The model keeps its own path (``model_path``): it is called as ``model(x_m, level, c)``
  with x_m = x on that path at the same σ (x_VP = x/√(1 + σ²) with ᾱ = 1/(1 + σ²), x_flow =
  x/(1 + σ) with t = σ/(1 + σ), x_VE = x with σ), and returns ε, x_0, v or the velocity u
  on that path (``prediction_type``). Its prediction becomes D = x̂_0, which is the same on
  every path. The level is a Python float; a model indexed by training timesteps wraps it.
- :func:`sample_flow` steps on the flow path itself: ``model(x, t, c)`` returns u (or another
  prediction type, converted to u), and x' = x + (t' − t)·u.
- Guidance: :class:`refdiff.Guidance` with ``cond``, ``uncond``, ``scale`` (a float, a (B,)
  array or a :class:`refdiff.ScaleSchedule`), ``method`` "cfg" or "apg" (``apg``: its
  settings and space, x̂_0 by default) and ``guiding_model``. One s per step, from the step's
  own σ_i (the interval of GI Eq. 6) or index; Heun's correction uses the step's s. CFG is
  affine, so applying it to ε, x̂_0, v or u gives the same step; APG acts in ``APG.space``
  ("sample" = x̂_0, "epsilon", "v_prediction", "velocity", or None = the model's output). A
  float s = 1 evaluates only the conditional branch, s = 0 only the unconditional one.
- Randomness: only Euler-ancestral with η > 0 draws noise, from ``generator`` through the
  backend of ``x``; its last step to σ = 0 adds none (σ_up = 0 there).
- ``lower_order_final=True`` makes the last DPM-Solver++(2M) step first order (diffusers
  applies it when fewer than 15 steps are run); a step to σ = 0 is first order anyway.

References
----------
.. [EDM] arXiv:2206.00364v2, Algorithm 1.      .. [KD] k-diffusion ``sampling.py``.
.. [DPMPP] arXiv:2211.01095v2, Algorithm 2.    .. [FM] arXiv:2210.02747v2, Eq. 23.
.. [CFG] arXiv:2207.12598v1, Algorithm 2.      .. [APG] arXiv:2410.02416v1, Algorithm 1.
.. [GI] arXiv:2404.07724v2, Eq. 6.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

from refdiff import _xp
from refdiff.classifier_free import _cfg
from refdiff.guidance_variants import APG, _apg
from refdiff.paths import PATH_PREDICTIONS, PATHS, _coefficients, _converted, _level, _x0_eps
from refdiff.scale_schedules import ScaleSchedule, _scheduled_scale
from refdiff.solvers import (_dpmpp_2m, _euler, _euler_ancestral, _flow_euler, _heun)

SOLVERS = ("euler", "heun", "euler_ancestral", "dpmpp_2m")


class _OdeRun(NamedTuple):
    """The checked settings of one call of :func:`sample_ode` or :func:`sample_flow`."""

    xp: Any
    path: str               # the model's path
    prediction_type: str
    levels: list[float]     # σ (VE) or t (flow) of every step, then the final level
    scales: tuple           # s of every step
    method: str             # "cfg" or "apg"
    apg: APG | None


# ----- the checked prologue ---------------------------------------------------------------

def _checked_levels(name: str, levels: Any, hi: float) -> list[float]:
    """A descending list of ≥ 2 host floats in [0, hi], the first > 0 (hi = ∞: finite):
    strictly descending, except that the final level may equal the last listed one
    (``final="sigma_min"`` on a list that ends at σ_min: a step that changes nothing)."""
    vals = [float(v) for v in levels]
    if len(vals) < 2:
        raise ValueError(f"{name} must hold at least 2 levels (the first step's and the final "
                         f"one), got {len(vals)}")
    for v in vals:
        _xp.number(name, v, lo=0.0, hi=hi, hi_open=math.isinf(hi))
    listed = vals[:-1]
    if any(a <= b for a, b in zip(listed, listed[1:])) or vals[-1] > vals[-2] or vals[0] <= 0:
        raise ValueError(f"{name} must be strictly descending with a positive first level (the "
                         f"final level may equal the last listed one), got {vals}")
    return vals


def _checked_guidance(xp: Any, x: Any, g: Any, sigmas: list[float]) -> tuple:
    """(scales, method, APG or None); what these loops do not offer is refused."""
    from refdiff.sampling import Guidance

    if not isinstance(g, Guidance):
        raise TypeError(f"guidance must be a refdiff.Guidance, got {type(g).__name__}")
    for name, default in (("rescale", 0.0), ("classifier", None), ("grad_log_prob", None),
                          ("classifier_scale", 0.0)):
        if _xp.is_array(getattr(g, name)) or getattr(g, name) != default:
            raise ValueError(f"Guidance.{name} is not offered by the sigma-space and flow "
                             f"samplers (got {getattr(g, name)!r})")
    method = _xp.choice("Guidance.method", g.method, ("cfg", "apg"))
    if g.guiding_model is not None and not callable(g.guiding_model):
        raise TypeError("Guidance.guiding_model must be callable")
    if g.apg is not None and (not isinstance(g.apg, APG) or method != "apg"):
        raise ValueError("Guidance.apg must be a refdiff.APG, with method='apg'")
    n = len(sigmas) - 1
    if isinstance(g.scale, ScaleSchedule):
        scales = tuple(_scheduled_scale(g.scale, i, n, sigmas[i]) for i in range(n))
    else:
        scales = (_xp.any_real(xp, "Guidance.scale", g.scale, x),) * n
    apg = (g.apg or APG()) if method == "apg" else None
    if apg is not None and apg.eta == 1 and apg.norm_threshold == 0 and apg.momentum == 0:
        return scales, "cfg", None  # update = Δ: APG is CFG in any space, run as CFG
    return scales, method, apg


def _checked_ode_run(x: Any, levels: Any, g: Any, path: str, prediction_type: str,
                     flow: bool) -> _OdeRun:
    if not _xp.is_array(x) or getattr(x, "ndim", 0) < 1:
        raise TypeError(f"x must be an array of shape (B, ...), got {type(x).__name__}")
    xp = _xp.arrays("x", x)
    _xp.choice("model_path", path, PATHS)
    _xp.choice("prediction_type", prediction_type, PATH_PREDICTIONS)
    vals = _checked_levels("times" if flow else "sigmas", levels, 1.0 if flow else math.inf)
    sig = [t / (1.0 - t) if t < 1 else math.inf for t in vals] if flow else vals
    scales, method, apg = _checked_guidance(xp, x, g, sig)
    if prediction_type == "epsilon" and math.isinf(sig[0]):
        raise ValueError("an epsilon model gives no x0_hat at t = 1 (sigma = inf); start "
                         "below 1 or use a velocity, v- or x_0-model")
    return _OdeRun(xp, path, prediction_type, vals, scales, method, apg)


# ----- one guided evaluation ------------------------------------------------------------

def _model_call(xp: Any, model: Callable, x: Any, level: float, c: Any) -> Any:
    out = model(x, level, c)
    _xp.returned(xp, "x", x, model_output=out)
    return out


def _guided_output(run: _OdeRun, model: Callable, g: Any, x_m: Any, level: float,
                   ab: tuple[Any, Any], s: Any, running: Any) -> tuple[Any, Any]:
    """(guided prediction in the model's output space, APG's running average)."""
    xp, ptype = run.xp, run.prediction_type
    guide = model if g.guiding_model is None else g.guiding_model
    if not _xp.is_array(s) and s == 1:
        return _model_call(xp, model, x_m, level, g.cond), running
    if not _xp.is_array(s) and s == 0 and run.method == "cfg":
        return _model_call(xp, guide, x_m, level, g.uncond), running
    out_u = _model_call(xp, guide, x_m, level, g.uncond)               # CFG Algorithm 2, line 5
    out_c = _model_call(xp, model, x_m, level, g.cond)
    p = run.apg
    if p is None:                                                   # method "cfg"
        return _cfg(xp, out_u, out_c, s), running
    space = ptype if p.space is None else p.space                   # APG in its own space
    a, b = ab
    d_u, d_c = (_converted(xp, x_m, o, a, b, ptype, space) for o in (out_u, out_c))
    guided, running = _apg(xp, d_u, d_c, s, p.eta, p.norm_threshold, p.momentum, running)
    return _converted(xp, x_m, guided, a, b, space, ptype), running


def _denoised(run: _OdeRun, model: Callable, g: Any, x: Any, sigma: float, s: Any,
              running: Any) -> tuple[Any, Any]:
    """D(x; σ) = x̂_0 of the guided model, with x on the VE path."""
    xp = run.xp
    level = _level(xp, run.path, sigma)
    a, b = _coefficients(xp, run.path, level)
    (k,) = _xp.cast(xp, x, a)                                       # x_m = a·x_VE (same σ)
    x_m = x if run.path == "ve" else k * x
    out, running = _guided_output(run, model, g, x_m, level, (a, b), s, running)
    return _x0_eps(xp, x_m, out, a, b, run.prediction_type)[0], running


# ----- the loops --------------------------------------------------------------------------

def _ode_step(run: _OdeRun, solver: str, model: Callable, g: Any, i: int, x: Any, noise: Any,
              eta: float, state: Any, last_first_order: bool) -> tuple[Any, Any, Any]:
    """(x', D, solver state) of step i."""
    sigma, sigma_next, s = run.levels[i], run.levels[i + 1], run.scales[i]
    running, state = state
    d, running = _denoised(run, model, g, x, sigma, s, running)
    xp = run.xp
    if solver == "euler":
        return _euler(xp, x, d, sigma, sigma_next), d, (running, None)
    if solver == "euler_ancestral":
        return _euler_ancestral(xp, x, d, sigma, sigma_next, noise, eta), d, (running, None)
    if solver == "dpmpp_2m":
        x_next, new = _dpmpp_2m(xp, x, d, sigma, sigma_next, None if last_first_order else state)
        return x_next, d, (running, new)
    x_e = _euler(xp, x, d, sigma, sigma_next)                       # EDM Algorithm 1, line 5
    if sigma_next == 0:                                             # line 8: no correction at 0
        return x_e, d, (running, None)
    d_next, running = _denoised(run, model, g, x_e, sigma_next, s, running)  # line 6
    return _heun(xp, x, d, sigma, sigma_next, d_next), d, (running, None)   # line 7


def sample_ode(model: Callable[[Any, float, Any], Any], x: Any, sigmas: Sequence[float], *,
               solver: str = "euler", model_path: str = "ve",
               prediction_type: str = "sample", guidance: Any = None, eta: float = 1.0,
               lower_order_final: bool = False, generator: Any = None,
               callback: Callable[..., None] | None = None) -> Any:
    """Integrate from σ_0 to the last level of ``sigmas`` with a σ-space solver.

    Parameters
    ----------
    model : callable
        ``model(x_m, level, c) -> array``: the prediction (``prediction_type``) on
        ``model_path`` at ``level`` (module docstring).
    x : array, shape (B, ...)
        x_0 + σ_0·ε on the VE path (e.g. σ_0·z); fixes the backend, device and dtype.
    sigmas : sequence of float
        σ_0 > σ_1 > … > σ_{n−1} ≥ σ_n ≥ 0 (n + 1 levels for n steps;
        :mod:`refdiff.noise_levels`; σ_n = σ_{n−1} is the final level "sigma_min" of a list
        that ends at σ_min).
    solver : {"euler", "heun", "euler_ancestral", "dpmpp_2m"}
    model_path : {"ve", "vp", "flow"}
    prediction_type : {"epsilon", "sample", "v_prediction", "velocity"}
    guidance : Guidance, optional
        CFG or APG, a scale schedule, a guiding model (module docstring).
    eta : float
        Euler-ancestral's η ≥ 0 (other solvers: must stay 1.0, the default).
    lower_order_final : bool
        DPM-Solver++(2M): the last step first order.
    generator : int or generator, optional
        The noise of Euler-ancestral (backend of ``x``).
    callback : callable, optional
        ``callback(i, sigma, x, denoised)`` after each step.

    Returns
    -------
    x : array, shape, dtype and device of ``x``, at the last level of ``sigmas``

    References
    ----------
    EDM Algorithm 1; KD ``sample_euler_ancestral``; DPMPP Algorithm 2; CFG Algorithm 2; APG
    Algorithm 1; GI Eq. 6 (module docstring).
    """
    from refdiff.backends import get_backend

    _xp.choice("solver", solver, SOLVERS)
    run = _checked_ode_run(x, sigmas, guidance or _default_guidance(), model_path,
                           prediction_type, flow=False)
    eta = _xp.number("eta", eta, lo=0.0)
    if solver != "euler_ancestral" and eta != 1.0:
        raise ValueError(f"eta applies to solver='euler_ancestral' only, got eta={eta} with "
                         f"solver={solver!r}")
    if _xp.flag("lower_order_final", lower_order_final) and solver != "dpmpp_2m":
        raise ValueError("lower_order_final applies to solver='dpmpp_2m' only")
    backend, dev = get_backend(x), _xp.device(x)
    gen = backend.generator(generator, dev)
    g, n, state = guidance or _default_guidance(), len(run.levels) - 1, (None, None)
    for i in range(n):
        noise = None
        if solver == "euler_ancestral" and eta > 0 and run.levels[i + 1] > 0:
            noise = backend.normal(tuple(x.shape), dtype=x.dtype, device=dev, generator=gen)
        elif solver == "euler_ancestral" and eta > 0:
            noise = backend.xp.zeros_like(x)                        # σ_up = 0 at σ' = 0
        last = lower_order_final and i == n - 1
        x, d, state = _ode_step(run, solver, model, g, i, x, noise, eta, state, last)
        if callback is not None:
            callback(i, run.levels[i], x, d)
    return x


def sample_flow(model: Callable[[Any, float, Any], Any], x: Any, times: Sequence[float], *,
                prediction_type: str = "velocity", guidance: Any = None,
                callback: Callable[..., None] | None = None) -> Any:
    """The flow-matching Euler sampler: x' = x + (t' − t)·u over the listed flow times.

    Parameters
    ----------
    model : callable
        ``model(x, t, c) -> array``: u = ε − x_0 (or ``prediction_type``) on the flow path.
    x : array, shape (B, ...)
        x at t_0 (at t_0 = 1: ε, the starting noise).
    times : sequence of float
        1 ≥ t_0 > t_1 > … ≥ 0 (:func:`refdiff.flow_times`).
    prediction_type : {"velocity", "sample", "v_prediction", "epsilon"}
        ("epsilon" needs t_0 < 1.)
    guidance : Guidance, optional
        As in :func:`sample_ode`; the interval is judged at σ = t/(1 − t).
    callback : callable, optional
        ``callback(i, t, x, u)`` after each step, with the guided velocity u.

    Returns
    -------
    x : array, at the last level of ``times``

    References
    ----------
    FM, arXiv:2210.02747v2, Eq. 23; SD3, arXiv:2403.03206v1, §2; CFG Algorithm 2.
    """
    g = guidance or _default_guidance()
    run = _checked_ode_run(x, times, g, "flow", prediction_type, flow=True)
    xp, running = run.xp, None
    for i in range(len(run.levels) - 1):
        t, t_next = run.levels[i], run.levels[i + 1]
        a, b = _coefficients(xp, "flow", t)
        out, running = _guided_output(run, model, g, x, t, (a, b), run.scales[i], running)
        u = _converted(xp, x, out, a, b, prediction_type, "velocity")
        x = _flow_euler(xp, x, u, t, t_next)                        # x' = x + (t' − t)·u
        if callback is not None:
            callback(i, t, x, u)
    return x


def _default_guidance() -> Any:
    from refdiff.sampling import Guidance

    return Guidance()
