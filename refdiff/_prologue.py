"""The checked prologue of the sampling loop: every option of :func:`refdiff.sample`, once.

:func:`_checked_run` checks the options, the timesteps, the guidance settings (method, scale
or scale schedule, APG's settings, the guiding model) and η against every step of the list,
all before the first model evaluation, and returns them as a :class:`_Run`; the loop body
(:mod:`refdiff._loop`) then only checks what the model returns. :mod:`refdiff.compiled`
runs the same prologue.

References
----------
.. [DDIM] arXiv:2010.02502v4, Eq. 16 (η).   .. [CFGPP] arXiv:2406.08070v1, Algorithm 1.
.. [GI] arXiv:2404.07724v2, Eq. 6 (the interval, through refdiff.scale_schedules).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff import _xp
from refdiff.forward import PREDICTION_TYPES, _posterior_coefficients
from refdiff.fused import _batched_condition, _is_end, _loop_fuses
from refdiff.guidance_variants import APG
from refdiff.scale_schedules import ScaleSchedule, _scheduled_scale, sigma_from_alpha_bar
from refdiff.schedules import Schedule, check_schedule, inference_timesteps
from refdiff.steps import (LEARNED_VARIANCES, VARIANCE_TYPES, Clip, _check_eta, _clip_bound)

SAMPLERS = ("ddim", "ddpm")
FINAL_ALPHA_BARS = ("one", "alpha_bar_0")
CLASSIFIER_ORDERS = ("shift_then_clip", "clip_then_shift")
LAST_STEP_VARIANCES = ("floor", "previous_beta_tilde")
MODEL_TIMESTEPS = ("source", "destination")


class _Run(NamedTuple):
    """The checked settings of one call of :func:`sample`."""

    xp: Any
    sampler: str
    prediction_type: str
    scale: Any               # CFG s: a float, or (B, 1, ..., 1)
    rescale: float
    rescale_space: str
    classifier_scale: Any    # CG s: a float, or (B, 1, ..., 1)
    eta: float
    variance_type: str
    learned: bool            # the model also returns a variance channel
    zero_beta_tilde: float | None  # β̃ used at the step to ᾱ_prev = 1 (None: floored)
    clip_x0: Clip
    rederive_eps: bool
    classifier_order: str
    levels: list[tuple[int, float, float]]  # (t, ᾱ_t, ᾱ_prev) of every step
    cond_pair: Any = None    # batch_cfg: [uncond; cond] along axis 0, else None
    method: str = "cfg"      # "cfg", "apg" or "cfg++"
    apg: APG | None = None   # APG's settings (method "apg")
    scales: tuple = ()       # s of every step: run.scale repeated, or a ScaleSchedule's
    fused: bool = False      # the fast path of refdiff.fused (set by sample)


# ----- the checked prologue ---------------------------------------------------------------

def _timesteps(schedule: Schedule, timesteps: Any, num_inference_steps: Any, spacing: Any) -> list[int]:
    """The listed timesteps, or the spacing's (precedence: ``timesteps`` excludes the other two)."""
    check_schedule("schedule", schedule)
    T = schedule.num_train_timesteps
    if timesteps is None:
        n = 50 if num_inference_steps is None else num_inference_steps
        return [int(t) for t in inference_timesteps(T, n, spacing or "leading")]
    if num_inference_steps is not None or spacing is not None:
        raise ValueError("pass either timesteps or num_inference_steps/spacing, not both "
                         "(timesteps already fixes the steps)")
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__len__"):
        raise TypeError(f"timesteps must be a sequence or a 1-D array of ints, got "
                        f"{type(timesteps).__name__}")
    ts = [_xp.integer("timesteps[i]", t) for t in timesteps]
    if not ts or any(not 0 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be a non-empty, strictly descending list in "
                         f"[0, {T - 1}], got {ts[:8]}{'...' if len(ts) > 8 else ''}")
    return ts


def _levels(schedule: Schedule, ts: list[int], final: float) -> list[tuple[int, float, float]]:
    """(t, ᾱ_t, ᾱ_prev) per step: ᾱ_prev of the next listed timestep, ``final`` after the last."""
    abs_ = [schedule.alpha_bar(t) for t in ts] + [final]
    return [(t, abs_[i], abs_[i + 1]) for i, t in enumerate(ts)]


def _checked_run(x_T: Any, schedule: Schedule, g: Any, *, sampler: Any,
                 num_inference_steps: Any, spacing: Any, timesteps: Any, prediction_type: Any,
                 eta: Any, variance_type: Any, last_step_variance: Any, clip_x0: Any,
                 rederive_eps: Any, classifier_order: Any, final_alpha_bar: Any) -> _Run:
    xp = _batch_input(x_T, "x_T")
    from refdiff.sampling import Guidance  # the public class lives with sample()

    if not isinstance(g, Guidance):
        raise TypeError(f"guidance must be a refdiff.Guidance, got {type(g).__name__}")
    _xp.choice("sampler", sampler, SAMPLERS)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _xp.choice("final_alpha_bar", final_alpha_bar, FINAL_ALPHA_BARS)
    rederive_eps = _xp.flag("rederive_eps", rederive_eps)
    _only(sampler, "ddim", "classifier_order", _xp.choice("classifier_order", classifier_order,
                                                          CLASSIFIER_ORDERS), "shift_then_clip")
    if classifier_order == "clip_then_shift" and not rederive_eps:
        raise ValueError("classifier_order='clip_then_shift' re-derives eps from the clipped "
                         "x0_hat (guided-diffusion's order); it needs rederive_eps=True")
    space = prediction_type if g.rescale_space is None else _xp.choice(
        "Guidance.rescale_space", g.rescale_space, PREDICTION_TYPES)
    scale = g.scale if isinstance(g.scale, ScaleSchedule) else _xp.any_real(
        xp, "Guidance.scale", g.scale, x_T)
    rescale = _xp.number("Guidance.rescale", g.rescale, lo=0.0, hi=1.0)
    classifier_scale = _xp.any_real(xp, "Guidance.classifier_scale", g.classifier_scale, x_T)
    _check_classifier(g, classifier_scale)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)
    final = 1.0 if final_alpha_bar == "one" else schedule.alpha_bar(0)
    levels = _levels(schedule, ts, final)
    method, apg = _checked_method(g, sampler, eta, rescale, classifier_scale, clip_x0, levels)
    spaces = {prediction_type, space} if rescale != 0 else {prediction_type}
    _check_zero_snr(spaces | ({apg.space} if method == "apg" and apg.space else set()), levels)
    variance_type, zero_beta_tilde = _checked_variance(x_T, sampler, eta, variance_type,
                                                       last_step_variance, levels)
    if sampler == "ddim":  # η against every step of the list, before any model evaluation
        for _, ab_t, ab_prev in levels:
            eta = _check_eta(None, eta, ab_t, ab_prev)
    return _Run(xp, sampler, prediction_type, scale, rescale, space, classifier_scale, eta,
                variance_type, variance_type in LEARNED_VARIANCES, zero_beta_tilde,
                _clip_bound(clip_x0), rederive_eps, classifier_order, levels, None, method,
                apg, _step_scales(xp, method, scale, levels))


def _check_zero_snr(spaces: set, levels: list[tuple[int, float, float]]) -> None:
    """ᾱ_t = 0 is refused where a prediction must pass through ε (no x̂_0 from ε there)."""
    if "epsilon" in spaces and any(ab_t == 0 for _, ab_t, _ in levels):
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR) at the first timestep: an "
                         "epsilon model cannot give x0_hat there; use a v- or x_0-model or "
                         "start one timestep later")


def _loop_options(run: _Run, g: Any, x_T: Any, batch_cfg: Any, callback: Any) -> _Run:
    """The run with the batched condition (``batch_cfg``) and the fast-path flag set."""
    both = any(not _is_end(s) for s in run.scales)
    if _xp.flag("batch_cfg", batch_cfg) and both:  # some step evaluates both branches
        if g.guiding_model is not None:
            raise ValueError("batch_cfg=True calls one model on [uncond; cond]; with "
                             "Guidance.guiding_model the branches are two models")
        run = run._replace(cond_pair=_batched_condition(run.xp, x_T, g.cond, g.uncond))
    # nothing needs x̂_0 or ε̃: the fast path (refdiff.fused)
    return run._replace(fused=_loop_fuses(run, callback))


GUIDANCE_METHODS = ("cfg", "apg", "cfg++")


def _checked_method(g: Any, sampler: str, eta: Any, rescale: float, classifier_scale: Any,
                    clip_x0: Any, levels: list[tuple[int, float, float]]) -> Any:
    """(method, APG settings or None) of the run; what CFG++ excludes is refused."""
    method = _xp.choice("Guidance.method", g.method, GUIDANCE_METHODS)
    if g.guiding_model is not None and not callable(g.guiding_model):
        raise TypeError(f"Guidance.guiding_model must be callable, got "
                        f"{type(g.guiding_model).__name__}")
    if g.apg is not None and not isinstance(g.apg, APG):
        raise TypeError(f"Guidance.apg must be a refdiff.APG, got {type(g.apg).__name__}")
    if g.apg is not None and method != "apg":
        raise ValueError(f"Guidance.apg applies to method='apg' only, got method={method!r}")
    if method == "apg":
        a = g.apg or APG()
        if a.space == "velocity":
            raise ValueError("APG.space='velocity' applies to refdiff.sample_ode and "
                             "refdiff.sample_flow; sample() takes 'sample', 'epsilon', "
                             "'v_prediction' or None")
        if a.eta == 1 and a.norm_threshold == 0 and a.momentum == 0:
            return "cfg", None  # update = Δ: APG is CFG (in any space), run as CFG
        return method, a
    if method != "cfg++":
        return method, None
    others = {"sampler": (sampler, "ddim"), "eta": (eta, 0.0), "Guidance.rescale": (rescale, 0.0),
              "clip_x0": (clip_x0, None), "Guidance.classifier_scale": (classifier_scale, 0.0)}
    for name, (value, default) in others.items():
        if _xp.is_array(value) or value != default:
            raise ValueError(f"method='cfg++' is CFG++'s DDIM step (arXiv:2406.08070v1, "
                             f"Algorithm 1), which takes {name}={default!r} only; got {value!r}")
    if any(ab_t == 0 for _, ab_t, _ in levels):
        raise ValueError("method='cfg++' needs alpha_bar_t > 0 at every step (its x0_hat "
                         "comes from eps); the first timestep has alpha_bar_t = 0")
    return method, None


def _step_scales(xp: Any, method: str, scale: Any, levels: list[tuple[int, float, float]]) -> tuple:
    """s_i of every step: the constant (float or array), or the ScaleSchedule's values."""
    n = len(levels)
    if isinstance(scale, ScaleSchedule):
        scales = tuple(_scheduled_scale(scale, i, n, sigma_from_alpha_bar(ab_t))
                       for i, (_, ab_t, _) in enumerate(levels))
    else:
        scales = (scale,) * n
    if method == "cfg++":  # λ in [0, 1] (CFGPP): each scheduled value, a constant once
        for s in scales if isinstance(scale, ScaleSchedule) else scales[:1]:
            _xp.level(xp, "Guidance.scale (lambda of CFG++)", s, None)
    return scales


def _check_classifier(g: Any, classifier_scale: Any) -> None:
    """Callables where they are expected; a nonzero scale needs a classifier or a gradient."""
    for name in ("classifier", "grad_log_prob"):
        if getattr(g, name) is not None and not callable(getattr(g, name)):
            raise TypeError(f"Guidance.{name} must be callable, got "
                            f"{type(getattr(g, name)).__name__}")
    if g.classifier is None and g.grad_log_prob is None and (
            _xp.is_array(classifier_scale) or classifier_scale != 0):
        raise ValueError("Guidance.classifier_scale is nonzero but neither Guidance.classifier "
                         "nor Guidance.grad_log_prob is given")


def _only(sampler: str, owner: str, name: str, value: Any, default: Any, why: str = "") -> None:
    """Refuse an option of the other sampler set to anything but its default."""
    if sampler != owner and value != default:
        raise ValueError(f"{name} applies to sampler={owner!r} only, got {name}={value!r} with "
                         f"sampler={sampler!r}{why}")


def _checked_variance(x_T: Any, sampler: str, eta: Any, variance_type: Any,
                      last_step_variance: Any, levels: list[tuple[int, float, float]]) -> Any:
    """DDPM's variance options: (variance_type, zero_beta_tilde) of the run."""
    _only(sampler, "ddim", "eta", eta, 0, " (DDPM's variance is set by variance_type)")
    for name, value, default in (("variance_type", variance_type, None),
                                 ("last_step_variance", last_step_variance, "floor")):
        _only(sampler, "ddpm", name, value, default, " (DDIM's variance is set by eta)")
    if sampler == "ddim":
        return "fixed_small", None
    variance_type = _xp.choice("variance_type", variance_type or "fixed_small", VARIANCE_TYPES)
    _xp.choice("last_step_variance", last_step_variance, LAST_STEP_VARIANCES)
    if variance_type in LEARNED_VARIANCES and x_T.ndim < 2:
        raise ValueError(f"variance_type={variance_type!r} needs x_T of shape (B, C, ...): the "
                         f"model's variance channel is split along axis 1, got shape "
                         f"{tuple(x_T.shape)}")
    if last_step_variance == "floor":
        return variance_type, None
    if len(levels) < 2 or levels[-1][2] != 1:
        raise ValueError("last_step_variance='previous_beta_tilde' (guided-diffusion) needs at "
                         f"least two steps and final_alpha_bar='one'; got {len(levels)} "
                         f"step(s), last alpha_bar_prev={levels[-1][2]}")
    if variance_type in ("fixed_small", "learned"):                 # no β̃ = 0 to replace
        return variance_type, None
    _, ab_t, ab_prev = levels[-2]                                   # the step before the last
    return variance_type, _posterior_coefficients(None, ab_t, ab_prev)[2]  # its β̃


def _batch_input(x: Any, name: str) -> Any:
    """The namespace of the loop's input: a floating array with a batch axis."""
    xp = _xp.arrays(name, x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch axis (shape (B, ...)), got a 0-d array")
    return xp
