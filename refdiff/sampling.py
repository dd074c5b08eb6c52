"""The sampling loop: DDPM or DDIM over a list of timesteps, with CFG or classifier guidance.

The loop is the only place in refdiff that draws random numbers, from a generator (or an int
seed) that the caller passes, through the backend of ``x_T``.

Conventions (see the README table):

- ``timesteps`` is a descending list of training timesteps; t_prev is the next element of the
  list, never ``t − T // n``. After the last element the step goes to ᾱ = 1 (``final_alpha_bar
  = "one"``, as guided-diffusion, k-diffusion and diffusers' DDPM) or to ᾱ_0 (``"alpha_bar_0"``,
  as the CompVis sampler and diffusers' DDIM with ``set_alpha_to_one=False``).
- No noise is added on the last step; "last" is decided by position in the list, not by t > 0.
- The model is called as ``model(x_t, t, c)`` with t the training timestep (a Python int) and
  c the condition (``cond``, or ``uncond`` for the unconditional branch). It returns ε, x_0 or
  v according to ``prediction_type``.
- Under CFG the two branches are two model calls, or one call on the batch of 2B with the
  conditions [uncond; cond] concatenated along axis 0 (``batch_cfg=True``, diffusers' habit).
  When nothing needs x̂_0 or ε̃, CFG and the step are one linear combination
  (:mod:`refdiff.fused`, the fast path; equal to the composition up to rounding).
- CFG is applied to the model's output (affine, so the space does not matter); guidance
  rescale acts in ``rescale_space`` (default: the model's output space, as diffusers).
- Classifier guidance takes ∇ log p(y | x_t) at x_t with the training timestep t; DDIM uses
  CG Algorithm 2 (shift ε̂), DDPM uses CG Algorithm 1 (shift the mean by s·Σ·g, Σ the
  variance the step uses, learned or fixed). With clipping, DDIM shifts ε̂ and then clips
  (``classifier_order="shift_then_clip"``) or clips, re-derives ε̂, shifts it and does not
  clip again (``"clip_then_shift"``, guided-diffusion).
- A learned-variance model (``variance_type="learned"`` or ``"learned_range"``) returns
  the prediction and the variance channel as the two halves of axis 1.
- :mod:`refdiff.presets` names the option sets that make the loop behave like
  guided-diffusion, CompVis and diffusers.

Every argument is checked once, before the first model evaluation (:func:`_checked_run`):
the options, the timesteps, the guidance settings, and η against every step of the list.
The loop then calls the private bodies of the steps, checking only what the model (and the
classifier gradient) return.

References
----------
.. [DDPM] arXiv:2006.11239v2, Algorithm 2.   .. [DDIM] arXiv:2010.02502v4, Eq. 12.
.. [CFG] arXiv:2207.12598v1, Algorithm 2.    .. [CG] arXiv:2105.05233v4, Algorithms 1–2.
.. [IDDPM] arXiv:2102.09672v1, Eq. 15 (learned range).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from refdiff import _xp
from refdiff.classifier_free import _cfg, _guidance_rescale
from refdiff.classifier_guidance import (_classifier_gradient, _classifier_guided_eps,
                                         _classifier_guided_mean)
from refdiff.forward import (PREDICTION_TYPES, _posterior_coefficients, _predict_x0_eps,
                             _prediction_from_x0_eps, _x0_from_eps)
from refdiff.fused import _batched_condition, _is_end, _loop_fuses, _loop_step
from refdiff.schedules import Schedule, check_schedule, inference_timesteps
from refdiff.steps import (LEARNED_VARIANCES, VARIANCE_TYPES, Clip, _check_eta, _clip_bound,
                           _ddim_inversion_step, _ddim_step, _ddpm_mean_variance, _x0_eps)

SAMPLERS = ("ddim", "ddpm")
FINAL_ALPHA_BARS = ("one", "alpha_bar_0")
CLASSIFIER_ORDERS = ("shift_then_clip", "clip_then_shift")
LAST_STEP_VARIANCES = ("floor", "previous_beta_tilde")
MODEL_TIMESTEPS = ("source", "destination")


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of one sampling run.

    Attributes
    ----------
    cond, uncond : any
        Conditions passed to the model (the unconditional branch gets ``uncond``; a negative
        prompt goes there too).
    scale : float or (B,) array
        CFG scale s (ε̃ = ε_u + s·(ε_c − ε_u)); a float 1 evaluates only the conditional
        branch and 0 only the unconditional one.
    rescale : float
        Guidance-rescale φ (0 = off). ``rescale_space``: the space it acts in (None = the
        model's output space).
    classifier : callable, optional
        ``classifier(x_t, t) -> (B,)`` log p(y | x_t), differentiated by the backend's
        autograd; or ``grad_log_prob(x_t, t)``, the gradient ∇ log p(y | x_t) itself (used
        when given; then ``classifier`` is not needed). ``classifier_scale`` is s of CG; a
        nonzero s without either is an error.
    """

    cond: Any = None
    uncond: Any = None
    scale: Any = 1.0
    rescale: float = 0.0
    rescale_space: str | None = None
    classifier: Callable[[Any, int], Any] | None = None
    grad_log_prob: Callable[[Any, int], Any] | None = None
    classifier_scale: float = 0.0


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


# ----- the loop body: one step, math only -------------------------------------------------

def _model_x0_eps(run: _Run, model: Any, g: Guidance, x: Any, t: int, ab_t: float) -> Any:
    """Evaluate the model (both branches under CFG), guide, and return (x̂_0, ε̂, v): x̂_0 is
    None for an ε output, which the step then folds in (the precision rule of refdiff.steps);
    v is the variance channel of a learned-variance model (None otherwise)."""
    xp, s, ptype = run.xp, run.scale, run.prediction_type
    if not _xp.is_array(s) and s == 1:
        out_c, var = _model_output(xp, run.learned, model, x, t, g.cond)
        out = out_c
    elif not _xp.is_array(s) and s == 0:
        out, var = _model_output(xp, run.learned, model, x, t, g.uncond)
        out_c = out
    else:                                                           # CFG Algorithm 2, line 5
        out_u, out_c, var = _branches(run, model, g, x, t)          # Σ of the conditional branch
        out = _cfg(xp, out_u, out_c, s)
    if run.rescale == 0:
        return (*_x0_eps_of(xp, x, out, ab_t, ptype), var)
    space = run.rescale_space
    guided, cond = (_prediction_from_x0_eps(xp, *_predict_x0_eps(xp, x, o, ab_t, ptype), ab_t,
                                            space) for o in (out, out_c))
    return (*_x0_eps_of(xp, x, _guidance_rescale(xp, guided, cond, run.rescale), ab_t, space),
            var)


def _branches(run: _Run, model: Any, g: Guidance, x: Any, t: int) -> Any:
    """(out_u, out_c, v) of the two CFG branches: two model calls, or with ``batch_cfg`` one
    call on [x; x] (2B) with the condition [uncond; cond], split back (uncond first, as
    diffusers). v is the conditional branch's variance channel (None for a fixed variance)."""
    xp, learned = run.xp, run.learned
    if run.cond_pair is None:
        out_c, var = _model_output(xp, learned, model, x, t, g.cond)
        return _model_output(xp, learned, model, x, t, g.uncond)[0], out_c, var
    B = x.shape[0]
    out, var = _model_output(xp, learned, model, xp.concat([x, x], axis=0), t, run.cond_pair)
    return out[:B, ...], out[B:, ...], None if var is None else var[B:, ...]


def _x0_eps_of(xp: Any, x: Any, out: Any, ab_t: float, space: str) -> Any:
    """(x̂_0, ε̂) of an output in ``space``; (None, ε̂) for an ε output."""
    if space == "epsilon":
        return None, out
    return _predict_x0_eps(xp, x, out, ab_t, space)


def _model_output(xp: Any, learned: bool, model: Any, x: Any, t: int, c: Any) -> Any:
    """The model's prediction and, for a learned-variance model, its variance channel: the
    output's two halves along axis 1 (guided-diffusion's and diffusers' layout)."""
    out = model(x, t, c)
    if not _xp.is_array(out):
        raise TypeError(f"the model must return an array like x_t, got {type(out).__name__}")
    if not learned:
        _xp.returned(xp, "x_t", x, model_output=out)
        return out, None
    want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if tuple(out.shape) != want:
        raise ValueError(f"a learned-variance model returns the prediction and the variance "
                         f"channel along axis 1: shape {want} for x_t of shape "
                         f"{tuple(x.shape)}, got {tuple(out.shape)}")
    C = x.shape[1]
    pred, var = out[:, :C, ...], out[:, C:, ...]
    _xp.returned(xp, "x_t", x, model_output=pred, model_variance=var)
    return pred, var


def _guided_step(run: _Run, g: Guidance, x: Any, x0_hat: Any, eps: Any, var: Any, t: int,
                 ab_t: float, ab_prev: float, noise: Any) -> Any:
    """One DDIM or DDPM step from (x̂_0, ε̂), with classifier guidance if it is on."""
    xp, s = run.xp, run.classifier_scale
    grad = None
    classifier, analytic = g.classifier, g.grad_log_prob
    if analytic is not None and (_xp.is_array(s) or s != 0):       # ∇ log p(y | x_t) given
        grad = _classifier_gradient(xp, lambda z: None, x, lambda z: analytic(z, t))
    elif classifier is not None and (_xp.is_array(s) or s != 0):    # ∇ log p(y | x_t) by autograd
        grad = _classifier_gradient(xp, lambda z: classifier(z, t), x, None)
    clip = run.clip_x0
    if run.sampler == "ddim":
        if grad is not None and run.classifier_order == "clip_then_shift" and clip is not None:
            x0_hat, eps = _x0_eps(xp, x, eps, ab_t, x0_hat, clip, True)  # clip, re-derive ε̂
            eps = _classifier_guided_eps(xp, eps, grad, ab_t, s)    # CG Algorithm 2
            x0_hat, clip = _x0_from_eps(xp, x, eps, ab_t), None     # rebuilt, not clipped again
        elif grad is not None:                                      # CG Algorithm 2, then clip
            eps, x0_hat = _classifier_guided_eps(xp, eps, grad, ab_t, s), None
        return _ddim_step(xp, x, eps, ab_t, ab_prev, run.eta, noise, clip, run.rederive_eps,
                          x0_hat)
    mean, variance = _ddpm_mean_variance(xp, x, eps, ab_t, ab_prev, run.variance_type, clip,
                                         x0_hat, var, run.zero_beta_tilde)
    if grad is not None:                                            # CG Algorithm 1, Σ as used
        mean = _classifier_guided_mean(xp, mean, variance, grad, s)
    return mean + xp.sqrt(variance) * noise                         # DDPM Algorithm 2, line 4


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


def _checked_run(x_T: Any, schedule: Schedule, g: Guidance, *, sampler: Any,
                 num_inference_steps: Any, spacing: Any, timesteps: Any, prediction_type: Any,
                 eta: Any, variance_type: Any, last_step_variance: Any, clip_x0: Any,
                 rederive_eps: Any, classifier_order: Any, final_alpha_bar: Any) -> _Run:
    xp = _batch_input(x_T, "x_T")
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
    scale = _xp.any_real(xp, "Guidance.scale", g.scale, x_T)
    rescale = _xp.number("Guidance.rescale", g.rescale, lo=0.0, hi=1.0)
    classifier_scale = _xp.any_real(xp, "Guidance.classifier_scale", g.classifier_scale, x_T)
    _check_classifier(g, classifier_scale)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)
    final = 1.0 if final_alpha_bar == "one" else schedule.alpha_bar(0)
    levels = _levels(schedule, ts, final)
    spaces = {prediction_type, space} if rescale != 0 else {prediction_type}
    if "epsilon" in spaces and any(ab_t == 0 for _, ab_t, _ in levels):
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR) at the first timestep: an "
                         "epsilon model cannot give x0_hat there; use a v- or x_0-model or "
                         "start one timestep later")
    variance_type, zero_beta_tilde = _checked_variance(x_T, sampler, eta, variance_type,
                                                       last_step_variance, levels)
    if sampler == "ddim":  # η against every step of the list, before any model evaluation
        for _, ab_t, ab_prev in levels:
            eta = _check_eta(None, eta, ab_t, ab_prev)
    return _Run(xp, sampler, prediction_type, scale, rescale, space, classifier_scale, eta,
                variance_type, variance_type in LEARNED_VARIANCES, zero_beta_tilde,
                _clip_bound(clip_x0), rederive_eps, classifier_order, levels)


def _check_classifier(g: Guidance, classifier_scale: Any) -> None:
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


def _progress(items: Sequence[Any], enabled: bool) -> Any:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a plain counter on stderr, about ten updates a run
        def plain() -> Any:
            every = max(1, len(items) // 10)
            for i, item in enumerate(items):
                if (i + 1) % every == 0 or i + 1 == len(items):
                    print(f"sampling: step {i + 1}/{len(items)}", file=sys.stderr)
                yield item
        return plain()
    return tqdm(items, desc="sampling", leave=False)


# ----- public functions -------------------------------------------------------------------

def sample(model: Callable[[Any, int, Any], Any], x_T: Any, schedule: Schedule, *,
           sampler: str = "ddim", num_inference_steps: int | None = None,
           spacing: str | None = None,
           timesteps: Sequence[int] | Any | None = None, prediction_type: str = "epsilon",
           guidance: Guidance | None = None, eta: float = 0.0,
           variance_type: str | None = None, last_step_variance: str = "floor",
           clip_x0: Any = None, rederive_eps: bool = True,
           classifier_order: str = "shift_then_clip", final_alpha_bar: str = "one",
           generator: Any = None, progress: bool = False,
           callback: Callable[..., None] | None = None, return_trajectory: bool = False,
           batch_cfg: bool = False) -> Any:
    """Run DDPM or DDIM from x_T to x_0, optionally guided.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> array`` of the shape of ``x_t``: ε, x_0 or v; with a learned
        ``variance_type``, of shape (B, 2C, ...): the prediction, then the variance channel
        along axis 1.
    x_T : array, shape (B, ...)
        The starting noise; fixes the backend, device and dtype of the run.
    schedule : Schedule
    sampler : {"ddim", "ddpm"}
    num_inference_steps, spacing : int and str, optional
        Build ``timesteps`` with :func:`inference_timesteps` (default 50 and "leading").
    timesteps : sequence of int or int array, optional
        Strictly descending training timesteps to visit; excludes ``num_inference_steps``
        and ``spacing`` (passing both is an error).
    prediction_type : {"epsilon", "sample", "v_prediction"}
    guidance : Guidance, optional
        CFG, guidance rescale and classifier guidance settings (default: none).
    eta : float
        DDIM η (``sampler="ddim"``; a nonzero η with ``sampler="ddpm"`` is an error).
    variance_type : {"fixed_small", "fixed_large", "learned", "learned_range"}, optional
        DDPM's variance (``sampler="ddpm"`` only; default "fixed_small"); see
        :func:`refdiff.ddpm_mean_variance`. Under CFG the variance channel is the
        conditional branch's (GLIDE, DiT), the unconditional one's at scale 0.
    last_step_variance : {"floor", "previous_beta_tilde"}
        β̃ at the last step (to ᾱ = 1, where β̃ = 0): floored at 1e-20 inside log β̃
        (diffusers), or replaced by the β̃ of the step before (guided-diffusion, which also
        uses it as the "fixed_large" variance there; "fixed_small" and "learned" are the
        same under both). No noise is added on the last step either way; the choice shows
        in classifier guidance's μ + s·Σ·g.
    clip_x0, rederive_eps
        See :func:`refdiff.ddim_step` (``clip_x0`` may be a :class:`DynamicThreshold`).
    classifier_order : {"shift_then_clip", "clip_then_shift"}
        DDIM with classifier guidance and ``clip_x0``: shift ε̂ (CG Algorithm 2), then clip
        the x̂_0 it gives (refdiff); or clip x̂_0, re-derive ε̂, shift it and rebuild x̂_0 from
        the shifted ε̂ without clipping again (guided-diffusion's ``condition_score``).
    final_alpha_bar : {"one", "alpha_bar_0"}
        ᾱ after the last timestep.
    generator : int or generator, optional
        Seed or generator of the backend of ``x_T`` for the step noise; checked even when no
        step draws (DDIM with η = 0), and then not advanced.
    progress : bool
        Show a progress bar (tqdm if installed).
    callback : callable, optional
        ``callback(i, t, x_t, x0_hat)`` after each step.
    return_trajectory : bool
        Also return the list [x_T, x_{t_1}, ..., x_0].
    batch_cfg : bool
        Under CFG (both branches evaluated), call the model once per step on the batch of
        2B, x_t concatenated with itself along axis 0, with the condition
        ``concat([uncond, cond], axis=0)``, and split the output back into halves (the
        unconditional first: diffusers' pipelines). ``Guidance.cond`` and ``.uncond`` must
        then be arrays of the library and device of ``x_T``, of one dtype and shape, with
        the batch size B along axis 0 (prompt embeddings; class labels with a null label);
        anything else is refused before the first model evaluation. No effect when one
        branch is evaluated (a float scale 0 or 1). A model that treats each sample on its
        own gives the same samples, bit for bit, as with ``batch_cfg=False``.

    Returns
    -------
    x_0 : array, shape, dtype and device of ``x_T`` (and the trajectory if asked)

    Raises
    ------
    TypeError
        For a non-array ``x_T``, a non-Schedule ``schedule``, non-int timesteps, a model that
        returns anything but an array like ``x_t``, or option values of the wrong type.
    ValueError
        For bad option values, unordered timesteps, an η too large for a step of the list,
        options that do not apply to the sampler, or ``timesteps`` with
        ``num_inference_steps``/``spacing``; all before the first model evaluation.

    Notes
    -----
    Fast path: under CFG (both branches) with an ε model, a fixed variance and nothing that
    needs x̂_0 or ε̃ (no guidance rescale, classifier guidance, ``clip_x0`` or dynamic
    thresholding, no ``callback``), each step is :func:`refdiff.guided_ddim_step` or
    :func:`refdiff.guided_ddpm_step`: CFG and the step as one linear combination of x_t,
    ε_u, ε_c and z. It equals the spec composition ``ddim_step(x, cfg(...))`` (or
    ``ddpm_step``) in exact arithmetic, and to rounding otherwise (bounded in
    tests/test_fused.py); a seed draws the same noise on both.

    References
    ----------
    DDPM Algorithm 2; DDIM Eq. 12; CFG Algorithm 2; CG Algorithms 1–2; IDDPM Eq. 15 (module
    docstring).
    """
    from refdiff.backends import get_backend

    g = guidance or Guidance()
    run = _checked_run(x_T, schedule, g, sampler=sampler,
                       num_inference_steps=num_inference_steps, spacing=spacing,
                       timesteps=timesteps, prediction_type=prediction_type, eta=eta,
                       variance_type=variance_type, last_step_variance=last_step_variance,
                       clip_x0=clip_x0, rederive_eps=rederive_eps,
                       classifier_order=classifier_order, final_alpha_bar=final_alpha_bar)
    backend, dev = get_backend(x_T), _xp.device(x_T)
    noisy = sampler == "ddpm" or run.eta > 0
    gen = backend.generator(generator, dev)  # checked even when no step draws (η = 0 DDIM)
    progress, return_trajectory = (_xp.flag(n, v) for n, v in (
        ("progress", progress), ("return_trajectory", return_trajectory)))
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if _xp.flag("batch_cfg", batch_cfg) and not _is_end(run.scale):  # both branches evaluated
        run = run._replace(cond_pair=_batched_condition(run.xp, x_T, g.cond, g.uncond))
    fused = _loop_fuses(run, callback)  # nothing needs x̂_0 or ε̃: the fast path (refdiff.fused)
    x, trajectory = x_T, [x_T]
    for i, (t, ab_t, ab_prev) in enumerate(_progress(run.levels, progress)):
        if fused:
            eps_u, eps_c, _ = _branches(run, model, g, x, t)
        else:
            x0_hat, eps, var = _model_x0_eps(run, model, g, x, t, ab_t)
        if callback is not None:  # the callback gets x̂_0 of this step's input
            seen = x0_hat if x0_hat is not None else _x0_from_eps(run.xp, x, eps, ab_t)
        noise = None
        if noisy:  # "is this the last step" decides: no noise after it
            last = i == len(run.levels) - 1
            noise = (backend.xp.zeros_like(x) if last else
                     backend.normal(tuple(x.shape), dtype=x.dtype, device=dev, generator=gen))
        x = (_loop_step(run, x, eps_u, eps_c, ab_t, ab_prev, noise) if fused else
             _guided_step(run, g, x, x0_hat, eps, var, t, ab_t, ab_prev, noise))
        if callback is not None:
            callback(i, t, x, seen)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


def ddim_invert(model: Callable[[Any, int, Any], Any], x0: Any, schedule: Schedule, *,
                num_inference_steps: int | None = None, spacing: str | None = None,
                timesteps: Sequence[int] | Any | None = None, prediction_type: str = "epsilon",
                cond: Any = None, clip_x0: Any = None, rederive_eps: bool = True,
                model_timestep: str = "source") -> Any:
    """DDIM inversion (η = 0 run forward) from clean data to the noisiest listed timestep.

    The inverse of :func:`sample` with ``sampler="ddim", eta=0``: the levels are visited in
    the reverse order, from ᾱ = 1 up to ᾱ_{t_0}. Each step evaluates the model at its source
    x; ``model_timestep`` says which timestep labels that call: ``"source"``, the timestep of
    x's own level (guided-diffusion's ``ddim_reverse_sample``), or ``"destination"``, the
    timestep of the level the step goes to (diffusers' DDIMInverseScheduler,
    prompt-to-prompt). The first step starts from the clean data, which has no timestep; both
    conventions label it with the smallest listed one.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> array``: ε or v (an x_0-model gives no ε̂ at the clean data).
    x0 : array, shape (B, ...)
        The clean data to invert.
    schedule : Schedule
    num_inference_steps, spacing, timesteps
        As in :func:`sample`.
    prediction_type : {"epsilon", "v_prediction"}
    cond : any
        The condition passed to the model.
    clip_x0, rederive_eps
        See :func:`refdiff.ddim_inversion_step` (guided-diffusion: ``clip_x0=1.0`` with
        ε̂ re-derived; diffusers' DDIMInverseScheduler: ``clip_x0=1.0, rederive_eps=False``).
    model_timestep : {"source", "destination"}

    Returns
    -------
    x_T : array, shape, dtype and device of ``x0``

    References
    ----------
    DDIM, arXiv:2010.02502v4, §4.3 and Eq. 12 with σ = 0.
    """
    xp = _batch_input(x0, "x0")
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "sample":
        raise ValueError("ddim_invert needs an epsilon or v model: an x_0-model gives no "
                         "eps at the clean data (alpha_bar_t = 1); got prediction_type='sample'")
    _xp.choice("model_timestep", model_timestep, MODEL_TIMESTEPS)
    clip_x0, rederive_eps = _clip_bound(clip_x0), _xp.flag("rederive_eps", rederive_eps)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)[::-1]  # ascending
    x, ab_src = x0, 1.0
    for k, t_next in enumerate(ts):
        t_eval = ts[k - 1] if k > 0 and model_timestep == "source" else t_next
        ab_next = schedule.alpha_bar(t_next)
        # at ᾱ = 1 this gives x̂_0 = x and ε̂ from an ε- or v-model
        out, _ = _model_output(xp, False, model, x, t_eval, cond)
        x0_hat, eps = _x0_eps_of(xp, x, out, ab_src, prediction_type)
        x = _ddim_inversion_step(xp, x, eps, ab_src, ab_next, x0_hat, clip_x0, rederive_eps)
        ab_src = ab_next
    return x
